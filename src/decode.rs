//! Pushed images → RGB8 frames, with every way an image can be bad turned
//! into a gRPC status the client can act on.

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
}
