//! Pushed images → RGB8 frames (and matte hints → grey planes), with every
//! way an image can be bad turned into a gRPC status the client can act on;
//! and the matte route's planes → PNG for events.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits};
use tonic::Status;

use crate::proto::{push_image_request, RawImage};

/// The largest image the daemon decodes, in pixels (configurable).
pub const DEFAULT_MAX_PIXELS: u64 = 4096 * 4096;

/// The most elongated image the daemon takes, long side over short side
/// (configurable): a 32:9 panorama is 3.6; a 65535×1 strip would be
/// letterboxed to a line no detector can read.
pub const DEFAULT_MAX_ASPECT_RATIO: f64 = 8.0;

/// What an image may be before the daemon spends work on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageLimits {
    pub max_pixels: u64,
    /// Long side over short side.
    pub max_aspect_ratio: f64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_aspect_ratio: DEFAULT_MAX_ASPECT_RATIO,
        }
    }
}

impl ImageLimits {
    /// No limit but memory (benches and tools on trusted files).
    pub const NONE: ImageLimits = ImageLimits {
        max_pixels: u64::MAX,
        max_aspect_ratio: f64::INFINITY,
    };

    /// The largest gRPC message a push of an image at the limit needs: raw
    /// RGB (3 bytes a pixel) and a raw grey matte hint (1 byte), plus room
    /// for the other fields. Never below gRPC's usual 4 MiB.
    pub fn max_message_bytes(&self) -> usize {
        let bytes = self.max_pixels.saturating_mul(4).saturating_add(1 << 20);
        usize::try_from(bytes).unwrap_or(usize::MAX).max(4 << 20)
    }

    fn check(&self, width: u64, height: u64) -> Result<(), Status> {
        if width == 0 || height == 0 {
            return Err(Status::invalid_argument(format!(
                "image is {width}x{height}: both sides must be at least 1 pixel"
            )));
        }
        let pixels = width.saturating_mul(height);
        if pixels > self.max_pixels {
            return Err(Status::resource_exhausted(format!(
                "image is {width}x{height} = {pixels} pixels, over the limit of {}",
                self.max_pixels
            )));
        }
        // Sides are below 2^32: exact in f64.
        let aspect = width.max(height) as f64 / width.min(height) as f64;
        if aspect > self.max_aspect_ratio {
            return Err(Status::invalid_argument(format!(
                "image is {width}x{height}: its aspect ratio {aspect:.1}:1 is over the limit of {}:1 (server.max_image_aspect_ratio)",
                self.max_aspect_ratio
            )));
        }
        Ok(())
    }
}

/// A decoded image: width × height × 3 bytes, rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

pub fn decode(
    image: Option<&push_image_request::Image>,
    limits: &ImageLimits,
) -> Result<Rgb8, Status> {
    match image {
        None => Err(Status::invalid_argument(
            "no image: set `encoded` (JPEG/PNG bytes) or `raw_rgb`",
        )),
        Some(push_image_request::Image::Encoded(bytes)) => decode_encoded(bytes, limits),
        Some(push_image_request::Image::RawRgb(raw)) => decode_raw(raw, limits),
    }
}

fn decode_raw(raw: &RawImage, limits: &ImageLimits) -> Result<Rgb8, Status> {
    let (w, h) = (u64::from(raw.width), u64::from(raw.height));
    limits.check(w, h)?;
    let want = w.saturating_mul(h).saturating_mul(3);
    if u64::try_from(raw.data.len()).ok() != Some(want) {
        return Err(Status::invalid_argument(format!(
            "raw_rgb holds {} bytes; {w}x{h} RGB8 needs {want}",
            raw.data.len()
        )));
    }
    Ok(Rgb8 {
        width: raw.width as usize,
        height: raw.height as usize,
        data: raw.data.clone(),
    })
}

/// True when a JPEG's scans are followed by its end-of-image marker.
/// Decoders fill a file cut short with grey and call it a success; a
/// truncated upload must be the client's error instead. The walk follows
/// segment lengths, so a complete thumbnail inside an APP segment (EXIF)
/// does not vouch for a cut main image; inside a scan, 0xFF is followed
/// only by 0x00 or a restart marker until the next real marker.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    jpeg_end(bytes).is_some()
}

