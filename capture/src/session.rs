//! The capture thread's loop: permission → open → stream, and back through
//! a backoff to open whenever the camera stalls, goes away or fails.
//!
//! It never gives up (a gesture UI starts before the camera is plugged in)
//! and never blocks longer than [`SessionConfig::poll`] between looks at
//! the stop flag, so the daemon's shutdown is not held up by a camera.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::clock::{captured_at, Captured};
use crate::convert::to_rgb;
use crate::frame::RgbImage;
use crate::grabber::{select, Backend, CaptureError, Grabber, OpenOptions, Permission};
use crate::mode::{negotiate, Want};

/// What the capture loop is doing, as `GetStatus` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraState {
    /// The OS is asking the user whether posed may use the camera.
    WaitingPermission,
    PermissionDenied,
    /// The OS will never ask (the binary lacks its usage description).
    Misconfigured,
    Opening,
    Running,
    /// Frames stopped coming; the camera is being reopened.
    Stalled,
    /// Opening failed or the camera went away; trying again after a pause.
    Reconnecting,
    Stopped,
}

impl CameraState {
    pub fn name(self) -> &'static str {
        match self {
            CameraState::WaitingPermission => "waiting_permission",
            CameraState::PermissionDenied => "permission_denied",
            CameraState::Misconfigured => "misconfigured",
            CameraState::Opening => "opening",
            CameraState::Running => "running",
            CameraState::Stalled => "stalled",
            CameraState::Reconnecting => "reconnecting",
            CameraState::Stopped => "stopped",
        }
    }
}

/// A frame ready for the daemon.
#[derive(Debug)]
pub struct CapturedFrame {
    pub image: RgbImage,
    pub captured: Captured,
    /// Driver frame to RGB.
    pub convert: Duration,
    pub sequence: u64,
}

/// Where the loop reports to (the daemon's source state, a test's log).
pub trait Observer {
    fn state(&mut self, state: CameraState, detail: &str);
    /// A converted frame; `Break` ends the capture (nobody will take more).
    fn frame(&mut self, frame: CapturedFrame) -> ControlFlow<()>;
    /// `frames` more were lost: dropped by the driver, superseded in the
    /// mailbox, or unreadable.
    fn dropped(&mut self, frames: u64);
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The camera's id, position or part of its name; empty = the first.
    pub device: String,
    pub want: Want,
    pub options: OpenOptions,
    /// The longest wait for a frame, and between looks at the stop flag.
    pub poll: Duration,
    /// A stall is no frame for max(this, five frame periods).
    pub stall_floor: Duration,
    /// The wait for the first frame after opening, which can take seconds
    /// (a Continuity Camera waking, a UVC camera settling its exposure).
    pub first_frame: Duration,
    /// The first pause before reopening; it doubles up to `backoff_max` and
    /// starts over after a session that delivered frames.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often to look again while permission is denied or misconfigured.
    pub permission_recheck: Duration,
}

impl SessionConfig {
    pub fn new(device: impl Into<String>, want: Want) -> SessionConfig {
        SessionConfig {
            device: device.into(),
            want,
            options: OpenOptions::default(),
            poll: Duration::from_millis(100),
            stall_floor: Duration::from_secs(1),
            first_frame: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            permission_recheck: Duration::from_secs(5),
        }
    }
}

/// How one open-and-stream attempt ended.
enum End {
    /// The stop flag, or the observer wanted no more.
    Stopped,
    Stalled(String),
    Failed(CaptureError),
    Panicked(String),
}

pub struct Session<B: Backend> {
    backend: B,
    config: SessionConfig,
}

impl<B: Backend> Session<B> {
    pub fn new(backend: B, config: SessionConfig) -> Session<B> {
        Session { backend, config }
    }

