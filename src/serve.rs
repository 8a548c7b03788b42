//! `posed serve`: load the config and the models, serve gRPC and
//! `/metrics`, log telemetry, and stop cleanly on SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use posed_models::body_pipeline::{BodyModelFiles, BodyPipeline};
use posed_models::hand_pipeline::{HandModelFiles, HandPipeline};
use posed_models::matte_pipeline::{FallbackHint, FrameFit, MatteModelFiles, MattePipeline};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::engine::{Engine, MatteRoute, Models};
use crate::proto;
use crate::server::{self, ServeOptions, StaticStatus};
use crate::telemetry::{self, Telemetry};

pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

pub async fn run(config: Config) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let hub = crate::weights::hub::Hub::new(crate::weights::hub::HubOptions::from_env())?;
    let device = posed_models::runtime::default_device();
    let device_name = match device.name() {
        Some(n) => format!("{} ({n})", device.kind),
        None => device.kind.to_owned(),
    };
    tracing::info!(device = %device_name, mlx = %posed_models::runtime::mlx_version(), "starting");

    let listeners =
        server::bind(config.listen(), config.socket(), config.server.allow_remote).await?;
    let telemetry = Arc::new(Telemetry::new());

    // The loader runs on the MLX thread and says whether the weights are
    // synthetic; the server answers (health NOT_SERVING) while it loads.
    let mut routes = Vec::new();
    let mut named = Vec::new();
    if config.hands.enabled {
        routes.push(proto::Route::Hands);
        named.extend(hand_model_status(&config, None));
    }
    if config.body.enabled {
        routes.push(proto::Route::Body);
        named.extend(body_model_status(&config, None));
    }
    if config.matte.enabled {
        routes.push(proto::Route::Matte);
        named.push(matte_model_status(&config, None));
    }
    let status = StaticStatus {
        device: device_name,
        mlx_version: posed_models::runtime::mlx_version(),
        routes,
        // Named now so GetStatus can report a failure to find the files;
        // the paths are filled in once they are found.
        models: Arc::new(std::sync::Mutex::new(named)),
        synthetic_weights: Default::default(),
    };
    let synthetic = status.synthetic_weights.clone();
    let models = status.models.clone();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let loader_config = config.clone();
    let runtime = tokio::runtime::Handle::current();
    let engine = Engine::start(
        move || {
            // Finding (maybe downloading) the files happens here, on the MLX
            // thread, so the server already answers NOT_SERVING meanwhile.
            let config = loader_config;
            if config.server.mlx_cache_limit_mb > 0 {
                posed_models::runtime::set_cache_limit(config.server.mlx_cache_limit_mb << 20);
            }
            let hands = &config.hands;
            let hand_files = if hands.enabled {
                Some(runtime.block_on(crate::weights::resolve::hand_files(hands, &hub))?)
            } else {
                None
            };
            let body_files = if config.body.enabled {
                Some(runtime.block_on(crate::weights::resolve::body_files(&config.body, &hub))?)
            } else {
                None
            };
            let matte_files = if config.matte.enabled {
                Some(runtime.block_on(crate::weights::resolve::matte_files(&config.matte, &hub))?)
            } else {
                None
            };
            {
                let mut m = models.lock().expect("status lock");
                m.clear();
                if hands.enabled {
                    m.extend(hand_model_status(&config, hand_files.as_ref()));
                }
                if config.body.enabled {
                    m.extend(body_model_status(&config, body_files.as_ref()));
                }
                if config.matte.enabled {
                    m.push(matte_model_status(&config, matte_files.as_ref()));
                }
            }
            let mut is_synthetic = false;
            let hand_pipeline = match hand_files {
                Some(files) => {
                    tracing::info!(
                        detector = %files.detector_weights.display(),
                        wilor = %files.wilor_weights.display(),
                        mano = %files.mano.display(),
                        "loading the hand route"
                    );
                    let (pipeline, synthetic) = HandPipeline::load(&files)?;
                    let on_gpu = posed_models::runtime::default_device().kind == "gpu";
                    if hands.compile == "on" || (hands.compile == "auto" && on_gpu) {
                        pipeline.compile().context("compiling the hand route")?;
                    }
                    is_synthetic |= synthetic;
                    Some(pipeline)
                }
                None => None,
            };
            let body = match body_files {
                Some(mut files) => {
                    tracing::info!(
                        detector = %files.detector_weights.display(),
                        pose = %files.pose_weights.display(),
                        "loading the body route"
                    );
                    files.pose_config.demo.flip_test = config.body.flip_test;
                    let dtype =
                        (config.body.dtype == "bfloat16").then_some(mlx_rs::Dtype::Bfloat16);
                    let (mut body, synthetic) = BodyPipeline::load(&files, dtype)?;
                    body.max_people = config.body.max_people;
                    is_synthetic |= synthetic;
                    Some(body)
                }
                None => None,
            };
            let matte = match matte_files {
                Some(files) => {
                    let mc = &config.matte;
                    tracing::info!(
                        weights = %files.weights.display(),
                        img_size = mc.img_size,
                        fit = %mc.fit,
                        "loading the matte route"
                    );
                    let head_dtype = if mc.head_dtype == "bfloat16" {
                        mlx_rs::Dtype::Bfloat16
                    } else {
                        mlx_rs::Dtype::Float32
                    };
                    let fit = if mc.fit == "tiles" {
                        FrameFit::Tiles {
                            overlap: mc.tile_overlap,
                        }
                    } else {
                        FrameFit::Resize
                    };
                    let (mut pipeline, synthetic) = MattePipeline::load(&files, head_dtype, fit)?;
                    pipeline.refiner_tile = (mc.refiner_tile > 0).then_some(mc.refiner_tile);
                    is_synthetic |= synthetic;
                    Some(MatteRoute {
                        pipeline,
                        hint_from_previous: mc.hint_from_previous,
                        fallback: if mc.fallback_hint == "ones" {
                            FallbackHint::Ones
                        } else {
                            FallbackHint::Chroma
                        },
                    })
                }
                None => None,
            };
            synthetic.store(is_synthetic, std::sync::atomic::Ordering::Relaxed);
            if is_synthetic {
                tracing::warn!("RUNNING ON SYNTHETIC (RANDOM) WEIGHTS: poses are meaningless");
            }
            Ok(Models {
                hands: hand_pipeline,
                body,
                matte,
            })
        },
        out_tx,
        config.server.max_waiting_pushes,
        config.hands.max_hands,
    );
    // systemd's READY=1 means loaded and warm (or failed, with the reason).
    let mut readiness = engine.readiness();
    let ready_notifier = tokio::spawn(async move {
        let _ = readiness
            .wait_for(|r| *r != crate::engine::Readiness::Loading)
            .await;
        let verdict = readiness.borrow().clone();
        // A failed load is not fixed by a restart: report ready with the
        // reason, and keep answering (health says NOT_SERVING).
        let status = match verdict {
            crate::engine::Readiness::Failed(e) => {
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
    });

    let metrics = match config.metrics() {
        Some(addr) => Some(tokio::spawn(serve_metrics(addr, telemetry.clone()).await?)),
        None => None,
    };
    let log_every = config.log.telemetry_interval_s;
    let logger = (log_every > 0).then(|| {
        let t = telemetry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(log_every));
            tick.tick().await;
            loop {
                tick.tick().await;
                let line = telemetry::summary_line(&t.snapshot(false));
                if !line.is_empty() {
                    tracing::info!(target: "posed::telemetry", "p50/p99 {line}");
                }
            }
        })
    });
    let watchdog = watchdog();

    let options = ServeOptions {
        max_pixels: config.server.max_image_pixels,
        mirror: config.hands.mirror,
        subscriber_queue: config.server.subscriber_queue,
        max_waiting: config.server.max_waiting_pushes,
        shutdown_deadline: config.shutdown_deadline(),
        smoothing: config.smoothing(),
        smoothing_by_default: config.hands.smoothing,
        record_dir: (!config.recording.dir.is_empty()).then(|| config.recording.dir.clone().into()),
        matte_encoding: if config.matte.encoding == "raw" {
            crate::post::MatteEncoding::Raw
        } else {
            crate::post::MatteEncoding::Png
        },
    };
    let backend = server::Backend {
        engine,
        results: out_rx,
        telemetry,
        status,
    };
    server::run(listeners, backend, source_specs(&config), options, shutdown).await?;
    crate::notify::notify_until_delivered(
        &[sd_notify::NotifyState::Stopping],
        Duration::from_millis(200),
    )
    .await;
    ready_notifier.abort();
    for task in [metrics, logger, watchdog].into_iter().flatten() {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The replay and camera sources the config turns on.
fn source_specs(config: &Config) -> Vec<server::SourceSpec> {
    let mut specs = Vec::new();
    if !config.replay.dir.is_empty() {
        specs.push(server::SourceSpec::Replay {
            id: "replay".into(),
            config: crate::sources::ReplayConfig {
                dir: config.replay.dir.clone().into(),
                pace: if config.replay.pace == "fast" {
                    crate::sources::Pace::Fast
                } else {
                    crate::sources::Pace::Original {
                        fps: config.replay.fps,
                    }
                },
                repeat: config.replay.repeat,
            },
        });
    }
    #[cfg(feature = "camera")]
    if config.camera.enabled {
        specs.push(server::SourceSpec::Camera {
            id: "camera".into(),
            config: crate::sources::camera::CameraConfig {
                device: config.camera.device.clone(),
                width: config.camera.width,
                height: config.camera.height,
                fps: config.camera.fps,
            },
        });
    }
    #[cfg(not(feature = "camera"))]
    if config.camera.enabled {
        tracing::error!(
            "camera.enabled is set but this build has no camera support (cargo feature `camera`)"
        );
    }
    specs
}

/// The hand route's two models, with their files once found.
fn hand_model_status(config: &Config, files: Option<&HandModelFiles>) -> Vec<proto::ModelStatus> {
    let none = Path::new("");
    vec![
        model_status(
            "hand-detector",
            proto::Route::Hands,
            files.map_or(none, |f| &f.detector_weights),
            "float32",
        ),
        model_status(
            "wilor",
            proto::Route::Hands,
            files.map_or(none, |f| &f.wilor_weights),
            &config.hands.variant,
        ),
    ]
}

/// The body route's two models, with their files once found.
fn body_model_status(config: &Config, files: Option<&BodyModelFiles>) -> Vec<proto::ModelStatus> {
    let none = Path::new("");
    vec![
        model_status(
            "person-detector",
            proto::Route::Body,
            files.map_or(none, |f| &f.detector_weights),
            "float32",
        ),
        model_status(
            &format!("sapiens2-pose-{}", config.body.size),
            proto::Route::Body,
            files.map_or(none, |f| &f.pose_weights),
            &config.body.dtype,
        ),
    ]
}

/// The matte route's model, with its file once found.
fn matte_model_status(config: &Config, files: Option<&MatteModelFiles>) -> proto::ModelStatus {
    model_status(
        &format!("corridorkey-{}", config.matte.img_size),
        proto::Route::Matte,
        files.map_or(Path::new(""), |f| &f.weights),
        &format!("float32 encoder, {} heads", config.matte.head_dtype),
    )
}

fn model_status(
    name: &str,
    route: proto::Route,
    weights: &Path,
    dtype: &str,
) -> proto::ModelStatus {
    proto::ModelStatus {
        name: name.into(),
        route: route as i32,
        weights: weights.display().to_string(),
        dtype: dtype.into(),
        ..Default::default()
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
