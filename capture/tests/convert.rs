//! The converters against a float BT.601/BT.709 reference, on synthetic
//! frames with odd sizes, padded strides (padding full of junk), last rows
//! that end right after their pixels and junk past the last row.

use std::time::Duration;

use posed_capture::convert::{Reason, MAX_SIDE};
use posed_capture::{
    to_rgb, Colour, ConvertError, Pixels, Plane, RawFrame, RgbImage, YuvMatrix, YuvRange,
};

const COLOURS: [Colour; 4] = [
    Colour {
        range: YuvRange::Limited,
        matrix: YuvMatrix::Bt601,
    },
    Colour {
        range: YuvRange::Full,
        matrix: YuvMatrix::Bt601,
    },
    Colour {
        range: YuvRange::Limited,
        matrix: YuvMatrix::Bt709,
    },
    Colour {
        range: YuvRange::Full,
        matrix: YuvMatrix::Bt709,
    },
];

const SIZES: [(usize, usize); 6] = [(1, 1), (2, 2), (3, 4), (7, 5), (33, 17), (64, 48)];

/// Stride beyond the row's bytes.
const PADS: [usize; 3] = [0, 16, 61];

/// How a plane ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// `stride × rows` bytes.
    Whole,
    /// The last row ends right after its pixels.
    Short,
    /// Junk rows follow the last row.
    Extra,
}

const ENDS: [End; 3] = [End::Whole, End::Short, End::Extra];

// ---- Float reference -------------------------------------------------------

fn kr_kb(matrix: YuvMatrix) -> (f64, f64) {
    match matrix {
        YuvMatrix::Bt601 => (0.299, 0.114),
        YuvMatrix::Bt709 => (0.2126, 0.0722),
    }
}

/// (Y offset, Y scale, chroma scale) of the code values.
fn scales(range: YuvRange) -> (f64, f64, f64) {
    match range {
        YuvRange::Limited => (16.0, 219.0, 224.0),
        YuvRange::Full => (0.0, 255.0, 255.0),
    }
}

/// RGB to unrounded Y, Cb, Cr code values.
fn forward(rgb: [u8; 3], colour: Colour) -> [f64; 3] {
    let (kr, kb) = kr_kb(colour.matrix);
    let [r, g, b] = rgb.map(|v| f64::from(v) / 255.0);
    let y = kr * r + (1.0 - kr - kb) * g + kb * b;
    let cb = (b - y) / (2.0 * (1.0 - kb));
    let cr = (r - y) / (2.0 * (1.0 - kr));
    let (offset, y_scale, c_scale) = scales(colour.range);
    [
        offset + y_scale * y,
        128.0 + c_scale * cb,
        128.0 + c_scale * cr,
    ]
}

fn code(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Y, Cb, Cr code values to RGB, rounded and clamped.
fn inverse(ycc: [u8; 3], colour: Colour) -> [u8; 3] {
    let (kr, kb) = kr_kb(colour.matrix);
    let (offset, y_scale, c_scale) = scales(colour.range);
    let y = (f64::from(ycc[0]) - offset) / y_scale;
    let cb = (f64::from(ycc[1]) - 128.0) / c_scale;
    let cr = (f64::from(ycc[2]) - 128.0) / c_scale;
    let r = y + 2.0 * (1.0 - kr) * cr;
    let b = y + 2.0 * (1.0 - kb) * cb;
    let g = (y - kr * r - kb * b) / (1.0 - kr - kb);
    [r, g, b].map(|v| code(v * 255.0))
}

/// A deterministic scatter of colours over the whole cube.
fn pattern(x: usize, y: usize) -> [u8; 3] {
    let h = (x as u32).wrapping_mul(0x9e37_79b9) ^ (y as u32).wrapping_mul(0x85eb_ca6b);
    let h = h ^ (h >> 15);
    let h = h.wrapping_mul(0x2c1b_3c6d);
    [h as u8, (h >> 8) as u8, (h >> 16) as u8]
}

/// Mean of unrounded chroma over the given pixels, as code values.
fn mean_chroma(pixels: &[[f64; 3]]) -> [u8; 2] {
    let n = pixels.len() as f64;
    let cb = pixels.iter().map(|p| p[1]).sum::<f64>() / n;
    let cr = pixels.iter().map(|p| p[2]).sum::<f64>() / n;
    [code(cb), code(cr)]
}

// ---- Frame building --------------------------------------------------------

/// Lays `rows` out `stride` apart, filling padding (and any extra rows) with
/// junk a converter must not read.
fn lay_out(rows: &[Vec<u8>], stride: usize, end: End) -> Vec<u8> {
    let mut data = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        data.extend_from_slice(row);
        let last = i + 1 == rows.len();
        if !(last && matches!(end, End::Short)) {
            data.extend((row.len()..stride).map(|j| (j * 7 + i) as u8 ^ 0xa5));
        }
    }
    if matches!(end, End::Extra) {
        data.extend((0..2 * stride).map(|j| (j * 13) as u8 ^ 0x3c));
    }
    data
}

