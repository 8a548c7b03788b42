//! The route latency harness (`posed bench`, `cargo bench --bench
//! route_latency`): the hand route stage by stage on a fixed pushed
//! 640×480 JPEG, for each pose dtype and hands-per-frame count, warm-up
//! then timed runs, percentiles per stage and end to end, as a table and
//! as JSON for comparisons.
//!
//! Stages run in the daemon's order and with its code: decode (the gRPC
//! decoder), preprocess (letterbox), detect, crop, pose (WiLoR network,
//! evaluated), mano (final MANO pass and placement), post (the event and its
//! protobuf encoding). The detector always runs; the pose batch is the
//! given number of fixed boxes, so a batch size does not depend on what
//! random weights happen to detect.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use posed_models::hand_pipeline::{HandBox, HandModelFiles, HandPipeline};
use posed_models::image::RgbImage;
use prost::Message;
use serde::Serialize;

use crate::engine::{Frame, HandsResult};
use crate::proto;

pub struct BenchOptions {
    pub pose_dtypes: Vec<String>,
    /// Run WiLoR eager (false) and/or compiled (true).
    pub compile: Vec<bool>,
    pub hands: Vec<usize>,
    pub warmup: usize,
    pub runs: usize,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub n: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub pose_dtype: String,
    pub compiled: bool,
    pub hands: usize,
    pub stages: BTreeMap<String, Percentiles>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub harness: &'static str,
    pub posed_version: &'static str,
    pub mlx_version: String,
    pub device: String,
    pub models: String,
    pub synthetic_weights: bool,
    pub image: &'static str,
    pub warmup: usize,
    pub runs: usize,
    pub cases: Vec<CaseResult>,
}

const STAGES: [&str; 8] = [
    "decode",
    "preprocess",
    "detect",
    "crop",
    "pose",
    "mano",
    "post",
    "end_to_end",
];

/// A 640×480 JPEG with some structure (gradients and a disc), encoded once.
pub fn test_jpeg() -> Vec<u8> {
    let (w, h) = (640u32, 480u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - 320.0, y as f32 - 240.0);
        let disc = if dx * dx + dy * dy < 90.0 * 90.0 {
            80
        } else {
            0
        };
        image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (120 + disc) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encoding a JPEG in memory");
    out.into_inner()
}

/// Fixed hand boxes spread over a 640×480 frame.
fn boxes(n: usize) -> Vec<HandBox> {
    (0..n)
        .map(|i| {
            let x = 60.0 + 130.0 * (i % 4) as f32;
            let y = 120.0 + 90.0 * (i / 4) as f32;
            HandBox {
                bbox: [x, y, x + 90.0, y + 110.0],
                is_right: i % 2 == 0,
                score: 1.0,
                keypoints_2d: Vec::new(),
            }
        })
        .collect()
}

pub fn dtype(name: &str) -> Result<Option<mlx_rs::Dtype>> {
    Ok(match name {
        "f32" | "int4" => None,
        "bf16" => Some(mlx_rs::Dtype::Bfloat16),
        "f16" => Some(mlx_rs::Dtype::Float16),
        other => anyhow::bail!(
            "unknown pose dtype {other:?} (f32, bf16, f16; int4 comes from the weight file)"
        ),
    })
}

pub fn run(files: &HandModelFiles, options: &BenchOptions) -> Result<Report> {
    let jpeg = test_jpeg();
    let mut cases = Vec::new();
    let mut synthetic_weights = false;
    for name in &options.pose_dtypes {
        for &compiled in &options.compile {
            let (pipeline, synthetic) = HandPipeline::load_with(files, dtype(name)?)
                .with_context(|| format!("loading the hand route ({name})"))?;
            synthetic_weights |= synthetic;
            if compiled {
                pipeline.compile();
            }
            let label = if compiled {
                format!("{name}+compile")
            } else {
                name.clone()
            };
            for &n in &options.hands {
                let stages = time_case(&pipeline, &jpeg, n, options)?;
                eprintln!("{}", case_line(&label, n, &stages));
                cases.push(CaseResult {
                    pose_dtype: name.clone(),
                    compiled,
                    hands: n,
                    stages,
                });
            }
        }
    }
    let device = posed_models::runtime::default_device();
    Ok(Report {
        harness: "posed route_latency",
        posed_version: env!("CARGO_PKG_VERSION"),
        mlx_version: posed_models::runtime::mlx_version(),
        device: match device.name() {
            Some(n) => format!("{} ({n})", device.kind),
            None => device.kind.to_owned(),
        },
        models: files.wilor_weights.display().to_string(),
        synthetic_weights,
        image: "640x480 JPEG",
        warmup: options.warmup,
        runs: options.runs,
        cases,
    })
}

