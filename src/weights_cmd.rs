//! `posed weights synth`: random weights in the published layout, for demos,
//! tests and benchmarks on machines without the real downloads. Every file
//! made here carries `posed.synthetic = true` in its metadata, and the daemon
//! says so when it loads one.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use mlx_rs::Array;
use posed_models::synth;

/// Writes `detector_weights.safetensors` and `wilor_weights.safetensors`
/// (plus their configs for the tiny size) into `out`, from the key/shape
/// manifests in `manifests` (`detector_m_keys.json`, `wilor_full_keys.json`
/// for `full`; the tiny size copies the fixture configs' dimensions), and
/// copies `mano` (a `mano.npz`) beside them.
pub fn synth_hands(manifests: &Path, mano: &Path, out: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (manifest, file, what) in [
        (
            "detector_m_keys.json",
            "detector_weights.safetensors",
            "hand-detector",
        ),
        ("wilor_full_keys.json", "wilor_weights.safetensors", "wilor"),
    ] {
        let path = manifests.join(manifest);
        let keys = synth::read_manifest(&path).map_err(anyhow::Error::msg)?;
        if keys.is_empty() {
            bail!("{} lists no tensors", path.display());
        }
        let tensors = synth::random_tensors(&keys, seed).context("generating weights")?;
        let metadata: HashMap<String, String> = synth::synthetic_metadata(what, seed);
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
    std::fs::copy(mano, out.join("mano.npz"))
        .with_context(|| format!("copying {}", mano.display()))?;
    println!(
        "copied {} to {}",
        mano.display(),
        out.join("mano.npz").display()
    );
    Ok(())
}
