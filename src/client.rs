//! `posed subscribe` and `posed push`: command-line clients of a running
//! daemon, over TCP or a Unix socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tonic::transport::{Channel, Endpoint};

use crate::proto::pose_service_client::PoseServiceClient;
use crate::proto::{self, push_image_request::Image};

/// Where the daemon listens: `http://host:port` or a Unix socket path.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

pub async fn connect(target: &Target) -> Result<PoseServiceClient<Channel>> {
    Ok(PoseServiceClient::new(channel(target).await?))
}

/// A connected channel, for the pose service or the health service beside it.
pub async fn channel(target: &Target) -> Result<Channel> {
    Ok(match target {
        Target::Tcp(addr) => {
            let url = if addr.contains("://") {
                addr.clone()
            } else {
                format!("http://{addr}")
            };
            Endpoint::from_shared(url.clone())?
                .connect_timeout(Duration::from_secs(3))
                .connect()
                .await
                .with_context(|| format!("cannot reach posed at {url}"))?
        }
        Target::Unix(path) => {
            let p = path.clone();
            Endpoint::try_from("http://[::]:50151")?
                .connect_with_connector(tower::service_fn(move |_| {
                    let p = p.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(p).await?,
                        ))
                    }
                }))
                .await
                .with_context(|| format!("cannot reach posed at unix:{}", path.display()))?
        }
    })
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// One line per event.
pub fn describe(e: &proto::Event) -> String {
    let latency = if e.capture_unix_ns > 0 && e.emit_unix_ns >= e.capture_unix_ns {
        format!(
            "{:.1} ms",
            (e.emit_unix_ns - e.capture_unix_ns) as f64 / 1e6
        )
    } else {
        "-".into()
    };
    let what = match &e.payload {
        Some(proto::event::Payload::Hands(h)) => {
            let hands: Vec<String> = h
                .hands
                .iter()
                .map(|p| {
                    let side = if p.side == proto::HandSide::Left as i32 {
                        "L"
                    } else {
                        "R"
                    };
                    let t = &p.camera_translation;
                    let z = t.get(2).copied().unwrap_or(0.0);
                    format!("#{} {side} {:.2} z={z:.2}m", p.track_id, p.confidence)
                })
                .collect();
            format!("{} hand(s) [{}]", h.hands.len(), hands.join(", "))
        }
        Some(proto::event::Payload::Bodies(b)) => {
            let people: Vec<String> = b
                .people
                .iter()
                .map(|p| {
                    // Keypoints above the demo's display threshold.
                    let seen = p.keypoint_scores.iter().filter(|&&s| s > 0.3).count();
                    format!(
                        "#{} {:.2} {seen}/{} kp",
                        p.track_id,
                        p.score,
                        p.keypoint_scores.len()
                    )
                })
                .collect();
            format!("{} person(s) [{}]", b.people.len(), people.join(", "))
        }
        Some(proto::event::Payload::Matte(m)) => {
            let hint = proto::MatteHintSource::try_from(m.hint_source)
                .map(|h| {
                    h.as_str_name()
                        .trim_start_matches("MATTE_HINT_SOURCE_")
                        .to_lowercase()
                })
                .unwrap_or_default();
            let mut line = format!(
                "matte {}x{} coverage {:.3} hint {hint} alpha {} B",
                m.width,
                m.height,
                m.coverage,
                m.alpha.len()
            );
            if !m.composite.is_empty() {
                line.push_str(&format!(" composite {} B", m.composite.len()));
            }
            line
        }
        Some(proto::event::Payload::Error(err)) => format!("error {}: {}", err.code, err.message),
        Some(proto::event::Payload::Skipped(_)) => "skipped (a newer frame replaced it)".into(),
        None => "empty".into(),
    };
    let dropped = if e.dropped_frames + e.dropped_for_subscriber > 0 {
        format!(" dropped {}+{}", e.dropped_frames, e.dropped_for_subscriber)
    } else {
        String::new()
    };
    format!(
        "frame {} {} {}x{} {what} e2e {latency}{dropped}",
        e.frame_id, e.source_id, e.image_width, e.image_height
    )
}

/// The daemon's per-stage table.
pub fn latency_table(t: &proto::Telemetry) -> String {
    let mut out = format!(
        "{:<22} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "stage", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "dropped"
    );
    for s in &t.stages {
        let ms = |ns: u64| ns as f64 / 1e6;
        out.push_str(&format!(
            "{:<22} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}\n",
            s.name,
            s.count,
            ms(s.p50_ns),
            ms(s.p90_ns),
            ms(s.p99_ns),
            ms(s.max_ns),
            s.dropped
        ));
    }
    out
}

pub struct SubscribeArgs {
    pub routes: Vec<proto::Route>,
    pub sources: Vec<String>,
    pub vertices: bool,
    pub max_rate_hz: f32,
    /// Stop after this many events (0 = never).
    pub count: usize,
    /// Stop after this long (None = never).
    pub duration: Option<Duration>,
}

