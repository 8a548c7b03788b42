//! Driver frames to tightly packed RGB8.
//!
//! Every plane is checked against the frame's size here; the `yuv` crate then
//! does the pixels. `yuv` walks planes in whole strides, so a plane whose last
//! row ends right after its pixels would lose rows there, and bytes past the
//! last row would be read as rows: each frame is therefore converted in two
//! calls, the rows before the last (chroma) row group straight from the
//! driver's planes cut to whole strides, and that last group from a tight copy
//! of its few rows.

use std::borrow::Cow;

use yuv::{YuvBiPlanarImage, YuvConversionMode, YuvError, YuvPackedImage, YuvStandardMatrix};

use crate::format::{Colour, PixelFormat, YuvMatrix, YuvRange};
use crate::frame::{Pixels, Plane, RawFrame, RgbImage};
use crate::mjpeg::{self, MjpegError};

/// The largest width or height converted (as `zune-jpeg`'s default limit).
pub const MAX_SIDE: u32 = 16384;

#[derive(Debug, thiserror::Error)]
#[error("{format} frame of {width}x{height}: {reason}")]
pub struct ConvertError {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub reason: Reason,
}

/// What was wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("width and height must be 1..={MAX_SIDE}")]
    BadSize,
    #[error("{plane} stride {stride} is less than a row of {row} bytes")]
    ShortStride {
        plane: &'static str,
        stride: usize,
        row: usize,
    },
    #[error("{plane} stride {stride} is too large")]
    HugeStride { plane: &'static str, stride: usize },
    #[error("{plane} plane holds {len} bytes, needs {need}")]
    ShortPlane {
        plane: &'static str,
        len: usize,
        need: usize,
    },
    #[error(transparent)]
    Mjpeg(#[from] MjpegError),
    #[error("yuv: {0}")]
    Yuv(String),
}

/// Converts one driver frame to RGB.
pub fn to_rgb(frame: &RawFrame<'_>) -> Result<RgbImage, ConvertError> {
    convert(frame).map_err(|reason| ConvertError {
        format: frame.pixels.format(),
        width: frame.width,
        height: frame.height,
        reason,
    })
}

fn convert(frame: &RawFrame<'_>) -> Result<RgbImage, Reason> {
    let size = Size::new(frame.width, frame.height)?;
    match frame.pixels {
        Pixels::Nv12 { y, uv, colour } => nv12(size, &y, &uv, colour),
        Pixels::Yuyv { plane, colour } => packed_422(size, &plane, colour, yuv::yuyv422_to_rgb),
        Pixels::Uyvy { plane, colour } => packed_422(size, &plane, colour, yuv::uyvy422_to_rgb),
        Pixels::Bgra(plane) => bgra(size, &plane),
        Pixels::Mjpeg(jpeg) => Ok(mjpeg::decode(jpeg, frame.width, frame.height)?),
    }
}

/// A frame size known to be 1..=[`MAX_SIDE`] each way, so that row and image
/// byte counts derived from it cannot overflow.
#[derive(Debug, Clone, Copy)]
struct Size {
    width: usize,
    height: usize,
}

impl Size {
    fn new(width: u32, height: u32) -> Result<Size, Reason> {
        let side = |n: u32| {
            usize::try_from(n)
                .ok()
                .filter(|_| (1..=MAX_SIDE).contains(&n))
                .ok_or(Reason::BadSize)
        };
        Ok(Size {
            width: side(width)?,
            height: side(height)?,
        })
    }
}

/// A run of luma rows: `first..first + count`.
#[derive(Debug, Clone, Copy)]
struct Part {
    first: usize,
    count: usize,
    /// Copy the rows out tightly rather than borrow whole strides.
    copy: bool,
}

impl Part {
    /// The matching rows of a plane subsampled 2:1 vertically (from an even
    /// first row).
    fn halved(self) -> Part {
        Part {
            first: self.first / 2,
            count: self.count.div_ceil(2),
            ..self
        }
    }
}

/// Converts the rows before the last `last` through `rows` borrowing the
/// driver's planes, then the last `last` from copies; `rows` writes RGB for
/// its part into the slice it is given.
fn in_two_parts(
    size: Size,
    last: usize,
    mut rows: impl FnMut(Part, &mut [u8]) -> Result<(), Reason>,
) -> Result<RgbImage, Reason> {
    let cut = size.height.saturating_sub(last);
    let row = size.width * 3;
    let mut rgb = vec![0; row * size.height];
    let (head, tail) = rgb.split_at_mut(row * cut);
    if cut > 0 {
        let part = Part {
            first: 0,
            count: cut,
            copy: false,
        };
        rows(part, head)?;
    }
    let part = Part {
        first: cut,
        count: size.height - cut,
        copy: true,
    };
    rows(part, tail)?;
    Ok(RgbImage {
        width: size.width,
        height: size.height,
        data: rgb,
    })
}

/// Checks that `plane` holds `count` rows of `row` bytes, `stride` apart, the
/// last of which may end right after its pixels.
fn check(name: &'static str, plane: &Plane<'_>, row: usize, count: usize) -> Result<(), Reason> {
    let stride = plane.stride;
    if stride < row {
        return Err(Reason::ShortStride {
            plane: name,
            stride,
            row,
        });
    }
    let huge = Reason::HugeStride {
        plane: name,
        stride,
    };
    u32::try_from(stride).map_err(|_| huge.clone())?;
    let need = stride
        .checked_mul(count.saturating_sub(1))
        .and_then(|n| n.checked_add(row))
        .ok_or(huge)?;
    if plane.data.len() < need {
        return Err(Reason::ShortPlane {
            plane: name,
            len: plane.data.len(),
            need,
        });
    }
    Ok(())
}

/// A plane's rows for one `yuv` call: exactly `stride × rows` bytes.
struct Rows<'a> {
    data: Cow<'a, [u8]>,
    stride: u32,
}

