//! A driver's format lists (`VIDIOC_ENUM_FMT`, `_FRAMESIZES`,
//! `_FRAMEINTERVALS`) as plain data, and their conversion to [`Mode`]s.
//! Pure, so fixtures transcribed from `v4l2-ctl --list-formats-ext` dumps
//! test it without a camera.

use crate::format::PixelFormat;
use crate::mode::{Interval, Mode, Rates, Size, Sizes};

/// One `VIDIOC_ENUM_FRAMESIZES` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSizes {
    Discrete(Size),
    Stepwise {
        min: Size,
        max: Size,
        step: Size,
    },
    /// Every size from `min` to `max` (a stepwise range with step 1).
    Continuous {
        min: Size,
        max: Size,
    },
}

/// One `VIDIOC_ENUM_FRAMEINTERVALS` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameIntervals {
    Discrete(Interval),
    Stepwise {
        min: Interval,
        max: Interval,
        step: Interval,
    },
    Continuous {
        min: Interval,
        max: Interval,
    },
}

/// One size entry of a format and the intervals listed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeList {
    pub sizes: FrameSizes,
    pub intervals: Vec<FrameIntervals>,
}

/// One pixel format with its size entries, in the driver's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatList {
    /// `v4l2_fmtdesc.pixelformat` as its four bytes (`*b"YUYV"`).
    pub fourcc: [u8; 4],
    pub sizes: Vec<SizeList>,
}

impl FrameSizes {
    /// The size to ask `VIDIOC_ENUM_FRAMEINTERVALS` about. That call takes
    /// one concrete size, and a [`Mode`] has one rate list per size entry,
    /// so for a range we ask at its minimum: the one size every range is
    /// sure to contain. Rates may be lower at larger sizes; `open` reads the
    /// rate back from `VIDIOC_S_PARM` and logs when the driver changed it.
    pub fn interval_query_size(&self) -> Size {
        match *self {
            FrameSizes::Discrete(size) => size,
            FrameSizes::Stepwise { min, .. } | FrameSizes::Continuous { min, .. } => min,
        }
    }

    fn to_sizes(self) -> Sizes {
        match self {
            FrameSizes::Discrete(size) => Sizes::One(size),
            FrameSizes::Stepwise { min, max, step } => Sizes::Stepwise { min, max, step },
            FrameSizes::Continuous { min, max } => Sizes::Stepwise {
                min,
                max,
                step: Size::new(1, 1),
            },
        }
    }
}

impl FrameIntervals {
    /// `None` for an interval with a zero term (no rate).
    fn to_rates(self) -> Option<Rates> {
        let rates = match self {
            FrameIntervals::Discrete(i) => Rates::exactly(i),
            FrameIntervals::Stepwise { min, max, .. } | FrameIntervals::Continuous { min, max } => {
                Rates {
                    fastest: min,
                    slowest: max,
                }
            }
        };
        let usable = |i: Interval| i.numerator != 0 && i.denominator != 0;
        (usable(rates.fastest) && usable(rates.slowest)).then_some(rates)
    }
}

/// One [`Mode`] per format and size entry, in the driver's order.
pub fn modes(formats: &[FormatList]) -> Vec<Mode> {
    formats
        .iter()
        .flat_map(|f| f.sizes.iter().map(move |s| mode(f.fourcc, s)))
        .collect()
}

fn mode(fourcc: [u8; 4], entry: &SizeList) -> Mode {
    Mode {
        fourcc: fourcc_text(fourcc),
        format: pixel_format(fourcc),
        range: None,
        sizes: entry.sizes.to_sizes(),
        rates: entry
            .intervals
            .iter()
            .filter_map(|i| i.to_rates())
            .collect(),
    }
}

/// How we read a V4L2 pixel format, if we can.
pub fn pixel_format(fourcc: [u8; 4]) -> Option<PixelFormat> {
    match &fourcc {
        b"YUYV" => Some(PixelFormat::Yuyv),
        b"UYVY" => Some(PixelFormat::Uyvy),
        b"NV12" => Some(PixelFormat::Nv12),
        b"MJPG" | b"JPEG" => Some(PixelFormat::Mjpeg),
        _ => None,
    }
}

