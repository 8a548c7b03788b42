//! Sapiens2 whole-body pose: a ViT with RMSNorm, q/k norms, LayerScale,
//! grouped-query attention in the middle layers, 2-D RoPE and SwiGLU, then
//! the heatmap head (two ×2 transposed convolutions and 1×1 convolutions,
//! each with parameter-free InstanceNorm and SiLU) to 308 keypoint maps at a
//! quarter of the input resolution.
//!
//! Weights in the layout of the published `facebook/sapiens2-pose-*`
//! safetensors (PyTorch): the loader turns the patch embedding OIHW → OHWI
//! and the transposed convolutions IOHW → OHWI by name, never by shape.
//!
//! RoPE follows the reference bit for bit: its tables are computed and
//! applied in bfloat16 with the reference's rounding at every step (see
//! [`RopeTables`]). Running it in float32 moves the featmap by ~2e-2.

use std::collections::HashMap;
use std::path::Path;

use half::bf16;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{fast, ops, Array, Dtype};
use serde::{Deserialize, Serialize};

use crate::checked_weights::Weights;
use crate::model_files::LoadError;
use crate::nn::{host_f32, instance_norm, silu, Conv2d, ConvTranspose2d, Linear, Result, RmsNorm};
use crate::sapiens_demo::TopdownConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sapiens2Config {
    pub backbone: BackboneConfig,
    pub head: PoseHeadConfig,
    /// Network input (H, W); the crops are warped to it.
    pub input_size_hw: [i32; 2],
    pub preprocess: Preprocess,
    #[serde(default)]
    pub codec: Codec,
    #[serde(default)]
    pub demo: TopdownConfig,
    /// For each keypoint, the one it becomes in a mirrored image.
    #[serde(default = "flip_indices_308")]
    pub flip_indices: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackboneConfig {
    pub embed_dims: i32,
    pub num_layers: i32,
    pub num_heads: i32,
    pub feedforward_channels: i32,
    /// The first and last layers use full multi-head attention; the ones
    /// between use half as many key/value heads.
    #[serde(default = "eight")]
    pub mhsa_early: i32,
    #[serde(default = "eight")]
    pub mhsa_late: i32,
    pub patch_size: i32,
    pub n_storage_tokens: i32,
    pub rms_norm_eps: f32,
}

fn eight() -> i32 {
    8
}

impl BackboneConfig {
    pub fn head_dim(&self) -> i32 {
        self.embed_dims / self.num_heads
    }

    /// Key/value heads of layer `i`.
    pub fn kv_heads(&self, i: i32) -> i32 {
        if i < self.mhsa_early || i >= self.num_layers - self.mhsa_late {
            self.num_heads
        } else {
            self.num_heads / 2
        }
    }

    /// The class token and the storage tokens before the patches.
    pub fn prefix_tokens(&self) -> i32 {
        1 + self.n_storage_tokens
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoseHeadConfig {
    pub in_channels: i32,
    pub deconv_out_channels: Vec<i32>,
    pub deconv_kernel_sizes: Vec<i32>,
    pub conv_out_channels: Vec<i32>,
    pub conv_kernel_sizes: Vec<i32>,
    pub num_keypoints: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preprocess {
    /// Per channel of the RGB input, on the 0–255 scale.
    pub mean_rgb: [f32; 3],
    pub std_rgb: [f32; 3],
}

/// The UDP heatmap codec's decode settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Codec {
    /// Gaussian modulation before the DARK refinement.
    pub blur_kernel_size: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            blur_kernel_size: 11,
        }
    }
}

/// The published model sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sapiens2Size {
    B0_4,
    B0_8,
    B1,
    B5,
}

impl Sapiens2Size {
    pub const ALL: [Sapiens2Size; 4] = [Self::B0_4, Self::B0_8, Self::B1, Self::B5];

    pub fn name(self) -> &'static str {
        match self {
            Self::B0_4 => "0.4b",
            Self::B0_8 => "0.8b",
            Self::B1 => "1b",
            Self::B5 => "5b",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|z| z.name() == s)
    }
}

