//! The V4L2 backend against the machine's real nodes. Ignored by default:
//! CI has no camera. Run on a machine with one:
//!
//! ```text
//! POSED_TEST_CAMERA=/dev/video0 cargo test -p posed-capture --test v4l_modes -- --ignored --nocapture --test-threads 1
//! ```
//!
//! `POSED_TEST_FPS` changes the rate from 30 (vivid's webcam does 25 at
//! 640x480); `POSED_TEST_FORMAT` (`nv12`, `uyvy`...) asks for that format
//! instead of the Linux default order. With the `vivid` test driver loaded
//! (`modprobe vivid`), also set `POSED_TEST_VIVID` to its capture node to
//! test an unplug (a one-way trip: reload the module afterwards).
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use posed_capture::v4l::{V4lBackend, DEFAULT_FORMATS};
use posed_capture::{
    negotiate, select, Backend, CaptureError, Choice, Device, Grabber, OpenOptions, PixelFormat,
    Pixels, RawFrame, Size, Want,
};

/// Runs anywhere: listing must not fail, with or without cameras.
#[test]
#[ignore = "reads /dev; run with --ignored"]
fn lists_capture_nodes_without_error() {
    let devices = V4lBackend::new().devices().expect("listing /dev/video*");
    for d in &devices {
        println!("{} {:?} at {}", d.id, d.name, d.location);
        for m in &d.modes {
            println!("  {m}");
        }
    }
    println!("{} capture device(s)", devices.len());
}

/// The node, by-id link, list position or name in `POSED_TEST_CAMERA`.
fn camera<'a>(devices: &'a [Device], wanted: &str) -> &'a Device {
    devices
        .iter()
        .find(|d| d.location == wanted || d.id == wanted)
        .or_else(|| select(devices, wanted).ok())
        .unwrap_or_else(|| panic!("no capture device {wanted:?} in {devices:#?}"))
}

/// The camera named by `variable`, and its 640x480 mode at 30 fps (or
/// `POSED_TEST_FPS`); `None` (the test passes without doing anything) when
/// the variable is not set.
fn vga(variable: &str) -> Option<(V4lBackend, Device, Choice)> {
    let Ok(wanted) = std::env::var(variable) else {
        eprintln!("{variable} is not set; nothing to test");
        return None;
    };
    let mut backend = V4lBackend::new();
    let devices = backend.devices().expect("listing cameras");
    let device = camera(&devices, &wanted).clone();
    let fps = std::env::var("POSED_TEST_FPS").map_or(30, |f| f.parse().expect("POSED_TEST_FPS"));
    let want = Want {
        size: Size::new(640, 480),
        fps,
        formats: std::env::var("POSED_TEST_FORMAT").map_or(DEFAULT_FORMATS.to_vec(), |f| {
            vec![PixelFormat::from_name(&f).expect("POSED_TEST_FORMAT")]
        }),
    };
    let choice = negotiate(&device.name, &device.modes, &want).expect("640x480");
    println!("{} {choice}", device.name);
    Some((backend, device, choice))
}

#[test]
#[ignore = "needs a camera: set POSED_TEST_CAMERA=/dev/videoN"]
fn grabs_ten_vga_frames_in_order() {
    let Some((mut backend, device, choice)) = vga("POSED_TEST_CAMERA") else {
        return;
    };
    let device = &device;
    let mut grabber = backend
        .open(device, &choice, OpenOptions::default())
        .expect("opening the camera");

    let mut sequences = Vec::new();
    while sequences.len() < 10 {
        let mut frame = None;
        let got = grabber
            .next_frame(Duration::from_secs(2), &mut |raw| frame = Some(check(raw)))
            .expect("grabbing");
        assert!(got, "no frame within 2 s");
        let (sequence, age) = frame.expect("a frame was lent");
        println!("frame {sequence}: {age:?} ms old at dequeue");
        sequences.push(sequence);
    }
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "sequences must increase: {sequences:?}"
    );
    println!("{} dropped", grabber.dropped());
    drop(grabber);

    // Released: the camera opens again at once.
    let mut again = backend
        .open(device, &choice, OpenOptions::default())
        .expect("reopening the camera");
    let got = again
        .next_frame(Duration::from_secs(2), &mut |raw| {
            check(raw);
        })
        .expect("grabbing after reopening");
    assert!(got, "no frame after reopening");
}

/// Checks a frame's size and layout; returns its sequence number and its
/// age at dequeue in ms (negative: stamped ahead of the dequeue).
fn check(raw: &RawFrame<'_>) -> (u64, Option<f64>) {
    assert_eq!((raw.width, raw.height), (640, 480));
    match raw.pixels {
        Pixels::Yuyv { plane, .. } | Pixels::Uyvy { plane, .. } => {
            assert!(plane.stride >= 640 * 2);
            assert!(plane.data.len() >= plane.stride * 479 + 640 * 2);
        }
        Pixels::Nv12 { y, uv, .. } => {
            assert!(y.stride >= 640 && y.data.len() >= y.stride * 480);
            assert!(uv.data.len() >= uv.stride * 239 + 640);
        }
        Pixels::Mjpeg(jpeg) => assert_eq!(jpeg.get(..2), Some(&[0xff, 0xd8][..])),
        Pixels::Bgra(_) => panic!("V4L2 never delivers BGRA here"),
    }
    // Same clock: within a second of the dequeue. vivid stamps a frame's
    // scheduled time, which can be a little after it is dequeued.
    let age = raw.driver_time.map(|t| {
        let apart = t.abs_diff(raw.driver_now);
        assert!(
            apart < Duration::from_secs(1),
            "{t:?} vs {:?}",
            raw.driver_now
        );
        (raw.driver_now.as_secs_f64() - t.as_secs_f64()) * 1000.0
    });
    (raw.sequence, age)
}

