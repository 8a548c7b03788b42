//! The body route's networks against the PyTorch (mmdet) reference on the
//! shrunk fixtures in `../shared/fixtures/body`, and the full-size layouts
//! against the published key manifests there.

use std::path::PathBuf;
use std::time::Instant;

use mlx_rs::Array;
use posed_models::checked_weights::Weights;
use posed_models::parity::{self, FixtureModel};
use posed_models::random_weights;
use posed_models::rtmdet::{Rtmdet, RtmdetConfig};
use posed_models::sapiens2;

fn body_dir() -> PathBuf {
    let dir = parity::fixtures_dir().join("body");
    assert!(
        dir.is_dir(),
        "fixtures not found at {} (set POSED_FIXTURES)",
        dir.display()
    );
    dir
}

/// The fixture's comparison table (printed), asserting every row passed.
fn check(model: FixtureModel) -> Vec<parity::Comparison> {
    let rows = parity::check(model, &body_dir()).unwrap();
    for r in &rows {
        println!("{r}");
    }
    assert!(!rows.is_empty());
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| !r.passed())
        .map(|r| &r.name)
        .collect();
    assert!(failed.is_empty(), "over tolerance: {failed:?}");
    rows
}

#[test]
fn rtmdet_matches_mmdet() {
    // Every output and intermediate of the fixture is compared.
    assert_eq!(check(FixtureModel::Rtmdet).len(), 12);
}

/// Letterbox, mmdet's post-processing and the Sapiens demo's person filter:
/// the same 100 detections and the same 36 people, in the same order.
#[test]
fn rtmdet_post_processing_matches_mmdet_and_the_demo() {
    let rows = check(FixtureModel::RtmdetPost);
    assert_eq!(rows.len(), 7);
    let keep = rows
        .iter()
        .find(|r| r.name == "output.person_keep_index")
        .unwrap();
    assert_eq!(keep.max_abs, 0.0);
}

/// RTMDet-m as the loader builds it from its config asks for exactly the
/// tensors of the published checkpoint (580), and random weights in that
/// layout run one 640×640 forward.
#[test]
fn rtmdet_m_matches_the_published_layout_and_runs() {
    let published = random_weights::read_manifest(&body_dir().join("rtmdet_m_keys.json")).unwrap();
    let layout =
        random_weights::layout_of(|w| Rtmdet::new(RtmdetConfig::m(), w).map(drop)).unwrap();
    assert_eq!(layout.len(), 580);
    assert_eq!(layout, published);

    let tensors = random_weights::random_tensors(&layout, 5).unwrap();
    let w = Weights::from_tensors("rtmdet-m (random)", tensors, Default::default());
    let net = Rtmdet::new(RtmdetConfig::m(), &w).unwrap();
    w.finish().unwrap();
    let image = mlx_rs::Array::from_slice(&vec![114u8; 640 * 640 * 3], &[1, 640, 640, 3]);
    let t = Instant::now();
    let out = net.forward(&image).unwrap();
    for a in out.cls.iter().chain(&out.reg) {
        a.eval().unwrap();
    }
    println!(
        "RTMDet-m 640x640 forward on {:?}: {:?}",
        posed_models::runtime::default_device().kind,
        t.elapsed()
    );
    let shapes: Vec<Vec<i32>> = out.reg.iter().map(|a| a.shape().to_vec()).collect();
    assert_eq!(
        shapes,
        [vec![1, 80, 80, 4], vec![1, 40, 40, 4], vec![1, 20, 20, 4]]
    );
    let reg = posed_models::nn::host_f32(&out.reg[0]).unwrap();
    assert!(reg.iter().all(|v| v.is_finite() && *v > 0.0));
}

#[test]
fn sapiens2_matches_pytorch_end_to_end() {
    let rows = check(FixtureModel::Sapiens2);
    // rope ×3, patch_embed, tokens_in, 8 blocks, 3 head stages, 2 outputs.
    assert_eq!(rows.len(), 18);
    for r in rows.iter().filter(|r| r.name.contains("rope_")) {
        assert_eq!(r.max_abs, 0.0, "{} must be bit-exact", r.name);
    }
}