/// The daemon in one line (loud about synthetic weights).
pub fn status_line(s: &proto::Status) -> String {
    let models: Vec<String> = s
        .models
        .iter()
        .map(|m| {
            let mut tags = vec![m.dtype.clone()];
            if m.synthetic {
                tags.push("SYNTHETIC".into());
            }
            if !m.ready {
                tags.push(if m.error.is_empty() {
                    "loading".into()
                } else {
                    format!("error: {}", m.error)
                });
            }
            format!("{} ({})", m.name, tags.join(", "))
        })
        .collect();
    let mut line = format!(
        "posed {} on {}, mlx {}, {} subscriber(s); models: {}",
        s.version,
        s.device,
        s.mlx_version,
        s.subscribers,
        models.join(", ")
    );
    if s.synthetic_weights {
        line.push_str(" -- SYNTHETIC (random) WEIGHTS: poses are meaningless");
    }
    line
}

pub async fn subscribe(target: &Target, args: SubscribeArgs) -> Result<()> {
    let mut client = connect(target).await?;
    let mut synthetic = print_status(&mut client).await?;
    let mut stream = client
        .subscribe(proto::SubscribeRequest {
            routes: args.routes.iter().map(|r| *r as i32).collect(),
            source_ids: args.sources,
            include_vertices: args.vertices,
            max_rate_hz: args.max_rate_hz,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let started = Instant::now();
    let mut table_at = Instant::now() + Duration::from_secs(2);
    let mut seen = 0usize;
    loop {
        let remaining = args
            .duration
            .map(|d| d.saturating_sub(started.elapsed()))
            .unwrap_or(Duration::from_secs(3600));
        let next = match tokio::time::timeout(remaining, stream.message()).await {
            Err(_) => break,
            // A daemon that shuts down ends the stream this way.
            Ok(Err(s)) if matches!(s.code(), tonic::Code::Cancelled | tonic::Code::Unavailable) => {
                println!("the daemon ended the stream ({})", s.message());
                println!("{seen} events in {:.1} s", started.elapsed().as_secs_f64());
                return Ok(());
            }
            Ok(m) => m.map_err(status_error)?,
        };
        let Some(event) = next else { break };
        seen += 1;
        if seen == 1 {
            // The status at connect time may predate loading; now the
            // models have been read, say again what they are.
            synthetic = print_status(&mut client).await?;
        }
        let tag = if synthetic {
            " [SYNTHETIC WEIGHTS]"
        } else {
            ""
        };
        println!("{}{tag}", describe(&event));
        if Instant::now() >= table_at {
            print_table(&mut client).await?;
            synthetic = print_status(&mut client).await?;
            table_at = Instant::now() + Duration::from_secs(2);
        }
        if args.count > 0 && seen >= args.count {
            break;
        }
    }
    print_table(&mut client).await?;
    println!("{seen} events in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Prints the status line; true when the daemon runs synthetic weights.
async fn print_status(client: &mut PoseServiceClient<Channel>) -> Result<bool> {
    let status = client
        .get_status(proto::GetStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{}", status_line(&status));
    Ok(status.synthetic_weights)
}

async fn print_table(client: &mut PoseServiceClient<Channel>) -> Result<()> {
    let t = client
        .get_telemetry(proto::GetTelemetryRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    print!("{}", latency_table(&t));
    Ok(())
}

pub struct PushArgs {
    pub files: Vec<PathBuf>,
    pub routes: Vec<proto::Route>,
    pub vertices: bool,
    /// A grey PNG/JPEG matte hint sent with every file.
    pub matte_hint: Option<PathBuf>,
    /// Write each matte's alpha, foreground and composite PNGs here.
    pub matte_out: Option<PathBuf>,
}

/// Pushes each file (JPEG or PNG) and prints the event computed for it.
pub async fn push(target: &Target, args: &PushArgs) -> Result<()> {
    let mut client = connect(target).await?;
    let hint = match &args.matte_hint {
        Some(p) => read(p)?,
        None => Vec::new(),
    };
    if let Some(dir) = &args.matte_out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for file in &args.files {
        let bytes = read(file)?;
        let reply = client
            .push_image(proto::PushImageRequest {
                image: Some(Image::Encoded(bytes)),
                routes: args.routes.iter().map(|&r| r as i32).collect(),
                wait: true,
                include_vertices: args.vertices,
                include_matte_images: args.matte_out.is_some(),
                matte_hint: hint.clone(),
                capture_unix_ns: crate::events::unix_ns(SystemTime::now()),
                source_id: "cli".into(),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}: {}", file.display(), status_error(s)))?
            .into_inner();
        for e in &reply.events {
            println!("{}: {}", file.display(), describe(e));
            if let (Some(dir), Some(proto::event::Payload::Matte(m))) =
                (&args.matte_out, &e.payload)
            {
                save_matte(dir, file, m)?;
            }
        }
    }
    Ok(())
}

/// `<stem>.alpha.png`, `<stem>.fg.png`, `<stem>.rgba.png` in `dir` (PNG
/// events as they are; raw ones encoded here).
fn save_matte(dir: &Path, source: &Path, m: &proto::Matte) -> Result<()> {
    let stem = source.file_stem().unwrap_or_default().to_string_lossy();
    let (w, h) = (m.width as usize, m.height as usize);
    let raw = m.encoding == proto::ImageEncoding::Raw as i32;
    for (suffix, data, channels) in [
        ("alpha", &m.alpha, 1),
        ("fg", &m.foreground, 3),
        ("rgba", &m.composite, 4),
    ] {
        if data.is_empty() {
            continue;
        }
        let png = if raw {
            crate::decode::encode_png(data, w, h, channels)
        } else {
            data.to_vec()
        };
        let path = dir.join(format!("{stem}.{suffix}.png"));
        std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn read(file: &Path) -> Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}
