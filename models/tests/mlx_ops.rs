//! Real MLX ops through mlx-rs, checked against sums done independently in
//! plain Rust (f64). If libmlx, the mlx-sys patch or the BLAS binding is
//! wrong, these fail.

use half::{bf16, f16};
use mlx_rs::{fast, ops, Array, Dtype};

/// Deterministic values in [-1, 1) without a dependency.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol})"
        );
    }
}

#[test]
fn matmul_matches_naive() {
    let (m, k, n) = (5, 37, 6);
    let a = values(m * k, 1);
    let b = values(k * n, 2);
    let c = ops::matmul(
        Array::from_slice(&a, &[m as i32, k as i32]),
        Array::from_slice(&b, &[k as i32, n as i32]),
    )
    .unwrap();
    let mut want = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum();
        }
    }
    assert_close(c.as_slice::<f32>(), &want, 1e-5, "matmul");
}

#[test]
fn conv2d_nhwc_ohwi_matches_naive() {
    let (n, h, w, ci, co, kh, kw, stride, pad) = (2, 7, 6, 3, 4, 3, 3, 2, 1);
    let x = values(n * h * w * ci, 3);
    let wt = values(co * kh * kw * ci, 4);
    let bias = values(co, 5);
    let y = ops::conv2d(
        Array::from_slice(&x, &[n as i32, h as i32, w as i32, ci as i32]),
        Array::from_slice(&wt, &[co as i32, kh as i32, kw as i32, ci as i32]),
        (stride as i32, stride as i32),
        (pad as i32, pad as i32),
        None,
        None,
    )
    .unwrap()
    .add(Array::from_slice(&bias, &[co as i32]))
    .unwrap();
    let (oh, ow) = (
        (h + 2 * pad - kh) / stride + 1,
        (w + 2 * pad - kw) / stride + 1,
    );
    assert_eq!(y.shape(), [n as i32, oh as i32, ow as i32, co as i32]);
    let mut want = vec![0.0f64; n * oh * ow * co];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..co {
                    let mut acc = bias[o] as f64;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            for c in 0..ci {
                                acc += x[((b * h + iy as usize) * w + ix as usize) * ci + c] as f64
                                    * wt[((o * kh + ky) * kw + kx) * ci + c] as f64;
                            }
                        }
                    }
                    want[((b * oh + oy) * ow + ox) * co + o] = acc;
                }
            }
        }
    }
    assert_close(y.as_slice::<f32>(), &want, 1e-5, "conv2d");
}

#[test]
fn layer_norm_matches_naive() {
    let (rows, d, eps) = (4, 33, 1e-6f32);
    let x = values(rows * d, 6);
    let g = values(d, 7);
    let b = values(d, 8);
    let (ga, ba) = (
        Array::from_slice(&g, &[d as i32]),
        Array::from_slice(&b, &[d as i32]),
    );
    let y = fast::layer_norm(
        Array::from_slice(&x, &[rows as i32, d as i32]),
        &ga,
        &ba,
        eps,
    )
    .unwrap();
    let mut want = vec![0.0f64; rows * d];
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        for i in 0..d {
            want[r * d + i] =
                (row[i] as f64 - mean) / (var + eps as f64).sqrt() * g[i] as f64 + b[i] as f64;
        }
    }
    assert_close(y.as_slice::<f32>(), &want, 1e-5, "layer_norm");
}

#[test]
fn scaled_dot_product_attention_matches_naive() {
    let (b, h, l, d) = (2, 3, 9, 8);
    let q = values(b * h * l * d, 9);
    let k = values(b * h * l * d, 10);
    let v = values(b * h * l * d, 11);
    let scale = 1.0 / (d as f32).sqrt();
    let shape = [b as i32, h as i32, l as i32, d as i32];
    let o = fast::scaled_dot_product_attention(
        Array::from_slice(&q, &shape),
        Array::from_slice(&k, &shape),
        Array::from_slice(&v, &shape),
        scale,
        None,
        None,
    )
    .unwrap();
    let mut want = vec![0.0f64; b * h * l * d];
    for bh in 0..b * h {
        let base = bh * l * d;
        for i in 0..l {
            let logits: Vec<f64> = (0..l)
                .map(|j| {
                    (0..d)
                        .map(|c| q[base + i * d + c] as f64 * k[base + j * d + c] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let exps: Vec<f64> = logits.iter().map(|z| (z - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            for c in 0..d {
                want[base + i * d + c] = (0..l)
                    .map(|j| exps[j] / total * v[base + j * d + c] as f64)
                    .sum();
            }
        }
    }
    assert_close(o.as_slice::<f32>(), &want, 1e-5, "sdpa");
}

#[test]
fn float16_round_trips_bits_and_casts() {
    let x = values(64, 12);
    let halves: Vec<f16> = x.iter().map(|&v| f16::from_f32(v * 300.0)).collect();
    // Storage round trip: the same bits come back.
    let a = Array::from_slice(&halves, &[64]);
    assert_eq!(a.dtype(), Dtype::Float16);
    assert_eq!(a.as_slice::<f16>(), &halves[..]);
    // Casts in MLX round to nearest even, as the half crate does.
    let cast = Array::from_slice(&x, &[64])
        .as_dtype(Dtype::Float16)
        .unwrap();
    let want: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    assert_eq!(cast.as_slice::<f16>(), &want[..]);
    let back = a.as_dtype(Dtype::Float32).unwrap();
    let want: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
    assert_eq!(back.as_slice::<f32>(), &want[..]);
    assert_eq!(a.index_item_f16(5), halves[5]);
}

#[test]
fn bfloat16_round_trips_bits_and_casts() {
    let x = values(64, 13);
    let b16: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v * 1e4)).collect();
    let a = Array::from_slice(&b16, &[64]);
    assert_eq!(a.dtype(), Dtype::Bfloat16);
    assert_eq!(a.as_slice::<bf16>(), &b16[..]);
    let cast = Array::from_slice(&x, &[64])
        .as_dtype(Dtype::Bfloat16)
        .unwrap();
    let want: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(cast.as_slice::<bf16>(), &want[..]);
    let back = a.as_dtype(Dtype::Float32).unwrap();
    let want: Vec<f32> = b16.iter().map(|h| h.to_f32()).collect();
    assert_eq!(back.as_slice::<f32>(), &want[..]);
}

trait ItemF16 {
    fn index_item_f16(&self, i: i32) -> f16;
}
impl ItemF16 for Array {
    /// `item()` goes through mlx_array_item_float16: the storage-only x86
    /// typedef in the mlx-sys patch must hand back the exact bits.
    fn index_item_f16(&self, i: i32) -> f16 {
        ops::indexing::take(self, Array::from_int(i))
            .unwrap()
            .item_exact::<f16>()
    }
}