impl<'a> Rows<'a> {
    /// `part`'s rows of a plane that passed [`check`] with this `row`.
    fn of(
        name: &'static str,
        plane: &Plane<'a>,
        row: usize,
        part: Part,
    ) -> Result<Rows<'a>, Reason> {
        let short = || Reason::ShortPlane {
            plane: name,
            len: plane.data.len(),
            need: plane.stride.saturating_mul(part.first + part.count),
        };
        let from = plane
            .stride
            .checked_mul(part.first)
            .and_then(|start| plane.data.get(start..))
            .ok_or_else(short)?;
        let (data, stride) = if part.copy {
            let rows = tight(from, plane.stride, row, part.count).ok_or_else(short)?;
            (Cow::Owned(rows), row)
        } else {
            let len = plane.stride.checked_mul(part.count).ok_or_else(short)?;
            (
                Cow::Borrowed(from.get(..len).ok_or_else(short)?),
                plane.stride,
            )
        };
        Ok(Rows {
            data,
            stride: u32_of(stride)?,
        })
    }
}

/// The first `count` rows of `row` bytes, `stride` apart in `from`, end to end.
fn tight(from: &[u8], stride: usize, row: usize, count: usize) -> Option<Vec<u8>> {
    let mut rows = Vec::with_capacity(row * count);
    // `chunks` panics on 0; `check` has made `stride >= row >= 1`.
    for line in from.chunks(stride.max(1)).take(count) {
        rows.extend_from_slice(line.get(..row)?);
    }
    (rows.len() == row * count).then_some(rows)
}

fn nv12(size: Size, y: &Plane<'_>, uv: &Plane<'_>, colour: Colour) -> Result<RgbImage, Reason> {
    let uv_row = size.width.div_ceil(2) * 2;
    check("Y", y, size.width, size.height)?;
    check("CbCr", uv, uv_row, size.height.div_ceil(2))?;
    // The copied part is the last pair of rows that shares a chroma row.
    let last = 2 - size.height % 2;
    in_two_parts(size, last, |part, out| {
        let y = Rows::of("Y", y, size.width, part)?;
        let uv = Rows::of("CbCr", uv, uv_row, part.halved())?;
        let image = YuvBiPlanarImage {
            y_plane: &y.data,
            y_stride: y.stride,
            uv_plane: &uv.data,
            uv_stride: uv.stride,
            width: u32_of(size.width)?,
            height: u32_of(part.count)?,
        };
        yuv::yuv_nv12_to_rgb(
            &image,
            out,
            u32_of(size.width * 3)?,
            range(colour),
            matrix(colour),
            YuvConversionMode::Balanced,
        )
        .map_err(yuv_error)
    })
}

type Packed422 = fn(
    &YuvPackedImage<'_, u8>,
    &mut [u8],
    u32,
    yuv::YuvRange,
    YuvStandardMatrix,
) -> Result<(), YuvError>;

