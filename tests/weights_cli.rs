//! `posed weights` from the command line: synthetic weights that load
//! through the real loaders at full size, MANO conversion, and the cache
//! listing.

use std::path::Path;
use std::process::{Command, Output};

use posed_models::hand_pipeline::{HandModelFiles, HandPipeline};

fn posed(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_posed"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn synth_full_size_loads_through_the_real_loaders() {
    let dir = tempfile::tempdir().unwrap();
    for variant in ["f32", "int4"] {
        let out = dir.path().join(variant);
        let o = posed(
            &[
                "weights",
                "synth",
                "--size",
                "full",
                "--variant",
                variant,
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(o.status.success(), "{}", text(&o));
        let files = HandModelFiles::from_dir(&out).unwrap();
        let (pipeline, synthetic) = HandPipeline::load(&files).unwrap();
        assert!(synthetic, "synth output must say it is synthetic");
        assert!(pipeline.wilor.mano().synthetic);
        assert_eq!(pipeline.wilor.config().depth, 32);
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn synth_tiny_runs_a_frame_and_uses_a_given_mano() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/data");
    let pkl = data.join("mano_right_like.pkl");
    let out = dir.path().join("tiny");
    let o = posed(
        &[
            "weights",
            "synth",
            "--size",
            "tiny",
            "--variant",
            "int4",
            "--mano",
            pkl.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let (pipeline, synthetic) =
        HandPipeline::load(&HandModelFiles::from_dir(&out).unwrap()).unwrap();
    assert!(synthetic);
    assert!(!pipeline.wilor.mano().synthetic, "the given MANO is used");
    let boxes = vec![posed_models::hand_pipeline::HandBox {
        bbox: [100.0, 80.0, 180.0, 170.0],
        is_right: true,
        score: 1.0,
        keypoints_2d: Vec::new(),
    }];
    let pixels = vec![90u8; 320 * 240 * 3];
    let img = posed_models::image::RgbImage::new(320, 240, &pixels).unwrap();
    let crops = pipeline.prepare_crops(img, &boxes);
    let hands = pipeline.estimate(&crops, &boxes, 320, 240).unwrap();
    assert_eq!(hands[0].keypoints_3d.len(), 21);
    assert!(hands[0]
        .keypoints_3d
        .iter()
        .flatten()
        .all(|v| v.is_finite()));
}

#[test]
fn convert_mano_and_list_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/data");
    let out = dir.path().join("mano.npz");
    let o = posed(
        &[
            "weights",
            "convert-mano",
            data.join("mano_right_like.pkl").to_str().unwrap(),
            "--mean",
            data.join("mano_mean_params_like.npz").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    posed_models::mano::Mano::from_npz(&out).unwrap();

    let o = posed(
        &[
            "weights",
            "convert-mano",
            "/nonexistent.pkl",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let msg = text(&o);
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("/nonexistent.pkl"), "{msg}");

    let o = posed(&["weights", "list"], &[("HF_HUB_CACHE", dir.path())]);
    assert!(o.status.success(), "{}", text(&o));
    let listing = text(&o);
    assert!(
        listing.contains("missing  BasinShapers/wilor-mlx/wilor-mlx.safetensors@main"),
        "{listing}"
    );
    assert!(
        listing.contains("warmshao/WiLoR-mini/pretrained_models/MANO_RIGHT.pkl"),
        "{listing}"
    );
}
