//! A frame as the driver hands it over (borrowed, strided), and the RGB image
//! the daemon gets.

use std::time::Duration;

use crate::format::{Colour, PixelFormat};

/// Rows of one plane: `stride` bytes apart, possibly padded past the pixels.
#[derive(Debug, Clone, Copy)]
pub struct Plane<'a> {
    pub data: &'a [u8],
    pub stride: usize,
}

/// The pixels of a frame in the layout the driver delivered.
#[derive(Debug, Clone, Copy)]
pub enum Pixels<'a> {
    Nv12 {
        y: Plane<'a>,
        uv: Plane<'a>,
        colour: Colour,
    },
    Yuyv {
        plane: Plane<'a>,
        colour: Colour,
    },
    Uyvy {
        plane: Plane<'a>,
        colour: Colour,
    },
    Bgra(Plane<'a>),
    /// One JPEG image (`bytesused` long, not the whole buffer).
    Mjpeg(&'a [u8]),
}

impl Pixels<'_> {
    pub fn format(&self) -> PixelFormat {
        match self {
            Pixels::Nv12 { .. } => PixelFormat::Nv12,
            Pixels::Yuyv { .. } => PixelFormat::Yuyv,
            Pixels::Uyvy { .. } => PixelFormat::Uyvy,
            Pixels::Bgra(_) => PixelFormat::Bgra,
            Pixels::Mjpeg(_) => PixelFormat::Mjpeg,
        }
    }
}

/// One frame, valid until the grabber is asked for the next.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    pub width: u32,
    pub height: u32,
    pub pixels: Pixels<'a>,
    /// When the driver stamped it, on the driver's clock; `None` when it
    /// gave no time.
    pub driver_time: Option<Duration>,
    /// The driver's clock read when the frame was dequeued: with
    /// `driver_time` it gives the frame's age ([`crate::clock`]).
    pub driver_now: Duration,
    /// The driver's frame counter (gaps are frames it dropped).
    pub sequence: u64,
}

/// Tightly packed 8-bit RGB, row after row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}