/// Where a complete JPEG's EOI is; None if it is cut short or malformed.
fn jpeg_end(bytes: &[u8]) -> Option<usize> {
    const SOS: u8 = 0xDA;
    const EOI: u8 = 0xD9;
    let is_restart = |b: u8| (0xD0..=0xD7).contains(&b);
    let mut i = 2; // after SOI
    let mut seen_scan = false;
    loop {
        if *bytes.get(i)? != 0xFF {
            return None;
        }
        while *bytes.get(i + 1)? == 0xFF {
            i += 1; // fill bytes
        }
        let marker = *bytes.get(i + 1)?;
        match marker {
            EOI => return seen_scan.then_some(i),
            0x01 => i += 2,
            m if is_restart(m) => i += 2,
            _ => {
                let len = usize::from(u16::from_be_bytes([*bytes.get(i + 2)?, *bytes.get(i + 3)?]));
                if len < 2 {
                    return None;
                }
                i = i.checked_add(2 + len)?;
                if marker == SOS {
                    seen_scan = true;
                    // Entropy-coded data up to the next marker.
                    loop {
                        i += bytes.get(i..)?.iter().position(|&b| b == 0xFF)?;
                        let next = *bytes.get(i + 1)?;
                        if next == 0x00 || is_restart(next) {
                            i += 2;
                        } else {
                            break;
                        }
                    }
                }
            }
        }
    }
}

fn decode_encoded(bytes: &[u8], limits: &ImageLimits) -> Result<Rgb8, Status> {
    if bytes.is_empty() {
        return Err(Status::invalid_argument("encoded image is empty"));
    }
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| matches!(f, ImageFormat::Jpeg | ImageFormat::Png))
        .ok_or_else(|| Status::invalid_argument("encoded image is neither JPEG nor PNG"))?;
    let corrupt = |e: image::ImageError| {
        Status::invalid_argument(format!("cannot decode {format:?} image: {e}"))
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(Status::invalid_argument(
            "cannot decode Jpeg image: the data ends before the image does (truncated upload?)",
        ));
    }
    // Read the header first so an oversized image is refused before its
    // pixels are allocated.
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(corrupt)?;
    limits.check(u64::from(w), u64::from(h))?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(w);
    decoder_limits.max_image_height = Some(h);
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16));
    reader.limits(decoder_limits);
    let rgb = reader.decode().map_err(corrupt)?.into_rgb8();
    Ok(Rgb8 {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

/// A pushed matte hint as one 8-bit grey plane of `width × height`: a
/// PNG/JPEG file (converted to grey) or exactly `width × height` raw bytes.
pub fn decode_hint(bytes: &[u8], width: usize, height: usize) -> Result<Vec<u8>, Status> {
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| matches!(f, ImageFormat::Jpeg | ImageFormat::Png));
    let Some(format) = format else {
        if bytes.len() == width * height {
            return Ok(bytes.to_vec());
        }
        return Err(Status::invalid_argument(format!(
            "matte_hint is {} bytes: neither a PNG/JPEG file nor raw {width}x{height} grey ({} bytes)",
            bytes.len(),
            width * height
        )));
    };
    let corrupt =
        |e: image::ImageError| Status::invalid_argument(format!("cannot decode matte_hint: {e}"));
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(corrupt)?;
    if (w as usize, h as usize) != (width, height) {
        return Err(Status::invalid_argument(format!(
            "matte_hint is {w}x{h}; the image is {width}x{height}"
        )));
    }
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(Status::invalid_argument(
            "cannot decode matte_hint: the JPEG data ends before the image does",
        ));
    }
    let grey = ImageReader::with_format(Cursor::new(bytes), format)
        .decode()
        .map_err(corrupt)?
        .into_luma8();
    Ok(grey.into_raw())
}

/// PNG of 8-bit rows with `channels` samples per pixel (1 grey, 3 RGB,
/// 4 RGBA). Fast compression: events are produced at frame rate.
pub fn encode_png(data: &[u8], width: usize, height: usize, channels: usize) -> Vec<u8> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let colour = match channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        _ => image::ExtendedColorType::Rgba8,
    };
    let mut out = Vec::with_capacity(data.len() / 4);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub)
        .write_image(data, width as u32, height as u32, colour)
        .expect("writing a PNG of a consistent buffer into memory");
    out
}

