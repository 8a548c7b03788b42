//! The daemon the gRPC test suites talk to: the real server and engine on
//! the fixture weights, listening on loopback TCP and a Unix socket in a
//! temporary folder; and the requests and images they send.
#![allow(dead_code)] // each suite uses its own part

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::ImageEncoder;
use posed::engine::EngineLimits;
use posed::proto::pose_service_client::PoseServiceClient;
use posed::proto::{self, push_image_request::Image};
use posed::routes::body::BodyRoute;
use posed::routes::hands::HandsRoute;
use posed::routes::matte::MatteRoute;
use posed::routes::{RouteId, RouteSet};
use posed::server::{self, DaemonEngine, DaemonFacts, ServeOptions};
use posed::telemetry::Telemetry;
use posed_models::body_pipeline::{BodyModelFiles, BodyPipeline};
use posed_models::hand_pipeline::{HandModelFiles, HandPipeline};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub fn files() -> HandModelFiles {
    HandModelFiles::from_dir(&posed_models::parity::fixtures_dir().join("hands")).unwrap()
}

/// CorridorKey's fixture network (run at its 128² size), hints from pushes,
/// previous alphas or a green-screen key.
pub fn matte_route() -> anyhow::Result<MatteRoute> {
    use posed::config::{FallbackHint, FloatType, MatteConfig, MatteFit};
    use posed_models::matte_pipeline::MatteModelFiles;
    let dir = posed_models::parity::fixtures_dir().join("matte");
    let files = MatteModelFiles::from_dir(&dir, 128).map_err(anyhow::Error::msg)?;
    let config = MatteConfig {
        img_size: 128,
        head_dtype: FloatType::Float32,
        fit: MatteFit::Resize,
        hint_from_previous: true,
        fallback_hint: FallbackHint::Chroma,
        ..MatteConfig::default()
    };
    Ok(posed::routes::matte::load(&files, &config)?.0)
}

pub struct Daemon {
    pub addr: std::net::SocketAddr,
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon; the models load once `release` fires.
    pub async fn start(
        options: ServeOptions,
        release: Option<std::sync::mpsc::Receiver<()>>,
    ) -> Daemon {
        Self::start_with(options, release, vec![]).await
    }

    pub async fn start_with(
        options: ServeOptions,
        release: Option<std::sync::mpsc::Receiver<()>>,
        sources: Vec<server::SourceSpec>,
    ) -> Daemon {
        Self::start_routes(options, release, sources, &[]).await
    }

    /// With `extra` routes (body, matte), their fixture-size networks load
    /// beside the hand route's.
    pub async fn start_routes(
        options: ServeOptions,
        release: Option<std::sync::mpsc::Receiver<()>>,
        sources: Vec<server::SourceSpec>,
        extra: &[proto::Route],
    ) -> Daemon {
        Self::start_limited(options, EngineLimits::default(), release, sources, extra).await
    }

    /// With the engine's limits set.
    pub async fn start_limited(
        options: ServeOptions,
        limits: EngineLimits,
        release: Option<std::sync::mpsc::Receiver<()>>,
        sources: Vec<server::SourceSpec>,
        extra: &[proto::Route],
    ) -> Daemon {
        let (body, matte) = (
            extra.contains(&proto::Route::Body),
            extra.contains(&proto::Route::Matte),
        );
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("posed.sock");
        let listeners = server::bind(
            Some("127.0.0.1:0".parse().unwrap()),
            Some(socket.clone()),
            0o600,
            false,
        )
        .await
        .unwrap();
        let addr = listeners.tcp.as_ref().unwrap().local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let files = files();
        let mut routes = vec![RouteId::Hands];
        routes.extend(extra.iter().filter_map(|r| RouteId::from_proto(*r as i32)));
        let engine = DaemonEngine::start(
            routes.clone(),
            move || {
                if let Some(r) = release {
                    let _ = r.recv();
                }
                let mut set = RouteSet::default().with(HandsRoute::new(
                    HandPipeline::load(&files)?.0,
                    posed::routes::hands::HandSettings::from_config(&Default::default()),
                    // A loaded test machine can take seconds between two
                    // frames of a stream: that must not end its tracks.
                    posed::tracking::hands::TrackSettings {
                        stale_after: Duration::from_secs(60),
                        ..Default::default()
                    },
                ));
                if body {
                    let dir = posed_models::parity::fixtures_dir().join("body");
                    let files = BodyModelFiles::from_dir(&dir).map_err(anyhow::Error::msg)?;
                    set.push(BodyRoute::new(BodyPipeline::load(&files, None)?.0));
                }
                if matte {
                    set.push(matte_route()?);
                }
                Ok(set)
            },
            tx,
            limits,
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let backend = server::Backend {
            engine,
            results: rx,
            telemetry: Arc::new(Telemetry::new()),
            facts: DaemonFacts::new("cpu", "test", routes),
        };
        let done = tokio::spawn(server::run(listeners, backend, sources, options, async {
            let _ = stopped.await;
        }));
        Daemon {
            addr,
            socket,
            stop: Some(stop),
            done,
            _dir: dir,
        }
    }

    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn client(&self) -> PoseServiceClient<Channel> {
        PoseServiceClient::new(self.channel().await)
    }

    /// Over the Unix socket, through the same client code `posed subscribe` uses.
    pub async fn unix_client(&self) -> PoseServiceClient<Channel> {
        posed::client::connect(&posed::client::Target::Unix(self.socket.clone()))
            .await
            .unwrap()
    }

    pub async fn unix_channel(&self) -> Channel {
        posed::client::channel(&posed::client::Target::Unix(self.socket.clone()))
            .await
            .unwrap()
    }

    pub async fn wait_serving(&self) {
        wait_serving_over(self.channel().await).await
    }

    /// Stops the daemon; returns how long the shutdown took.
    pub async fn stop(mut self) -> Duration {
        let t = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap().unwrap();
        t.elapsed()
    }
}

/// Until health over `channel` reports the daemon SERVING (within 60 s).
pub async fn wait_serving_over(channel: Channel) {
    let mut health = HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = health
            .check(HealthCheckRequest {
                service: server::SERVICE_NAME.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if s == ServingStatus::Serving as i32 {
            return;
        }
        assert!(Instant::now() < deadline, "never became SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, ((x + y) * 7) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

pub fn hand_box(x1: f32, y1: f32, x2: f32, y2: f32, right: bool) -> proto::HandBox {
    proto::HandBox {
        r#box: Some(proto::Box2D { x1, y1, x2, y2 }),
        side: if right {
            proto::HandSide::Right
        } else {
            proto::HandSide::Left
        } as i32,
    }
}

pub fn push(image: Vec<u8>, boxes: Vec<proto::HandBox>, wait: bool) -> proto::PushImageRequest {
    proto::PushImageRequest {
        image: Some(Image::Encoded(image)),
        hand_boxes: boxes,
        wait,
        ..Default::default()
    }
}

pub fn hands_of(e: &proto::Event) -> &[proto::HandPose] {
    match &e.payload {
        Some(proto::event::Payload::Hands(h)) => &h.hands,
        other => panic!("not a hands event: {other:?}"),
    }
}

pub async fn next(s: &mut tonic::Streaming<proto::Event>) -> proto::Event {
    tokio::time::timeout(Duration::from_secs(60), s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}
