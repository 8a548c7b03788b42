//! Wall time of full-size forward passes on synthetic weights made from the
//! published key manifests (WiLoR ViT-H, YOLOv8m-pose hand detector), and the
//! process's peak resident memory.
//!
//!   cargo bench --bench model_forward -- \
//!       --fixtures ../shared/fixtures [--runs 5] [--batch 1] [--int4]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mlx_rs::Array;
use posed_models::checked_weights::Weights;
use posed_models::hand_detector::{DetectorConfig, HandDetector};
use posed_models::mano::Mano;
use posed_models::random_weights;
use posed_models::wilor::{Wilor, WilorConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    };
    let fixtures =
        PathBuf::from(value("--fixtures").unwrap_or_else(|| "../shared/fixtures".into()))
            .join("hands");
    let runs: usize = value("--runs").map_or(5, |v| v.parse().expect("--runs N"));
    let batch: i32 = value("--batch").map_or(1, |v| v.parse().expect("--batch N"));
    let int4 = args.iter().any(|a| a == "--int4");

    let device = posed_models::runtime::default_device();
    println!(
        "device {}:{} {}",
        device.kind,
        device.index,
        device.name().unwrap_or("")
    );

    let manifest = random_weights::read_manifest(&fixtures.join("wilor_full_keys.json")).unwrap();
    let mut tensors = random_weights::random_tensors(&manifest, 7).unwrap();
    if int4 {
        random_weights::quantize_linears(&mut tensors, 32, |p| p.starts_with("backbone.blocks."))
            .unwrap();
    }
    let w = Weights::from_tensors("synthetic", tensors, Default::default());
    let mano = Mano::from_npz(&fixtures.join("mano.npz")).unwrap();
    let wilor = Wilor::new(WilorConfig::vit_h(), &w, mano).unwrap();
    w.finish().unwrap();
    let n = (batch * 256 * 256 * 3) as usize;
    let px: Vec<u8> = (0..n).map(|i| ((i * 2654435761) >> 13) as u8).collect();
    let crops = Array::from_slice(&px, &[batch, 256, 256, 3]);
    let times = measure(runs, || {
        let o = wilor.forward(&crops).unwrap();
        mlx_rs::transforms::eval([&o.vertices, &o.keypoints_3d, &o.cam]).unwrap();
    });
    report(
        &format!(
            "WiLoR ViT-H {} batch {batch}",
            if int4 { "int4" } else { "f32" }
        ),
        &times,
    );

    let manifest = random_weights::read_manifest(&fixtures.join("detector_m_keys.json")).unwrap();
    let w = Weights::from_tensors(
        "synthetic",
        random_weights::random_tensors(&manifest, 3).unwrap(),
        Default::default(),
    );
    let det = HandDetector::new(DetectorConfig::yolov8m(), &w).unwrap();
    w.finish().unwrap();
    let px: Vec<f32> = (0..512 * 512 * 3usize)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    let image = Array::from_slice(&px, &[1, 512, 512, 3]);
    let times = measure(runs, || det.forward(&image).unwrap().eval().unwrap());
    report("hand detector YOLOv8m-pose 512x512", &times);
    println!(
        "peak RSS {:.2} GiB",
        peak_rss_kib() as f64 / 1024.0 / 1024.0
    );
}

/// One untimed warm-up run, then `runs` timed ones.
fn measure(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    f();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn report(what: &str, times: &[Duration]) {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let pct = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: runs {} p50 {:.1} ms p90 {:.1} ms max {:.1} ms",
        ms.len(),
        pct(0.5),
        pct(0.9),
        ms[ms.len() - 1]
    );
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
