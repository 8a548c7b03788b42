//! The route latency harness as a cargo bench (the same code as `posed
//! bench`): `cargo bench --bench route_latency -- [--route hands|body]
//! --models DIR [--pose-dtypes f32,bf16] [--compile off,on] [--hands 1,2,4]
//! [--flip-test on|off] [--runs 100] [--warmup 10] [--json out.json]`.
//! `--hands` counts people on the body route. Without `--models` it makes
//! synthetic full-size weights once in posed's cache.

use std::path::PathBuf;

use posed::bench::{self, BenchOptions};
use posed::routes::RouteId;
use posed::weights::synth;

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
    let route = value("--route").unwrap_or_else(|| "hands".into());
    let route = <RouteId as clap::ValueEnum>::from_str(&route, false)
        .map_err(|e| anyhow::anyhow!("--route: {e}"))?;
    let models = match value("--models") {
        Some(m) => PathBuf::from(m),
        None => synth::cached_synthetic(route.name())?,
    };
    let options = BenchOptions {
        pose_dtypes: list("--pose-dtypes", "f32,bf16"),
        compile: list("--compile", "off").iter().map(|c| c == "on").collect(),
        tracking: list("--tracking", "off")
            .iter()
            .map(|c| c == "on")
            .collect(),
        flip_test: value("--flip-test").is_none_or(|v| v == "on"),
        per_frame: list("--hands", "1,2,4")
            .iter()
            .map(|h| h.parse())
            .collect::<Result<_, _>>()?,
        matte_sizes: list("--sizes", "512,1024")
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?,
        refiner_tile: value("--refiner-tile").map(|v| v.parse()).transpose()?,
        profile: args.iter().any(|a| a == "--profile"),
        cpu_profile: value("--cpu-profile").map(PathBuf::from),
        warmup: value("--warmup").map_or(Ok(10), |v| v.parse())?,
        runs: value("--runs").map_or(Ok(100), |v| v.parse())?,
    };
    let json = value("--json").map(PathBuf::from);
    let report = bench::run_dir(route, &models, &options, json.as_deref())?;
    print!("{}", bench::table(&report));
    Ok(())
}
