//! Linux capture through V4L2: list `/dev/video*` capture nodes with their
//! modes, open one in exactly the chosen mode, and stream from two or three
//! mmap'd buffers, handing over only the newest frame.
//!
//! - [`modes`]: the driver's format lists as plain data, to [`Mode`]s.
//! - `sys`: the ioctls, on a descriptor we own (no `v4l::Device`: see there).
//! - `stream`: buffers and a teardown that cannot panic.
//! - `grab`: [`V4lGrabber`], the frame loop.

mod grab;
pub mod modes;
mod stream;
mod sys;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use ::v4l::v4l_sys::{V4L2_CAP_STREAMING, V4L2_CAP_VIDEO_CAPTURE, V4L2_CID_EXPOSURE_AUTO_PRIORITY};

pub use grab::V4lGrabber;

use crate::format::PixelFormat;
use crate::grabber::{Backend, CaptureError, Device, OpenOptions, Permission};
use crate::mode::{Choice, Interval, Mode, FPS_TOLERANCE};
use grab::Layout;
use modes::{FormatList, SizeList};
use stream::Stream;
use sys::{Node, PixFormat};

/// The formats to accept on Linux, best first (a config's `formats` list
/// overrides it): YUYV needs no decoding, so where the camera sends it at
/// the size and rate asked it costs least; MJPEG is how USB 2 cameras carry
/// 720p30 and up (raw 4:2:2 at 1280x720x30 is 55 MB/s, past what USB 2
/// moves); NV12 is what ISP and CSI cameras give.
pub const DEFAULT_FORMATS: [PixelFormat; 3] =
    [PixelFormat::Yuyv, PixelFormat::Mjpeg, PixelFormat::Nv12];

const DEV: &str = "/dev";
const BY_ID: &str = "/dev/v4l/by-id";

/// Cameras through V4L2. Holds nothing: every call looks at `/dev` afresh.
#[derive(Debug, Default)]
pub struct V4lBackend;

impl V4lBackend {
    pub fn new() -> V4lBackend {
        V4lBackend
    }
}

impl Backend for V4lBackend {
    type Grabber = V4lGrabber;

    /// Linux has no per-app camera consent; node permissions show up as
    /// errors from `devices` and `open`.
    fn permission(&mut self, _request: bool) -> Permission {
        Permission::Granted
    }

    fn devices(&mut self) -> Result<Vec<Device>, CaptureError> {
        let nodes = video_nodes().map_err(|e| CaptureError::Io {
            device: DEV.to_owned(),
            reason: format!("listing {DEV}: {e}"),
            source: e,
        })?;
        let ids = by_id_links();
        let mut devices = Vec::new();
        let mut denied = Vec::new();
        for (_, path) in &nodes {
            match describe(path, &ids) {
                Ok(Some(device)) => devices.push(device),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!("v4l2: skipping {}: {e}", path.display());
                    if e.kind() == io::ErrorKind::PermissionDenied {
                        denied.push(path);
                    }
                }
            }
        }
        // Nothing usable, and a node we may not open is likely the camera.
        match denied.first() {
            Some(first) if devices.is_empty() => Err(permission_denied(first)),
            _ => Ok(devices),
        }
    }

    fn open(
        &mut self,
        device: &Device,
        choice: &Choice,
        options: OpenOptions,
    ) -> Result<V4lGrabber, CaptureError> {
        let name = device.name.clone();
        let setup = |call: &str, e: io::Error| setup_error(&name, call, e);
        // The by-id link follows the camera to whatever node it has now.
        let path = Path::new(&device.id);
        let node = Node::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => permission_denied(Path::new(&device.location)),
            io::ErrorKind::NotFound => CaptureError::Disconnected {
                device: name.clone(),
            },
            _ => setup("open", e),
        })?;
        let caps = node
            .capabilities()
            .map_err(|e| setup("VIDIOC_QUERYCAP", e))?;
        if !is_capture(caps.flags) {
            return Err(CaptureError::Platform {
                call: "VIDIOC_QUERYCAP",
                reason: format!("{} is no longer a capture node", path.display()),
            });
        }
        let layout = set_format(&node, &name, choice)?;
        set_interval(&node, &name, choice.interval)?;
        if options.pin_frame_rate {
            pin_frame_rate(&node, &name);
        }
        let stream = Stream::start(node, options.buffers.clamp(2, 3))
            .map_err(|e| setup("starting the stream", e))?;
        tracing::debug!(
            "v4l2: {name:?} streaming {} {}x{} from {} buffers",
            choice.fourcc,
            layout.width,
            layout.height,
            stream.buffer_count()
        );
        Ok(V4lGrabber {
            stream,
            layout,
            device: name,
            dropped: 0,
            last_sequence: None,
        })
    }
}

