//! The route latency harness (`posed bench`, `cargo bench --bench
//! route_latency`): a route stage by stage on a fixed pushed 640×480 JPEG,
//! for each pose dtype and hands (or people) per frame, warm-up then timed
//! runs, percentiles per stage and end to end, as a table and as JSON for
//! comparisons.
//!
//! Stages run in the daemon's order and with its code. Hands: decode (the
//! gRPC decoder), preprocess (letterbox), detect, crop, pose (WiLoR network,
//! evaluated), mano (final MANO pass and placement), post (the event and its
//! protobuf encoding). Body: decode, preprocess (mmdet letterbox), detect
//! (RTMDet and its post-processing), crop (UDP warps), pose (Sapiens2 on the
//! crops, and their mirror images with the flip test, evaluated), keypoints
//! (flip average, DARK decode, back to the image), post. The detector always
//! runs; the pose batch is the given number of fixed boxes, so a batch size
//! does not depend on what random weights happen to detect.
//!
//! Matte: a 1920×1080 JPEG with a pushed hint, per model size and decoder
//! dtype: decode (frame and hint), preprocess (resize to the model size,
//! normalise, evaluated), matte (CorridorKey, evaluated), resize (alpha and
//! foreground back to 1920×1080 as bytes), post (the event with PNG alpha,
//! foreground and composite, protobuf-encoded).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use posed_models::body_pipeline::{BodyModelFiles, BodyPipeline};
use posed_models::hand_pipeline::{HandBox, HandEstimate, HandModelFiles, HandPipeline};
use posed_models::image::RgbImage;
use posed_models::matte_pipeline::{FrameFit, Hint, MatteModelFiles, MattePipeline};
use prost::Message;
use serde::Serialize;

use crate::engine::{BodyResult, Frame, HandsResult, HintSource, MatteResult};
use crate::proto;

pub struct BenchOptions {
    pub pose_dtypes: Vec<String>,
    /// Run WiLoR eager (false) and/or compiled (true).
    pub compile: Vec<bool>,
    /// Hands (hand route) or people (body route) per frame.
    pub per_frame: Vec<usize>,
    /// Body route: the reference's flip test (a mirrored copy of each crop).
    pub flip_test: bool,
    /// Matte route: the model sizes to compare.
    pub matte_sizes: Vec<i32>,
    /// Matte route: run the refiner in tiles of this size.
    pub refiner_tile: Option<i32>,
    /// Print per-part timings of the network first.
    pub profile: bool,
    /// Sample the host's stacks during each case's timed runs and write
    /// them here as `<case>.folded` (`crate::cpu_profile`).
    pub cpu_profile: Option<PathBuf>,
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

impl Percentiles {
    /// Of a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        Percentiles {
            n: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: h.max() as f64 / 1e6,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub route: &'static str,
    pub pose_dtype: String,
    pub compiled: bool,
    /// Hands or people per frame (the pose batch); 1 for the matte route.
    pub per_frame: usize,
    /// Matte route: the model's square input size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub img_size: Option<i32>,
    pub stages: BTreeMap<String, Percentiles>,
    /// Hand route: this case's 3-D output against the first float32 case's
    /// on the same crops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_f32: Option<Deviation>,
}

/// Largest absolute difference of the 3-D outputs (metres).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Deviation {
    pub keypoints_3d_max_abs_m: f32,
    pub vertices_max_abs_m: f32,
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

const HAND_STAGES: [&str; 9] = [
    "decode",
    "preprocess",
    "detect",
    "crop",
    "pose",
    "mano",
    "post",
    "model",
    "end_to_end",
];

/// Spans of consecutive stages, timed as one: `model` is the WiLoR model
/// stage as its peers measure it (network and final MANO, results on the
/// host), crops in.
const SPANS: [(&str, [&str; 2]); 1] = [("model", ["pose", "mano"])];

const BODY_STAGES: [&str; 8] = [
    "decode",
    "preprocess",
    "detect",
    "crop",
    "pose",
    "keypoints",
    "post",
    "end_to_end",
];

const MATTE_STAGES: [&str; 6] = [
    "decode",
    "preprocess",
    "matte",
    "resize",
    "post",
    "end_to_end",
];

fn stages_of(route: &str) -> &'static [&'static str] {
    match route {
        "body" => &BODY_STAGES,
        "matte" => &MATTE_STAGES,
        _ => &HAND_STAGES,
    }
}

