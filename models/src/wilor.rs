//! WiLoR: a ViT backbone with 18 learned tokens regresses MANO pose, shape
//! and a weak-perspective camera from a 256×256 hand crop; RefineNet then
//! samples a deconvolution pyramid at the projected mesh vertices and
//! corrects all three. Published layout: `wilor-mlx.safetensors` (float32)
//! or `wilor-mlx-int4.safetensors` (Linear layers 4-bit where `.scales` exists).
//!
//! Semantics follow the PyTorch reference (WiLoR-mini): eval-mode BatchNorm
//! and zero padding where RefineNet samples outside a feature map.

use mlx_rs::{ops, Array};
use serde::{Deserialize, Serialize};

use crate::checked_weights::Weights;
use crate::mano::Mano;
use crate::nn::{self, BatchNorm, Conv2d, ConvTranspose2d, LayerNorm, Linear, Result, VitBlock};
use crate::rotation;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WilorConfig {
    pub embed_dim: i32,
    pub depth: i32,
    pub num_heads: i32,
    pub mlp_ratio: i32,
    /// Backbone input (height, width) after cropping the 256×256 crop's sides.
    pub img_size: [i32; 2],
    pub patch_size: i32,
    pub patch_padding: i32,
    /// Focal length in pixels at `image_size`.
    pub focal_length: f32,
    /// Side of the square crop the model takes.
    pub image_size: i32,
    /// Two deconvolution branches (×2 and ×4) for upscale 3.
    #[serde(default = "default_upscale")]
    pub refine_upscale: i32,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_bn_eps")]
    pub batch_norm_eps: f32,
}

fn default_upscale() -> i32 {
    3
}
fn default_ln_eps() -> f32 {
    1e-6
}
fn default_bn_eps() -> f32 {
    1e-5
}

/// MANO's 16 joints (global orientation + 15), each a 6-D rotation.
pub const POSE_JOINTS: i32 = 16;
pub const NUM_BETAS: i32 = 10;
pub const CAM_DIM: i32 = 3;
/// pose tokens + shape token + camera token, ahead of the patch tokens.
const LEARNED_TOKENS: i32 = POSE_JOINTS + 2;

impl WilorConfig {
    /// The published model: ViT-H/16 (1280 wide, 32 blocks, 16 heads).
    pub fn vit_h() -> Self {
        WilorConfig {
            embed_dim: 1280,
            depth: 32,
            num_heads: 16,
            mlp_ratio: 4,
            img_size: [256, 192],
            patch_size: 16,
            patch_padding: 2,
            focal_length: 5000.0,
            image_size: 256,
            refine_upscale: 3,
            layer_norm_eps: 1e-6,
            batch_norm_eps: 1e-5,
        }
    }

    /// A 2-block, 64-wide model of the same structure, for tests and demos
    /// (the size of the parity fixtures).
    pub fn tiny() -> Self {
        WilorConfig {
            embed_dim: 64,
            depth: 2,
            num_heads: 4,
            ..Self::vit_h()
        }
    }

    /// Patch grid (rows, columns).
    pub fn grid(&self) -> (i32, i32) {
        let out = |n: i32| (n + 2 * self.patch_padding - self.patch_size) / self.patch_size + 1;
        (out(self.img_size[0]), out(self.img_size[1]))
    }
}

/// What the backbone regresses before refinement.
pub struct BackboneOutput {
    /// (B, 96): 16 joints × 6-D rotation.
    pub hand_pose_6d: Array,
    /// (B, 10)
    pub betas: Array,
    /// (B, 3): weak-perspective [s, tx, ty].
    pub cam: Array,
    /// (B, rows, cols, D): patch tokens after the last norm.
    pub features: Array,
}

struct Backbone {
    patch_embed: Conv2d,
    pos_embed: Array,
    /// The 18 learned tokens are input-independent: computed once at load.
    learned_tokens: Array,
    blocks: Vec<VitBlock>,
    last_norm: LayerNorm,
    decpose: Linear,
    decshape: Linear,
    deccam: Linear,
    init_hand_pose: Array,
    init_betas: Array,
    init_cam: Array,
    grid: (i32, i32),
}