impl Sapiens2Config {
    /// The pose model of a published size (308 keypoints, 1024×768 input).
    pub fn pose(size: Sapiens2Size) -> Self {
        let (embed_dims, num_layers, num_heads) = match size {
            Sapiens2Size::B0_4 => (1024, 24, 16),
            Sapiens2Size::B0_8 => (1280, 32, 16),
            Sapiens2Size::B1 => (1536, 40, 24),
            Sapiens2Size::B5 => (2432, 56, 32),
        };
        // The 1b head is wider than the others.
        let (deconv, conv) = match size {
            Sapiens2Size::B1 => (vec![1536, 1024], vec![768, 512, 256]),
            _ => (vec![1024, 768], vec![512, 512, 256]),
        };
        Sapiens2Config {
            backbone: BackboneConfig {
                embed_dims,
                num_layers,
                num_heads,
                feedforward_channels: 4 * embed_dims,
                mhsa_early: 8,
                mhsa_late: 8,
                patch_size: 16,
                n_storage_tokens: 8,
                rms_norm_eps: 1e-6,
            },
            head: PoseHeadConfig {
                in_channels: embed_dims,
                deconv_kernel_sizes: vec![4; deconv.len()],
                deconv_out_channels: deconv,
                conv_kernel_sizes: vec![1; conv.len()],
                conv_out_channels: conv,
                num_keypoints: 308,
            },
            input_size_hw: [1024, 768],
            preprocess: Preprocess {
                mean_rgb: [123.675, 116.28, 103.53],
                std_rgb: [58.395, 57.12, 57.375],
            },
            codec: Codec::default(),
            demo: TopdownConfig::default(),
            flip_indices: flip_indices_308(),
        }
    }

    /// The heatmap size (H, W): the input over 16 (patches) times 2 per
    /// transposed convolution.
    pub fn heatmap_size_hw(&self) -> [i32; 2] {
        let up = 1 << self.head.deconv_out_channels.len();
        let p = self.backbone.patch_size;
        [
            self.input_size_hw[0] / p * up,
            self.input_size_hw[1] / p * up,
        ]
    }
}

/// The 308 whole-body keypoints: names in output order and their mirror
/// partners (`manifests/keypoints308.txt`).
pub fn keypoints308() -> Vec<(&'static str, &'static str)> {
    include_str!("../manifests/keypoints308.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next().expect("a name per line");
            (name, parts.next().unwrap_or("-"))
        })
        .collect()
}

pub fn keypoint_names_308() -> Vec<&'static str> {
    keypoints308().into_iter().map(|(n, _)| n).collect()
}

/// For each keypoint, the index of its mirror partner (itself if none).
pub fn flip_indices_308() -> Vec<usize> {
    let table = keypoints308();
    let index: HashMap<&str, usize> = table
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    table
        .iter()
        .enumerate()
        .map(|(i, (_, swap))| index.get(swap).copied().unwrap_or(i))
        .collect()
}

fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// The 2-D RoPE tables of a patch grid, as the reference computes them in
/// bfloat16: coordinates `(i + 0.5) / n` per axis mapped to [−1, 1], angles
/// `2π · c / period` for the h axis then the w axis, tiled twice over the
/// head dimension; every intermediate rounded to bfloat16, with 2π a
/// float32 scalar. Rows are patches in row-major order.
pub struct RopeTables {
    pub sin: Array,
    pub cos: Array,
}

