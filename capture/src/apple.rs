//! The parts of the AVFoundation backend that need no Mac: CoreVideo and
//! CoreMedia codes to posed's types, CMTime arithmetic, device labels and
//! the texts users see about camera permission. Compiled and tested on every
//! OS; `avf` only reads values out of the OS and hands them here.

use std::fmt;
use std::time::Duration;

use crate::format::{Colour, PixelFormat, YuvMatrix, YuvRange};
use crate::grabber::Permission;
use crate::mode::{Choice, Interval, Mode, Rates, Size, Sizes};

/// The formats tried when the config names none, best first: the camera's
/// native 4:2:0 (AVFoundation hands it over without converting), packed
/// 4:2:2, BGRA, and MJPEG last (AVFoundation decodes it for us).
pub const DEFAULT_FORMATS: [PixelFormat; 5] = [
    PixelFormat::Nv12,
    PixelFormat::Yuyv,
    PixelFormat::Uyvy,
    PixelFormat::Bgra,
    PixelFormat::Mjpeg,
];

/// A four-character code packed big-endian, as Apple's headers write
/// `'420v'`.
pub const fn fourcc(code: &[u8; 4]) -> u32 {
    u32::from_be_bytes(*code)
}

/// `kCVPixelFormatType_420YpCbCr8BiPlanarFullRange`.
pub const NV12_FULL: u32 = fourcc(b"420f");
/// `kCVPixelFormatType_420YpCbCr8BiPlanarVideoRange`.
pub const NV12_VIDEO: u32 = fourcc(b"420v");
/// `kCVPixelFormatType_422YpCbCr8_yuvs`.
pub const YUYV: u32 = fourcc(b"yuvs");
/// `kCVPixelFormatType_422YpCbCr8`.
pub const UYVY: u32 = fourcc(b"2vuy");
/// `kCVPixelFormatType_32BGRA`.
pub const BGRA: u32 = fourcc(b"BGRA");
/// `kCMVideoCodecType_JPEG_OpenDML`, what UVC MJPEG formats report.
pub const MJPEG_OPENDML: u32 = fourcc(b"dmb1");
/// `kCMVideoCodecType_JPEG`.
pub const JPEG: u32 = fourcc(b"jpeg");

/// A four-character code for people: `420v`, or hex when it is not four
/// printable characters (CoreVideo also has codes like `0x00000020`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub u32);

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0.to_be_bytes();
        if bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
            bytes
                .iter()
                .try_for_each(|&b| write!(f, "{}", char::from(b)))
        } else {
            write!(f, "0x{:08x}", self.0)
        }
    }
}

/// How posed reads a CoreVideo pixel format or a device format's media
/// subtype, and the range when the code alone says it (the bi-planar pair).
/// MJPEG device formats are labelled `Mjpeg`; AVFoundation decodes them
/// before the data output, so their frames arrive as BGRA.
pub fn pixel_format(code: u32) -> Option<(PixelFormat, Option<YuvRange>)> {
    match code {
        NV12_FULL => Some((PixelFormat::Nv12, Some(YuvRange::Full))),
        NV12_VIDEO => Some((PixelFormat::Nv12, Some(YuvRange::Limited))),
        YUYV => Some((PixelFormat::Yuyv, None)),
        UYVY => Some((PixelFormat::Uyvy, None)),
        BGRA => Some((PixelFormat::Bgra, None)),
        MJPEG_OPENDML | JPEG => Some((PixelFormat::Mjpeg, None)),
        _ => None,
    }
}

/// How to read a delivered buffer's YUV values. CoreVideo's packed 4:2:2
/// types (`yuvs`, `2vuy`) are video range by definition; their full-range
/// variants have codes of their own that we never ask for.
pub fn buffer_colour(range: Option<YuvRange>, matrix: YuvMatrix) -> Colour {
    Colour {
        range: range.unwrap_or(YuvRange::Limited),
        matrix,
    }
}

