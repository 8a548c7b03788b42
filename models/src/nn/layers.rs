//! Layers with weights, their norms and the activations between them.
//! Kernels OHWI, inputs NHWC, Linear weights `(out, in)` as in PyTorch.

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{fast, ops, Array, Dtype};

use super::{scalar, Result};
use crate::checked_weights::Weights;

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
    dilation: i32,
    groups: i32,
    /// Run a dilated convolution as per-tap matmuls (the CPU's way).
    dilated_as_taps: bool,
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
            dilation: 1,
            groups: 1,
            dilated_as_taps: false,
        }
    }

    /// The same convolution with its kernel taps `dilation` pixels apart.
    /// On the CPU it runs as one matmul per tap (MLX's CPU dilated
    /// convolution is a naive loop); on a GPU as the backend's convolution
    /// (cuDNN's is 1.5x faster than the taps for CorridorKey's refiner).
    pub fn dilated(self, dilation: i32) -> Self {
        Conv2d {
            dilation,
            dilated_as_taps: !crate::runtime::default_device_is_gpu(),
            ..self
        }
    }

    /// A convolution stored in PyTorch's layout (OIHW, `in/groups` input
    /// channels), made OHWI at load; "same" padding `kernel / 2`.
    pub fn from_torch(
        w: &Weights,
        c_in: i32,
        c_out: i32,
        kernel: i32,
        stride: i32,
        groups: i32,
        bias: bool,
    ) -> Result<Self> {
        // Dense once here: a transposed view would be copied by every call.
        let weight = w
            .get("weight", &[c_out, c_in / groups, kernel, kernel])
            .transpose_axes(&[0, 2, 3, 1])?
            .contiguous()?;
        Ok(Conv2d {
            weight,
            bias: bias.then(|| w.get("bias", &[c_out])),
            stride,
            padding: kernel / 2,
            dilation: 1,
            groups,
            dilated_as_taps: false,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let y = if self.dilation > 1 && self.stride == 1 && self.groups == 1 && self.dilated_as_taps
        {
            self.dilated_taps(x)?
        } else {
            ops::conv2d(
                x,
                &self.weight,
                (self.stride, self.stride),
                (self.padding, self.padding),
                (self.dilation, self.dilation),
                self.groups,
            )?
        };
        match &self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    /// A dilated, stride-1 convolution as one matmul per kernel tap over a
    /// shifted view of the padded input. MLX's CPU backend runs dilated
    /// convolutions through a naive loop (seconds for a 128² refiner).
    fn dilated_taps(&self, x: &Array) -> Result<Array> {
        let (k, d, p) = (self.weight.dim(1), self.dilation, self.padding);
        let (h, w) = (x.dim(1), x.dim(2));
        let (out_h, out_w) = (h + 2 * p - d * (k - 1), w + 2 * p - d * (k - 1));
        let padded = ops::pad(x, &[(0, 0), (p, p), (p, p), (0, 0)], None, None)?;
        let mut acc: Option<Array> = None;
        for ky in 0..k {
            for kx in 0..k {
                let (y0, x0) = (ky * d, kx * d);
                let tap = padded.index((.., y0..y0 + out_h, x0..x0 + out_w, ..));
                let wt = self.weight.index((.., ky, kx, ..));
                let term = tap.matmul(wt.t())?;
                acc = Some(match acc {
                    None => term,
                    Some(a) => a.add(&term)?,
                });
            }
        }
        Ok(acc.expect("a kernel has taps"))
    }
}

/// Transposed 2-D convolution with PyTorch's semantics (kernel stored OHWI,
/// converted from PyTorch IOHW without a spatial flip), no bias.
pub struct ConvTranspose2d {
    /// The OHWI kernel as the GEMM [`Self::forward`] runs: (in, kh·kw·out),
    /// laid out once at load rather than on every call.
    patch_weight: Array,
    c_out: i32,
    kernel: i32,
    stride: i32,
    padding: i32,
    output_padding: i32,
}

impl ConvTranspose2d {
    pub fn new(w: &Weights, c_in: i32, c_out: i32, kernel: i32, stride: i32, padding: i32) -> Self {
        let weight = w.get("weight", &[c_out, kernel, kernel, c_in]);
        Self::from_ohwi(&weight, stride, padding, 0).expect("a (out, k, k, in) kernel")
    }

    fn from_ohwi(weight: &Array, stride: i32, padding: i32, output_padding: i32) -> Result<Self> {
        let (c_out, kernel, c_in) = (weight.dim(0), weight.dim(1), weight.dim(3));
        // (out, ky, kx, in) → (in, ky, kx, out): per input pixel, its whole patch.
        let patch_weight = weight
            .transpose_axes(&[3, 1, 2, 0])?
            .reshape(&[c_in, kernel * kernel * c_out])?
            .contiguous()?;
        Ok(ConvTranspose2d {
            patch_weight,
            c_out,
            kernel,
            stride,
            padding,
            output_padding,
        })
    }

    /// A stride-2 upsampling layer stored in PyTorch's layout (IOHW), with
    /// the padding that makes it exactly double H and W for kernels 2, 3
    /// and 4 (mmpose's deconv table).
    pub fn upsample_2x_from_torch(w: &Weights, c_in: i32, c_out: i32, kernel: i32) -> Result<Self> {
        let (padding, output_padding) = match kernel {
            4 => (1, 0),
            3 => (1, 1),
            2 => (0, 0),
            k => {
                return Err(Exception::custom(format!(
                    "no ×2 padding rule for a {k}×{k} transposed convolution"
                )))
            }
        };
        let weight = w
            .get("weight", &[c_in, c_out, kernel, kernel])
            .transpose_axes(&[1, 2, 3, 0])?;
        Self::from_ohwi(&weight, 2, padding, output_padding)
    }

    /// One GEMM from every input pixel to its k×k output patch, then the
    /// patches overlap-added phase by phase. Exactly the transposed
    /// convolution, and fast on every backend (MLX's CPU runs transposed
    /// convolutions through a naive loop: minutes for Sapiens2's head).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let (b, h, w, c_in) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let (c_out, k) = (self.c_out, self.kernel);
        let s = self.stride;
        let patches = x
            .reshape(&[b * h * w, c_in])?
            .matmul(&self.patch_weight)?
            .reshape(&[b, h, w, k * k, c_out])?;
        // Output row s·i + ky with ky = s·a + r: phase r of the output,
        // shifted down by a. Each phase is a sum of shifted patch slices.
        let taps = (k + s - 1) / s;
        let (hp, wp) = (h + taps - 1, w + taps - 1);
        let mut rows = Vec::with_capacity(s as usize);
        for r in 0..s {
            let mut cols = Vec::with_capacity(s as usize);
            for q in 0..s {
                let mut phase: Option<Array> = None;
                for a in 0..taps {
                    for c in 0..taps {
                        let (ky, kx) = (s * a + r, s * c + q);
                        if ky >= k || kx >= k {
                            continue;
                        }
                        let tap = patches.index((.., .., .., ky * k + kx, ..));
                        let shifted = ops::pad(
                            &tap,
                            &[(0, 0), (a, taps - 1 - a), (c, taps - 1 - c), (0, 0)],
                            None,
                            None,
                        )?;
                        phase = Some(match phase {
                            None => shifted,
                            Some(p) => p.add(&shifted)?,
                        });
                    }
                }
                let phase = match phase {
                    Some(p) => p,
                    None => ops::zeros_dtype(&[b, hp, wp, c_out], x.dtype())?,
                };
                cols.push(phase);
            }
            // Interleave the column phases: (B, hp, wp, s, C) → (B, hp, s·wp, C).
            rows.push(ops::stack(&cols, 3)?.reshape(&[b, hp, s * wp, c_out])?);
        }
        let full = ops::stack(&rows, 2)?.reshape(&[b, s * hp, s * wp, c_out])?;
        let (p, op) = (self.padding, self.output_padding);
        let out_h = s * (h - 1) - 2 * p + k + op;
        let out_w = s * (w - 1) - 2 * p + k + op;
        Ok(full.index((.., p..p + out_h, p..p + out_w, ..)))
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
        let scale = gamma.multiply(ops::rsqrt(var.add(scalar(eps, var.dtype()))?)?)?;
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

/// RMSNorm over the last axis with a weight and no bias.
pub struct RmsNorm {
    weight: Array,
    eps: f32,
}

impl RmsNorm {
    pub fn new(w: &Weights, dim: i32, eps: f32) -> Self {
        RmsNorm {
            weight: w.get("weight", &[dim]),
            eps,
        }
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        fast::rms_norm(x, Some(&self.weight), self.eps)
    }
}

/// Parameter-free InstanceNorm of an NHWC map: each sample and channel
/// normalised by its own mean and biased variance over H×W, also at
/// inference (PyTorch's `InstanceNorm2d` defaults).
pub fn instance_norm(x: &Array, eps: f32) -> Result<Array> {
    let mean = x.mean_axes(&[1, 2], true)?;
    let centred = x.subtract(&mean)?;
    let var = centred.square()?.mean_axes(&[1, 2], true)?;
    centred.multiply(ops::rsqrt(&var.add(scalar(eps, var.dtype()))?)?)
}

/// Conv2d (no bias) → BatchNorm → SiLU: ultralytics' `Conv`, mmdet's
/// `ConvModule`.
pub struct ConvBnSilu {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBnSilu {
    pub fn new(w: &Weights, c_in: i32, c_out: i32, k: i32, s: i32, eps: f32) -> Result<Self> {
        Ok(ConvBnSilu {
            conv: Conv2d::new(&w.pp("conv"), c_in, c_out, k, s, k / 2, false),
            bn: BatchNorm::new(&w.pp("bn"), c_out, eps)?,
        })
    }

    /// The same block with its convolution in PyTorch's layout (mmdet's
    /// `ConvModule`), optionally grouped.
    pub fn from_torch(
        w: &Weights,
        c_in: i32,
        c_out: i32,
        k: i32,
        s: i32,
        groups: i32,
        eps: f32,
    ) -> Result<Self> {
        Ok(ConvBnSilu {
            conv: Conv2d::from_torch(&w.pp("conv"), c_in, c_out, k, s, groups, false)?,
            bn: BatchNorm::new(&w.pp("bn"), c_out, eps)?,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        silu(&self.bn.forward(&self.conv.forward(x)?)?)
    }
}

pub fn silu(x: &Array) -> Result<Array> {
    x.multiply(ops::sigmoid(x)?)
}

pub fn relu(x: &Array) -> Result<Array> {
    ops::maximum(x, scalar(0.0, x.dtype()))
}

/// Exact (erf) GELU, as `torch.nn.GELU()` computes it.
pub fn gelu(x: &Array) -> Result<Array> {
    let d = x.dtype();
    let half = scalar(0.5, d);
    let inv_sqrt2 = scalar(std::f32::consts::FRAC_1_SQRT_2, d);
    let cdf = ops::erf(x.multiply(&inv_sqrt2)?)?.add(scalar(1.0, d))?;
    x.multiply(&half)?.multiply(&cdf)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::nn::test_data::ramp;

    fn weights(pairs: Vec<(&str, Array)>) -> Weights {
        let map: HashMap<String, Array> = pairs.into_iter().map(|(k, v)| (k.into(), v)).collect();
        Weights::from_tensors("test", map, Default::default())
    }

    #[test]
    fn int4_linear_equals_its_dequantized_dense_form() {
        let (inp, out) = (64, 24);
        let w = Array::from_slice(&ramp(inp * out, 0.01), &[out, inp]);
        let bias = Array::from_slice(&ramp(out, 0.1), &[out]);
        let (packed, scales, biases) = ops::quantize(&w, 32, 4).unwrap();
        let dense = ops::dequantize(&packed, &scales, &biases, 32, 4).unwrap();
        assert_eq!(scales.shape(), [out, 2], "group size 32 → 2 groups per row");

        let q = weights(vec![
            ("l.weight", packed),
            ("l.scales", scales),
            ("l.biases", biases),
            ("l.bias", bias.clone()),
        ]);
        let quantized = Linear::new(&q.pp("l"), inp, out);
        q.finish().unwrap();
        assert!(quantized.is_quantized());

        let d = weights(vec![("l.weight", dense), ("l.bias", bias)]);
        let reference = Linear::new(&d.pp("l"), inp, out);
        d.finish().unwrap();
        assert!(!reference.is_quantized());

        let x = Array::from_slice(&ramp(3 * inp, 0.02), &[3, inp]);
        let a = quantized.forward(&x).unwrap();
        let b = reference.forward(&x).unwrap();
        let diff = a.subtract(&b).unwrap().abs().unwrap().max(None).unwrap();
        assert!(diff.item_exact::<f32>() < 1e-4);
    }

    #[test]
    fn float_policy_casts_weights_but_not_packed_words() {
        let w = weights(vec![(
            "a.weight",
            Array::from_slice(&[1.0f32, 2.0], &[1, 2]),
        )])
        .with_float_dtype(Dtype::Bfloat16);
        let l = Linear::no_bias(&w.pp("a"), 2, 1);
        w.finish().unwrap();
        let y = l
            .forward(
                &Array::from_slice(&[1.0f32, 1.0], &[1, 2])
                    .as_dtype(Dtype::Bfloat16)
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(y.dtype(), Dtype::Bfloat16);
        assert_eq!(y.as_dtype(Dtype::Float32).unwrap().item_exact::<f32>(), 3.0);
    }

    /// The GEMM-and-overlap-add form equals MLX's own transposed convolution
    /// for every kernel of the ×2 table (PyTorch's output padding included).
    #[test]
    fn transposed_convolution_matches_the_direct_one() {
        for (k, p, op) in [(4, 1, 0), (3, 1, 1), (2, 0, 0)] {
            let (c_in, c_out) = (5, 3);
            let weight = Array::from_slice(&ramp(c_out * k * k * c_in, 0.01), &[c_out, k, k, c_in]);
            let layer = ConvTranspose2d::from_ohwi(&weight, 2, p, op).unwrap();
            let x = Array::from_slice(&ramp(2 * 4 * 6 * c_in, 0.03), &[2, 4, 6, c_in]);
            let ours = layer.forward(&x).unwrap();
            let direct =
                ops::conv_transpose2d(&x, &weight, (2, 2), (p, p), None, (op, op), None).unwrap();
            assert_eq!(ours.shape(), [2, 8, 12, c_out], "k={k}");
            assert_eq!(ours.shape(), direct.shape(), "k={k}");
            let d = ours
                .subtract(&direct)
                .unwrap()
                .abs()
                .unwrap()
                .max(None)
                .unwrap();
            assert!(
                d.item_exact::<f32>() < 1e-5,
                "k={k}: {}",
                d.item_exact::<f32>()
            );
        }
    }

    /// The tap-sum form of a dilated convolution equals MLX's own.
    #[test]
    fn dilated_convolution_matches_the_direct_one() {
        let (c_in, c_out, k) = (5, 4, 3);
        let weight = Array::from_slice(&ramp(c_out * k * k * c_in, 0.01), &[c_out, k, k, c_in]);
        let x = Array::from_slice(&ramp(2 * 11 * 9 * c_in, 0.03), &[2, 11, 9, c_in]);
        for d in [2, 4] {
            let conv = Conv2d {
                weight: weight.clone(),
                bias: None,
                stride: 1,
                padding: d,
                dilation: d,
                groups: 1,
                dilated_as_taps: true,
            };
            let ours = conv.forward(&x).unwrap();
            let direct = ops::conv2d(&x, &weight, (1, 1), (d, d), (d, d), 1).unwrap();
            assert_eq!(ours.shape(), direct.shape());
            let diff = ours
                .subtract(&direct)
                .unwrap()
                .abs()
                .unwrap()
                .max(None)
                .unwrap();
            assert!(diff.item_exact::<f32>() < 1e-5, "dilation {d}");
        }
    }
}