/// Each stage from the reference's own input to it, so an error cannot hide
/// behind the end-to-end tolerance: one block from the stored previous block
/// (5e-4, the README's bound), the final norm from the last block, and the
/// head from the stored featmap (1e-4).
#[test]
fn sapiens2_blocks_and_head_match_pytorch_one_at_a_time() {
    let dir = body_dir();
    let net = parity::body::sapiens2_net(&dir).unwrap();
    let io = parity::read_tensors(&FixtureModel::Sapiens2.io_file(&dir)).unwrap();
    let max_diff = |a: &Array, b: &Array| -> f32 {
        assert_eq!(a.shape(), b.shape());
        a.subtract(b)
            .unwrap()
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .item_exact::<f32>()
    };
    let rope = net.backbone.rope();
    for (from, to) in [
        ("tokens_in", 0),
        ("block_00", 1),
        ("block_07", 8),
        ("block_08", 9),
        ("block_09", 10),
        ("block_16", 17),
    ] {
        let x = &io[&format!("intermediate.{from}")];
        let y = net.backbone.blocks()[to].forward(x, rope).unwrap();
        let d = max_diff(&y, &io[&format!("intermediate.block_{to:02}")]);
        println!("block {to:>2} from {from:<9} max |Δ| {d:.2e}");
        assert!(d <= 5e-4, "block {to}: {d}");
    }
    let featmap = &io["output.featmap"];
    let mut stages = Vec::new();
    let heatmaps = net
        .head
        .forward(featmap, &mut |name: &str, a: &Array| {
            stages.push((format!("intermediate.{name}"), a.clone()))
        })
        .unwrap();
    stages.push(("output.heatmaps".into(), heatmaps));
    let mut compared = 0;
    for (name, got) in &stages {
        let Some(want) = io.get(name) else { continue };
        let d = max_diff(got, want);
        println!("{name:<28} from the reference featmap: max |Δ| {d:.2e}");
        assert!(d <= 1e-4, "{name}: {d}");
        compared += 1;
    }
    assert_eq!(compared, 4);
}

/// The demo glue and the reference decode: person filter and NMS, box
/// padding and aspect, UDP warp matrices and crops (both interpolations),
/// flip-test average, argmax, DARK-UDP, crop and image coordinates, and the
/// whole-image fallback.
#[test]
fn sapiens2_topdown_glue_and_decode_match_pytorch() {
    let rows = check(FixtureModel::Sapiens2Topdown);
    assert_eq!(rows.len(), 16);
}

/// The keypoint table shipped with the crate mirrors exactly as the
/// reference metainfo does.
#[test]
fn keypoint_table_flips_like_the_reference() {
    let cfg = parity::body::sapiens2_config(&body_dir()).unwrap();
    assert_eq!(sapiens2::keypoint_names_308().len(), 308);
    assert_eq!(sapiens2::flip_indices_308(), cfg.flip_indices);
}

/// Peak resident memory of this process (Linux), for the measurements below.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Sapiens2 0.4b as the loader builds it from `Sapiens2Config::pose` asks
/// for exactly the 424 tensors of the published checkpoint, and random
/// weights in that layout run one forward at the real 1024×768 input.
#[test]
fn sapiens2_0_4b_matches_the_published_layout_and_runs() {
    let cfg = sapiens2::Sapiens2Config::pose(sapiens2::Sapiens2Size::B0_4);
    let published =
        random_weights::read_manifest(&body_dir().join("sapiens2_pose_0.4b_keys.json")).unwrap();
    let layout =
        random_weights::layout_of(|w| sapiens2::Sapiens2Pose::new(cfg.clone(), w).map(drop))
            .unwrap();
    assert_eq!(layout.len(), 424);
    let shapes = |m: &random_weights::Manifest| -> Vec<(String, Vec<i32>)> {
        m.iter()
            .map(|(k, v)| (k.clone(), v.shape.clone()))
            .collect()
    };
    assert_eq!(shapes(&layout), shapes(&published));
    // The one tensor the checkpoint keeps in bfloat16.
    assert_eq!(published["backbone.rope_embed.periods"].dtype, "bfloat16");

    let t = Instant::now();
    let tensors = random_weights::random_tensors(&published, 7).unwrap();
    let w = Weights::from_tensors("sapiens2-pose-0.4b (random)", tensors, Default::default());
    let net = sapiens2::Sapiens2Pose::new(cfg, &w).unwrap();
    w.finish().unwrap();
    let loaded = t.elapsed();
    let crop = Array::from_slice(&vec![128u8; 1024 * 768 * 3], &[1, 1024, 768, 3]);
    let t = Instant::now();
    let heatmaps = net.forward(&crop, &mut sapiens2::no_taps).unwrap();
    heatmaps.eval().unwrap();
    println!(
        "Sapiens2 0.4b: random weights made and loaded in {loaded:?}; one 1024x768 forward on {:?}: {:?}; peak RSS {:.0} MiB",
        posed_models::runtime::default_device().kind,
        t.elapsed(),
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    assert_eq!(heatmaps.shape(), [1, 256, 192, 308]);
    let v = posed_models::nn::host_f32(&heatmaps).unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}
