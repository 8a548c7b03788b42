//! CPU image preparation for the networks: the detector's square letterbox
//! and WiLoR's hand crops. Plain loops over RGB8 rows; no MLX here, so the
//! daemon can run these off the MLX thread.
//!
//! Coordinates are continuous with pixel k covering [k, k+1) (boxes and
//! keypoints use this); sampling happens at pixel centres (k + 0.5).

/// A borrowed RGB8 image, rows top to bottom, 3 bytes per pixel.
#[derive(Debug, Clone, Copy)]
pub struct RgbImage<'a> {
    pub width: usize,
    pub height: usize,
    pub data: &'a [u8],
}

impl<'a> RgbImage<'a> {
    /// `None` when `data` is not exactly `width × height × 3` bytes.
    pub fn new(width: usize, height: usize, data: &'a [u8]) -> Option<Self> {
        (width > 0 && height > 0 && data.len() == width * height * 3).then_some(RgbImage {
            width,
            height,
            data,
        })
    }
}

/// Grey of the letterbox padding, as the detector was trained with.
pub const LETTERBOX_PAD: f32 = 114.0;

/// Where a letterboxed square sits in the original image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Original pixels per network-input pixel.
    pub scale: f32,
    /// Offset of the square's left/top edge in original pixels (≤ 0 on the
    /// padded axis).
    pub origin: [f32; 2],
    pub size: usize,
}

impl Letterbox {
    /// Network-input point → original image point.
    pub fn to_image(&self, x: f32, y: f32) -> [f32; 2] {
        [
            x * self.scale + self.origin[0],
            y * self.scale + self.origin[1],
        ]
    }
}

/// Resizes the image into a `size`² square (the longer side fills it, the
/// image centred, grey padding on the shorter axis), bilinear, as floats in
/// [0, 1] (H, W, 3). Returns the mapping back to image coordinates.
pub fn letterbox(img: RgbImage, size: usize) -> (Vec<f32>, Letterbox) {
    let side = img.width.max(img.height) as f32;
    let scale = side / size as f32;
    let origin = [
        (img.width as f32 - side) / 2.0,
        (img.height as f32 - side) / 2.0,
    ];
    // The sampling positions depend on the column or the row alone: work
    // them out once per axis, then the inner loop only blends.
    let columns = taps(size, scale, origin[0], img.width);
    let rows = taps(size, scale, origin[1], img.height);
    let pad = LETTERBOX_PAD / 255.0;
    let mut out = vec![pad; size * size * 3];
    let stride = img.width * 3;
    for_row_bands(&mut out, size * 3, |oy, line| {
        let ty = &rows[oy];
        if !ty.inside {
            return;
        }
        let (r0, r1) = (&img.data[ty.i0 * stride..], &img.data[ty.i1 * stride..]);
        for (px, tx) in line.chunks_exact_mut(3).zip(&columns) {
            if !tx.inside {
                continue;
            }
            let (a, b) = (tx.i0 * 3, tx.i1 * 3);
            for c in 0..3 {
                let top = r0[a + c] as f32 * (1.0 - tx.f) + r0[b + c] as f32 * tx.f;
                let bottom = r1[a + c] as f32 * (1.0 - tx.f) + r1[b + c] as f32 * tx.f;
                px[c] = (top * (1.0 - ty.f) + bottom * ty.f) / 255.0;
            }
        }
    });
    (
        out,
        Letterbox {
            scale,
            origin,
            size,
        },
    )
}

/// Where output index `o` of an axis samples the input (bilinear, pixel
/// centres at k + 0.5, edges replicated), and whether it lies in the image.
struct Tap {
    i0: usize,
    i1: usize,
    f: f32,
    inside: bool,
}

fn taps(n_out: usize, scale: f32, origin: f32, n_in: usize) -> Vec<Tap> {
    (0..n_out)
        .map(|o| {
            let p = (o as f32 + 0.5) * scale + origin;
            let q = (p - 0.5).clamp(0.0, (n_in - 1) as f32);
            let i0 = q.floor() as usize;
            Tap {
                i0,
                i1: (i0 + 1).min(n_in - 1),
                f: q - i0 as f32,
                inside: p >= 0.0 && p <= n_in as f32,
            }
        })
        .collect()
}

/// A square hand crop around a detection, as WiLoR expects it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandCrop {
    /// Box centre in image pixels.
    pub centre: [f32; 2],
    /// Side of the square crop in image pixels.
    pub side: f32,
    /// Left hands are mirrored so the network always sees a right hand.
    pub mirrored: bool,
}

impl HandCrop {
    /// Square of `expand × max(w, h)` around the box centre (WiLoR uses 2.5).
    pub fn from_box(bbox: [f32; 4], is_right: bool, expand: f32) -> Self {
        let (w, h) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
        HandCrop {
            centre: [(bbox[0] + bbox[2]) / 2.0, (bbox[1] + bbox[3]) / 2.0],
            side: expand * w.max(h),
            mirrored: !is_right,
        }
    }
}

