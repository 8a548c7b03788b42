//! Frame sources besides pushed images: replay of a folder of images (or of
//! a recording) and, with the `camera` feature, a live camera. Each feeds the
//! MLX thread exactly as pushes do and reports its state for `GetStatus`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use crate::decode::Rgb8;
use crate::engine::{EngineError, Frame, FrameJob};
use crate::proto;
use crate::server::{DaemonEngine, Shutdown};

/// What `GetStatus` shows of a source.
pub struct SourceState {
    pub id: String,
    pub kind: &'static str,
    status: Mutex<(&'static str, String)>,
    pub frames: AtomicU64,
}

impl SourceState {
    pub fn new(id: impl Into<String>, kind: &'static str) -> Arc<Self> {
        Arc::new(SourceState {
            id: id.into(),
            kind,
            status: Mutex::new(("starting", String::new())),
            frames: AtomicU64::new(0),
        })
    }

    pub fn set(&self, state: &'static str, detail: impl Into<String>) {
        *self.status.lock().expect("source state lock") = (state, detail.into());
    }

    pub fn state(&self) -> (&'static str, String) {
        self.status.lock().expect("source state lock").clone()
    }

    pub fn to_proto(&self) -> proto::SourceStatus {
        let (state, detail) = self.state();
        proto::SourceStatus {
            id: self.id.clone(),
            kind: self.kind.into(),
            state: state.into(),
            frames: self.frames.load(Ordering::Relaxed),
            dropped: 0,
            detail,
        }
    }
}

/// Hands decoded frames to the MLX thread with daemon-wide frame ids.
#[derive(Clone)]
pub struct FrameSubmitter {
    pub(crate) engine: Arc<DaemonEngine>,
    pub(crate) next_id: Arc<AtomicU64>,
    /// Live frames (camera) are recorded when recording is on.
    pub(crate) recorder: Option<crate::recording::Recorder>,
}

impl FrameSubmitter {
    pub fn frame(
        &self,
        source_id: &str,
        image: Rgb8,
        captured: SystemTime,
        received: Instant,
    ) -> Arc<Frame> {
        Arc::new(Frame {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            source_id: source_id.to_owned(),
            client_frame_id: 0,
            captured,
            received,
            stream: true,
            width: image.width,
            height: image.height,
            rgb: image.data,
        })
    }

    /// Keeps a copy of a live frame if recording is on.
    pub fn record(&self, frame: &Arc<Frame>) {
        if let Some(r) = &self.recorder {
            r.record(frame);
        }
    }

    /// Latest-wins: a frame still waiting when the next comes is dropped.
    pub fn offer(&self, frame: Arc<Frame>) -> Result<(), EngineError> {
        self.engine.submit(FrameJob::new(frame, None))
    }

    /// Waits until the frame has been run (for replay as fast as possible).
    pub async fn run(&self, frame: Arc<Frame>) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.engine.submit(FrameJob::new(frame, Some(tx)))?;
        rx.await.map_err(|_| EngineError::Stopped)?.map(|_| ())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pace {
    /// As recorded (timestamps in `<seq>_<capture_ns>.<ext>` names) or at
    /// `fps`: frames are offered latest-wins, like a camera.
    Original { fps: f64 },
    /// Each frame runs to completion before the next is read.
    Fast,
}

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub dir: PathBuf,
    pub pace: Pace,
    pub repeat: bool,
}

/// Images of a folder in name order, with their recorded capture time if the
/// name carries one.
pub fn replay_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, Option<u64>)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files
        .into_iter()
        .map(|p| {
            let ns = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.split_once('_'))
                .and_then(|(_, ns)| ns.parse().ok());
            (p, ns)
        })
        .collect())
}

