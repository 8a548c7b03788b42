//! MJPEG frames to RGB. (Being written: see the capture issue.)
