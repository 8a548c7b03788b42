//! The body route's networks against the PyTorch (mmdet) reference on the
//! shrunk fixtures in `../shared/fixtures/body`, and the full-size layouts
//! against the published key manifests there.

use std::path::PathBuf;
use std::time::Instant;

use posed_models::fixture::{self, FixtureModel};
use posed_models::rtmdet::{Rtmdet, RtmdetConfig};
use posed_models::synth;
use posed_models::weights::Weights;

fn body_dir() -> PathBuf {
    let dir = fixture::fixtures_dir().join("body");
    assert!(
        dir.is_dir(),
        "fixtures not found at {} (set POSED_FIXTURES)",
        dir.display()
    );
    dir
}

/// The fixture's comparison table (printed), asserting every row passed.
fn check(model: FixtureModel) -> Vec<fixture::Comparison> {
    let rows = fixture::check(model, &body_dir()).unwrap();
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
    let published = synth::read_manifest(&body_dir().join("rtmdet_m_keys.json")).unwrap();
    let layout = synth::layout_of(|w| Rtmdet::new(RtmdetConfig::m(), w).map(drop)).unwrap();
    assert_eq!(layout.len(), 580);
    assert_eq!(layout, published);

    let tensors = synth::random_tensors(&layout, 5).unwrap();
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
