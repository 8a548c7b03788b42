//! Live camera capture for posed, without MLX: find a camera, open the one
//! mode the config asks for, and hand over only the newest frame, converted
//! to RGB and dated at capture.
//!
//! - [`grabber`]: the [`Backend`]/[`Grabber`] seam, devices, errors;
//!   platforms: `avf` (macOS AVFoundation, its OS-free parts in [`apple`]),
//!   `v4l` (Linux V4L2), [`fake`] (scripted, for tests).
//! - [`mode`]: what a camera offers and [`negotiate`]-ing one exact mode.
//! - [`frame`] and [`format`]: driver frames as borrowed strided planes;
//!   [`convert`] (and [`mjpeg`]) turn them into RGB.
//! - [`clock`]: driver timestamps to capture instants.
//! - [`session`]: the capture loop's state machine (permission, open,
//!   stream, stall, reconnect with backoff, stop).

pub mod apple;
pub mod clock;
pub mod convert;
pub mod fake;
pub mod format;
pub mod frame;
pub mod grabber;
pub mod mjpeg;
pub mod mode;
pub mod session;

#[cfg(target_os = "macos")]
pub mod avf;
#[cfg(target_os = "linux")]
pub mod v4l;

#[cfg(target_os = "linux")]
pub use v4l::{V4lBackend as PlatformBackend, DEFAULT_FORMATS};
/// The platform's cameras, and the formats tried when the config names none.
#[cfg(target_os = "macos")]
pub use {apple::DEFAULT_FORMATS, avf::AvfBackend as PlatformBackend};

pub use clock::Captured;
pub use convert::{to_rgb, ConvertError, Reason};
pub use format::{Colour, PixelFormat, YuvMatrix, YuvRange};
pub use frame::{Pixels, Plane, RawFrame, RgbImage};
pub use grabber::{select, Backend, CaptureError, Device, Grabber, OpenOptions, Permission};
pub use mode::{negotiate, Choice, Interval, Mode, NoMatch, Rates, Size, Sizes, Want};
pub use session::{CameraState, CapturedFrame, Observer, Session, SessionConfig};
