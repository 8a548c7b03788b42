//! `posed_capture::to_rgb` on frames whose sizes, strides and plane lengths
//! are whatever a driver might hand over.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use posed_capture::{Colour, Pixels, Plane, RawFrame, YuvMatrix, YuvRange};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    format: u8,
    colour: u8,
    width: u16,
    height: u16,
    /// Strides relative to a row's bytes, so that most are near it.
    stride_a: i16,
    stride_b: i16,
    split: u16,
    bytes: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let colour = Colour {
        range: if input.colour & 1 == 0 {
            YuvRange::Limited
        } else {
            YuvRange::Full
        },
        matrix: if input.colour & 2 == 0 {
            YuvMatrix::Bt601
        } else {
            YuvMatrix::Bt709
        },
    };
    let (w, h) = (u32::from(input.width), u32::from(input.height));
    let stride = |row: usize, delta: i16| row.saturating_add_signed(isize::from(delta));
    let split = usize::from(input.split).min(input.bytes.len());
    let (a, b) = input.bytes.split_at(split);
    let row = |bytes_per_pixel: usize| w as usize * bytes_per_pixel;
    let pixels = match input.format % 5 {
        0 => Pixels::Nv12 {
            y: Plane {
                data: a,
                stride: stride(row(1), input.stride_a),
            },
            uv: Plane {
                data: b,
                stride: stride(row(1).div_ceil(2) * 2, input.stride_b),
            },
            colour,
        },
        1 => Pixels::Yuyv {
            plane: Plane {
                data: input.bytes,
                stride: stride(row(1).div_ceil(2) * 4, input.stride_a),
            },
            colour,
        },
        2 => Pixels::Uyvy {
            plane: Plane {
                data: input.bytes,
                stride: stride(row(1).div_ceil(2) * 4, input.stride_a),
            },
            colour,
        },
        3 => Pixels::Bgra(Plane {
            data: input.bytes,
            stride: stride(row(4), input.stride_a),
        }),
        _ => Pixels::Mjpeg(input.bytes),
    };
    let frame = RawFrame {
        width: w,
        height: h,
        pixels,
        driver_time: None,
        driver_now: std::time::Duration::ZERO,
        sequence: 0,
    };
    if let Ok(img) = posed_capture::to_rgb(&frame) {
        assert_eq!((img.width, img.height), (w as usize, h as usize));
        assert_eq!(img.data.len(), img.width * img.height * 3);
    }
});