impl RopeTables {
    pub fn new(periods: &[f32], grid_h: i32, grid_w: i32) -> Self {
        let coords = |n: i32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    let c = round_bf16(round_bf16(i as f32 + 0.5) / n as f32);
                    round_bf16(round_bf16(2.0 * c) - 1.0)
                })
                .collect()
        };
        let (ch, cw) = (coords(grid_h), coords(grid_w));
        let two_pi = 2.0 * std::f64::consts::PI;
        let quarter = periods.len();
        let dim = 4 * quarter;
        let mut sin = Vec::with_capacity(ch.len() * cw.len() * dim);
        let mut cos = Vec::with_capacity(sin.capacity());
        for &h in &ch {
            for &w in &cw {
                let angles: Vec<f32> = [h, w]
                    .iter()
                    .flat_map(|&c| {
                        let scaled = round_bf16(two_pi as f32 * c);
                        periods.iter().map(move |&p| round_bf16(scaled / p))
                    })
                    .collect();
                for _ in 0..2 {
                    sin.extend(angles.iter().map(|&a| round_bf16((a as f64).sin() as f32)));
                    cos.extend(angles.iter().map(|&a| round_bf16((a as f64).cos() as f32)));
                }
            }
        }
        let shape = [grid_h * grid_w, dim as i32];
        let table = |v: &[f32]| {
            Array::from_slice(v, &shape)
                .as_dtype(Dtype::Bfloat16)
                .expect("bf16 cast")
        };
        RopeTables {
            sin: table(&sin),
            cos: table(&cos),
        }
    }

    /// Rotates `x` (B, heads, N, Dh): all of it through bfloat16 (the
    /// reference casts the prefix tokens too), the trailing patch tokens by
    /// `x·cos + rotate_half(x)·sin`, back to `x`'s dtype.
    fn apply(&self, x: &Array) -> Result<Array> {
        let dtype = x.dtype();
        let xb = x.as_dtype(Dtype::Bfloat16)?;
        let n = xb.dim(2);
        let prefix = n - self.sin.dim(0);
        let half = xb.dim(3) / 2;
        let patches = xb.index((.., .., prefix.., ..));
        let rotated = ops::concatenate(
            &[
                patches.index((.., .., .., half..)).negative()?,
                patches.index((.., .., .., ..half)),
            ],
            -1,
        )?;
        let patches = patches
            .multiply(&self.cos)?
            .add(rotated.multiply(&self.sin)?)?;
        ops::concatenate(&[xb.index((.., .., ..prefix, ..)), patches], 2)?.as_dtype(dtype)
    }
}

/// Attention with q/k RMSNorm, RoPE, optional grouped key/value heads
/// (query head `i` reads key/value head `i / (heads / kv_heads)`, the
/// reference's `repeat_interleave`) and LayerScale on the output.
struct Attention {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    proj: Linear,
    gamma: Array,
    heads: i32,
    kv_heads: i32,
}

impl Attention {
    fn new(w: &Weights, cfg: &BackboneConfig, kv_heads: i32) -> Self {
        let (e, dh) = (cfg.embed_dims, cfg.head_dim());
        Attention {
            wq: Linear::new(&w.pp("wq"), e, e),
            wk: Linear::new(&w.pp("wk"), e, kv_heads * dh),
            wv: Linear::new(&w.pp("wv"), e, kv_heads * dh),
            q_norm: RmsNorm::new(&w.pp("q_norm"), dh, cfg.rms_norm_eps),
            k_norm: RmsNorm::new(&w.pp("k_norm"), dh, cfg.rms_norm_eps),
            proj: Linear::new(&w.pp("proj"), e, e),
            gamma: w.get("gamma.weight", &[e]),
            heads: cfg.num_heads,
            kv_heads,
        }
    }

    fn forward(&self, x: &Array, rope: &RopeTables) -> Result<Array> {
        let (b, n, e) = (x.dim(0), x.dim(1), x.dim(2));
        let dh = e / self.heads;
        let split = |y: Array, h: i32| -> Result<Array> {
            y.reshape(&[b, n, h, dh])?.transpose_axes(&[0, 2, 1, 3])
        };
        let q = self
            .q_norm
            .forward(&split(self.wq.forward(x)?, self.heads)?)?;
        let k = self
            .k_norm
            .forward(&split(self.wk.forward(x)?, self.kv_heads)?)?;
        let v = split(self.wv.forward(x)?, self.kv_heads)?;
        // RoPE acts on each head alone, so rotating k before the key/value
        // heads are shared equals the reference's rotate-after-repeat.
        let (q, k) = (rope.apply(&q)?, rope.apply(&k)?);
        let o = fast::scaled_dot_product_attention(q, k, v, (dh as f32).powf(-0.5), None, None)?;
        let o = o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, n, e])?;
        self.proj.forward(&o)?.multiply(&self.gamma)
    }
}

