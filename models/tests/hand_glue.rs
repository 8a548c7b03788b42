//! The hand route's glue against the upstream reference: box → square crop
//! (left hands mirrored, anti-alias blur, black outside the image) and the
//! crop camera → full-image translation and 2-D projection, checked against
//! what WiLoR-mini's own pipeline computed for the same boxes and network
//! outputs. The fixture comes from `scripts/fixtures/hand_glue.py` (its
//! docstring says how, and which upstream commit); no Python is needed here.

use std::collections::HashMap;

use posed_models::camera::Intrinsics;
use posed_models::hand_pipeline::{place_hand, BOX_EXPAND};
use posed_models::image::{crop_hand, HandCrop, RgbImage};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

const FIXTURE: &[u8] = include_bytes!("fixtures/hand_glue.safetensors");

/// Largest difference of a crop pixel (0..255). OpenCV samples at 1/32 px
/// and rounds 8-bit crops; a half-pixel shift would cost 1.5 levels or more.
const CROP_TOL: f32 = 1.0;
/// Translations (model units) and projections (pixels): float32 against
/// upstream's float64, nothing more.
const TRANSLATION_TOL: f64 = 1e-4;
const PROJECTION_TOL: f64 = 1e-3;

#[derive(Deserialize)]
struct Run {
    name: String,
    width: usize,
    height: usize,
    patch_size: usize,
    focal_length: f32,
    store_crops: bool,
    hands: Vec<String>,
}

struct Fixture {
    tensors: SafeTensors<'static>,
    metadata: HashMap<String, String>,
}

impl Fixture {
    fn load() -> Self {
        let (_, meta) = SafeTensors::read_metadata(FIXTURE).unwrap();
        Fixture {
            tensors: SafeTensors::deserialize(FIXTURE).unwrap(),
            metadata: meta.metadata().clone().unwrap_or_default(),
        }
    }

    fn runs(&self) -> Vec<Run> {
        serde_json::from_str(&self.metadata["runs"]).unwrap()
    }

    /// A tensor as f64 values, whatever its stored float or byte type.
    fn values(&self, name: &str) -> Vec<f64> {
        let t = self.tensors.tensor(name).unwrap();
        let bytes = t.data();
        match t.dtype() {
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::U8 => bytes.iter().map(|&b| b as f64).collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.values(name).into_iter().map(|v| v as f32).collect()
    }
}

/// The script's test image: (3x + 5y + 7c) mod 510 folded into 0..=255.
fn image(width: usize, height: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            for c in 0..3 {
                let t = (3 * x + 5 * y + 7 * c) % 510;
                data.push(if t < 256 { t } else { 509 - t } as u8);
            }
        }
    }
    data
}

fn max_abs_diff(a: impl IntoIterator<Item = f64>, b: &[f64]) -> f64 {
    a.into_iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn crops_of(f: &Fixture, run: &Run) -> Vec<HandCrop> {
    let boxes = f.f32s(&format!("{}.boxes", run.name));
    let right = f.values(&format!("{}.is_right", run.name));
    boxes
        .chunks_exact(4)
        .zip(&right)
        .map(|(b, &r)| HandCrop::from_box([b[0], b[1], b[2], b[3]], r == 1.0, BOX_EXPAND))
        .collect()
}

#[test]
fn the_fixture_names_its_upstream() {
    let f = Fixture::load();
    assert_eq!(f.metadata["upstream"], "warmshao/WiLoR-mini");
    assert_eq!(f.metadata["upstream_commit"].len(), 40);
    let runs = f.runs();
    // Both hands, the blur and the upscaling paths are covered.
    let hands: Vec<&String> = runs.iter().flat_map(|r| &r.hands).collect();
    for what in [
        "left hand",
        "right hand",
        "blur",
        "upscaling",
        "wide",
        "tall",
    ] {
        assert!(hands.iter().any(|h| h.contains(what)), "no case for {what}");
    }
}

#[test]
fn crops_match_upstream() {
    let f = Fixture::load();
    let mut checked = 0;
    for run in f.runs().iter().filter(|r| r.store_crops) {
        let data = image(run.width, run.height);
        let img = RgbImage::new(run.width, run.height, &data).unwrap();
        let expected = f.values(&format!("{}.crops", run.name));
        let n = run.patch_size * run.patch_size * 3;
        for (i, crop) in crops_of(&f, run).iter().enumerate() {
            let ours = crop_hand(img, crop, run.patch_size);
            let theirs = &expected[i * n..(i + 1) * n];
            let err = max_abs_diff(ours.iter().map(|&v| v as f64), theirs);
            println!(
                "{} #{i} ({}): crop max |Δ| = {err:.4}",
                run.name, run.hands[i]
            );
            assert!(err <= CROP_TOL as f64, "{}: {}", run.name, run.hands[i]);
            checked += 1;
        }
    }
    assert!(checked >= 8);
}

#[test]
fn translations_and_projections_match_upstream() {
    let f = Fixture::load();
    for run in f.runs() {
        let (w, h) = (run.width as f32, run.height as f32);
        let k = Intrinsics::pseudo(run.focal_length, run.patch_size as f32, w, h);
        let name = |t: &str| format!("{}.{t}", run.name);
        for focal in f.values(&name("scaled_focal_length")) {
            assert!((k.fx as f64 - focal).abs() < 1e-3, "{}: focal", run.name);
        }
        let net_cam = f.f32s(&name("net_cam"));
        let net_kp = f.f32s(&name("net_keypoints_3d"));
        let (pred_cam, cam_t) = (f.values(&name("pred_cam")), f.values(&name("cam_t_full")));
        let (kp3d, kp2d) = (
            f.values(&name("keypoints_3d")),
            f.values(&name("keypoints_2d")),
        );
        let joints = net_kp.len() / net_cam.len();
        for (i, crop) in crops_of(&f, &run).iter().enumerate() {
            let j = i * joints * 3..(i + 1) * joints * 3;
            let placed = place_hand(crop, &net_cam[i * 3..i * 3 + 3], &net_kp[j.clone()], &k);
            let cam_err = max_abs_diff(placed.crop_cam.map(f64::from), &pred_cam[i * 3..i * 3 + 3]);
            let t_err = max_abs_diff(placed.cam_t.map(f64::from), &cam_t[i * 3..i * 3 + 3]);
            let kp3_err = max_abs_diff(
                placed.keypoints_3d.iter().flatten().map(|&v| v as f64),
                &kp3d[j],
            );
            let kp2_err = max_abs_diff(
                placed.keypoints_2d.iter().flatten().map(|&v| v as f64),
                &kp2d[i * joints * 2..(i + 1) * joints * 2],
            );
            println!(
                "{} #{i} ({}): crop cam {cam_err:.2e}, cam_t {t_err:.2e}, \
                 joints 3-D {kp3_err:.2e}, 2-D {kp2_err:.2e} px",
                run.name, run.hands[i]
            );
            let what = format!("{}: {}", run.name, run.hands[i]);
            assert!(cam_err < 1e-6 && kp3_err < 1e-6, "{what}: un-mirroring");
            assert!(t_err < TRANSLATION_TOL, "{what}: translation");
            assert!(kp2_err < PROJECTION_TOL, "{what}: projection");
        }
    }
}
