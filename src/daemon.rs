//! `posed serve`, the composition root: config → model files → routes →
//! engine → server, each a short named step below; then `/metrics`, the
//! telemetry log line, systemd readiness and watchdog, and a clean stop on
//! SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, LogFormat, ReplayPace};
use crate::engine::Readiness;
use crate::routes::{FoundModels, ModelReport, RouteId, RouteSet, REGISTRY};
use crate::server::{self, Backend, DaemonEngine, DaemonFacts, Reply, ServeOptions};
use crate::telemetry::{self, Telemetry};
use crate::weights::hub::{Hub, HubOptions};

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub async fn run(config: Config) -> Result<()> {
    let signal = shutdown_signal()?;
    let hub = Hub::new(HubOptions::from_env())?;
    let device = device_name();
    tracing::info!(device = %device, mlx = %posed_models::runtime::mlx_version(), "starting");
    // Checked when the config was loaded.
    let socket_mode = config.socket_mode().map_err(anyhow::Error::msg)?;
    let listeners = server::bind(
        config.listen(),
        config.socket(),
        socket_mode,
        config.server.allow_remote,
    )
    .await?;

    // The server answers (health NOT_SERVING) while the files are found,
    // maybe downloaded, and the routes load and warm on the MLX thread.
    let routes = enabled_routes(&config);
    let models = Arc::new(watch::Sender::new(ModelReport {
        models: routes
            .iter()
            .flat_map(|r| r.kind().models(&config))
            .collect(),
        synthetic: false,
    }));
    let (found_tx, found_rx) = std::sync::mpsc::channel();
    let (engine, results) = start_engine(&config, &routes, found_rx, models.clone());
    let finder = tokio::spawn(find_models(
        config.clone(),
        hub,
        routes.clone(),
        found_tx,
        models.clone(),
    ));
    let ready_notifier = tokio::spawn(notify_when_ready(engine.readiness()));

    let telemetry = Arc::new(Telemetry::new());
    let metrics = match config.metrics() {
        Some(addr) => Some(tokio::spawn(serve_metrics(addr, telemetry.clone()).await?)),
        None => None,
    };
    let logger = telemetry_logger(config.log.telemetry_interval_s, telemetry.clone());
    let watchdog = watchdog();

    let backend = Backend {
        engine,
        results,
        telemetry,
        facts: DaemonFacts {
            device,
            mlx_version: posed_models::runtime::mlx_version(),
            routes,
            models: models.subscribe(),
        },
    };
    server::run(
        listeners,
        backend,
        source_specs(&config),
        serve_options(&config)?,
        signal,
    )
    .await?;
    crate::notify::notify_until_delivered(
        &[sd_notify::NotifyState::Stopping],
        Duration::from_millis(200),
    )
    .await;
    for task in [
        Some(finder),
        Some(ready_notifier),
        metrics,
        logger,
        watchdog,
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

fn device_name() -> String {
    let device = posed_models::runtime::default_device();
    match device.name() {
        Some(n) => format!("{} ({n})", device.kind),
        None => device.kind.to_owned(),
    }
}

/// The routes the config turns on, in the registry's order.
fn enabled_routes(config: &Config) -> Vec<RouteId> {
    REGISTRY
        .iter()
        .filter(|k| k.enabled(config))
        .map(|k| k.id())
        .collect()
}

/// What the MLX thread's loader waits for: every route's files, or why
/// they cannot be had.
type Found = Result<Vec<FoundModels>, anyhow::Error>;

/// Finds each route's model files (the hub is async: this runs on tokio)
/// and hands them to the MLX thread; `GetStatus` shows the paths.
async fn find_models(
    config: Config,
    hub: Hub,
    routes: Vec<RouteId>,
    found: std::sync::mpsc::Sender<Found>,
    models: Arc<watch::Sender<ModelReport>>,
) {
    let mut all = Vec::with_capacity(routes.len());
    for id in routes {
        match id.kind().find(&config, &hub).await {
            Ok(f) => all.push(f),
            Err(e) => {
                let _ = found.send(Err(e));
                return;
            }
        }
    }
    models.send_modify(|m| m.models = all.iter().flat_map(|f| f.models.clone()).collect());
    let _ = found.send(Ok(all));
}

/// The engine, whose MLX thread loads the routes once their files arrive.
fn start_engine(
    config: &Config,
    routes: &[RouteId],
    found: std::sync::mpsc::Receiver<Found>,
    models: Arc<watch::Sender<ModelReport>>,
) -> (
    DaemonEngine,
    mpsc::UnboundedReceiver<crate::engine::EngineOutput<Reply>>,
) {
    let cache_limit_mb = config.server.mlx_cache_limit_mb;
    let load = move || {
        if cache_limit_mb > 0 {
            posed_models::runtime::set_cache_limit(cache_limit_mb << 20);
        }
        let found = found.recv().context("finding the model files stopped")??;
        let mut routes = RouteSet::default();
        let mut synthetic = false;
        for f in found {
            let (loaded, s) = (f.load)()?;
            routes.extend(loaded);
            synthetic |= s;
        }
        models.send_modify(|m| m.synthetic = synthetic);
        if synthetic {
            tracing::warn!("RUNNING ON SYNTHETIC (RANDOM) WEIGHTS: poses are meaningless");
        }
        Ok(routes)
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = DaemonEngine::start(
        routes.to_vec(),
        load,
        tx,
        crate::engine::EngineLimits::of(config),
    );
    (engine, rx)
}

/// systemd's READY=1 means loaded and warm (or failed, with the reason).
async fn notify_when_ready(mut readiness: watch::Receiver<Readiness>) {
    let _ = readiness.wait_for(|r| *r != Readiness::Loading).await;
    let verdict = readiness.borrow().clone();
    // A failed load is not fixed by a restart: report ready with the
    // reason, and keep answering (health says NOT_SERVING).
    let status = match verdict {
        Readiness::Failed(e) => {
            tracing::error!("the daemon is not serving: {e}");
            format!("failed: {e}")
        }
        _ => "serving".to_owned(),
    };
    crate::notify::notify_until_delivered(
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ],
        Duration::from_secs(120),
    )
    .await;
}

/// Every `every_s` seconds, the stages' p50/p99 as one log line.
fn telemetry_logger(
    every_s: u64,
    telemetry: Arc<Telemetry>,
) -> Option<tokio::task::JoinHandle<()>> {
    (every_s > 0).then(|| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every_s));
            tick.tick().await;
            loop {
                tick.tick().await;
                let line = telemetry::summary_line(&telemetry.snapshot(false));
                if !line.is_empty() {
                    tracing::info!(target: "posed::telemetry", "p50/p99 {line}");
                }
            }
        })
    })
}

