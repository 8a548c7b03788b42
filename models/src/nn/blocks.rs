//! Transformer blocks: timm's vision-transformer block and its attention.

use mlx_rs::{fast, Array};

use super::{gelu, select, LayerNorm, Linear, Result};
use crate::checked_weights::Weights;

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
