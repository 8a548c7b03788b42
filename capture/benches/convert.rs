//! Conversion and MJPEG decode timings. (Being written: see the capture issue.)
fn main() {}
