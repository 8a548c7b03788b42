//! The gRPC server: `posed.v1.PoseService`, `grpc.health.v1` and server
//! reflection, on loopback TCP and/or a Unix socket.
//!
//! Shape (after mini-redis and the tonic examples): [`run`] owns the
//! listeners, health and the lifecycle; each RPC family has its own file
//! ([`push`], [`subscribe`], [`status`]) working on [`Shared`] state; the
//! post loop ([`post`]) turns the engine's outputs into events for the
//! fan-out and for waiting pushers. Every spawned task is tracked and
//! listens to one [`Shutdown`], so on shutdown every stream ends before
//! `run` returns.

mod auth;
mod health;
mod post;
mod push;
mod shutdown;
pub mod socket;
mod status;
mod subscribe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::decode;
use crate::engine::{Engine, EngineError, EngineOutput, Readiness};
use crate::fanout::FanOut;
use crate::proto::{self, pose_service_server::PoseServiceServer};
use crate::recording::Recorder;
use crate::routes::{ModelReport, PostOptions, RouteId};
use crate::smoothing::OneEuroParams;
use crate::sources::{self, FrameSubmitter, ReplayConfig, SourceState};
use crate::telemetry::Telemetry;
pub use auth::BearerToken;
pub use push::{decode_push, BUILT_IN_SOURCES, MAX_SOURCE_ID_BYTES};
pub use shutdown::{Shutdown, Tasks};
pub use subscribe::WAITING_FOR_SOURCES;

/// The gRPC service name health reports for the whole daemon.
pub const SERVICE_NAME: &str = "posed.v1.PoseService";

/// The health service name of one route: `posed.v1.PoseService/hands`.
pub fn route_health_name(route: RouteId) -> String {
    format!("{SERVICE_NAME}/{route}")
}

/// How a waiting push gets its answer: the events post-processing made of
/// its frame (one per route), or why there are none.
pub type Reply = oneshot::Sender<Result<Vec<proto::Event>, EngineError>>;

/// The engine as the daemon runs it: waiters are pushes' reply channels.
pub type DaemonEngine = Engine<Reply>;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// What a pushed or replayed image may be.
    pub image_limits: decode::ImageLimits,
    /// How many boxes a push may bring.
    pub request_limits: crate::routes::RequestLimits,
    /// Swap left/right so they are the user's (selfie cameras).
    pub mirror: bool,
    /// How far a subscriber may fall behind before it loses events.
    pub subscriber_queue: usize,
    /// Hard limit for a clean shutdown after the signal.
    pub shutdown_deadline: Duration,
    /// One Euro parameters, and whether subscribers that do not ask get it.
    pub smoothing: OneEuroParams,
    pub smoothing_by_default: bool,
    /// Record pushed and camera frames to this folder.
    pub record_dir: Option<PathBuf>,
    /// How matte events carry their images.
    pub matte_encoding: crate::config::ImageEncoding,
    /// Pings to drop peers that stopped answering (frozen or gone).
    pub keepalive: Option<Keepalive>,
    /// The bearer token TCP clients must send (Unix socket clients are
    /// checked by the socket file's permissions).
    pub tcp_token: Option<BearerToken>,
}

/// HTTP/2 pings every `interval` to a connection, which is closed, with its
/// streams, when one is not answered within `timeout`; TCP keepalive probes
/// at the same interval catch a peer whose host is gone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            image_limits: decode::ImageLimits::default(),
            request_limits: Default::default(),
            mirror: false,
            subscriber_queue: 64,
            shutdown_deadline: Duration::from_millis(1500),
            smoothing: OneEuroParams::default(),
            smoothing_by_default: false,
            record_dir: None,
            matte_encoding: crate::config::ImageEncoding::Png,
            keepalive: Some(Keepalive {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(20),
            }),
            tcp_token: None,
        }
    }
}

/// Facts for `GetStatus` that the server does not compute itself.
#[derive(Debug, Clone)]
pub struct DaemonFacts {
    pub device: String,
    pub mlx_version: String,
    /// The routes this daemon runs (pushes may name only these).
    pub routes: Vec<RouteId>,
    /// The models, updated once their files are found and loaded.
    pub models: watch::Receiver<ModelReport>,
}

impl DaemonFacts {
    /// For routes whose models report nothing (tests).
    pub fn new(device: &str, mlx_version: &str, routes: Vec<RouteId>) -> Self {
        DaemonFacts {
            device: device.into(),
            mlx_version: mlx_version.into(),
            routes,
            models: watch::channel(ModelReport::default()).1,
        }
    }
}

impl Shared {
    /// The ids of the daemon's own sources (camera, replay).
    fn source_names(&self) -> Vec<&str> {
        self.sources.iter().map(|s| s.id.as_str()).collect()
    }
}