/// A 640×480 JPEG with some structure (gradients and a disc), encoded once.
pub fn test_jpeg() -> Vec<u8> {
    sized_jpeg(640, 480)
}

/// The same picture at `w × h`.
pub fn sized_jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - w as f32 / 2.0, y as f32 - h as f32 / 2.0);
        let r = h as f32 * 0.19;
        let disc = if dx * dx + dy * dy < r * r { 80 } else { 0 };
        image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (120 + disc) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encoding a JPEG in memory");
    out.into_inner()
}

/// Fixed hand boxes spread over a 640×480 frame.
pub fn fixed_hand_boxes(n: usize) -> Vec<HandBox> {
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
    // The first float32 case's hands per batch size: what the other cases
    // are compared against.
    let mut reference: BTreeMap<usize, Vec<HandEstimate>> = BTreeMap::new();
    let mut synthetic_weights = false;
    for name in &options.pose_dtypes {
        for &compiled in &options.compile {
            let (pipeline, synthetic) = HandPipeline::load_with(files, dtype(name)?)
                .with_context(|| format!("loading the hand route ({name})"))?;
            synthetic_weights |= synthetic;
            if compiled {
                pipeline.compile().context("compiling the hand route")?;
            }
            let label = if compiled {
                format!("{name}+compile")
            } else {
                name.clone()
            };
            for &n in &options.per_frame {
                let case = format!("hands-{label}-x{n}");
                let stages = time_case(&pipeline, &jpeg, n, &case, options)?;
                let outputs = hand_outputs(&pipeline, &jpeg, n)?;
                let vs_f32 = match reference.get(&n) {
                    Some(f32_outputs) => Some(deviation(f32_outputs, &outputs)),
                    None if name == "f32" => {
                        reference.insert(n, outputs);
                        None
                    }
                    None => None,
                };
                let mut line = case_line("hands", &label, n, &stages);
                if let Some(d) = vs_f32 {
                    line.push_str(&format!(
                        " | vs f32: keypoints {:.2e} m, vertices {:.2e} m",
                        d.keypoints_3d_max_abs_m, d.vertices_max_abs_m
                    ));
                }
                eprintln!("{line}");
                cases.push(CaseResult {
                    route: "hands",
                    pose_dtype: name.clone(),
                    compiled,
                    per_frame: n,
                    img_size: None,
                    stages,
                    vs_f32,
                });
            }
        }
    }
    Ok(report(
        files.wilor_weights.display().to_string(),
        synthetic_weights,
        options,
        cases,
    ))
}

fn report(
    models: String,
    synthetic_weights: bool,
    options: &BenchOptions,
    cases: Vec<CaseResult>,
) -> Report {
    let device = posed_models::runtime::default_device();
    Report {
        harness: "posed route_latency",
        posed_version: env!("CARGO_PKG_VERSION"),
        mlx_version: posed_models::runtime::mlx_version(),
        device: match device.name() {
            Some(n) => format!("{} ({n})", device.kind),
            None => device.kind.to_owned(),
        },
        models,
        synthetic_weights,
        image: "640x480 JPEG",
        warmup: options.warmup,
        runs: options.runs,
        cases,
    }
}

