//! Property tests for what drivers hand over (issue #23): MJPEG frames
//! (header walk, Huffman table insertion, zune-jpeg) and raw frames of any
//! size, stride and plane length. Any input ends in an image of the frame's
//! size or an error, never a panic. The valid inputs here are also the fuzz
//! targets' seeds: `cargo test -p posed-capture --test prop -- --ignored
//! write_fuzz_seeds` rewrites `fuzz/corpus/{mjpeg,convert}/`.

use std::path::Path;
use std::time::Duration;

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use posed_capture::mjpeg::{decode, insert_huffman_tables};
use posed_capture::{to_rgb, Colour, Pixels, Plane, RawFrame, YuvMatrix, YuvRange};
use proptest::prelude::*;

fn encode(width: u16, height: u16, sampling: SamplingFactor) -> Vec<u8> {
    let rgb: Vec<u8> = (0..usize::from(width) * usize::from(height) * 3)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut jpeg = Vec::new();
    let mut encoder = Encoder::new(&mut jpeg, 80);
    encoder.set_sampling_factor(sampling);
    encoder.encode(&rgb, width, height, ColorType::Rgb).unwrap();
    jpeg
}

/// `jpeg` without its DHT segments, as UVC cameras send it.
fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut pos = 2;
    while jpeg[pos + 1] != 0xda {
        let end = pos + 2 + usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
        if jpeg[pos + 1] != 0xc4 {
            out.extend_from_slice(&jpeg[pos..end]);
        }
        pos = end;
    }
    out.extend_from_slice(&jpeg[pos..]);
    out
}

/// Small JPEGs: (width, height, bytes), with and without Huffman tables.
fn jpeg_seeds() -> Vec<(u16, u16, Vec<u8>)> {
    let mut out = Vec::new();
    for (w, h, s) in [
        (8, 8, SamplingFactor::F_2_1),
        (13, 7, SamplingFactor::F_2_2),
        (16, 16, SamplingFactor::F_1_1),
    ] {
        let jpeg = encode(w, h, s);
        out.push((w, h, strip_dht(&jpeg)));
        out.push((w, h, jpeg));
    }
    out
}

/// One edit of a valid frame.
#[derive(Debug, Clone)]
enum Edit {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    /// A JPEG segment length or size field: two big-endian bytes.
    Word(usize, u16),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Edit::Flip(i, x)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (
            any::<usize>(),
            prop_oneof![Just(0u16), Just(1), Just(2), Just(0xffff), any::<u16>()]
        )
            .prop_map(|(i, v)| Edit::Word(i, v)),
    ];
    proptest::collection::vec(edit, 1..4)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match e {
            Edit::Truncate(i) => bytes.truncate(i % n),
            Edit::Flip(i, x) => {
                if let Some(b) = bytes.get_mut(i % n) {
                    *b ^= x;
                }
            }
            Edit::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Word(i, v) => {
                let at = i % n;
                for (k, b) in v.to_be_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + k) {
                        *slot = b;
                    }
                }
            }
        }
    }
    bytes
}

fn check_mjpeg(jpeg: &[u8], w: u32, h: u32) {
    let _ = insert_huffman_tables(jpeg);
    if let Ok(img) = decode(jpeg, w, h) {
        assert_eq!((img.width, img.height), (w as usize, h as usize));
        assert_eq!(img.data.len(), img.width * img.height * 3);
    }
}

fn colour(bits: u8) -> Colour {
    Colour {
        range: if bits & 1 == 0 {
            YuvRange::Limited
        } else {
            YuvRange::Full
        },
        matrix: if bits & 2 == 0 {
            YuvMatrix::Bt601
        } else {
            YuvMatrix::Bt709
        },
    }
}

/// A raw frame as the fuzz target `convert` builds it from its input.
#[derive(Debug, Clone)]
struct Raw {
    format: u8,
    colour: u8,
    width: u32,
    height: u32,
    stride_a: usize,
    stride_b: usize,
    split: usize,
    bytes: Vec<u8>,
}