/// State every RPC reads.
pub(crate) struct Shared {
    engine: Arc<DaemonEngine>,
    fanout: FanOut<proto::Event>,
    telemetry: Arc<Telemetry>,
    next_frame_id: Arc<AtomicU64>,
    sources: Vec<Arc<SourceState>>,
    recorder: Option<Recorder>,
    options: ServeOptions,
    facts: DaemonFacts,
    shutdown: Shutdown,
    tasks: Tasks,
    pushed: AtomicU64,
    push_sources: push::RecentSources,
    /// Pushed images being decoded at once: as many as there are cores.
    /// More would not finish sooner, and each holds a decoded image.
    decode_permits: tokio::sync::Semaphore,
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
    Camera {
        id: String,
        config: crate::sources::camera::CameraConfig,
        backend: crate::sources::camera::CameraBackend,
    },
}

/// Where to listen. Either or both.
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub uds: Option<(UnixListener, socket::SocketFile)>,
}

/// What the server serves: the MLX thread, the channel its outputs come
/// out of, the telemetry it records into and the facts it reports.
pub struct Backend {
    pub engine: DaemonEngine,
    pub results: mpsc::UnboundedReceiver<EngineOutput<Reply>>,
    pub telemetry: Arc<Telemetry>,
    pub facts: DaemonFacts,
}

