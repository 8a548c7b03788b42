//! Linux capture through V4L2. (Being written: see the capture issue.)
