//! The gRPC server: `posed.v1.PoseService`, `grpc.health.v1` and server
//! reflection, on loopback TCP and/or a Unix socket.
//!
//! Shape (after mini-redis): [`run`] owns the listeners and the shutdown
//! signal; [`PoseServer`] handles requests against [`Shared`] state; one
//! post-processing task turns the MLX thread's results into events and hands
//! them to the fan-out and to waiting pushers. Shutdown is one `watch`
//! flag that every stream task listens to, so streams end cleanly before
//! tonic stops accepting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;

use crate::decode;
use crate::engine::{
    route_name, Engine, EngineError, EngineOutput, Frame, FrameJob, Readiness, RouteResult,
};
use crate::fanout::FanOut;
use crate::post::{self, BoxTracker, HandTracker, MatteEncoding};
use crate::proto::{self, pose_service_server::PoseServiceServer};
use crate::recording::Recorder;
use crate::smoothing::{OneEuroParams, Smoother};
use crate::sources::{self, FrameSubmitter, ReplayConfig, SourceState};
use crate::telemetry::{self, Telemetry};
use posed_models::hand_pipeline::HandBox;

/// The gRPC service name health reports for the whole daemon.
pub const SERVICE_NAME: &str = "posed.v1.PoseService";
/// Per-route health service names.
pub const HANDS_HEALTH_NAME: &str = "posed.v1.PoseService/hands";
pub const BODY_HEALTH_NAME: &str = "posed.v1.PoseService/body";
pub const MATTE_HEALTH_NAME: &str = "posed.v1.PoseService/matte";

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub max_pixels: u64,
    /// Swap left/right so they are the user's (selfie cameras).
    pub mirror: bool,
    /// How far a subscriber may fall behind before it loses events.
    pub subscriber_queue: usize,
    /// Pushes with `wait` that may queue at the MLX thread.
    pub max_waiting: usize,
    /// Hard limit for a clean shutdown after the signal.
    pub shutdown_deadline: Duration,
    /// One Euro parameters, and whether subscribers that do not ask get it.
    pub smoothing: OneEuroParams,
    pub smoothing_by_default: bool,
    /// Record pushed and camera frames to this folder.
    pub record_dir: Option<PathBuf>,
    /// How matte events carry their images.
    pub matte_encoding: MatteEncoding,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_pixels: decode::DEFAULT_MAX_PIXELS,
            mirror: false,
            subscriber_queue: 64,
            max_waiting: 8,
            shutdown_deadline: Duration::from_millis(1500),
            smoothing: OneEuroParams::default(),
            smoothing_by_default: false,
            record_dir: None,
            matte_encoding: MatteEncoding::Png,
        }
    }
}

/// Facts for `GetStatus` that the server does not compute itself.
#[derive(Debug, Clone)]
pub struct StaticStatus {
    pub device: String,
    pub mlx_version: String,
    /// The routes this daemon runs (pushes may name only these).
    pub routes: Vec<proto::Route>,
    /// Filled by the loader once it has found the model files.
    pub models: Arc<std::sync::Mutex<Vec<proto::ModelStatus>>>,
    /// Set once the loader has looked at the weight files' metadata.
    pub synthetic_weights: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for StaticStatus {
    fn default() -> Self {
        StaticStatus {
            device: String::new(),
            mlx_version: String::new(),
            routes: vec![proto::Route::Hands],
            models: Default::default(),
            synthetic_weights: Default::default(),
        }
    }
}

pub struct Shared {
    engine: Arc<Engine>,
    fanout: FanOut<proto::Event>,
    telemetry: Arc<Telemetry>,
    next_frame_id: Arc<AtomicU64>,
    sources: Vec<Arc<SourceState>>,
    recorder: Option<Recorder>,
    options: ServeOptions,
    status: StaticStatus,
    shutdown: watch::Receiver<bool>,
    pushed: AtomicU64,
    /// Subscribers that asked for matte images: post-processing encodes
    /// them only while there is one (or a waiting push asks).
    matte_image_subscribers: Arc<AtomicUsize>,
}

#[derive(Clone)]
pub struct PoseServer {
    shared: Arc<Shared>,
}

/// A source of frames that runs inside the daemon.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    Replay {
        id: String,
        config: ReplayConfig,
    },
    #[cfg(feature = "camera")]
    Camera {
        id: String,
        config: crate::sources::camera::CameraConfig,
    },
}