/// Serves until `signal` resolves, then ends every stream and returns
/// within `options.shutdown_deadline`.
pub async fn run(
    listeners: Listeners,
    backend: Backend,
    sources: Vec<SourceSpec>,
    options: ServeOptions,
    signal: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let Backend {
        engine,
        results,
        telemetry,
        facts,
    } = backend;
    let shutdown = Shutdown::default();
    let tasks = Tasks::new();
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
        telemetry: telemetry.clone(),
    };
    let source_states = start_sources(sources, &submitter, &shutdown, &tasks, options.image_limits);
    let matte_image_subscribers = Arc::new(AtomicUsize::new(0));
    let post_options = PostOptions {
        mirror: options.mirror,
        matte_encoding: options.matte_encoding,
        matte_image_subscribers: matte_image_subscribers.clone(),
    };
    let route_health: Vec<String> = facts.routes.iter().map(|&r| route_health_name(r)).collect();
    let shared = Arc::new(Shared {
        engine,
        fanout: fanout.clone(),
        telemetry: telemetry.clone(),
        next_frame_id,
        sources: source_states,
        recorder,
        options: options.clone(),
        facts,
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        pushed: AtomicU64::new(0),
        push_sources: Default::default(),
        decode_permits: tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        ),
        matte_image_subscribers,
    });
    // Not tracked: it ends when the engine's output channel closes, after
    // the streams (a frame in flight must not hold the shutdown).
    let post = tokio::spawn(post::post_loop(results, fanout, telemetry, post_options));

    let (health, health_service) = health::health_service(shutdown.clone(), tasks.clone());
    health.set(SERVICE_NAME, ServingStatus::NotServing);
    for name in &route_health {
        health.set(name, ServingStatus::NotServing);
    }
    tasks.spawn(follow_readiness(
        readiness,
        health.clone(),
        route_health,
        shutdown.clone(),
    ));

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Sized for the largest image the pixel cap allows, sent raw (a 4K RGB
    // frame is 24 MiB; tonic's default of 4 MiB would refuse 1080p).
    let service = PoseServiceServer::new(PoseServer {
        shared: shared.clone(),
    })
    .max_decoding_message_size(options.image_limits.max_message_bytes());
    let keepalive = options.keepalive;
    let router = |token: Option<BearerToken>| {
        let builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(keepalive.map(|k| k.interval))
            .http2_keepalive_timeout(keepalive.map(|k| k.timeout));
        builder
            .layer(tonic::service::InterceptorLayer::new(auth::interceptor(
                token,
            )))
            .add_service(health_service.clone())
            .add_service(reflection.clone())
            .add_service(service.clone())
    };
    let stopped = |s: Shutdown| async move { s.wait().await };

    let mut servers = Vec::new();
    if let Some(tcp) = listeners.tcp {
        tracing::info!("listening on {}", tcp.local_addr()?);
        servers.push(tokio::spawn(
            router(options.tcp_token.clone()).serve_with_incoming_shutdown(
                tcp_incoming(tcp, keepalive),
                stopped(shutdown.clone()),
            ),
        ));
    }
    // Removed (with its lock file) once the servers are done.
    let mut socket_file = None;
    if let Some((uds, file)) = listeners.uds {
        tracing::info!("listening on unix:{}", file.path().display());
        socket_file = Some(file);
        servers.push(tokio::spawn(router(None).serve_with_incoming_shutdown(
            UnixListenerStream::new(uds),
            stopped(shutdown.clone()),
        )));
    }
    anyhow::ensure!(!servers.is_empty(), "nothing to listen on");

    signal.await;
    tracing::info!("shutting down");
    // Probes see NOT_SERVING first; then every stream (Subscribe,
    // PushStream, Health.Watch) ends with UNAVAILABLE.
    health.all_not_serving();
    shutdown.begin();
    tasks.close();
    let deadline = options.shutdown_deadline;
    let drained = tokio::time::timeout(deadline, async {
        tasks.wait().await;
        for s in servers {
            let _ = s.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("streams did not end within {deadline:?}; closing anyway");
    }
    post.abort();
    drop(socket_file);
    Ok(())
}

fn start_sources(
    specs: Vec<SourceSpec>,
    submitter: &FrameSubmitter,
    shutdown: &Shutdown,
    tasks: &Tasks,
    image_limits: decode::ImageLimits,
) -> Vec<Arc<SourceState>> {
    specs
        .into_iter()
        .map(|spec| match spec {
            SourceSpec::Replay { id, config } => {
                let state = SourceState::new(id, "replay");
                tasks.spawn(sources::run_replay(
                    config,
                    state.clone(),
                    submitter.clone(),
                    shutdown.clone(),
                    image_limits,
                ));
                state
            }
            SourceSpec::Camera {
                id,
                config,
                backend,
            } => {
                let state = SourceState::new(id, "camera");
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let signal = shutdown.clone();
                let flag = stop.clone();
                tasks.spawn(async move {
                    signal.wait().await;
                    flag.store(true, Ordering::Relaxed);
                });
                // A tracked blocking task: shutdown waits (up to its
                // deadline) for the camera to be released, which the
                // capture loop does within 200 ms unless a driver call
                // itself hangs.
                let (s, sub) = (state.clone(), submitter.clone());
                tasks.spawn_blocking(move || sources::camera::run(backend, config, s, sub, stop));
                state
            }
        })
        .collect()
}

/// Health follows the MLX thread: NOT_SERVING until the models are warm,
/// and while the last frame failed.
async fn follow_readiness(
    mut readiness: watch::Receiver<Readiness>,
    health: health::HealthReporter,
    routes: Vec<String>,
    shutdown: Shutdown,
) {
    loop {
        let status = match &*readiness.borrow_and_update() {
            Readiness::Serving => ServingStatus::Serving,
            _ => ServingStatus::NotServing,
        };
        health.set(SERVICE_NAME, status);
        for name in &routes {
            health.set(name, status);
        }
        tokio::select! {
            changed = readiness.changed() => if changed.is_err() { return },
            _ = shutdown.wait() => return,
        }
    }
}

/// A gRPC status for an engine error.
pub(crate) fn engine_status(e: &EngineError) -> Status {
    match e {
        EngineError::Busy(_) => Status::resource_exhausted(e.to_string()),
        EngineError::Stopped | EngineError::Load(_) => Status::unavailable(e.to_string()),
        e if e.is_deadline() => Status::deadline_exceeded(e.to_string()),
        EngineError::Route { .. } | EngineError::Panic { .. } => Status::internal(e.to_string()),
        EngineError::NotEnabled(_) => Status::failed_precondition(e.to_string()),
    }
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
        subscribe::subscribe(&self.shared, request.into_inner())
    }

    async fn push_image(
        &self,
        request: Request<proto::PushImageRequest>,
    ) -> Result<Response<proto::PushImageReply>, Status> {
        push::push_image(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn push_stream(
        &self,
        request: Request<Streaming<proto::PushImageRequest>>,
    ) -> Result<Response<Self::PushStreamStream>, Status> {
        Ok(Response::new(push::push_stream(
            &self.shared,
            request.into_inner(),
        )))
    }

    async fn get_telemetry(
        &self,
        request: Request<proto::GetTelemetryRequest>,
    ) -> Result<Response<proto::Telemetry>, Status> {
        Ok(Response::new(status::telemetry(
            &self.shared,
            request.into_inner().include_histograms,
        )))
    }

    async fn get_status(
        &self,
        _: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::Status>, Status> {
        Ok(Response::new(status::status(&self.shared)))
    }
}

/// Accepted connections with TCP_NODELAY and, when configured, TCP
/// keepalive. Without TCP_NODELAY a small event written right after the
/// previous one waits for the client's delayed ACK (~40 ms on Linux): on
/// loopback that put a constant 44 ms on every push-to-event round trip of
/// `posed bench-grpc`.
fn tcp_incoming(
    listener: TcpListener,
    keepalive: Option<Keepalive>,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    let probes = keepalive.map(|k| {
        socket2::TcpKeepalive::new()
            .with_time(k.interval)
            .with_interval(k.interval)
    });
    TcpListenerStream::new(listener).map(move |conn| {
        conn.inspect(|c| {
            if let Err(e) = c.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY: {e}");
            }
            if let Some(p) = &probes {
                if let Err(e) = socket2::SockRef::from(c).set_tcp_keepalive(p) {
                    tracing::warn!("cannot set TCP keepalive: {e}");
                }
            }
        })
    })
}

/// Binds the configured addresses; refuses non-loopback TCP unless allowed.
/// The Unix socket gets permission bits `socket_mode`.
pub async fn bind(
    tcp: Option<SocketAddr>,
    uds: Option<PathBuf>,
    socket_mode: u32,
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
        Some(path) => Some(socket::bind(&path, socket_mode)?),
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
        let keepalive = Keepalive {
            interval: Duration::from_secs(7),
            timeout: Duration::from_secs(3),
        };
        let mut incoming = Box::pin(tcp_incoming(listener, Some(keepalive)));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
    }
}