/// The pixel format to ask the video data output for: the device format's
/// own subtype when it is one we convert and the output offers it (no
/// conversion inside AVFoundation), else BGRA, which it always offers
/// (MJPEG device formats land here: `jpeg` is a codec, not a pixel type).
pub fn output_pixel_format(native: u32, available: &[u32]) -> u32 {
    let convertible = matches!(pixel_format(native), Some((f, _)) if f != PixelFormat::Mjpeg);
    if convertible && available.contains(&native) {
        native
    } else {
        BGRA
    }
}

/// The YCbCr matrix named by a buffer's `kCVImageBufferYCbCrMatrixKey`
/// attachment (`ITU_R_601_4`, `ITU_R_709_2`, ...). Apple's cameras encode
/// BT.709, which is also the answer when the attachment is missing; the
/// rarer SMPTE 240M and BT.2020 are read as BT.709, their nearest neighbour
/// among the matrices the converters know.
pub fn yuv_matrix(attachment: Option<&str>) -> YuvMatrix {
    match attachment {
        Some(name) if name.contains("601") => YuvMatrix::Bt601,
        _ => YuvMatrix::Bt709,
    }
}

/// A `CMTime` as plain numbers (CoreMedia's struct is macOS-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmTime {
    pub value: i64,
    pub timescale: i32,
    /// `kCMTimeFlags_*` bits.
    pub flags: u32,
}

impl CmTime {
    pub const VALID: u32 = 1;
    pub const POSITIVE_INFINITY: u32 = 1 << 2;
    pub const NEGATIVE_INFINITY: u32 = 1 << 3;
    pub const INDEFINITE: u32 = 1 << 4;

    /// A valid time of `value / timescale` seconds.
    pub const fn new(value: i64, timescale: i32) -> CmTime {
        CmTime {
            value,
            timescale,
            flags: CmTime::VALID,
        }
    }

    /// Valid and numeric: not infinite, not indefinite, positive timescale.
    pub fn is_numeric(self) -> bool {
        let special = CmTime::POSITIVE_INFINITY | CmTime::NEGATIVE_INFINITY | CmTime::INDEFINITE;
        self.flags & CmTime::VALID != 0 && self.flags & special == 0 && self.timescale > 0
    }

    /// Whether this is a longer span than `other` (both numeric).
    pub fn longer_than(self, other: CmTime) -> bool {
        i128::from(self.value) * i128::from(other.timescale)
            > i128::from(other.value) * i128::from(self.timescale)
    }

    /// As a time since its clock's zero (a presentation time on the host
    /// clock); `None` when invalid or negative.
    pub fn to_duration(self) -> Option<Duration> {
        if !self.is_numeric() {
            return None;
        }
        let value = u64::try_from(self.value).ok()?;
        let scale = u64::try_from(self.timescale).ok()?;
        let secs = value / scale;
        // (value % scale) < scale ≤ 2^31, so the product stays below 2^61.
        let nanos = (value % scale) * 1_000_000_000 / scale;
        Some(Duration::from_secs(secs) + Duration::from_nanos(nanos))
    }

    /// As a frame interval, reduced when its parts do not fit `u32`; `None`
    /// when invalid, not positive, or too large even reduced.
    pub fn to_interval(self) -> Option<Interval> {
        if !self.is_numeric() || self.value <= 0 {
            return None;
        }
        let (value, scale) = (
            self.value.unsigned_abs(),
            u64::from(self.timescale.unsigned_abs()),
        );
        let exact = |v: u64, s: u64| {
            Some(Interval::new(
                u32::try_from(v).ok()?,
                u32::try_from(s).ok()?,
            ))
        };
        exact(value, scale).or_else(|| {
            let g = gcd(value, scale);
            exact(value / g, scale / g)
        })
    }

