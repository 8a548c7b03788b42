//! `posed fixture check|run` as a user runs them: the real binary on the
//! shared hand fixtures, and on a copy whose reference was tampered with.

use std::path::{Path, PathBuf};
use std::process::Command;

use mlx_rs::Array;

fn hands_dir() -> PathBuf {
    posed_models::parity::fixtures_dir().join("hands")
}

fn posed(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_posed"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_passes_on_the_reference_fixtures() {
    let dir = hands_dir();
    let (ok, text) = posed(&["fixture", "check", "--dir", dir.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("output.pred_vertices"), "{text}");
    assert!(text.contains("output.raw[scores]"), "{text}");
    assert!(text.contains("all 18 tensors within tolerance"), "{text}");
}

/// The body folder holds four fixtures: RTMDet, its post-processing,
/// Sapiens2 and the top-down glue; one command checks them all.
#[test]
fn check_passes_on_the_body_fixtures() {
    let dir = posed_models::parity::fixtures_dir().join("body");
    let (ok, text) = posed(&["fixture", "check", "--dir", dir.to_str().unwrap()]);
    assert!(ok, "{text}");
    for tensor in [
        "output.cls_l0",
        "output.person_keep_index",
        "intermediate.rope_sin",
        "output.heatmaps",
        "output.keypoints_image",
    ] {
        assert!(text.contains(tensor), "{tensor} missing: {text}");
    }
    assert!(text.contains("all 53 tensors within tolerance"), "{text}");
}

/// The matte folder: CorridorKey's four encoder stages, both heads, the
/// refiner and the outputs.
#[test]
fn check_passes_on_the_matte_fixture() {
    let dir = posed_models::parity::fixtures_dir().join("matte");
    let (ok, text) = posed(&["fixture", "check", "--dir", dir.to_str().unwrap()]);
    assert!(ok, "{text}");
    for tensor in [
        "intermediate.encoder_feature_3",
        "intermediate.delta_logits",
        "output.alpha",
    ] {
        assert!(text.contains(tensor), "{tensor} missing: {text}");
    }
    assert!(text.contains("all 9 tensors within tolerance"), "{text}");
}

#[test]
fn check_fails_and_names_a_tensor_that_drifted() {
    let src = hands_dir();
    let dir = tempfile::tempdir().unwrap();
    for f in ["wilor_weights.safetensors", "wilor_config.json", "mano.npz"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut io = Array::load_safetensors(src.join("wilor_io.safetensors")).unwrap();
    let drifted = io["output.pred_vertices"]
        .add(Array::from_f32(2e-4))
        .unwrap();
    io.insert("output.pred_vertices".into(), drifted);
    Array::save_safetensors(
        io.iter().map(|(k, v)| (k.as_str(), v)),
        None,
        dir.path().join("wilor_io.safetensors"),
    )
    .unwrap();

    let (ok, text) = posed(&["fixture", "check", "--dir", dir.path().to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("1 of 14 tensors over tolerance: output.pred_vertices"),
        "{text}"
    );
}

#[test]
fn run_writes_outputs_under_the_fixture_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let (ok, text) = posed(&[
        "fixture",
        "run",
        "--model",
        "detector",
        "--dir",
        hands_dir().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let written = Array::load_safetensors(Path::new(&out)).unwrap();
    assert_eq!(written["output.raw"].shape(), [1, 69, 5376]);
    assert!(written.contains_key("output.detections_xyxy_score_cls_kpts"));
}