/// YUYV or UYVY: 4 bytes for each pair of pixels, the last pair padded.
fn packed_422(
    size: Size,
    plane: &Plane<'_>,
    colour: Colour,
    to_rgb: Packed422,
) -> Result<RgbImage, Reason> {
    let row = size.width.div_ceil(2) * 4;
    check("packed", plane, row, size.height)?;
    in_two_parts(size, 1, |part, out| {
        let rows = Rows::of("packed", plane, row, part)?;
        let image = YuvPackedImage {
            yuy: &rows.data,
            yuy_stride: rows.stride,
            width: u32_of(size.width)?,
            height: u32_of(part.count)?,
        };
        to_rgb(
            &image,
            out,
            u32_of(size.width * 3)?,
            range(colour),
            matrix(colour),
        )
        .map_err(yuv_error)
    })
}

fn bgra(size: Size, plane: &Plane<'_>) -> Result<RgbImage, Reason> {
    let row = size.width * 4;
    check("BGRA", plane, row, size.height)?;
    in_two_parts(size, 1, |part, out| {
        let rows = Rows::of("BGRA", plane, row, part)?;
        yuv::bgra_to_rgb(
            &rows.data,
            rows.stride,
            out,
            u32_of(size.width * 3)?,
            u32_of(size.width)?,
            u32_of(part.count)?,
        )
        .map_err(yuv_error)
    })
}

fn range(colour: Colour) -> yuv::YuvRange {
    match colour.range {
        YuvRange::Limited => yuv::YuvRange::Limited,
        YuvRange::Full => yuv::YuvRange::Full,
    }
}

fn matrix(colour: Colour) -> YuvStandardMatrix {
    match colour.matrix {
        YuvMatrix::Bt601 => YuvStandardMatrix::Bt601,
        YuvMatrix::Bt709 => YuvStandardMatrix::Bt709,
    }
}

fn u32_of(n: usize) -> Result<u32, Reason> {
    u32::try_from(n).map_err(|_| Reason::Yuv(format!("{n} bytes is past its u32 limit")))
}

fn yuv_error(e: YuvError) -> Reason {
    Reason::Yuv(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_outside_one_to_max_are_refused() {
        assert!(Size::new(1, MAX_SIDE).is_ok());
        for (w, h) in [(0, 1), (1, 0), (MAX_SIDE + 1, 1), (1, u32::MAX)] {
            assert_eq!(Size::new(w, h).unwrap_err(), Reason::BadSize, "{w}x{h}");
        }
    }

    /// The two parts of NV12 take every chroma row once, in order.
    #[test]
    fn halved_parts_cover_the_chroma_rows() {
        for height in 1..=9usize {
            let cut = height - (2 - height % 2);
            let body = Part {
                first: 0,
                count: cut,
                copy: false,
            }
            .halved();
            let tail = Part {
                first: cut,
                count: height - cut,
                copy: true,
            }
            .halved();
            assert_eq!(body.first, 0);
            assert_eq!(body.first + body.count, tail.first, "height {height}");
            assert_eq!(
                tail.first + tail.count,
                height.div_ceil(2),
                "height {height}"
            );
            assert_eq!(tail.count, 1);
        }
    }

    #[test]
    fn rows_borrow_whole_strides_and_copy_the_tail() {
        // Three rows of 3 bytes, 5 apart, the last ending after its pixels.
        let data = [1, 2, 3, 0, 0, 4, 5, 6, 0, 0, 7, 8, 9];
        let plane = Plane {
            data: &data,
            stride: 5,
        };
        check("p", &plane, 3, 3).unwrap();
        let part = |first, count, copy| Part { first, count, copy };
        let head = Rows::of("p", &plane, 3, part(0, 2, false)).unwrap();
        assert!(matches!(head.data, Cow::Borrowed(d) if d == &data[..10]));
        assert_eq!(head.stride, 5);
        let tail = Rows::of("p", &plane, 3, part(2, 1, true)).unwrap();
        assert_eq!((&*tail.data, tail.stride), (&[7, 8, 9][..], 3));
        let both = Rows::of("p", &plane, 3, part(1, 2, true)).unwrap();
        assert_eq!(&*both.data, &[4, 5, 6, 7, 8, 9]);
        // A whole-stride borrow of the short last row is refused.
        assert!(Rows::of("p", &plane, 3, part(0, 3, false)).is_err());
    }
}