/// `w3(silu(gate) · value)`, gate and value the two halves of `w12(x)`.
struct SwiGlu {
    w12: Linear,
    w3: Linear,
    hidden: i32,
}

impl SwiGlu {
    fn forward(&self, x: &Array) -> Result<Array> {
        let h = self.w12.forward(x)?;
        let gate = h.index((.., .., ..self.hidden));
        let value = h.index((.., .., self.hidden..));
        self.w3.forward(&silu(&gate)?.multiply(&value)?)
    }
}

/// Pre-norm block: `x + attn(ln1(x))`, then `x + ffn(ln2(x))`.
pub struct Block {
    ln1: RmsNorm,
    attn: Attention,
    ln2: RmsNorm,
    ffn: SwiGlu,
}

impl Block {
    fn new(w: &Weights, cfg: &BackboneConfig, layer: i32) -> Self {
        let (e, f) = (cfg.embed_dims, cfg.feedforward_channels);
        Block {
            ln1: RmsNorm::new(&w.pp("ln1"), e, cfg.rms_norm_eps),
            attn: Attention::new(&w.pp("attn"), cfg, cfg.kv_heads(layer)),
            ln2: RmsNorm::new(&w.pp("ln2"), e, cfg.rms_norm_eps),
            ffn: SwiGlu {
                w12: Linear::new(&w.pp("ffn.w12"), e, 2 * f),
                w3: Linear::new(&w.pp("ffn.w3"), f, e),
                hidden: f,
            },
        }
    }

    pub fn forward(&self, x: &Array, rope: &RopeTables) -> Result<Array> {
        let x = x.add(self.attn.forward(&self.ln1.forward(x)?, rope)?)?;
        x.add(self.ffn.forward(&self.ln2.forward(&x)?)?)
    }
}

/// Where a forward pass reports its named intermediates (the parity runner
/// keeps them; inference passes [`no_taps`]).
pub type Tap<'a> = &'a mut dyn FnMut(&str, &Array);

pub fn no_taps(_: &str, _: &Array) {}

/// The 16×16, stride-16 patch convolution as what it is: each patch
/// flattened (row, column, channel) times a matrix.
struct PatchEmbed {
    weight: Array,
    bias: Array,
    patch: i32,
}

impl PatchEmbed {
    fn new(w: &Weights, embed: i32, patch: i32) -> Result<Self> {
        let weight = w
            .get("weight", &[embed, 3, patch, patch])
            .transpose_axes(&[0, 2, 3, 1])?
            .reshape(&[embed, patch * patch * 3])?;
        Ok(PatchEmbed {
            weight,
            bias: w.get("bias", &[embed]),
            patch,
        })
    }

    /// (B, H, W, 3) → (B, H/p, W/p, E).
    fn forward(&self, x: &Array) -> Result<Array> {
        let p = self.patch;
        let (b, gh, gw) = (x.dim(0), x.dim(1) / p, x.dim(2) / p);
        let patches = x
            .index((.., ..gh * p, ..gw * p, ..))
            .reshape(&[b, gh, p, gw, p, 3])?
            .transpose_axes(&[0, 1, 3, 2, 4, 5])?
            .reshape(&[b, gh, gw, p * p * 3])?;
        ops::addmm(&self.bias, &patches, self.weight.t(), None, None)
    }
}

