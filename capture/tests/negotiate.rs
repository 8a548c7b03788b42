//! Mode negotiation against capability lists as cameras report them.
//!
//! The lists are transcribed from public dumps (`v4l2-ctl --list-formats-ext`,
//! AVFoundation format lists in bug reports) and trimmed to the entries that
//! matter; each test names what it stands for.

use posed_capture::{negotiate, Interval, Mode, PixelFormat, Rates, Size, Sizes, Want, YuvRange};

const MAC_ORDER: [PixelFormat; 5] = [
    PixelFormat::Nv12,
    PixelFormat::Yuyv,
    PixelFormat::Uyvy,
    PixelFormat::Bgra,
    PixelFormat::Mjpeg,
];
const LINUX_ORDER: [PixelFormat; 3] = [PixelFormat::Yuyv, PixelFormat::Mjpeg, PixelFormat::Nv12];

fn want(width: u32, height: u32, fps: u32, formats: &[PixelFormat]) -> Want {
    Want {
        size: Size::new(width, height),
        fps,
        formats: formats.to_vec(),
    }
}

/// One frame rate range in frames per second, as AVFoundation lists them.
fn fps_range(min: u32, max: u32) -> Rates {
    Rates {
        fastest: Interval::new(1, max),
        slowest: Interval::new(1, min),
    }
}

fn fixed(fps: u32) -> Rates {
    Rates::exactly(Interval::new(1, fps))
}

fn mode(fourcc: &str, width: u32, height: u32, rates: Vec<Rates>) -> Mode {
    let (format, range) = match fourcc {
        "420f" => (Some(PixelFormat::Nv12), Some(YuvRange::Full)),
        "420v" => (Some(PixelFormat::Nv12), Some(YuvRange::Limited)),
        "yuvs" | "YUYV" => (Some(PixelFormat::Yuyv), None),
        "2vuy" => (Some(PixelFormat::Uyvy), None),
        "dmb1" | "MJPG" => (Some(PixelFormat::Mjpeg), None),
        "NV12" => (Some(PixelFormat::Nv12), None),
        _ => (None, None),
    };
    Mode {
        fourcc: fourcc.to_owned(),
        format,
        range,
        sizes: Sizes::One(Size::new(width, height)),
        rates,
    }
}

/// A MacBook's built-in camera: only bi-planar 4:2:0, video and full range,
/// each size with a 1-30 fps range.
fn facetime_hd() -> Vec<Mode> {
    let mut modes = Vec::new();
    for (w, h) in [
        (1920, 1080),
        (1280, 720),
        (1080, 1920),
        (1760, 1328),
        (640, 480),
    ] {
        modes.push(mode("420v", w, h, vec![fps_range(1, 30)]));
        modes.push(mode("420f", w, h, vec![fps_range(1, 30)]));
    }
    modes
}

/// A Logitech C920/C922 on macOS: at each size a 4:2:0, a 4:2:2 and an MJPEG
/// format; above 640x480 only MJPEG reaches 30 fps over USB 2.
fn logitech_on_mac() -> Vec<Mode> {
    let mut modes = Vec::new();
    for (w, h, raw_max) in [
        (640, 480, 30),
        (960, 720, 15),
        (1280, 720, 10),
        (1920, 1080, 5),
    ] {
        modes.push(mode("420v", w, h, vec![fps_range(5, raw_max)]));
        modes.push(mode("yuvs", w, h, vec![fps_range(5, raw_max)]));
        modes.push(mode("dmb1", w, h, vec![fps_range(5, 30)]));
    }
    modes
}

/// A Logitech C270 under V4L2: discrete sizes, each with a discrete rate list.
fn c270() -> Vec<Mode> {
    let slow = || {
        vec![
            fixed(30),
            fixed(25),
            fixed(20),
            fixed(15),
            fixed(10),
            fixed(5),
        ]
    };
    let mut modes = Vec::new();
    for (w, h) in [(640, 480), (320, 240), (160, 120)] {
        modes.push(mode("YUYV", w, h, slow()));
    }
    modes.push(mode(
        "YUYV",
        1280,
        720,
        vec![Rates::exactly(Interval::new(2, 15)), fixed(5)],
    ));
    for (w, h) in [(640, 480), (320, 240), (160, 120), (1280, 720)] {
        modes.push(mode("MJPG", w, h, slow()));
    }
    modes
}