/// Where to listen. Either or both.
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub uds: Option<(UnixListener, PathBuf)>,
}

/// What the server serves: the MLX thread, the channel its results come
/// out of, the telemetry it records into and the facts it reports.
pub struct Backend {
    pub engine: Engine,
    pub results: mpsc::UnboundedReceiver<EngineOutput>,
    pub telemetry: Arc<Telemetry>,
    pub status: StaticStatus,
}

/// Serves until `shutdown` resolves, then ends every stream and returns
/// within `options.shutdown_deadline`.
pub async fn run(
    listeners: Listeners,
    backend: Backend,
    sources: Vec<SourceSpec>,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let Backend {
        engine,
        results: engine_output,
        telemetry,
        status,
    } = backend;
    let (stop_tx, stop_rx) = watch::channel(false);
    let fanout = FanOut::new(options.subscriber_queue);
    let readiness = engine.readiness();
    let engine = Arc::new(engine);
    let next_frame_id = Arc::new(AtomicU64::new(1));
    let recorder = match &options.record_dir {
        Some(dir) => Some(
            Recorder::start(dir)
                .map_err(|e| anyhow::anyhow!("cannot record to {}: {e}", dir.display()))?,
        ),
        None => None,
    };
    let submitter = FrameSubmitter {
        engine: engine.clone(),
        next_id: next_frame_id.clone(),
        recorder: recorder.clone(),
    };
    let source_states = start_sources(sources, &submitter, &stop_rx, options.max_pixels);
    let matte_image_subscribers = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Shared {
        engine,
        fanout: fanout.clone(),
        telemetry: telemetry.clone(),
        next_frame_id,
        sources: source_states,
        recorder,
        options: options.clone(),
        status,
        shutdown: stop_rx.clone(),
        pushed: AtomicU64::new(0),
        matte_image_subscribers: matte_image_subscribers.clone(),
    });
    let post = tokio::spawn(post_loop(
        engine_output,
        fanout,
        telemetry,
        PostOptions {
            mirror: options.mirror,
            matte_encoding: options.matte_encoding,
            matte_image_subscribers,
        },
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    let route_health: Vec<&'static str> = shared
        .status
        .routes
        .iter()
        .filter_map(|r| match r {
            proto::Route::Hands => Some(HANDS_HEALTH_NAME),
            proto::Route::Body => Some(BODY_HEALTH_NAME),
            proto::Route::Matte => Some(MATTE_HEALTH_NAME),
            proto::Route::Unspecified => None,
        })
        .collect();
    for name in &route_health {
        health
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
    tokio::spawn(follow_readiness(readiness, health, route_health));

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = PoseServiceServer::new(PoseServer {
        shared: shared.clone(),
    });
    let router = || {
        tonic::transport::Server::builder()
            .add_service(health_service.clone())
            .add_service(reflection.clone())
            .add_service(service.clone())
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut servers = Vec::new();
    if let Some(tcp) = listeners.tcp {
        tracing::info!("listening on {}", tcp.local_addr()?);
        servers.push(tokio::spawn(router().serve_with_incoming_shutdown(
            nodelay_incoming(tcp),
            stopped(stop_rx.clone()),
        )));
    }
    let mut socket_path = None;
    if let Some((uds, path)) = listeners.uds {
        tracing::info!("listening on unix:{}", path.display());
        socket_path = Some(path);
        servers.push(tokio::spawn(router().serve_with_incoming_shutdown(
            UnixListenerStream::new(uds),
            stopped(stop_rx.clone()),
        )));
    }
    anyhow::ensure!(!servers.is_empty(), "nothing to listen on");

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let deadline = options.shutdown_deadline;
    let drained = tokio::time::timeout(deadline, async {
        for s in servers {
            let _ = s.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("streams did not end within {deadline:?}; closing anyway");
    }
    post.abort();
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn start_sources(
    specs: Vec<SourceSpec>,
    submitter: &FrameSubmitter,
    shutdown: &watch::Receiver<bool>,
    max_pixels: u64,
) -> Vec<Arc<SourceState>> {
    specs
        .into_iter()
        .map(|spec| match spec {
            SourceSpec::Replay { id, config } => {
                let state = SourceState::new(id, "replay");
                tokio::spawn(sources::run_replay(
                    config,
                    state.clone(),
                    submitter.clone(),
                    shutdown.clone(),
                    max_pixels,
                ));
                state
            }
            #[cfg(feature = "camera")]
            SourceSpec::Camera { id, config } => {
                let state = SourceState::new(id, "camera");
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let mut signal = shutdown.clone();
                let flag = stop.clone();
                tokio::spawn(async move {
                    let _ = signal.wait_for(|s| *s).await;
                    flag.store(true, Ordering::Relaxed);
                });
                let (s, sub) = (state.clone(), submitter.clone());
                std::thread::Builder::new()
                    .name("posed-camera".into())
                    .spawn(move || sources::camera::run(config, s, sub, stop))
                    .expect("spawning the camera thread");
                state
            }
        })
        .collect()
}

/// Health follows the MLX thread: NOT_SERVING until the models are warm,
/// and while the last frame failed.
async fn follow_readiness(
    mut readiness: watch::Receiver<Readiness>,
    health: tonic_health::server::HealthReporter,
    routes: Vec<&'static str>,
) {
    loop {
        let status = match &*readiness.borrow_and_update() {
            Readiness::Serving => ServingStatus::Serving,
            _ => ServingStatus::NotServing,
        };
        health.set_service_status(SERVICE_NAME, status).await;
        for name in &routes {
            health.set_service_status(*name, status).await;
        }
        if readiness.changed().await.is_err() {
            return;
        }
    }
}

struct PostOptions {
    mirror: bool,
    matte_encoding: MatteEncoding,
    matte_image_subscribers: Arc<AtomicUsize>,
}

/// Results → events: track ids, telemetry, fan-out, and the answer to a
/// waiting push. Runs as one task, so tracking state needs no lock.
async fn post_loop(
    mut results: mpsc::UnboundedReceiver<EngineOutput>,
    fanout: FanOut<proto::Event>,
    telemetry: Arc<Telemetry>,
    options: PostOptions,
) {
    let mirror = options.mirror;
    let mut hand_tracker = HandTracker::default();
    let mut body_tracker = BoxTracker::default();
    while let Some(out) = results.recv().await {
        let mut events = Vec::with_capacity(out.results.len());
        let mut first_error = None;
        for (route, result) in &out.results {
            let name = route_name(*route);
            let t = Instant::now();
            let (event, timings, dropped) = match result {
                Ok(RouteResult::Hands(r)) => {
                    let ids = hand_tracker.assign(&r.frame.source_id, &r.hands);
                    let e = post::hands_event(r, &ids, mirror, t.elapsed());
                    (e, r.timings.as_slice(), r.dropped_before)
                }
                Ok(RouteResult::Body(r)) => {
                    let boxes: Vec<([f32; 4], bool)> =
                        r.people.iter().map(|p| (p.bbox, false)).collect();
                    let ids = body_tracker.assign(&r.frame.source_id, &boxes);
                    let e = post::body_event(r, &ids, t.elapsed());
                    (e, r.timings.as_slice(), r.dropped_before)
                }
                Ok(RouteResult::Matte(r)) => {
                    let with_images = out.matte_images
                        || options.matte_image_subscribers.load(Ordering::Relaxed) > 0;
                    let (result, encoding) = (r.clone(), options.matte_encoding);
                    // PNG encoding takes milliseconds: keep it off the
                    // async workers (events stay in order: this task waits).
                    let e = tokio::task::spawn_blocking(move || {
                        post::matte_event(&result, encoding, with_images)
                    })
                    .await
                    .unwrap_or_else(|panic| {
                        let message = format!("encoding the matte failed: {panic}");
                        error_event(
                            &out.frame,
                            *route,
                            &EngineError::Route {
                                route: "matte",
                                frame: out.frame.id,
                                message,
                            },
                        )
                    });
                    (e, r.timings.as_slice(), r.dropped_before)
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.clone());
                    (error_event(&out.frame, *route, e), &[][..], 0)
                }
            };
            for (stage, d) in timings {
                telemetry.record(&format!("{name}.{stage}"), *d);
            }
            if result.is_ok() {
                telemetry.record(&format!("{name}.post"), t.elapsed());
            }
            if dropped > 0 {
                telemetry.record_dropped(&format!("{name}.gate"), dropped);
            }
            let t = Instant::now();
            fanout.publish(event.clone());
            telemetry.record(&format!("{name}.fanout"), t.elapsed());
            telemetry.record(&format!("{name}.end_to_end"), out.frame.received.elapsed());
            events.push(event);
        }
        if let Some(reply) = out.reply {
            // A waiting push fails only when none of its routes succeeded.
            let answer = match first_error {
                Some(e) if events.iter().all(is_error) => Err(e),
                _ => Ok(events),
            };
            let _ = reply.send(answer);
        }
    }
}

fn is_error(e: &proto::Event) -> bool {
    matches!(e.payload, Some(proto::event::Payload::Error(_)))
}

fn error_event(frame: &Frame, route: proto::Route, e: &EngineError) -> proto::Event {
    let status = engine_status(e);
    proto::Event {
        frame_id: frame.id,
        source_id: frame.source_id.clone(),
        client_frame_id: frame.client_frame_id,
        route: route as i32,
        capture_unix_ns: post::unix_ns(frame.captured),
        emit_unix_ns: post::unix_ns(SystemTime::now()),
        image_width: frame.width as u32,
        image_height: frame.height as u32,
        payload: Some(proto::event::Payload::Error(proto::EventError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        })),
        ..Default::default()
    }
}

fn engine_status(e: &EngineError) -> Status {
    match e {
        EngineError::Busy(_) => Status::resource_exhausted(e.to_string()),
        EngineError::Stopped | EngineError::Load(_) => Status::unavailable(e.to_string()),
        EngineError::Route { .. } => Status::internal(e.to_string()),
        EngineError::NotEnabled(_) => Status::failed_precondition(e.to_string()),
    }
}

impl PoseServer {
    /// Checks the request, decodes its image (off the async workers) and
    /// makes the frame job.
    async fn frame_job(
        &self,
        req: proto::PushImageRequest,
        stream: bool,
        reply: Option<crate::engine::Reply>,
    ) -> Result<FrameJob, Status> {
        let mut routes = Vec::with_capacity(req.routes.len());
        for &r in &req.routes {
            match proto::Route::try_from(r) {
                Ok(proto::Route::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(format!("unknown route {r}")))
                }
                Ok(route) if !self.shared.status.routes.contains(&route) => {
                    return Err(Status::failed_precondition(format!(
                        "route {} is not enabled on this daemon",
                        route.as_str_name()
                    )))
                }
                Ok(route) if !routes.contains(&route) => routes.push(route),
                Ok(_) => {}
            }
        }
        let received = Instant::now();
        let max_pixels = self.shared.options.max_pixels;
        let image = req.image;
        let hint = req.matte_hint;
        let (rgb, matte_hint) = tokio::task::spawn_blocking(move || {
            let rgb = decode::decode(image.as_ref(), max_pixels)?;
            let hint = if hint.is_empty() {
                None
            } else {
                Some(decode::decode_hint(&hint, rgb.width, rgb.height)?)
            };
            Ok::<_, Status>((rgb, hint))
        })
        .await
        .map_err(|e| Status::internal(format!("decoder failed: {e}")))??;
        self.shared
            .telemetry
            .record("push.decode", received.elapsed());
        let hand_boxes = if req.hand_boxes.is_empty() {
            None
        } else {
            Some(hand_boxes(&req.hand_boxes, rgb.width, rgb.height)?)
        };
        let person_boxes = if req.person_boxes.is_empty() {
            None
        } else {
            Some(person_boxes(&req.person_boxes, rgb.width, rgb.height)?)
        };
        let id = self.shared.next_frame_id.fetch_add(1, Ordering::Relaxed);
        let captured = if req.capture_unix_ns > 0 {
            SystemTime::UNIX_EPOCH + Duration::from_nanos(req.capture_unix_ns as u64)
        } else {
            SystemTime::now()
        };
        self.shared.pushed.fetch_add(1, Ordering::Relaxed);
        let frame = Arc::new(Frame {
            id,
            source_id: if req.source_id.is_empty() {
                "push".into()
            } else {
                req.source_id
            },
            client_frame_id: req.client_frame_id,
            captured,
            received,
            width: rgb.width,
            height: rgb.height,
            rgb: rgb.data,
        });
        if let Some(r) = &self.shared.recorder {
            r.record(&frame);
        }
        Ok(FrameJob {
            frame,
            routes,
            hand_boxes,
            person_boxes,
            matte_hint,
            stream,
            matte_images: req.include_matte_images,
            reply,
        })
    }

    /// Submits and waits for the events, one per route (with vertices only
    /// if asked).
    async fn run_and_wait(
        &self,
        req: proto::PushImageRequest,
        stream: bool,
    ) -> Result<Vec<proto::Event>, Status> {
        let (include_vertices, include_matte_images) =
            (req.include_vertices, req.include_matte_images);
        let (tx, rx) = oneshot::channel();
        let job = self.frame_job(req, stream, Some(tx)).await?;
        self.shared
            .engine
            .submit(job)
            .map_err(|e| engine_status(&e))?;
        let events = rx
            .await
            .map_err(|_| Status::unavailable("the engine stopped before answering"))?
            .map_err(|e| engine_status(&e))?;
        Ok(events
            .iter()
            .map(|e| post::without_heavy_fields(e, include_vertices, include_matte_images))
            .collect())
    }

    /// The route a request's one-line answers (skipped, failed) name.
    fn first_route(&self, req: &proto::PushImageRequest) -> i32 {
        req.routes
            .first()
            .copied()
            .or_else(|| self.shared.status.routes.first().map(|&r| r as i32))
            .unwrap_or(proto::Route::Hands as i32)
    }
}

/// A client box: finite, not empty or inverted, touching the image.
fn checked_box(
    field: &str,
    i: usize,
    r: Option<&proto::Box2D>,
    width: usize,
    height: usize,
) -> Result<[f32; 4], Status> {
    let r = r.ok_or_else(|| Status::invalid_argument(format!("{field}[{i}] has no box")))?;
    let v = [r.x1, r.y1, r.x2, r.y2];
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Status::invalid_argument(format!(
            "{field}[{i}] is not finite: {v:?}"
        )));
    }
    if r.x2 <= r.x1 || r.y2 <= r.y1 {
        return Err(Status::invalid_argument(format!(
            "{field}[{i}] is empty or inverted: {v:?} (want x1 < x2, y1 < y2)"
        )));
    }
    if r.x2 <= 0.0 || r.y2 <= 0.0 || r.x1 >= width as f32 || r.y1 >= height as f32 {
        return Err(Status::invalid_argument(format!(
            "{field}[{i}] {v:?} lies outside the {width}x{height} image"
        )));
    }
    Ok(v)
}

fn hand_boxes(
    boxes: &[proto::HandBox],
    width: usize,
    height: usize,
) -> Result<Vec<HandBox>, Status> {
    boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let bbox = checked_box("hand_boxes", i, b.r#box.as_ref(), width, height)?;
            let is_right = match proto::HandSide::try_from(b.side) {
                Ok(proto::HandSide::Left) => false,
                Ok(proto::HandSide::Right) => true,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "hand_boxes[{i}] needs side LEFT or RIGHT"
                    )))
                }
            };
            Ok(HandBox {
                bbox,
                is_right,
                score: 1.0,
                keypoints_2d: Vec::new(),
            })
        })
        .collect()
}

