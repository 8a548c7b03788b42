//! The hand route's stages on the fixture weights: detections come back in
//! image pixels, and a left hand is a mirrored right hand.

use posed_models::hand_pipeline::{HandBox, HandModelFiles, HandPipeline};
use posed_models::image::RgbImage;

fn pipeline() -> HandPipeline {
    let dir = posed_models::parity::fixtures_dir().join("hands");
    let files = HandModelFiles::from_dir(&dir).unwrap();
    HandPipeline::load(&files).unwrap().0
}

fn image(w: usize, h: usize) -> Vec<u8> {
    (0..w * h * 3)
        .map(|i| ((i * 2654435761usize) >> 11) as u8)
        .collect()
}

fn mirror(data: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![0u8; data.len()];
    for y in 0..h {
        for x in 0..w {
            let (s, d) = ((y * w + x) * 3, (y * w + (w - 1 - x)) * 3);
            out[d..d + 3].copy_from_slice(&data[s..s + 3]);
        }
    }
    out
}

#[test]
fn a_left_hand_is_the_mirror_image_of_a_right_hand() {
    let p = pipeline();
    let (w, h) = (200, 150);
    let data = image(w, h);
    let flipped = mirror(&data, w, h);
    let img = RgbImage::new(w, h, &data).unwrap();
    let img_flipped = RgbImage::new(w, h, &flipped).unwrap();

    let left = HandBox {
        bbox: [40.0, 30.0, 90.0, 100.0],
        is_right: false,
        score: 1.0,
        keypoints_2d: vec![],
    };
    // The same pixels, seen in the mirrored image, around x' = W − 1 − x.
    let wm = (w - 1) as f32;
    let right = HandBox {
        bbox: [wm - 90.0, 30.0, wm - 40.0, 100.0],
        is_right: true,
        ..left.clone()
    };

    let a = p
        .estimate(
            &p.prepare_crops(img, std::slice::from_ref(&left)),
            &[left],
            w,
            h,
        )
        .unwrap();
    let b = p
        .estimate(
            &p.prepare_crops(img_flipped, std::slice::from_ref(&right)),
            &[right],
            w,
            h,
        )
        .unwrap();
    let (l, r) = (&a[0], &b[0]);
    assert_eq!(l.keypoints_3d.len(), 21);
    assert_eq!(l.vertices.len(), 778);
    for (pl, pr) in l.keypoints_3d.iter().zip(&r.keypoints_3d) {
        assert_eq!(*pl, [-pr[0], pr[1], pr[2]]);
    }
    assert_eq!(
        l.global_orient,
        [r.global_orient[0], -r.global_orient[1], -r.global_orient[2]]
    );
    assert_eq!(l.crop_cam, [r.crop_cam[0], -r.crop_cam[1], r.crop_cam[2]]);
    assert_eq!(l.betas, r.betas);
}

#[test]
fn two_hands_run_as_one_batch_and_land_on_their_boxes() {
    let p = pipeline();
    let (w, h) = (320, 240);
    let data = image(w, h);
    let img = RgbImage::new(w, h, &data).unwrap();
    let hands = vec![
        HandBox {
            bbox: [20.0, 40.0, 80.0, 120.0],
            is_right: true,
            score: 1.0,
            keypoints_2d: vec![],
        },
        HandBox {
            bbox: [200.0, 60.0, 260.0, 150.0],
            is_right: false,
            score: 1.0,
            keypoints_2d: vec![],
        },
    ];
    let batch = p.prepare_crops(img, &hands);
    assert_eq!(batch.pixels.len(), 2 * 256 * 256 * 3);
    let est = p.estimate(&batch, &hands, w, h).unwrap();
    assert_eq!(est.len(), 2);
    // Batched results equal one-at-a-time results.
    let single = p
        .estimate(&p.prepare_crops(img, &hands[1..]), &hands[1..], w, h)
        .unwrap();
    for (x, y) in est[1].vertices.iter().zip(&single[0].vertices) {
        for k in 0..3 {
            assert!((x[k] - y[k]).abs() < 1e-5);
        }
    }
    for e in &est {
        assert!(
            e.cam_t[2] > 0.0,
            "hand in front of the camera: {:?}",
            e.cam_t
        );
        assert!(e
            .keypoints_2d_projected
            .iter()
            .flatten()
            .all(|v| v.is_finite()));
    }

    // Detection maps back to image pixels (few or no hands on noise, but
    // every box that comes back lies on the image's scale).
    let input = p.prepare_detector_input(img);
    assert_eq!(input.letterbox.scale, 320.0 / 512.0);
    for d in p.detect(&input).unwrap() {
        assert!(d.bbox[0] < d.bbox[2] && d.bbox[1] < d.bbox[3]);
        assert_eq!(d.keypoints_2d.len(), 21);
    }
}