fn time_case(
    p: &HandPipeline,
    jpeg: &[u8],
    hands: usize,
    options: &BenchOptions,
) -> Result<BTreeMap<String, Percentiles>> {
    let mut hist: BTreeMap<&str, Histogram<u64>> = STAGES
        .iter()
        .map(|s| (*s, Histogram::new(3).expect("3 significant figures")))
        .collect();
    let image = proto::push_image_request::Image::Encoded(jpeg.to_vec());
    let hand_boxes = boxes(hands);
    for i in 0..options.warmup + options.runs {
        let mut times: Vec<(&str, Duration)> = Vec::with_capacity(STAGES.len());
        let start = Instant::now();
        let mut lap = Instant::now();
        let mut mark = |stage: &'static str, times: &mut Vec<(&str, Duration)>| {
            times.push((stage, lap.elapsed()));
            lap = Instant::now();
        };
        let rgb = crate::decode::decode(Some(&image), u64::MAX)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        mark("decode", &mut times);
        let img = RgbImage::new(rgb.width, rgb.height, &rgb.data).context("decoded frame")?;
        let input = p.prepare_detector_input(img);
        mark("preprocess", &mut times);
        p.detect(&input)?;
        mark("detect", &mut times);
        let crops = p.prepare_crops(img, &hand_boxes);
        mark("crop", &mut times);
        let regressed = p.regress(&crops)?;
        mark("pose", &mut times);
        let estimates = match regressed {
            Some(r) => p.mesh(&r, &crops, &hand_boxes, rgb.width, rgb.height)?,
            None => Vec::new(),
        };
        mark("mano", &mut times);
        let result = HandsResult {
            frame: std::sync::Arc::new(Frame {
                id: i as u64,
                source_id: "bench".into(),
                client_frame_id: 0,
                captured: std::time::SystemTime::now(),
                received: start,
                width: rgb.width,
                height: rgb.height,
                rgb: Vec::new(),
            }),
            hands: estimates,
            timings: Vec::new(),
            dropped_before: 0,
        };
        let ids: Vec<u32> = (1..=hands as u32).collect();
        let event = crate::post::hands_event(&result, &ids, false, Duration::ZERO);
        std::hint::black_box(event.encode_to_vec());
        mark("post", &mut times);
        times.push(("end_to_end", start.elapsed()));
        if i >= options.warmup {
            for (stage, d) in times {
                let ns = (d.as_nanos() as u64).max(1);
                hist.get_mut(stage)
                    .expect("known stage")
                    .record(ns)
                    .expect("auto-resizing histogram");
            }
        }
    }
    Ok(hist
        .into_iter()
        .map(|(stage, h)| {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
            (
                stage.to_owned(),
                Percentiles {
                    n: h.len(),
                    p50_ms: ms(0.5),
                    p90_ms: ms(0.9),
                    p99_ms: ms(0.99),
                    max_ms: h.max() as f64 / 1e6,
                },
            )
        })
        .collect())
}

fn case_line(dtype: &str, hands: usize, stages: &BTreeMap<String, Percentiles>) -> String {
    let mut line = format!("pose {dtype:<12} hands {hands}:");
    for s in STAGES {
        let p = &stages[s];
        line.push_str(&format!(" {s} {:.2}/{:.2}", p.p50_ms, p.p99_ms));
    }
    line + " (p50/p99 ms)"
}

/// The report as a markdown table (one row per case and stage).
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "{} | mlx {} | {} | {} runs after {} warm-up{}\n\n| pose dtype | compiled | hands | stage | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|\n",
        r.device,
        r.mlx_version,
        r.image,
        r.runs,
        r.warmup,
        if r.synthetic_weights { " | SYNTHETIC weights" } else { "" }
    );
    for c in &r.cases {
        for s in STAGES {
            let p = &c.stages[s];
            out.push_str(&format!(
                "| {} | {} | {} | {s} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                c.pose_dtype,
                if c.compiled { "yes" } else { "no" },
                c.hands,
                p.p50_ms,
                p.p90_ms,
                p.p99_ms,
                p.max_ms
            ));
        }
    }
    out
}

/// Runs the harness on the models in `dir` and writes `json` if given.
pub fn run_dir(dir: &Path, options: &BenchOptions, json: Option<&Path>) -> Result<Report> {
    let files = HandModelFiles::from_dir(dir).map_err(anyhow::Error::msg)?;
    let report = run(&files, options)?;
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}
