//! Platform-neutral pieces of the AVFoundation backend. (Being written: see the capture issue.)