/// The compiled graphs compute what the eager networks do: the detector's
/// boxes, and WiLoR batch by batch (each batch size is its own trace).
#[test]
fn compiled_networks_match_eager() {
    let (w, h) = (160, 120);
    let data = image(w, h);
    let img = RgbImage::new(w, h, &data).unwrap();
    let hands: Vec<HandBox> = (0..3)
        .map(|i| HandBox {
            bbox: [20.0 + 30.0 * i as f32, 30.0, 60.0 + 30.0 * i as f32, 80.0],
            is_right: i != 1,
            score: 1.0,
            keypoints_2d: Vec::new(),
        })
        .collect();
    let eager = pipeline();
    let compiled = pipeline();
    compiled.compile().unwrap();
    assert!(compiled.is_compiled());
    let input = eager.prepare_detector_input(img);
    let (a, b) = (
        eager.detect(&input).unwrap(),
        compiled.detect(&input).unwrap(),
    );
    assert!(
        !a.is_empty(),
        "the fixture detector finds hands in this image"
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.is_right, y.is_right);
        for (p, q) in x.bbox.iter().zip(&y.bbox) {
            assert!((p - q).abs() <= 1e-3, "{p} vs {q}");
        }
        assert!((x.score - y.score).abs() <= 1e-5);
    }
    for n in [1, 3, 1] {
        let crops = eager.prepare_crops(img, &hands[..n]);
        let a = eager.estimate(&crops, &hands[..n], w, h).unwrap();
        let b = compiled.estimate(&crops, &hands[..n], w, h).unwrap();
        for (x, y) in a.iter().zip(&b) {
            let pairs = x
                .keypoints_3d
                .iter()
                .flatten()
                .zip(y.keypoints_3d.iter().flatten())
                .chain(x.betas.iter().zip(&y.betas))
                .chain(x.crop_cam.iter().zip(&y.crop_cam));
            for (p, q) in pairs {
                assert!((p - q).abs() <= 1e-5, "batch {n}: {p} vs {q}");
            }
        }
    }
}

/// A bf16 pose model computes in bf16 from the crops to the heads: MLX
/// promotes bf16 combined with any float32 array to float32, so one stray
/// float32 constant would run the network in float32 on upcast weights.
/// MANO and the camera geometry stay float32 on purpose.
#[test]
fn a_bf16_pose_model_stays_in_bf16() {
    use mlx_rs::Dtype;
    let dir = posed_models::parity::fixtures_dir().join("hands");
    let files = HandModelFiles::from_dir(&dir).unwrap();
    let (p, _) = HandPipeline::load_with(&files, Some(Dtype::Bfloat16)).unwrap();
    let s = p.wilor.config().image_size;
    let crops = mlx_rs::Array::from_slice(&image(s as usize, s as usize * 2), &[2, s, s, 3]);
    let r = p.wilor.regress(&crops).unwrap();
    let bb = &r.backbone;
    for (name, a) in [
        ("backbone features", &bb.features),
        ("backbone pose", &bb.hand_pose_6d),
        ("backbone betas", &bb.betas),
        ("refined betas", &r.betas),
    ] {
        assert_eq!(a.dtype(), Dtype::Bfloat16, "{name}");
    }
    assert_eq!(
        r.rotations.dtype(),
        Dtype::Float32,
        "rotations meet MANO in f32"
    );
}