fn frame(width: usize, height: usize, pixels: Pixels<'_>) -> RawFrame<'_> {
    RawFrame {
        width: u32::try_from(width).unwrap(),
        height: u32::try_from(height).unwrap(),
        pixels,
        driver_time: None,
        driver_now: Duration::ZERO,
        sequence: 0,
    }
}

/// An image's Y, Cb, Cr planes and the RGB the reference reads back.
struct Yuv420 {
    y_rows: Vec<Vec<u8>>,
    uv_rows: Vec<Vec<u8>>,
    expected: Vec<[u8; 3]>,
}

fn yuv420(
    width: usize,
    height: usize,
    colour: Colour,
    rgb: impl Fn(usize, usize) -> [u8; 3],
) -> Yuv420 {
    let ycc: Vec<Vec<[f64; 3]>> = (0..height)
        .map(|y| (0..width).map(|x| forward(rgb(x, y), colour)).collect())
        .collect();
    let chroma = |bx: usize, by: usize| {
        let block: Vec<[f64; 3]> = (2 * by..(2 * by + 2).min(height))
            .flat_map(|y| (2 * bx..(2 * bx + 2).min(width)).map(move |x| (x, y)))
            .map(|(x, y)| ycc[y][x])
            .collect();
        mean_chroma(&block)
    };
    let y_rows = ycc
        .iter()
        .map(|row| row.iter().map(|p| code(p[0])).collect())
        .collect();
    let uv_rows = (0..height.div_ceil(2))
        .map(|by| {
            (0..width.div_ceil(2))
                .flat_map(|bx| chroma(bx, by))
                .collect()
        })
        .collect();
    let expected = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .map(|(x, y)| {
            let [cb, cr] = chroma(x / 2, y / 2);
            inverse([code(ycc[y][x][0]), cb, cr], colour)
        })
        .collect();
    Yuv420 {
        y_rows,
        uv_rows,
        expected,
    }
}

/// Packed 4:2:2 rows (`uyvy` picks the byte order) and the expected RGB.
fn yuv422(
    width: usize,
    height: usize,
    colour: Colour,
    uyvy: bool,
    rgb: impl Fn(usize, usize) -> [u8; 3],
) -> (Vec<Vec<u8>>, Vec<[u8; 3]>) {
    let mut rows = Vec::new();
    let mut expected = Vec::new();
    for y in 0..height {
        let ycc: Vec<[f64; 3]> = (0..width).map(|x| forward(rgb(x, y), colour)).collect();
        let mut row = Vec::new();
        for pair in ycc.chunks(2) {
            let [cb, cr] = mean_chroma(pair);
            let y0 = code(pair[0][0]);
            // The missing right pixel of an odd width: junk.
            let y1 = pair.get(1).map_or(0x5a, |p| code(p[0]));
            if uyvy {
                row.extend_from_slice(&[cb, y0, cr, y1]);
            } else {
                row.extend_from_slice(&[y0, cb, y1, cr]);
            }
            expected.extend(pair.iter().map(|p| inverse([code(p[0]), cb, cr], colour)));
        }
        rows.push(row);
    }
    (rows, expected)
}

fn assert_close(
    image: &RgbImage,
    width: usize,
    height: usize,
    expected: &[[u8; 3]],
    tolerance: u8,
    what: &str,
) {
    assert_eq!((image.width, image.height), (width, height), "{what}");
    assert_eq!(image.data.len(), width * height * 3, "{what}");
    for (i, (got, want)) in image.data.chunks_exact(3).zip(expected).enumerate() {
        let off = got
            .iter()
            .zip(want)
            .map(|(g, w)| g.abs_diff(*w))
            .max()
            .unwrap();
        assert!(
            off <= tolerance,
            "{what}: pixel ({}, {}) is {got:?}, reference {want:?}",
            i % width,
            i / width
        );
    }
}

fn nv12_frame<'a>(
    width: usize,
    height: usize,
    y: &'a [u8],
    y_stride: usize,
    uv: &'a [u8],
    uv_stride: usize,
    colour: Colour,
) -> RawFrame<'a> {
    frame(
        width,
        height,
        Pixels::Nv12 {
            y: Plane {
                data: y,
                stride: y_stride,
            },
            uv: Plane {
                data: uv,
                stride: uv_stride,
            },
            colour,
        },
    )
}

