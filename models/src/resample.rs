//! Image resizing on MLX arrays with PyTorch's `interpolate(mode="bilinear",
//! align_corners=False, antialias=True)` semantics: a separable triangle
//! filter whose support widens with the downscale factor (so shrinking a
//! frame averages every source pixel instead of skipping rows), and plain
//! half-pixel bilinear when enlarging.
//!
//! Each axis is a gather of `taps` source lines per output line and a
//! weighted sum; the taps and weights are computed once on the host.

use mlx_rs::{Array, Dtype};

use crate::nn::Result;

/// Source indices and weights of one axis: `taps` per output position.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisFilter {
    pub taps: usize,
    /// `out × taps` source indices (unused taps point at index 0, weight 0).
    pub index: Vec<i32>,
    /// `out × taps` weights; each output's weights sum to 1.
    pub weight: Vec<f32>,
}

/// The antialiased bilinear filter from `input` to `output` samples, as
/// PyTorch's `_upsample_bilinear2d_aa` computes it.
pub fn axis_filter(input: usize, output: usize) -> AxisFilter {
    let scale = input as f64 / output as f64;
    let (support, inv) = if scale > 1.0 {
        (scale, 1.0 / scale)
    } else {
        (1.0, 1.0)
    };
    let taps = (support.ceil() as usize) * 2 + 1;
    let mut index = vec![0i32; output * taps];
    let mut weight = vec![0f32; output * taps];
    for i in 0..output {
        let center = scale * (i as f64 + 0.5);
        // Truncation towards zero, as the reference's integer cast does.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
        let ws: Vec<f64> = (lo..hi)
            .map(|j| (1.0 - ((j as f64 - center + 0.5) * inv).abs()).max(0.0))
            .collect();
        let total: f64 = ws.iter().sum();
        for (k, (j, w)) in (lo..hi).zip(ws).take(taps).enumerate() {
            index[i * taps + k] = j as i32;
            weight[i * taps + k] = if total > 0.0 { (w / total) as f32 } else { 0.0 };
        }
    }
    AxisFilter {
        taps,
        index,
        weight,
    }
}

/// Resamples `x` along `axis` to `output` samples.
fn resize_axis(x: &Array, axis: i32, output: usize) -> Result<Array> {
    let input = x.dim(axis) as usize;
    if input == output {
        return Ok(x.clone());
    }
    let f = axis_filter(input, output);
    let (n, k) = (output as i32, f.taps as i32);
    let gathered = x.take_axis(Array::from_slice(&f.index, &[n * k]), axis)?;
    // (..., out·taps, ...) → (..., out, taps, ...), weights broadcast on
    // every other axis.
    let mut shape = x.shape().to_vec();
    let a = axis as usize;
    shape.splice(a..=a, [n, k]);
    let mut wshape = vec![1; shape.len()];
    wshape[a] = n;
    wshape[a + 1] = k;
    let w = Array::from_slice(&f.weight, &wshape).as_dtype(x.dtype())?;
    gathered
        .reshape(&shape)?
        .multiply(&w)?
        .sum_axis(axis + 1, false)
}

/// Resizes NHWC `x` (a float type) to `height × width`.
pub fn resize_bilinear(x: &Array, height: usize, width: usize) -> Result<Array> {
    let x = if matches!(x.dtype(), Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16) {
        x.clone()
    } else {
        x.as_dtype(Dtype::Float32)?
    };
    resize_axis(&resize_axis(&x, 1, height)?, 2, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taps_of(f: &AxisFilter, i: usize) -> Vec<(i32, f32)> {
        (0..f.taps)
            .map(|k| (f.index[i * f.taps + k], f.weight[i * f.taps + k]))
            .filter(|&(_, w)| w > 0.0)
            .collect()
    }

    #[test]
    fn enlarging_is_half_pixel_bilinear_with_clamped_edges() {
        let f = axis_filter(4, 8);
        // Output 0 sits at source -0.25: the edge pixel alone.
        assert_eq!(taps_of(&f, 0), [(0, 1.0)]);
        // Output 1 at 0.25: 0.75 of pixel 0, 0.25 of pixel 1.
        assert_eq!(taps_of(&f, 1), [(0, 0.75), (1, 0.25)]);
        assert_eq!(taps_of(&f, 7), [(3, 1.0)]);
    }

    #[test]
    fn halving_averages_four_pixels_with_a_triangle() {
        let f = axis_filter(8, 4);
        assert_eq!(
            taps_of(&f, 1),
            [(1, 0.125), (2, 0.375), (3, 0.375), (4, 0.125)]
        );
        // At the border the filter is cut and renormalised.
        let t = taps_of(&f, 0);
        assert_eq!(t.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert!((t.iter().map(|p| p.1).sum::<f32>() - 1.0).abs() < 1e-6);
        for i in 0..4 {
            let s: f32 = taps_of(&f, i).iter().map(|p| p.1).sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn resizing_a_ramp_keeps_it_a_ramp() {
        // A horizontal ramp 0..8 resized to 16 wide: interior samples lie on
        // the line x·0.5 - 0.25, the edges clamp.
        let row: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let x = Array::from_slice(&row.repeat(2), &[1, 2, 8, 1]);
        let y = resize_bilinear(&x, 3, 16).unwrap();
        assert_eq!(y.shape(), [1, 3, 16, 1]);
        let v = y.as_slice::<f32>().to_vec();
        for (j, &got) in v[16..32].iter().enumerate() {
            let want = (j as f32 * 0.5 - 0.25).clamp(0.0, 7.0);
            assert!((got - want).abs() < 1e-5, "{j}: {got} vs {want}");
        }
    }
}
