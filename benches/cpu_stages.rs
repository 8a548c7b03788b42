//! Criterion micro-benchmarks of the hand route's CPU-side stages, on the
//! harness's 640×480 JPEG: decode, letterbox, crop warp, detector NMS, MANO
//! (MLX on the CPU here) and event serialization.
//!
//!   cargo bench --bench cpu_stages [-- <filter>]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use mlx_rs::Array;
use posed::engine::Frame;
use posed::proto::push_image_request::Image;
use posed_models::hand_detector::{select_detections, DetectorConfig};
use posed_models::hand_pipeline::HandEstimate;
use posed_models::image::{crop_hand, letterbox, HandCrop, RgbImage};
use posed_models::mano::Mano;
use posed_models::random_weights;
use prost::Message;

fn decode_and_warps(c: &mut Criterion) {
    let jpeg = Image::Encoded(posed::bench::test_jpeg());
    c.bench_function("decode 640x480 jpeg", |b| {
        b.iter(|| {
            posed::decode::decode(Some(black_box(&jpeg)), &posed::decode::ImageLimits::NONE)
                .unwrap()
        })
    });
    let rgb = posed::decode::decode(Some(&jpeg), &posed::decode::ImageLimits::NONE).unwrap();
    let img = RgbImage::new(rgb.width, rgb.height, &rgb.data).unwrap();
    let size = DetectorConfig::yolov8m().input_size as usize;
    c.bench_function(&format!("letterbox to {size}"), |b| {
        b.iter(|| letterbox(black_box(img), size))
    });
    let crop = HandCrop::from_box([200.0, 150.0, 290.0, 260.0], false, 2.0);
    c.bench_function("crop warp 256 (left hand, mirrored)", |b| {
        b.iter(|| crop_hand(black_box(img), &crop, 256))
    });
}

/// Decoded predictions for every anchor of a 512² input (three strides):
/// most below the threshold, a few overlapping clusters above it.
fn nms(c: &mut Criterion) {
    let cfg = DetectorConfig::yolov8m();
    let rows = cfg.output_rows() as usize;
    let anchors: usize = [8, 16, 32]
        .iter()
        .map(|s| (cfg.input_size as usize / s).pow(2))
        .sum();
    let mut pred = vec![0.01f32; anchors * rows];
    for (a, p) in pred.chunks_exact_mut(rows).enumerate() {
        let cluster = (a % 4) as f32;
        p[..4].copy_from_slice(&[100.0 + 80.0 * cluster + (a % 7) as f32, 200.0, 60.0, 70.0]);
        if a % 50 == 0 {
            p[4 + a % 2] = 0.3 + (a % 13) as f32 / 20.0;
        }
    }
    let mut bench = |name: String, pred: &[f32]| {
        c.bench_function(&name, |b| {
            b.iter(|| {
                select_detections(
                    black_box(pred),
                    rows,
                    cfg.nc as usize,
                    cfg.conf_threshold,
                    cfg.iou_threshold,
                )
            })
        });
    };
    bench(format!("nms over {anchors} anchors"), &pred);
    // Random weights (the harness's synthetic detector): scores near 0.5,
    // so every anchor is a candidate, spread over the image.
    for (a, p) in pred.chunks_exact_mut(rows).enumerate() {
        let u = |k: usize| ((a * 7919 + k * 104_729) % 1000) as f32 / 1000.0;
        p[..4].copy_from_slice(&[
            512.0 * u(1),
            512.0 * u(2),
            40.0 + 200.0 * u(3),
            40.0 + 200.0 * u(4),
        ]);
        p[4] = 0.35 + 0.3 * u(5);
        p[5] = 0.35 + 0.3 * u(6);
    }
    bench(format!("nms over {anchors} anchors, all candidates"), &pred);
}

fn mano(c: &mut Criterion) {
    let mano = Mano::from_arrays(
        "synthetic",
        &random_weights::npy_map(random_weights::synthetic_mano(1)),
    )
    .unwrap();
    let eye: Vec<f32> = (0..2 * 16)
        .flat_map(|_| [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
        .collect();
    let rotations = Array::from_slice(&eye, &[2, 16, 3, 3]);
    let betas = Array::from_slice(&[0.1f32; 20], &[2, 10]);
    c.bench_function("mano 2 hands (MLX, evaluated)", |b| {
        b.iter(|| {
            let (v, k) = mano.forward(&rotations, &betas).unwrap();
            mlx_rs::transforms::eval([&v, &k]).unwrap();
        })
    });
}

fn serialization(c: &mut Criterion) {
    let hand = |right: bool| HandEstimate {
        hand: posed_models::hand_pipeline::HandBox {
            bbox: [10.0, 20.0, 100.0, 130.0],
            is_right: right,
            score: 0.9,
            keypoints_2d: vec![[1.0, 2.0, 0.9]; 21],
        },
        keypoints_3d: vec![[0.01, 0.02, 0.03]; 21],
        vertices: vec![[0.01, 0.02, 0.03]; 778],
        cam_t: [0.0, 0.1, 0.5],
        keypoints_2d_projected: vec![[1.0, 2.0]; 21],
        global_orient: [0.1, 0.2, 0.3],
        hand_pose: vec![[0.1, 0.2, 0.3]; 15],
        betas: vec![0.1; 10],
        crop_cam: [1.0, 0.0, 0.0],
        camera: posed_models::camera::Intrinsics::pseudo(5000.0, 256.0, 640.0, 480.0),
    };
    let frame = Frame {
        id: 1,
        source_id: "bench".into(),
        client_frame_id: 0,
        captured: SystemTime::now(),
        received: std::time::Instant::now(),
        stream: None,
        width: 640,
        height: 480,
        rgb: Vec::new(),
        intrinsics: None,
    };
    let result = |id, is_right| {
        let pose = hand(is_right);
        posed::routes::hands::HandResult {
            hand: pose.hand.clone(),
            origin: posed::routes::hands::HandOrigin::Tracked,
            track: posed::tracking::hands::TrackedHand {
                id,
                is_right,
                handedness: 0.9,
            },
            tracking_confidence: 0.9,
            pose: Some(pose),
        }
    };
    let output = posed::routes::hands::HandsOutput {
        hands: vec![result(1, true), result(2, false)],
        ended: Vec::new(),
        detector_ran: false,
        camera: posed_models::camera::Intrinsics::pseudo(5000.0, 256.0, 640.0, 480.0),
        camera_given: false,
    };
    c.bench_function("event of 2 hands with vertices, encoded", |b| {
        b.iter(|| {
            posed::routes::hands::hands_event(
                black_box(&frame),
                &output,
                false,
                &[],
                0,
                Duration::ZERO,
            )
            .encode_to_vec()
        })
    });
}

criterion_group!(benches, decode_and_warps, nms, mano, serialization);
criterion_main!(benches);