    /// Captures until `stop` is set or the observer breaks.
    pub fn run(&mut self, stop: &AtomicBool, observer: &mut dyn Observer) {
        let mut backoff = self.config.backoff_min;
        let mut attempt = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let recheck = self.config.permission_recheck;
            match self.backend.permission(true) {
                Permission::Granted => {}
                Permission::Pending | Permission::Undetermined => {
                    observer.state(
                        CameraState::WaitingPermission,
                        "macOS is asking whether posed may use the camera; answer the dialog",
                    );
                    self.wait(stop, self.config.poll);
                    continue;
                }
                Permission::Denied(fix) => {
                    observer.state(CameraState::PermissionDenied, &fix);
                    self.wait(stop, recheck);
                    continue;
                }
                Permission::Misconfigured(fix) => {
                    observer.state(CameraState::Misconfigured, &fix);
                    self.wait(stop, recheck);
                    continue;
                }
            }
            attempt = attempt.saturating_add(1);
            let mut delivered = false;
            let end = catch_unwind(AssertUnwindSafe(|| {
                self.stream(stop, observer, &mut delivered)
            }))
            .unwrap_or_else(|panic| End::Panicked(panic_message(&*panic)));
            if delivered {
                backoff = self.config.backoff_min;
                attempt = 1;
            }
            let next = format!("attempt {attempt}, next in {}", Secs(backoff));
            match end {
                End::Stopped => break,
                End::Stalled(what) => {
                    let detail = format!("{what}; reopening ({next})");
                    tracing::warn!("camera: {detail}");
                    observer.state(CameraState::Stalled, &detail);
                }
                End::Failed(e) => {
                    let detail = format!("{e}; retrying ({next})");
                    tracing::warn!("camera: {detail}");
                    observer.state(CameraState::Reconnecting, &detail);
                }
                End::Panicked(why) => {
                    let detail = format!("capture panicked: {why}; retrying ({next})");
                    tracing::error!("camera: {detail}");
                    observer.state(CameraState::Reconnecting, &detail);
                }
            }
            self.wait(stop, backoff);
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
        observer.state(CameraState::Stopped, "daemon shutting down");
    }

    /// Open the configured camera and deliver frames until something ends it.
    fn stream(
        &mut self,
        stop: &AtomicBool,
        observer: &mut dyn Observer,
        delivered: &mut bool,
    ) -> End {
        let config = &self.config;
        observer.state(CameraState::Opening, &config.device);
        let devices = match self.backend.devices() {
            Ok(d) => d,
            Err(e) => return End::Failed(e),
        };
        let device = match select(&devices, &config.device) {
            Ok(d) => d,
            Err(e) => return End::Failed(e),
        };
        let choice = match negotiate(&device.name, &device.modes, &config.want) {
            Ok(c) => c,
            Err(e) => return End::Failed(e.into()),
        };
        let mut grabber = match self.backend.open(device, &choice, config.options) {
            Ok(g) => g,
            Err(e) => return End::Failed(e),
        };
        let running = format!("{} {choice}", device.name);
        tracing::info!("camera: {running}");
        observer.state(CameraState::Running, &running);

        let stall_after = config
            .stall_floor
            .max(choice.interval.period().min(Duration::from_secs(1)) * 5);
        let mut last_frame = Instant::now();
        let mut reported_drops = 0;
        let mut unreadable_logged = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return End::Stopped;
            }
            let mut converted = None;
            let got = grabber.next_frame(config.poll, &mut |raw| {
                let (now, now_system) = (Instant::now(), SystemTime::now());
                let captured = captured_at(raw.driver_time, raw.driver_now, now, now_system);
                let image = to_rgb(raw);
                converted = Some(image.map(|image| CapturedFrame {
                    image,
                    captured,
                    convert: now.elapsed(),
                    sequence: raw.sequence,
                }));
            });
            if let Err(e) = got {
                return End::Failed(e);
            }
            let drops = grabber.dropped();
            if drops > reported_drops {
                observer.dropped(drops - reported_drops);
                reported_drops = drops;
            }
            match converted {
                Some(Ok(frame)) => {
                    *delivered = true;
                    last_frame = Instant::now();
                    if observer.frame(frame).is_break() {
                        return End::Stopped;
                    }
                }
                Some(Err(e)) => {
                    // A corrupt frame is a lost frame; if they never stop
                    // coming the stall watchdog reopens the camera.
                    if !unreadable_logged {
                        tracing::warn!("camera: skipping an unreadable frame: {e}");
                        unreadable_logged = true;
                    }
                    observer.dropped(1);
                }
                None => {}
            }
            let silent = last_frame.elapsed();
            let limit = if *delivered {
                stall_after
            } else {
                stall_after.max(config.first_frame)
            };
            if silent >= limit {
                return End::Stalled(format!(
                    "no frame for {} from {:?}",
                    Secs(silent),
                    device.name
                ));
            }
        }
    }

    /// Sleeps `total`, looking at `stop` every poll interval.
    fn wait(&self, stop: &AtomicBool, total: Duration) {
        let until = Instant::now() + total;
        while !stop.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(self.config.poll));
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// A duration as "2.0 s".
struct Secs(Duration);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} s", self.0.as_secs_f64())
    }
}