impl Backbone {
    fn new(w: &Weights, cfg: &WilorConfig, means: Option<&crate::mano::ManoMeans>) -> Result<Self> {
        let d = cfg.embed_dim;
        let grid = cfg.grid();
        let pose_dim = POSE_JOINTS * 6;
        let mut init_hand_pose = w.get("init_hand_pose", &[1, pose_dim]);
        let mut init_betas = w.get("init_betas", &[1, NUM_BETAS]);
        let mut init_cam = w.get("init_cam", &[1, CAM_DIM]);
        if let Some(m) = means {
            // mano.npz means override the weight file's buffers, as upstream does.
            if m.hand_pose.len() == pose_dim as usize
                && m.betas.len() == NUM_BETAS as usize
                && m.cam.len() == CAM_DIM as usize
            {
                // In the weights' float type: a float32 token would pull
                // the whole backbone up to float32.
                let like = |v: &[f32], shape: &[i32], w: &Array| {
                    Array::from_slice(v, shape).as_dtype(w.dtype())
                };
                init_hand_pose = like(&m.hand_pose, &[1, pose_dim], &init_hand_pose)?;
                init_betas = like(&m.betas, &[1, NUM_BETAS], &init_betas)?;
                init_cam = like(&m.cam, &[1, CAM_DIM], &init_cam)?;
            }
        }
        let pose_emb = Linear::new(&w.pp("pose_emb"), 6, d);
        let shape_emb = Linear::new(&w.pp("shape_emb"), NUM_BETAS, d);
        let cam_emb = Linear::new(&w.pp("cam_emb"), CAM_DIM, d);
        let learned_tokens = ops::concatenate(
            &[
                pose_emb.forward(&init_hand_pose.reshape(&[1, POSE_JOINTS, 6])?)?,
                shape_emb.forward(&init_betas)?.reshape(&[1, 1, d])?,
                cam_emb.forward(&init_cam)?.reshape(&[1, 1, d])?,
            ],
            1,
        )?;
        let num_patches = grid.0 * grid.1;
        let pos_embed = w.get("pos_embed", &[1, num_patches + 1, d]);
        // The former class-token slot is added to every patch.
        let pos_embed = pos_embed
            .index((.., 1.., ..))
            .add(pos_embed.index((.., 0..1, ..)))?;
        Ok(Backbone {
            patch_embed: Conv2d::new(
                &w.pp("patch_embed.proj"),
                3,
                d,
                cfg.patch_size,
                cfg.patch_size,
                cfg.patch_padding,
                true,
            ),
            pos_embed,
            learned_tokens,
            blocks: (0..cfg.depth)
                .map(|i| {
                    VitBlock::new(
                        &w.pp("blocks").pp(i),
                        d,
                        cfg.num_heads,
                        cfg.mlp_ratio,
                        cfg.layer_norm_eps,
                    )
                })
                .collect(),
            last_norm: LayerNorm::new(&w.pp("last_norm"), d, cfg.layer_norm_eps),
            decpose: Linear::new(&w.pp("decpose"), d, 6),
            decshape: Linear::new(&w.pp("decshape"), d, NUM_BETAS),
            deccam: Linear::new(&w.pp("deccam"), d, CAM_DIM),
            init_hand_pose,
            init_betas,
            init_cam,
            grid,
        })
    }

    /// `x` (B, H, W, 3) normalised image → pose, shape, camera and features.
    fn forward(&self, x: &Array) -> Result<BackboneOutput> {
        let b = x.dim(0);
        let patches = self.patch_embed.forward(x)?;
        let d = patches.dim(3);
        let patches = patches.reshape(&[b, -1, d])?.add(&self.pos_embed)?;
        let learned = ops::broadcast_to(&self.learned_tokens, &[b, LEARNED_TOKENS, d])?;
        let mut x = ops::concatenate(&[learned, patches], 1)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.last_norm.forward(&x)?;

        let pose_tokens = x.index((.., 0..POSE_JOINTS, ..));
        let hand_pose_6d = self
            .decpose
            .forward(&pose_tokens)?
            .reshape(&[b, POSE_JOINTS * 6])?
            .add(&self.init_hand_pose)?;
        let betas = self
            .decshape
            .forward(&nn::select(&x, 1, POSE_JOINTS)?)?
            .add(&self.init_betas)?;
        let cam = self
            .deccam
            .forward(&nn::select(&x, 1, POSE_JOINTS + 1)?)?
            .add(&self.init_cam)?;
        let features =
            x.index((.., LEARNED_TOKENS.., ..))
                .reshape(&[b, self.grid.0, self.grid.1, d])?;
        Ok(BackboneOutput {
            hand_pose_6d,
            betas,
            cam,
            features,
        })
    }
}

