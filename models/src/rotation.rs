//! Rotation representations: the continuous 6-D form (Zhou et al. 2019) the
//! networks regress, rotation matrices MANO consumes, and axis-angle vectors
//! for output.

use mlx_rs::{ops, Array};

use crate::nn::{select, Result};

/// (…, 6) → (N, 3, 3) with N the product of the leading axes. The two
/// 3-vectors are orthonormalised by Gram–Schmidt and completed by their
/// cross product; they become the matrix's columns. Normalisation divides by
/// max(‖v‖, 1e-12) as `torch.nn.functional.normalize` does.
pub fn rot6d_to_rotmat(x: &Array) -> Result<Array> {
    let v = x.reshape(&[-1, 2, 3])?;
    let a1 = select(&v, 1, 0)?;
    let a2 = select(&v, 1, 1)?;
    let normalize = |u: &Array| -> Result<Array> {
        let norm = u.square()?.sum_axis(-1, true)?.sqrt()?;
        u.divide(ops::maximum(&norm, Array::from_f32(1e-12))?)
    };
    let b1 = normalize(&a1)?;
    let dot = b1.multiply(&a2)?.sum_axis(-1, true)?;
    let b2 = normalize(&a2.subtract(dot.multiply(&b1)?)?)?;
    let b3 = cross(&b1, &b2)?;
    ops::stack(&[b1, b2, b3], -1)
}

fn cross(a: &Array, b: &Array) -> Result<Array> {
    let c = |v: &Array, i: i32| v.index((.., i..i + 1));
    let x = c(a, 1)
        .multiply(c(b, 2))?
        .subtract(c(a, 2).multiply(c(b, 1))?)?;
    let y = c(a, 2)
        .multiply(c(b, 0))?
        .subtract(c(a, 0).multiply(c(b, 2))?)?;
    let z = c(a, 0)
        .multiply(c(b, 1))?
        .subtract(c(a, 1).multiply(c(b, 0))?)?;
    ops::concatenate(&[x, y, z], -1)
}

/// Rotation matrix (row-major) → axis-angle vector, through the unit
/// quaternion chosen from the largest of trace and diagonal (stable for every
/// angle, including near 0 and π), in f64.
pub fn rotmat_to_rotvec(m: &[f32; 9]) -> [f32; 3] {
    let r = |i: usize, j: usize| m[i * 3 + j] as f64;
    let diag = [r(0, 0), r(1, 1), r(2, 2)];
    let trace = diag.iter().sum::<f64>();
    let mut q = [0.0f64; 4]; // x, y, z, w
    let (best, best_val) =
        diag.iter().copied().enumerate().fold(
            (3, trace),
            |acc, (i, d)| if d > acc.1 { (i, d) } else { acc },
        );
    let _ = best_val;
    if best == 3 {
        q[0] = r(2, 1) - r(1, 2);
        q[1] = r(0, 2) - r(2, 0);
        q[2] = r(1, 0) - r(0, 1);
        q[3] = 1.0 + trace;
    } else {
        let i = best;
        let j = (i + 1) % 3;
        let k = (j + 1) % 3;
        q[i] = 1.0 - trace + 2.0 * r(i, i);
        q[j] = r(j, i) + r(i, j);
        q[k] = r(k, i) + r(i, k);
        q[3] = r(k, j) - r(j, k);
    }
    let norm = q.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut q = q.map(|v| v / norm);
    if q[3] < 0.0 {
        q = q.map(|v| -v);
    }
    let vec_norm = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
    let half = vec_norm.atan2(q[3]);
    let angle = 2.0 * half;
    let scale = if angle.abs() <= 1e-3 {
        2.0 + angle * angle / 12.0 + 7.0 * angle.powi(4) / 2880.0
    } else {
        angle / half.sin()
    };
    [
        (scale * q[0]) as f32,
        (scale * q[1]) as f32,
        (scale * q[2]) as f32,
    ]
}

/// (B, J, 3, 3) rotations → axis-angle (B, 1, 3) for the first joint (global
/// orientation) and (B, J-1, 3) for the rest. Reads the rotations back.
pub fn split_axis_angles(rotations: &Array) -> Result<(Array, Array)> {
    let (b, j) = (rotations.dim(0), rotations.dim(1));
    let r = rotations.as_dtype(mlx_rs::Dtype::Float32)?;
    r.eval()?;
    let vecs: Vec<f32> = r
        .as_slice::<f32>()
        .chunks_exact(9)
        .flat_map(|m| rotmat_to_rotvec(m.try_into().expect("3x3")))
        .collect();
    let (global, rest): (Vec<_>, Vec<_>) = vecs
        .chunks_exact(j as usize * 3)
        .map(|hand| hand.split_at(3))
        .unzip();
    Ok((
        Array::from_slice(&global.concat(), &[b, 1, 3]),
        Array::from_slice(&rest.concat(), &[b, j - 1, 3]),
    ))
}

use mlx_rs::ops::indexing::IndexOp;

#[cfg(test)]
mod tests {
    use super::*;

    fn rodrigues(v: [f64; 3]) -> [f32; 9] {
        let angle = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        let k = v.map(|c| c / angle);
        let (s, c) = angle.sin_cos();
        let mut m = [0.0f32; 9];
        for i in 0..3 {
            for j in 0..3 {
                let skew = match (i, j) {
                    (0, 1) => -k[2],
                    (0, 2) => k[1],
                    (1, 0) => k[2],
                    (1, 2) => -k[0],
                    (2, 0) => -k[1],
                    (2, 1) => k[0],
                    _ => 0.0,
                };
                let eye = if i == j { 1.0 } else { 0.0 };
                m[i * 3 + j] = (eye * c + s * skew + (1.0 - c) * k[i] * k[j]) as f32;
            }
        }
        m
    }

    #[test]
    fn axis_angle_round_trips_across_the_range() {
        for v in [
            [0.3, -0.2, 0.1],
            [1e-5, 2e-5, -1e-5],
            [0.0, 0.0, 3.1],
            [2.0, -1.5, 1.0],
            [0.0, std::f64::consts::PI - 1e-4, 0.0],
        ] {
            let got = rotmat_to_rotvec(&rodrigues(v));
            for i in 0..3 {
                assert!((got[i] as f64 - v[i]).abs() < 2e-4, "{v:?} -> {got:?}");
            }
        }
        assert_eq!(
            rotmat_to_rotvec(&[1., 0., 0., 0., 1., 0., 0., 0., 1.]),
            [0.0; 3]
        );
    }

    #[test]
    fn rot6d_gives_orthonormal_columns() {
        let x = Array::from_slice(&[1.0f32, 0.2, 0.0, 0.3, 1.0, 0.1], &[1, 6]);
        let m = rot6d_to_rotmat(&x).unwrap();
        let mt = m.transpose_axes(&[0, 2, 1]).unwrap();
        let eye = mt.matmul(&m).unwrap();
        let got = eye.as_slice::<f32>();
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((got[i * 3 + j] - want).abs() < 1e-6);
            }
        }
        // The first column is the first vector, normalised.
        let n = (1.0f32 + 0.04).sqrt();
        assert!((m.as_slice::<f32>()[0] - 1.0 / n).abs() < 1e-6);
        assert!((m.as_slice::<f32>()[3] - 0.2 / n).abs() < 1e-6);
    }
}
