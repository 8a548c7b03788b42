//! The pixel layouts a camera hands us, and how their YUV values map to RGB.

use serde::{Deserialize, Serialize};

/// A layout the converters understand. Config names are the lowercase
/// variant names (`camera.formats = ["nv12", "mjpeg"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Bi-planar 4:2:0: a Y plane, then one plane of interleaved Cb/Cr
    /// (CoreVideo `420v`/`420f`, V4L2 `NV12`).
    Nv12,
    /// Packed 4:2:2, Y0 Cb Y1 Cr (V4L2 `YUYV`, CoreVideo `yuvs`).
    Yuyv,
    /// Packed 4:2:2, Cb Y0 Cr Y1 (CoreVideo `2vuy`, V4L2 `UYVY`).
    Uyvy,
    /// 8-bit B, G, R, A (CoreVideo `BGRA`).
    Bgra,
    /// A JPEG per frame, as UVC cameras send above USB 2's raw bandwidth.
    Mjpeg,
}

impl PixelFormat {
    pub const ALL: [PixelFormat; 5] = [
        PixelFormat::Nv12,
        PixelFormat::Yuyv,
        PixelFormat::Uyvy,
        PixelFormat::Bgra,
        PixelFormat::Mjpeg,
    ];

    /// The config and display name.
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Nv12 => "nv12",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Uyvy => "uyvy",
            PixelFormat::Bgra => "bgra",
            PixelFormat::Mjpeg => "mjpeg",
        }
    }

    pub fn from_name(name: &str) -> Option<PixelFormat> {
        PixelFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which code values span black to white.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum YuvRange {
    /// "Video" range: Y 16..=235, Cb/Cr 16..=240 (CoreVideo `420v`, most UVC).
    Limited,
    /// Y and Cb/Cr use 0..=255 (CoreVideo `420f`, JPEG).
    Full,
}

/// The YCbCr matrix the camera encoded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum YuvMatrix {
    /// SD video and JPEG.
    Bt601,
    /// HD video; Apple's default for its cameras.
    Bt709,
}

/// How to read a YUV frame's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Colour {
    pub range: YuvRange,
    pub matrix: YuvMatrix,
}

impl Colour {
    /// What UVC webcams send unless they say otherwise.
    pub const UVC: Colour = Colour {
        range: YuvRange::Limited,
        matrix: YuvMatrix::Bt601,
    };
}