/// With every buffer filled while the reader was away, it gets the newest
/// and the others count as dropped. (V4L2 cannot overwrite a filled buffer:
/// frames after the last free one are lost in the driver, so the newest can
/// be older than a frame period; the capture loop reads far more often.)
#[test]
#[ignore = "needs a camera: set POSED_TEST_CAMERA=/dev/videoN"]
fn a_slow_reader_gets_the_newest_frame_and_the_rest_count_as_dropped() {
    let Some((mut backend, device, choice)) = vga("POSED_TEST_CAMERA") else {
        return;
    };
    let options = OpenOptions {
        buffers: 3,
        ..OpenOptions::default()
    };
    let mut grabber = backend.open(&device, &choice, options).expect("opening");
    let mut last = None;
    for _ in 0..5 {
        let mut seen = None;
        grabber
            .next_frame(Duration::from_secs(2), &mut |raw| seen = Some(check(raw)))
            .expect("grabbing");
        let (sequence, age) = seen.expect("a frame");
        println!(
            "frame {sequence}, {age:?} ms old, {} dropped",
            grabber.dropped()
        );
        if let Some(last) = last {
            assert!(sequence >= last + 3, "three buffers filled meanwhile");
        }
        last = Some(sequence);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(grabber.dropped() >= 4 * 2, "two superseded per pause");
}

#[test]
#[ignore = "needs a camera: set POSED_TEST_CAMERA=/dev/videoN"]
fn a_camera_in_use_is_busy_and_no_frame_in_time_is_not_an_error() {
    let Some((mut backend, device, choice)) = vga("POSED_TEST_CAMERA") else {
        return;
    };
    let mut first = backend
        .open(&device, &choice, OpenOptions::default())
        .expect("opening");
    match backend.open(&device, &choice, OpenOptions::default()) {
        Err(CaptureError::Busy { reason, .. }) => println!("second open: {reason}"),
        Err(other) => panic!("second open: {other}"),
        Ok(_) => panic!("a second open of a streaming camera succeeded"),
    }
    let start = Instant::now();
    let got = first
        .next_frame(Duration::ZERO, &mut |_| {})
        .expect("a zero wait");
    println!("zero wait: {got} in {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_millis(20));
}

/// vivid's "Disconnect" button unregisters its nodes as an unplug would.
#[test]
#[ignore = "needs vivid: set POSED_TEST_VIVID=/dev/videoN (unplugs it for good)"]
fn vivid_unplugged_mid_stream_is_disconnected_and_closes_cleanly() {
    let Some((mut backend, device, choice)) = vga("POSED_TEST_VIVID") else {
        return;
    };
    let mut grabber = backend
        .open(&device, &choice, OpenOptions::default())
        .expect("opening");
    let got = grabber
        .next_frame(Duration::from_secs(2), &mut |raw| {
            check(raw);
        })
        .expect("grabbing");
    assert!(got);

    press_vivid_disconnect(&device.location);

    let start = Instant::now();
    let mut result = Ok(true);
    while start.elapsed() < Duration::from_secs(2) {
        result = grabber.next_frame(Duration::from_millis(100), &mut |_| {});
        if result.is_err() {
            break;
        }
    }
    match result {
        Err(CaptureError::Disconnected { device: name }) => println!("{name:?} disconnected"),
        other => panic!("after unplugging: {other:?}"),
    }
    drop(grabber);
}

/// Finds vivid's "Disconnect" button by name and presses it.
fn press_vivid_disconnect(node: &str) {
    use std::os::fd::AsRawFd;
    use v4l::v4l2::{ioctl, vidioc};
    use v4l::v4l_sys::{v4l2_control, v4l2_queryctrl, V4L2_CTRL_FLAG_NEXT_CTRL};

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .expect("opening a second handle");
    let fd = file.as_raw_fd();
    let mut id = 0;
    loop {
        // SAFETY: all-zero is a valid v4l2_queryctrl (integers only).
        let mut query: v4l2_queryctrl = unsafe { std::mem::zeroed() };
        query.id = id | V4L2_CTRL_FLAG_NEXT_CTRL;
        // SAFETY: VIDIOC_QUERYCTRL takes a v4l2_queryctrl, which `query` is.
        let listed = unsafe {
            ioctl(
                fd,
                vidioc::VIDIOC_QUERYCTRL,
                (&mut query as *mut v4l2_queryctrl).cast(),
            )
        };
        listed.expect("vivid has a Disconnect control");
        let end = query
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(query.name.len());
        if &query.name[..end] == b"Disconnect" {
            let mut press = v4l2_control {
                id: query.id,
                value: 1,
            };
            // SAFETY: VIDIOC_S_CTRL takes a v4l2_control, which `press` is.
            let pressed = unsafe {
                ioctl(
                    fd,
                    vidioc::VIDIOC_S_CTRL,
                    (&mut press as *mut v4l2_control).cast(),
                )
            };
            pressed.expect("pressing Disconnect");
            return;
        }
        id = query.id;
    }
}