fn convert(raw: &Raw) {
    let split = raw.split.min(raw.bytes.len());
    let (a, b) = raw.bytes.split_at(split);
    let colour = colour(raw.colour);
    let plane = |data, stride| Plane { data, stride };
    let pixels = match raw.format % 5 {
        0 => Pixels::Nv12 {
            y: plane(a, raw.stride_a),
            uv: plane(b, raw.stride_b),
            colour,
        },
        1 => Pixels::Yuyv {
            plane: plane(&raw.bytes, raw.stride_a),
            colour,
        },
        2 => Pixels::Uyvy {
            plane: plane(&raw.bytes, raw.stride_a),
            colour,
        },
        3 => Pixels::Bgra(plane(&raw.bytes, raw.stride_a)),
        _ => Pixels::Mjpeg(&raw.bytes),
    };
    let frame = RawFrame {
        width: raw.width,
        height: raw.height,
        pixels,
        driver_time: None,
        driver_now: Duration::ZERO,
        sequence: 0,
    };
    if let Ok(img) = to_rgb(&frame) {
        assert_eq!(
            (img.width, img.height),
            (raw.width as usize, raw.height as usize)
        );
        assert_eq!(img.data.len(), img.width * img.height * 3);
    }
}

/// Frames near the sizes their format needs: strides a few bytes either
/// side of a row, planes a few bytes either side of stride × rows, and
/// sides up to the limit (with short planes) and past it.
fn raw_frames() -> impl Strategy<Value = Raw> {
    let side = prop_oneof![1u32..40, Just(0), Just(16384), Just(16385), Just(u32::MAX)];
    (
        any::<u8>(),
        any::<u8>(),
        side.clone(),
        side,
        -8i64..8,
        -8i64..8,
        prop_oneof![Just(usize::MAX), Just(0usize), 0usize..(1 << 20)],
        -16i64..16,
        any::<u64>(),
    )
        .prop_map(
            |(format, colour, width, height, da, db, huge, dlen, fill)| {
                let w = (width as usize).min(64);
                let h = (height as usize).min(64);
                let row = match format % 5 {
                    0 => w,
                    1 | 2 => w.div_ceil(2) * 4,
                    3 => w * 4,
                    _ => 0,
                };
                let stride_a = if huge > (1 << 19) {
                    huge
                } else {
                    row.saturating_add_signed(da as isize)
                };
                let stride_b = (w.div_ceil(2) * 2).saturating_add_signed(db as isize);
                let len_a = stride_a.min(1 << 12) * h;
                let len_b = stride_b * h.div_ceil(2);
                let total = (len_a + len_b).saturating_add_signed(dlen as isize);
                let bytes = (0..total)
                    .map(|i| (fill.rotate_left(i as u32 % 64) >> 3) as u8)
                    .collect();
                Raw {
                    format,
                    colour,
                    width,
                    height,
                    stride_a,
                    stride_b,
                    split: len_a,
                    bytes,
                }
            },
        )
}

#[test]
fn seeds_decode() {
    for (w, h, jpeg) in jpeg_seeds() {
        let img = decode(&jpeg, w.into(), h.into()).unwrap();
        assert_eq!(img.data.len(), usize::from(w) * usize::from(h) * 3);
    }
}

#[test]
fn every_prefix_of_a_frame_is_an_image_or_an_error() {
    for (w, h, jpeg) in jpeg_seeds() {
        for n in 0..jpeg.len() {
            check_mjpeg(&jpeg[..n], w.into(), h.into());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mjpeg_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256), w in 0u32..70, h in 0u32..70) {
        let mut jpeg = vec![0xff, 0xd8];
        jpeg.extend(bytes);
        check_mjpeg(&jpeg, w, h);
    }

    #[test]
    fn mjpeg_takes_mutated_frames(seed in 0..6usize, e in edits(), other_size: bool) {
        let (w, h, jpeg) = jpeg_seeds().swap_remove(seed);
        let jpeg = apply(jpeg, &e);
        let (w, h) = if other_size { (u32::from(w) + 1, u32::from(h)) } else { (w.into(), h.into()) };
        check_mjpeg(&jpeg, w, h);
    }

    #[test]
    fn raw_frames_convert_or_fail(raw in raw_frames()) {
        convert(&raw);
    }
}

