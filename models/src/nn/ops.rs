//! Weight-free operations on arrays: resampling, pooling, sampling at
//! points, and the slicing and constant helpers the networks share.

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array, Dtype};

use super::Result;

/// A 0-d constant of `dtype`. MLX promotes a bf16 or f16 array combined
/// with a float32 one to float32, so a plain `Array::from_f32` in a forward
/// pass would silently run everything after it in float32 (and cast every
/// half-precision weight it meets back up, on every call).
pub fn scalar(v: f32, dtype: Dtype) -> Array {
    match dtype {
        Dtype::Bfloat16 => Array::from_slice(&[half::bf16::from_f32(v)], &[]),
        Dtype::Float16 => Array::from_slice(&[half::f16::from_f32(v)], &[]),
        _ => Array::from_f32(v),
    }
}

/// Entry `i` of `axis`, with that axis dropped. mlx-rs turns an integer
/// index (`x.index(0)`) into `take`, a gather kernel on every call; a slice
/// is a view, and a compiled graph can fuse it into what reads it.
pub fn select(x: &Array, axis: i32, i: i32) -> Result<Array> {
    use mlx_rs::ops::indexing::{ArrayIndex, ArrayIndexOp, TryIndexOp};
    let axis = if axis < 0 {
        axis + x.ndim() as i32
    } else {
        axis
    };
    let mut index: Vec<ArrayIndexOp> = (0..axis).map(|_| (..).index_op()).collect();
    index.push((i..i + 1).index_op());
    x.try_index(&index[..])?.squeeze_axes(&[axis])
}

/// Nearest-neighbour ×2 upsampling of an NHWC map.
pub fn upsample_nearest_2x(x: &Array) -> Result<Array> {
    let s = x.shape();
    let (n, h, w, c) = (s[0], s[1], s[2], s[3]);
    let y = x.reshape(&[n, h, 1, w, 1, c])?;
    let y = ops::broadcast_to(&y, &[n, h, 2, w, 2, c])?;
    y.reshape(&[n, h * 2, w * 2, c])
}

/// Max pooling with stride 1 and "same" padding by -inf (SPPF's pool).
pub fn max_pool_same(x: &Array, kernel: i32) -> Result<Array> {
    let pad = kernel / 2;
    let s = x.shape();
    let (n, h, w, c) = (s[0], s[1], s[2], s[3]);
    let padded = ops::pad(
        x,
        &[(0, 0), (pad, pad), (pad, pad), (0, 0)],
        scalar(f32::NEG_INFINITY, x.dtype()),
        None,
    )?;
    // Separable: the max over a k×k window is the max over k rows of the max
    // over k columns.
    let mut rows = padded.index((.., 0..h, .., ..));
    for dy in 1..kernel {
        rows = ops::maximum(&rows, padded.index((.., dy..dy + h, .., ..)))?;
    }
    let mut out = rows.index((.., .., 0..w, ..));
    for dx in 1..kernel {
        out = ops::maximum(&out, rows.index((.., .., dx..dx + w, ..)))?;
    }
    debug_assert_eq!(out.shape(), [n, h, w, c]);
    Ok(out)
}

/// Bilinear sampling of `map` (B, H, W, C) at pixel positions `xy` (B, P, 2)
/// (pixel k's centre at k), with zeros outside the map: PyTorch's
/// `grid_sample(align_corners=True, padding_mode="zeros")` after its
/// normalisation round trip. Returns (B, P, C).
pub fn grid_sample_zeros(map: &Array, xy: &Array) -> Result<Array> {
    let (b, h, w, c) = (map.dim(0), map.dim(1), map.dim(2), map.dim(3));
    let p = xy.dim(1);
    let flat = map.reshape(&[b, h * w, c])?;
    let x = select(xy, 2, 0)?;
    let y = select(xy, 2, 1)?;
    let x0 = ops::floor(&x)?;
    let y0 = ops::floor(&y)?;
    let fx = x.subtract(&x0)?;
    let fy = y.subtract(&y0)?;
    let one = Array::from_f32(1.0);
    let mut acc: Option<Array> = None;
    for (dy, wy) in [(0.0f32, one.subtract(&fy)?), (1.0, fy.clone())] {
        for (dx, wx) in [(0.0f32, one.subtract(&fx)?), (1.0, fx.clone())] {
            let xi = x0.add(Array::from_f32(dx))?;
            let yi = y0.add(Array::from_f32(dy))?;
            let inside = xi
                .ge(Array::from_f32(0.0))?
                .logical_and(&xi.le(Array::from_f32((w - 1) as f32))?)?
                .logical_and(&yi.ge(Array::from_f32(0.0))?)?
                .logical_and(&yi.le(Array::from_f32((h - 1) as f32))?)?;
            let weight = wx
                .multiply(&wy)?
                .multiply(inside.as_dtype(Dtype::Float32)?)?;
            // NaN coordinates (from a NaN upstream) would become wild
            // gather indices: read pixel 0 instead, weighted by NaN.
            let finite = |v: Array, hi: i32| -> Result<Array> {
                let v = ops::clip(&v, (0.0, hi as f32))?;
                ops::select(&v.eq(&v)?, &v, Array::from_f32(0.0))
            };
            let xc = finite(xi, w - 1)?;
            let yc = finite(yi, h - 1)?;
            let index = yc
                .multiply(Array::from_f32(w as f32))?
                .add(&xc)?
                .as_dtype(Dtype::Int32)?
                .reshape(&[b, p, 1])?;
            let tap = flat.take_along_axis(&index, 1)?; // (B, P, C)
            let term = tap.multiply(weight.reshape(&[b, p, 1])?.as_dtype(map.dtype())?)?;
            acc = Some(match acc {
                None => term,
                Some(a) => a.add(&term)?,
            });
        }
    }
    Ok(acc.expect("four taps"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::host_f32;
    use crate::nn::test_data::ramp;

    #[test]
    fn select_is_the_integer_index_on_any_axis() {
        let x = Array::from_slice(&ramp(2 * 3 * 4, 1.0), &[2, 3, 4]);
        let host = |a: &Array| host_f32(a).unwrap();
        let cases = [
            (0, 1, x.index(1)),
            (1, 2, x.index((.., 2))),
            (2, 3, x.index((.., .., 3))),
            (-1, 0, x.index((.., .., 0))),
        ];
        for (axis, i, want) in cases {
            let got = select(&x, axis, i).unwrap();
            assert_eq!(got.shape(), want.shape(), "axis {axis}");
            assert_eq!(host(&got), host(&want), "axis {axis}, entry {i}");
        }
    }

    #[test]
    fn grid_sample_is_bilinear_inside_and_zero_outside() {
        // 2×3 single-channel map: value = 10·row + col.
        let map = Array::from_slice(&[0.0f32, 1.0, 2.0, 10.0, 11.0, 12.0], &[1, 2, 3, 1]);
        let xy = Array::from_slice(&[0.5f32, 0.5, 2.0, 1.0, -0.5, 0.0, 2.5, 1.0], &[1, 4, 2]);
        let s = grid_sample_zeros(&map, &xy).unwrap();
        let got = host_f32(&s).unwrap();
        assert_eq!(got[0], 5.5); // centre of the four top-left pixels
        assert_eq!(got[1], 12.0); // exactly on the last pixel
        assert_eq!(got[2], 0.0); // half a pixel left of (0,0): 0.5·0 + 0.5·(outside = 0)
        assert_eq!(got[3], 6.0); // half a pixel right of (2,1): 0.5·12 + 0.5·0
    }
}
