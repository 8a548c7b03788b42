//! CorridorKey against the PyTorch reference (timm Hiera + GreenFormer heads
//! and refiner) on the shrunk fixture in `../shared/fixtures/matte`, and the
//! full-size layout against the published key manifest there.

use std::path::PathBuf;

use posed_models::corridorkey::{network_input, CorridorKey, CorridorKeyConfig};
use posed_models::parity::{self, FixtureModel};
use posed_models::random_weights;

fn matte_dir() -> PathBuf {
    let dir = parity::fixtures_dir().join("matte");
    assert!(
        dir.is_dir(),
        "fixtures not found at {} (set POSED_FIXTURES)",
        dir.display()
    );
    dir
}

#[test]
fn corridorkey_matches_pytorch() {
    let rows = parity::check(FixtureModel::CorridorKey, &matte_dir()).unwrap();
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
    let io = parity::read_tensors(&FixtureModel::CorridorKey.io_file(&matte_dir())).unwrap();
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
    let published =
        random_weights::read_manifest(&matte_dir().join("corridorkey_full_keys.json")).unwrap();
    let layout = random_weights::layout_of(|w| {
        CorridorKey::new(CorridorKeyConfig::base_plus(512), w).map(drop)
    })
    .unwrap();
    assert_eq!(layout.len(), 365);
    let shapes = |m: &random_weights::Manifest| -> Vec<(String, Vec<i32>)> {
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
        posed_models::model_files::read_json(&dir.join("corridorkey_config.json")).unwrap();
    cfg.img_size = 1024;
    let w = posed_models::checked_weights::Weights::from_file(
        dir.join("corridorkey_weights.safetensors"),
    )
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
    let published =
        random_weights::read_manifest(&matte_dir().join("corridorkey_full_keys.json")).unwrap();
    let tensors = random_weights::random_tensors(&published, 11).unwrap();
    let w = posed_models::checked_weights::Weights::from_tensors(
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

fn fixture_net(img_size: i32) -> CorridorKey {
    let dir = matte_dir();
    let mut cfg: CorridorKeyConfig =
        posed_models::model_files::read_json(&dir.join("corridorkey_config.json")).unwrap();
    cfg.img_size = img_size;
    let w = posed_models::checked_weights::Weights::from_file(
        dir.join("corridorkey_weights.safetensors"),
    )
    .unwrap();
    let net = CorridorKey::new(cfg, &w).unwrap();
    w.finish().unwrap();
    net
}

fn host(a: &mlx_rs::Array) -> Vec<f32> {
    // A contiguous copy, whatever slicing made `a`.
    a.multiply(mlx_rs::Array::from_f32(1.0))
        .unwrap()
        .as_slice::<f32>()
        .to_vec()
}

/// Frame tiling at native resolution: a frame of exactly the model size is
/// one plain forward; a 128 × 200 frame is two 128² tiles (at x 0 and 72)
/// whose own results it keeps where only one tile covers a pixel, and
/// blends (a convex combination, weights ramping across the overlap) where
/// both do.
#[test]
fn frames_larger_than_the_model_are_blended_from_overlapping_tiles() {
    use mlx_rs::ops::indexing::IndexOp;
    assert_eq!(
        posed_models::corridorkey::tile_starts(200, 128, 32),
        [0, 72]
    );
    assert_eq!(posed_models::corridorkey::tile_starts(128, 128, 32), [0]);
    assert_eq!(
        posed_models::corridorkey::tile_starts(400, 128, 32),
        [0, 96, 192, 272]
    );
    let net = fixture_net(128);
    let square = input(128);
    let (alpha, _) = net.forward_frame_tiled(&square, 32, None).unwrap();
    let direct = net.forward(&square).unwrap().alpha;
    let d = alpha
        .subtract(&direct)
        .unwrap()
        .abs()
        .unwrap()
        .max(None)
        .unwrap();
    assert!(d.item_exact::<f32>() < 1e-6);

    let wide = input(200).index((.., ..128, .., ..));
    let (alpha, fg) = net.forward_frame_tiled(&wide, 32, None).unwrap();
    assert_eq!(alpha.shape(), [1, 128, 200, 1]);
    assert_eq!(fg.shape(), [1, 128, 200, 3]);
    let left = host(&net.forward(&wide.index((.., .., ..128, ..))).unwrap().alpha);
    let right = host(&net.forward(&wide.index((.., .., 72.., ..))).unwrap().alpha);
    let got = host(&alpha);
    let (mut blended, mut mixed) = (0, 0);
    for y in 0..128 {
        for x in 0..200 {
            let g = got[y * 200 + x];
            let l = (x < 128).then(|| left[y * 128 + x]);
            let r = (x >= 72).then(|| right[y * 128 + x - 72]);
            match (l, r) {
                (Some(l), None) => assert!((g - l).abs() < 1e-5, "({x}, {y}) {g} vs {l}"),
                (None, Some(r)) => assert!((g - r).abs() < 1e-5, "({x}, {y}) {g} vs {r}"),
                (Some(l), Some(r)) => {
                    let (lo, hi) = (l.min(r) - 1e-5, l.max(r) + 1e-5);
                    assert!((lo..=hi).contains(&g), "({x}, {y}) {g} not within {l}, {r}");
                    blended += 1;
                    // Ramps: the left tile dominates at the overlap's left end.
                    if x == 72 && (l - r).abs() > 1e-3 {
                        mixed += 1;
                        assert!((g - l).abs() < (g - r).abs(), "({x}, {y})");
                    }
                }
                (None, None) => unreachable!("every pixel is in a tile"),
            }
        }
    }
    assert_eq!(blended, 128 * 56);
    assert!(mixed > 0, "the two tiles disagree somewhere in the overlap");
}

/// The route's pipeline: a 200 × 150 frame stretched to the model size and
/// back, with a pushed hint, a previous alpha, or the fallbacks; outputs at
/// the frame's size; the chroma key marks green as background.
#[test]
fn the_matte_pipeline_runs_a_frame_with_every_kind_of_hint() {
    use posed_models::image::RgbImage;
    use posed_models::matte_pipeline::{
        chroma_key, FallbackHint, FrameFit, Hint, MatteModelFiles, MattePipeline,
    };
    let files = MatteModelFiles::from_dir(&matte_dir(), 128).unwrap();
    assert_eq!(files.config.img_size, 128);
    let (p, synthetic) =
        MattePipeline::load(&files, mlx_rs::Dtype::Float32, FrameFit::Resize).unwrap();
    assert!(!synthetic);
    let (w, h) = (200usize, 150usize);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    let img = RgbImage::new(w, h, &rgb).unwrap();
    let hint = vec![255u8; w * h];
    let (m, out) = p.estimate(img, Hint::Plane(&hint)).unwrap();
    assert_eq!(
        (m.width, m.height, m.alpha.len(), m.fg.len()),
        (w, h, w * h, w * h * 3)
    );
    assert_eq!(out.network_alpha.shape(), [1, 128, 128, 1]);
    // A pushed all-white hint is the all-ones fallback (up to the resize's
    // rounding).
    let (ones, _) = p.estimate(img, Hint::Fallback(FallbackHint::Ones)).unwrap();
    let worst = ones
        .alpha
        .iter()
        .zip(&m.alpha)
        .map(|(a, b)| a.abs_diff(*b))
        .max();
    assert!(worst <= Some(1), "{worst:?}");
    // The previous alpha becomes the input's fourth channel as it is.
    let x = p.prepare(img, Hint::Previous(&out.network_alpha)).unwrap();
    use mlx_rs::ops::indexing::IndexOp;
    let fourth = host(&x.index((.., .., .., 3..)));
    assert_eq!(fourth, host(&out.network_alpha));
    assert!(p.prepare(img, Hint::Plane(&hint[1..])).is_err());
    p.estimate(img, Hint::Fallback(FallbackHint::Chroma))
        .unwrap();

    let px = |r: f32, g: f32, b: f32| mlx_rs::Array::from_slice(&[r, g, b], &[1, 1, 1, 3]);
    let key = |a: mlx_rs::Array| chroma_key(&a).unwrap().item_exact::<f32>();
    assert_eq!(key(px(0.1, 0.9, 0.2)), 0.0, "screen green");
    assert_eq!(key(px(0.8, 0.6, 0.5)), 1.0, "skin");
    assert!(
        (key(px(0.4, 0.5, 0.4)) - 0.6).abs() < 1e-6,
        "a little spill"
    );

    let tiled_files = MatteModelFiles::from_dir(&matte_dir(), 128).unwrap();
    let (tiled, _) = MattePipeline::load(
        &tiled_files,
        mlx_rs::Dtype::Float32,
        FrameFit::Tiles { overlap: 16 },
    )
    .unwrap();
    assert_eq!(tiled.network_size(w, h), (h, w));
    let (m, out) = tiled.estimate(img, Hint::Plane(&hint)).unwrap();
    assert_eq!(out.network_alpha.shape(), [1, 150, 200, 1]);
    assert_eq!(m.alpha.len(), w * h);
    assert!(MattePipeline::load(
        &tiled_files,
        mlx_rs::Dtype::Float32,
        FrameFit::Tiles { overlap: 128 }
    )
    .is_err());
}