/// Writes the seeds into `fuzz/corpus/` (see fuzz/README.md): for `mjpeg`
/// the claimed size (two little-endian u16) then the JPEG; for `convert` the
/// `arbitrary` encoding is not stable, so a few byte strings that reach
/// every format.
#[test]
#[ignore = "writes the fuzz seed corpus"]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let dir = root.join("mjpeg");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (w, h, jpeg)) in jpeg_seeds().into_iter().enumerate() {
        let mut bytes = w.to_le_bytes().to_vec();
        bytes.extend(h.to_le_bytes());
        bytes.extend(jpeg);
        std::fs::write(dir.join(format!("seed-{i}")), bytes).unwrap();
    }
    let dir = root.join("convert");
    std::fs::create_dir_all(&dir).unwrap();
    for format in 0u8..5 {
        // format, colour, width 4, height 4, strides +0, split 64, then
        // 128 bytes of plane data.
        let mut bytes = vec![format, 1, 4, 0, 4, 0, 0, 0, 0, 0, 64, 0];
        bytes.extend((0..128u32).map(|i| (i * 37 % 256) as u8));
        std::fs::write(dir.join(format!("seed-{format}")), bytes).unwrap();
    }
    let (w, h, jpeg) = jpeg_seeds().swap_remove(0);
    let mut bytes = vec![4, 0];
    bytes.extend(w.to_le_bytes());
    bytes.extend(h.to_le_bytes());
    bytes.extend([0, 0, 0, 0, 0, 0]);
    bytes.extend(jpeg);
    std::fs::write(dir.join("seed-jpeg"), bytes).unwrap();
}

/// Found by the `convert` fuzz target: a progressive 8x8 frame whose second
/// component is sampled 4x2 against the first's 2x1. zune-jpeg 0.5.15's
/// AVX2 upsampler asserts on it (a panic in the capture thread).
const CHROMA_SAMPLED_ABOVE_LUMA: [u8; 208] = [
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x30, 0x4d, 0x52, 0x46, 0x00, 0x00, 0x00, 0x01,
    0x01, 0x01, 0x00, 0x00, 0xff, 0xc2, 0x00, 0x11, 0x08, 0x00, 0x08, 0x00, 0x08, 0x03, 0x00, 0x21,
    0x00, 0x01, 0x42, 0x01, 0x02, 0x11, 0x01, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x06, 0x04, 0x05, 0x06,
    0x05, 0x04, 0x06, 0x06, 0x05, 0x06, 0x07, 0x0a, 0x06, 0x08, 0x0a, 0x10, 0x0a, 0x0a, 0x09, 0x04,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x14, 0x17, 0x18, 0x18, 0x14, 0x16, 0x16, 0x1a, 0x1d,
    0x25, 0x17, 0x1b, 0x1a, 0x1c, 0x23, 0x16, 0x16, 0x20, 0x2c, 0x20, 0x23, 0x26, 0x27, 0x29, 0xaa,
    0x29, 0x19, 0x1f, 0x94, 0x2d, 0x30, 0x28, 0xe4, 0xd6, 0x28, 0x35, 0x38, 0xff, 0xdb, 0x00, 0x43,
    0x01, 0x07, 0x07, 0x17, 0x0a, 0x0a, 0x13, 0x08, 0x0a, 0x0a, 0x13, 0x28, 0x1a, 0x16, 0x1a, 0x28,
    0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0xd8, 0xe6, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7,
    0xde, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x2a, 0x28, 0x28, 0x28,
    0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x1f, 0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x28, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x00, 0x00, 0x01, 0x11, 0x02, 0x11, 0x00, 0x28, 0x28, 0x28,
    0x28, 0x00, 0xd5, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc8, 0xff, 0xdd, 0x31,
];

#[test]
fn a_frame_with_chroma_sampled_above_luma_is_an_error() {
    let e = decode(&CHROMA_SAMPLED_ABOVE_LUMA, 8, 8).unwrap_err();
    assert!(e.to_string().contains("sampling"), "{e}");
}