#[test]
fn a_built_in_mac_camera_gets_full_range_nv12_at_the_exact_size() {
    let choice = negotiate(
        "FaceTime HD Camera",
        &facetime_hd(),
        &want(1280, 720, 30, &MAC_ORDER),
    )
    .unwrap();
    assert_eq!(choice.fourcc, "420f");
    assert_eq!(choice.format, PixelFormat::Nv12);
    assert_eq!(choice.size, Size::new(1280, 720));
    assert_eq!(choice.interval, Interval::new(1, 30));
    assert_eq!(choice.to_string(), "1280x720@30 420f");
    // Inside a range, the exact rate asked for.
    let choice = negotiate(
        "FaceTime HD Camera",
        &facetime_hd(),
        &want(640, 480, 24, &MAC_ORDER),
    )
    .unwrap();
    assert_eq!(choice.interval, Interval::new(1, 24));
}

#[test]
fn a_logitech_on_a_mac_takes_raw_where_it_reaches_the_rate_and_mjpeg_where_only_mjpeg_does() {
    let modes = logitech_on_mac();
    let vga = negotiate(
        "C922 Pro Stream Webcam",
        &modes,
        &want(640, 480, 30, &MAC_ORDER),
    )
    .unwrap();
    assert_eq!((vga.fourcc.as_str(), vga.mode), ("420v", 0));
    let hd = negotiate(
        "C922 Pro Stream Webcam",
        &modes,
        &want(1280, 720, 30, &MAC_ORDER),
    )
    .unwrap();
    assert_eq!(hd.fourcc, "dmb1");
    assert_eq!(hd.format, PixelFormat::Mjpeg);
    // The rate comes from the chosen format's own range, never a sibling's.
    assert_eq!(&modes[hd.mode].fourcc, "dmb1");
    assert_eq!(modes[hd.mode].sizes, Sizes::One(Size::new(1280, 720)));
    // Ten fps is in every format's range at 720p: the preferred one wins.
    let slow = negotiate(
        "C922 Pro Stream Webcam",
        &modes,
        &want(1280, 720, 10, &MAC_ORDER),
    )
    .unwrap();
    assert_eq!(slow.fourcc, "420v");
}

#[test]
fn ntsc_rates_serve_a_request_for_the_round_rate_at_the_rate_the_device_lists() {
    let modes = vec![
        mode(
            "2vuy",
            1920,
            1080,
            vec![Rates::exactly(Interval::new(1001, 30000))],
        ),
        mode(
            "2vuy",
            1280,
            720,
            vec![Rates::exactly(Interval::new(1001, 60000))],
        ),
    ];
    let choice = negotiate("UltraStudio", &modes, &want(1920, 1080, 30, &MAC_ORDER)).unwrap();
    assert_eq!(choice.interval, Interval::new(1001, 30000));
    assert_eq!(choice.to_string(), "1920x1080@29.97 2vuy");
    let choice = negotiate("UltraStudio", &modes, &want(1280, 720, 60, &MAC_ORDER)).unwrap();
    assert_eq!(choice.interval, Interval::new(1001, 60000));
    // 1 % is the limit: 25 fps is not 29.97.
    assert!(negotiate("UltraStudio", &modes, &want(1920, 1080, 25, &MAC_ORDER)).is_err());
}

#[test]
fn a_stepwise_v4l2_sensor_takes_any_size_on_its_grid() {
    let modes = vec![Mode {
        fourcc: "YUYV".into(),
        format: Some(PixelFormat::Yuyv),
        range: None,
        sizes: Sizes::Stepwise {
            min: Size::new(32, 32),
            max: Size::new(3280, 2464),
            step: Size::new(2, 2),
        },
        rates: vec![Rates {
            fastest: Interval::new(1, 90),
            slowest: Interval::new(1, 1),
        }],
    }];
    let choice = negotiate("unicam", &modes, &want(1280, 720, 30, &LINUX_ORDER)).unwrap();
    assert_eq!(choice.size, Size::new(1280, 720));
    assert_eq!(choice.interval, Interval::new(1, 30));
    // Off the 2-pixel grid.
    let err = negotiate("unicam", &modes, &want(1281, 720, 30, &LINUX_ORDER)).unwrap_err();
    assert_eq!(err.closest[0], "1280x720@30 YUYV");
}

