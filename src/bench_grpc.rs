//! `posed bench-grpc`: the hand route end to end through a running daemon.
//! A client pushes the harness's 640×480 JPEG over gRPC (`PushImage`, no
//! wait) and a subscriber on another stream times each frame from the push
//! to its event. Everything the daemon does is inside the time: the RPC,
//! decode on the server's runtime, the MLX thread's stages, post and
//! fan-out to the subscriber.
//!
//! Each case keeps `in_flight` frames outstanding. With one, a frame is
//! pushed only after the previous frame's event: the latency of an idle
//! daemon. With two, the next frame is decoded while the MLX thread works on
//! the current one, which is how a camera feeds the daemon; frames per
//! second then is the sustained rate. More than two in flight make the
//! latest-wins gate replace waiting frames: those are counted as lost, not
//! timed.
//!
//! `hands` > 0 sends that many fixed hand boxes with each frame (the
//! detector is skipped, so the pose batch is fixed); 0 lets the detector run
//! and the event says how many hands it found.
//!
//! `tracking` cases push one `PushStream` instead (one frame in flight; the
//! events come back on it) without boxes: the daemon's detector keeps the
//! `hands` strongest, and with tracking on a frame whose hands were all
//! posed skips the detector (each event says whether it ran).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::bench::Percentiles;
use crate::client::{self, Target};
use crate::proto::pose_service_client::PoseServiceClient;
use crate::proto::{self, push_image_request::Image};

pub struct GrpcBenchOptions {
    /// Client hand boxes per frame; 0 = the daemon's detector decides.
    pub hands: Vec<usize>,
    /// Frames outstanding at once.
    pub in_flight: Vec<usize>,
    /// PushStream cases, tracking off and/or on, for every `hands` > 0.
    pub tracking: Vec<bool>,
    pub warmup: usize,
    pub runs: usize,
    /// How long to wait for the daemon to serve before giving up.
    pub ready_timeout: Duration,
}

