//! The route latency harness (`posed bench`, `cargo bench --bench
//! route_latency`): a route stage by stage on a fixed pushed 640×480 JPEG,
//! for each pose dtype and hands (or people) per frame, warm-up then timed
//! runs, percentiles per stage and end to end, as a table and as JSON for
//! comparisons.
//!
//! Each frame runs the daemon's code, not a copy: the push decoder
//! (`decode`, with the matte hint), the route's own [`Route::run`] (its
//! stages, named in the route's module), the route's post-processing and
//! the protobuf encoding (`post`), a fan-out publish (`fanout`), and
//! `end_to_end`. On the hand and body routes the detector always runs and is
//! timed, but the pose batch is the given number of fixed boxes, so a batch
//! size does not depend on what random weights happen to detect. `model`
//! (hands) spans pose and mano: the WiLoR stage as its peers measure it.
//!
//! Matte: a 1920×1080 JPEG with a pushed PNG hint, per model size and
//! decoder dtype, with the foreground and composite encoded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use posed_models::body_pipeline::{BodyModelFiles, BodyPipeline};
use posed_models::hand_pipeline::{HandBox, HandEstimate, HandModelFiles, HandPipeline};
use posed_models::image::RgbImage;
use posed_models::matte_pipeline::{Hint, MatteModelFiles, MattePipeline};
use prost::Message;
use serde::Serialize;

use crate::config::{FallbackHint, HandsConfig, MatteConfig, MatteFit};
use crate::engine::{Frame, StreamId};
use crate::fanout::FanOut;
use crate::proto;
use crate::routes::body::{BodyRequest, BodyRoute};
use crate::routes::hands::{HandSettings, HandsRequest, HandsRoute};
use crate::routes::{stage, DetectRequest, PostOptions, Route, RouteId, RouteOutput, StageClock};
use crate::server::decode_push;
use crate::tracking::hands::TrackSettings;