    /// A frame interval as a `CMTime` (value = numerator, timescale =
    /// denominator), reduced when the denominator does not fit `i32`.
    pub fn from_interval(interval: Interval) -> Option<CmTime> {
        if interval.numerator == 0 || interval.denominator == 0 {
            return None;
        }
        let (mut value, mut scale) = (
            u64::from(interval.numerator),
            u64::from(interval.denominator),
        );
        if i32::try_from(scale).is_err() {
            let g = gcd(value, scale);
            (value, scale) = (value / g, scale / g);
        }
        Some(CmTime::new(
            i64::try_from(value).ok()?,
            i32::try_from(scale).ok()?,
        ))
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// One entry of `device.formats`, from its media subtype, dimensions and
/// `videoSupportedFrameRateRanges` as (minFrameDuration, maxFrameDuration).
/// Ranges whose durations are not usable intervals are left out.
pub fn device_mode(subtype: u32, width: i32, height: i32, ranges: &[(CmTime, CmTime)]) -> Mode {
    let (format, range) = match pixel_format(subtype) {
        Some((format, range)) => (Some(format), range),
        None => (None, None),
    };
    let rates = ranges
        .iter()
        .filter_map(|&(min, max)| {
            Some(Rates {
                fastest: min.to_interval()?,
                slowest: max.to_interval()?,
            })
        })
        .collect();
    Mode {
        fourcc: FourCc(subtype).to_string(),
        format,
        range,
        sizes: Sizes::One(size(width, height)),
        rates,
    }
}

/// Whether the device format now at `choice.mode` is still the one chosen
/// (the list is read again at open; a replug can reorder it).
pub fn still_chosen(subtype: u32, width: i32, height: i32, choice: &Choice) -> bool {
    FourCc(subtype).to_string() == choice.fourcc && size(width, height) == choice.size
}

fn size(width: i32, height: i32) -> Size {
    Size::new(
        u32::try_from(width).unwrap_or(0),
        u32::try_from(height).unwrap_or(0),
    )
}

/// `AVCaptureDeviceType` values (the constants' string values; naming the
/// newer constants themselves would stop the binary loading on an older
/// macOS).
pub const BUILT_IN_WIDE_ANGLE: &str = "AVCaptureDeviceTypeBuiltInWideAngleCamera";
/// macOS 14+.
pub const EXTERNAL: &str = "AVCaptureDeviceTypeExternal";
/// Before macOS 14 (deprecated since).
pub const EXTERNAL_UNKNOWN: &str = "AVCaptureDeviceTypeExternalUnknown";
/// macOS 14+; without `NSCameraUseContinuityCameraDeviceType` in the
/// Info.plist an iPhone shows up as a built-in wide-angle camera instead.
pub const CONTINUITY: &str = "AVCaptureDeviceTypeContinuityCamera";

/// The device types to discover on this macOS.
pub fn discovery_types(macos_14: bool) -> Vec<&'static str> {
    if macos_14 {
        vec![BUILT_IN_WIDE_ANGLE, EXTERNAL, CONTINUITY]
    } else {
        vec![BUILT_IN_WIDE_ANGLE, EXTERNAL_UNKNOWN]
    }
}

/// `Device::location` for an `AVCaptureDeviceType`.
pub fn location(device_type: &str) -> &'static str {
    match device_type {
        BUILT_IN_WIDE_ANGLE => "built-in",
        EXTERNAL | EXTERNAL_UNKNOWN => "external",
        CONTINUITY => "continuity",
        _ => "other",
    }
}

/// Without this the OS never asks the user: the binary is killed or
/// silently denied.
pub const NO_USAGE_DESCRIPTION: &str = "this posed binary has no camera usage description embedded (Info.plist in __TEXT,__info_plist); build it with cargo on macOS, whose build.rs embeds deploy/launchd/Info.plist";
pub const DENIED: &str = "camera access is off for posed: System Settings › Privacy & Security › Camera, then `launchctl kickstart -k gui/$UID/dev.posed.daemon`";
pub const RESTRICTED: &str =
    "camera access is restricted on this Mac (Screen Time or a device-management profile)";