/// The fourcc as the driver spells it ("YUYV", "MJPG"); a byte that is not
/// printable ASCII (big-endian variants set the top bit) shows as `?`.
pub fn fourcc_text(fourcc: [u8; 4]) -> String {
    fourcc
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

/// The bytes back from [`fourcc_text`]: four ASCII characters.
pub fn fourcc_code(text: &str) -> Option<[u8; 4]> {
    let bytes: [u8; 4] = text.as_bytes().try_into().ok()?;
    bytes.iter().all(u8::is_ascii).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::{negotiate, Want};
    use crate::v4l::DEFAULT_FORMATS;

    fn fps(rate: u32) -> FrameIntervals {
        FrameIntervals::Discrete(Interval::new(1, rate))
    }

    fn discrete(width: u32, height: u32, intervals: Vec<FrameIntervals>) -> SizeList {
        SizeList {
            sizes: FrameSizes::Discrete(Size::new(width, height)),
            intervals,
        }
    }

    /// A Logitech C270 as `v4l2-ctl --list-formats-ext` lists it, trimmed to
    /// three sizes: raw YUYV is slow at the larger ones (USB 2), MJPG runs
    /// 30..5 fps at every size.
    fn c270() -> Vec<FormatList> {
        let all = || [30, 25, 20, 15, 10, 5].map(fps).to_vec();
        let seven_and_a_half = FrameIntervals::Discrete(Interval::new(2, 15));
        vec![
            FormatList {
                fourcc: *b"YUYV",
                sizes: vec![
                    discrete(640, 480, all()),
                    discrete(1280, 720, vec![fps(10), seven_and_a_half, fps(5)]),
                    discrete(1280, 960, vec![seven_and_a_half, fps(5)]),
                ],
            },
            FormatList {
                fourcc: *b"MJPG",
                sizes: vec![
                    discrete(640, 480, all()),
                    discrete(1280, 720, all()),
                    discrete(1280, 960, all()),
                ],
            },
        ]
    }

    fn want(width: u32, height: u32, rate: u32) -> Want {
        Want {
            size: Size::new(width, height),
            fps: rate,
            formats: DEFAULT_FORMATS.to_vec(),
        }
    }

    #[test]
    fn a_c270_lists_one_mode_per_format_and_size_in_driver_order() {
        let modes = modes(&c270());
        let summary: Vec<String> = modes.iter().map(Mode::to_string).collect();
        assert_eq!(
            summary,
            [
                "640x480 YUYV @ 30, 25, 20, 15, 10, 5 fps",
                "1280x720 YUYV @ 10, 7.5, 5 fps",
                "1280x960 YUYV @ 7.5, 5 fps",
                "640x480 MJPG @ 30, 25, 20, 15, 10, 5 fps",
                "1280x720 MJPG @ 30, 25, 20, 15, 10, 5 fps",
                "1280x960 MJPG @ 30, 25, 20, 15, 10, 5 fps",
            ]
        );
        assert_eq!(modes[0].format, Some(PixelFormat::Yuyv));
        assert_eq!(modes[3].format, Some(PixelFormat::Mjpeg));
        assert!(modes.iter().all(|m| m.range.is_none()));
        assert_eq!(
            modes[2].rates[0],
            Rates::exactly(Interval::new(2, 15)),
            "7.5 fps keeps its 2/15 interval"
        );
    }

    #[test]
    fn linux_preference_takes_yuyv_where_it_runs_at_the_rate_else_mjpeg() {
        let modes = modes(&c270());
        let vga = negotiate("C270", &modes, &want(640, 480, 30)).unwrap();
        assert_eq!((vga.fourcc.as_str(), vga.mode), ("YUYV", 0));
        assert_eq!(vga.interval, Interval::new(1, 30));
        let hd = negotiate("C270", &modes, &want(1280, 720, 30)).unwrap();
        assert_eq!(
            (hd.fourcc.as_str(), hd.format),
            ("MJPG", PixelFormat::Mjpeg)
        );
        let slow_hd = negotiate("C270", &modes, &want(1280, 720, 10)).unwrap();
        assert_eq!(slow_hd.fourcc, "YUYV");
    }

    #[test]
    fn ranges_become_stepwise_sizes_and_rate_ranges() {
        let isp = [FormatList {
            fourcc: *b"NV12",
            sizes: vec![SizeList {
                sizes: FrameSizes::Stepwise {
                    min: Size::new(32, 32),
                    max: Size::new(1920, 1080),
                    step: Size::new(2, 2),
                },
                intervals: vec![FrameIntervals::Continuous {
                    min: Interval::new(1, 60),
                    max: Interval::new(1, 1),
                }],
            }],
        }];
        let modes = modes(&isp);
        assert_eq!(
            modes[0].sizes,
            Sizes::Stepwise {
                min: Size::new(32, 32),
                max: Size::new(1920, 1080),
                step: Size::new(2, 2),
            }
        );
        assert_eq!(
            modes[0].rates,
            [Rates {
                fastest: Interval::new(1, 60),
                slowest: Interval::new(1, 1),
            }]
        );
        let choice = negotiate("isp", &modes, &want(640, 480, 30)).unwrap();
        assert_eq!(choice.format, PixelFormat::Nv12);
        assert_eq!(choice.interval, Interval::new(1, 30));
    }

    #[test]
    fn continuous_sizes_step_by_one_and_intervals_are_asked_at_the_minimum() {
        let sizes = FrameSizes::Continuous {
            min: Size::new(16, 16),
            max: Size::new(4096, 2160),
        };
        assert_eq!(sizes.interval_query_size(), Size::new(16, 16));
        assert_eq!(
            sizes.to_sizes(),
            Sizes::Stepwise {
                min: Size::new(16, 16),
                max: Size::new(4096, 2160),
                step: Size::new(1, 1),
            }
        );
        let one = FrameSizes::Discrete(Size::new(640, 480));
        assert_eq!(one.interval_query_size(), Size::new(640, 480));
    }

    #[test]
    fn ntsc_rates_are_kept_and_degenerate_intervals_dropped() {
        let list = [FormatList {
            fourcc: *b"YUYV",
            sizes: vec![discrete(
                1280,
                720,
                vec![
                    FrameIntervals::Discrete(Interval::new(1001, 30000)),
                    FrameIntervals::Discrete(Interval::new(0, 30)),
                    FrameIntervals::Discrete(Interval::new(1, 0)),
                ],
            )],
        }];
        let modes = modes(&list);
        assert_eq!(modes[0].rates, [Rates::exactly(Interval::new(1001, 30000))]);
        let choice = negotiate("cam", &modes, &want(1280, 720, 30)).unwrap();
        assert_eq!(choice.interval, Interval::new(1001, 30000));
    }

    #[test]
    fn fourccs_map_to_formats_and_round_trip_as_text() {
        for (code, format) in [
            (*b"YUYV", Some(PixelFormat::Yuyv)),
            (*b"UYVY", Some(PixelFormat::Uyvy)),
            (*b"NV12", Some(PixelFormat::Nv12)),
            (*b"MJPG", Some(PixelFormat::Mjpeg)),
            (*b"JPEG", Some(PixelFormat::Mjpeg)),
            (*b"H264", None),
            (*b"Y16 ", None),
        ] {
            assert_eq!(pixel_format(code), format);
            assert_eq!(fourcc_code(&fourcc_text(code)), Some(code));
        }
        assert_eq!(fourcc_text([b'Y', b'1', b'6', 0x80 | b' ']), "Y16?");
        assert_eq!(fourcc_code("YUV"), None);
        assert_eq!(fourcc_code("YUYVY"), None);
        assert_eq!(fourcc_code("YUé"), None);
    }
}
