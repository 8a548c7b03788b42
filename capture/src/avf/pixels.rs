//! Lending a delivered pixel buffer as a [`RawFrame`] without copying: lock
//! its base address read-only, borrow each plane at its own address and
//! row pitch (a bi-planar buffer's base address is a header, not pixels),
//! unlock when the borrow ends.

use std::ptr;
use std::time::Duration;

use objc2::runtime::AnyObject;
use objc2_core_video::{
    kCVImageBufferYCbCrMatrixKey, kCVReturnSuccess, CVPixelBuffer, CVPixelBufferGetBaseAddress,
    CVPixelBufferGetBaseAddressOfPlane, CVPixelBufferGetBytesPerRow,
    CVPixelBufferGetBytesPerRowOfPlane, CVPixelBufferGetHeight, CVPixelBufferGetHeightOfPlane,
    CVPixelBufferGetPixelFormatType, CVPixelBufferGetPlaneCount, CVPixelBufferGetWidth,
    CVPixelBufferLockBaseAddress, CVPixelBufferLockFlags, CVPixelBufferUnlockBaseAddress,
};
use objc2_foundation::NSString;

use crate::apple::{self, FourCc};
use crate::format::{PixelFormat, YuvMatrix};
use crate::frame::{Pixels, Plane, RawFrame};
use crate::grabber::CaptureError;

use super::delegate::Delivery;

/// Lends `delivery` to `use_frame`. `Ok(false)`: the buffer could not be
/// read (lock failed, a plane missing) and counts as a dropped frame; `Err`
/// for a pixel format we never asked for.
pub(super) fn lend(
    delivery: &Delivery,
    driver_now: Duration,
    use_frame: &mut dyn FnMut(&RawFrame<'_>),
) -> Result<bool, CaptureError> {
    let buffer: &CVPixelBuffer = &delivery.buffer.0;
    let code = CVPixelBufferGetPixelFormatType(buffer);
    let Some((format, range)) = apple::pixel_format(code) else {
        return Err(unexpected(code));
    };
    let (Ok(width), Ok(height)) = (
        u32::try_from(CVPixelBufferGetWidth(buffer)),
        u32::try_from(CVPixelBufferGetHeight(buffer)),
    ) else {
        return Ok(false);
    };
    let Some(locked) = Locked::new(buffer) else {
        return Ok(false);
    };
    let colour = || apple::buffer_colour(range, matrix(buffer));
    let pixels = match format {
        PixelFormat::Nv12 if CVPixelBufferGetPlaneCount(buffer) == 2 => {
            match (locked.plane(Some(0)), locked.plane(Some(1))) {
                (Some(y), Some(uv)) => Some(Pixels::Nv12 {
                    y,
                    uv,
                    colour: colour(),
                }),
                _ => None,
            }
        }
        PixelFormat::Nv12 => None,
        PixelFormat::Yuyv => locked.plane(None).map(|plane| Pixels::Yuyv {
            plane,
            colour: colour(),
        }),
        PixelFormat::Uyvy => locked.plane(None).map(|plane| Pixels::Uyvy {
            plane,
            colour: colour(),
        }),
        PixelFormat::Bgra => locked.plane(None).map(Pixels::Bgra),
        PixelFormat::Mjpeg => return Err(unexpected(code)),
    };
    let Some(pixels) = pixels else {
        return Ok(false);
    };
    use_frame(&RawFrame {
        width,
        height,
        pixels,
        driver_time: delivery.time,
        driver_now,
        sequence: delivery.sequence,
    });
    Ok(true)
}

fn unexpected(code: u32) -> CaptureError {
    CaptureError::Platform {
        call: "CVPixelBufferGetPixelFormatType",
        reason: format!(
            "frames arrived as {}, a pixel format posed does not read",
            FourCc(code)
        ),
    }
}

/// The buffer's YCbCr matrix attachment; BT.709 when it has none.
fn matrix(buffer: &CVPixelBuffer) -> YuvMatrix {
    // SAFETY: the key is CoreVideo's constant; the attachment-mode
    // out-pointer may be null. The value comes back retained.
    let value = unsafe { buffer.attachment(kCVImageBufferYCbCrMatrixKey, ptr::null_mut()) };
    let name = value.and_then(|value| {
        let object: &AnyObject = (*value).as_ref();
        object.downcast_ref::<NSString>().map(NSString::to_string)
    });
    apple::yuv_matrix(name.as_deref())
}

/// A pixel buffer with its base address locked for reading.
struct Locked<'a>(&'a CVPixelBuffer);

impl<'a> Locked<'a> {
    fn new(buffer: &'a CVPixelBuffer) -> Option<Locked<'a>> {
        // SAFETY: `buffer` is a live, retained pixel buffer; every lock is
        // paired with the unlock in Drop, with the same flags.
        let status =
            unsafe { CVPixelBufferLockBaseAddress(buffer, CVPixelBufferLockFlags::ReadOnly) };
        (status == kCVReturnSuccess).then_some(Locked(buffer))
    }

    /// A plane (`None`: the only plane of a packed buffer), borrowed for as
    /// long as the lock is held.
    fn plane(&self, index: Option<usize>) -> Option<Plane<'_>> {
        let buffer = self.0;
        let (base, stride, rows) = match index {
            Some(i) => (
                CVPixelBufferGetBaseAddressOfPlane(buffer, i),
                CVPixelBufferGetBytesPerRowOfPlane(buffer, i),
                CVPixelBufferGetHeightOfPlane(buffer, i),
            ),
            None => (
                CVPixelBufferGetBaseAddress(buffer),
                CVPixelBufferGetBytesPerRow(buffer),
                CVPixelBufferGetHeight(buffer),
            ),
        };
        let len = stride.checked_mul(rows)?;
        if base.is_null() || len == 0 {
            return None;
        }
        // SAFETY: while the base address is locked, CoreVideo keeps `rows`
        // rows of `stride` bytes at `base` for this plane, and nobody
        // writes them (AVFoundation is done with a delivered buffer). The
        // slice borrows `self`, so it cannot outlive the lock.
        let data = unsafe { std::slice::from_raw_parts(base.cast::<u8>().cast_const(), len) };
        Some(Plane { data, stride })
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: undoes the lock taken in `new`, with the same flags.
        unsafe { CVPixelBufferUnlockBaseAddress(self.0, CVPixelBufferLockFlags::ReadOnly) };
    }
}
