//! The running camera: wait with a timeout, drain to the newest frame, lend
//! it out, hand the buffer back.

use std::io;
use std::time::{Duration, Instant};

use ::v4l::v4l_sys::{
    V4L2_BUF_FLAG_ERROR, V4L2_BUF_FLAG_TIMESTAMP_MASK, V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC,
};

use super::stream::Stream;
use super::sys::{Filled, Readiness};
use crate::format::{Colour, PixelFormat, YuvMatrix, YuvRange};
use crate::frame::{Pixels, Plane, RawFrame};
use crate::grabber::{CaptureError, Grabber};

/// How the driver lays out a frame of the negotiated format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes from one row to the next (`bytesperline`).
    pub stride: usize,
    pub colour: Colour,
}

impl Layout {
    /// `bytes_per_line` as the driver reported it, or the packed row width
    /// when it reported less (0 is common for formats it thinks obvious).
    pub fn new(format: PixelFormat, width: u32, height: u32, bytes_per_line: u32) -> Layout {
        let per_pixel = match format {
            PixelFormat::Yuyv | PixelFormat::Uyvy => 2,
            PixelFormat::Bgra => 4,
            PixelFormat::Nv12 | PixelFormat::Mjpeg => 1,
        };
        let packed = usize::try_from(width)
            .unwrap_or(usize::MAX)
            .saturating_mul(per_pixel);
        let reported = usize::try_from(bytes_per_line).unwrap_or(0);
        Layout {
            format,
            width,
            height,
            stride: reported.max(packed),
            colour: Colour::UVC,
        }
    }

    /// `data` (the buffer's `bytesused` bytes) as planes. A short buffer
    /// gives short planes, which the converter rejects as truncated.
    pub fn pixels<'a>(&self, data: &'a [u8]) -> Pixels<'a> {
        let plane = |data| Plane {
            data,
            stride: self.stride,
        };
        let colour = self.colour;
        match self.format {
            PixelFormat::Yuyv => Pixels::Yuyv {
                plane: plane(data),
                colour,
            },
            PixelFormat::Uyvy => Pixels::Uyvy {
                plane: plane(data),
                colour,
            },
            PixelFormat::Nv12 => {
                let rows = usize::try_from(self.height).unwrap_or(usize::MAX);
                let luma = self.stride.saturating_mul(rows).min(data.len());
                let (y, uv) = data.split_at(luma);
                Pixels::Nv12 {
                    y: plane(y),
                    uv: plane(uv),
                    colour,
                }
            }
            PixelFormat::Bgra => Pixels::Bgra(plane(data)),
            PixelFormat::Mjpeg => Pixels::Mjpeg(data),
        }
    }
}

/// How to read the YUV values of a format the driver set, from its
/// `colorspace`, `ycbcr_enc` and `quantization` (0 = the colorspace's
/// default, as the V4L2 spec defines it: BT.709 for Rec. 709 and DCI-P3,
/// BT.601 otherwise; full range for JPEG, limited otherwise). Encodings
/// beyond 601 and 709 (BT.2020, SMPTE 240M) are read as BT.709, the
/// nearest we convert.
pub(super) fn driver_colour(colorspace: u32, ycbcr_enc: u32, quantization: u32) -> Colour {
    const REC709: u32 = 3;
    const JPEG: u32 = 7;
    const DCI_P3: u32 = 12;
    const ENC_601: u32 = 1;
    const ENC_XV601: u32 = 3;
    const ENC_XV709: u32 = 4;
    const ENC_SYCC: u32 = 5;
    const FULL_RANGE: u32 = 1;
    const LIM_RANGE: u32 = 2;
    let matrix = match ycbcr_enc {
        0 if matches!(colorspace, REC709 | DCI_P3) => YuvMatrix::Bt709,
        0 | ENC_601 | ENC_XV601 | ENC_SYCC => YuvMatrix::Bt601,
        _ => YuvMatrix::Bt709,
    };
    let range = match quantization {
        FULL_RANGE => YuvRange::Full,
        LIM_RANGE => YuvRange::Limited,
        _ if colorspace == JPEG && !matches!(ycbcr_enc, ENC_XV601 | ENC_XV709) => YuvRange::Full,
        _ => YuvRange::Limited,
    };
    Colour { range, matrix }
}

/// A V4L2 camera, streaming. Dropping it stops the camera and releases it.
pub struct V4lGrabber {
    pub(super) stream: Stream,
    pub(super) layout: Layout,
    /// The camera's name, for errors.
    pub(super) device: String,
    pub(super) dropped: u64,
    pub(super) last_sequence: Option<u32>,
}