/// Deconvolution pyramid over the backbone features: a 1×1 projection (low),
/// one ×2 branch (mid) and one ×4 branch (high).
struct DeconvPyramid {
    first_conv: Conv2d,
    branch0: (ConvTranspose2d, BatchNorm),
    branch1: [(ConvTranspose2d, BatchNorm); 2],
}

impl DeconvPyramid {
    fn new(w: &Weights, d: i32, eps: f32) -> Result<Self> {
        let (c1, c2, c3) = (d / 2, d / 4, d / 8);
        let deconv = |name: &str, ci, co| ConvTranspose2d::new(&w.pp(name), ci, co, 4, 2, 1);
        // Some exports carry zero biases on the transposed convolutions.
        for name in ["branch0_conv", "branch1_conv0"] {
            let _ = w.pp(name).get_optional("bias", &[c2]);
        }
        let _ = w.pp("branch1_conv1").get_optional("bias", &[c3]);
        Ok(DeconvPyramid {
            first_conv: Conv2d::new(&w.pp("first_conv"), d, c1, 1, 1, 0, true),
            branch0: (
                deconv("branch0_conv", c1, c2),
                BatchNorm::new(&w.pp("branch0_bn"), c2, eps)?,
            ),
            branch1: [
                (
                    deconv("branch1_conv0", c1, c2),
                    BatchNorm::new(&w.pp("branch1_bn0"), c2, eps)?,
                ),
                (
                    deconv("branch1_conv1", c2, c3),
                    BatchNorm::new(&w.pp("branch1_bn1"), c3, eps)?,
                ),
            ],
        })
    }

    /// Features (B, h, w, D) → [high (4h, 4w), mid (2h, 2w), low (h, w)].
    fn forward(&self, x: &Array) -> Result<[Array; 3]> {
        let up = |x: &Array, (conv, bn): &(ConvTranspose2d, BatchNorm)| -> Result<Array> {
            nn::relu(&bn.forward(&conv.forward(x)?)?)
        };
        let low = self.first_conv.forward(x)?;
        let mid = up(&low, &self.branch0)?;
        let high = up(&up(&low, &self.branch1[0])?, &self.branch1[1])?;
        Ok([high, mid, low])
    }
}

struct RefineNet {
    deconv: DeconvPyramid,
    dec_pose: Linear,
    dec_shape: Linear,
    dec_cam: Linear,
    focal_length: f32,
}

impl RefineNet {
    fn new(w: &Weights, cfg: &WilorConfig) -> Result<Self> {
        let d = cfg.embed_dim;
        let sampled = d / 2 + d / 4 + d / 8;
        Ok(RefineNet {
            deconv: DeconvPyramid::new(&w.pp("deconv"), d, cfg.batch_norm_eps)?,
            dec_pose: Linear::new(&w.pp("dec_pose"), sampled, POSE_JOINTS * 6),
            dec_shape: Linear::new(&w.pp("dec_shape"), sampled, NUM_BETAS),
            dec_cam: Linear::new(&w.pp("dec_cam"), sampled, CAM_DIM),
            focal_length: cfg.focal_length,
        })
    }

    /// Samples each pyramid level at the vertices projected with that
    /// level's camera, max-pools over vertices, and predicts corrections.
    fn forward(&self, bb: &BackboneOutput, vertices: &Array) -> Result<(Array, Array, Array)> {
        let pyramid = self.deconv.forward(&bb.features)?;
        let s = bb.cam.index((.., 0..1));
        let t_xy = bb.cam.index((.., 1..3));
        let mut pooled = Vec::with_capacity(3);
        for level in &pyramid {
            // Upstream scales camera depth and focal by the map's height only.
            let size = level.dim(1) as f32;
            let tz = Array::from_f32(2.0 * self.focal_length).divide(
                s.multiply(Array::from_f32(size))?
                    .add(Array::from_f32(1e-9))?,
            )?;
            let translation = ops::concatenate(&[t_xy.clone(), tz], -1)?;
            let p = vertices.add(translation.expand_dims(1)?)?;
            let xy = p
                .index((.., .., 0..2))
                .divide(p.index((.., .., 2..3)))?
                .multiply(Array::from_f32(self.focal_length / size))?;
            let sampled = nn::grid_sample_zeros(level, &xy)?; // (B, V, C)
            pooled.push(sampled.max_axis(1, None)?);
        }
        let f = ops::concatenate(&pooled, -1)?;
        let pose = bb.hand_pose_6d.add(self.dec_pose.forward(&f)?)?;
        let betas = bb.betas.add(self.dec_shape.forward(&f)?)?;
        let cam = bb.cam.add(self.dec_cam.forward(&f)?)?;
        Ok((pose, betas, cam))
    }
}

