//! Pushed images: `posed::decode::decode` (JPEG/PNG with the pixel cap, or
//! raw RGB8) and `decode::decode_hint` (matte hints). The first byte picks
//! the path and the cap; raw images take their size from the next eight
//! bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed::decode;
use posed::proto::{push_image_request::Image, RawImage};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Caps from 1 pixel to 2^20 (a fuzzer should not wait on 16-MP images).
    let max_pixels = 1u64 << (mode as u64 % 21);
    let limits = decode::ImageLimits {
        max_pixels,
        ..Default::default()
    };
    match mode / 64 {
        0 | 1 => {
            let image = Image::Encoded(rest.to_vec());
            if let Ok(rgb) = decode::decode(Some(&image), &limits) {
                assert!((rgb.width * rgb.height) as u64 <= max_pixels);
                assert_eq!(rgb.data.len(), rgb.width * rgb.height * 3);
            }
        }
        2 => {
            if rest.len() < 8 {
                return;
            }
            let width = u32::from_le_bytes(rest[..4].try_into().unwrap());
            let height = u32::from_le_bytes(rest[4..8].try_into().unwrap());
            let raw = RawImage {
                width,
                height,
                data: rest[8..].to_vec(),
            };
            let _ = decode::decode(Some(&Image::RawRgb(raw)), &limits);
        }
        _ => {
            if rest.len() < 4 {
                return;
            }
            let width = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            let height = u16::from_le_bytes([rest[2], rest[3]]) as usize;
            if let Ok(grey) = decode::decode_hint(&rest[4..], width, height) {
                assert_eq!(grey.len(), width * height);
            }
        }
    }
});
