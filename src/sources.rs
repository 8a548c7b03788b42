//! Frame sources besides pushed images: replay of a folder of images (or of
//! a recording) and a live camera. Each feeds the MLX thread exactly as
//! pushes do and reports its state for `GetStatus`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use posed_models::camera::Intrinsics;

use crate::decode::Rgb8;
use crate::engine::{EngineError, Frame, FrameJob, StreamId};
use crate::proto;
use crate::server::{DaemonEngine, Shutdown};

/// What `GetStatus` shows of a source.
pub struct SourceState {
    pub id: String,
    pub kind: &'static str,
    status: Mutex<(&'static str, String)>,
    pub frames: AtomicU64,
    /// Frames the source lost before the engine saw them (a camera's
    /// driver and mailbox drops, unreadable frames).
    pub dropped: AtomicU64,
}

impl SourceState {
    pub fn new(id: impl Into<String>, kind: &'static str) -> Arc<Self> {
        Arc::new(SourceState {
            id: id.into(),
            kind,
            status: Mutex::new(("starting", String::new())),
            frames: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
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
            dropped: self.dropped.load(Ordering::Relaxed),
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
    /// Sources record their own stages (the camera's queue and convert).
    pub(crate) telemetry: Arc<crate::telemetry::Telemetry>,
}

impl FrameSubmitter {
    pub fn frame(
        &self,
        source_id: &str,
        image: Rgb8,
        captured: SystemTime,
        received: Instant,
        intrinsics: Option<Intrinsics>,
        stream: StreamId,
    ) -> Arc<Frame> {
        Arc::new(Frame {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            source_id: source_id.to_owned(),
            client_frame_id: 0,
            captured,
            received,
            stream: Some(stream),
            width: image.width,
            height: image.height,
            rgb: image.data,
            intrinsics,
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
    /// The longest wait between two frames (pace `Original`).
    pub max_gap: Duration,
}

/// When each frame of a pass is due, from the start of the pass: recorded
/// capture times where the names carry them, else every `1/fps`; each step
/// at most `max_gap`, and never backwards (a recording's clock may jump, a
/// name may be corrupt).
fn replay_schedule(times: &[Option<u64>], fps: f64, max_gap: Duration) -> Vec<Duration> {
    let period = Duration::try_from_secs_f64(1.0 / fps).unwrap_or(max_gap);
    let mut due = Duration::ZERO;
    let mut previous: Option<u64> = None;
    times
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            if i > 0 {
                let step = match (previous, ns) {
                    (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
                    _ => period,
                };
                due = due.saturating_add(step.min(max_gap));
            }
            if ns.is_some() {
                previous = *ns;
            }
            due
        })
        .collect()
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
    image_limits: crate::decode::ImageLimits,
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
    let schedule = match cfg.pace {
        Pace::Original { fps } => {
            let times: Vec<Option<u64>> = files.iter().map(|(_, ns)| *ns).collect();
            replay_schedule(&times, fps, cfg.max_gap)
        }
        Pace::Fast => Vec::new(),
    };
    let mut unreadable = 0u64;
    loop {
        // Each pass is a stream of its own: the jump from the last image
        // back to the first is not motion.
        let stream = StreamId::new();
        let start = Instant::now();
        for (i, (path, _)) in files.iter().enumerate() {
            if let Some(due) = schedule.get(i) {
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
                crate::decode::decode(Some(&image), &image_limits)
                    .map_err(|s| s.message().to_owned())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let image = match decoded {
                Ok(i) => i,
                Err(e) => {
                    // A corrupt record is skipped, counted and named; the
                    // rest of the recording plays on.
                    tracing::warn!("replay: skipping {}: {e}", path.display());
                    unreadable += 1;
                    state.dropped.fetch_add(1, Ordering::Relaxed);
                    state.set(
                        "running",
                        format!(
                            "{}; {unreadable} unreadable, the last {}: {e}",
                            cfg.dir.display(),
                            path.display()
                        ),
                    );
                    continue;
                }
            };
            let frame = submit.frame(&state.id, image, SystemTime::now(), received, None, stream);
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

#[cfg(test)]
mod replay_tests {
    use super::*;

    /// A recording's timestamps set the pace, but a pause or a corrupt
    /// timestamp (2^63 ns) waits at most `max_gap`, a clock that runs
    /// backwards does not wait, and names without a time fall back to fps.
    #[test]
    fn the_replay_pace_follows_recorded_times_with_gaps_capped() {
        let ms = Duration::from_millis;
        let t0 = 1_700_000_000_000_000_000u64;
        let times = [
            Some(t0),
            Some(t0 + 33_000_000),
            Some(i64::MAX as u64),
            Some(t0 + 66_000_000),
            None,
            Some(t0 + 5_000_000_000),
        ];
        let due = replay_schedule(&times, 10.0, ms(2000));
        assert_eq!(due, [ms(0), ms(33), ms(2033), ms(2033), ms(2133), ms(4133)]);
        assert!(replay_schedule(&[], 30.0, ms(1)).is_empty());
    }
}

pub mod camera {
    //! The live camera source: `posed-capture`'s capture loop on a thread of
    //! its own, feeding converted frames to the MLX thread latest-wins.

    use std::ops::ControlFlow;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use posed_capture::fake::FakeBackend;
    use posed_capture::{
        Backend, CameraState, CapturedFrame, Observer, OpenOptions, PixelFormat, Session,
        SessionConfig, Size, Want,
    };

    use super::{FrameSubmitter, SourceState};
    use crate::decode::Rgb8;
    use crate::engine::{EngineError, StreamId};

    /// Telemetry stages of the camera: driver timestamp to dequeue, and
    /// driver layout to RGB.
    pub const QUEUE_STAGE: &str = "camera.queue";
    pub const CONVERT_STAGE: &str = "camera.convert";

    #[derive(Debug, Clone)]
    pub struct CameraConfig {
        /// A unique id, a position in `posed cameras`' list ("0") or part of
        /// the name; empty = the first camera.
        pub device: String,
        pub width: u32,
        pub height: u32,
        pub fps: u32,
        /// In order of preference; empty = the platform's
        /// [`posed_capture::DEFAULT_FORMATS`].
        pub formats: Vec<PixelFormat>,
        pub pin_frame_rate: bool,
        /// The camera's calibration at this size, for metric 3-D hands.
        pub intrinsics: Option<posed_models::camera::Intrinsics>,
    }

    impl CameraConfig {
        pub fn session(&self) -> SessionConfig {
            let formats = if self.formats.is_empty() {
                posed_capture::DEFAULT_FORMATS.to_vec()
            } else {
                self.formats.clone()
            };
            let want = Want {
                size: Size::new(self.width, self.height),
                fps: self.fps,
                formats,
            };
            let mut session = SessionConfig::new(self.device.clone(), want);
            session.options = OpenOptions {
                pin_frame_rate: self.pin_frame_rate,
                ..OpenOptions::default()
            };
            session
        }
    }

    /// Which cameras a camera source can reach.
    #[derive(Debug, Clone)]
    pub enum CameraBackend {
        /// AVFoundation on macOS, V4L2 on Linux.
        Platform,
        /// A scripted camera (tests, demos without a camera).
        Scripted(FakeBackend),
    }

    /// Runs until `stop` is set or the engine stops; never gives up on a
    /// missing device.
    pub fn run(
        backend: CameraBackend,
        cfg: CameraConfig,
        state: Arc<SourceState>,
        submit: FrameSubmitter,
        stop: Arc<AtomicBool>,
    ) {
        let mut feed = Feed {
            state,
            submit,
            intrinsics: cfg.intrinsics,
            stream: StreamId::new(),
        };
        match backend {
            CameraBackend::Platform => capture(platform_backend(), &cfg, &stop, &mut feed),
            CameraBackend::Scripted(fake) => capture(fake, &cfg, &stop, &mut feed),
        }
    }

    /// AVFoundation on macOS, V4L2 on Linux.
    pub fn platform_backend() -> posed_capture::PlatformBackend {
        posed_capture::PlatformBackend::new()
    }

    fn capture(backend: impl Backend, cfg: &CameraConfig, stop: &AtomicBool, feed: &mut Feed) {
        Session::new(backend, cfg.session()).run(stop, feed);
    }

    /// The capture loop's reports, turned into the source's status,
    /// telemetry and frames for the engine.
    struct Feed {
        state: Arc<SourceState>,
        submit: FrameSubmitter,
        intrinsics: Option<posed_models::camera::Intrinsics>,
        /// One stream for the source's whole run: a reconnect is a gap
        /// in it, which the routes' stale timeouts handle.
        stream: StreamId,
    }

    impl Observer for Feed {
        fn state(&mut self, state: CameraState, detail: &str) {
            self.state.set(state.name(), detail);
        }

        fn frame(&mut self, captured: CapturedFrame) -> ControlFlow<()> {
            let telemetry = &self.submit.telemetry;
            telemetry.record(QUEUE_STAGE, captured.captured.queue);
            telemetry.record(CONVERT_STAGE, captured.convert);
            let image = Rgb8 {
                width: captured.image.width,
                height: captured.image.height,
                data: captured.image.data,
            };
            // The frame's clock starts at capture, so `end_to_end` counts
            // the driver's queue and the conversion too.
            let frame = self.submit.frame(
                &self.state.id,
                image,
                captured.captured.system,
                captured.captured.instant,
                self.intrinsics,
                self.stream,
            );
            self.submit.record(&frame);
            match self.submit.offer(frame) {
                Ok(()) => {
                    self.state.frames.fetch_add(1, Ordering::Relaxed);
                    ControlFlow::Continue(())
                }
                Err(EngineError::Stopped) => ControlFlow::Break(()),
                Err(e) => {
                    tracing::warn!("camera: frame refused: {e}");
                    ControlFlow::Continue(())
                }
            }
        }

        fn dropped(&mut self, frames: u64) {
            self.state.dropped.fetch_add(frames, Ordering::Relaxed);
            self.submit.telemetry.record_dropped(QUEUE_STAGE, frames);
        }
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
