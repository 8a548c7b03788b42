//! CorridorKey against the PyTorch reference (timm Hiera + GreenFormer heads
//! and refiner) on the shrunk fixture in `../shared/fixtures/matte`, and the
//! full-size layout against the published key manifest there.

use std::path::PathBuf;

use posed_models::corridorkey::{network_input, CorridorKey, CorridorKeyConfig};
use posed_models::fixture::{self, FixtureModel};
use posed_models::synth;

fn matte_dir() -> PathBuf {
    let dir = fixture::fixtures_dir().join("matte");
    assert!(
        dir.is_dir(),
        "fixtures not found at {} (set POSED_FIXTURES)",
        dir.display()
    );
    dir
}

#[test]
fn corridorkey_matches_pytorch() {
    let rows = fixture::check(FixtureModel::CorridorKey, &matte_dir()).unwrap();
    for r in &rows {
        println!("{r}");
    }
    // Four encoder stages, two logits, the refiner's deltas, two outputs.
    assert_eq!(rows.len(), 9);
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| !r.passed())
        .map(|r| &r.name)
        .collect();
    assert!(failed.is_empty(), "over tolerance: {failed:?}");
}

/// The network input is normalised RGB then the hint, as the reference
/// builds it.
#[test]
fn corridorkey_input_is_normalised_rgb_and_the_hint() {
    let io = fixture::read_tensors(&FixtureModel::CorridorKey.io_file(&matte_dir())).unwrap();
    let x = network_input(&io["input.rgb_unnormalised"], &io["input.alpha_hint"]).unwrap();
    let d = x
        .subtract(&io["input.x_nhwc"])
        .unwrap()
        .abs()
        .unwrap()
        .max(None)
        .unwrap()
        .item_exact::<f32>();
    assert!(d < 1e-5, "{d}");
}

/// The published model as `CorridorKeyConfig::base_plus` builds it asks for
/// exactly the 365 tensors of the released file.
#[test]
fn corridorkey_matches_the_published_layout() {
    let published = synth::read_manifest(&matte_dir().join("corridorkey_full_keys.json")).unwrap();
    let layout =
        synth::layout_of(|w| CorridorKey::new(CorridorKeyConfig::base_plus(512), w).map(drop))
            .unwrap();
    assert_eq!(layout.len(), 365);
    let shapes = |m: &synth::Manifest| -> Vec<(String, Vec<i32>)> {
        m.iter()
            .map(|(k, v)| (k.clone(), v.shape.clone()))
            .collect()
    };
    assert_eq!(shapes(&layout), shapes(&published));
}
