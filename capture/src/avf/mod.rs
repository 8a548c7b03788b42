//! macOS capture through AVFoundation. (Being written: see the capture issue.)
