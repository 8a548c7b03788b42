//! Driver frames to packed RGB. (Being written: see the capture issue.)

use crate::frame::{RawFrame, RgbImage};

#[derive(Debug, thiserror::Error)]
#[error("{format} frame of {width}x{height}: {reason}")]
pub struct ConvertError {
    pub format: crate::PixelFormat,
    pub width: u32,
    pub height: u32,
    pub reason: String,
}

pub fn to_rgb(frame: &RawFrame<'_>) -> Result<RgbImage, ConvertError> {
    Err(ConvertError {
        format: frame.pixels.format(),
        width: frame.width,
        height: frame.height,
        reason: "not written yet".into(),
    })
}