pub struct Backbone {
    cfg: BackboneConfig,
    patch_embed: PatchEmbed,
    cls_token: Array,
    storage_tokens: Array,
    periods: Vec<f32>,
    rope: RopeTables,
    blocks: Vec<Block>,
    ln1: RmsNorm,
}

impl Backbone {
    fn new(w: &Weights, cfg: &BackboneConfig, grid_hw: [i32; 2]) -> Result<Self> {
        let (e, p) = (cfg.embed_dims, cfg.patch_size);
        let periods = w.get("rope_embed.periods", &[cfg.head_dim() / 4]);
        // The periods are a bfloat16 buffer in every checkpoint; a float32
        // conversion carries the same values, rounded back here regardless.
        let periods: Vec<f32> = host_f32(&periods)?.into_iter().map(round_bf16).collect();
        Ok(Backbone {
            patch_embed: PatchEmbed::new(&w.pp("patch_embed.projection"), e, p)?,
            cls_token: w.get("cls_token", &[1, 1, e]),
            storage_tokens: w.get("storage_tokens", &[1, cfg.n_storage_tokens, e]),
            rope: RopeTables::new(&periods, grid_hw[0], grid_hw[1]),
            periods,
            blocks: (0..cfg.num_layers)
                .map(|i| Block::new(&w.pp("blocks").pp(i), cfg, i))
                .collect(),
            ln1: RmsNorm::new(&w.pp("ln1"), e, cfg.rms_norm_eps),
            cfg: cfg.clone(),
        })
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub fn rope(&self) -> &RopeTables {
        &self.rope
    }

    pub fn periods(&self) -> &[f32] {
        &self.periods
    }

    /// `x`: normalised RGB (B, H, W, 3). Returns the featmap (B, H/16, W/16, E)
    /// after the final norm, prefix tokens dropped.
    pub fn forward(&self, x: &Array, tap: Tap) -> Result<Array> {
        let patches = self.patch_embed.forward(x)?;
        tap("patch_embed", &patches);
        let (b, gh, gw, e) = (
            patches.dim(0),
            patches.dim(1),
            patches.dim(2),
            patches.dim(3),
        );
        let other_grid;
        let rope = if gh * gw == self.rope.sin.dim(0) {
            &self.rope
        } else {
            other_grid = RopeTables::new(&self.periods, gh, gw);
            &other_grid
        };
        let prefix = self.cfg.prefix_tokens();
        let dtype = patches.dtype();
        let mut x = ops::concatenate(
            &[
                ops::broadcast_to(&self.cls_token.as_dtype(dtype)?, &[b, 1, e])?,
                ops::broadcast_to(&self.storage_tokens.as_dtype(dtype)?, &[b, prefix - 1, e])?,
                patches.reshape(&[b, gh * gw, e])?,
            ],
            1,
        )?;
        tap("tokens_in", &x);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, rope)?;
            tap(&format!("block_{i:02}"), &x);
        }
        let x = self.ln1.forward(&x)?;
        x.index((.., prefix.., ..)).reshape(&[b, gh, gw, e])
    }
}

/// Transposed convolutions, then 1×1 (or k×k) convolutions, each followed
/// by InstanceNorm and SiLU; a final 1×1 convolution to the keypoint maps.
pub struct PoseHead {
    deconvs: Vec<ConvTranspose2d>,
    convs: Vec<Conv2d>,
    conv_pose: Conv2d,
}

const INSTANCE_NORM_EPS: f32 = 1e-5;

