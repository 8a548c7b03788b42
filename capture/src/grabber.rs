//! The seam between the capture loop and a platform: a [`Backend`] finds
//! cameras and opens one; the [`Grabber`] it returns hands over frames.
//! AVFoundation, V4L2 and the tests' scripted fake all sit behind it.

use std::time::Duration;

use crate::frame::RawFrame;
use crate::mode::{Choice, Mode, NoMatch};

/// A camera as the platform lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Stable across reboots and replugs where the platform has one
    /// (AVFoundation's `uniqueID`, V4L2's `/dev/v4l/by-id` link), else the
    /// node path.
    pub id: String,
    /// What people call it ("FaceTime HD Camera").
    pub name: String,
    /// Where it is: "built-in", "external", "continuity", a `/dev` node.
    pub location: String,
    pub modes: Vec<Mode>,
}

/// Whether the OS lets this process use cameras.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    Granted,
    /// Nobody has asked the user yet.
    Undetermined,
    /// The user is being asked (macOS shows its dialog once per identity).
    Pending,
    /// The user or a policy said no; the text says how to turn it on.
    Denied(String),
    /// The OS will never ask for this binary; the text says what to fix.
    Misconfigured(String),
}

/// Settings that are not part of the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Keep the frame rate when the room is dark instead of letting
    /// auto-exposure stretch frames (V4L2 `exposure_dynamic_framerate = 0`;
    /// AVFoundation min = max frame duration).
    pub pin_frame_rate: bool,
    /// Driver buffers to queue (V4L2); two or three keep latency low.
    pub buffers: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            pin_frame_rate: true,
            buffers: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{}", not_found(query, found))]
    NotFound { query: String, found: Vec<String> },
    #[error(transparent)]
    NoMatch(#[from] NoMatch),
    #[error("{device:?} disconnected")]
    Disconnected { device: String },
    #[error("{device:?} is busy: {reason}")]
    Busy { device: String, reason: String },
    /// A platform call failed (an `NSException`'s reason, an errno).
    #[error("{call}: {reason}")]
    Platform { call: &'static str, reason: String },
    #[error("{device:?}: {reason}")]
    Io {
        device: String,
        reason: String,
        #[source]
        source: std::io::Error,
    },
}

fn not_found(query: &str, found: &[String]) -> String {
    match (query.is_empty(), found.is_empty()) {
        (_, true) => "no camera found".to_owned(),
        (true, false) => format!("no usable camera (found: {})", found.join(", ")),
        (false, false) => format!(
            "no camera named like {query:?} (found: {})",
            found.join(", ")
        ),
    }
}

/// A platform's cameras.
pub trait Backend {
    type Grabber: Grabber;

    /// Checks access to cameras and, with `request`, asks for it when the
    /// user has not been asked yet. Never blocks on the user: it reports
    /// `Pending` while the dialog is up (and `Undetermined` without
    /// `request`).
    fn permission(&mut self, request: bool) -> Permission;

    fn devices(&mut self) -> Result<Vec<Device>, CaptureError>;

    /// Opens `device` in `choice` (a mode from its own list) and starts it.
    fn open(
        &mut self,
        device: &Device,
        choice: &Choice,
        options: OpenOptions,
    ) -> Result<Self::Grabber, CaptureError>;
}

/// A running camera. Dropping it stops the camera and releases it.
pub trait Grabber {
    /// Waits at most `timeout` for a frame and lends the newest one to
    /// `use_frame`; older frames that arrived meanwhile are dropped (and
    /// counted). `Ok(false)` when no frame came in time.
    fn next_frame(
        &mut self,
        timeout: Duration,
        use_frame: &mut dyn FnMut(&RawFrame<'_>),
    ) -> Result<bool, CaptureError>;

    /// Frames dropped since open, by the driver or for being superseded.
    fn dropped(&self) -> u64;
}

/// Finds the device the config names: its `id` exactly, else a position in
/// the list ("0"), else a case-insensitive part of its name. An empty query
/// takes the first camera.
pub fn select<'a>(devices: &'a [Device], query: &str) -> Result<&'a Device, CaptureError> {
    let query = query.trim();
    let by_id = || devices.iter().find(|d| d.id == query);
    let by_index = || query.parse::<usize>().ok().and_then(|i| devices.get(i));
    let by_name = || {
        let wanted = query.to_lowercase();
        devices
            .iter()
            .find(|d| d.name.to_lowercase().contains(&wanted))
    };
    let found = if query.is_empty() {
        devices.first()
    } else {
        by_id().or_else(by_index).or_else(by_name)
    };
    found.ok_or_else(|| CaptureError::NotFound {
        query: query.to_owned(),
        found: devices.iter().map(|d| d.name.clone()).collect(),
    })
}