fn person_boxes(
    boxes: &[proto::Box2D],
    width: usize,
    height: usize,
) -> Result<Vec<[f32; 4]>, Status> {
    boxes
        .iter()
        .enumerate()
        .map(|(i, b)| checked_box("person_boxes", i, Some(b), width, height))
        .collect()
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

#[tonic::async_trait]
impl proto::pose_service_server::PoseService for PoseServer {
    type SubscribeStream = EventStream;
    type PushStreamStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        for &r in &req.routes {
            if proto::Route::try_from(r).map_or(true, |r| r == proto::Route::Unspecified) {
                return Err(Status::invalid_argument(format!("unknown route {r}")));
            }
        }
        if !(req.max_rate_hz >= 0.0 && req.max_rate_hz.is_finite()) {
            return Err(Status::invalid_argument(
                "max_rate_hz must be a finite number ≥ 0",
            ));
        }
        let mut subscription = self.shared.fanout.subscribe();
        let mut shutdown = self.shared.shutdown.clone();
        let telemetry = self.shared.telemetry.clone();
        let (tx, rx) = mpsc::channel(4);
        let min_gap =
            (req.max_rate_hz > 0.0).then(|| Duration::from_secs_f32(1.0 / req.max_rate_hz));
        let options = &self.shared.options;
        let mut smoother = req
            .smoothing
            .unwrap_or(options.smoothing_by_default)
            .then(|| Smoother::new(options.smoothing));
        let image_interest = req
            .include_matte_images
            .then(|| Interest::register(&self.shared.matte_image_subscribers));
        tokio::spawn(async move {
            let _image_interest = image_interest;
            let mut last_sent: HashMap<(i32, String), Instant> = HashMap::new();
            let mut lost_here = 0u64;
            loop {
                let next = tokio::select! {
                    next = subscription.next() => next,
                    _ = shutdown.wait_for(|s| *s) => None,
                    _ = tx.closed() => None,
                };
                let Some((event, lost)) = next else { break };
                if lost > 0 {
                    telemetry.record_dropped("subscriber", lost);
                }
                lost_here += lost;
                if !req.routes.is_empty() && !req.routes.contains(&event.route) {
                    continue;
                }
                if !req.source_ids.is_empty() && !req.source_ids.contains(&event.source_id) {
                    continue;
                }
                if let Some(gap) = min_gap {
                    let key = (event.route, event.source_id.clone());
                    let now = Instant::now();
                    if last_sent
                        .get(&key)
                        .is_some_and(|t| now.duration_since(*t) < gap)
                    {
                        continue;
                    }
                    last_sent.insert(key, now);
                }
                let mut out = post::without_heavy_fields(
                    &event,
                    req.include_vertices,
                    req.include_matte_images,
                );
                if let Some(s) = &mut smoother {
                    s.apply(&mut out);
                }
                out.dropped_for_subscriber = std::mem::take(&mut lost_here);
                if tx.send(Ok(out)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn push_image(
        &self,
        request: Request<proto::PushImageRequest>,
    ) -> Result<Response<proto::PushImageReply>, Status> {
        let req = request.into_inner();
        if req.wait {
            let events = self.run_and_wait(req, false).await?;
            return Ok(Response::new(proto::PushImageReply {
                frame_id: events.first().map_or(0, |e| e.frame_id),
                events,
            }));
        }
        let job = self.frame_job(req, false, None).await?;
        let frame_id = job.frame.id;
        self.shared
            .engine
            .submit(job)
            .map_err(|e| engine_status(&e))?;
        Ok(Response::new(proto::PushImageReply {
            frame_id,
            events: Vec::new(),
        }))
    }

    async fn push_stream(
        &self,
        request: Request<Streaming<proto::PushImageRequest>>,
    ) -> Result<Response<Self::PushStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        // Latest-wins between the reader and the worker: a frame that
        // arrives while another waits replaces it, and the replaced one is
        // answered at once as skipped.
        let slot = Arc::new(PushSlot::default());
        let reader_slot = slot.clone();
        let reader_tx = tx.clone();
        let mut shutdown = self.shared.shutdown.clone();
        let namer = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = incoming.next() => m,
                    _ = shutdown.wait_for(|s| *s) => None,
                };
                match msg {
                    Some(Ok(req)) => {
                        if let Some(old) = reader_slot.put(req) {
                            let skipped = proto::Event {
                                route: namer.first_route(&old),
                                client_frame_id: old.client_frame_id,
                                source_id: old.source_id,
                                emit_unix_ns: post::unix_ns(SystemTime::now()),
                                payload: Some(proto::event::Payload::Skipped(proto::Skipped {})),
                                ..Default::default()
                            };
                            if reader_tx.send(Ok(skipped)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Err(status)) => {
                        let _ = reader_tx.send(Err(status)).await;
                        break;
                    }
                    None => break,
                }
            }
            reader_slot.finish();
        });
        let server = self.clone();
        tokio::spawn(async move {
            'frames: while let Some(req) = slot.next().await {
                for event in server.answer(req).await {
                    if tx.send(Ok(event)).await.is_err() {
                        break 'frames;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_telemetry(
        &self,
        request: Request<proto::GetTelemetryRequest>,
    ) -> Result<Response<proto::Telemetry>, Status> {
        let with = request.into_inner().include_histograms;
        let t = &self.shared.telemetry;
        let stages = t
            .snapshot(with)
            .into_iter()
            .map(|s| proto::StageStats {
                histogram_v2: s
                    .histogram
                    .as_ref()
                    .map(telemetry::encode_v2)
                    .unwrap_or_default(),
                name: s.name,
                count: s.count,
                dropped: s.dropped,
                p50_ns: s.p50_ns,
                p90_ns: s.p90_ns,
                p99_ns: s.p99_ns,
                p999_ns: s.p999_ns,
                max_ns: s.max_ns,
                mean_ns: s.mean_ns,
            })
            .collect();
        Ok(Response::new(proto::Telemetry {
            uptime_ns: t.uptime().as_nanos() as u64,
            stages,
        }))
    }

    async fn get_status(
        &self,
        _: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::Status>, Status> {
        let s = &self.shared;
        let readiness = s.engine.readiness().borrow().clone();
        let synthetic = s.status.synthetic_weights.load(Ordering::Relaxed);
        let models = s
            .status
            .models
            .lock()
            .expect("status lock")
            .iter()
            .cloned()
            .map(|mut m| {
                m.ready = readiness == Readiness::Serving;
                m.synthetic = synthetic;
                if let Readiness::Failed(e) = &readiness {
                    m.error = e.clone();
                }
                m
            })
            .collect();
        Ok(Response::new(proto::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            device: s.status.device.clone(),
            mlx_version: s.status.mlx_version.clone(),
            models,
            sources: std::iter::once(proto::SourceStatus {
                id: "push".into(),
                kind: "push".into(),
                state: "running".into(),
                frames: s.pushed.load(Ordering::Relaxed),
                dropped: 0,
                detail: String::new(),
            })
            .chain(s.sources.iter().map(|src| src.to_proto()))
            .collect(),
            subscribers: s.fanout.subscribers() as u32,
            synthetic_weights: synthetic,
            body_keypoint_names: if s.status.routes.contains(&proto::Route::Body) {
                posed_models::sapiens2::keypoint_names_308()
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            } else {
                Vec::new()
            },
        }))
    }
}

impl PoseServer {
    /// One PushStream frame's events: the results, or an error event naming it.
    async fn answer(&self, req: proto::PushImageRequest) -> Vec<proto::Event> {
        let client_frame_id = req.client_frame_id;
        let source_id = req.source_id.clone();
        let route = self.first_route(&req);
        self.run_and_wait(req, true).await.unwrap_or_else(|status| {
            vec![proto::Event {
                client_frame_id,
                source_id,
                route,
                emit_unix_ns: post::unix_ns(SystemTime::now()),
                payload: Some(proto::event::Payload::Error(proto::EventError {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                })),
                ..Default::default()
            }]
        })
    }
}

/// One subscriber's interest in matte images, counted while it lives.
struct Interest(Arc<AtomicUsize>);

impl Interest {
    fn register(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Interest(count.clone())
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The one frame of a PushStream waiting for the worker.
#[derive(Default)]
struct PushSlot {
    pending: std::sync::Mutex<(Option<proto::PushImageRequest>, bool)>,
    wake: tokio::sync::Notify,
}

impl PushSlot {
    /// Stores `req`; returns the frame it replaced.
    fn put(&self, req: proto::PushImageRequest) -> Option<proto::PushImageRequest> {
        let old = self.pending.lock().expect("slot lock").0.replace(req);
        self.wake.notify_one();
        old
    }

    /// No more frames will come.
    fn finish(&self) {
        self.pending.lock().expect("slot lock").1 = true;
        self.wake.notify_one();
    }

    /// The waiting frame; `None` once finished and empty.
    async fn next(&self) -> Option<proto::PushImageRequest> {
        loop {
            {
                let mut p = self.pending.lock().expect("slot lock");
                if let Some(req) = p.0.take() {
                    return Some(req);
                }
                if p.1 {
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }
}

/// Accepted connections with TCP_NODELAY. Without it a small event written
/// right after the previous one waits for the client's delayed ACK (~40 ms
/// on Linux): on loopback that put a constant 44 ms on every push-to-event
/// round trip of `posed bench-grpc`.
fn nodelay_incoming(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|c| {
            if let Err(e) = c.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY: {e}");
            }
        })
    })
}

/// Binds the configured addresses; refuses non-loopback TCP unless allowed.
pub async fn bind(
    tcp: Option<SocketAddr>,
    uds: Option<PathBuf>,
    allow_non_loopback: bool,
) -> anyhow::Result<Listeners> {
    let tcp = match tcp {
        Some(addr) => {
            anyhow::ensure!(
                addr.ip().is_loopback() || allow_non_loopback,
                "refusing to listen on {addr}: not a loopback address (set allow_remote to expose the daemon)"
            );
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
            )
        }
        None => None,
    };
    let uds = match uds {
        Some(path) => {
            // A socket file left by a previous run would make bind fail.
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            let l = UnixListener::bind(&path)
                .map_err(|e| anyhow::anyhow!("cannot listen on unix:{}: {e}", path.display()))?;
            Some((l, path))
        }
        None => None,
    };
    Ok(Listeners { tcp, uds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_tcp_connections_do_not_wait_for_delayed_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(nodelay_incoming(listener));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