/// The body route for every pose dtype and people count.
pub fn run_body(files: &BodyModelFiles, options: &BenchOptions) -> Result<Report> {
    let jpeg = test_jpeg();
    let mut cases = Vec::new();
    let mut synthetic_weights = false;
    for name in &options.pose_dtypes {
        let mut files = files.clone();
        files.pose_config.demo.flip_test = options.flip_test;
        let (mut pipeline, synthetic) = BodyPipeline::load(&files, dtype(name)?)
            .with_context(|| format!("loading the body route ({name})"))?;
        pipeline.max_people = usize::MAX;
        synthetic_weights |= synthetic;
        for &n in &options.per_frame {
            let label = if options.flip_test {
                format!("{name}+flip")
            } else {
                name.clone()
            };
            let case = format!("body-{label}-x{n}");
            let stages = time_body_case(&pipeline, &jpeg, n, &case, options)?;
            eprintln!("{}", case_line("body", &label, n, &stages));
            cases.push(CaseResult {
                route: "body",
                pose_dtype: name.clone(),
                compiled: false,
                per_frame: n,
                img_size: None,
                stages,
                vs_f32: None,
            });
        }
    }
    Ok(report(
        files.pose_weights.display().to_string(),
        synthetic_weights,
        options,
        cases,
    ))
}

/// Fixed standing-person boxes side by side in a 640×480 frame.
fn person_boxes(n: usize) -> Vec<[f32; 4]> {
    (0..n)
        .map(|i| {
            let x = 20.0 + 150.0 * (i % 4) as f32;
            [x, 40.0, x + 130.0, 440.0]
        })
        .collect()
}

fn time_body_case(
    p: &BodyPipeline,
    jpeg: &[u8],
    people: usize,
    case: &str,
    options: &BenchOptions,
) -> Result<BTreeMap<String, Percentiles>> {
    let image = proto::push_image_request::Image::Encoded(jpeg.to_vec());
    let boxes: Vec<([f32; 4], f32)> = person_boxes(people).into_iter().map(|b| (b, 1.0)).collect();
    measure(&BODY_STAGES, case, options, |i, mark| {
        let start = Instant::now();
        let rgb = crate::decode::decode(Some(&image), u64::MAX)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        mark("decode");
        let img = RgbImage::new(rgb.width, rgb.height, &rgb.data).context("decoded frame")?;
        let input = p.prepare_detector_input(img);
        mark("preprocess");
        std::hint::black_box(p.detect(&input)?);
        mark("detect");
        let batch = p.prepare_crops(img, &boxes);
        mark("crop");
        let heatmaps = p.heatmaps(&batch)?;
        mark("pose");
        let estimates = match heatmaps {
            Some((hm, mirrored)) => p.decode(&batch, &hm, mirrored.as_ref())?,
            None => Vec::new(),
        };
        mark("keypoints");
        let result = BodyResult {
            frame: bench_frame(i, rgb.width, rgb.height, start),
            people: estimates,
            timings: Vec::new(),
            dropped_before: 0,
        };
        let ids: Vec<u32> = (1..=people as u32).collect();
        let event = crate::post::body_event(&result, &ids, Duration::ZERO);
        std::hint::black_box(event.encode_to_vec());
        mark("post");
        Ok(start)
    })
}