fn serve_options(config: &Config) -> Result<ServeOptions> {
    let s = &config.server;
    let tcp_token = match s.token_file.as_str() {
        "" => None,
        path => Some(server::BearerToken::from_file(path.as_ref())?),
    };
    Ok(ServeOptions {
        image_limits: crate::decode::ImageLimits {
            max_pixels: config.server.max_image_pixels,
            max_aspect_ratio: config.server.max_image_aspect_ratio,
        },
        request_limits: crate::routes::RequestLimits::of(config),
        mirror: config.hands.mirror,
        subscriber_queue: config.server.subscriber_queue,
        shutdown_deadline: config.shutdown_deadline(),
        smoothing: config.smoothing(),
        smoothing_by_default: config.hands.smoothing,
        record_dir: (!config.recording.dir.is_empty()).then(|| config.recording.dir.clone().into()),
        matte_encoding: config.matte.encoding,
        keepalive: (s.keepalive_interval_ms > 0).then(|| server::Keepalive {
            interval: Duration::from_millis(s.keepalive_interval_ms),
            timeout: Duration::from_millis(s.keepalive_timeout_ms),
        }),
        tcp_token,
    })
}

/// The replay and camera sources the config turns on.
fn source_specs(config: &Config) -> Vec<server::SourceSpec> {
    let mut specs = Vec::new();
    if !config.replay.dir.is_empty() {
        specs.push(server::SourceSpec::Replay {
            id: "replay".into(),
            config: crate::sources::ReplayConfig {
                dir: config.replay.dir.clone().into(),
                pace: match config.replay.pace {
                    ReplayPace::Fast => crate::sources::Pace::Fast,
                    ReplayPace::Original => crate::sources::Pace::Original {
                        fps: config.replay.fps,
                    },
                },
                repeat: config.replay.repeat,
                max_gap: Duration::from_millis(config.replay.max_gap_ms),
            },
        });
    }
    if config.camera.enabled {
        specs.push(server::SourceSpec::Camera {
            id: "camera".into(),
            config: camera_config(config),
            backend: crate::sources::camera::CameraBackend::Platform,
        });
    }
    specs
}

/// The camera source's settings from `[camera]`.
pub fn camera_config(config: &Config) -> crate::sources::camera::CameraConfig {
    let c = &config.camera;
    crate::sources::camera::CameraConfig {
        device: c.device.clone(),
        width: c.width,
        height: c.height,
        fps: c.fps,
        formats: c.formats.clone(),
        pin_frame_rate: c.pin_frame_rate,
        // Checked when the config was loaded.
        intrinsics: c.intrinsics().unwrap_or(None),
    }
}

/// SIGTERM (launchd, systemd) or SIGINT (a terminal).
/// Handlers are installed when this is called, not when the future is
/// first polled: the server answers from other tasks before the main one
/// awaits the signal, and a SIGTERM in that window must not kill the
/// process with the default action.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// systemd's watchdog: ping at half the interval it asks for.
fn watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let every = (interval / 2).max(Duration::from_millis(100));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            crate::notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }))
}

/// Prometheus text at `GET /metrics` on `addr`.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    telemetry: Arc<Telemetry>,
) -> Result<impl std::future::Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    tracing::info!("metrics on http://{addr}/metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let t = telemetry.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    telemetry::prometheus_text(&t.snapshot(false), t.uptime()),
                )
            }
        }),
    );
    Ok(async move {
        let _ = axum::serve(listener, app).await;
    })
}
