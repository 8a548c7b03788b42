//! Full-size networks on random weights made from the published key
//! manifests: every key loads through the real loaders (no missing, extra
//! or mis-shaped key) and one forward pass gives finite outputs of the right
//! shapes, in float32 and in the int4 layout.

use std::path::PathBuf;
use std::time::Instant;

use mlx_rs::Array;
use posed_models::checked_weights::Weights;
use posed_models::hand_detector::{DetectorConfig, HandDetector};
use posed_models::mano::Mano;
use posed_models::random_weights;
use posed_models::wilor::{Wilor, WilorConfig};

fn hands_dir() -> PathBuf {
    posed_models::parity::fixtures_dir().join("hands")
}

fn all_finite(a: &Array) -> bool {
    a.is_finite()
        .unwrap()
        .all(None)
        .unwrap()
        .item_exact::<bool>()
}

fn crops(batch: i32) -> Array {
    let n = (batch * 256 * 256 * 3) as usize;
    let px: Vec<u8> = (0..n).map(|i| ((i * 2654435761) >> 13) as u8).collect();
    Array::from_slice(&px, &[batch, 256, 256, 3])
}

#[test]
fn wilor_vit_h_float32_and_int4_load_and_run() {
    let dir = hands_dir();
    let manifest = random_weights::read_manifest(&dir.join("wilor_full_keys.json")).unwrap();
    assert_eq!(manifest.len(), 429);
    let t = Instant::now();
    let mut tensors = random_weights::random_tensors(&manifest, 7).unwrap();
    let all: Vec<&Array> = tensors.values().collect();
    mlx_rs::transforms::eval(all).unwrap();
    println!("random weights: {:?}", t.elapsed());

    let cfg = WilorConfig::vit_h();
    let w = Weights::from_tensors(
        "synthetic ViT-H",
        tensors.clone(),
        random_weights::synthetic_metadata("wilor", 7),
    );
    let model = Wilor::new(
        cfg.clone(),
        &w,
        Mano::from_npz(&dir.join("mano.npz")).unwrap(),
    )
    .unwrap();
    w.finish().unwrap();
    assert!(w.is_synthetic());

    let t = Instant::now();
    let out = model.forward(&crops(1)).unwrap();
    out.vertices.eval().unwrap();
    assert_eq!(out.vertices.shape(), [1, 778, 3]);
    assert_eq!(out.keypoints_3d.shape(), [1, 21, 3]);
    assert_eq!(out.cam.shape(), [1, 3]);
    assert_eq!(out.backbone.features.shape(), [1, 16, 12, 1280]);
    assert!(all_finite(&out.vertices) && all_finite(&out.keypoints_3d) && all_finite(&out.cam));
    println!(
        "ViT-H float32 forward, batch 1, first run: {:?}",
        t.elapsed()
    );

    // The int4 layout: every block Linear quantized, group 32, f32 scales.
    let t = Instant::now();
    let n =
        random_weights::quantize_linears(&mut tensors, 32, |p| p.starts_with("backbone.blocks."))
            .unwrap();
    assert_eq!(n, 4 * 32);
    let w4 = Weights::from_tensors(
        "synthetic ViT-H int4",
        tensors,
        random_weights::synthetic_metadata("wilor-int4", 7),
    );
    let model4 = Wilor::new(cfg, &w4, Mano::from_npz(&dir.join("mano.npz")).unwrap()).unwrap();
    w4.finish().unwrap();
    println!("quantize + load int4: {:?}", t.elapsed());
    let t = Instant::now();
    let out4 = model4.forward(&crops(1)).unwrap();
    out4.vertices.eval().unwrap();
    println!("ViT-H int4 forward, batch 1, first run: {:?}", t.elapsed());
    assert_eq!(out4.vertices.shape(), [1, 778, 3]);
    assert!(all_finite(&out4.vertices) && all_finite(&out4.keypoints_3d));
    // Same weights up to 4-bit rounding: close to the float32 result, not equal.
    let diff = out4
        .keypoints_3d
        .subtract(&out.keypoints_3d)
        .unwrap()
        .abs()
        .unwrap()
        .max(None)
        .unwrap();
    let diff = diff.item_exact::<f32>();
    println!("int4 vs float32 keypoints max |Δ| = {diff:e}");
    assert!(diff > 0.0 && diff < 0.05, "{diff}");
}

#[test]
fn detector_yolov8m_loads_and_runs() {
    let dir = hands_dir();
    let manifest = random_weights::read_manifest(&dir.join("detector_m_keys.json")).unwrap();
    assert_eq!(manifest.len(), 433);
    let tensors = random_weights::random_tensors(&manifest, 3).unwrap();
    let w = Weights::from_tensors("synthetic YOLOv8m-pose", tensors, Default::default());
    let cfg = DetectorConfig::yolov8m();
    let net = HandDetector::new(cfg.clone(), &w).unwrap();
    w.finish().unwrap();
    let px: Vec<f32> = (0..512 * 512 * 3usize)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    let image = Array::from_slice(&px, &[1, 512, 512, 3]);
    let out = net.forward(&image).unwrap();
    assert_eq!(out.shape(), [1, 5376, cfg.output_rows()]);
    assert!(all_finite(&out));
}

#[test]
fn a_bad_file_is_reported_whole() {
    let dir = hands_dir();
    let manifest = random_weights::read_manifest(&dir.join("detector_m_keys.json")).unwrap();
    let mut tensors = random_weights::random_tensors(&manifest, 3).unwrap();
    tensors.remove("b3.conv.weight");
    tensors.remove("pose.cv4.2.2.bias");
    tensors.insert("b0.bn.weight".into(), Array::from_slice(&[1.0f32; 4], &[4]));
    tensors.insert("stray.tensor".into(), Array::from_slice(&[1.0f32], &[1]));
    let w = Weights::from_tensors("broken", tensors, Default::default());
    let _ = HandDetector::new(DetectorConfig::yolov8m(), &w).unwrap();
    let msg = w.finish().unwrap_err().to_string();
    for needle in [
        "2 missing",
        "b3.conv.weight [192, 3, 3, 96]",
        "pose.cv4.2.2.bias [63]",
        "b0.bn.weight: expected [48], file has [4]",
        "1 unexpected",
        "stray.tensor",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in:\n{msg}");
    }
}

/// The layouts the loaders derive from the published configs are exactly
/// the committed key/shape manifests of the published files.
#[test]
fn loader_layouts_match_the_published_manifests() {
    use posed_models::hand_detector::DetectorConfig;
    use posed_models::wilor::WilorConfig;
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let (detector, wilor) =
        random_weights::hand_layouts(&DetectorConfig::yolov8m(), &WilorConfig::vit_h()).unwrap();
    let published_detector =
        random_weights::read_manifest(&manifests.join("hand-detector.keys.json")).unwrap();
    let published_wilor =
        random_weights::read_manifest(&manifests.join("wilor.keys.json")).unwrap();
    assert_eq!(detector, published_detector);
    assert_eq!(wilor, published_wilor);
}