/// `/dev/videoN` paths, by `N`.
fn video_nodes() -> io::Result<Vec<(u32, PathBuf)>> {
    let mut nodes = Vec::new();
    for entry in std::fs::read_dir(DEV)? {
        let entry = entry?;
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix("video"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(number) = number {
            nodes.push((number, entry.path()));
        }
    }
    nodes.sort();
    Ok(nodes)
}

/// Node path → its `/dev/v4l/by-id` link (the first by name when several).
fn by_id_links() -> HashMap<PathBuf, PathBuf> {
    let Ok(entries) = std::fs::read_dir(BY_ID) else {
        return HashMap::new();
    };
    let mut links: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    links.sort();
    let mut ids = HashMap::new();
    for link in links {
        if let Ok(node) = std::fs::canonicalize(&link) {
            ids.entry(node).or_insert(link);
        }
    }
    ids
}

/// The camera behind a node, or `None` for a node that captures no video
/// (UVC's metadata node shares its camera's name).
fn describe(path: &Path, ids: &HashMap<PathBuf, PathBuf>) -> io::Result<Option<Device>> {
    let node = Node::open(path)?;
    let caps = node.capabilities()?;
    if !is_capture(caps.flags) {
        tracing::debug!(
            "v4l2: skipping {} ({:?}): no single-planar streaming capture (caps {:#x})",
            path.display(),
            caps.card,
            caps.flags
        );
        return Ok(None);
    }
    let location = path.display().to_string();
    let id = ids
        .get(path)
        .map_or_else(|| location.clone(), |l| l.display().to_string());
    Ok(Some(Device {
        id,
        name: caps.card,
        location,
        modes: read_modes(&node, path),
    }))
}

fn is_capture(flags: u32) -> bool {
    let needed = V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_STREAMING;
    flags & needed == needed
}

/// Whatever the driver lists; an entry it fails to describe is left out.
fn read_modes(node: &Node, path: &Path) -> Vec<Mode> {
    let skip = |what: &str, e: io::Error| tracing::debug!("v4l2: {}: {what}: {e}", path.display());
    let fourccs = node.formats().unwrap_or_else(|e| {
        skip("VIDIOC_ENUM_FMT", e);
        Vec::new()
    });
    let mut lists = Vec::new();
    for fourcc in fourccs {
        let sizes = node.frame_sizes(fourcc).unwrap_or_else(|e| {
            skip("VIDIOC_ENUM_FRAMESIZES", e);
            Vec::new()
        });
        let sizes = sizes
            .into_iter()
            .map(|sizes| {
                let at = sizes.interval_query_size();
                let intervals = node.frame_intervals(fourcc, at).unwrap_or_else(|e| {
                    skip("VIDIOC_ENUM_FRAMEINTERVALS", e);
                    Vec::new()
                });
                SizeList { sizes, intervals }
            })
            .collect();
        lists.push(FormatList { fourcc, sizes });
    }
    modes::modes(&lists)
}

/// `VIDIOC_S_FMT` to the choice, and a check that the driver kept it
/// (drivers silently substitute what they can do).
fn set_format(node: &Node, name: &str, choice: &Choice) -> Result<Layout, CaptureError> {
    let fourcc = modes::fourcc_code(&choice.fourcc).ok_or_else(|| CaptureError::Platform {
        call: "VIDIOC_S_FMT",
        reason: format!("{name:?}: {:?} is not a V4L2 fourcc", choice.fourcc),
    })?;
    let got = node
        .set_format(fourcc, choice.size)
        .map_err(|e| setup_error(name, "VIDIOC_S_FMT", e))?;
    let format = modes::pixel_format(got.fourcc);
    if got.fourcc != fourcc || got.size != choice.size || format != Some(choice.format) {
        return Err(CaptureError::Platform {
            call: "VIDIOC_S_FMT",
            reason: format!(
                "{name:?} was asked for {} {} and set {} {}",
                choice.size,
                choice.fourcc,
                got.size,
                modes::fourcc_text(got.fourcc)
            ),
        });
    }
    Ok(layout(choice.format, &got))
}

fn layout(format: PixelFormat, got: &PixFormat) -> Layout {
    Layout {
        colour: got.colour,
        ..Layout::new(format, got.size.width, got.size.height, got.bytes_per_line)
    }
}

/// `VIDIOC_S_PARM`. A driver that cannot set a rate at all still streams
/// (logged); one that sets another rate than asked, more than 1 % off (a
/// stepwise size whose rates were listed at its smallest size), is an
/// error that names what it runs at.
fn set_interval(node: &Node, name: &str, wanted: Interval) -> Result<(), CaptureError> {
    match node.set_interval(wanted) {
        Ok(got) if same_rate(got, wanted) => Ok(()),
        Ok(got) if (got.fps() - wanted.fps()).abs() <= wanted.fps() * FPS_TOLERANCE => {
            tracing::info!(
                "v4l2: {name:?} runs at {:.2} fps for the {:.2} asked",
                got.fps(),
                wanted.fps()
            );
            Ok(())
        }
        Ok(got) => Err(CaptureError::Platform {
            call: "VIDIOC_S_PARM",
            reason: format!(
                "{name:?} runs this mode at {:.2} fps, not the {:.2} asked",
                got.fps(),
                wanted.fps()
            ),
        }),
        Err(e) => {
            tracing::warn!("v4l2: {name:?}: VIDIOC_S_PARM failed, rate left as is: {e}");
            Ok(())
        }
    }
}

fn same_rate(a: Interval, b: Interval) -> bool {
    u64::from(a.numerator) * u64::from(b.denominator)
        == u64::from(b.numerator) * u64::from(a.denominator)
}

/// `exposure_dynamic_framerate = 0`: auto-exposure may not stretch frames
/// in a dark room (UVC's auto-exposure priority; it halves the rate).
fn pin_frame_rate(node: &Node, name: &str) {
    let id = V4L2_CID_EXPOSURE_AUTO_PRIORITY;
    if !node.has_control(id) {
        tracing::debug!("v4l2: {name:?} has no exposure_dynamic_framerate control");
        return;
    }
    if let Err(e) = node.set_control(id, 0) {
        tracing::debug!("v4l2: {name:?}: setting exposure_dynamic_framerate=0 failed: {e}");
    }
}

fn permission_denied(node: &Path) -> CaptureError {
    CaptureError::Platform {
        call: "open",
        reason: format!(
            "permission denied on {}: add your user to the `video` group",
            node.display()
        ),
    }
}

fn setup_error(device: &str, call: &str, e: io::Error) -> CaptureError {
    let device = device.to_owned();
    match e.raw_os_error() {
        Some(libc::ENODEV) => CaptureError::Disconnected { device },
        Some(libc::EBUSY) => CaptureError::Busy {
            device,
            reason: format!("another program is streaming from it ({call}: {e})"),
        },
        _ => CaptureError::Io {
            device,
            reason: format!("{call}: {e}"),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Size;

    #[test]
    fn rates_compare_as_fractions() {
        assert!(same_rate(Interval::new(1, 30), Interval::new(2, 60)));
        assert!(same_rate(
            Interval::new(333_333, 10_000_000),
            Interval::new(333_333, 10_000_000)
        ));
        assert!(!same_rate(Interval::new(1001, 30000), Interval::new(1, 30)));
        assert!(same_rate(
            Interval::new(u32::MAX, 1),
            Interval::new(u32::MAX, 1)
        ));
    }

    #[test]
    fn capture_needs_video_capture_and_streaming() {
        assert!(is_capture(
            V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_STREAMING | 0x0080_0000
        ));
        assert!(
            !is_capture(0x0080_0000 | V4L2_CAP_STREAMING),
            "UVC metadata node"
        );
        assert!(!is_capture(V4L2_CAP_VIDEO_CAPTURE), "read() only");
    }

    #[test]
    fn errors_name_the_fix() {
        let denied = permission_denied(Path::new("/dev/video2")).to_string();
        assert_eq!(
            denied,
            "open: permission denied on /dev/video2: add your user to the `video` group"
        );
        let busy = setup_error(
            "C270",
            "VIDIOC_REQBUFS",
            io::Error::from_raw_os_error(libc::EBUSY),
        );
        assert!(matches!(busy, CaptureError::Busy { .. }), "{busy}");
        let gone = setup_error(
            "C270",
            "VIDIOC_S_FMT",
            io::Error::from_raw_os_error(libc::ENODEV),
        );
        assert!(matches!(gone, CaptureError::Disconnected { .. }));
        let other = setup_error(
            "C270",
            "VIDIOC_S_FMT",
            io::Error::from_raw_os_error(libc::EINVAL),
        );
        assert!(
            other.to_string().starts_with("\"C270\": VIDIOC_S_FMT: "),
            "{other}"
        );
    }

    #[test]
    fn a_driver_that_reports_no_stride_gets_the_packed_one() {
        let got = PixFormat {
            fourcc: *b"YUYV",
            size: Size::new(640, 480),
            bytes_per_line: 0,
            colour: crate::format::Colour::UVC,
        };
        assert_eq!(layout(PixelFormat::Yuyv, &got).stride, 1280);
    }
}