/// The matte route for every model size and decoder dtype.
pub fn run_matte(files: &MatteModelFiles, options: &BenchOptions) -> Result<Report> {
    let (w, h) = (1920u32, 1080u32);
    let jpeg = sized_jpeg(w, h);
    // A soft disc as the client's hint, sent as PNG.
    let hint: Vec<u8> = (0..h)
        .flat_map(|y| {
            (0..w).map(move |x| {
                let (dx, dy) = (x as f32 - 960.0, y as f32 - 540.0);
                if dx * dx + dy * dy < 300.0 * 300.0 {
                    255
                } else {
                    0
                }
            })
        })
        .collect();
    let hint_png = crate::decode::encode_png(&hint, w as usize, h as usize, 1);
    let mut cases = Vec::new();
    let mut synthetic_weights = false;
    for &size in &options.matte_sizes {
        for name in &options.pose_dtypes {
            let mut files = files.clone();
            files.config.img_size = size;
            let head = dtype(name)?.unwrap_or(mlx_rs::Dtype::Float32);
            let (mut pipeline, synthetic) = MattePipeline::load(&files, head, FrameFit::Resize)
                .with_context(|| format!("loading CorridorKey at {size} ({name})"))?;
            pipeline.refiner_tile = options.refiner_tile;
            synthetic_weights |= synthetic;
            if options.profile {
                profile_matte(&pipeline, &jpeg, &format!("{name} @{size}"))?;
            }
            posed_models::runtime::reset_peak_memory();
            let case = format!("matte-{name}-{size}");
            let stages = time_matte_case(&pipeline, &jpeg, &hint_png, &case, options)?;
            let mem = posed_models::runtime::memory_use();
            eprintln!(
                "matte {name} @{size}: MLX peak {:.2} GiB, cache {:.2} GiB",
                mem.peak as f64 / (1u64 << 30) as f64,
                mem.cache as f64 / (1u64 << 30) as f64
            );
            eprintln!(
                "{}",
                case_line("matte", &format!("{name} @{size}"), 1, &stages)
            );
            cases.push(CaseResult {
                route: "matte",
                pose_dtype: name.clone(),
                compiled: false,
                per_frame: 1,
                img_size: Some(size),
                stages,
                vs_f32: None,
            });
        }
    }
    let mut r = report(
        files.weights.display().to_string(),
        synthetic_weights,
        options,
        cases,
    );
    r.image = "1920x1080 JPEG + PNG hint";
    Ok(r)
}

/// CorridorKey part by part, twice (the first run pays first-use costs),
/// each part printed as it finishes.
fn profile_matte(p: &MattePipeline, jpeg: &[u8], label: &str) -> Result<()> {
    let image = proto::push_image_request::Image::Encoded(jpeg.to_vec());
    let rgb = crate::decode::decode(Some(&image), u64::MAX)
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let img = RgbImage::new(rgb.width, rgb.height, &rgb.data).context("decoded frame")?;
    let x = p.prepare(
        img,
        Hint::Fallback(posed_models::matte_pipeline::FallbackHint::Ones),
    )?;
    for run in 1..=2 {
        p.profile(&x, &mut |part, ms| {
            eprintln!("profile {label} run {run}: {part} {ms:.1} ms")
        })?;
    }
    Ok(())
}

fn time_matte_case(
    p: &MattePipeline,
    jpeg: &[u8],
    hint_png: &[u8],
    case: &str,
    options: &BenchOptions,
) -> Result<BTreeMap<String, Percentiles>> {
    let image = proto::push_image_request::Image::Encoded(jpeg.to_vec());
    measure(&MATTE_STAGES, case, options, |i, mark| {
        let start = Instant::now();
        let rgb = crate::decode::decode(Some(&image), u64::MAX)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let hint = crate::decode::decode_hint(hint_png, rgb.width, rgb.height)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        mark("decode");
        let img = RgbImage::new(rgb.width, rgb.height, &rgb.data).context("decoded frame")?;
        let x = p.prepare(img, Hint::Plane(&hint))?;
        x.eval()?;
        mark("preprocess");
        let out = p.run(&x)?;
        mark("matte");
        let matte = p.to_frame(&out, rgb.width, rgb.height)?;
        mark("resize");
        let result = MatteResult {
            frame: bench_frame(i, rgb.width, rgb.height, start),
            matte,
            hint: HintSource::Pushed,
            timings: Vec::new(),
            dropped_before: 0,
        };
        let event = crate::post::matte_event(&result, crate::post::MatteEncoding::Png, true);
        std::hint::black_box(event.encode_to_vec());
        mark("post");
        Ok(start)
    })
}

fn bench_frame(i: u64, width: usize, height: usize, received: Instant) -> std::sync::Arc<Frame> {
    std::sync::Arc::new(Frame {
        id: i,
        source_id: "bench".into(),
        client_frame_id: 0,
        captured: std::time::SystemTime::now(),
        received,
        width,
        height,
        rgb: Vec::new(),
    })
}

