//! The Sapiens top-down glue around the pose network: person box → padded,
//! aspect-fixed box → UDP affine crop, and heatmaps → keypoints by the
//! reference decode (flip-test average, argmax, DARK-UDP refinement, UDP
//! scaling back to crop and image pixels).
//!
//! Crops are CPU loops (off the MLX thread); the decode's heavy part (blur
//! of every keypoint map, maxima) runs in MLX and only a 3×3 neighbourhood
//! per keypoint comes back to the host.

use mlx_rs::{ops, Array, Dtype};

use crate::nn::{host_f32, Result};
use crate::rtmdet::{person_filter, Detection};
use crate::sapiens2::Sapiens2Config;

/// A person box made ready for the network: its centre and the padded,
/// aspect-fixed size in image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PersonCrop {
    pub center: [f32; 2],
    pub scale: [f32; 2],
}

impl PersonCrop {
    /// `bbox` x1 y1 x2 y2; the box grows by `padding`, then its shorter side
    /// to the `input_w / input_h` aspect.
    pub fn from_box(bbox: [f32; 4], padding: f32, input_hw: [i32; 2]) -> Self {
        let center = [(bbox[0] + bbox[2]) * 0.5, (bbox[1] + bbox[3]) * 0.5];
        let (w, h) = ((bbox[2] - bbox[0]) * padding, (bbox[3] - bbox[1]) * padding);
        let aspect = input_hw[1] as f32 / input_hw[0] as f32;
        let scale = if w > h * aspect {
            [w, w / aspect]
        } else {
            [h * aspect, h]
        };
        PersonCrop { center, scale }
    }

    /// The UDP affine map image → crop: the box spans pixels 0..=W−1 and
    /// 0..=H−1 of the `input_hw` crop.
    pub fn warp_matrix(&self, input_hw: [i32; 2]) -> [[f32; 3]; 2] {
        let sx = (input_hw[1] - 1) as f32 / self.scale[0];
        let sy = (input_hw[0] - 1) as f32 / self.scale[1];
        [
            [sx, 0.0, sx * (0.5 * self.scale[0] - self.center[0])],
            [0.0, sy, sy * (0.5 * self.scale[1] - self.center[1])],
        ]
    }

    /// A point in crop input pixels → image pixels. The reference divides
    /// by the input size here although the warp maps onto size − 1; kept.
    pub fn to_image(&self, p: [f32; 2], input_hw: [i32; 2]) -> [f32; 2] {
        let size = [input_hw[1] as f64, input_hw[0] as f64];
        let mut out = [0.0; 2];
        for a in 0..2 {
            let s = self.scale[a] as f64;
            out[a] = (p[a] as f64 / size[a] * s + self.center[a] as f64 - 0.5 * s) as f32;
        }
        out
    }
}

