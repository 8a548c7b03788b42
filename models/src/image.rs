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
/// does against aliasing.
///
/// The warp has no rotation, so a sample's column depends on u alone and
/// its row on v alone: the filter is worked out only at the columns and
/// rows the samples read (at most 2·size of each), whatever the image's
/// size or shape. The cost is bounded by the output and the filter's
/// width, never by how much of the image the crop covers.
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
    let xs = (0..size).map(|u| {
        let du = (u as f32 - half) * step;
        if crop.mirrored {
            crop.centre[0] - du
        } else {
            crop.centre[0] + du
        }
    });
    let ys = (0..size).map(|v| crop.centre[1] + (v as f32 - half) * step);
    let columns = SampleAxis::new(xs, img.width);
    let rows = SampleAxis::new(ys, img.height);
    let filtered = FilteredSamples::new(img, &columns.pixels, &rows.pixels, sigma);

    let mut out = vec![0f32; size * size * 3];
    for (v, row_taps) in rows.taps.iter().enumerate() {
        for (u, column_taps) in columns.taps.iter().enumerate() {
            let mut px = [0f32; 3];
            for &(ry, wy) in row_taps.iter().flatten() {
                for &(cx, wx) in column_taps.iter().flatten() {
                    let value = filtered.at(ry, cx);
                    for (o, p) in px.iter_mut().zip(value) {
                        *o += wx * wy * p;
                    }
                }
            }
            out[(v * size + u) * 3..][..3].copy_from_slice(&px);
        }
    }
    out
}

/// One axis of a crop's samples: the image pixels they read (sorted,
/// distinct) and, per sample, its two bilinear taps as (index into
/// `pixels`, weight); a tap outside the image reads 0 and is `None`.
struct SampleAxis {
    pixels: Vec<usize>,
    taps: Vec<[Option<(usize, f32)>; 2]>,
}

impl SampleAxis {
    fn new(positions: impl Iterator<Item = f32>, extent: usize) -> Self {
        // Pixel k at integer k; the weights of floor(p) and floor(p) + 1.
        let raw: Vec<[(isize, f32); 2]> = positions
            .map(|p| {
                let f = p.floor();
                let i = f as isize;
                [(i, 1.0 - (p - f)), (i + 1, p - f)]
            })
            .collect();
        let inside = |i: isize| usize::try_from(i).ok().filter(|&i| i < extent);
        let mut pixels: Vec<usize> = raw
            .iter()
            .flatten()
            .filter_map(|&(i, _)| inside(i))
            .collect();
        pixels.sort_unstable();
        pixels.dedup();
        let taps = raw
            .iter()
            .map(|pair| {
                pair.map(|(i, w)| {
                    let i = inside(i)?;
                    Some((pixels.binary_search(&i).ok()?, w))
                })
            })
            .collect();
        SampleAxis { pixels, taps }
    }
}

/// The image, Gaussian-filtered (edges replicated, as scipy's
/// `mode="nearest"`, truncated at 4σ) or as it is, at the crossings of the
/// sampled rows and columns only.
struct FilteredSamples {
    columns: usize,
    data: Vec<f32>,
}

