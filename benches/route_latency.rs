//! The route latency harness as a cargo bench (the same code as `posed
//! bench`): `cargo bench --bench route_latency -- --models DIR
//! [--pose-dtypes f32,bf16] [--compile off,on] [--hands 1,2,4] [--runs 100] [--warmup 10]
//! [--json out.json]`. Without `--models` it makes synthetic full-size
//! weights once in posed's cache.

use std::path::PathBuf;

use posed::bench::{self, BenchOptions};
use posed::weights::synth::{self, Size, Variant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let list = |flag: &str, default: &str| -> Vec<String> {
        value(flag)
            .unwrap_or_else(|| default.into())
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    let models = match value("--models") {
        Some(m) => PathBuf::from(m),
        None => {
            let dir = posed::weights::resolve::posed_cache_dir().join("synthetic-hands-full");
            if !dir.join("wilor_weights.safetensors").is_file() {
                synth::synth_hands(Size::Full, Variant::F32, None, &dir, 0)?;
            }
            dir
        }
    };
    let options = BenchOptions {
        pose_dtypes: list("--pose-dtypes", "f32,bf16"),
        compile: list("--compile", "off").iter().map(|c| c == "on").collect(),
        hands: list("--hands", "1,2,4")
            .iter()
            .map(|h| h.parse())
            .collect::<Result<_, _>>()?,
        warmup: value("--warmup").map_or(Ok(10), |v| v.parse())?,
        runs: value("--runs").map_or(Ok(100), |v| v.parse())?,
    };
    let json = value("--json").map(PathBuf::from);
    let report = bench::run_dir(&models, &options, json.as_deref())?;
    print!("{}", bench::table(&report));
    Ok(())
}