fn packed_frame(
    width: usize,
    height: usize,
    data: &[u8],
    stride: usize,
    colour: Colour,
    uyvy: bool,
) -> RawFrame<'_> {
    let plane = Plane { data, stride };
    let pixels = if uyvy {
        Pixels::Uyvy { plane, colour }
    } else {
        Pixels::Yuyv { plane, colour }
    };
    frame(width, height, pixels)
}

// ---- Against the reference ---------------------------------------------------

#[test]
fn nv12_matches_float_reference() {
    for (width, height) in SIZES {
        for colour in COLOURS {
            let planes = yuv420(width, height, colour, pattern);
            for pad in PADS {
                for end in ENDS {
                    let y_stride = width + pad;
                    let uv_stride = width.div_ceil(2) * 2 + pad;
                    let y = lay_out(&planes.y_rows, y_stride, end);
                    let uv = lay_out(&planes.uv_rows, uv_stride, end);
                    let what = format!("nv12 {width}x{height} {colour:?} pad {pad} {end:?}");
                    let image = to_rgb(&nv12_frame(
                        width, height, &y, y_stride, &uv, uv_stride, colour,
                    ))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_close(&image, width, height, &planes.expected, 2, &what);
                }
            }
        }
    }
}

#[test]
fn packed_422_matches_float_reference() {
    for uyvy in [false, true] {
        for (width, height) in SIZES {
            for colour in COLOURS {
                let (rows, expected) = yuv422(width, height, colour, uyvy, pattern);
                for pad in PADS {
                    for end in ENDS {
                        let stride = rows[0].len() + pad;
                        let data = lay_out(&rows, stride, end);
                        let what =
                            format!("uyvy {uyvy} {width}x{height} {colour:?} pad {pad} {end:?}");
                        let image =
                            to_rgb(&packed_frame(width, height, &data, stride, colour, uyvy))
                                .unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_close(&image, width, height, &expected, 2, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn bgra_is_reordered_exactly() {
    for (width, height) in SIZES {
        let rows: Vec<Vec<u8>> = (0..height)
            .map(|y| {
                (0..width)
                    .flat_map(|x| {
                        let [r, g, b] = pattern(x, y);
                        [b, g, r, (x * 3 + y) as u8]
                    })
                    .collect()
            })
            .collect();
        let expected: Vec<[u8; 3]> = (0..height)
            .flat_map(|y| (0..width).map(move |x| pattern(x, y)))
            .collect();
        for pad in PADS {
            for end in ENDS {
                let stride = width * 4 + pad;
                let data = lay_out(&rows, stride, end);
                let what = format!("bgra {width}x{height} pad {pad} {end:?}");
                let image = to_rgb(&frame(
                    width,
                    height,
                    Pixels::Bgra(Plane {
                        data: &data,
                        stride,
                    }),
                ))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_close(&image, width, height, &expected, 0, &what);
            }
        }
    }
}

/// Flat 2×2 tiles of familiar colours come back as themselves, within the
/// converter's ±2 plus up to 1 from rounding RGB to 8-bit Y'CbCr codes (BT.709
/// green comes back as (1, 255, 3) through `yuv`'s YUYV path).
#[test]
fn named_colours_round_trip() {
    const NAMED: [[u8; 3]; 10] = [
        [0, 0, 0],
        [255, 255, 255],
        [128, 128, 128],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [0, 255, 255],
        [224, 172, 105],
        [40, 90, 160],
    ];
    let tile = |x: usize, y: usize| NAMED[(x / 2 + y / 2 * 3) % NAMED.len()];
    let (width, height) = (12, 10);
    let expected: Vec<[u8; 3]> = (0..height)
        .flat_map(|y| (0..width).map(move |x| tile(x, y)))
        .collect();
    for colour in COLOURS {
        let planes = yuv420(width, height, colour, tile);
        let (y, uv) = (planes.y_rows.concat(), planes.uv_rows.concat());
        let image = to_rgb(&nv12_frame(width, height, &y, width, &uv, width, colour)).unwrap();
        assert_close(
            &image,
            width,
            height,
            &expected,
            3,
            &format!("nv12 {colour:?}"),
        );
        let (rows, _) = yuv422(width, height, colour, false, tile);
        let data = rows.concat();
        let image = to_rgb(&packed_frame(
            width,
            height,
            &data,
            width * 2,
            colour,
            false,
        ))
        .unwrap();
        assert_close(
            &image,
            width,
            height,
            &expected,
            3,
            &format!("yuyv {colour:?}"),
        );
    }
}

// ---- Range and matrix --------------------------------------------------------

fn flat_nv12(ycc: [u8; 3], colour: Colour) -> [u8; 3] {
    let (width, height) = (4, 2);
    let y = vec![ycc[0]; width * height];
    let uv = [ycc[1], ycc[2]].repeat(width / 2);
    let image = to_rgb(&nv12_frame(width, height, &y, width, &uv, width, colour)).unwrap();
    assert!(image.data.chunks_exact(3).all(|p| p == &image.data[..3]));
    [image.data[0], image.data[1], image.data[2]]
}

fn near(got: [u8; 3], want: [u8; 3], tolerance: u8) -> bool {
    got.iter()
        .zip(want)
        .all(|(g, w)| g.abs_diff(w) <= tolerance)
}

#[test]
fn limited_range_white_is_white_and_full_range_is_not() {
    for matrix in [YuvMatrix::Bt601, YuvMatrix::Bt709] {
        let limited = Colour {
            range: YuvRange::Limited,
            matrix,
        };
        let full = Colour {
            range: YuvRange::Full,
            matrix,
        };
        let white = flat_nv12([235, 128, 128], limited);
        assert!(near(white, [255, 255, 255], 1), "limited {white:?}");
        let grey = flat_nv12([235, 128, 128], full);
        assert!(near(grey, [235, 235, 235], 1), "full {grey:?}");
        let black = flat_nv12([16, 128, 128], limited);
        assert!(near(black, [0, 0, 0], 1), "limited {black:?}");
        let dark = flat_nv12([16, 128, 128], full);
        assert!(near(dark, [16, 16, 16], 1), "full {dark:?}");
    }
}

#[test]
fn bt601_and_bt709_read_saturated_red_differently() {
    let bt709 = Colour {
        range: YuvRange::Limited,
        matrix: YuvMatrix::Bt709,
    };
    let bt601 = Colour {
        matrix: YuvMatrix::Bt601,
        ..bt709
    };
    let ycc = forward([255, 0, 0], bt709).map(code);
    assert_eq!(ycc, [63, 102, 240]);
    let as_709 = flat_nv12(ycc, bt709);
    let as_601 = flat_nv12(ycc, bt601);
    assert!(near(as_709, [255, 0, 0], 2), "{as_709:?}");
    // Read with the wrong matrix red darkens to about (233, 0, 2).
    assert!(near(as_601, inverse(ycc, bt601), 2), "{as_601:?}");
    assert!(near(as_601, [233, 0, 2], 2), "{as_601:?}");
}

// ---- Bad frames ---------------------------------------------------------------

fn reason(result: Result<RgbImage, ConvertError>) -> Reason {
    result.expect_err("a bad frame converted").reason
}

#[test]
fn empty_and_oversized_frames_are_rejected_for_every_format() {
    let bytes = vec![0u8; 64];
    let plane = Plane {
        data: &bytes,
        stride: 8,
    };
    let colour = Colour::UVC;
    let all = [
        Pixels::Nv12 {
            y: plane,
            uv: plane,
            colour,
        },
        Pixels::Yuyv { plane, colour },
        Pixels::Uyvy { plane, colour },
        Pixels::Bgra(plane),
        Pixels::Mjpeg(&bytes),
    ];
    for pixels in all {
        for (w, h) in [
            (0, 1),
            (1, 0),
            (0, 0),
            (MAX_SIDE + 1, 1),
            (1, MAX_SIDE + 1),
            (u32::MAX, u32::MAX),
        ] {
            let raw = RawFrame {
                width: w,
                height: h,
                ..frame(1, 1, pixels)
            };
            assert_eq!(
                reason(to_rgb(&raw)),
                Reason::BadSize,
                "{:?} {w}x{h}",
                pixels.format()
            );
        }
    }
}

#[test]
fn short_planes_are_rejected() {
    let (width, height) = (7, 5);
    let colour = Colour::UVC;
    // At stride 8 NV12 needs Y 4 × 8 + 7 = 39 bytes and CbCr 2 × 8 + 8 = 24.
    let (y, uv) = (vec![16u8; 39], vec![128u8; 24]);
    assert!(to_rgb(&nv12_frame(width, height, &y, 8, &uv, 8, colour)).is_ok());
    assert_eq!(
        reason(to_rgb(&nv12_frame(
            width,
            height,
            &y[..38],
            8,
            &uv,
            8,
            colour
        ))),
        Reason::ShortPlane {
            plane: "Y",
            len: 38,
            need: 39
        }
    );
    assert_eq!(
        reason(to_rgb(&nv12_frame(
            width,
            height,
            &y,
            8,
            &uv[..23],
            8,
            colour
        ))),
        Reason::ShortPlane {
            plane: "CbCr",
            len: 23,
            need: 24
        }
    );
    assert!(matches!(
        reason(to_rgb(&nv12_frame(width, height, &y, 8, &[], 8, colour))),
        Reason::ShortPlane { plane: "CbCr", .. }
    ));

    // Packed: rows of 16 bytes (4 pairs), 5 rows at stride 20: 4 × 20 + 16.
    let packed = vec![128u8; 96];
    for uyvy in [false, true] {
        assert!(to_rgb(&packed_frame(width, height, &packed, 20, colour, uyvy)).is_ok());
        assert_eq!(
            reason(to_rgb(&packed_frame(
                width,
                height,
                &packed[..95],
                20,
                colour,
                uyvy
            ))),
            Reason::ShortPlane {
                plane: "packed",
                len: 95,
                need: 96
            }
        );
    }

    let bgra = vec![0u8; 4 * 32 + 28];
    let bgra_frame = |data| frame(width, height, Pixels::Bgra(Plane { data, stride: 32 }));
    assert!(to_rgb(&bgra_frame(&bgra)).is_ok());
    assert!(matches!(
        reason(to_rgb(&bgra_frame(&bgra[..155]))),
        Reason::ShortPlane { plane: "BGRA", .. }
    ));
}

#[test]
fn strides_shorter_than_a_row_are_rejected() {
    let (width, height) = (7, 5);
    let colour = Colour::UVC;
    let big = vec![0u8; 1024];
    assert_eq!(
        reason(to_rgb(&nv12_frame(width, height, &big, 6, &big, 8, colour))),
        Reason::ShortStride {
            plane: "Y",
            stride: 6,
            row: 7
        }
    );
    // An odd width still needs a whole Cb/Cr pair at the end of each row.
    assert_eq!(
        reason(to_rgb(&nv12_frame(width, height, &big, 8, &big, 7, colour))),
        Reason::ShortStride {
            plane: "CbCr",
            stride: 7,
            row: 8
        }
    );
    assert_eq!(
        reason(to_rgb(&packed_frame(
            width, height, &big, 14, colour, false
        ))),
        Reason::ShortStride {
            plane: "packed",
            stride: 14,
            row: 16
        }
    );
    let bgra = frame(
        width,
        height,
        Pixels::Bgra(Plane {
            data: &big,
            stride: 27,
        }),
    );
    assert!(matches!(
        reason(to_rgb(&bgra)),
        Reason::ShortStride { plane: "BGRA", .. }
    ));
    let zero = frame(
        width,
        height,
        Pixels::Bgra(Plane {
            data: &big,
            stride: 0,
        }),
    );
    assert!(matches!(reason(to_rgb(&zero)), Reason::ShortStride { .. }));
}

#[test]
fn huge_strides_are_errors_not_panics() {
    let big = vec![0u8; 1024];
    for stride in [
        usize::MAX,
        usize::MAX / 2 + 1,
        1 << 40,
        u32::MAX as usize + 1,
    ] {
        let raw = nv12_frame(8, 8, &big, stride, &big, 8, Colour::UVC);
        assert!(
            matches!(reason(to_rgb(&raw)), Reason::HugeStride { plane: "Y", .. }),
            "stride {stride}"
        );
    }
    // Fits u32 but not the plane.
    let raw = packed_frame(8, 8, &big, u32::MAX as usize, Colour::UVC, false);
    assert!(matches!(reason(to_rgb(&raw)), Reason::ShortPlane { .. }));
}

#[test]
fn errors_name_format_size_and_reason_on_one_line() {
    let y = [0u8; 10];
    let err = to_rgb(&nv12_frame(7, 5, &y, 7, &y, 8, Colour::UVC)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "nv12 frame of 7x5: Y plane holds 10 bytes, needs 35"
    );
    let err = to_rgb(&frame(0, 3, Pixels::Mjpeg(&[]))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "mjpeg frame of 0x3: width and height must be 1..=16384"
    );
    let err = to_rgb(&frame(2, 2, Pixels::Mjpeg(&[1, 2, 3]))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "mjpeg frame of 2x2: not a JPEG (no SOI marker)"
    );
}
