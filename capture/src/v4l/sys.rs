//! The V4L2 calls the backend makes, on a file descriptor we own.
//!
//! We use the `v4l` crate only for its kernel struct bindings and request
//! numbers, not its `Device`/`MmapStream`: those `unwrap` driver strings
//! (card names cut mid-UTF-8), `expect` known enum values from the driver,
//! `unwrap` `close`, wait forever in `DQBUF`, and panic in `Drop` when
//! `STREAMOFF` fails on a vanished device.

use std::fs::OpenOptions;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use ::v4l::v4l2::vidioc::{self, _IOC_TYPE};
use ::v4l::v4l_sys::{
    timeval, v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE, v4l2_buffer, v4l2_capability, v4l2_control,
    v4l2_field_V4L2_FIELD_ANY, v4l2_fmtdesc, v4l2_format, v4l2_fract, v4l2_frmivalenum,
    v4l2_frmivaltypes_V4L2_FRMIVAL_TYPE_CONTINUOUS as INTERVAL_CONTINUOUS,
    v4l2_frmivaltypes_V4L2_FRMIVAL_TYPE_DISCRETE as INTERVAL_DISCRETE,
    v4l2_frmivaltypes_V4L2_FRMIVAL_TYPE_STEPWISE as INTERVAL_STEPWISE, v4l2_frmsizeenum,
    v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_CONTINUOUS as SIZE_CONTINUOUS,
    v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_DISCRETE as SIZE_DISCRETE,
    v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_STEPWISE as SIZE_STEPWISE, v4l2_memory_V4L2_MEMORY_MMAP,
    v4l2_queryctrl, v4l2_requestbuffers, v4l2_streamparm, V4L2_CAP_DEVICE_CAPS,
    V4L2_CTRL_FLAG_DISABLED,
};

use super::modes::{FrameIntervals, FrameSizes};
use crate::format::Colour;
use crate::mode::{Interval, Size};

const CAPTURE: u32 = v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
/// `STREAMON`/`STREAMOFF` take the buffer type (1) as an `int`.
const CAPTURE_INT: libc::c_int = CAPTURE as libc::c_int;
const MMAP: u32 = v4l2_memory_V4L2_MEMORY_MMAP;

/// Guards the enumeration loops against a driver that never says "no more".
const MAX_ENTRIES: u32 = 1024;

/// Kernel UAPI structs: integers, arrays, unions of those and raw pointers.
trait Plain: Copy {
    fn zeroed() -> Self {
        // SAFETY: only implemented (below) for C structs and integers for
        // which all-zero bytes are a valid value; it is also the value the
        // kernel wants in the fields and reserved words we do not set.
        unsafe { std::mem::zeroed() }
    }
}

impl Plain for v4l2_capability {}
impl Plain for v4l2_fmtdesc {}
impl Plain for v4l2_frmsizeenum {}
impl Plain for v4l2_frmivalenum {}
impl Plain for v4l2_format {}
impl Plain for v4l2_streamparm {}
impl Plain for v4l2_queryctrl {}
impl Plain for v4l2_control {}
impl Plain for v4l2_requestbuffers {}
impl Plain for v4l2_buffer {}
impl Plain for libc::c_int {}

/// An ioctl request number and the argument type it takes.
#[derive(Clone, Copy)]
struct Request<T> {
    number: _IOC_TYPE,
    arg: PhantomData<fn(&mut T)>,
}

impl<T> Request<T> {
    /// # Safety
    /// The kernel must read and write a `T` through this request's argument.
    const unsafe fn new(number: _IOC_TYPE) -> Request<T> {
        Request {
            number,
            arg: PhantomData,
        }
    }
}

// SAFETY (each of these): the number is videodev2.h's for that request, and
// the type is the one the header declares it with (the `vidioc` constants
// even encode that type's size).
const QUERYCAP: Request<v4l2_capability> = unsafe { Request::new(vidioc::VIDIOC_QUERYCAP) };
const ENUM_FMT: Request<v4l2_fmtdesc> = unsafe { Request::new(vidioc::VIDIOC_ENUM_FMT) };
const ENUM_FRAMESIZES: Request<v4l2_frmsizeenum> =
    unsafe { Request::new(vidioc::VIDIOC_ENUM_FRAMESIZES) };
const ENUM_FRAMEINTERVALS: Request<v4l2_frmivalenum> =
    unsafe { Request::new(vidioc::VIDIOC_ENUM_FRAMEINTERVALS) };