#[test]
fn a_c270_under_linux_takes_yuyv_where_it_can_and_mjpeg_for_720p30() {
    let modes = c270();
    let vga = negotiate(
        "UVC Camera (046d:0825)",
        &modes,
        &want(640, 480, 30, &LINUX_ORDER),
    )
    .unwrap();
    assert_eq!(vga.fourcc, "YUYV");
    let hd = negotiate(
        "UVC Camera (046d:0825)",
        &modes,
        &want(1280, 720, 30, &LINUX_ORDER),
    )
    .unwrap();
    assert_eq!(hd.fourcc, "MJPG");
    let slow = negotiate(
        "UVC Camera (046d:0825)",
        &modes,
        &want(1280, 720, 5, &LINUX_ORDER),
    )
    .unwrap();
    assert_eq!(
        (slow.fourcc.as_str(), slow.interval),
        ("YUYV", Interval::new(1, 5))
    );
}

#[test]
fn no_match_names_the_device_the_request_and_the_three_closest_offers() {
    let modes = logitech_on_mac();
    let err = negotiate("C920", &modes, &want(1280, 720, 30, &[PixelFormat::Nv12])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "\"C920\" offers no 1280x720 at 30 fps in nv12; closest: \
         1280x720@30 dmb1, 1280x720@10 420v, 1280x720@10 yuvs"
    );
    let err = negotiate("C270", &c270(), &want(1920, 1080, 30, &LINUX_ORDER)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "\"C270\" offers no 1920x1080 at 30 fps in yuyv/mjpeg/nv12; closest: \
         1280x720@30 MJPG, 1280x720@7.5 YUYV, 640x480@30 MJPG"
    );
}

#[test]
fn formats_we_cannot_read_are_never_chosen_nor_offered() {
    let modes = vec![mode("x420", 1280, 720, vec![fps_range(1, 30)])];
    let err = negotiate("Studio Display", &modes, &want(1280, 720, 30, &MAC_ORDER)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "\"Studio Display\" offers no 1280x720 at 30 fps; closest: none"
    );
}

#[test]
fn an_exact_rate_wins_over_a_near_one_listed_before_it() {
    let modes = vec![mode(
        "YUYV",
        640,
        480,
        vec![Rates::exactly(Interval::new(1001, 30000)), fixed(30)],
    )];
    let choice = negotiate("cam", &modes, &want(640, 480, 30, &LINUX_ORDER)).unwrap();
    assert_eq!(choice.interval, Interval::new(1, 30));
    // Inside a range, the rate asked for, even with an end within 1 %.
    let modes = vec![mode("420v", 640, 480, vec![fps_range(1, 30)])];
    let choice = negotiate("cam", &modes, &want(640, 480, 30, &MAC_ORDER)).unwrap();
    assert_eq!(choice.interval, Interval::new(1, 30));
}

/// Drivers can list nonsense; negotiation must still answer, never panic.
#[test]
fn inverted_ranges_and_huge_steps_from_a_driver_are_survived() {
    let modes = vec![
        Mode {
            fourcc: "YUYV".into(),
            format: Some(PixelFormat::Yuyv),
            range: None,
            sizes: Sizes::Stepwise {
                min: Size::new(4000, 3000),
                max: Size::new(16, 16),
                step: Size::new(u32::MAX, u32::MAX),
            },
            rates: vec![Rates {
                fastest: Interval::new(1, 5),
                slowest: Interval::new(1, 60),
            }],
        },
        mode("MJPG", 640, 480, vec![Rates::exactly(Interval::new(0, 0))]),
    ];
    let err = negotiate("odd", &modes, &want(1280, 720, 30, &LINUX_ORDER)).unwrap_err();
    assert_eq!(err.closest.len(), 2, "{err}");
    // The inverted rate range still holds 30.
    let modes = vec![mode(
        "YUYV",
        640,
        480,
        vec![Rates {
            fastest: Interval::new(1, 5),
            slowest: Interval::new(1, 60),
        }],
    )];
    assert!(negotiate("odd", &modes, &want(640, 480, 30, &LINUX_ORDER)).is_ok());
}