impl FilteredSamples {
    fn new(img: RgbImage, columns: &[usize], rows: &[usize], sigma: f32) -> Self {
        let (w, h) = (img.width, img.height);
        let pixel = |x: usize, y: usize, c: usize| img.data[(y * w + x) * 3 + c];
        let mut data = vec![0f32; rows.len() * columns.len() * 3];
        if sigma <= 0.0 {
            for (ri, &y) in rows.iter().enumerate() {
                for (ci, &x) in columns.iter().enumerate() {
                    for c in 0..3 {
                        data[(ri * columns.len() + ci) * 3 + c] = pixel(x, y, c) as f32;
                    }
                }
            }
            return FilteredSamples {
                columns: columns.len(),
                data,
            };
        }
        let kernel = gaussian_kernel(sigma);
        let reach = kernel.len() / 2;
        let clamp = |i: usize, k: usize, n: usize| (i + k).saturating_sub(reach).min(n - 1);
        // The source rows the vertical pass reads, each filtered
        // horizontally once at the sampled columns.
        let mut sources: Vec<usize> = Vec::new();
        for &y in rows {
            let (lo, hi) = (y.saturating_sub(reach), (y + reach).min(h - 1));
            let from = sources.last().map_or(lo, |&last| lo.max(last + 1));
            sources.extend(from..=hi);
        }
        let n = columns.len();
        let mut horizontal = vec![0f64; sources.len() * n * 3];
        for (si, &y) in sources.iter().enumerate() {
            for (ci, &x) in columns.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = 0f64;
                    for (k, &kv) in kernel.iter().enumerate() {
                        acc += kv * pixel(clamp(x, k, w), y, c) as f64;
                    }
                    horizontal[(si * n + ci) * 3 + c] = acc;
                }
            }
        }
        for (ri, &y) in rows.iter().enumerate() {
            let taps: Vec<(usize, f64)> = kernel
                .iter()
                .enumerate()
                .map(|(k, &kv)| {
                    let si = sources
                        .binary_search(&clamp(y, k, h))
                        .expect("every row within reach is filtered");
                    (si, kv)
                })
                .collect();
            for ci in 0..n {
                for c in 0..3 {
                    let mut acc = 0f64;
                    for &(si, kv) in &taps {
                        acc += kv * horizontal[(si * n + ci) * 3 + c];
                    }
                    data[(ri * n + ci) * 3 + c] = acc as f32;
                }
            }
        }
        FilteredSamples { columns: n, data }
    }

    fn at(&self, row: usize, column: usize) -> &[f32] {
        &self.data[(row * self.columns + column) * 3..][..3]
    }
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

    /// The crop filtered only where it samples equals the whole image
    /// filtered then sampled (the definition), for shrinking, enlarging,
    /// mirrored and off-image crops.
    #[test]
    fn sampling_only_the_needed_pixels_changes_no_value() {
        let (w, h) = (97, 61);
        let data: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        let img = RgbImage::new(w, h, &data).unwrap();
        for (bbox, right, size) in [
            ([10.0, 5.0, 80.0, 55.0], true, 16),
            ([10.0, 5.0, 80.0, 55.0], false, 16),
            ([30.0, 20.0, 40.0, 32.0], true, 24),
            ([-50.0, -20.0, 20.0, 30.0], false, 8),
            ([0.0, 0.0, 97.0, 61.0], true, 4),
        ] {
            let crop = HandCrop::from_box(bbox, right, 2.5);
            let got = crop_hand(img, &crop, size);
            let want = brute_force_crop(img, &crop, size);
            assert_eq!(got, want, "{bbox:?} {right} {size}");
        }
    }

    /// What `crop_hand` computes, the slow way: every image pixel filtered.
    fn brute_force_crop(img: RgbImage, crop: &HandCrop, size: usize) -> Vec<f32> {
        let (w, h) = (img.width as isize, img.height as isize);
        let step = crop.side / size as f32;
        let half = size as f32 / 2.0;
        let downscale = step / 2.0;
        let sigma = if downscale > 1.1 {
            (downscale - 1.0) / 2.0
        } else {
            0.0
        };
        let px = |x: isize, y: isize, c: usize| {
            img.data[((y.clamp(0, h - 1) * w + x.clamp(0, w - 1)) * 3) as usize + c] as f64
        };
        let kernel = if sigma > 0.0 {
            gaussian_kernel(sigma)
        } else {
            vec![1.0]
        };
        let r = (kernel.len() / 2) as isize;
        let filtered = |x: isize, y: isize, c: usize| -> f32 {
            if sigma <= 0.0 {
                return px(x, y, c) as f32;
            }
            let mut acc = 0f64;
            for (ky, &vy) in kernel.iter().enumerate() {
                let mut row = 0f64;
                for (kx, &vx) in kernel.iter().enumerate() {
                    row += vx * px(x + kx as isize - r, y + ky as isize - r, c);
                }
                acc += vy * row;
            }
            acc as f32
        };
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
                let (fx0, fy0) = (x.floor(), y.floor());
                let (fx, fy) = (x - fx0, y - fy0);
                for c in 0..3 {
                    let mut o = 0f32;
                    for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
                        for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                            let (ix, iy) = (fx0 as isize + dx, fy0 as isize + dy);
                            if ix < 0 || iy < 0 || ix >= w || iy >= h {
                                continue;
                            }
                            o += wx * wy * filtered(ix, iy, c);
                        }
                    }
                    out[(v * size + u) * 3 + c] = o;
                }
            }
        }
        out
    }

    /// A crop of a 65535×1 strip (the case that held the MLX thread for
    /// ~95 s when the whole covered region was filtered) reads a handful of
    /// pixels per sample; counted through the sampled axes, not timed.
    #[test]
    fn a_crop_of_a_long_strip_reads_only_what_it_samples() {
        let data = vec![200u8; 65535 * 3];
        let img = RgbImage::new(65535, 1, &data).unwrap();
        let crop = HandCrop::from_box([0.0, 0.0, 65535.0, 1.0], true, 2.5);
        let size = 256;
        let step = crop.side / size as f32;
        let columns = SampleAxis::new(
            (0..size).map(|u| crop.centre[0] + (u as f32 - 128.0) * step),
            65535,
        );
        let rows = SampleAxis::new(
            (0..size).map(|v| crop.centre[1] + (v as f32 - 128.0) * step),
            1,
        );
        assert!(columns.pixels.len() <= 2 * size);
        assert_eq!(rows.pixels, [0]);
        let out = crop_hand(img, &crop, size);
        assert_eq!(out.len(), size * size * 3);
        assert!(out.iter().any(|&v| v > 0.0));
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