impl Grabber for V4lGrabber {
    fn next_frame(
        &mut self,
        timeout: Duration,
        use_frame: &mut dyn FnMut(&RawFrame<'_>),
    ) -> Result<bool, CaptureError> {
        let start = Instant::now();
        loop {
            if let Some(newest) = self.take_newest()? {
                let driver_now = monotonic_now();
                self.lend(&newest, driver_now, use_frame);
                self.stream
                    .queue(&newest)
                    .map_err(|e| self.error("VIDIOC_QBUF", e))?;
                return Ok(true);
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(false);
            }
            let ready = self
                .stream
                .node()
                .wait(left)
                .map_err(|e| self.error("poll", e))?;
            match ready {
                Readiness::Ready => {}
                Readiness::TimedOut => return Ok(false),
                Readiness::Broken => return Err(self.broken()),
            }
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl V4lGrabber {
    /// Dequeues what the driver has filled, gives back all but the newest
    /// good buffer, and counts those and any sequence gaps as dropped.
    fn take_newest(&mut self) -> Result<Option<Filled>, CaptureError> {
        let mut newest: Option<Filled> = None;
        // Bounded: each buffer can be ready at most once per pass.
        for _ in 0..self.stream.buffer_count() {
            let Some(filled) = self
                .stream
                .dequeue()
                .map_err(|e| self.error("VIDIOC_DQBUF", e))?
            else {
                break;
            };
            self.dropped += missed(self.last_sequence, filled.sequence);
            self.last_sequence = Some(filled.sequence);
            let stale = if filled.flags & V4L2_BUF_FLAG_ERROR != 0 {
                Some(filled)
            } else {
                newest.replace(filled)
            };
            if let Some(stale) = stale {
                self.dropped += 1;
                self.stream
                    .queue(&stale)
                    .map_err(|e| self.error("VIDIOC_QBUF", e))?;
            }
        }
        Ok(newest)
    }

    fn lend(
        &self,
        filled: &Filled,
        driver_now: Option<Duration>,
        use_frame: &mut dyn FnMut(&RawFrame<'_>),
    ) {
        let (seconds, micros) = filled.timestamp;
        let driver_time = driver_now.and(driver_time(filled.flags, seconds, micros));
        use_frame(&RawFrame {
            width: self.layout.width,
            height: self.layout.height,
            pixels: self.layout.pixels(self.stream.bytes(filled)),
            driver_time,
            driver_now: driver_now.unwrap_or_default(),
            sequence: u64::from(filled.sequence),
        });
    }

    /// `poll` said the stream is broken; `DQBUF` gives the reason.
    fn broken(&self) -> CaptureError {
        match self.stream.dequeue() {
            Err(e) => self.error("VIDIOC_DQBUF", e),
            // A buffer after all, or none: the driver is confused either
            // way; reopening is the cure.
            Ok(_) => self.error(
                "poll",
                io::Error::other("the driver reported an error on the stream"),
            ),
        }
    }

    /// Unplugging makes the calls fail with `ENODEV` once the node is gone
    /// and `EIO` just before.
    fn error(&self, call: &str, e: io::Error) -> CaptureError {
        let device = self.device.clone();
        match e.raw_os_error() {
            Some(libc::ENODEV | libc::EIO) => {
                tracing::debug!("v4l2: {call} on {device:?}: {e}");
                CaptureError::Disconnected { device }
            }
            _ => CaptureError::Io {
                device,
                reason: format!("{call}: {e}"),
                source: e,
            },
        }
    }
}

/// Frames the driver skipped between two dequeued sequence numbers. A
/// sequence that goes back (the driver restarted it) skips nothing.
fn missed(previous: Option<u32>, sequence: u32) -> u64 {
    match previous {
        Some(p) if sequence > p => u64::from(sequence - p - 1),
        _ => 0,
    }
}

/// The buffer's time when the driver stamped it on `CLOCK_MONOTONIC` (the
/// clock `monotonic_now` reads); other clocks or a bad value give `None`.
fn driver_time(flags: u32, seconds: libc::c_long, micros: libc::c_long) -> Option<Duration> {
    if flags & V4L2_BUF_FLAG_TIMESTAMP_MASK != V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC {
        return None;
    }
    let seconds = u64::try_from(seconds).ok()?;
    let micros = u32::try_from(micros).ok().filter(|&us| us < 1_000_000)?;
    Some(Duration::new(seconds, micros * 1000))
}

fn monotonic_now() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to write.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if result != 0 {
        return None;
    }
    let seconds = u64::try_from(now.tv_sec).ok()?;
    let nanos = u32::try_from(now.tv_nsec)
        .ok()
        .filter(|&ns| ns < 1_000_000_000)?;
    Some(Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_says_how_to_read_its_yuv() {
        let c = |cs, enc, q| driver_colour(cs, enc, q);
        // Defaults: UVC webcams (SMPTE 170M or sRGB) are limited 601.
        assert_eq!(c(0, 0, 0), Colour::UVC);
        assert_eq!(c(1, 0, 0), Colour::UVC);
        assert_eq!(c(8, 0, 0), Colour::UVC);
        // Rec. 709 defaults to its matrix; JPEG to full range.
        assert_eq!(
            c(3, 0, 0),
            Colour {
                range: YuvRange::Limited,
                matrix: YuvMatrix::Bt709
            }
        );
        assert_eq!(
            c(7, 0, 0),
            Colour {
                range: YuvRange::Full,
                matrix: YuvMatrix::Bt601
            }
        );
        // Explicit fields win over the colorspace's defaults.
        assert_eq!(
            c(7, 2, 2),
            Colour {
                range: YuvRange::Limited,
                matrix: YuvMatrix::Bt709
            }
        );
        assert_eq!(
            c(1, 1, 1),
            Colour {
                range: YuvRange::Full,
                matrix: YuvMatrix::Bt601
            }
        );
        // xvYCC is limited range even in the JPEG colorspace.
        assert_eq!(c(7, 3, 0).range, YuvRange::Limited);
    }

    #[test]
    fn yuyv_rows_use_the_drivers_stride_and_bytesused() {
        let layout = Layout::new(PixelFormat::Yuyv, 4, 2, 12);
        let data = [7u8; 24];
        let Pixels::Yuyv { plane, colour } = layout.pixels(&data[..20]) else {
            panic!("not yuyv");
        };
        assert_eq!((plane.stride, plane.data.len()), (12, 20));
        assert_eq!(colour, Colour::UVC);
    }

    #[test]
    fn a_stride_the_driver_left_out_is_the_packed_width() {
        assert_eq!(Layout::new(PixelFormat::Uyvy, 640, 480, 0).stride, 1280);
        assert_eq!(Layout::new(PixelFormat::Nv12, 640, 480, 704).stride, 704);
    }

    #[test]
    fn nv12_chroma_starts_after_stride_times_height() {
        let layout = Layout::new(PixelFormat::Nv12, 4, 2, 8);
        let data: Vec<u8> = (0..24).collect();
        let Pixels::Nv12 { y, uv, .. } = layout.pixels(&data) else {
            panic!("not nv12");
        };
        assert_eq!((y.data.len(), y.stride), (16, 8));
        assert_eq!((uv.data[0], uv.data.len(), uv.stride), (16, 8, 8));
    }

    #[test]
    fn truncated_nv12_gives_short_planes_not_a_panic() {
        let layout = Layout::new(PixelFormat::Nv12, 4, 2, 8);
        let Pixels::Nv12 { y, uv, .. } = layout.pixels(&[1, 2, 3]) else {
            panic!("not nv12");
        };
        assert_eq!((y.data.len(), uv.data.len()), (3, 0));
    }

    #[test]
    fn mjpeg_is_the_used_bytes() {
        let layout = Layout::new(PixelFormat::Mjpeg, 640, 480, 0);
        let Pixels::Mjpeg(jpeg) = layout.pixels(&[0xff, 0xd8, 0xff, 0xd9]) else {
            panic!("not mjpeg");
        };
        assert_eq!(jpeg.len(), 4);
    }

    #[test]
    fn sequence_gaps_count_as_drops_and_restarts_do_not() {
        assert_eq!(missed(None, 17), 0);
        assert_eq!(missed(Some(4), 5), 0);
        assert_eq!(missed(Some(4), 8), 3);
        assert_eq!(missed(Some(9), 0), 0);
        assert_eq!(missed(Some(0), u32::MAX), u64::from(u32::MAX) - 1);
    }

    #[test]
    fn only_monotonic_stamps_are_driver_times() {
        let mono = V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC;
        assert_eq!(
            driver_time(mono | V4L2_BUF_FLAG_ERROR, 12, 345_678),
            Some(Duration::new(12, 345_678_000))
        );
        assert_eq!(driver_time(0, 12, 0), None);
        assert_eq!(driver_time(0x4000, 12, 0), None, "TIMESTAMP_COPY");
        assert_eq!(driver_time(mono, -1, 0), None);
        assert_eq!(driver_time(mono, 1, 1_000_000), None);
        assert_eq!(driver_time(mono, 1, -1), None);
    }

    #[test]
    fn the_monotonic_clock_reads() {
        let a = monotonic_now().unwrap();
        let b = monotonic_now().unwrap();
        assert!(b >= a);
    }
}
