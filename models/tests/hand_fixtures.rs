//! Parity with the PyTorch reference on the shrunk hand fixtures in
//! `../shared/fixtures/hands` (README there): every output and intermediate
//! within the stated tolerance, and the same post-NMS detections.

use std::path::PathBuf;

use posed_models::parity::{self, FixtureModel};

fn hands_dir() -> PathBuf {
    let dir = posed_models::parity::fixtures_dir().join("hands");
    assert!(
        dir.is_dir(),
        "fixtures not found at {} (set POSED_FIXTURES)",
        dir.display()
    );
    dir
}

/// The fixture's comparison table (printed), asserting every row passed.
fn check(model: FixtureModel) -> Vec<parity::Comparison> {
    let rows = parity::check(model, &hands_dir()).unwrap();
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
fn detector_matches_pytorch() {
    let rows = check(FixtureModel::Detector);
    assert!(rows.iter().any(|r| r.name == "output.raw"));
    assert!(rows
        .iter()
        .any(|r| r.name == "output.detections_xyxy_score_cls_kpts"));
}

#[test]
fn wilor_matches_pytorch() {
    let rows = check(FixtureModel::Wilor);
    for name in [
        "output.pred_vertices",
        "output.pred_keypoints_3d",
        "output.hand_pose",
        "intermediate.backbone.vit_out",
    ] {
        assert!(rows.iter().any(|r| r.name == name), "{name} not compared");
    }
}