impl PoseHead {
    fn new(w: &Weights, cfg: &PoseHeadConfig) -> Result<Self> {
        // nn.Sequential indices: every third entry holds the weights (the
        // norm and activation between them hold none).
        let mut c = cfg.in_channels;
        let mut deconvs = Vec::new();
        for (i, (&c_out, &k)) in cfg
            .deconv_out_channels
            .iter()
            .zip(&cfg.deconv_kernel_sizes)
            .enumerate()
        {
            let wd = w.pp("deconv_layers").pp(3 * i);
            deconvs.push(ConvTranspose2d::upsample_2x_from_torch(&wd, c, c_out, k)?);
            c = c_out;
        }
        let mut convs = Vec::new();
        for (i, (&c_out, &k)) in cfg
            .conv_out_channels
            .iter()
            .zip(&cfg.conv_kernel_sizes)
            .enumerate()
        {
            let wc = w.pp("conv_layers").pp(3 * i);
            convs.push(Conv2d::from_torch(&wc, c, c_out, k, 1, 1, true)?);
            c = c_out;
        }
        Ok(PoseHead {
            deconvs,
            convs,
            conv_pose: Conv2d::from_torch(&w.pp("conv_pose"), c, cfg.num_keypoints, 1, 1, 1, true)?,
        })
    }

    /// Featmap (B, h, w, E) → heatmaps (B, 4h, 4w, keypoints).
    pub fn forward(&self, featmap: &Array, tap: Tap) -> Result<Array> {
        let mut x = featmap.clone();
        for (i, d) in self.deconvs.iter().enumerate() {
            x = silu(&instance_norm(&d.forward(&x)?, INSTANCE_NORM_EPS)?)?;
            tap(&format!("head_deconv{i}"), &x);
        }
        for (i, c) in self.convs.iter().enumerate() {
            x = silu(&instance_norm(&c.forward(&x)?, INSTANCE_NORM_EPS)?)?;
            tap(&format!("head_conv{i}"), &x);
        }
        self.conv_pose.forward(&x)
    }
}

pub struct Sapiens2Pose {
    cfg: Sapiens2Config,
    mean: Array,
    std: Array,
    pub backbone: Backbone,
    pub head: PoseHead,
}

impl Sapiens2Pose {
    pub fn new(cfg: Sapiens2Config, w: &Weights) -> Result<Self> {
        let p = cfg.backbone.patch_size;
        let grid = [cfg.input_size_hw[0] / p, cfg.input_size_hw[1] / p];
        let pp = &cfg.preprocess;
        Ok(Sapiens2Pose {
            mean: Array::from_slice(&pp.mean_rgb, &[1, 1, 1, 3]),
            std: Array::from_slice(&pp.std_rgb, &[1, 1, 1, 3]),
            backbone: Backbone::new(&w.pp("backbone"), &cfg.backbone, grid)?,
            head: PoseHead::new(&w.pp("decode_head"), &cfg.head)?,
            cfg,
        })
    }

    /// Reads a pose checkpoint; `dtype` casts its float tensors (bf16 runs
    /// a float32 file in bfloat16; RoPE is bf16 either way).
    pub fn load(
        cfg: Sapiens2Config,
        path: &Path,
        dtype: Option<Dtype>,
    ) -> std::result::Result<Self, LoadError> {
        let mut w = Weights::from_file(path)?;
        if let Some(d) = dtype {
            w = w.with_float_dtype(d);
        }
        let net = Self::new(cfg, &w)?;
        w.finish()?;
        Ok(net)
    }

    pub fn config(&self) -> &Sapiens2Config {
        &self.cfg
    }

    /// `rgb`: crops (B, H, W, 3) on the 0–255 scale, any dtype. Returns the
    /// heatmaps (B, H/4, W/4, keypoints) in float32.
    pub fn forward(&self, rgb: &Array, tap: Tap) -> Result<Array> {
        let dtype = self.backbone.cls_token.dtype();
        let x = rgb
            .as_dtype(Dtype::Float32)?
            .subtract(&self.mean)?
            .divide(&self.std)?
            .as_dtype(dtype)?;
        let featmap = self.backbone.forward(&x, &mut *tap)?;
        tap("featmap", &featmap);
        self.head.forward(&featmap, tap)?.as_dtype(Dtype::Float32)
    }
}

/// Reverses the channel axis of an (…, 3) image.
pub fn bgr_to_rgb(bgr: &Array) -> Result<Array> {
    bgr.take_axis(Array::from_slice(&[2i32, 1, 0], &[3]), -1)
}
