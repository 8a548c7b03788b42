//! Blocks shared by the networks. All tensors are channels-last (NHWC), all
//! convolution kernels OHWI, all Linear weights `(out, in)` as in PyTorch.
//!
//! - layers: [`Linear`] (dense or 4-bit), [`Conv2d`], [`ConvTranspose2d`],
//!   [`BatchNorm`] (eval), [`LayerNorm`]; activations; upsampling, pooling
//! - vision transformer: [`VitBlock`] (LayerNorm, fused SDPA, GELU MLP)
//! - YOLO: [`ConvBnSilu`], [`Bottleneck`], [`C2f`], [`Sppf`]
//! - sampling: [`grid_sample_zeros`]; host read-back: [`host_f32`]

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

// ---- Vision transformer blocks ----

/// Multi-head self-attention with a fused qkv projection.
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: i32,
}

impl Attention {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let (b, n, d) = (x.dim(0), x.dim(1), x.dim(2));
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape(&[b, n, 3, self.heads, hd])?
            // (3, B, heads, N, head_dim): q, k, v split on the first axis
            .transpose_axes(&[2, 0, 3, 1, 4])?;
        let (q, k, v) = (
            select(&qkv, 0, 0)?,
            select(&qkv, 0, 1)?,
            select(&qkv, 0, 2)?,
        );
        let o = fast::scaled_dot_product_attention(q, k, v, (hd as f32).powf(-0.5), None, None)?;
        let o = o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, n, d])?;
        self.proj.forward(&o)
    }
}

pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

/// Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) with
/// exact GELU (timm's ViT block without DropPath or LayerScale).
pub struct VitBlock {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl VitBlock {
    pub fn new(w: &Weights, d: i32, heads: i32, mlp_ratio: i32, eps: f32) -> Self {
        let hidden = d * mlp_ratio;
        VitBlock {
            norm1: LayerNorm::new(&w.pp("norm1"), d, eps),
            attn: Attention {
                qkv: Linear::new(&w.pp("attn.qkv"), d, 3 * d),
                proj: Linear::new(&w.pp("attn.proj"), d, d),
                heads,
            },
            norm2: LayerNorm::new(&w.pp("norm2"), d, eps),
            mlp: Mlp {
                fc1: Linear::new(&w.pp("mlp.fc1"), d, hidden),
                fc2: Linear::new(&w.pp("mlp.fc2"), hidden, d),
            },
        }
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let x = x.add(self.attn.forward(&self.norm1.forward(x)?)?)?;
        let h = gelu(&self.mlp.fc1.forward(&self.norm2.forward(&x)?)?)?;
        x.add(self.mlp.fc2.forward(&h)?)
    }
}

// ---- YOLO (ultralytics) blocks ----

/// Conv2d (no bias) → BatchNorm → SiLU: ultralytics' `Conv`.
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

pub struct Bottleneck {
    cv1: ConvBnSilu,
    cv2: ConvBnSilu,
    residual: bool,
}

impl Bottleneck {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let y = self.cv2.forward(&self.cv1.forward(x)?)?;
        if self.residual {
            x.add(&y)
        } else {
            Ok(y)
        }
    }
}

/// CSP bottleneck with two convolutions: split, run the bottlenecks on the
/// second half keeping every intermediate, concatenate, fuse.
pub struct C2f {
    cv1: ConvBnSilu,
    cv2: ConvBnSilu,
    m: Vec<Bottleneck>,
    hidden: i32,
}

impl C2f {
    pub fn new(
        w: &Weights,
        c_in: i32,
        c_out: i32,
        n: i32,
        shortcut: bool,
        eps: f32,
    ) -> Result<Self> {
        let c = c_out / 2;
        let m = (0..n)
            .map(|i| {
                let wm = w.pp("m").pp(i);
                Ok(Bottleneck {
                    cv1: ConvBnSilu::new(&wm.pp("cv1"), c, c, 3, 1, eps)?,
                    cv2: ConvBnSilu::new(&wm.pp("cv2"), c, c, 3, 1, eps)?,
                    residual: shortcut,
                })
            })
            .collect::<Result<_>>()?;
        Ok(C2f {
            cv1: ConvBnSilu::new(&w.pp("cv1"), c_in, 2 * c, 1, 1, eps)?,
            cv2: ConvBnSilu::new(&w.pp("cv2"), (2 + n) * c, c_out, 1, 1, eps)?,
            m,
            hidden: c,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let y = self.cv1.forward(x)?;
        let mut parts = vec![
            y.index((.., .., .., ..self.hidden)),
            y.index((.., .., .., self.hidden..)),
        ];
        for b in &self.m {
            let next = b.forward(parts.last().expect("two halves"))?;
            parts.push(next);
        }
        self.cv2.forward(&ops::concatenate(&parts, -1)?)
    }
}

/// Spatial pyramid pooling, fast: three chained 5×5 max pools.
pub struct Sppf {
    cv1: ConvBnSilu,
    cv2: ConvBnSilu,
}

impl Sppf {
    pub fn new(w: &Weights, c_in: i32, c_out: i32, eps: f32) -> Result<Self> {
        let c = c_in / 2;
        Ok(Sppf {
            cv1: ConvBnSilu::new(&w.pp("cv1"), c_in, c, 1, 1, eps)?,
            cv2: ConvBnSilu::new(&w.pp("cv2"), 4 * c, c_out, 1, 1, eps)?,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let x = self.cv1.forward(x)?;
        let y1 = max_pool_same(&x, 5)?;
        let y2 = max_pool_same(&y1, 5)?;
        let y3 = max_pool_same(&y2, 5)?;
        self.cv2.forward(&ops::concatenate(&[x, y1, y2, y3], -1)?)
    }
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

use mlx_rs::ops::indexing::IndexOp;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn weights(pairs: Vec<(&str, Array)>) -> Weights {
        let map: HashMap<String, Array> = pairs.into_iter().map(|(k, v)| (k.into(), v)).collect();
        Weights::from_tensors("test", map, Default::default())
    }

    fn ramp(n: i32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * scale)
            .collect()
    }

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