/// Warps the crop to `size`² float RGB (0..255), zeros outside the image,
/// as the reference's `cv2.warpAffine` does: output pixel u samples image
/// position `centre + (u − size/2) · side/size` (mirrored for left hands).
/// When the crop shrinks the image by more than 2.2×, the image is first
/// low-pass filtered (Gaussian, σ = (side/size/2 − 1)/2) as the reference
/// does against aliasing; only the region the crop reads is filtered.
pub fn crop_hand(img: RgbImage, crop: &HandCrop, size: usize) -> Vec<f32> {
    // A crop far larger than the image, or centred far outside it, sees
    // nothing of it: answer with the empty crop instead of doing
    // arithmetic that overflows (callers validate boxes; this is the floor).
    let limit = 16.0 * (img.width + img.height) as f32;
    let usable =
        crop.side > 0.0 && crop.side <= limit && crop.centre.iter().all(|c| c.abs() <= limit);
    if !usable {
        return vec![0f32; size * size * 3];
    }
    let step = crop.side / size as f32;
    let half = size as f32 / 2.0;
    let downscale = step / 2.0;
    let sigma = if downscale > 1.1 {
        (downscale - 1.0) / 2.0
    } else {
        0.0
    };

    // Region of the image the warp reads (plus the filter's reach).
    let reach = if sigma > 0.0 {
        (4.0 * sigma + 0.5) as isize
    } else {
        0
    } + 2;
    let lo_x = (crop.centre[0] - half * step).floor() as isize - reach;
    let hi_x = (crop.centre[0] + half * step).ceil() as isize + reach;
    let lo_y = (crop.centre[1] - half * step).floor() as isize - reach;
    let hi_y = (crop.centre[1] + half * step).ceil() as isize + reach;
    let region = Region::new(img, lo_x, hi_x, lo_y, hi_y, sigma);

    let mut out = vec![0f32; size * size * 3];
    for v in 0..size {
        let y = crop.centre[1] + (v as f32 - half) * step;
        for u in 0..size {
            let du = (u as f32 - half) * step;
            let x = if crop.mirrored {
                crop.centre[0] - du
            } else {
                crop.centre[0] + du
            };
            let px = region.sample_zero_border(x, y);
            out[(v * size + u) * 3..][..3].copy_from_slice(&px);
        }
    }
    out
}

/// Most threads one image stage splits its rows over.
const MAX_ROW_THREADS: usize = 4;

/// Calls `row(index, pixels)` for every `row_len`-long row of `out`, the rows
/// split into contiguous bands over a few scoped threads; each row is
/// computed as it would be in one loop, so the result is the same. (The
/// 256² hand crop got slower this way on the H200 host, 2.2 → 2.9 ms, so
/// only the 512² letterbox uses it: 4.1 → 2.4 ms there.)
fn for_row_bands<F>(out: &mut [f32], row_len: usize, row: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let rows = out.len() / row_len;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_ROW_THREADS)
        .min(rows.max(1));
    if threads <= 1 {
        for (i, line) in out.chunks_exact_mut(row_len).enumerate() {
            row(i, line);
        }
        return;
    }
    let band = rows.div_ceil(threads);
    let row = &row;
    std::thread::scope(|s| {
        for (b, chunk) in out.chunks_mut(band * row_len).enumerate() {
            s.spawn(move || {
                for (i, line) in chunk.chunks_exact_mut(row_len).enumerate() {
                    row(b * band + i, line);
                }
            });
        }
    });
}

/// A window of the image as floats, optionally Gaussian-filtered with edge
/// replication (scipy's `mode="nearest"`, truncate 4σ).
struct Region {
    x0: isize,
    y0: isize,
    w: usize,
    h: usize,
    img_w: isize,
    img_h: isize,
    data: Vec<f32>,
}

