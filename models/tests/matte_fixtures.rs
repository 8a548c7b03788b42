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

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A deterministic, image-like input: smooth RGB (normalised) and a hint
/// with a soft edge.
fn input(size: i32) -> mlx_rs::Array {
    let s = size as usize;
    let mut v = Vec::with_capacity(s * s * 4);
    for y in 0..s {
        for x in 0..s {
            let (fx, fy) = (x as f32 / s as f32, y as f32 / s as f32);
            v.push((fx * 6.0).sin() * 1.5);
            v.push((fy * 5.0).cos() * 1.2);
            v.push(((fx + fy) * 9.0).sin());
            v.push((((fx - 0.5).powi(2) + (fy - 0.5).powi(2)).sqrt() < 0.3) as i32 as f32);
        }
    }
    mlx_rs::Array::from_slice(&v, &[1, size, size, 4])
}

/// The refiner in 256² tiles (32 px of context) with the whole frame's
/// GroupNorm statistics gives the whole-frame result on a 1024² frame.
#[test]
fn tiled_refiner_matches_the_whole_frame() {
    let dir = matte_dir();
    let mut cfg: CorridorKeyConfig =
        fixture::read_json(&dir.join("corridorkey_config.json")).unwrap();
    cfg.img_size = 1024;
    let w = posed_models::weights::Weights::from_file(dir.join("corridorkey_weights.safetensors"))
        .unwrap();
    let net = CorridorKey::new(cfg, &w).unwrap();
    w.finish().unwrap();
    let x = input(1024);
    let whole = net.forward(&x).unwrap();
    let tiled = net.forward_with(&x, Some(256)).unwrap();
    for (name, a, b) in [
        ("delta_logits", &whole.delta_logits, &tiled.delta_logits),
        ("alpha", &whole.alpha, &tiled.alpha),
        ("fg", &whole.fg, &tiled.fg),
    ] {
        assert_eq!(a.shape(), [1, 1024, 1024, b.dim(3)]);
        let d = a
            .subtract(b)
            .unwrap()
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .item_exact::<f32>();
        println!("{name}: tiled vs whole max |Δ| {d:.2e}");
        assert!(d <= 1e-4, "{name}: {d}");
    }
}

/// Random weights in the published layout (365 tensors, 99.7 M values) load
/// and run one forward at 512, in float32 and with bf16 heads.
#[test]
fn corridorkey_full_size_runs_at_512() {
    let published = synth::read_manifest(&matte_dir().join("corridorkey_full_keys.json")).unwrap();
    let tensors = synth::random_tensors(&published, 11).unwrap();
    let w = posed_models::weights::Weights::from_tensors(
        "corridorkey (random)",
        tensors,
        Default::default(),
    );
    let net = CorridorKey::new(CorridorKeyConfig::base_plus(512), &w).unwrap();
    w.finish().unwrap();
    let x = input(512);
    let t = std::time::Instant::now();
    let out = net.forward(&x).unwrap();
    out.alpha.eval().unwrap();
    out.fg.eval().unwrap();
    println!(
        "CorridorKey full size, one 512x512 forward on {:?}: {:?}; peak RSS {:.0} MiB",
        posed_models::runtime::default_device().kind,
        t.elapsed(),
        peak_rss_mib()
    );
    assert_eq!(out.alpha.shape(), [1, 512, 512, 1]);
    assert_eq!(out.fg.shape(), [1, 512, 512, 3]);
    let alpha = posed_models::nn::host_f32(&out.alpha).unwrap();
    assert!(alpha.iter().all(|a| (0.0..=1.0).contains(a)));
}
