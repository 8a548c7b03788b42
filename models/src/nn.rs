//! Blocks shared by the networks. All tensors are channels-last (NHWC), all
//! convolution kernels OHWI, all Linear weights `(out, in)` as in PyTorch.

use mlx_rs::error::Exception;
use mlx_rs::{fast, ops, Array, Dtype};

use crate::weights::Weights;

pub type Result<T> = std::result::Result<T, Exception>;

/// `y = x Wᵀ + b`, or its 4-bit affine-quantized form when the layout carries
/// `<prefix>.scales` (MLX's packing: 8 nibbles per u32, lowest first).
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Array>,
}

enum LinearWeight {
    Dense(Array),
    Quantized {
        packed: Array,
        scales: Array,
        biases: Array,
        group_size: i32,
        bits: i32,
    },
}

impl Linear {
    pub fn new(w: &Weights, in_dim: i32, out_dim: i32) -> Self {
        Self::build(w, in_dim, out_dim, true)
    }

    pub fn no_bias(w: &Weights, in_dim: i32, out_dim: i32) -> Self {
        Self::build(w, in_dim, out_dim, false)
    }

    fn build(w: &Weights, in_dim: i32, out_dim: i32, bias: bool) -> Self {
        let weight = if w.contains("scales") {
            const BITS: i32 = 4;
            let per_word = 32 / BITS;
            let groups = w
                .shape_of("scales")
                .and_then(|s| s.get(1).copied())
                .filter(|&g| g > 0 && in_dim % g == 0)
                .unwrap_or(1);
            LinearWeight::Quantized {
                packed: w.get_exact("weight", &[out_dim, in_dim / per_word], Dtype::Uint32),
                scales: w.get("scales", &[out_dim, groups]),
                biases: w.get("biases", &[out_dim, groups]),
                group_size: in_dim / groups,
                bits: BITS,
            }
        } else {
            LinearWeight::Dense(w.get("weight", &[out_dim, in_dim]))
        };
        let bias = bias.then(|| w.get("bias", &[out_dim]));
        Linear { weight, bias }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, LinearWeight::Quantized { .. })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => {
                if let Some(b) = &self.bias {
                    return ops::addmm(b, x, w.t(), None, None);
                }
                x.matmul(w.t())?
            }
            LinearWeight::Quantized {
                packed,
                scales,
                biases,
                group_size,
                bits,
            } => ops::quantized_matmul(x, packed, scales, biases, true, *group_size, *bits)?,
        };
        match &self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}

/// 2-D convolution, NHWC input, OHWI kernel.
pub struct Conv2d {
    weight: Array,
    bias: Option<Array>,
    stride: i32,
    padding: i32,
}

impl Conv2d {
    pub fn new(
        w: &Weights,
        c_in: i32,
        c_out: i32,
        kernel: i32,
        stride: i32,
        padding: i32,
        bias: bool,
    ) -> Self {
        Conv2d {
            weight: w.get("weight", &[c_out, kernel, kernel, c_in]),
            bias: bias.then(|| w.get("bias", &[c_out])),
            stride,
            padding,
        }
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let y = ops::conv2d(
            x,
            &self.weight,
            (self.stride, self.stride),
            (self.padding, self.padding),
            None,
            None,
        )?;
        match &self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}

/// Transposed 2-D convolution with PyTorch's semantics (kernel stored OHWI,
/// converted from PyTorch IOHW without a spatial flip), no bias.
pub struct ConvTranspose2d {
    weight: Array,
    stride: i32,
    padding: i32,
}

impl ConvTranspose2d {
    pub fn new(w: &Weights, c_in: i32, c_out: i32, kernel: i32, stride: i32, padding: i32) -> Self {
        ConvTranspose2d {
            weight: w.get("weight", &[c_out, kernel, kernel, c_in]),
            stride,
            padding,
        }
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        ops::conv_transpose2d(
            x,
            &self.weight,
            (self.stride, self.stride),
            (self.padding, self.padding),
            None,
            None,
            None,
        )
    }
}

/// BatchNorm in eval mode (running statistics), folded at load into one
/// scale and one shift per channel.
pub struct BatchNorm {
    scale: Array,
    shift: Array,
}

impl BatchNorm {
    pub fn new(w: &Weights, channels: i32, eps: f32) -> Result<Self> {
        let gamma = w.get("weight", &[channels]);
        let beta = w.get("bias", &[channels]);
        let mean = w.get("running_mean", &[channels]);
        let var = w.get("running_var", &[channels]);
        let scale = gamma.multiply(ops::rsqrt(var.add(Array::from_f32(eps))?)?)?;
        let shift = beta.subtract(mean.multiply(&scale)?)?;
        Ok(BatchNorm { scale, shift })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        x.multiply(&self.scale)?.add(&self.shift)
    }
}

/// LayerNorm over the last axis with affine parameters.
pub struct LayerNorm {
    weight: Array,
    bias: Array,
    eps: f32,
}

impl LayerNorm {
    pub fn new(w: &Weights, dim: i32, eps: f32) -> Self {
        LayerNorm {
            weight: w.get("weight", &[dim]),
            bias: w.get("bias", &[dim]),
            eps,
        }
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        fast::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

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

pub fn silu(x: &Array) -> Result<Array> {
    x.multiply(ops::sigmoid(x)?)
}

pub fn relu(x: &Array) -> Result<Array> {
    ops::maximum(x, Array::from_f32(0.0))
}

/// Exact (erf) GELU, as `torch.nn.GELU()` computes it.
pub fn gelu(x: &Array) -> Result<Array> {
    let half = Array::from_f32(0.5);
    let inv_sqrt2 = Array::from_f32(std::f32::consts::FRAC_1_SQRT_2);
    let cdf = ops::erf(x.multiply(&inv_sqrt2)?)?.add(Array::from_f32(1.0))?;
    x.multiply(&half)?.multiply(&cdf)
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
        Array::from_f32(f32::NEG_INFINITY),
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

use mlx_rs::ops::indexing::IndexOp;