impl Region {
    fn new(img: RgbImage, lo_x: isize, hi_x: isize, lo_y: isize, hi_y: isize, sigma: f32) -> Self {
        let (img_w, img_h) = (img.width as isize, img.height as isize);
        let x0 = lo_x.clamp(0, img_w - 1);
        let y0 = lo_y.clamp(0, img_h - 1);
        let w = (hi_x.clamp(0, img_w - 1) - x0 + 1) as usize;
        let h = (hi_y.clamp(0, img_h - 1) - y0 + 1) as usize;
        let pixel = |x: isize, y: isize, c: usize| -> f32 {
            let x = x.clamp(0, img_w - 1) as usize;
            let y = y.clamp(0, img_h - 1) as usize;
            img.data[(y * img.width + x) * 3 + c] as f32
        };
        let mut data = vec![0f32; w * h * 3];
        if sigma <= 0.0 {
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        data[(y * w + x) * 3 + c] = pixel(x0 + x as isize, y0 + y as isize, c);
                    }
                }
            }
        } else {
            let kernel = gaussian_kernel(sigma);
            let r = (kernel.len() / 2) as isize;
            // Horizontal pass over the rows the vertical pass will need.
            let rows = h + 2 * r as usize;
            let mut tmp = vec![0f64; rows * w * 3];
            for ry in 0..rows {
                let y = y0 + ry as isize - r;
                for x in 0..w {
                    for c in 0..3 {
                        let mut acc = 0f64;
                        for (k, &kv) in kernel.iter().enumerate() {
                            acc += kv * pixel(x0 + x as isize + k as isize - r, y, c) as f64;
                        }
                        tmp[(ry * w + x) * 3 + c] = acc;
                    }
                }
            }
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let mut acc = 0f64;
                        for (k, &kv) in kernel.iter().enumerate() {
                            acc += kv * tmp[((y + k) * w + x) * 3 + c];
                        }
                        data[(y * w + x) * 3 + c] = acc as f32;
                    }
                }
            }
        }
        Region {
            x0,
            y0,
            w,
            h,
            img_w,
            img_h,
            data,
        }
    }

    /// Bilinear at pixel-centre coordinates; taps outside the image are 0.
    fn sample_zero_border(&self, x: f32, y: f32) -> [f32; 3] {
        let (fx0, fy0) = (x.floor(), y.floor());
        let (fx, fy) = (x - fx0, y - fy0);
        let (ix, iy) = (fx0 as isize, fy0 as isize);
        let mut out = [0f32; 3];
        for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
            for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                let (px, py) = (ix + dx, iy + dy);
                if px < 0 || py < 0 || px >= self.img_w || py >= self.img_h {
                    continue;
                }
                let (rx, ry) = (px - self.x0, py - self.y0);
                if rx < 0 || ry < 0 || rx >= self.w as isize || ry >= self.h as isize {
                    continue;
                }
                let at = (ry as usize * self.w + rx as usize) * 3;
                for (o, v) in out.iter_mut().zip(&self.data[at..at + 3]) {
                    *o += wx * wy * v;
                }
            }
        }
        out
    }
}

fn gaussian_kernel(sigma: f32) -> Vec<f64> {
    let sigma = sigma as f64;
    let r = (4.0 * sigma + 0.5) as i64;
    let k: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let sum: f64 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Vec<u8> {
        (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x * 3) as u8, (y * 2) as u8, 200]))
            .collect()
    }

    #[test]
    fn letterbox_pads_the_short_axis_and_maps_back() {
        let data = gradient(64, 32);
        let img = RgbImage::new(64, 32, &data).unwrap();
        let (pixels, lb) = letterbox(img, 32);
        assert_eq!(lb.scale, 2.0);
        assert_eq!(lb.origin, [0.0, -16.0]);
        // Top rows are padding; the middle rows hold the image.
        assert_eq!(pixels[0], LETTERBOX_PAD / 255.0);
        let mid = &pixels[(16 * 32 + 5) * 3..][..3];
        assert!((mid[2] - 200.0 / 255.0).abs() < 1e-6);
        // Output pixel 5 covers image x in [10, 12): its centre 11 is halfway
        // between pixels 10 and 11 (values 30 and 33).
        assert!((mid[0] * 255.0 - 31.5).abs() < 1e-3, "{}", mid[0] * 255.0);
        assert_eq!(lb.to_image(16.0, 16.0), [32.0, 16.0]);
        assert!(RgbImage::new(64, 32, &data[1..]).is_none());
    }

    #[test]
    fn crop_mirrors_left_hands_and_zero_fills_outside() {
        let data = gradient(40, 40);
        let img = RgbImage::new(40, 40, &data).unwrap();
        let right = HandCrop::from_box([10.0, 10.0, 18.0, 18.0], true, 2.5);
        assert_eq!(right.side, 20.0);
        let a = crop_hand(img, &right, 20);
        let left = HandCrop {
            mirrored: true,
            ..right
        };
        let b = crop_hand(img, &left, 20);
        // Identity scale: output (u, v) = image (centre + u − 10, …).
        let px = |buf: &[f32], u: usize, v: usize| buf[(v * 20 + u) * 3];
        assert_eq!(px(&a, 3, 4), (14 - 10 + 3) as f32 * 3.0);
        // Mirrored: column u reads the image at centre − (u − 10).
        assert_eq!(px(&b, 3, 4), (14 + 10 - 3) as f32 * 3.0);
        // A crop hanging off the image is black there.
        let edge = HandCrop::from_box([-30.0, 0.0, -10.0, 20.0], true, 1.0);
        assert!(crop_hand(img, &edge, 10).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn large_downscale_filters_before_sampling() {
        // A one-pixel checkerboard averages to grey once filtered.
        let data: Vec<u8> = (0..400 * 400)
            .flat_map(|i| {
                let v = if (i % 400 + i / 400) % 2 == 0 { 255 } else { 0 };
                [v, v, v]
            })
            .collect();
        let img = RgbImage::new(400, 400, &data).unwrap();
        let crop = HandCrop::from_box([100.0, 100.0, 300.0, 300.0], true, 1.0);
        let out = crop_hand(img, &crop, 32);
        let centre = out[(16 * 32 + 16) * 3];
        assert!((centre - 127.5).abs() < 2.0, "{centre}");
        let k = gaussian_kernel(1.5);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(k.len(), 13);
    }
}
