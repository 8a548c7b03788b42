//! Reading arrays back to the host.

use mlx_rs::{Array, Dtype};

use super::Result;

/// The values of `a` as f32 on the host, in row-major order, whatever its
/// layout on the device (slices and transposes are made contiguous first).
pub fn host_f32(a: &Array) -> Result<Vec<f32>> {
    let flat = a.as_dtype(Dtype::Float32)?.reshape(&[-1])?;
    flat.eval()?;
    match flat.try_as_slice::<f32>() {
        Ok(s) => Ok(s.to_vec()),
        // A reshape may still be a strided view; a copy through an
        // arithmetic op always lays it out densely.
        Err(_) => {
            let dense = flat.add(Array::from_f32(0.0))?;
            dense.eval()?;
            Ok(dense.as_slice::<f32>().to_vec())
        }
    }
}