/// Everything WiLoR predicts for a batch of crops, in the crops' frame
/// (left hands already mirrored by the caller).
pub struct WilorOutput {
    /// (B, 21, 3) metres, MANO frame, OpenPose hand order.
    pub keypoints_3d: Array,
    /// (B, V, 3) metres.
    pub vertices: Array,
    /// (B, 3) refined weak-perspective camera [s, tx, ty].
    pub cam: Array,
    /// (B, 16, 3, 3): global orientation, then the 15 hand joints.
    pub rotations: Array,
    /// (B, 10)
    pub betas: Array,
    /// The backbone's estimate and the temporary MANO pass, kept for parity
    /// checks and debugging.
    pub backbone: BackboneOutput,
    pub backbone_rotations: Array,
}

pub struct Wilor {
    cfg: WilorConfig,
    mean: Array,
    std: Array,
    backbone: Backbone,
    refine_net: RefineNet,
    mano: Mano,
}

impl Wilor {
    pub fn new(cfg: WilorConfig, w: &Weights, mano: Mano) -> Result<Self> {
        let backbone = Backbone::new(&w.pp("backbone"), &cfg, mano.means.as_ref())?;
        let refine_net = RefineNet::new(&w.pp("refine_net"), &cfg)?;
        Ok(Wilor {
            mean: w.get("IMAGE_MEAN", &[1, 1, 1, 3]),
            std: w.get("IMAGE_STD", &[1, 1, 1, 3]),
            backbone,
            refine_net,
            mano,
            cfg,
        })
    }

    pub fn config(&self) -> &WilorConfig {
        &self.cfg
    }

    pub fn mano(&self) -> &Mano {
        &self.mano
    }

    /// `crops` (B, 256, 256, 3) RGB uint8 (or float in 0..255).
    pub fn forward(&self, crops: &Array) -> Result<WilorOutput> {
        let r = self.regress(crops)?;
        let (vertices, keypoints_3d) = self.mano.forward(&r.rotations, &r.betas)?;
        Ok(WilorOutput {
            keypoints_3d,
            vertices,
            cam: r.cam,
            rotations: r.rotations,
            betas: r.betas,
            backbone: r.backbone,
            backbone_rotations: r.backbone_rotations,
        })
    }

    /// The network alone (backbone, temporary MANO pass, RefineNet): MANO
    /// parameters and camera, before the final MANO pass.
    pub fn regress(&self, crops: &Array) -> Result<Regressed> {
        let b = crops.dim(0);
        // The network runs in its weights' float type (f32, or bf16/fp16).
        let x = crops
            .as_dtype(self.mean.dtype())?
            .divide(crate::nn::scalar(255.0, self.mean.dtype()))?
            .subtract(&self.mean)?
            .divide(&self.std)?;
        // The backbone sees the central columns only (256×192 for a 256 crop).
        let margin = (self.cfg.image_size - self.cfg.img_size[1]) / 2;
        let x = x.index((.., .., margin..self.cfg.image_size - margin, ..));

        let bb = self.backbone.forward(&x)?;
        let backbone_rotations =
            rotation::rot6d_to_rotmat(&bb.hand_pose_6d)?.reshape(&[b, POSE_JOINTS, 3, 3])?;
        let (temp_vertices, _) = self.mano.forward(&backbone_rotations, &bb.betas)?;

        let (pose, betas, cam) = self.refine_net.forward(&bb, &temp_vertices)?;
        let rotations = rotation::rot6d_to_rotmat(&pose)?.reshape(&[b, POSE_JOINTS, 3, 3])?;
        Ok(Regressed {
            rotations,
            betas,
            cam,
            backbone: bb,
            backbone_rotations,
        })
    }
}

/// [`Wilor::regress`]'s result: what the final MANO pass turns into a mesh.
pub struct Regressed {
    /// (B, 16, 3, 3)
    pub rotations: Array,
    /// (B, 10)
    pub betas: Array,
    /// (B, 3)
    pub cam: Array,
    pub backbone: BackboneOutput,
    pub backbone_rotations: Array,
}

use mlx_rs::ops::indexing::IndexOp;