const S_FMT: Request<v4l2_format> = unsafe { Request::new(vidioc::VIDIOC_S_FMT) };
const S_PARM: Request<v4l2_streamparm> = unsafe { Request::new(vidioc::VIDIOC_S_PARM) };
const QUERYCTRL: Request<v4l2_queryctrl> = unsafe { Request::new(vidioc::VIDIOC_QUERYCTRL) };
const S_CTRL: Request<v4l2_control> = unsafe { Request::new(vidioc::VIDIOC_S_CTRL) };
const REQBUFS: Request<v4l2_requestbuffers> = unsafe { Request::new(vidioc::VIDIOC_REQBUFS) };
const QUERYBUF: Request<v4l2_buffer> = unsafe { Request::new(vidioc::VIDIOC_QUERYBUF) };
const QBUF: Request<v4l2_buffer> = unsafe { Request::new(vidioc::VIDIOC_QBUF) };
const DQBUF: Request<v4l2_buffer> = unsafe { Request::new(vidioc::VIDIOC_DQBUF) };
const STREAMON: Request<libc::c_int> = unsafe { Request::new(vidioc::VIDIOC_STREAMON) };
const STREAMOFF: Request<libc::c_int> = unsafe { Request::new(vidioc::VIDIOC_STREAMOFF) };

/// What `VIDIOC_QUERYCAP` says about a node.
#[derive(Debug, Clone)]
pub(super) struct Caps {
    pub card: String,
    /// This node's capabilities (`device_caps` where the driver gives them).
    pub flags: u32,
}

/// The format the driver settled on.
#[derive(Debug, Clone, Copy)]
pub(super) struct PixFormat {
    pub fourcc: [u8; 4],
    pub size: Size,
    pub bytes_per_line: u32,
    /// How the driver says its YUV values read.
    pub colour: Colour,
}

/// A buffer's place in the device's memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct BufferPlace {
    pub offset: u32,
    pub length: u32,
}

/// A filled buffer handed back by `VIDIOC_DQBUF`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Filled {
    pub index: u32,
    pub bytes_used: u32,
    pub flags: u32,
    pub sequence: u32,
    /// Seconds and microseconds, as the driver stamped them.
    pub timestamp: (libc::c_long, libc::c_long),
}

/// What `poll(2)` saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Readiness {
    /// A buffer is ready, or the wait ended early (a signal): look again.
    Ready,
    TimedOut,
    /// `POLLERR`/`POLLHUP`: the stream is broken (an unplug, usually).
    Broken,
}

/// An open `/dev/video*` node.
#[derive(Debug)]
pub(super) struct Node {
    fd: OwnedFd,
}

