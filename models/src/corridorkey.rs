//! CorridorKey (GreenFormer), the green-screen keyer of the matte route:
//! a Hiera encoder (timm `hiera_base_plus_224`, 4-channel patch embed:
//! normalised RGB + a coarse alpha hint), two SegFormer-style heads (alpha,
//! foreground) at a quarter of the resolution, and a dilated residual CNN
//! that refines both at full resolution in logit space.
//!
//! Weights in the corridorkey-mlx layout (convolution kernels OHWI,
//! `refiner.stem_conv`/`stem_gn`, Linear `(out, in)`); `pos_embed` is stored
//! for the training size and resized bicubically to the run size at load,
//! as upstream does. Activations NHWC; the encoder's tokens are `(B, N, C)`
//! in Hiera's unrolled order (see [`unroll`]).

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{fast, ops, Array, Dtype};
use serde::{Deserialize, Serialize};

use crate::checked_weights::Weights;
use crate::nn::{gelu, host_f32, relu, select, BatchNorm, Conv2d, LayerNorm, Linear, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorridorKeyConfig {
    pub embed_dim: i32,
    pub num_heads: i32,
    /// Blocks per stage.
    pub stages: Vec<i32>,
    /// The square input size `pos_embed` is stored for.
    pub stored_img_size: i32,
    /// The square input size the model runs at (a multiple of 32).
    pub img_size: i32,
    pub decoder_embedding_dim: i32,
    pub refiner_hidden: i32,
    pub layer_norm_eps: f32,
    pub batch_norm_eps: f32,
    pub group_norm_groups: i32,
}

/// Hiera's fixed choices for the base-plus family.
const PATCH_KERNEL: i32 = 7;
const PATCH_STRIDE: i32 = 4;
const MASK_UNIT: i32 = 8;
const MASK_UNIT_ATTN: [bool; 4] = [true, true, false, false];
const Q_POOL: usize = 3;
const Q_STRIDE: i32 = 4;
const MLP_RATIO: i32 = 4;
const GROUP_NORM_EPS: f32 = 1e-5;
/// The refiner's delta logits are scaled by this.
const REFINER_SCALE: f32 = 10.0;
const REFINER_DILATIONS: [i32; 4] = [1, 2, 4, 8];
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl CorridorKeyConfig {
    /// The published model (trained at 2048²), run at `img_size`.
    pub fn base_plus(img_size: i32) -> Self {
        CorridorKeyConfig {
            embed_dim: 112,
            num_heads: 2,
            stages: vec![2, 3, 16, 3],
            stored_img_size: 2048,
            img_size,
            decoder_embedding_dim: 256,
            refiner_hidden: 64,
            layer_norm_eps: 1e-6,
            batch_norm_eps: 1e-5,
            group_norm_groups: 8,
        }
    }

    /// Index of the last block of each stage.
    fn stage_ends(&self) -> Vec<usize> {
        self.stages
            .iter()
            .scan(0usize, |n, &s| {
                *n += s as usize;
                Some(*n - 1)
            })
            .collect()
    }

    /// Channels of the four stage outputs.
    pub fn feature_channels(&self) -> Vec<i32> {
        (0..self.stages.len())
            .map(|i| self.embed_dim << i)
            .collect()
    }
}

/// One block's shape, as timm's Hiera lays the blocks out.
#[derive(Debug, Clone, Copy)]
struct BlockSpec {
    dim: i32,
    dim_out: i32,
    heads: i32,
    q_stride: i32,
    window: i32,
    mask_unit_attn: bool,
}

fn block_specs(cfg: &CorridorKeyConfig) -> Vec<BlockSpec> {
    let ends = cfg.stage_ends();
    let q_pool_blocks: Vec<usize> = ends.iter().take(Q_POOL).map(|e| e + 1).collect();
    let depth = ends.last().map_or(0, |e| e + 1);
    let (mut dim, mut heads, mut stage) = (cfg.embed_dim, cfg.num_heads, 0usize);
    let mut window = MASK_UNIT * MASK_UNIT;
    let mut specs = Vec::with_capacity(depth);
    for i in 0..depth {
        let mut dim_out = dim;
        // The attention kind is the stage's *before* a transition block
        // moves to the next stage (so the first block of a stage keeps the
        // previous stage's kind).
        let mask_unit_attn = MASK_UNIT_ATTN[stage];
        if i > 0 && ends.contains(&(i - 1)) {
            dim_out = dim * 2;
            heads *= 2;
            stage += 1;
            if q_pool_blocks.contains(&i) {
                window /= Q_STRIDE;
            }
        }
        specs.push(BlockSpec {
            dim,
            dim_out,
            heads,
            q_stride: if q_pool_blocks.contains(&i) {
                Q_STRIDE
            } else {
                1
            },
            window,
            mask_unit_attn,
        });
        dim = dim_out;
    }
    specs
}

/// Max over `stride` groups of tokens: `(B, stride·M, C) → (B, M, C)`, the
/// groups being the slow axis (Hiera's q-pooling in unrolled order).
fn pool_tokens(x: &Array, stride: i32) -> Result<Array> {
    let (b, n, c) = (x.dim(0), x.dim(1), x.dim(2));
    x.reshape(&[b, stride, n / stride, c])?.max_axis(1, false)
}

/// Attention within mask units (or over everything, one window): tokens
/// are laid out window-fastest, so window `w` holds tokens `t·windows + w`.
struct MaskUnitAttention {
    qkv: Linear,
    proj: Linear,
    spec: BlockSpec,
}

impl MaskUnitAttention {
    fn forward(&self, x: &Array) -> Result<Array> {
        let s = self.spec;
        let (b, n) = (x.dim(0), x.dim(1));
        let hd = s.dim_out / s.heads;
        let windows = if s.mask_unit_attn {
            n / (s.q_stride * s.window)
        } else {
            1
        };
        // (B, T, windows, 3, heads, hd) → (3, B, heads, windows, T, hd)
        let qkv = self
            .qkv
            .forward(x)?
            .reshape(&[b, -1, windows, 3, s.heads, hd])?
            .transpose_axes(&[3, 0, 4, 2, 1, 5])?;
        let (mut q, k, v) = (
            select(&qkv, 0, 0)?,
            select(&qkv, 0, 1)?,
            select(&qkv, 0, 2)?,
        );
        if s.q_stride > 1 {
            let t = q.dim(3);
            q = q
                .reshape(&[b, s.heads, windows, s.q_stride, t / s.q_stride, hd])?
                .max_axis(3, false)?;
        }
        let t = q.dim(3);
        let scale = (hd as f32).powf(-0.5);
        // SDPA over the last two axes, windows folded into the batch.
        let fold = |a: &Array| a.reshape(&[b * s.heads * windows, 1, a.dim(3), hd]);
        let o = attention_in_chunks(&fold(&q)?, &fold(&k)?, &fold(&v)?, scale, MAX_SCORES)?
            .reshape(&[b, s.heads, windows, t, hd])?;
        // PyTorch's transpose(1, 3): (B, T, windows, heads, hd).
        let o = o
            .transpose_axes(&[0, 3, 2, 1, 4])?
            .reshape(&[b, -1, s.dim_out])?;
        self.proj.forward(&o)
    }
}

/// Attention scores one attention call may hold (256 MiB in float32).
const MAX_SCORES: i64 = 1 << 26;

/// Scaled dot-product attention over (B, 1, T, D) arrays, the queries in
/// chunks so that no call holds more than `max_scores` scores. MLX's CUDA
/// backend has no fused float32 attention: at 2048² the global stages
/// (16384 tokens, 8 heads) would hold 8.6 GB of scores per call, several
/// times over. Each query's softmax is over all keys, so chunking the
/// queries changes nothing.
fn attention_in_chunks(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    max_scores: i64,
) -> Result<Array> {
    let (batch, t, tk) = (q.dim(0) as i64, q.dim(2), k.dim(2) as i64);
    let chunk = (max_scores / (batch * tk)).max(1) as i32;
    if chunk >= t {
        return fast::scaled_dot_product_attention(q, k, v, scale, None, None);
    }
    let parts = (0..t)
        .step_by(chunk as usize)
        .map(|start| {
            let end = (start + chunk).min(t);
            let o = fast::scaled_dot_product_attention(
                q.index((.., .., start..end, ..)),
                k,
                v,
                scale,
                None,
                None,
            )?;
            // Bound the graph: one chunk's scores alive at a time.
            o.eval()?;
            Ok(o)
        })
        .collect::<Result<Vec<_>>>()?;
    ops::concatenate(&parts, 2)
}

struct HieraBlock {
    norm1: LayerNorm,
    proj: Option<Linear>,
    attn: MaskUnitAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    spec: BlockSpec,
}

impl HieraBlock {
    fn new(w: &Weights, spec: BlockSpec, eps: f32) -> Self {
        let (d, o) = (spec.dim, spec.dim_out);
        HieraBlock {
            norm1: LayerNorm::new(&w.pp("norm1"), d, eps),
            proj: (d != o).then(|| Linear::new(&w.pp("proj"), d, o)),
            attn: MaskUnitAttention {
                qkv: Linear::new(&w.pp("attn.qkv"), d, 3 * o),
                proj: Linear::new(&w.pp("attn.proj"), o, o),
                spec,
            },
            norm2: LayerNorm::new(&w.pp("norm2"), o, eps),
            fc1: Linear::new(&w.pp("mlp.fc1"), o, MLP_RATIO * o),
            fc2: Linear::new(&w.pp("mlp.fc2"), MLP_RATIO * o, o),
            spec,
        }
    }

    /// The attention reads the normalised input; at a transition the
    /// residual is the pooled projection of it.
    fn forward(&self, x: &Array) -> Result<Array> {
        let x_norm = self.norm1.forward(x)?;
        let residual = match &self.proj {
            Some(p) => pool_tokens(&p.forward(&x_norm)?, self.spec.q_stride)?,
            None => x.clone(),
        };
        let x = residual.add(self.attn.forward(&x_norm)?)?;
        let h = gelu(&self.fc1.forward(&self.norm2.forward(&x)?)?)?;
        x.add(self.fc2.forward(&h)?)
    }
}

/// Hiera's unroll: three times, the 2×2 sub-grid offsets move to the batch
/// axis, so that in the final `(B, N, C)` order each 8×8 mask unit's tokens
/// are `N / 64` apart and q-pooling is a max over the slowest axis.
pub fn unroll(x: &Array, grid: i32, steps: usize) -> Result<Array> {
    let (b0, c) = (x.dim(0), x.dim(2));
    let mut b = b0;
    let mut size = grid;
    let mut y = x.reshape(&[b, size, size, c])?;
    for _ in 0..steps {
        size /= 2;
        // (B, H/2, 2, W/2, 2, C) → (B, 2, 2, H/2, W/2, C) → (4B, H/2, W/2, C)
        y = y
            .reshape(&[b, size, 2, size, 2, c])?
            .transpose_axes(&[0, 2, 4, 1, 3, 5])?
            .reshape(&[b * 4, size, size, c])?;
        b *= 4;
    }
    y.reshape(&[b0, grid * grid, c])
}

/// The inverse for the tokens after `pooled` q-poolings: back to a
/// row-major `(B, h, w, C)` grid.
fn reroll(x: &Array, grid: i32, steps: usize, pooled: usize) -> Result<Array> {
    let (b, n, c) = (x.dim(0), x.dim(1), x.dim(2));
    // Each pooling consumed the finest remaining unroll step.
    let remaining = steps.saturating_sub(pooled);
    let size = grid >> pooled.min(steps);
    let mut mu = 1;
    let mut y = x.clone();
    let mut n_cur = n;
    for _ in 0..remaining {
        // (B, 2, 2, N/4, mu, mu, C) → (B, N/4, 2, mu, 2, mu, C)
        y = y
            .reshape(&[b, 2, 2, n_cur / 4, mu, mu, c])?
            .transpose_axes(&[0, 3, 1, 4, 2, 5, 6])?;
        mu *= 2;
        y = y.reshape(&[b, -1, mu, mu, c])?;
        n_cur = y.dim(1);
    }
    // (B, #MUy·#MUx, mu, mu, C) → (B, #MUy, mu, #MUx, mu, C) → (B, h, w, C)
    let units = size / mu;
    y.reshape(&[b, units, units, mu, mu, c])?
        .transpose_axes(&[0, 1, 3, 2, 4, 5])?
        .reshape(&[b, size, size, c])
}

/// Bicubic resampling taps per output index (PyTorch `align_corners=False`,
/// a = −0.75, source index clamped at the edges).
fn cubic_axis(n_in: usize, n_out: usize) -> Vec<[(usize, f64); 4]> {
    const A: f64 = -0.75;
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|i| {
            let u = (i as f64 + 0.5) * scale - 0.5;
            let f = u.floor();
            let t = u - f;
            let w = [
                ((A * (t + 1.0) - 5.0 * A) * (t + 1.0) + 8.0 * A) * (t + 1.0) - 4.0 * A,
                ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0,
                ((A + 2.0) * (1.0 - t) - (A + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0,
                ((A * (2.0 - t) - 5.0 * A) * (2.0 - t) + 8.0 * A) * (2.0 - t) - 4.0 * A,
            ];
            std::array::from_fn(|k| {
                let idx = (f as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
                (idx, w[k])
            })
        })
        .collect()
}

/// The stored positional embedding `(1, G0², C)` resized to `(1, G², C)`.
fn resize_pos_embed(stored: &Array, from: i32, to: i32) -> Result<Array> {
    if from == to {
        return Ok(stored.clone());
    }
    let c = stored.dim(2) as usize;
    let v = host_f32(stored)?;
    let (n_in, n_out) = (from as usize, to as usize);
    let taps = cubic_axis(n_in, n_out);
    // Rows first, then columns.
    let mut rows = vec![0f64; n_out * n_in * c];
    for (y, ty) in taps.iter().enumerate() {
        for &(sy, wy) in ty {
            for x in 0..n_in {
                for ch in 0..c {
                    rows[(y * n_in + x) * c + ch] += wy * v[(sy * n_in + x) * c + ch] as f64;
                }
            }
        }
    }
    let mut out = vec![0f32; n_out * n_out * c];
    for y in 0..n_out {
        for (x, tx) in taps.iter().enumerate() {
            for &(sx, wx) in tx {
                for ch in 0..c {
                    out[(y * n_out + x) * c + ch] += (wx * rows[(y * n_in + sx) * c + ch]) as f32;
                }
            }
        }
    }
    Ok(Array::from_slice(
        &out,
        &[1, (n_out * n_out) as i32, c as i32],
    ))
}

/// Bilinear resize of an NHWC map by an integer factor, PyTorch
/// `align_corners=False` (source clamped at the edges), as two gathers.
pub fn upsample_bilinear(x: &Array, factor: i32) -> Result<Array> {
    if factor == 1 {
        return Ok(x.clone());
    }
    let axis = |n: i32| -> (Array, Array, Array) {
        let m = n * factor;
        let (mut lo, mut hi, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..m {
            let u = ((i as f32 + 0.5) / factor as f32 - 0.5).clamp(0.0, (n - 1) as f32);
            let l = u.floor() as i32;
            lo.push(l);
            hi.push((l + 1).min(n - 1));
            w.push(u - l as f32);
        }
        (
            Array::from_slice(&lo, &[m]),
            Array::from_slice(&hi, &[m]),
            Array::from_slice(&w, &[m]),
        )
    };
    let (h, w) = (x.dim(1), x.dim(2));
    let (ylo, yhi, yw) = axis(h);
    let yw = yw.reshape(&[1, -1, 1, 1])?;
    let top = x.take_axis(&ylo, 1)?;
    let bottom = x.take_axis(&yhi, 1)?;
    let rows = top.add(bottom.subtract(&top)?.multiply(&yw)?)?;
    let (xlo, xhi, xw) = axis(w);
    let xw = xw.reshape(&[1, 1, -1, 1])?;
    let left = rows.take_axis(&xlo, 2)?;
    let right = rows.take_axis(&xhi, 2)?;
    left.add(right.subtract(&left)?.multiply(&xw)?)
}

/// Per-level Linear to a shared width, upsampled to the finest level,
/// concatenated deepest first, fused by a 1×1 conv with eval BatchNorm and
/// ReLU, classified by a 1×1 conv.
struct DecoderHead {
    linear_c: Vec<Linear>,
    fuse: Conv2d,
    bn: BatchNorm,
    classifier: Conv2d,
}

impl DecoderHead {
    fn new(w: &Weights, cfg: &CorridorKeyConfig, out: i32, dtype: Dtype) -> Result<Self> {
        let w = &w.cast_to(dtype);
        let e = cfg.decoder_embedding_dim;
        let channels = cfg.feature_channels();
        Ok(DecoderHead {
            linear_c: channels
                .iter()
                .enumerate()
                .map(|(i, &c)| Linear::new(&w.pp(format!("linear_c{}.proj", i + 1)), c, e))
                .collect(),
            fuse: Conv2d::new(
                &w.pp("linear_fuse"),
                e * channels.len() as i32,
                e,
                1,
                1,
                0,
                false,
            ),
            bn: BatchNorm::new(&w.pp("bn"), e, cfg.batch_norm_eps)?,
            classifier: Conv2d::new(&w.pp("classifier"), e, out, 1, 1, 0, true),
        })
    }

    fn forward(&self, features: &[Array]) -> Result<Array> {
        let finest = features[0].dim(1);
        let mut parts = Vec::with_capacity(features.len());
        for (f, lin) in features.iter().zip(&self.linear_c).rev() {
            let p = lin.forward(f)?;
            parts.push(upsample_bilinear(&p, finest / f.dim(1))?);
        }
        let fused = relu(
            &self
                .bn
                .forward(&self.fuse.forward(&ops::concatenate(&parts, -1)?)?)?,
        )?;
        self.classifier.forward(&fused)
    }
}

/// GroupNorm with PyTorch's grouping: consecutive channels form a group;
/// statistics over H, W and the group's channels, per sample.
struct GroupNorm {
    weight: Array,
    bias: Array,
    groups: i32,
}

impl GroupNorm {
    fn new(w: &Weights, channels: i32, groups: i32) -> Self {
        GroupNorm {
            weight: w.get("weight", &[channels]),
            bias: w.get("bias", &[channels]),
            groups,
        }
    }

    /// Normalises with `stats` (mean, variance per sample and group) when
    /// given, else with `x`'s own; returns the statistics used.
    fn forward(&self, x: &Array, stats: Option<&GroupStats>) -> Result<(Array, GroupStats)> {
        let (b, h, w, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let g = x.reshape(&[b, h, w, self.groups, c / self.groups])?;
        let (mean, var) = match stats {
            Some(s) => (s.mean.clone(), s.var.clone()),
            // Over the group's channels first (contiguous), then over the
            // pixels with the groups kept last. Reducing axes (1, 2, 4) in
            // one go is a pattern MLX's CUDA backend runs slowly: 1.8 s of
            // refiner at 512² on an H100 against 28 ms for these two
            // (docs/PERFORMANCE.md).
            None => {
                let per_group = |a: &Array| -> Result<Array> {
                    a.mean_axis(4, false)?
                        .reshape(&[b, h * w, self.groups])?
                        .mean_axis(1, false)?
                        .reshape(&[b, 1, 1, self.groups, 1])
                };
                let mean = per_group(&g)?;
                let var = per_group(&g.subtract(&mean)?.square()?)?;
                (mean, var)
            }
        };
        let y = g
            .subtract(&mean)?
            .multiply(ops::rsqrt(&var.add(Array::from_f32(GROUP_NORM_EPS))?)?)?
            .reshape(&[b, h, w, c])?;
        Ok((
            y.multiply(&self.weight)?.add(&self.bias)?,
            GroupStats { mean, var },
        ))
    }
}

/// One GroupNorm's statistics, (B, 1, 1, groups, 1) each.
#[derive(Clone)]
pub struct GroupStats {
    mean: Array,
    var: Array,
}

/// conv → GN → ReLU → conv → GN, plus the input, ReLU; both convolutions
/// 3×3 with the block's dilation.
struct RefinerBlock {
    conv1: Conv2d,
    gn1: GroupNorm,
    conv2: Conv2d,
    gn2: GroupNorm,
}

impl RefinerBlock {
    fn forward(&self, x: &Array, stats: &mut Stats) -> Result<Array> {
        let y = relu(&stats.norm(&self.gn1, &self.conv1.forward(x)?)?)?;
        let y = stats.norm(&self.gn2, &self.conv2.forward(&y)?)?;
        relu(&y.add(x)?)
    }
}

/// The refiner's GroupNorm statistics in layer order: recorded by a
/// whole-image pass, then replayed for every tile so tiles normalise
/// exactly as the whole image does.
enum Stats {
    Record(Vec<GroupStats>),
    Replay(std::vec::IntoIter<GroupStats>),
}

impl Stats {
    fn norm(&mut self, gn: &GroupNorm, x: &Array) -> Result<Array> {
        match self {
            Stats::Record(seen) => {
                let (y, s) = gn.forward(x, None)?;
                seen.push(s);
                Ok(y)
            }
            Stats::Replay(next) => {
                let s = next.next().ok_or_else(|| {
                    mlx_rs::error::Exception::custom("fewer GroupNorm statistics than layers")
                })?;
                Ok(gn.forward(x, Some(&s))?.0)
            }
        }
    }
}

struct Refiner {
    stem_conv: Conv2d,
    stem_gn: GroupNorm,
    blocks: Vec<RefinerBlock>,
    final_conv: Conv2d,
}

impl Refiner {
    fn new(w: &Weights, cfg: &CorridorKeyConfig, dtype: Dtype) -> Result<Self> {
        let w = &w.cast_to(dtype);
        let (h, g) = (cfg.refiner_hidden, cfg.group_norm_groups);
        let blocks = REFINER_DILATIONS
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let wb = w.pp(format!("res{}", i + 1));
                RefinerBlock {
                    conv1: Conv2d::new(&wb.pp("conv1"), h, h, 3, 1, d, true).dilated(d),
                    gn1: GroupNorm::new(&wb.pp("gn1"), h, g),
                    conv2: Conv2d::new(&wb.pp("conv2"), h, h, 3, 1, d, true).dilated(d),
                    gn2: GroupNorm::new(&wb.pp("gn2"), h, g),
                }
            })
            .collect();
        Ok(Refiner {
            stem_conv: Conv2d::new(&w.pp("stem_conv"), 7, h, 3, 1, 1, true),
            stem_gn: GroupNorm::new(&w.pp("stem_gn"), h, g),
            blocks,
            final_conv: Conv2d::new(&w.pp("final"), h, 4, 1, 1, 0, true),
        })
    }

    /// Delta logits (alpha, fg) at full resolution, already ×10.
    fn forward(&self, x: &Array) -> Result<Array> {
        self.run(x, &mut Stats::Record(Vec::new()))
    }

    fn run(&self, x: &Array, stats: &mut Stats) -> Result<Array> {
        let mut y = relu(&stats.norm(&self.stem_gn, &self.stem_conv.forward(x)?)?)?;
        // Evaluated block by block: as one lazy graph, the full-resolution
        // temporaries of every block are alive together (27 GB at 1024² in
        // float32; 2048² did not fit an 80 GB GPU).
        y.eval()?;
        for b in &self.blocks {
            y = b.forward(&y, stats)?;
            y.eval()?;
        }
        self.final_conv
            .forward(&y)?
            .multiply(Array::from_f32(REFINER_SCALE))
    }

    /// The same result computed tile by tile: `tile`² owned regions, each
    /// run with a `halo` of context (at least the receptive-field radius,
    /// 31 px) and the whole image's GroupNorm statistics, then stitched.
    /// The statistics come from one whole-image pass; the tiles bound the
    /// size of the second pass's intermediates.
    fn forward_tiled(&self, x: &Array, tile: i32, halo: i32) -> Result<Array> {
        let mut record = Stats::Record(Vec::new());
        let (h, w) = (x.dim(1), x.dim(2));
        if h <= tile && w <= tile {
            return self.run(x, &mut record);
        }
        // Statistics only: the whole-image pass's output is not needed.
        let _ = self.run(x, &mut record)?;
        let Stats::Record(stats) = record else {
            unreachable!("recorded above")
        };
        for s in &stats {
            s.mean.eval()?;
            s.var.eval()?;
        }
        let starts = |n: i32| (0..n).step_by(tile as usize).collect::<Vec<i32>>();
        let mut rows = Vec::new();
        for &y0 in &starts(h) {
            let y1 = (y0 + tile).min(h);
            let mut cols = Vec::new();
            for &x0 in &starts(w) {
                let x1 = (x0 + tile).min(w);
                let (cy0, cx0) = ((y0 - halo).max(0), (x0 - halo).max(0));
                let (cy1, cx1) = ((y1 + halo).min(h), (x1 + halo).min(w));
                let patch = x.index((.., cy0..cy1, cx0..cx1, ..));
                let out = self.run(&patch, &mut Stats::Replay(stats.clone().into_iter()))?;
                let owned = out.index((.., y0 - cy0..y1 - cy0, x0 - cx0..x1 - cx0, ..));
                owned.eval()?;
                cols.push(owned);
            }
            rows.push(ops::concatenate(&cols, 2)?);
        }
        ops::concatenate(&rows, 1)
    }
}

/// Context around each refiner tile: the refiner's receptive-field radius
/// is 1 + 2 + 4 + 8 + 16 = 31 px.
pub const REFINER_HALO: i32 = 32;

/// Everything one forward pass produces, by name.
pub struct MatteOutput {
    /// The four stage outputs, NHWC.
    pub features: Vec<Array>,
    /// Quarter-resolution logits.
    pub alpha_logits: Array,
    pub fg_logits: Array,
    pub delta_logits: Array,
    /// Final probabilities at the input resolution.
    pub alpha: Array,
    pub fg: Array,
}

pub struct CorridorKey {
    cfg: CorridorKeyConfig,
    /// Float type of the decoders and the refiner (the encoder is float32).
    head_dtype: Dtype,
    refiner_dtype: Dtype,
    patch_embed: Conv2d,
    pos_embed: Array,
    blocks: Vec<HieraBlock>,
    alpha_decoder: DecoderHead,
    fg_decoder: DecoderHead,
    refiner: Refiner,
}

impl CorridorKey {
    pub fn new(cfg: CorridorKeyConfig, w: &Weights) -> Result<Self> {
        Self::with_head_dtype(cfg, w, Dtype::Float32)
    }

    /// The decoders and the refiner with their weights cast to `dtype`
    /// (bf16 halves their memory traffic); the encoder stays float32.
    pub fn with_head_dtype(cfg: CorridorKeyConfig, w: &Weights, dtype: Dtype) -> Result<Self> {
        let enc = w.pp("encoder.model");
        let e = cfg.embed_dim;
        let stored_grid = cfg.stored_img_size / PATCH_STRIDE;
        let grid = cfg.img_size / PATCH_STRIDE;
        let stored = enc.get("pos_embed", &[1, stored_grid * stored_grid, e]);
        let pos_embed = resize_pos_embed(&stored, stored_grid, grid)?;
        let blocks = block_specs(&cfg)
            .into_iter()
            .enumerate()
            .map(|(i, s)| HieraBlock::new(&enc.pp("blocks").pp(i), s, cfg.layer_norm_eps))
            .collect();
        Ok(CorridorKey {
            patch_embed: Conv2d::new(
                &enc.pp("patch_embed.proj"),
                4,
                e,
                PATCH_KERNEL,
                PATCH_STRIDE,
                PATCH_KERNEL / 2,
                true,
            ),
            pos_embed,
            blocks,
            alpha_decoder: DecoderHead::new(&w.pp("alpha_decoder"), &cfg, 1, dtype)?,
            fg_decoder: DecoderHead::new(&w.pp("fg_decoder"), &cfg, 3, dtype)?,
            refiner: Refiner::new(&w.pp("refiner"), &cfg, dtype)?,
            head_dtype: dtype,
            refiner_dtype: dtype,
            cfg,
        })
    }

    pub fn config(&self) -> &CorridorKeyConfig {
        &self.cfg
    }

    /// `x`: (B, S, S, 4) = ImageNet-normalised RGB and the alpha hint in
    /// [0, 1], S the configured size.
    pub fn forward(&self, x: &Array) -> Result<MatteOutput> {
        self.forward_with(x, None)
    }

    /// With `refiner_tile`, the refiner runs in tiles of that size with the
    /// whole image's GroupNorm statistics (the same result, smaller
    /// intermediates).
    pub fn forward_with(&self, x: &Array, refiner_tile: Option<i32>) -> Result<MatteOutput> {
        self.forward_observed(x, refiner_tile, &mut |_, _| Ok(()))
    }

    /// [`Self::forward_with`], handing each part's result to `observe` as
    /// it is built (`patch_embed`, `stage0`..`stage3`, `alpha_decoder`,
    /// `fg_decoder`, `refiner`, `output`): a profiler evaluates them there.
    pub fn forward_observed(
        &self,
        x: &Array,
        refiner_tile: Option<i32>,
        observe: &mut dyn FnMut(&'static str, &Array) -> Result<()>,
    ) -> Result<MatteOutput> {
        const STAGES: [&str; 4] = ["stage0", "stage1", "stage2", "stage3"];
        let s = self.cfg.img_size;
        if x.dim(1) != s || x.dim(2) != s || x.dim(3) != 4 {
            return Err(mlx_rs::error::Exception::custom(format!(
                "CorridorKey runs on (B, {s}, {s}, 4) inputs, got {:?}",
                x.shape()
            )));
        }
        let b = x.dim(0);
        let grid = s / PATCH_STRIDE;
        let steps = self.cfg.stages.len() - 1;
        let tokens = self
            .patch_embed
            .forward(x)?
            .reshape(&[b, grid * grid, self.cfg.embed_dim])?
            .add(&self.pos_embed)?;
        observe("patch_embed", &tokens)?;
        let mut t = unroll(&tokens, grid, steps)?;
        let ends = self.cfg.stage_ends();
        let mut features = Vec::with_capacity(ends.len());
        for (i, block) in self.blocks.iter().enumerate() {
            t = block.forward(&t)?;
            if let Some(stage) = ends.iter().position(|&e| e == i) {
                // One stage's graph at a time (and each head, and each
                // refiner block): evaluated as one graph, the encoder, heads
                // and refiner ran an 80 GB GPU out of memory at 2048².
                t.eval()?;
                features.push(reroll(&t, grid, steps, stage.min(Q_POOL))?);
                observe(STAGES[stage.min(3)], &t)?;
            }
        }
        // The heads (and the refiner) may run in a lower precision; the
        // encoder stays in float32 (its first stage is precision-sensitive).
        let features: Vec<Array> = features
            .into_iter()
            .map(|f| f.as_dtype(self.head_dtype))
            .collect::<Result<_>>()?;
        let alpha_logits = self
            .alpha_decoder
            .forward(&features)?
            .as_dtype(Dtype::Float32)?;
        // Each head evaluated on its own, as the stages are (memory).
        alpha_logits.eval()?;
        observe("alpha_decoder", &alpha_logits)?;
        let fg_logits = self
            .fg_decoder
            .forward(&features)?
            .as_dtype(Dtype::Float32)?;
        fg_logits.eval()?;
        observe("fg_decoder", &fg_logits)?;
        let up = s / alpha_logits.dim(1);
        let alpha_up = upsample_bilinear(&alpha_logits, up)?;
        let fg_up = upsample_bilinear(&fg_logits, up)?;
        let rgb = x.index((.., .., .., ..3));
        let refiner_in =
            ops::concatenate(&[rgb, ops::sigmoid(&alpha_up)?, ops::sigmoid(&fg_up)?], -1)?;
        let refiner_in = refiner_in.as_dtype(self.refiner_dtype)?;
        let delta_logits = match refiner_tile {
            Some(t) => self.refiner.forward_tiled(&refiner_in, t, REFINER_HALO)?,
            None => self.refiner.forward(&refiner_in)?,
        }
        .as_dtype(Dtype::Float32)?;
        observe("refiner", &delta_logits)?;
        let alpha = ops::sigmoid(&alpha_up.add(delta_logits.index((.., .., .., ..1)))?)?;
        let fg = ops::sigmoid(&fg_up.add(delta_logits.index((.., .., .., 1..)))?)?;
        observe("output", &fg)?;
        Ok(MatteOutput {
            features,
            alpha_logits,
            fg_logits,
            delta_logits,
            alpha,
            fg,
        })
    }
}

impl CorridorKey {
    /// A frame of any size at its own resolution (`x`: (1, H, W, 4)
    /// network input): `img_size` tiles overlapping by `overlap` pixels,
    /// edge tiles zero-padded, blended with linear ramps across every
    /// overlap. Returns (alpha, fg) at (1, H, W, ·).
    pub fn forward_frame_tiled(
        &self,
        x: &Array,
        overlap: i32,
        refiner_tile: Option<i32>,
    ) -> Result<(Array, Array)> {
        let s = self.cfg.img_size;
        let (h, w) = (x.dim(1), x.dim(2));
        if x.dim(0) != 1 || x.dim(3) != 4 || !(0..s).contains(&overlap) {
            return Err(mlx_rs::error::Exception::custom(format!(
                "tiled CorridorKey runs one (1, H, W, 4) frame with 0 <= overlap < {s}, got {:?} and overlap {overlap}",
                x.shape()
            )));
        }
        let (ys, xs) = (tile_starts(h, s, overlap), tile_starts(w, s, overlap));
        let (wy, wx) = (
            tile_weights(&ys, h, s, overlap),
            tile_weights(&xs, w, s, overlap),
        );
        let mut acc: Option<Array> = None;
        for (&y0, ry) in ys.iter().zip(&wy) {
            for (&x0, rx) in xs.iter().zip(&wx) {
                let (th, tw) = ((h - y0).min(s), (w - x0).min(s));
                let tile = ops::pad(
                    x.index((.., y0..y0 + th, x0..x0 + tw, ..)),
                    &[(0, 0), (0, s - th), (0, s - tw), (0, 0)],
                    None,
                    None,
                )?;
                let out = self.forward_with(&tile, refiner_tile)?;
                let both = ops::concatenate(&[out.alpha, out.fg], -1)?.index((.., ..th, ..tw, ..));
                let weight = Array::from_slice(ry, &[1, th, 1, 1])
                    .multiply(Array::from_slice(rx, &[1, 1, tw, 1]))?;
                let placed = ops::pad(
                    &both.multiply(&weight)?,
                    &[(0, 0), (y0, h - y0 - th), (x0, w - x0 - tw), (0, 0)],
                    None,
                    None,
                )?;
                // Bound the graph: one tile's intermediates at a time.
                placed.eval()?;
                acc = Some(match acc {
                    Some(a) => a.add(&placed)?,
                    None => placed,
                });
            }
        }
        let total = |starts: &[i32], ramps: &[Vec<f32>], n: i32| {
            let mut t = vec![0f32; n as usize];
            for (&p, r) in starts.iter().zip(ramps) {
                for (i, v) in r.iter().enumerate() {
                    t[p as usize + i] += v;
                }
            }
            t
        };
        let norm = Array::from_slice(&total(&ys, &wy, h), &[1, h, 1, 1])
            .multiply(Array::from_slice(&total(&xs, &wx, w), &[1, 1, w, 1]))?;
        let blended = acc.expect("at least one tile").divide(&norm)?;
        Ok((
            blended.index((.., .., .., ..1)),
            blended.index((.., .., .., 1..)),
        ))
    }
}

/// Where tiles of `tile` start along `len`, `tile - overlap` apart, the
/// last one moved back to end at the border (one tile when `len <= tile`).
pub fn tile_starts(len: i32, tile: i32, overlap: i32) -> Vec<i32> {
    if len <= tile {
        return vec![0];
    }
    let stride = tile - overlap;
    let mut starts: Vec<i32> = (0..)
        .map(|i| i * stride)
        .take_while(|&p| p + tile < len)
        .collect();
    starts.push(len - tile);
    starts
}

/// Per tile, the blend weight of each of its pixels along one axis: 1, with
/// a linear ramp over the `overlap` pixels that face a neighbour.
fn tile_weights(starts: &[i32], len: i32, tile: i32, overlap: i32) -> Vec<Vec<f32>> {
    let n = starts.len();
    starts
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let extent = (len - p).min(tile) as usize;
            let ov = overlap as usize;
            (0..extent)
                .map(|k| {
                    let mut w = 1f32;
                    if i > 0 && k < ov {
                        w = w.min((k as f32 + 0.5) / ov as f32);
                    }
                    if i + 1 < n && k + ov >= extent {
                        w = w.min((extent - k) as f32 / ov as f32 - 0.5 / ov as f32);
                    }
                    w
                })
                .collect()
        })
        .collect()
}

/// The network input from RGB in [0, 1] (B, S, S, 3) and a hint (B, S, S, 1).
pub fn network_input(rgb: &Array, hint: &Array) -> Result<Array> {
    let mean = Array::from_slice(&IMAGENET_MEAN, &[1, 1, 1, 3]);
    let std = Array::from_slice(&IMAGENET_STD, &[1, 1, 1, 3]);
    let norm = rgb
        .as_dtype(Dtype::Float32)?
        .subtract(&mean)?
        .divide(&std)?;
    ops::concatenate(&[norm, hint.as_dtype(Dtype::Float32)?], -1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_attention_is_the_same_attention() {
        let n = |shape: &[i32], seed: u64| {
            mlx_rs::random::normal::<f32>(shape, None, None, &mlx_rs::random::key(seed).unwrap())
                .unwrap()
        };
        let (q, k, v) = (
            n(&[3, 1, 50, 8], 1),
            n(&[3, 1, 40, 8], 2),
            n(&[3, 1, 40, 8], 3),
        );
        let whole = attention_in_chunks(&q, &k, &v, 0.35, i64::MAX).unwrap();
        // 3 × 40 scores per query: chunks of 7 queries, the last one short.
        let chunked = attention_in_chunks(&q, &k, &v, 0.35, 3 * 40 * 7).unwrap();
        assert_eq!(chunked.shape(), [3, 1, 50, 8]);
        let d = whole
            .subtract(&chunked)
            .unwrap()
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .item_exact::<f32>();
        assert!(d < 1e-6, "{d}");
    }
}