pub async fn run_replay(
    cfg: ReplayConfig,
    state: Arc<SourceState>,
    submit: FrameSubmitter,
    shutdown: Shutdown,
    max_pixels: u64,
) {
    let files = match replay_files(&cfg.dir) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            return state.set(
                "finished",
                format!("no PNG or JPEG images in {}", cfg.dir.display()),
            )
        }
        Err(e) => return state.set("stopped", format!("{}: {e}", cfg.dir.display())),
    };
    state.set("running", cfg.dir.display().to_string());
    loop {
        let start = Instant::now();
        let first_ns = files.iter().find_map(|(_, ns)| *ns);
        for (i, (path, ns)) in files.iter().enumerate() {
            if let Pace::Original { fps } = cfg.pace {
                let due = match (ns, first_ns) {
                    (Some(ns), Some(first)) => Duration::from_nanos(ns.saturating_sub(first)),
                    _ => Duration::from_secs_f64(i as f64 / fps.max(0.001)),
                };
                let wait = due.saturating_sub(start.elapsed());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return state.set("stopped", "daemon shutting down"),
                }
            }
            if shutdown.is_shutdown() {
                return state.set("stopped", "daemon shutting down");
            }
            let received = Instant::now();
            let path_for_decode = path.clone();
            let decoded = tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(&path_for_decode).map_err(|e| e.to_string())?;
                let image = proto::push_image_request::Image::Encoded(bytes);
                crate::decode::decode(Some(&image), max_pixels).map_err(|s| s.message().to_owned())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let image = match decoded {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!("replay: skipping {}: {e}", path.display());
                    continue;
                }
            };
            let frame = submit.frame(&state.id, image, SystemTime::now(), received);
            let sent = match cfg.pace {
                Pace::Fast => submit.run(frame).await,
                Pace::Original { .. } => submit.offer(frame),
            };
            match sent {
                Ok(()) => {
                    state.frames.fetch_add(1, Ordering::Relaxed);
                }
                Err(EngineError::Stopped) => return state.set("stopped", "engine stopped"),
                Err(e) => tracing::warn!("replay: {}: {e}", path.display()),
            }
        }
        if !cfg.repeat {
            return state.set("finished", format!("{} images", files.len()));
        }
    }
}

#[cfg(feature = "camera")]
pub mod camera {
    //! Live capture through nokhwa (AVFoundation on macOS, V4L2 on Linux) on
    //! a thread of its own, reconnecting with backoff when the device goes.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};

    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::{
        ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
        Resolution,
    };

    use super::{FrameSubmitter, SourceState};
    use crate::decode::Rgb8;

    #[derive(Debug, Clone)]
    pub struct CameraConfig {
        /// An index ("0") or part of the device's name.
        pub device: String,
        pub width: u32,
        pub height: u32,
        pub fps: u32,
    }

    fn resolve(device: &str) -> Result<CameraIndex, String> {
        if let Ok(i) = device.parse::<u32>() {
            return Ok(CameraIndex::Index(i));
        }
        let cameras = nokhwa::query(ApiBackend::Auto).map_err(|e| e.to_string())?;
        let wanted = device.to_lowercase();
        cameras
            .iter()
            .find(|c| c.human_name().to_lowercase().contains(&wanted))
            .map(|c| c.index().clone())
            .ok_or_else(|| {
                let names: Vec<String> = cameras.iter().map(|c| c.human_name()).collect();
                format!("no camera named like {device:?} (found: {names:?})")
            })
    }

    /// Runs until `stop` is set; never gives up on a missing device.
    pub fn run(
        cfg: CameraConfig,
        state: Arc<SourceState>,
        submit: FrameSubmitter,
        stop: Arc<AtomicBool>,
    ) {
        let mut backoff = Duration::from_millis(500);
        while !stop.load(Ordering::Relaxed) {
            match capture(&cfg, &state, &submit, &stop) {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!("camera {}: {e}; retrying in {backoff:?}", cfg.device);
                    state.set("reconnecting", e);
                }
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        state.set("stopped", "daemon shutting down");
    }

    fn capture(
        cfg: &CameraConfig,
        state: &SourceState,
        submit: &FrameSubmitter,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let index = resolve(&cfg.device)?;
        let format =
            RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(CameraFormat::new(
                Resolution::new(cfg.width, cfg.height),
                FrameFormat::MJPEG,
                cfg.fps,
            )));
        let mut camera = nokhwa::Camera::new(index, format).map_err(|e| e.to_string())?;
        camera.open_stream().map_err(|e| e.to_string())?;
        let info = camera.info().human_name();
        state.set("running", info);
        while !stop.load(Ordering::Relaxed) {
            let buffer = camera.frame().map_err(|e| e.to_string())?;
            let received = Instant::now();
            let rgb = buffer
                .decode_image::<RgbFormat>()
                .map_err(|e| e.to_string())?;
            let (width, height) = (rgb.width() as usize, rgb.height() as usize);
            let image = Rgb8 {
                width,
                height,
                data: rgb.into_raw(),
            };
            let frame = submit.frame(&state.id, image, SystemTime::now(), received);
            submit.record(&frame);
            if submit.offer(frame).is_err() {
                break;
            }
            state
                .frames
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = camera.stop_stream();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_lists_images_in_order_with_recorded_times() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "000002_2000000.png",
            "000001_1000000.jpg",
            "notes.txt",
            "b.JPEG",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let files = replay_files(dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|(p, ns)| (p.file_name().unwrap().to_str().unwrap().to_owned(), *ns))
            .collect();
        assert_eq!(
            names,
            [
                ("000001_1000000.jpg".to_owned(), Some(1_000_000)),
                ("000002_2000000.png".to_owned(), Some(2_000_000)),
                ("b.JPEG".to_owned(), None),
            ]
        );
    }
}