/// `AVAuthorizationStatus` for video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    NotDetermined,
    Restricted,
    Denied,
    Authorized,
    /// A value newer than this code.
    Other(isize),
}

impl Authorization {
    pub fn from_raw(raw: isize) -> Authorization {
        match raw {
            0 => Authorization::NotDetermined,
            1 => Authorization::Restricted,
            2 => Authorization::Denied,
            3 => Authorization::Authorized,
            other => Authorization::Other(other),
        }
    }
}

impl fmt::Display for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authorization::NotDetermined => f.write_str("not determined"),
            Authorization::Restricted => f.write_str("restricted"),
            Authorization::Denied => f.write_str("denied"),
            Authorization::Authorized => f.write_str("authorized"),
            Authorization::Other(raw) => write!(f, "unknown ({raw})"),
        }
    }
}

/// What the capture loop is told. `requested`: the user is being asked
/// (the backend asked, or was told to ask, while undetermined).
pub fn permission(usage_description: bool, status: Authorization, requested: bool) -> Permission {
    if !usage_description {
        return Permission::Misconfigured(NO_USAGE_DESCRIPTION.to_owned());
    }
    match status {
        Authorization::Authorized => Permission::Granted,
        Authorization::NotDetermined if requested => Permission::Pending,
        Authorization::NotDetermined => Permission::Undetermined,
        Authorization::Denied => Permission::Denied(DENIED.to_owned()),
        Authorization::Restricted => Permission::Denied(RESTRICTED.to_owned()),
        Authorization::Other(raw) => Permission::Denied(format!(
            "macOS reports a camera authorization status posed does not know ({raw})"
        )),
    }
}

