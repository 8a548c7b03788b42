//! Frame conversion and MJPEG decode per frame: `to_rgb` ("new") beside the
//! nokhwa-core decoders posed used through `Buffer::decode_image::<RgbFormat>`
//! ("nokhwa"). nokhwa's NV12 takes only a packed buffer (w·h·3/2, no row
//! padding), so it gets one while ours gets CoreVideo-like padded rows; nokhwa
//! has no BGRA decoder. MJPEG is 4:2:2 at quality 85; "new-no-dht" is the same
//! frame without its Huffman tables, as UVC cameras send it.
//!
//! `cargo bench -p posed-capture --bench convert`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use nokhwa_core::buffer::Buffer;
use nokhwa_core::pixel_format::RgbFormat;
use nokhwa_core::types::{FrameFormat, Resolution};
use posed_capture::{to_rgb, Colour, Pixels, Plane, RawFrame};

const SIZES: [(usize, usize); 2] = [(640, 480), (1280, 720)];

/// A smooth scene with a little grain, for the JPEG encoder.
fn scene(width: usize, height: usize) -> Vec<u8> {
    let grain = |x: usize, y: usize| ((x * 7919 + y * 104_729) % 13) as u8;
    (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .flat_map(|(x, y)| {
            let r = (x * 200 / width) as u8 + grain(x, y);
            let g = (y * 200 / height) as u8 + grain(y, x);
            let b = ((x + y) * 100 / (width + height)) as u8 + 60;
            [r, g, b]
        })
        .collect()
}

/// Bytes whose values vary, for the raw formats (speed does not depend on them).
fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn raw(width: usize, height: usize, pixels: Pixels<'_>) -> RawFrame<'_> {
    RawFrame {
        width: width.try_into().unwrap(),
        height: height.try_into().unwrap(),
        pixels,
        driver_time: None,
        driver_now: Duration::ZERO,
        sequence: 0,
    }
}

fn nokhwa(width: usize, height: usize, data: &[u8], format: FrameFormat) -> Buffer {
    let resolution = Resolution::new(width.try_into().unwrap(), height.try_into().unwrap());
    Buffer::new(resolution, data, format)
}

fn bench_new(c: &mut Criterion, id: &str, frame: &RawFrame<'_>) {
    to_rgb(frame).unwrap();
    c.bench_function(id, |b| b.iter(|| to_rgb(black_box(frame)).unwrap()));
}

fn bench_nokhwa(c: &mut Criterion, id: &str, buffer: &Buffer) {
    buffer.decode_image::<RgbFormat>().unwrap();
    c.bench_function(id, |b| {
        b.iter(|| black_box(buffer).decode_image::<RgbFormat>().unwrap())
    });
}

fn nv12(c: &mut Criterion, width: usize, height: usize) {
    let name = format!("nv12/{width}x{height}");
    let stride = width.next_multiple_of(64) + 64;
    let (y, uv) = (bytes(stride * height), bytes(stride * height / 2));
    let frame = raw(
        width,
        height,
        Pixels::Nv12 {
            y: Plane { data: &y, stride },
            uv: Plane { data: &uv, stride },
            colour: Colour::UVC,
        },
    );
    bench_new(c, &format!("{name}/new"), &frame);
    let packed = bytes(width * height * 3 / 2);
    let buffer = nokhwa(width, height, &packed, FrameFormat::NV12);
    bench_nokhwa(c, &format!("{name}/nokhwa"), &buffer);
}

fn yuyv(c: &mut Criterion, width: usize, height: usize) {
    let name = format!("yuyv/{width}x{height}");
    let data = bytes(width * height * 2);
    let plane = Plane {
        data: &data,
        stride: width * 2,
    };
    let colour = Colour::UVC;
    bench_new(
        c,
        &format!("{name}/new"),
        &raw(width, height, Pixels::Yuyv { plane, colour }),
    );
    let buffer = nokhwa(width, height, &data, FrameFormat::YUYV);
    bench_nokhwa(c, &format!("{name}/nokhwa"), &buffer);
}

fn bgra(c: &mut Criterion, width: usize, height: usize) {
    let stride = width * 4 + 64;
    let data = bytes(stride * height);
    let frame = raw(
        width,
        height,
        Pixels::Bgra(Plane {
            data: &data,
            stride,
        }),
    );
    bench_new(c, &format!("bgra/{width}x{height}/new"), &frame);
}

fn mjpeg(c: &mut Criterion, width: usize, height: usize) {
    let name = format!("mjpeg/{width}x{height}");
    let mut jpeg = Vec::new();
    let mut encoder = Encoder::new(&mut jpeg, 85);
    encoder.set_sampling_factor(SamplingFactor::F_2_1);
    let (w, h) = (width.try_into().unwrap(), height.try_into().unwrap());
    encoder
        .encode(&scene(width, height), w, h, ColorType::Rgb)
        .unwrap();
    bench_new(
        c,
        &format!("{name}/new"),
        &raw(width, height, Pixels::Mjpeg(&jpeg)),
    );
    let bare = without_dht(&jpeg);
    bench_new(
        c,
        &format!("{name}/new-no-dht"),
        &raw(width, height, Pixels::Mjpeg(&bare)),
    );
    let buffer = nokhwa(width, height, &jpeg, FrameFormat::MJPEG);
    bench_nokhwa(c, &format!("{name}/nokhwa"), &buffer);
}

/// `jpeg` less its DHT segments (jpeg-encoder writes no fill bytes).
fn without_dht(jpeg: &[u8]) -> Vec<u8> {
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

fn convert(c: &mut Criterion) {
    for (width, height) in SIZES {
        nv12(c, width, height);
        yuyv(c, width, height);
        bgra(c, width, height);
        mjpeg(c, width, height);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = convert
}
criterion_main!(benches);