/// `cv2.warpAffine(src, m, (out_w, out_h))` with a constant 0 border, on
/// interleaved 8-bit pixels, for the axis-aligned maps the crops use (no
/// rotation: `m[0][1] = m[1][0] = 0`): bilinear when the map shrinks the
/// image (the reference asks for INTER_AREA, which OpenCV's warp runs as
/// bilinear), bicubic (a = −0.75) when it enlarges. Floating point where
/// OpenCV uses fixed point: a level off on a few pixels.
///
/// Axis-aligned, the 2-D kernel is a product of two 1-D ones: a horizontal
/// pass over the source rows the output needs, then a vertical pass.
pub fn warp_affine(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    m: &[[f32; 3]; 2],
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    debug_assert!(m[0][1] == 0.0 && m[1][0] == 0.0, "axis-aligned maps only");
    let (sx, tx) = (m[0][0] as f64, m[0][2] as f64);
    let (sy, ty) = (m[1][1] as f64, m[1][2] as f64);
    let mut out = vec![0u8; out_w * out_h * channels];
    if sx == 0.0 || sy == 0.0 || !(sx * sy).is_finite() {
        return out;
    }
    let cubic = sx.abs().min(sy.abs()) >= 1.0;
    let xs = axis_taps(out_w, width, sx, tx, cubic);
    let ys = axis_taps(out_h, height, sy, ty, cubic);
    // Source rows the output reads, each filtered horizontally once.
    let (mut lo, mut hi) = (usize::MAX, 0);
    for t in ys.iter().flatten() {
        lo = lo.min(t.0);
        hi = hi.max(t.0 + 1);
    }
    if lo >= hi {
        return out;
    }
    let row_len = out_w * channels;
    let mut rows = vec![0f32; (hi - lo) * row_len];
    for (r, row) in rows.chunks_exact_mut(row_len).enumerate() {
        let line = &src[(lo + r) * width * channels..(lo + r + 1) * width * channels];
        for (x, taps) in xs.iter().enumerate() {
            let px = &mut row[x * channels..(x + 1) * channels];
            for &(i, w) in taps {
                let s = &line[i * channels..(i + 1) * channels];
                for (p, &v) in px.iter_mut().zip(s) {
                    *p += w * v as f32;
                }
            }
        }
    }
    let mut acc = vec![0f32; row_len];
    for (y, taps) in ys.iter().enumerate() {
        acc.fill(0.0);
        for &(i, w) in taps {
            let row = &rows[(i - lo) * row_len..(i - lo + 1) * row_len];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += w * v;
            }
        }
        for (o, &a) in out[y * row_len..(y + 1) * row_len].iter_mut().zip(&acc) {
            *o = a.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Per output position along one axis: the source indices inside the image
/// and their weights (taps outside read the 0 border, so they are dropped).
fn axis_taps(
    n_out: usize,
    n_in: usize,
    scale: f64,
    shift: f64,
    cubic: bool,
) -> Vec<Vec<(usize, f32)>> {
    (0..n_out)
        .map(|d| {
            let s = (d as f64 - shift) / scale;
            if !s.is_finite() {
                return Vec::new();
            }
            let base = s.floor();
            let t = s - base;
            let (first, weights): (i64, Vec<f64>) = if cubic {
                (base as i64 - 1, cubic_taps(t).to_vec())
            } else {
                (base as i64, vec![1.0 - t, t])
            };
            weights
                .into_iter()
                .enumerate()
                .filter_map(|(k, w)| {
                    let i = first + k as i64;
                    (w != 0.0 && i >= 0 && i < n_in as i64).then_some((i as usize, w as f32))
                })
                .collect()
        })
        .collect()
}

/// OpenCV's bicubic weights for taps at −1, 0, 1, 2 (a = −0.75).
fn cubic_taps(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let w0 = ((A * (t + 1.0) - 5.0 * A) * (t + 1.0) + 8.0 * A) * (t + 1.0) - 4.0 * A;
    let w1 = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
    let w2 = ((A + 2.0) * (1.0 - t) - (A + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0;
    [w0, w1, w2, 1.0 - w0 - w1 - w2]
}

/// The flip test: the heatmaps of the mirrored crops, mirrored back and
/// with left and right keypoints swapped, averaged with the plain ones.
/// Both (B, H, W, K).
pub fn flip_average(heatmaps: &Array, mirrored: &Array, flip_indices: &[usize]) -> Result<Array> {
    let w = mirrored.dim(2);
    let reverse: Vec<i32> = (0..w).rev().collect();
    let swap: Vec<i32> = flip_indices.iter().map(|&i| i as i32).collect();
    let back = mirrored
        .take_axis(Array::from_slice(&reverse, &[w]), 2)?
        .take_axis(Array::from_slice(&swap, &[swap.len() as i32]), 3)?;
    heatmaps.add(&back)?.multiply(Array::from_f32(0.5))
}

/// One decoded keypoint, in heatmap pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatmapPeak {
    /// The first maximum (row-major); (−1, −1) when the maximum is ≤ 0.
    pub argmax: [f32; 2],
    /// After the DARK-UDP step (the argmax when there is no maximum).
    pub refined: [f32; 2],
    pub score: f32,
}

/// OpenCV's Gaussian kernel for `size` with sigma derived from the size.
fn gaussian_kernel(size: usize) -> Vec<f32> {
    let sigma = 0.3 * ((size as f64 - 1.0) * 0.5 - 1.0) + 0.8;
    let half = (size / 2) as f64;
    let raw: Vec<f64> = (0..size)
        .map(|i| (-(i as f64 - half).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|v| (v / sum) as f32).collect()
}

/// The UDP codec's decode of heatmaps (B, H, W, K): per map the argmax and
/// its value, then DARK: the map blurred with zero padding and rescaled to
/// its original maximum, clipped to [1e-3, 50], logged; a Newton step from
/// the central-difference gradient and Hessian at the peak (edge values
/// repeated outside the map).
pub fn decode_heatmaps(heatmaps: &Array, blur_kernel_size: usize) -> Result<Vec<Vec<HeatmapPeak>>> {
    let (b, h, w, k) = (
        heatmaps.dim(0),
        heatmaps.dim(1),
        heatmaps.dim(2),
        heatmaps.dim(3),
    );
    let hm = heatmaps.as_dtype(Dtype::Float32)?;
    // One map per row: (B·K, H·W).
    let maps = hm
        .transpose_axes(&[0, 3, 1, 2])?
        .reshape(&[b * k, h, w, 1])?;
    let flat = maps.reshape(&[b * k, h * w])?;
    let argmax = ops::indexing::argmax_axis(&flat, 1, false)?;
    let peak = flat.max_axis(1, false)?;

    let kernel = gaussian_kernel(blur_kernel_size);
    let n = kernel.len() as i32;
    let pad = n / 2;
    let vertical = Array::from_slice(&kernel, &[1, n, 1, 1]);
    let horizontal = Array::from_slice(&kernel, &[1, 1, n, 1]);
    let blurred = ops::conv2d(&maps, &vertical, None, (pad, 0), None, None)?;
    let blurred =
        ops::conv2d(&blurred, &horizontal, None, (0, pad), None, None)?.reshape(&[b * k, h * w])?;
    let rescale = peak.divide(blurred.max_axis(1, true)?.squeeze_axes(&[1])?)?;

    // The 3×3 neighbourhood of each peak, clamped at the edges.
    let ai = argmax.as_dtype(Dtype::Int32)?;
    let (px, py) = (
        ai.remainder(Array::from_int(w))?,
        ai.floor_divide(Array::from_int(w))?,
    );
    let mut offsets = Vec::new();
    for dy in -1..=1 {
        for dx in -1..=1 {
            let x = ops::clip(&px.add(Array::from_int(dx))?, (0, w - 1))?;
            let y = ops::clip(&py.add(Array::from_int(dy))?, (0, h - 1))?;
            offsets.push(
                y.multiply(Array::from_int(w))?
                    .add(&x)?
                    .reshape(&[b * k, 1])?,
            );
        }
    }
    let index = ops::concatenate(&offsets, 1)?;
    let neighbourhood = blurred
        .take_along_axis(&index, 1)?
        .multiply(rescale.reshape(&[b * k, 1])?)?;
    let logs = ops::log(&ops::clip(&neighbourhood, (1e-3, 50.0))?)?;

    let logs = host_f32(&logs)?;
    let peaks = host_f32(&peak)?;
    let xs = host_f32(&px)?;
    let ys = host_f32(&py)?;
    let mut out = Vec::with_capacity(b as usize);
    for bi in 0..b as usize {
        let mut person = Vec::with_capacity(k as usize);
        for ki in 0..k as usize {
            let row = bi * k as usize + ki;
            let score = peaks[row];
            if score <= 0.0 {
                person.push(HeatmapPeak {
                    argmax: [-1.0, -1.0],
                    refined: [-1.0, -1.0],
                    score,
                });
                continue;
            }
            let at = [xs[row], ys[row]];
            let v = &logs[row * 9..row * 9 + 9];
            person.push(HeatmapPeak {
                argmax: at,
                refined: dark_step(at, v),
                score,
            });
        }
        out.push(person);
    }
    Ok(out)
}

/// One Newton step on the log-heatmap `v` (3×3 around `at`, row-major).
fn dark_step(at: [f32; 2], v: &[f32]) -> [f32; 2] {
    let c = v[4];
    let (xp, xm, yp, ym) = (v[5], v[3], v[7], v[1]);
    let (xpyp, xmym) = (v[8], v[0]);
    let dx = 0.5 * (xp - xm);
    let dy = 0.5 * (yp - ym);
    let dxx = xp - 2.0 * c + xm;
    let dyy = yp - 2.0 * c + ym;
    let dxy = 0.5 * (xpyp - xp - yp + c + c - xm - ym + xmym);
    // The reference regularises with float32's epsilon and inverts in f64.
    let eps = f32::EPSILON as f64;
    let (h00, h01, h11) = (dxx as f64 + eps, dxy as f64, dyy as f64 + eps);
    let det = h00 * h11 - h01 * h01;
    let (i00, i01, i11) = (h11 / det, -h01 / det, h00 / det);
    let step_x = i00 * dx as f64 + i01 * dy as f64;
    let step_y = i01 * dx as f64 + i11 * dy as f64;
    [
        (at[0] as f64 - step_x) as f32,
        (at[1] as f64 - step_y) as f32,
    ]
}

/// Heatmap pixels → crop input pixels, UDP: the map's 0..=W−1 spans the
/// input's 0..W.
pub fn heatmap_to_input(p: [f32; 2], heatmap_hw: [i32; 2], input_hw: [i32; 2]) -> [f32; 2] {
    [
        (p[0] as f64 / (heatmap_hw[1] - 1) as f64 * input_hw[1] as f64) as f32,
        (p[1] as f64 / (heatmap_hw[0] - 1) as f64 * input_hw[0] as f64) as f32,
    ]
}

/// A person's keypoints in image pixels with their scores.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonKeypoints {
    pub crop: PersonCrop,
    pub input_px: Vec<[f32; 2]>,
    pub image_px: Vec<[f32; 2]>,
    pub scores: Vec<f32>,
}

/// Decodes the heatmaps of a batch of crops into keypoints; `mirrored`
/// (the heatmaps of the flipped crops) turns on the flip test.
pub fn keypoints(
    cfg: &Sapiens2Config,
    crops: &[PersonCrop],
    heatmaps: &Array,
    mirrored: Option<&Array>,
) -> Result<(Vec<Vec<HeatmapPeak>>, Vec<PersonKeypoints>)> {
    let hm = match mirrored {
        Some(m) => flip_average(heatmaps, m, &cfg.flip_indices)?,
        None => heatmaps.clone(),
    };
    let hm_hw = [hm.dim(1), hm.dim(2)];
    let peaks = decode_heatmaps(&hm, cfg.codec.blur_kernel_size)?;
    let input_hw = cfg.input_size_hw;
    let people = crops
        .iter()
        .zip(&peaks)
        .map(|(crop, person)| {
            let input_px: Vec<[f32; 2]> = person
                .iter()
                .map(|p| heatmap_to_input(p.refined, hm_hw, input_hw))
                .collect();
            PersonKeypoints {
                crop: *crop,
                image_px: input_px
                    .iter()
                    .map(|&p| crop.to_image(p, input_hw))
                    .collect(),
                input_px,
                scores: person.iter().map(|p| p.score).collect(),
            }
        })
        .collect();
    Ok((peaks, people))
}

/// Crops every person of an interleaved image (RGB or BGR, kept as is) to
/// the network input: (persons, H, W, 3) bytes. One thread per person.
pub fn crop_persons(
    image: &[u8],
    width: usize,
    height: usize,
    crops: &[PersonCrop],
    input_hw: [i32; 2],
) -> Vec<u8> {
    let (out_h, out_w) = (input_hw[0] as usize, input_hw[1] as usize);
    let one = |c: &PersonCrop| {
        warp_affine(
            image,
            width,
            height,
            3,
            &c.warp_matrix(input_hw),
            out_w,
            out_h,
        )
    };
    let parts: Vec<Vec<u8>> = if crops.len() > 1 {
        std::thread::scope(|s| {
            let handles: Vec<_> = crops.iter().map(|c| s.spawn(move || one(c))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a crop thread panicked"))
                .collect()
        })
    } else {
        crops.iter().map(one).collect()
    };
    parts.concat()
}

/// The demo's choice of person boxes: filtered detector boxes, or the whole
/// image when none survive.
pub fn person_boxes(
    dets: &[Detection],
    cfg: &Sapiens2Config,
    width: usize,
    height: usize,
) -> Vec<[f32; 4]> {
    let keep = person_filter(dets, &cfg.demo.person_filter);
    if keep.is_empty() {
        return vec![[0.0, 0.0, (width - 1) as f32, (height - 1) as f32]];
    }
    keep.iter().map(|&i| dets[i].bbox).collect()
}