/// What `posed doctor` shows about the identity macOS grants camera access
/// to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleIdentity {
    /// `CFBundleIdentifier` of the embedded Info.plist (`dev.posed.daemon`).
    pub identifier: Option<String>,
    /// `NSCameraUsageDescription`; without it macOS never asks.
    pub camera_usage: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corevideo_codes_map_to_layouts_and_ranges() {
        let cases = [
            (b"420f", Some((PixelFormat::Nv12, Some(YuvRange::Full)))),
            (b"420v", Some((PixelFormat::Nv12, Some(YuvRange::Limited)))),
            (b"yuvs", Some((PixelFormat::Yuyv, None))),
            (b"2vuy", Some((PixelFormat::Uyvy, None))),
            (b"BGRA", Some((PixelFormat::Bgra, None))),
            (b"dmb1", Some((PixelFormat::Mjpeg, None))),
            (b"jpeg", Some((PixelFormat::Mjpeg, None))),
            (b"x420", None),
            (b"ARGB", None),
        ];
        for (code, want) in cases {
            assert_eq!(pixel_format(fourcc(code)), want, "{}", FourCc(fourcc(code)));
        }
        assert_eq!(NV12_VIDEO, 0x3432_3076);
    }

    #[test]
    fn fourcc_shows_characters_or_hex() {
        assert_eq!(FourCc(fourcc(b"420v")).to_string(), "420v");
        assert_eq!(FourCc(fourcc(b"BGRA")).to_string(), "BGRA");
        assert_eq!(FourCc(0x20).to_string(), "0x00000020");
        assert_eq!(FourCc(u32::MAX).to_string(), "0xffffffff");
    }

    #[test]
    fn packed_buffers_are_video_range_and_biplanar_keep_theirs() {
        let c = buffer_colour(None, YuvMatrix::Bt709);
        assert_eq!(c.range, YuvRange::Limited);
        let c = buffer_colour(Some(YuvRange::Full), YuvMatrix::Bt601);
        assert_eq!((c.range, c.matrix), (YuvRange::Full, YuvMatrix::Bt601));
    }

    #[test]
    fn output_takes_the_native_format_when_offered_else_bgra() {
        let offered = [NV12_VIDEO, NV12_FULL, YUYV, UYVY, BGRA];
        assert_eq!(output_pixel_format(NV12_FULL, &offered), NV12_FULL);
        assert_eq!(output_pixel_format(UYVY, &offered), UYVY);
        assert_eq!(output_pixel_format(NV12_FULL, &[NV12_VIDEO, BGRA]), BGRA);
        assert_eq!(
            output_pixel_format(MJPEG_OPENDML, &[MJPEG_OPENDML, BGRA]),
            BGRA
        );
        assert_eq!(
            output_pixel_format(fourcc(b"x420"), &[fourcc(b"x420")]),
            BGRA
        );
    }

    #[test]
    fn matrix_attachment_defaults_to_709() {
        assert_eq!(yuv_matrix(Some("ITU_R_601_4")), YuvMatrix::Bt601);
        assert_eq!(yuv_matrix(Some("ITU_R_709_2")), YuvMatrix::Bt709);
        assert_eq!(yuv_matrix(Some("ITU_R_2020")), YuvMatrix::Bt709);
        assert_eq!(yuv_matrix(None), YuvMatrix::Bt709);
    }

    #[test]
    fn cmtime_to_duration_checks_flags_sign_and_scale() {
        let t = CmTime::new(90_000 * 12 + 45_000, 90_000);
        assert_eq!(t.to_duration(), Some(Duration::from_millis(12_500)));
        let t = CmTime::new(1, 3);
        assert_eq!(t.to_duration(), Some(Duration::from_nanos(333_333_333)));
        // Host-time clock values near the top of the range do not overflow.
        let t = CmTime::new(i64::MAX, 1_000_000_000);
        assert_eq!(t.to_duration().map(|d| d.as_secs()), Some(9_223_372_036));
        for bad in [
            CmTime {
                flags: 0,
                ..CmTime::new(1, 30)
            },
            CmTime {
                flags: CmTime::VALID | CmTime::INDEFINITE,
                ..CmTime::new(1, 30)
            },
            CmTime {
                flags: CmTime::VALID | CmTime::POSITIVE_INFINITY,
                ..CmTime::new(1, 30)
            },
            CmTime::new(-1, 30),
            CmTime::new(1, 0),
            CmTime::new(1, -30),
        ] {
            assert_eq!(bad.to_duration(), None, "{bad:?}");
        }
    }

    #[test]
    fn cmtime_and_interval_convert_both_ways() {
        assert_eq!(
            CmTime::new(1001, 30_000).to_interval(),
            Some(Interval::new(1001, 30_000))
        );
        assert_eq!(CmTime::new(1, 30).to_interval(), Some(Interval::new(1, 30)));
        // Too large for u32 as given, fine reduced.
        let t = CmTime::new(5_000_000_000, 1_000_000_000);
        assert_eq!(t.to_interval(), Some(Interval::new(5, 1)));
        assert_eq!(CmTime::new(i64::MAX, 1).to_interval(), None);
        assert_eq!(CmTime::new(0, 30).to_interval(), None);
        assert_eq!(
            CmTime {
                flags: 0,
                ..CmTime::new(1, 30)
            }
            .to_interval(),
            None
        );

        assert_eq!(
            CmTime::from_interval(Interval::new(1001, 30_000)),
            Some(CmTime::new(1001, 30_000))
        );
        assert_eq!(CmTime::from_interval(Interval::new(1, 0)), None);
        assert_eq!(CmTime::from_interval(Interval::new(0, 30)), None);
        assert_eq!(
            CmTime::from_interval(Interval::new(2, 4_000_000_000)),
            Some(CmTime::new(1, 2_000_000_000))
        );
        assert_eq!(CmTime::from_interval(Interval::new(1, u32::MAX)), None);
        for interval in [
            Interval::new(1, 30),
            Interval::new(1001, 60_000),
            Interval::new(2, 15),
        ] {
            let t = CmTime::from_interval(interval).expect("fits");
            assert_eq!(t.to_interval(), Some(interval));
        }
    }

    #[test]
    fn cmtimes_compare_by_value_across_timescales() {
        assert!(CmTime::new(1, 15).longer_than(CmTime::new(1, 30)));
        assert!(!CmTime::new(1001, 30_000).longer_than(CmTime::new(1, 29)));
        assert!(!CmTime::new(2, 60).longer_than(CmTime::new(1, 30)));
        assert!(CmTime::new(i64::MAX, 1).longer_than(CmTime::new(i64::MAX, 2)));
    }

    #[test]
    fn device_formats_become_modes() {
        let ranges = [
            (CmTime::new(1, 30), CmTime::new(1, 1)),
            (
                CmTime {
                    flags: 0,
                    ..CmTime::new(1, 60)
                },
                CmTime::new(1, 60),
            ),
        ];
        let mode = device_mode(NV12_FULL, 1280, 720, &ranges);
        assert_eq!(mode.fourcc, "420f");
        assert_eq!(mode.format, Some(PixelFormat::Nv12));
        assert_eq!(mode.range, Some(YuvRange::Full));
        assert_eq!(mode.sizes, Sizes::One(Size::new(1280, 720)));
        assert_eq!(
            mode.rates,
            vec![Rates {
                fastest: Interval::new(1, 30),
                slowest: Interval::new(1, 1)
            }]
        );
        let odd = device_mode(fourcc(b"x420"), -1, 720, &[]);
        assert_eq!((odd.format, odd.range), (None, None));
        assert_eq!(odd.sizes, Sizes::One(Size::new(0, 720)));
    }

    #[test]
    fn the_chosen_format_is_recognised_at_open() {
        let choice = Choice {
            mode: 3,
            fourcc: "420v".to_owned(),
            format: PixelFormat::Nv12,
            size: Size::new(1280, 720),
            interval: Interval::new(1, 30),
        };
        assert!(still_chosen(NV12_VIDEO, 1280, 720, &choice));
        assert!(!still_chosen(NV12_FULL, 1280, 720, &choice));
        assert!(!still_chosen(NV12_VIDEO, 1920, 1080, &choice));
    }

    #[test]
    fn discovery_types_follow_the_os_and_label_devices() {
        assert_eq!(
            discovery_types(true),
            [BUILT_IN_WIDE_ANGLE, EXTERNAL, CONTINUITY]
        );
        assert_eq!(
            discovery_types(false),
            [BUILT_IN_WIDE_ANGLE, EXTERNAL_UNKNOWN]
        );
        assert_eq!(location(BUILT_IN_WIDE_ANGLE), "built-in");
        assert_eq!(location(EXTERNAL), "external");
        assert_eq!(location(EXTERNAL_UNKNOWN), "external");
        assert_eq!(location(CONTINUITY), "continuity");
        assert_eq!(location("AVCaptureDeviceTypeDeskViewCamera"), "other");
    }

    #[test]
    fn permission_follows_status_request_and_plist() {
        use Authorization::*;
        assert_eq!(Authorization::from_raw(3), Authorized);
        assert_eq!(Authorization::from_raw(7), Other(7));
        assert_eq!(permission(true, Authorized, false), Permission::Granted);
        assert_eq!(permission(true, NotDetermined, true), Permission::Pending);
        assert_eq!(
            permission(true, NotDetermined, false),
            Permission::Undetermined
        );
        assert_eq!(
            permission(true, Denied, true),
            Permission::Denied(DENIED.to_owned())
        );
        assert_eq!(
            permission(true, Restricted, true),
            Permission::Denied(RESTRICTED.to_owned())
        );
        assert!(
            matches!(permission(true, Other(7), true), Permission::Denied(t) if t.contains('7'))
        );
        for status in [Authorized, NotDetermined, Denied] {
            assert_eq!(
                permission(false, status, true),
                Permission::Misconfigured(NO_USAGE_DESCRIPTION.to_owned())
            );
        }
        assert!(DENIED.contains("launchctl kickstart -k gui/$UID/dev.posed.daemon"));
        assert!(NO_USAGE_DESCRIPTION.contains("__TEXT,__info_plist"));
    }
}