pub struct BenchOptions {
    pub pose_dtypes: Vec<String>,
    /// Run WiLoR eager (false) and/or compiled (true).
    pub compile: Vec<bool>,
    /// Hands (hand route) or people (body route) per frame.
    pub per_frame: Vec<usize>,
    /// Hand route: detect every frame (false) and/or follow the hands on a
    /// stream (true).
    pub tracking: Vec<bool>,
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
    pub route: RouteId,
    pub pose_dtype: String,
    pub compiled: bool,
    /// Hand route: a stream whose hands are followed without the detector
    /// (it runs every `redetect_interval` frames; the `detect` stage's `n`
    /// says on how many).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tracking: bool,
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

/// Spans of consecutive stages, timed as one: `model` is the WiLoR model
/// stage as its peers measure it (network and final MANO, results on the
/// host), crops in.
pub const SPANS: [(&str, [&str; 2]); 1] = [("model", ["pose", "mano"])];

/// What the harness reports for `route`: the daemon's stages of it in
/// order (the route's own between decode and post), then spans and
/// `end_to_end`.
pub fn stages_of(route: RouteId) -> Vec<&'static str> {
    let own = route.kind().stages();
    let mut stages = vec![stage::DECODE];
    stages.extend_from_slice(own);
    stages.extend([stage::POST, stage::FANOUT]);
    for (span, parts) in SPANS {
        if parts.iter().all(|p| own.contains(p)) {
            stages.push(span);
        }
    }
    stages.push(stage::END_TO_END);
    stages
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

/// The matte heads' float type for a `--pose-dtypes` name.
fn matte_head(name: &str) -> Result<crate::config::FloatType> {
    use crate::config::FloatType;
    match dtype(name)? {
        None => Ok(FloatType::Float32),
        Some(mlx_rs::Dtype::Bfloat16) => Ok(FloatType::Bfloat16),
        Some(_) => anyhow::bail!("the matte heads run in f32 or bf16, not {name}"),
    }
}

pub fn run(files: &HandModelFiles, options: &BenchOptions) -> Result<Report> {
    let push = jpeg_push(test_jpeg());
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
            let settings = HandSettings {
                max_hands: 4,
                ..HandSettings::from_config(&HandsConfig::default())
            };
            // The bench's stream runs as fast as the route: a CPU frame
            // can take longer than the tracks' timeout, which must not end
            // them here.
            let tracks = TrackSettings {
                stale_after: std::time::Duration::from_secs(3600),
                ..TrackSettings::default()
            };
            let mut route = HandsRoute::new(pipeline, settings, tracks);
            let label = if compiled {
                format!("{name}+compile")
            } else {
                name.clone()
            };
            for (&n, &tracking) in options
                .per_frame
                .iter()
                .flat_map(|n| options.tracking.iter().map(move |t| (n, t)))
            {
                let label = if tracking {
                    format!("{label}+track")
                } else {
                    label.clone()
                };
                let case = format!("hands-{label}-x{n}");
                let boxes = fixed_hand_boxes(n);
                // One stream: with tracking, a frame whose hands were all
                // posed skips the detector (the fixed boxes stand in for
                // its answer when it runs).
                let stream = Some(StreamId::new());
                let stages = time_case(
                    &mut route,
                    &push,
                    &case,
                    options,
                    stream,
                    |r: &mut HandsRequest| {
                        r.boxes = DetectRequest {
                            boxes: Some(boxes.clone()),
                            time_detector: true,
                        };
                        r.overrides.tracking = Some(tracking);
                    },
                )?;
                let outputs = hand_outputs(&mut route, &push, n)?;
                let vs_f32 = match reference.get(&n).filter(|_| !tracking) {
                    Some(f32_outputs) => Some(deviation(f32_outputs, &outputs)),
                    None if name == "f32" && !tracking => {
                        reference.insert(n, outputs);
                        None
                    }
                    None => None,
                };
                let mut line = case_line(RouteId::Hands, &label, n, &stages);
                if tracking {
                    let frames = stages.get(stage::END_TO_END).map_or(0, |p| p.n);
                    let detected = stages.get(stage::DETECT).map_or(0, |p| p.n);
                    line.push_str(&format!(" | detector on {detected} of {frames} frames"));
                }
                if let Some(d) = vs_f32 {
                    line.push_str(&format!(
                        " | vs f32: keypoints {:.2e} m, vertices {:.2e} m",
                        d.keypoints_3d_max_abs_m, d.vertices_max_abs_m
                    ));
                }
                eprintln!("{line}");
                cases.push(CaseResult {
                    route: RouteId::Hands,
                    pose_dtype: name.clone(),
                    compiled,
                    tracking,
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

/// A push of `jpeg`, as a client sends it.
fn jpeg_push(jpeg: Vec<u8>) -> proto::PushImageRequest {
    proto::PushImageRequest {
        image: Some(proto::push_image_request::Image::Encoded(jpeg)),
        ..Default::default()
    }
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
    let push = jpeg_push(test_jpeg());
    let mut cases = Vec::new();
    let mut synthetic_weights = false;
    for name in &options.pose_dtypes {
        let mut files = files.clone();
        files.pose_config.demo.flip_test = options.flip_test;
        let (mut pipeline, synthetic) = BodyPipeline::load(&files, dtype(name)?)
            .with_context(|| format!("loading the body route ({name})"))?;
        pipeline.max_people = usize::MAX;
        synthetic_weights |= synthetic;
        let mut route = BodyRoute::new(pipeline);
        for &n in &options.per_frame {
            let label = if options.flip_test {
                format!("{name}+flip")
            } else {
                name.clone()
            };
            let case = format!("body-{label}-x{n}");
            let boxes = person_boxes(n);
            let stages = time_case(
                &mut route,
                &push,
                &case,
                options,
                None,
                |r: &mut BodyRequest| {
                    r.boxes = Some(boxes.clone());
                    r.time_detector = true;
                },
            )?;
            eprintln!("{}", case_line(RouteId::Body, &label, n, &stages));
            cases.push(CaseResult {
                route: RouteId::Body,
                pose_dtype: name.clone(),
                compiled: false,
                tracking: false,
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
    let push = proto::PushImageRequest {
        matte_hint: crate::decode::encode_png(&hint, w as usize, h as usize, 1),
        include_matte_images: true,
        ..jpeg_push(jpeg)
    };
    let mut cases = Vec::new();
    let mut synthetic_weights = false;
    for &size in &options.matte_sizes {
        for name in &options.pose_dtypes {
            let mut files = files.clone();
            files.config.img_size = size;
            let config = MatteConfig {
                img_size: size,
                head_dtype: matte_head(name)?,
                fit: MatteFit::Resize,
                refiner_tile: options.refiner_tile.unwrap_or(0),
                hint_from_previous: false,
                fallback_hint: FallbackHint::Chroma,
                ..MatteConfig::default()
            };
            let (mut route, synthetic) = crate::routes::matte::load(&files, &config)
                .with_context(|| format!("loading CorridorKey at {size} ({name})"))?;
            synthetic_weights |= synthetic;
            if options.profile {
                profile_matte(route.pipeline(), &push, &format!("{name} @{size}"))?;
            }
            posed_models::runtime::reset_peak_memory();
            let case = format!("matte-{name}-{size}");
            let stages = time_case(&mut route, &push, &case, options, None, |_| {})?;
            let mem = posed_models::runtime::memory_use();
            eprintln!(
                "matte {name} @{size}: MLX peak {:.2} GiB, cache {:.2} GiB",
                mem.peak as f64 / (1u64 << 30) as f64,
                mem.cache as f64 / (1u64 << 30) as f64
            );
            eprintln!(
                "{}",
                case_line(RouteId::Matte, &format!("{name} @{size}"), 1, &stages)
            );
            cases.push(CaseResult {
                route: RouteId::Matte,
                pose_dtype: name.clone(),
                compiled: false,
                tracking: false,
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
fn profile_matte(p: &MattePipeline, push: &proto::PushImageRequest, label: &str) -> Result<()> {
    let rgb = crate::decode::decode(push.image.as_ref(), &crate::decode::ImageLimits::NONE)
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

/// Runs `one` warm-up + timed times; `one` times its stages on the clock
/// it is given and returns when the frame started. Percentiles per stage,
/// span and end to end. With `options.cpu_profile`, the host is sampled
/// during the timed runs.
fn measure(
    stages: &[&'static str],
    case: &str,
    options: &BenchOptions,
    mut one: impl FnMut(u64, &mut StageClock) -> Result<Instant>,
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
        let mut clock = StageClock::default();
        let start = one(i as u64, &mut clock)?;
        let mut times = clock.into_timings();
        times.push((stage::END_TO_END, start.elapsed()));
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
                let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
                hist.get_mut(stage)
                    .with_context(|| format!("stage {stage:?} is not one of {stages:?}"))?
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

/// One case of `route`: each frame decoded as the daemon decodes a push,
/// run through the route's own `run` (with the push's request as `adjust`
/// leaves it), made into an event by the route's post-processing and
/// encoded, and published to a fan-out with one subscriber.
fn time_case<R: Route>(
    route: &mut R,
    push: &proto::PushImageRequest,
    case: &str,
    options: &BenchOptions,
    stream: Option<StreamId>,
    adjust: impl Fn(&mut R::Request),
) -> Result<BTreeMap<String, Percentiles>> {
    let mut post = R::ID.kind().post(&PostOptions::default());
    let fanout = FanOut::new(4);
    let _subscriber = fanout.subscribe();
    measure(&stages_of(R::ID), case, options, |i, clock| {
        let start = Instant::now();
        let (frame, mut request) = decoded_frame::<R>(push, i, start, stream)?;
        adjust(&mut request);
        clock.mark(stage::DECODE)?;
        let output = route.run(&frame, &request, None, clock)?;
        let output = RouteOutput::new::<R>(output, Vec::new());
        let event = post.event(&frame, &output, 0, Instant::now()).finish();
        std::hint::black_box(event.encode_to_vec());
        clock.mark(stage::POST)?;
        fanout.publish(event, 0);
        clock.mark(stage::FANOUT)?;
        Ok(start)
    })
}

/// `push` decoded into a frame and route `R`'s request, as the daemon does.
fn decoded_frame<R: Route>(
    push: &proto::PushImageRequest,
    id: u64,
    received: Instant,
    stream: Option<StreamId>,
) -> Result<(Arc<Frame>, R::Request)> {
    let (rgb, mut requests) = decode_push(
        push,
        &crate::decode::ImageLimits::NONE,
        &crate::routes::RequestLimits::NONE,
        &[R::ID],
    )
    .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let request = requests
        .pop()
        .and_then(|r| r.into_inner::<R>())
        .context("the route's request")?;
    let frame = Arc::new(Frame {
        id,
        source_id: "bench".into(),
        client_frame_id: 0,
        captured: std::time::SystemTime::now(),
        received,
        stream,
        width: rgb.width,
        height: rgb.height,
        rgb: rgb.data,
        intrinsics: None,
    });
    Ok((frame, request))
}

/// The hands of one frame with `n` fixed boxes, untimed.
fn hand_outputs(
    route: &mut HandsRoute,
    push: &proto::PushImageRequest,
    n: usize,
) -> Result<Vec<HandEstimate>> {
    let (frame, _) = decoded_frame::<HandsRoute>(push, 0, Instant::now(), None)?;
    let request = HandsRequest::with_boxes(fixed_hand_boxes(n));
    let out = route.run(&frame, &request, None, &mut StageClock::default())?;
    Ok(out.hands.into_iter().filter_map(|h| h.pose).collect())
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

fn case_line(
    route: RouteId,
    dtype: &str,
    n: usize,
    stages: &BTreeMap<String, Percentiles>,
) -> String {
    let mut line = format!("{route} pose {dtype:<12} x{n}:");
    for s in stages_of(route) {
        let p = &stages[s];
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
            let p = &c.stages[s];
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
    route: RouteId,
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
        RouteId::Hands => run(
            &HandModelFiles::from_dir(dir).map_err(anyhow::Error::msg)?,
            options,
        )?,
        RouteId::Body => run_body(
            &BodyModelFiles::from_dir(dir).map_err(anyhow::Error::msg)?,
            options,
        )?,
        RouteId::Matte => {
            let size = options.matte_sizes.first().copied().unwrap_or(512);
            run_matte(
                &MatteModelFiles::from_dir(dir, size).map_err(anyhow::Error::msg)?,
                options,
            )?
        }
    };
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}