#[derive(Debug, Serialize)]
pub struct GrpcCase {
    /// Client boxes per frame (0: detector); in a tracking case, the most
    /// hands the detector keeps.
    pub hand_boxes: usize,
    /// A PushStream case: hand tracking off or on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking: Option<bool>,
    /// A PushStream case: timed frames the detector ran on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detector_frames: Option<usize>,
    pub in_flight: usize,
    /// Frames whose event arrived (timed).
    pub frames: usize,
    /// Frames replaced at the gate by newer ones (no event of their own).
    pub lost: usize,
    /// Hands in the timed events: fewest and most.
    pub hands_min: usize,
    pub hands_max: usize,
    /// Push → event at the subscriber.
    pub latency: Percentiles,
    /// Timed events per second of wall time.
    pub frames_per_s: f64,
    /// p50 of the stage timings the timed events carry, and `in_daemon`:
    /// from the push's capture time to the event's emit time.
    pub event_stages_p50_ms: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct GrpcReport {
    pub harness: &'static str,
    pub posed_version: &'static str,
    pub target: String,
    pub daemon_device: String,
    pub daemon_mlx: String,
    pub synthetic_weights: bool,
    pub image: &'static str,
    pub warmup: usize,
    pub runs: usize,
    pub cases: Vec<GrpcCase>,
    /// The daemon's own stage percentiles after the run (`GetTelemetry`).
    pub daemon_stages: BTreeMap<String, Percentiles>,
}

pub async fn run(target: &Target, options: &GrpcBenchOptions) -> Result<GrpcReport> {
    let deadline = Instant::now() + options.ready_timeout;
    // A daemon started just before this command may not listen yet.
    let channel = loop {
        match client::channel(target).await {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut client = PoseServiceClient::new(channel.clone());
    let status = wait_until_serving(&mut client, HealthClient::new(channel), deadline).await?;
    let jpeg = crate::bench::test_jpeg();
    let mut cases = Vec::new();
    for &hands in &options.hands {
        for &in_flight in &options.in_flight {
            if in_flight == 0 {
                bail!("--in-flight must be at least 1");
            }
            let case = run_case(&mut client, &jpeg, hands, in_flight, options)
                .await
                .with_context(|| format!("{hands} hand boxes, {in_flight} in flight"))?;
            eprintln!("{}", case_line(&case));
            cases.push(case);
        }
    }
    for &hands in options.hands.iter().filter(|&&h| h > 0) {
        for &tracking in &options.tracking {
            let case = run_stream_case(&mut client, &jpeg, hands, tracking, options)
                .await
                .with_context(|| format!("{hands} hands, tracking {tracking}"))?;
            eprintln!("{}", case_line(&case));
            cases.push(case);
        }
    }
    let telemetry = client
        .get_telemetry(proto::GetTelemetryRequest::default())
        .await
        .map_err(|s| anyhow::anyhow!("GetTelemetry: {}", s.message()))?
        .into_inner();
    let ms = |ns: u64| ns as f64 / 1e6;
    let daemon_stages = telemetry
        .stages
        .into_iter()
        .filter(|s| s.name.starts_with("hands."))
        .map(|s| {
            (
                s.name,
                Percentiles {
                    n: s.count,
                    p50_ms: ms(s.p50_ns),
                    p90_ms: ms(s.p90_ns),
                    p99_ms: ms(s.p99_ns),
                    max_ms: ms(s.max_ns),
                },
            )
        })
        .collect();
    Ok(GrpcReport {
        harness: "posed bench-grpc",
        posed_version: env!("CARGO_PKG_VERSION"),
        target: match target {
            Target::Tcp(a) => a.clone(),
            Target::Unix(p) => format!("unix:{}", p.display()),
        },
        daemon_device: status.device,
        daemon_mlx: status.mlx_version,
        synthetic_weights: status.synthetic_weights,
        image: "640x480 JPEG",
        warmup: options.warmup,
        runs: options.runs,
        cases,
        daemon_stages,
    })
}

/// Waits for the pose service's health to be `SERVING`; a model that
/// failed to load (in `GetStatus`) ends the wait.
async fn wait_until_serving(
    client: &mut PoseServiceClient<Channel>,
    mut health: HealthClient<Channel>,
    deadline: Instant,
) -> Result<proto::Status> {
    loop {
        let status = client
            .get_status(proto::GetStatusRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("GetStatus: {}", s.message()))?
            .into_inner();
        if let Some(m) = status.models.iter().find(|m| !m.error.is_empty()) {
            bail!("the daemon cannot serve: {}", m.error);
        }
        let serving = health
            .check(HealthCheckRequest {
                service: crate::server::SERVICE_NAME.into(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
        if serving {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("the daemon was not serving in time (--ready-timeout)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_case(
    client: &mut PoseServiceClient<Channel>,
    jpeg: &[u8],
    hands: usize,
    in_flight: usize,
    options: &GrpcBenchOptions,
) -> Result<GrpcCase> {
    // A source id per case keeps other clients' events (and earlier cases'
    // stragglers) out of this subscriber's stream.
    let source = format!("bench-grpc-{hands}x{in_flight}-{}", std::process::id());
    let mut events = client
        .subscribe(proto::SubscribeRequest {
            routes: vec![proto::Route::Hands as i32],
            source_ids: vec![source.clone()],
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("Subscribe: {}", s.message()))?
        .into_inner();
    let boxes = hand_boxes(hands);
    let total = options.warmup + options.runs;
    let new_hist = || Histogram::<u64>::new(3).expect("3 significant figures");
    let mut hist = new_hist();
    let mut stage_hists: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::new();
    let (mut next, mut lost) = (1u64, 0usize);
    let (mut hands_min, mut hands_max) = (usize::MAX, 0usize);
    let mut timed_from: Option<Instant> = None;
    let mut last_event = Instant::now();
    while next <= total as u64 || !outstanding.is_empty() {
        while outstanding.len() < in_flight && next <= total as u64 {
            if next == options.warmup as u64 + 1 {
                timed_from = Some(Instant::now());
            }
            let sent = Instant::now();
            client
                .push_image(proto::PushImageRequest {
                    image: Some(Image::Encoded(jpeg.to_vec())),
                    routes: vec![proto::Route::Hands as i32],
                    hand_boxes: boxes.clone(),
                    client_frame_id: next,
                    capture_unix_ns: crate::events::unix_ns(SystemTime::now()),
                    source_id: source.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|s| anyhow::anyhow!("PushImage: {}", s.message()))?;
            outstanding.push_back((next, sent));
            next += 1;
        }
        let event = match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Err(_) => bail!("no event within 30 s"),
            Ok(None) => bail!("the daemon ended the subscription"),
            Ok(Some(e)) => e.map_err(|s| anyhow::anyhow!("Subscribe: {}", s.message()))?,
        };
        let arrived = Instant::now();
        let found = match &event.payload {
            Some(proto::event::Payload::Hands(h)) => h.hands.len(),
            Some(proto::event::Payload::Error(e)) => bail!("the route failed: {}", e.message),
            _ => continue,
        };
        // Frames older than this one were replaced at the gate.
        while let Some(&(id, sent)) = outstanding.front() {
            if id > event.client_frame_id {
                break;
            }
            outstanding.pop_front();
            let timed = id > options.warmup as u64;
            if id < event.client_frame_id {
                lost += usize::from(timed);
                continue;
            }
            if timed {
                let ns = (arrived - sent).as_nanos() as u64;
                hist.record(ns.max(1)).expect("auto-resizing histogram");
                let in_daemon = event.emit_unix_ns.saturating_sub(event.capture_unix_ns);
                let stages = event
                    .timings
                    .iter()
                    .map(|t| (t.stage.as_str(), t.duration_ns))
                    .chain([("in_daemon", in_daemon.max(0) as u64)]);
                for (stage, ns) in stages {
                    stage_hists
                        .entry(stage.to_owned())
                        .or_insert_with(new_hist)
                        .record(ns.max(1))
                        .expect("auto-resizing histogram");
                }
                hands_min = hands_min.min(found);
                hands_max = hands_max.max(found);
                last_event = arrived;
            }
        }
    }
    let frames = hist.len() as usize;
    let wall = timed_from.map_or(Duration::ZERO, |t| last_event.saturating_duration_since(t));
    Ok(GrpcCase {
        hand_boxes: hands,
        tracking: None,
        detector_frames: None,
        in_flight,
        frames,
        lost,
        hands_min: if frames == 0 { 0 } else { hands_min },
        hands_max,
        latency: Percentiles::of(&hist),
        event_stages_p50_ms: stage_hists
            .into_iter()
            .map(|(stage, h)| (stage, Percentiles::of(&h).p50_ms))
            .collect(),
        frames_per_s: if wall.is_zero() {
            0.0
        } else {
            frames as f64 / wall.as_secs_f64()
        },
    })
}

/// One PushStream of `warmup + runs` frames without boxes, one in flight:
/// push → its event on the stream.
async fn run_stream_case(
    client: &mut PoseServiceClient<Channel>,
    jpeg: &[u8],
    hands: usize,
    tracking: bool,
    options: &GrpcBenchOptions,
) -> Result<GrpcCase> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut events = client
        .push_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("PushStream: {}", s.message()))?
        .into_inner();
    let new_hist = || Histogram::<u64>::new(3).expect("3 significant figures");
    let mut hist = new_hist();
    let mut stage_hists: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let (mut hands_min, mut hands_max, mut detector_frames) = (usize::MAX, 0usize, 0usize);
    let max_hands = u32::try_from(hands).context("--hands")?;
    let mut timed_from = Instant::now();
    let mut last_event = Instant::now();
    for id in 1..=(options.warmup + options.runs) as u64 {
        let timed = id > options.warmup as u64;
        if id == options.warmup as u64 + 1 {
            timed_from = Instant::now();
        }
        let sent = Instant::now();
        tx.send(proto::PushImageRequest {
            image: Some(Image::Encoded(jpeg.to_vec())),
            routes: vec![proto::Route::Hands as i32],
            client_frame_id: id,
            capture_unix_ns: crate::events::unix_ns(SystemTime::now()),
            source_id: format!("bench-grpc-stream-{}", std::process::id()),
            hand_options: Some(proto::HandOptions {
                max_hands: Some(max_hands),
                tracking: Some(tracking),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .context("the daemon closed the PushStream")?;
        let event = match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Err(_) => bail!("no event within 30 s"),
            Ok(None) => bail!("the daemon ended the PushStream"),
            Ok(Some(e)) => e.map_err(|s| anyhow::anyhow!("PushStream: {}", s.message()))?,
        };
        let arrived = Instant::now();
        let h = match &event.payload {
            Some(proto::event::Payload::Hands(h)) => h,
            Some(proto::event::Payload::Error(e)) => bail!("the route failed: {}", e.message),
            other => bail!("frame {id}: unexpected answer {other:?}"),
        };
        if !timed {
            continue;
        }
        let ns = u64::try_from((arrived - sent).as_nanos()).unwrap_or(u64::MAX);
        hist.record(ns.max(1)).expect("auto-resizing histogram");
        for t in &event.timings {
            stage_hists
                .entry(t.stage.clone())
                .or_insert_with(new_hist)
                .record(t.duration_ns.max(1))
                .expect("auto-resizing histogram");
        }
        detector_frames += usize::from(h.detector_ran);
        hands_min = hands_min.min(h.hands.len());
        hands_max = hands_max.max(h.hands.len());
        last_event = arrived;
    }
    drop(tx);
    let frames = hist.len() as usize;
    let wall = last_event.saturating_duration_since(timed_from);
    Ok(GrpcCase {
        hand_boxes: hands,
        tracking: Some(tracking),
        detector_frames: Some(detector_frames),
        in_flight: 1,
        frames,
        lost: 0,
        hands_min: if frames == 0 { 0 } else { hands_min },
        hands_max,
        latency: Percentiles::of(&hist),
        event_stages_p50_ms: stage_hists
            .into_iter()
            .map(|(stage, h)| (stage, Percentiles::of(&h).p50_ms))
            .collect(),
        frames_per_s: if wall.is_zero() {
            0.0
        } else {
            frames as f64 / wall.as_secs_f64()
        },
    })
}

/// The harness's fixed boxes (`bench::boxes`), as a client sends them.
fn hand_boxes(n: usize) -> Vec<proto::HandBox> {
    crate::bench::fixed_hand_boxes(n)
        .into_iter()
        .map(|b| proto::HandBox {
            r#box: Some(proto::Box2D {
                x1: b.bbox[0],
                y1: b.bbox[1],
                x2: b.bbox[2],
                y2: b.bbox[3],
            }),
            side: if b.is_right {
                proto::HandSide::Right as i32
            } else {
                proto::HandSide::Left as i32
            },
        })
        .collect()
}

fn case_line(c: &GrpcCase) -> String {
    format!(
        "grpc {} x{} in flight: {} frames, {} lost, push->event p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms, {:.1} frames/s",
        case_label(c),
        c.in_flight,
        c.frames,
        c.lost,
        c.latency.p50_ms,
        c.latency.p90_ms,
        c.latency.p99_ms,
        c.latency.max_ms,
        c.frames_per_s
    )
}

fn case_label(c: &GrpcCase) -> String {
    match (c.tracking, c.detector_frames) {
        (Some(t), Some(d)) => format!(
            "stream, ≤{} hands, tracking {} (detector on {d} of {} frames)",
            c.hand_boxes,
            if t { "on" } else { "off" },
            c.frames
        ),
        _ if c.hand_boxes == 0 => "detector".into(),
        _ => format!("{} hand boxes", c.hand_boxes),
    }
}

/// The report as markdown: the cases, then the daemon's stages.
pub fn table(r: &GrpcReport) -> String {
    let mut out = format!(
        "posed bench-grpc | daemon on {} | mlx {} | {} | {} timed frames after {} warm-up{}\n\n\
         | hands | in flight | frames | lost | hands per event | p50 ms | p90 ms | p99 ms | max ms | frames/s |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        r.daemon_device,
        r.daemon_mlx,
        r.image,
        r.runs,
        r.warmup,
        if r.synthetic_weights {
            " | SYNTHETIC weights"
        } else {
            ""
        }
    );
    for c in &r.cases {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {}–{} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} |\n",
            case_label(c),
            c.in_flight,
            c.frames,
            c.lost,
            c.hands_min,
            c.hands_max,
            c.latency.p50_ms,
            c.latency.p90_ms,
            c.latency.p99_ms,
            c.latency.max_ms,
            c.frames_per_s
        ));
    }
    out.push_str(
        "\n| hands | in flight | p50 ms of the stages the events carry |\n|---|---|---|\n",
    );
    for c in &r.cases {
        let stages: Vec<String> = c
            .event_stages_p50_ms
            .iter()
            .map(|(s, ms)| format!("{s} {ms:.2}"))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            case_label(c),
            c.in_flight,
            stages.join(", ")
        ));
    }
    out.push_str("\n| daemon stage (all cases) | count | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n");
    for (name, p) in &r.daemon_stages {
        out.push_str(&format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            p.n, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
        ));
    }
    out
}
