//! Pushed images → RGB8 frames (and matte hints → grey planes), with every
//! way an image can be bad turned into a gRPC status the client can act on;
//! and the matte route's planes → PNG for events.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits};
use tonic::Status;

use crate::proto::{push_image_request, RawImage};

/// The largest image the daemon decodes, in pixels (configurable).
pub const DEFAULT_MAX_PIXELS: u64 = 4096 * 4096;

/// A decoded image: width × height × 3 bytes, rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

pub fn decode(image: Option<&push_image_request::Image>, max_pixels: u64) -> Result<Rgb8, Status> {
    match image {
        None => Err(Status::invalid_argument(
            "no image: set `encoded` (JPEG/PNG bytes) or `raw_rgb`",
        )),
        Some(push_image_request::Image::Encoded(bytes)) => decode_encoded(bytes, max_pixels),
        Some(push_image_request::Image::RawRgb(raw)) => decode_raw(raw, max_pixels),
    }
}

fn check_size(width: u64, height: u64, max_pixels: u64) -> Result<(), Status> {
    if width == 0 || height == 0 {
        return Err(Status::invalid_argument(format!(
            "image is {width}x{height}: both sides must be at least 1 pixel"
        )));
    }
    if width * height > max_pixels {
        return Err(Status::resource_exhausted(format!(
            "image is {width}x{height} = {} pixels, over the limit of {max_pixels}",
            width * height
        )));
    }
    Ok(())
}

fn decode_raw(raw: &RawImage, max_pixels: u64) -> Result<Rgb8, Status> {
    let (w, h) = (raw.width as u64, raw.height as u64);
    check_size(w, h, max_pixels)?;
    let want = w * h * 3;
    if raw.data.len() as u64 != want {
        return Err(Status::invalid_argument(format!(
            "raw_rgb holds {} bytes; {w}x{h} RGB8 needs {want}",
            raw.data.len()
        )));
    }
    Ok(Rgb8 {
        width: w as usize,
        height: h as usize,
        data: raw.data.clone(),
    })
}

fn decode_encoded(bytes: &[u8], max_pixels: u64) -> Result<Rgb8, Status> {
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
    // Read the header first so an oversized image is refused before its
    // pixels are allocated.
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(corrupt)?;
    check_size(w as u64, h as u64, max_pixels)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    reader.limits(limits);
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
        let p = decode(Some(&Image::Encoded(png(5, 3))), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!((p.width, p.height), (5, 3));
        assert_eq!(&p.data[..3], &[0, 0, 7]);
        assert_eq!(&p.data[(2 * 5 + 4) * 3..][..3], &[4, 2, 7]);
        let j = decode(Some(&Image::Encoded(jpeg(16, 8))), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!((j.width, j.height, j.data.len()), (16, 8, 16 * 8 * 3));
        let raw = RawImage {
            width: 2,
            height: 1,
            data: vec![1, 2, 3, 4, 5, 6],
        };
        assert_eq!(
            decode(Some(&Image::RawRgb(raw)), 10).unwrap().data,
            [1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn bad_images_get_clear_statuses() {
        use tonic::Code;
        let status = |img: Option<Image>, max| decode(img.as_ref(), max).unwrap_err();

        let mut truncated = jpeg(64, 64);
        truncated.truncate(truncated.len() / 3);
        let s = status(Some(Image::Encoded(truncated)), DEFAULT_MAX_PIXELS);
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
            status(Some(Image::Encoded(corrupt)), DEFAULT_MAX_PIXELS).code(),
            Code::InvalidArgument
        );

        let s = status(
            Some(Image::Encoded(b"GIF89a....".to_vec())),
            DEFAULT_MAX_PIXELS,
        );
        assert!(s.message().contains("neither JPEG nor PNG"));

        let s = status(Some(Image::Encoded(png(100, 100))), 5000);
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
        let s = status(Some(Image::RawRgb(raw)), DEFAULT_MAX_PIXELS);
        assert_eq!(s.message(), "raw_rgb holds 47 bytes; 4x4 RGB8 needs 48");

        let raw = RawImage {
            width: 0,
            height: 4,
            data: vec![],
        };
        assert_eq!(
            status(Some(Image::RawRgb(raw)), DEFAULT_MAX_PIXELS).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            status(None, DEFAULT_MAX_PIXELS).code(),
            Code::InvalidArgument
        );
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