impl Node {
    /// Opens read-write and non-blocking, so `DQBUF` never waits: waiting is
    /// `poll`'s job, with a timeout.
    pub fn open(path: &Path) -> io::Result<Node> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        Ok(Node { fd: file.into() })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn ioctl<T: Plain>(&self, request: Request<T>, arg: &mut T) -> io::Result<()> {
        loop {
            // SAFETY: `request` takes a `T` (Request::new's contract), `arg`
            // is a live, exclusive `T`, and the fd is open while `self` is.
            let done = unsafe {
                ::v4l::v4l2::ioctl(self.raw_fd(), request.number, (arg as *mut T).cast())
            };
            match done {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    pub fn capabilities(&self) -> io::Result<Caps> {
        let mut cap = v4l2_capability::zeroed();
        self.ioctl(QUERYCAP, &mut cap)?;
        let flags = if cap.capabilities & V4L2_CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        Ok(Caps {
            card: c_text(&cap.card),
            flags,
        })
    }

    /// The capture formats' fourccs, in the driver's order.
    pub fn formats(&self) -> io::Result<Vec<[u8; 4]>> {
        let mut out = Vec::new();
        for index in 0..MAX_ENTRIES {
            let mut desc = v4l2_fmtdesc::zeroed();
            desc.index = index;
            desc.type_ = CAPTURE;
            if !more(self.ioctl(ENUM_FMT, &mut desc))? {
                break;
            }
            out.push(desc.pixelformat.to_le_bytes());
        }
        Ok(out)
    }

    pub fn frame_sizes(&self, fourcc: [u8; 4]) -> io::Result<Vec<FrameSizes>> {
        let mut out = Vec::new();
        for index in 0..MAX_ENTRIES {
            let mut e = v4l2_frmsizeenum::zeroed();
            e.index = index;
            e.pixel_format = u32::from_le_bytes(fourcc);
            if !more(self.ioctl(ENUM_FRAMESIZES, &mut e))? {
                break;
            }
            let Some(entry) = size_entry(&e) else {
                tracing::debug!("v4l2: unknown frame size type {}", e.type_);
                break;
            };
            let range = !matches!(entry, FrameSizes::Discrete(_));
            out.push(entry);
            // A range is the only entry (index 0) of its list.
            if range {
                break;
            }
        }
        Ok(out)
    }

    pub fn frame_intervals(&self, fourcc: [u8; 4], size: Size) -> io::Result<Vec<FrameIntervals>> {
        let mut out = Vec::new();
        for index in 0..MAX_ENTRIES {
            let mut e = v4l2_frmivalenum::zeroed();
            e.index = index;
            e.pixel_format = u32::from_le_bytes(fourcc);
            e.width = size.width;
            e.height = size.height;
            if !more(self.ioctl(ENUM_FRAMEINTERVALS, &mut e))? {
                break;
            }
            let Some(entry) = interval_entry(&e) else {
                tracing::debug!("v4l2: unknown frame interval type {}", e.type_);
                break;
            };
            let range = !matches!(entry, FrameIntervals::Discrete(_));
            out.push(entry);
            if range {
                break;
            }
        }
        Ok(out)
    }

    /// `VIDIOC_S_FMT`; the driver answers with what it chose, which may
    /// differ from the request.
    pub fn set_format(&self, fourcc: [u8; 4], size: Size) -> io::Result<PixFormat> {
        let mut f = v4l2_format::zeroed();
        f.type_ = CAPTURE;
        // SAFETY: `pix` is the union member for a single-planar capture
        // format, and all-integer, so writing and reading it is defined.
        let pix = unsafe { &mut f.fmt.pix };
        pix.width = size.width;
        pix.height = size.height;
        pix.pixelformat = u32::from_le_bytes(fourcc);
        pix.field = v4l2_field_V4L2_FIELD_ANY;
        self.ioctl(S_FMT, &mut f)?;
        // SAFETY: as above.
        let pix = unsafe { f.fmt.pix };
        // SAFETY: `ycbcr_enc` is the member for YUV formats; both members
        // are plain integers.
        let ycbcr_enc = unsafe { pix.__bindgen_anon_1.ycbcr_enc };
        Ok(PixFormat {
            fourcc: pix.pixelformat.to_le_bytes(),
            size: Size::new(pix.width, pix.height),
            bytes_per_line: pix.bytesperline,
            colour: super::grab::driver_colour(pix.colorspace, ycbcr_enc, pix.quantization),
        })
    }

    /// `VIDIOC_S_PARM` with a frame interval; returns the one the driver set.
    pub fn set_interval(&self, wanted: Interval) -> io::Result<Interval> {
        let mut p = v4l2_streamparm::zeroed();
        p.type_ = CAPTURE;
        // SAFETY: `capture` is the union member for a capture stream, and
        // all-integer, so writing and reading it is defined.
        let capture = unsafe { &mut p.parm.capture };
        capture.timeperframe = v4l2_fract {
            numerator: wanted.numerator,
            denominator: wanted.denominator,
        };
        self.ioctl(S_PARM, &mut p)?;
        // SAFETY: as above.
        Ok(interval(unsafe { p.parm.capture }.timeperframe))
    }

    /// Whether the driver has this control and it can be used now.
    pub fn has_control(&self, id: u32) -> bool {
        let mut q = v4l2_queryctrl::zeroed();
        q.id = id;
        self.ioctl(QUERYCTRL, &mut q).is_ok() && q.flags & V4L2_CTRL_FLAG_DISABLED == 0
    }

    pub fn set_control(&self, id: u32, value: i32) -> io::Result<()> {
        let mut c = v4l2_control { id, value };
        self.ioctl(S_CTRL, &mut c)
    }

    /// `VIDIOC_REQBUFS` for mmap buffers; returns how many the driver made.
    pub fn request_buffers(&self, count: u32) -> io::Result<u32> {
        let mut r = v4l2_requestbuffers::zeroed();
        r.count = count;
        r.type_ = CAPTURE;
        r.memory = MMAP;
        self.ioctl(REQBUFS, &mut r)?;
        Ok(r.count)
    }

    pub fn query_buffer(&self, index: u32) -> io::Result<BufferPlace> {
        let mut b = buffer(index);
        self.ioctl(QUERYBUF, &mut b)?;
        Ok(BufferPlace {
            // SAFETY: for MMAP buffers the driver fills `offset`; the union
            // is all-integer/pointer, so the read is defined regardless.
            offset: unsafe { b.m.offset },
            length: b.length,
        })
    }

    pub fn queue(&self, index: u32) -> io::Result<()> {
        self.ioctl(QBUF, &mut buffer(index))
    }

    /// The oldest filled buffer, or `None` when none is ready.
    pub fn dequeue(&self) -> io::Result<Option<Filled>> {
        let mut b = buffer(0);
        match self.ioctl(DQBUF, &mut b) {
            Ok(()) => Ok(Some(Filled {
                index: b.index,
                bytes_used: b.bytesused,
                flags: b.flags,
                sequence: b.sequence,
                timestamp: seconds_micros(b.timestamp),
            })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn stream_on(&self) -> io::Result<()> {
        let mut kind = CAPTURE_INT;
        self.ioctl(STREAMON, &mut kind)
    }

    pub fn stream_off(&self) -> io::Result<()> {
        let mut kind = CAPTURE_INT;
        self.ioctl(STREAMOFF, &mut kind)
    }

    /// Waits at most `timeout` for a filled buffer.
    pub fn wait(&self, timeout: Duration) -> io::Result<Readiness> {
        let mut fds = [libc::pollfd {
            fd: self.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `fds` is one valid pollfd, alive for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, poll_millis(timeout)) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(Readiness::Ready),
                _ => Err(e),
            };
        }
        let revents = fds[0].revents;
        Ok(
            if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                Readiness::Broken
            } else if n == 0 {
                Readiness::TimedOut
            } else {
                Readiness::Ready
            },
        )
    }
}

fn size_entry(e: &v4l2_frmsizeenum) -> Option<FrameSizes> {
    // SAFETY: `type_` says which union member the driver filled; both are
    // plain integers (and were zeroed), so either read is defined.
    let (discrete, stepwise) =
        unsafe { (e.__bindgen_anon_1.discrete, e.__bindgen_anon_1.stepwise) };
    let min = Size::new(stepwise.min_width, stepwise.min_height);
    let max = Size::new(stepwise.max_width, stepwise.max_height);
    match e.type_ {
        SIZE_DISCRETE => Some(FrameSizes::Discrete(Size::new(
            discrete.width,
            discrete.height,
        ))),
        SIZE_STEPWISE => Some(FrameSizes::Stepwise {
            min,
            max,
            step: Size::new(stepwise.step_width, stepwise.step_height),
        }),
        SIZE_CONTINUOUS => Some(FrameSizes::Continuous { min, max }),
        _ => None,
    }
}

fn interval_entry(e: &v4l2_frmivalenum) -> Option<FrameIntervals> {
    // SAFETY: as in `size_entry`: plain integers either way.
    let (discrete, stepwise) =
        unsafe { (e.__bindgen_anon_1.discrete, e.__bindgen_anon_1.stepwise) };
    let (min, max) = (interval(stepwise.min), interval(stepwise.max));
    match e.type_ {
        INTERVAL_DISCRETE => Some(FrameIntervals::Discrete(interval(discrete))),
        INTERVAL_STEPWISE => Some(FrameIntervals::Stepwise {
            min,
            max,
            step: interval(stepwise.step),
        }),
        INTERVAL_CONTINUOUS => Some(FrameIntervals::Continuous { min, max }),
        _ => None,
    }
}

/// Enumeration ends with `EINVAL` at the first index past the list.
fn more(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

fn buffer(index: u32) -> v4l2_buffer {
    let mut b = v4l2_buffer::zeroed();
    b.index = index;
    b.type_ = CAPTURE;
    b.memory = MMAP;
    b
}

fn interval(f: v4l2_fract) -> Interval {
    Interval::new(f.numerator, f.denominator)
}

fn seconds_micros(t: timeval) -> (libc::c_long, libc::c_long) {
    (t.tv_sec, t.tv_usec)
}

/// A fixed-size, NUL-padded driver string (not always valid UTF-8: names
/// get cut at 32 bytes, mid-character).
fn c_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_owned()
}

/// `poll`'s timeout: whole milliseconds, rounded up so a short wait does not
/// become a busy spin.
fn poll_millis(timeout: Duration) -> libc::c_int {
    let millis = timeout.as_micros().div_ceil(1000);
    libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_strings_stop_at_nul_and_survive_a_cut_character() {
        assert_eq!(c_text(b"HD Webcam C270\0\0\0"), "HD Webcam C270");
        // "é" is C3 A9; a 32-byte field can end after C3.
        assert_eq!(c_text(b"Cam\xc3"), "Cam\u{fffd}");
        assert_eq!(c_text(b"full"), "full");
    }

    #[test]
    fn poll_timeouts_round_up_and_saturate() {
        assert_eq!(poll_millis(Duration::ZERO), 0);
        assert_eq!(poll_millis(Duration::from_micros(1)), 1);
        assert_eq!(poll_millis(Duration::from_millis(100)), 100);
        assert_eq!(poll_millis(Duration::from_secs(u64::MAX)), libc::c_int::MAX);
    }
}
