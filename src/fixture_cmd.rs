//! `posed fixture run|check`: run a model on a parity fixture folder, and
//! compare with the PyTorch reference outputs stored there.

use std::path::Path;

use anyhow::{bail, Context, Result};
use posed_models::parity::{self, FixtureModel};

/// Models whose fixture files are in `dir`, or the one asked for.
fn models_in(dir: &Path, model: Option<&str>) -> Result<Vec<FixtureModel>> {
    if let Some(name) = model {
        let m = FixtureModel::parse(name).with_context(|| {
            let known: Vec<_> = FixtureModel::ALL.iter().map(|m| m.name()).collect();
            format!("unknown model {name:?} (known: {})", known.join(", "))
        })?;
        return Ok(vec![m]);
    }
    let found: Vec<_> = FixtureModel::ALL
        .into_iter()
        .filter(|m| m.io_file(dir).is_file())
        .collect();
    if found.is_empty() {
        bail!(
            "no fixture in {} (expected <model>_io.safetensors)",
            dir.display()
        );
    }
    Ok(found)
}

/// Writes every output and intermediate under the fixture's names.
pub fn run(model: &str, dir: &Path, out: &Path) -> Result<()> {
    let model = models_in(dir, Some(model))?[0];
    let tensors = parity::run(model, dir)
        .with_context(|| format!("running {} on {}", model.name(), dir.display()))?;
    mlx_rs::Array::save_safetensors(tensors.iter().map(|(k, v)| (k.as_str(), v)), None, out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} tensors to {}", tensors.len(), out.display());
    Ok(())
}

/// Prints max/mean |Δ| per tensor; an error if any is over tolerance.
pub fn check(dir: &Path, model: Option<&str>) -> Result<()> {
    let mut failed = Vec::new();
    let mut total = 0;
    for model in models_in(dir, model)? {
        let rows = parity::check(model, dir)
            .with_context(|| format!("running {} on {}", model.name(), dir.display()))?;
        println!(
            "{:<52} {:>10} {:>10} {:>9}",
            format!("{} tensor", model.name()),
            "max |Δ|",
            "mean |Δ|",
            "tolerance"
        );
        for row in rows {
            println!("{row}");
            total += 1;
            if !row.passed() {
                failed.push(row.name.clone());
            }
        }
        println!();
    }
    if !failed.is_empty() {
        bail!(
            "{} of {total} tensors over tolerance: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    println!("all {total} tensors within tolerance");
    Ok(())
}