/// Runs `one` warm-up + timed times; `one` marks the end of each stage and
/// returns when the frame started. Percentiles per stage and end to end.
/// With `options.cpu_profile`, the host is sampled during the timed runs.
fn measure(
    stages: &[&'static str],
    case: &str,
    options: &BenchOptions,
    mut one: impl FnMut(u64, &mut dyn FnMut(&'static str)) -> Result<Instant>,
) -> Result<BTreeMap<String, Percentiles>> {
    let mut hist: BTreeMap<&str, Histogram<u64>> = stages
        .iter()
        .map(|s| (*s, Histogram::new(3).expect("3 significant figures")))
        .collect();
    let mut sampler = None;
    for i in 0..options.warmup + options.runs {
        if i == options.warmup && options.cpu_profile.is_some() {
            sampler = Some(crate::cpu_profile::Sampler::start()?);
        }
        let mut times: Vec<(&str, Duration)> = Vec::with_capacity(stages.len());
        let mut lap = Instant::now();
        let start = one(i as u64, &mut |stage| {
            times.push((stage, lap.elapsed()));
            lap = Instant::now();
        })?;
        times.push(("end_to_end", start.elapsed()));
        for (span, parts) in SPANS {
            if stages.contains(&span) {
                let d = times
                    .iter()
                    .filter(|(s, _)| parts.contains(s))
                    .map(|(_, d)| *d)
                    .sum();
                times.push((span, d));
            }
        }
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
    if let (Some(sampler), Some(dir)) = (sampler, &options.cpu_profile) {
        let path = dir.join(format!("{}.folded", case.replace(['/', ' '], "_")));
        sampler.write_folded(&path)?;
        eprintln!("cpu profile of {case}: {}", path.display());
    }
    Ok(hist
        .into_iter()
        .map(|(stage, h)| (stage.to_owned(), Percentiles::of(&h)))
        .collect())
}

fn time_case(
    p: &HandPipeline,
    jpeg: &[u8],
    hands: usize,
    case: &str,
    options: &BenchOptions,
) -> Result<BTreeMap<String, Percentiles>> {
    let image = proto::push_image_request::Image::Encoded(jpeg.to_vec());
    let hand_boxes = fixed_hand_boxes(hands);
    measure(&HAND_STAGES, case, options, |i, mark| {
        let start = Instant::now();
        let rgb = crate::decode::decode(Some(&image), u64::MAX)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        mark("decode");
        let img = RgbImage::new(rgb.width, rgb.height, &rgb.data).context("decoded frame")?;
        let input = p.prepare_detector_input(img);
        mark("preprocess");
        p.detect(&input)?;
        mark("detect");
        let crops = p.prepare_crops(img, &hand_boxes);
        mark("crop");
        let regressed = p.regress(&crops)?;
        mark("pose");
        let estimates = match regressed {
            Some(r) => p.mesh(&r, &crops, &hand_boxes, rgb.width, rgb.height)?,
            None => Vec::new(),
        };
        mark("mano");
        let result = HandsResult {
            frame: bench_frame(i, rgb.width, rgb.height, start),
            hands: estimates,
            timings: Vec::new(),
            dropped_before: 0,
        };
        let ids: Vec<u32> = (1..=hands as u32).collect();
        let event = crate::post::hands_event(&result, &ids, false, Duration::ZERO);
        std::hint::black_box(event.encode_to_vec());
        mark("post");
        Ok(start)
    })
}

/// The hands of one frame with `n` fixed boxes, untimed.
fn hand_outputs(p: &HandPipeline, jpeg: &[u8], n: usize) -> Result<Vec<HandEstimate>> {
    let image = proto::push_image_request::Image::Encoded(jpeg.to_vec());
    let rgb = crate::decode::decode(Some(&image), u64::MAX)
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let img = RgbImage::new(rgb.width, rgb.height, &rgb.data).context("decoded frame")?;
    let hands = fixed_hand_boxes(n);
    let crops = p.prepare_crops(img, &hands);
    Ok(p.estimate(&crops, &hands, rgb.width, rgb.height)?)
}

fn deviation(reference: &[HandEstimate], other: &[HandEstimate]) -> Deviation {
    let max_abs = |a: &[[f32; 3]], b: &[[f32; 3]]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let mut d = Deviation {
        keypoints_3d_max_abs_m: 0.0,
        vertices_max_abs_m: 0.0,
    };
    for (r, o) in reference.iter().zip(other) {
        d.keypoints_3d_max_abs_m = d
            .keypoints_3d_max_abs_m
            .max(max_abs(&r.keypoints_3d, &o.keypoints_3d));
        d.vertices_max_abs_m = d.vertices_max_abs_m.max(max_abs(&r.vertices, &o.vertices));
    }
    d
}

fn case_line(route: &str, dtype: &str, n: usize, stages: &BTreeMap<String, Percentiles>) -> String {
    let mut line = format!("{route} pose {dtype:<12} x{n}:");
    for s in stages_of(route) {
        let p = &stages[*s];
        line.push_str(&format!(" {s} {:.2}/{:.2}", p.p50_ms, p.p99_ms));
    }
    line + " (p50/p99 ms)"
}

/// The report as a markdown table (one row per case and stage).
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "{} | mlx {} | {} | {} runs after {} warm-up{}\n\n| route | pose dtype | compiled | per frame | stage | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|---|\n",
        r.device,
        r.mlx_version,
        r.image,
        r.runs,
        r.warmup,
        if r.synthetic_weights { " | SYNTHETIC weights" } else { "" }
    );
    for c in &r.cases {
        for s in stages_of(c.route) {
            let p = &c.stages[*s];
            out.push_str(&format!(
                "| {} | {} | {} | {} | {s} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                c.route,
                c.pose_dtype,
                if c.compiled { "yes" } else { "no" },
                c.img_size
                    .map_or(c.per_frame.to_string(), |s| format!("{s}² model")),
                p.p50_ms,
                p.p90_ms,
                p.p99_ms,
                p.max_ms
            ));
        }
    }
    let deviations: Vec<_> = r
        .cases
        .iter()
        .filter_map(|c| c.vs_f32.map(|d| (c, d)))
        .collect();
    if !deviations.is_empty() {
        out.push_str("\n| pose dtype | compiled | hands | keypoints 3-D max abs vs f32 (m) | vertices max abs vs f32 (m) |\n|---|---|---|---|---|\n");
        for (c, d) in deviations {
            out.push_str(&format!(
                "| {} | {} | {} | {:.2e} | {:.2e} |\n",
                c.pose_dtype,
                if c.compiled { "yes" } else { "no" },
                c.per_frame,
                d.keypoints_3d_max_abs_m,
                d.vertices_max_abs_m
            ));
        }
    }
    out
}

/// Runs the harness for `route` on the models in `dir` and writes `json`
/// if given.
pub fn run_dir(
    route: &str,
    dir: &Path,
    options: &BenchOptions,
    json: Option<&Path>,
) -> Result<Report> {
    if let Some(dir) = &options.cpu_profile {
        // Fail before minutes of loading, not after the first warm-up.
        crate::cpu_profile::ensure_available()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let report = match route {
        "hands" => run(
            &HandModelFiles::from_dir(dir).map_err(anyhow::Error::msg)?,
            options,
        )?,
        "body" => run_body(
            &BodyModelFiles::from_dir(dir).map_err(anyhow::Error::msg)?,
            options,
        )?,
        "matte" => {
            let size = options.matte_sizes.first().copied().unwrap_or(512);
            run_matte(
                &MatteModelFiles::from_dir(dir, size).map_err(anyhow::Error::msg)?,
                options,
            )?
        }
        other => anyhow::bail!("no latency harness for route {other:?} (hands, body, matte)"),
    };
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}
