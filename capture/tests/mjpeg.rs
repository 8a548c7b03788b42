//! MJPEG frames as UVC cameras send them: JPEGs without Huffman tables, and
//! broken ones.

use std::borrow::Cow;
use std::time::Duration;

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use posed_capture::convert::Reason;
use posed_capture::mjpeg::{decode, insert_huffman_tables, MjpegError};
use posed_capture::{to_rgb, Pixels, RawFrame, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_jpeg::JpegDecoder;

const DHT: u8 = 0xc4;
const SOS: u8 = 0xda;

/// 4:2:2 and 4:2:0, the subsamplings UVC cameras send.
const SAMPLINGS: [SamplingFactor; 2] = [SamplingFactor::F_2_1, SamplingFactor::F_2_2];

const SIZES: [(u16, u16); 3] = [(64, 48), (37, 29), (8, 8)];

fn gradient(width: u16, height: u16) -> Vec<u8> {
    let (w, h) = (u32::from(width), u32::from(height));
    (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .flat_map(|(x, y)| {
            let r = x * 255 / w.max(2).saturating_sub(1).max(1);
            let g = y * 255 / h.max(2).saturating_sub(1).max(1);
            let b = (x + y) * 255 / (w + h);
            [r, g, b].map(|v| u8::try_from(v.min(255)).unwrap())
        })
        .collect()
}

fn encode(width: u16, height: u16, sampling: SamplingFactor) -> Vec<u8> {
    let mut jpeg = Vec::new();
    let mut encoder = Encoder::new(&mut jpeg, 85);
    encoder.set_sampling_factor(sampling);
    encoder
        .encode(&gradient(width, height), width, height, ColorType::Rgb)
        .unwrap();
    jpeg
}

/// The marker segments before the first scan: (start, marker, end).
fn segments(jpeg: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut found = Vec::new();
    let mut pos = 2;
    while jpeg[pos + 1] != SOS {
        let len = usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
        found.push((pos, jpeg[pos + 1], pos + 2 + len));
        pos += 2 + len;
    }
    found.push((pos, SOS, pos));
    found
}

/// `jpeg` with every DHT segment cut out, as a UVC camera sends it.
fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut scan = 0;
    for (start, marker, end) in segments(jpeg) {
        if marker == SOS {
            scan = start;
        } else if marker != DHT {
            out.extend_from_slice(&jpeg[start..end]);
        }
    }
    out.extend_from_slice(&jpeg[scan..]);
    out
}

fn zune(jpeg: &[u8]) -> Result<Vec<u8>, String> {
    JpegDecoder::new(ZCursor::new(jpeg))
        .decode()
        .map_err(|e| e.to_string())
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

fn frame(jpeg: &[u8], width: u32, height: u32) -> RawFrame<'_> {
    RawFrame {
        width,
        height,
        pixels: Pixels::Mjpeg(jpeg),
        driver_time: None,
        driver_now: Duration::ZERO,
        sequence: 0,
    }
}

/// Ok must be a whole image of the frame's size; Err is fine. A panic fails
/// the test.
fn image_or_error(jpeg: &[u8], width: u16, height: u16) -> bool {
    match decode(jpeg, width.into(), height.into()) {
        Ok(RgbImage {
            width: w,
            height: h,
            data,
        }) => {
            assert_eq!((w, h), (width.into(), height.into()));
            assert_eq!(data.len(), w * h * 3);
            true
        }
        Err(_) => false,
    }
}

#[test]
fn stripped_frames_fail_in_zune_alone_and_decode_like_the_original() {
    for sampling in SAMPLINGS {
        for (width, height) in SIZES {
            let what = format!("{sampling:?} {width}x{height}");
            let original = encode(width, height, sampling);
            let stripped = strip_dht(&original);
            assert!(
                segments(&original).iter().filter(|s| s.1 == DHT).count() >= 2,
                "{what}: the encoder wrote no tables"
            );
            assert!(!segments(&stripped).iter().any(|s| s.1 == DHT), "{what}");

            let err = zune(&stripped).expect_err("zune-jpeg decoded a JPEG without tables");
            assert!(err.contains("table"), "{what}: {err}");

            let reference = zune(&original).unwrap();
            let ours = decode(&stripped, width.into(), height.into()).unwrap();
            assert_eq!((ours.width, ours.height), (width.into(), height.into()));
            assert!(max_diff(&ours.data, &reference) <= 2, "{what}");
            // And both are the picture that went in, give or take JPEG (an 8x8
            // gradient of 36 levels a pixel loses most to 4:2:x).
            let source = gradient(width, height);
            let mean = ours
                .data
                .iter()
                .zip(&source)
                .map(|(a, b)| u32::from(a.abs_diff(*b)))
                .sum::<u32>()
                / u32::try_from(source.len()).unwrap();
            assert!(mean <= 8, "{what}: mean error {mean}");

            let via_frame = to_rgb(&frame(&stripped, width.into(), height.into())).unwrap();
            assert_eq!(via_frame, ours, "{what}");
        }
    }
}

#[test]
fn tables_go_right_before_the_first_scan() {
    let original = encode(64, 48, SamplingFactor::F_2_1);
    let stripped = strip_dht(&original);
    let scan = segments(&stripped).last().unwrap().0;
    let fixed = insert_huffman_tables(&stripped).unwrap();
    assert!(matches!(fixed, Cow::Owned(_)));
    assert_eq!(&fixed[..scan], &stripped[..scan]);
    assert_eq!(&fixed[scan..scan + 2], &[0xff, DHT]);
    assert_eq!(fixed.len(), stripped.len() + 420);
    assert_eq!(&fixed[scan + 420..], &stripped[scan..]);
    // Once in, they are found and not added again.
    assert!(matches!(
        insert_huffman_tables(&fixed),
        Ok(Cow::Borrowed(_))
    ));
}

#[test]
fn frames_with_tables_are_left_alone() {
    for sampling in SAMPLINGS {
        let original = encode(37, 29, sampling);
        match insert_huffman_tables(&original).unwrap() {
            Cow::Borrowed(same) => assert_eq!(same, &original[..]),
            Cow::Owned(_) => panic!("{sampling:?}: tables added to a JPEG that had them"),
        }
        let ours = decode(&original, 37, 29).unwrap();
        assert_eq!(ours.data, zune(&original).unwrap());
    }
}

#[test]
fn a_frame_of_another_size_is_refused() {
    let original = encode(64, 48, SamplingFactor::F_2_1);
    let stripped = strip_dht(&original);
    let mismatch = MjpegError::SizeMismatch {
        found_width: 64,
        found_height: 48,
    };
    for (w, h) in [(32, 24), (64, 47), (65, 48), (640, 480), (48, 64)] {
        assert_eq!(decode(&stripped, w, h), Err(mismatch.clone()), "{w}x{h}");
        let err = to_rgb(&frame(&stripped, w, h)).unwrap_err();
        assert_eq!(err.reason, Reason::Mjpeg(mismatch.clone()));
        assert_eq!(
            err.to_string(),
            format!("mjpeg frame of {w}x{h}: JPEG is 64x48, not the frame's size")
        );
    }
}

#[test]
fn every_truncation_is_an_error_or_an_image() {
    for sampling in SAMPLINGS {
        for jpeg in [
            encode(37, 29, sampling),
            strip_dht(&encode(37, 29, sampling)),
        ] {
            let decoded = (0..=jpeg.len())
                .filter(|&len| image_or_error(&jpeg[..len], 37, 29))
                .count();
            // Cut inside the headers nothing decodes; cut inside the scan
            // zune pads the rest, as a glitched frame would look.
            assert!(decoded < jpeg.len(), "{sampling:?}");
            assert!(image_or_error(&jpeg, 37, 29));
        }
    }
}

#[test]
fn bit_flips_are_errors_or_images() {
    let jpeg = strip_dht(&encode(37, 29, SamplingFactor::F_2_2));
    let mut broken = jpeg.clone();
    for i in 0..jpeg.len() {
        for value in [jpeg[i] ^ (1 << (i % 8)), 0xff, 0x00] {
            broken[i] = value;
            image_or_error(&broken, 37, 29);
        }
        broken[i] = jpeg[i];
    }
}

#[test]
fn garbage_is_an_error() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state.to_le_bytes()[0]
    };
    for len in 0..600 {
        let noise: Vec<u8> = (0..len).map(|_| next()).collect();
        assert!(!image_or_error(&noise, 16, 16), "noise of {len}");
        let mut with_soi = vec![0xff, 0xd8];
        with_soi.extend_from_slice(&noise);
        image_or_error(&with_soi, 16, 16);
    }
    let hostile: [&[u8]; 8] = [
        &[],
        &[0xff],
        &[0xff, 0xd8],
        &[0xff, 0xd8, 0xff, 0xd9],
        &[0xff, 0xd8, 0xff, 0xff, 0xff, 0xff],
        &[0xff, 0xd8, 0xff, 0xda],
        &[
            0xff, 0xd8, 0xff, 0xc0, 0x00, 0x0b, 8, 0xff, 0xff, 0xff, 0xff, 1, 1, 0x11, 0,
        ],
        &[0xff, 0xd8, 0xff, 0xe0, 0x00, 0x00, 0xff, 0xda],
    ];
    for jpeg in hostile {
        assert!(decode(jpeg, 16, 16).is_err(), "{jpeg:02x?}");
    }
}