#[cfg(test)]
mod tests {
    use image::{ImageEncoder, RgbImage};

    use super::*;
    use crate::proto::push_image_request::Image;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn decodes_png_jpeg_and_raw() {
        let p = decode(Some(&Image::Encoded(png(5, 3))), &ImageLimits::default()).unwrap();
        assert_eq!((p.width, p.height), (5, 3));
        assert_eq!(&p.data[..3], &[0, 0, 7]);
        assert_eq!(&p.data[(2 * 5 + 4) * 3..][..3], &[4, 2, 7]);
        let j = decode(Some(&Image::Encoded(jpeg(16, 8))), &ImageLimits::default()).unwrap();
        assert_eq!((j.width, j.height, j.data.len()), (16, 8, 16 * 8 * 3));
        let raw = RawImage {
            width: 2,
            height: 1,
            data: vec![1, 2, 3, 4, 5, 6],
        };
        assert_eq!(
            decode(
                Some(&Image::RawRgb(raw)),
                &ImageLimits {
                    max_pixels: 10,
                    ..Default::default()
                }
            )
            .unwrap()
            .data,
            [1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn bad_images_get_clear_statuses() {
        use tonic::Code;
        let status =
            |img: Option<Image>, limits: &ImageLimits| decode(img.as_ref(), limits).unwrap_err();

        let mut truncated = jpeg(64, 64);
        truncated.truncate(truncated.len() / 3);
        let s = status(Some(Image::Encoded(truncated)), &ImageLimits::default());
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().contains("cannot decode Jpeg"),
            "{}",
            s.message()
        );

        let mut corrupt = png(8, 8);
        let n = corrupt.len();
        corrupt[n / 2..].fill(0);
        assert_eq!(
            status(Some(Image::Encoded(corrupt)), &ImageLimits::default()).code(),
            Code::InvalidArgument
        );

        let s = status(
            Some(Image::Encoded(b"GIF89a....".to_vec())),
            &ImageLimits::default(),
        );
        assert!(s.message().contains("neither JPEG nor PNG"));

        let small = ImageLimits {
            max_pixels: 5000,
            ..Default::default()
        };
        let s = status(Some(Image::Encoded(png(100, 100))), &small);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message().contains("100x100 = 10000 pixels"),
            "{}",
            s.message()
        );

        let raw = RawImage {
            width: 4,
            height: 4,
            data: vec![0; 47],
        };
        let s = status(Some(Image::RawRgb(raw)), &ImageLimits::default());
        assert_eq!(s.message(), "raw_rgb holds 47 bytes; 4x4 RGB8 needs 48");

        let raw = RawImage {
            width: 0,
            height: 4,
            data: vec![],
        };
        assert_eq!(
            status(Some(Image::RawRgb(raw)), &ImageLimits::default()).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            status(None, &ImageLimits::default()).code(),
            Code::InvalidArgument
        );
    }

    /// A JPEG cut anywhere before its end-of-image marker is refused: the
    /// decoder alone returns a grey image for the missing part.
    #[test]
    fn a_jpeg_cut_short_is_refused() {
        use tonic::Code;
        let whole = jpeg(64, 64);
        assert!(decode(
            Some(&Image::Encoded(whole.clone())),
            &ImageLimits::default()
        )
        .is_ok());
        for keep in [whole.len() / 2, whole.len() - 2, whole.len() - 1] {
            let cut = whole[..keep].to_vec();
            let s = decode(Some(&Image::Encoded(cut)), &ImageLimits::default()).unwrap_err();
            assert_eq!(s.code(), Code::InvalidArgument, "{keep}: {}", s.message());
            assert!(
                s.message().contains("ends before the image"),
                "{}",
                s.message()
            );
        }
        // A complete thumbnail in an APP1 segment does not make a cut main
        // image whole.
        let thumb = jpeg(8, 8);
        let mut with_exif = whole[..2].to_vec();
        let app1_len = u16::try_from(2 + 6 + thumb.len()).unwrap();
        with_exif.extend_from_slice(&[0xFF, 0xE1]);
        with_exif.extend_from_slice(&app1_len.to_be_bytes());
        with_exif.extend_from_slice(b"Exif\0\0");
        with_exif.extend_from_slice(&thumb);
        with_exif.extend_from_slice(&whole[2..]);
        assert!(decode(
            Some(&Image::Encoded(with_exif.clone())),
            &ImageLimits::default()
        )
        .is_ok());
        let cut = with_exif[..with_exif.len() - 200].to_vec();
        let s = decode(Some(&Image::Encoded(cut)), &ImageLimits::default()).unwrap_err();
        assert!(
            s.message().contains("ends before the image"),
            "{}",
            s.message()
        );
        // Bytes after the end marker (some cameras pad files) are fine.
        let mut padded = whole;
        padded.extend_from_slice(&[0; 16]);
        assert!(decode(Some(&Image::Encoded(padded)), &ImageLimits::default()).is_ok());
    }

    /// An image elongated past the limit is refused from its header, before
    /// its pixels are decoded; the message names the setting.
    #[test]
    fn images_too_elongated_for_any_route_are_refused() {
        use tonic::Code;
        let limits = ImageLimits::default();
        let s = decode(Some(&Image::Encoded(png(4000, 1))), &limits).unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "image is 4000x1: its aspect ratio 4000.0:1 is over the limit of 8:1 (server.max_image_aspect_ratio)"
        );
        let raw = RawImage {
            width: 1,
            height: 9,
            data: vec![0; 27],
        };
        assert_eq!(
            decode(Some(&Image::RawRgb(raw)), &limits)
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        assert!(decode(Some(&Image::Encoded(png(80, 10))), &limits).is_ok());
        let wide = ImageLimits {
            max_aspect_ratio: 5000.0,
            ..limits
        };
        assert!(decode(Some(&Image::Encoded(png(4000, 1))), &wide).is_ok());
    }

    /// A raw frame at the pixel limit fits the message limit derived from
    /// it: raw 4K RGB with a raw hint under the default.
    #[test]
    fn the_message_limit_holds_a_raw_image_at_the_pixel_limit() {
        let limits = ImageLimits::default();
        let raw_4k = 3840 * 2160 * 3 + 3840 * 2160;
        assert!(limits.max_message_bytes() > raw_4k);
        assert!(limits.max_message_bytes() >= 4096 * 4096 * 4);
        let tiny = ImageLimits {
            max_pixels: 10,
            ..limits
        };
        assert_eq!(tiny.max_message_bytes(), 4 << 20);
        assert_eq!(ImageLimits::NONE.max_message_bytes(), usize::MAX);
    }

    #[test]
    fn hints_are_grey_files_or_raw_planes_of_the_image_size() {
        use tonic::Code;
        let raw = vec![7u8; 5 * 3];
        assert_eq!(decode_hint(&raw, 5, 3).unwrap(), raw);
        let grey = decode_hint(&png(5, 3), 5, 3).unwrap();
        assert_eq!(grey.len(), 15);
        // Luma of (x, y, 7) at (4, 2).
        let want = (0.2126f32 * 4.0 + 0.7152 * 2.0 + 0.0722 * 7.0).round() as u8;
        assert!(grey[2 * 5 + 4].abs_diff(want) <= 1, "{}", grey[14]);
        let s = decode_hint(&png(4, 3), 5, 3).unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "matte_hint is 4x3; the image is 5x3");
        let s = decode_hint(&[0; 14], 5, 3).unwrap_err();
        assert!(s.message().contains("neither a PNG/JPEG file nor raw 5x3"));
    }

    #[test]
    fn png_round_trips_every_channel_count() {
        for channels in [1, 3, 4] {
            let data: Vec<u8> = (0..6 * 4 * channels).map(|i| (i * 7) as u8).collect();
            let png = encode_png(&data, 6, 4, channels);
            let back = image::load_from_memory(&png).unwrap();
            assert_eq!(back.color().channel_count() as usize, channels);
            assert_eq!(back.as_bytes(), &data[..]);
        }
    }
}
