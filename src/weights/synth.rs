//! `posed weights synth`: random weights in the published layout, for demos,
//! tests and benchmarks on machines without the real downloads. Every file
//! made here is marked synthetic (`posed.synthetic = true` in safetensors
//! metadata, key `posed_synthetic` in a synthetic `mano.npz`), and the daemon
//! says so on every status line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use mlx_rs::Array;
use posed_models::hand_detector::DetectorConfig;
use posed_models::random_weights;
use posed_models::wilor::WilorConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// The published sizes (YOLOv8m-pose, ViT-H WiLoR).
    Full,
    /// YOLOv8n-pose and a 2-block, 64-wide WiLoR: fast, for tests.
    Tiny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    F32,
    /// The 128 block Linears in MLX's 4-bit affine layout, group 32.
    Int4,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::F32 => "f32",
            Variant::Int4 => "int4",
        }
    }
}

/// Writes a hand-route models folder into `out`: `detector_weights.safetensors`,
/// `wilor_weights.safetensors`, `mano.npz` (converted from `mano` when it is a
/// pickle, copied when it is an npz, synthetic otherwise) and, for the tiny
/// size, the two config files that `posed serve --models-dir` reads.
pub fn synth_hands(
    size: Size,
    variant: Variant,
    mano: Option<&Path>,
    out: &Path,
    seed: u64,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (detector, wilor) = match size {
        Size::Full => (DetectorConfig::yolov8m(), WilorConfig::vit_h()),
        Size::Tiny => (DetectorConfig::yolov8n(), WilorConfig::tiny()),
    };
    let (detector_layout, wilor_layout) =
        random_weights::hand_layouts(&detector, &wilor).context("deriving the layouts")?;
    for (layout, file, what, int4) in [
        (
            &detector_layout,
            "detector_weights.safetensors",
            "hand-detector",
            false,
        ),
        (
            &wilor_layout,
            "wilor_weights.safetensors",
            "wilor",
            variant == Variant::Int4,
        ),
    ] {
        let mut tensors =
            random_weights::random_tensors(layout, seed).context("generating weights")?;
        if int4 {
            let n =
                random_weights::quantize_linears(&mut tensors, 32, random_weights::is_int4_layer)?;
            if n == 0 {
                bail!("no Linear of this size can be quantized at group size 32");
            }
        }
        let mut metadata = random_weights::synthetic_metadata(what, seed);
        metadata.insert("posed.variant".into(), variant.name().into());
        let target = out.join(file);
        Array::save_safetensors(
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            &metadata,
            &target,
        )
        .with_context(|| format!("writing {}", target.display()))?;
        println!(
            "wrote {} ({} tensors, synthetic)",
            target.display(),
            tensors.len()
        );
    }
    if size == Size::Tiny {
        for (name, json) in [
            (
                "detector_config.json",
                serde_json::to_string_pretty(&detector)?,
            ),
            ("wilor_config.json", serde_json::to_string_pretty(&wilor)?),
        ] {
            std::fs::write(out.join(name), json)?;
        }
    }
    let mano_out = out.join("mano.npz");
    match mano {
        Some(src) if src.extension().is_some_and(|e| e == "npz") => {
            std::fs::copy(src, &mano_out).with_context(|| format!("copying {}", src.display()))?;
            println!("copied {} to {}", src.display(), mano_out.display());
        }
        Some(src) => {
            posed_models::mano_convert::convert_file(src, None, &mano_out)?;
            println!("converted {} to {}", src.display(), mano_out.display());
        }
        None => {
            posed_models::npz::write_npz(&mano_out, &random_weights::synthetic_mano(seed))?;
            println!("wrote {} (synthetic MANO)", mano_out.display());
        }
    }
    Ok(())
}

/// Writes a body-route models folder into `out`: RTMDet-m and Sapiens2 0.4b
/// pose in the published layouts (the detector as the converted `.pth`),
/// random and marked synthetic.
pub fn synth_body(out: &Path, seed: u64) -> Result<()> {
    use posed_models::body_pipeline::{DETECTOR_WEIGHTS, POSE_WEIGHTS};
    use posed_models::rtmdet::{Rtmdet, RtmdetConfig};
    use posed_models::sapiens2::{Sapiens2Config, Sapiens2Pose, Sapiens2Size};

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let detector = random_weights::layout_of(|w| Rtmdet::new(RtmdetConfig::m(), w).map(drop))?;
    let pose = random_weights::layout_of(|w| {
        Sapiens2Pose::new(Sapiens2Config::pose(Sapiens2Size::B0_4), w).map(drop)
    })?;
    write_random(&detector, &out.join(DETECTOR_WEIGHTS), "rtmdet-m", seed)?;
    write_random(&pose, &out.join(POSE_WEIGHTS), "sapiens2-pose-0.4b", seed)
}

/// Random tensors in `layout`, marked synthetic, saved as `target`.
fn write_random(
    layout: &random_weights::Manifest,
    target: &Path,
    what: &str,
    seed: u64,
) -> Result<()> {
    let tensors = random_weights::random_tensors(layout, seed).context("generating weights")?;
    Array::save_safetensors(
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        &random_weights::synthetic_metadata(what, seed),
        target,
    )
    .with_context(|| format!("writing {}", target.display()))?;
    println!(
        "wrote {} ({} tensors, synthetic)",
        target.display(),
        tensors.len()
    );
    Ok(())
}

/// Writes a matte-route models folder into `out`: CorridorKey in the
/// published layout (pos_embed for 2048²), random and marked synthetic.
pub fn synth_matte(out: &Path, seed: u64) -> Result<()> {
    use posed_models::corridorkey::{CorridorKey, CorridorKeyConfig};
    use posed_models::matte_pipeline::MATTE_WEIGHTS;

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // The layout does not depend on the run size; a small one builds fast.
    let layout = random_weights::layout_of(|w| {
        CorridorKey::new(CorridorKeyConfig::base_plus(64), w).map(drop)
    })?;
    write_random(&layout, &out.join(MATTE_WEIGHTS), "corridorkey", seed)
}

/// Synthetic full-size weights for `route` in posed's cache, made once (for
/// benchmarks on machines without the real downloads).
pub fn cached_synthetic(route: &str) -> Result<std::path::PathBuf> {
    let dir = super::resolve::posed_cache_dir().join(format!("synthetic-{route}-full"));
    let (probe, make): (&str, fn(&Path) -> Result<()>) = match route {
        "hands" => ("wilor_weights.safetensors", |d| {
            synth_hands(Size::Full, Variant::F32, None, d, 0)
        }),
        "body" => (posed_models::body_pipeline::POSE_WEIGHTS, |d| {
            synth_body(d, 0)
        }),
        "matte" => (posed_models::matte_pipeline::MATTE_WEIGHTS, |d| {
            synth_matte(d, 0)
        }),
        other => bail!("no synthetic weights for route {other:?} (hands, body, matte)"),
    };
    if !dir.join(probe).is_file() {
        eprintln!(
            "making synthetic full-size {route} weights in {}",
            dir.display()
        );
        make(&dir)?;
    }
    Ok(dir)
}
