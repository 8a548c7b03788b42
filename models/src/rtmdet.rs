//! RTMDet, the person detector of the Sapiens top-down pipeline: CSPNeXt
//! backbone, CSPNeXt-PAFPN neck and the separated-BN head, as mmdet 3.3.0
//! builds them. Weights in mmdet's state-dict layout (PyTorch OIHW
//! convolutions, made OHWI at load); activations NHWC.
//!
//! Three details the earlier MLX port got wrong and this one follows mmdet
//! on: the stem's conv layout, no identity in the last backbone stage, and
//! channel attention applied to the concatenation before `final_conv`.

use mlx_rs::{ops, Array};
use serde::{Deserialize, Serialize};

use crate::checked_weights::Weights;
use crate::nn::{max_pool_same, upsample_nearest_2x, Conv2d, ConvBnSilu, Result};
use crate::sapiens_demo::PersonFilter;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RtmdetConfig {
    /// The three stem convolutions' output channels.
    pub stem_channels: Vec<i32>,
    /// Output channels of stages 1..4.
    pub stage_out_channels: Vec<i32>,
    /// CSPNeXt blocks per stage.
    pub stage_csp_blocks: Vec<i32>,
    /// Whether each stage's blocks add their input (the last does not).
    pub stage_add_identity: Vec<bool>,
    pub channel_attention: bool,
    pub csp_expand_ratio: f32,
    /// C3, C4, C5 channels.
    pub neck_in_channels: Vec<i32>,
    pub neck_out_channels: i32,
    pub neck_num_csp_blocks: i32,
    pub head: HeadConfig,
    pub bn_eps: f32,
    pub input_size: i32,
    pub preprocess: Preprocess,
    #[serde(default)]
    pub test_cfg: TestConfig,
    #[serde(default)]
    pub demo: PersonFilter,
}

/// mmdet's `test_cfg` as the Sapiens person detector sets it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TestConfig {
    /// Candidates kept per level, best first.
    pub nms_pre: usize,
    pub score_thr: f32,
    pub max_per_img: usize,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            nms_pre: 1000,
            score_thr: 0.05,
            max_per_img: 100,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadConfig {
    pub in_channels: i32,
    pub feat_channels: i32,
    pub stacked_convs: i32,
    pub num_classes: i32,
    pub strides: Vec<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preprocess {
    /// Per channel of the BGR input, on the 0–255 scale.
    pub mean_bgr: [f32; 3],
    pub std_bgr: [f32; 3],
}

impl RtmdetConfig {
    /// RTMDet-m, the size the Sapiens demo uses (`rtmdet_m_640`, one class).
    pub fn m() -> Self {
        RtmdetConfig {
            stem_channels: vec![24, 24, 48],
            stage_out_channels: vec![96, 192, 384, 768],
            stage_csp_blocks: vec![2, 4, 4, 2],
            stage_add_identity: vec![true, true, true, false],
            channel_attention: true,
            csp_expand_ratio: 0.5,
            neck_in_channels: vec![192, 384, 768],
            neck_out_channels: 192,
            neck_num_csp_blocks: 2,
            head: HeadConfig {
                in_channels: 192,
                feat_channels: 192,
                stacked_convs: 2,
                num_classes: 1,
                strides: vec![8, 16, 32],
            },
            bn_eps: 1e-5,
            input_size: 640,
            preprocess: Preprocess {
                mean_bgr: [103.53, 116.28, 123.675],
                std_bgr: [57.375, 57.12, 58.395],
            },
            test_cfg: TestConfig::default(),
            demo: PersonFilter::default(),
        }
    }
}

/// A detected box, x1 y1 x2 y2 in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub bbox: [f32; 4],
    pub score: f32,
}

/// mmdet's test-time resize and pad: scale by `min(S/long, S/short)`, sizes
/// rounded as `int(x·s + 0.5)`, bilinear with half-pixel centres (cv2's
/// `INTER_LINEAR`, in floating point), then pad bottom and right to S×S
/// with 114. `bgr` is H×W×3. Returns the padded image and the
/// `(new_w / w, new_h / h)` scale factor.
pub fn letterbox_bgr(bgr: &[u8], width: usize, height: usize, size: usize) -> (Vec<u8>, [f64; 2]) {
    let s = (size as f64 / width.max(height) as f64).min(size as f64 / width.min(height) as f64);
    let new_w = ((width as f64 * s + 0.5) as usize).clamp(1, size);
    let new_h = ((height as f64 * s + 0.5) as usize).clamp(1, size);
    // cv2 maps destination pixel d to source (d + 0.5)·(src/dst) − 0.5 and
    // replicates the edges.
    let taps = |n_out: usize, n_in: usize| -> Vec<(usize, usize, f64)> {
        let scale = n_in as f64 / n_out as f64;
        (0..n_out)
            .map(|d| {
                let f = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (f.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, if i0 == i1 { 0.0 } else { f - i0 as f64 })
            })
            .collect()
    };
    let (xs, ys) = (taps(new_w, width), taps(new_h, height));
    let mut out = vec![114u8; size * size * 3];
    for (dy, &(y0, y1, fy)) in ys.iter().enumerate() {
        for (dx, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let at = |x: usize, y: usize| bgr[(y * width + x) * 3 + c] as f64;
                let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
                let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
                let v = top * (1.0 - fy) + bottom * fy;
                out[(dy * size + dx) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    (
        out,
        [new_w as f64 / width as f64, new_h as f64 / height as f64],
    )
}

/// mmdet's `predict_by_feat` for one image, single class: per level,
/// sigmoid scores above `score_thr`, the best `nms_pre`, boxes from the
/// level's points (`x·stride`, `y·stride`) and ltrb distances clamped to the
/// S×S input; all levels sorted by score; the first `max_per_img`.
/// Returns the boxes in input (letterboxed) pixels and in image pixels
/// (divided by `scale_factor`), boxes of no area dropped.
pub fn postprocess(
    out: &RtmdetOutput,
    cfg: &RtmdetConfig,
    scale_factor: [f64; 2],
) -> Result<(Vec<Detection>, Vec<Detection>)> {
    let size = cfg.input_size as f32;
    let t = &cfg.test_cfg;
    let mut candidates: Vec<Detection> = Vec::new();
    for (l, (cls, reg)) in out.cls.iter().zip(&out.reg).enumerate() {
        let w = cls.dim(2) as usize;
        let stride = cfg.head.strides[l] as f32;
        let logits = crate::nn::host_f32(&crate::nn::select(cls, 0, 0)?)?;
        let ltrb = crate::nn::host_f32(&crate::nn::select(reg, 0, 0)?)?;
        let nc = cfg.head.num_classes as usize;
        let mut level: Vec<(f32, usize)> = logits
            .iter()
            .enumerate()
            .filter(|(i, _)| i % nc == 0)
            .map(|(i, &z)| (1.0 / (1.0 + (-z).exp()), i / nc))
            .filter(|(p, _)| *p > t.score_thr)
            .collect();
        level.sort_by(|a, b| b.0.total_cmp(&a.0));
        level.truncate(t.nms_pre);
        for (score, point) in level {
            let (px, py) = ((point % w) as f32 * stride, (point / w) as f32 * stride);
            let d = &ltrb[point * 4..point * 4 + 4];
            candidates.push(Detection {
                bbox: [
                    (px - d[0]).clamp(0.0, size),
                    (py - d[1]).clamp(0.0, size),
                    (px + d[2]).clamp(0.0, size),
                    (py + d[3]).clamp(0.0, size),
                ],
                score,
            });
        }
    }
    // mmdet rescales with float32(1 / scale_factor), then drops empty boxes.
    let inv = [
        (1.0 / scale_factor[0]) as f32,
        (1.0 / scale_factor[1]) as f32,
    ];
    let mut pairs: Vec<(Detection, Detection)> = candidates
        .into_iter()
        .map(|d| {
            let b = d.bbox;
            let image = Detection {
                bbox: [b[0] * inv[0], b[1] * inv[1], b[2] * inv[0], b[3] * inv[1]],
                score: d.score,
            };
            (d, image)
        })
        .filter(|(_, i)| i.bbox[2] - i.bbox[0] > 0.0 && i.bbox[3] - i.bbox[1] > 0.0)
        .collect();
    pairs.sort_by(|a, b| b.0.score.total_cmp(&a.0.score));
    pairs.truncate(t.max_per_img);
    Ok(pairs.into_iter().unzip())
}

/// The Sapiens demo's person filter: score above `bbox_thr`, then greedy
/// NMS at `nms_thr` with areas counted as `(x2 − x1 + 1)(y2 − y1 + 1)`.
/// Returns the indices kept, best first.
pub fn person_filter(dets: &[Detection], filter: &PersonFilter) -> Vec<usize> {
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut order: Vec<usize> = (0..dets.len())
        .filter(|&i| dets[i].score > filter.bbox_thr)
        .collect();
    order.sort_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score));
    let mut keep = Vec::new();
    while let Some((&i, rest)) = order.split_first() {
        keep.push(i);
        let a = &dets[i].bbox;
        order = rest
            .iter()
            .copied()
            .filter(|&j| {
                let b = &dets[j].bbox;
                let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
                let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
                let inter = w * h;
                inter / (area(a) + area(b) - inter) <= filter.nms_thr
            })
            .collect();
    }
    keep
}

/// `x · hardsigmoid(fc(mean over H, W))`: mmdet's `ChannelAttention`.
struct ChannelAttention {
    fc: Conv2d,
}

impl ChannelAttention {
    fn forward(&self, x: &Array) -> Result<Array> {
        let s = x.mean_axes(&[1, 2], true)?;
        let s = self.fc.forward(&s)?;
        let s = ops::clip(
            &s.add(Array::from_f32(3.0))?.divide(Array::from_f32(6.0))?,
            (0.0, 1.0),
        )?;
        x.multiply(&s)
    }
}

/// 3×3 conv, then a depthwise 5×5 and a pointwise 1×1, with the input added
/// back when `identity`.
struct CspNextBlock {
    conv1: ConvBnSilu,
    depthwise: ConvBnSilu,
    pointwise: ConvBnSilu,
    identity: bool,
}

impl CspNextBlock {
    fn new(w: &Weights, c: i32, identity: bool, eps: f32) -> Result<Self> {
        let w2 = w.pp("conv2");
        Ok(CspNextBlock {
            conv1: ConvBnSilu::from_torch(&w.pp("conv1"), c, c, 3, 1, 1, eps)?,
            depthwise: ConvBnSilu::from_torch(&w2.pp("depthwise_conv"), c, c, 5, 1, c, eps)?,
            pointwise: ConvBnSilu::from_torch(&w2.pp("pointwise_conv"), c, c, 1, 1, 1, eps)?,
            identity,
        })
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        let y = self.conv1.forward(x)?;
        let y = self.pointwise.forward(&self.depthwise.forward(&y)?)?;
        if self.identity {
            y.add(x)
        } else {
            Ok(y)
        }
    }
}

/// Two 1×1 branches (`main` through the blocks, `short` as is),
/// concatenated main first, optionally re-weighted by channel attention,
/// fused by `final_conv`.
struct CspLayer {
    main_conv: ConvBnSilu,
    short_conv: ConvBnSilu,
    blocks: Vec<CspNextBlock>,
    attention: Option<ChannelAttention>,
    final_conv: ConvBnSilu,
}

#[allow(clippy::too_many_arguments)]
impl CspLayer {
    fn new(
        w: &Weights,
        c_in: i32,
        c_out: i32,
        n: i32,
        identity: bool,
        attention: bool,
        expand: f32,
        eps: f32,
    ) -> Result<Self> {
        let mid = (c_out as f32 * expand) as i32;
        Ok(CspLayer {
            main_conv: ConvBnSilu::from_torch(&w.pp("main_conv"), c_in, mid, 1, 1, 1, eps)?,
            short_conv: ConvBnSilu::from_torch(&w.pp("short_conv"), c_in, mid, 1, 1, 1, eps)?,
            blocks: (0..n)
                .map(|i| CspNextBlock::new(&w.pp("blocks").pp(i), mid, identity, eps))
                .collect::<Result<_>>()?,
            attention: attention
                .then(|| {
                    Conv2d::from_torch(&w.pp("attention").pp("fc"), 2 * mid, 2 * mid, 1, 1, 1, true)
                        .map(|fc| ChannelAttention { fc })
                })
                .transpose()?,
            final_conv: ConvBnSilu::from_torch(&w.pp("final_conv"), 2 * mid, c_out, 1, 1, 1, eps)?,
        })
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        let mut main = self.main_conv.forward(x)?;
        for b in &self.blocks {
            main = b.forward(&main)?;
        }
        let short = self.short_conv.forward(x)?;
        let mut y = ops::concatenate(&[main, short], -1)?;
        if let Some(a) = &self.attention {
            y = a.forward(&y)?;
        }
        self.final_conv.forward(&y)
    }
}

/// 1×1 down to half, max pools 5/9/13 (stride 1, −inf padding) beside the
/// input, 1×1 to `c_out`.
struct SppBottleneck {
    conv1: ConvBnSilu,
    conv2: ConvBnSilu,
}

impl SppBottleneck {
    fn forward(&self, x: &Array) -> Result<Array> {
        let x = self.conv1.forward(x)?;
        let pools = [5, 9, 13]
            .into_iter()
            .map(|k| max_pool_same(&x, k))
            .collect::<Result<Vec<_>>>()?;
        let mut parts = vec![x];
        parts.extend(pools);
        self.conv2.forward(&ops::concatenate(&parts, -1)?)
    }
}

struct Stage {
    down: ConvBnSilu,
    spp: Option<SppBottleneck>,
    csp: CspLayer,
}

/// What one forward pass produces, by name.
pub struct RtmdetOutput {
    /// C3, C4, C5.
    pub backbone: [Array; 3],
    /// The neck's three outputs (strides 8, 16, 32).
    pub neck: [Array; 3],
    /// Per level: class logits (B, H, W, classes).
    pub cls: Vec<Array>,
    /// Per level: `exp(reg) · stride` = (left, top, right, bottom)
    /// distances in input pixels (B, H, W, 4).
    pub reg: Vec<Array>,
}

pub struct Rtmdet {
    cfg: RtmdetConfig,
    mean: Array,
    std: Array,
    stem: Vec<ConvBnSilu>,
    stages: Vec<Stage>,
    reduce: [ConvBnSilu; 2],
    top_down: [CspLayer; 2],
    downsample: [ConvBnSilu; 2],
    bottom_up: [CspLayer; 2],
    out_convs: Vec<ConvBnSilu>,
    cls_convs: Vec<Vec<ConvBnSilu>>,
    reg_convs: Vec<Vec<ConvBnSilu>>,
    rtm_cls: Vec<Conv2d>,
    rtm_reg: Vec<Conv2d>,
}

impl Rtmdet {
    pub fn new(cfg: RtmdetConfig, w: &Weights) -> Result<Self> {
        let eps = cfg.bn_eps;
        let expand = cfg.csp_expand_ratio;
        let conv =
            |w: &Weights, c_in, c_out, k, s| ConvBnSilu::from_torch(w, c_in, c_out, k, s, 1, eps);

        let bb = w.pp("backbone");
        let mut c = 3;
        let mut stem = Vec::new();
        for (i, &c_out) in cfg.stem_channels.iter().enumerate() {
            stem.push(conv(
                &bb.pp("stem").pp(i),
                c,
                c_out,
                3,
                if i == 0 { 2 } else { 1 },
            )?);
            c = c_out;
        }
        let mut stages = Vec::new();
        let last = cfg.stage_out_channels.len() - 1;
        for (i, &c_out) in cfg.stage_out_channels.iter().enumerate() {
            let ws = bb.pp(format!("stage{}", i + 1));
            let down = conv(&ws.pp(0), c, c_out, 3, 2)?;
            let spp = (i == last)
                .then(|| -> Result<SppBottleneck> {
                    let wp = ws.pp(1);
                    Ok(SppBottleneck {
                        conv1: conv(&wp.pp("conv1"), c_out, c_out / 2, 1, 1)?,
                        conv2: conv(&wp.pp("conv2"), 2 * c_out, c_out, 1, 1)?,
                    })
                })
                .transpose()?;
            let csp = CspLayer::new(
                &ws.pp(if spp.is_some() { 2 } else { 1 }),
                c_out,
                c_out,
                cfg.stage_csp_blocks[i],
                cfg.stage_add_identity[i],
                cfg.channel_attention,
                expand,
                eps,
            )?;
            stages.push(Stage { down, spp, csp });
            c = c_out;
        }

        let nk = w.pp("neck");
        let [c3, c4, c5] = [0, 1, 2].map(|i| cfg.neck_in_channels[i]);
        let n = cfg.neck_num_csp_blocks;
        let csp =
            |w: &Weights, c_in, c_out| CspLayer::new(w, c_in, c_out, n, false, false, expand, eps);
        let reduce = [
            conv(&nk.pp("reduce_layers").pp(0), c5, c4, 1, 1)?,
            conv(&nk.pp("reduce_layers").pp(1), c4, c3, 1, 1)?,
        ];
        let top_down = [
            csp(&nk.pp("top_down_blocks").pp(0), 2 * c4, c4)?,
            csp(&nk.pp("top_down_blocks").pp(1), 2 * c3, c3)?,
        ];
        let downsample = [
            conv(&nk.pp("downsamples").pp(0), c3, c3, 3, 2)?,
            conv(&nk.pp("downsamples").pp(1), c4, c4, 3, 2)?,
        ];
        let bottom_up = [
            csp(&nk.pp("bottom_up_blocks").pp(0), 2 * c3, c4)?,
            csp(&nk.pp("bottom_up_blocks").pp(1), 2 * c4, c5)?,
        ];
        let out_convs = [c3, c4, c5]
            .iter()
            .enumerate()
            .map(|(i, &ci)| conv(&nk.pp("out_convs").pp(i), ci, cfg.neck_out_channels, 3, 1))
            .collect::<Result<_>>()?;

        // share_conv: every level's tower convolutions hold the same tensor
        // (the state dict repeats it); the BatchNorms are per level.
        let hd = w.pp("bbox_head");
        let h = &cfg.head;
        let tower = |name: &str, level: usize| -> Result<Vec<ConvBnSilu>> {
            (0..h.stacked_convs)
                .map(|i| {
                    let c_in = if i == 0 {
                        h.in_channels
                    } else {
                        h.feat_channels
                    };
                    conv(&hd.pp(name).pp(level).pp(i), c_in, h.feat_channels, 3, 1)
                })
                .collect()
        };
        let levels = h.strides.len();
        let pred = |name: &str, l: usize, c_out: i32| {
            Conv2d::from_torch(&hd.pp(name).pp(l), h.feat_channels, c_out, 1, 1, 1, true)
        };
        let p = &cfg.preprocess;
        Ok(Rtmdet {
            mean: Array::from_slice(&p.mean_bgr, &[1, 1, 1, 3]),
            std: Array::from_slice(&p.std_bgr, &[1, 1, 1, 3]),
            stem,
            stages,
            reduce,
            top_down,
            downsample,
            bottom_up,
            out_convs,
            cls_convs: (0..levels)
                .map(|l| tower("cls_convs", l))
                .collect::<Result<_>>()?,
            reg_convs: (0..levels)
                .map(|l| tower("reg_convs", l))
                .collect::<Result<_>>()?,
            rtm_cls: (0..levels)
                .map(|l| pred("rtm_cls", l, h.num_classes))
                .collect::<Result<_>>()?,
            rtm_reg: (0..levels)
                .map(|l| pred("rtm_reg", l, 4))
                .collect::<Result<_>>()?,
            cfg,
        })
    }

    pub fn config(&self) -> &RtmdetConfig {
        &self.cfg
    }

    /// `image`: letterboxed BGR (B, S, S, 3) on the 0–255 scale, any dtype.
    pub fn forward(&self, image: &Array) -> Result<RtmdetOutput> {
        let mut x = image
            .as_dtype(mlx_rs::Dtype::Float32)?
            .subtract(&self.mean)?
            .divide(&self.std)?;
        for s in &self.stem {
            x = s.forward(&x)?;
        }
        let mut features = Vec::new();
        for stage in &self.stages {
            x = stage.down.forward(&x)?;
            if let Some(spp) = &stage.spp {
                x = spp.forward(&x)?;
            }
            x = stage.csp.forward(&x)?;
            features.push(x.clone());
        }
        let [c3, c4, c5] = [1, 2, 3].map(|i| features[i].clone());

        let cat = |a: &Array, b: &Array| ops::concatenate(&[a, b], -1);
        let p5 = self.reduce[0].forward(&c5)?;
        let p4 = self.top_down[0].forward(&cat(&upsample_nearest_2x(&p5)?, &c4)?)?;
        let p4 = self.reduce[1].forward(&p4)?;
        let p3 = self.top_down[1].forward(&cat(&upsample_nearest_2x(&p4)?, &c3)?)?;
        let n4 = self.bottom_up[0].forward(&cat(&self.downsample[0].forward(&p3)?, &p4)?)?;
        let n5 = self.bottom_up[1].forward(&cat(&self.downsample[1].forward(&n4)?, &p5)?)?;
        let neck = [
            self.out_convs[0].forward(&p3)?,
            self.out_convs[1].forward(&n4)?,
            self.out_convs[2].forward(&n5)?,
        ];

        let mut cls = Vec::new();
        let mut reg = Vec::new();
        for (l, f) in neck.iter().enumerate() {
            let mut c = f.clone();
            for layer in &self.cls_convs[l] {
                c = layer.forward(&c)?;
            }
            let mut r = f.clone();
            for layer in &self.reg_convs[l] {
                r = layer.forward(&r)?;
            }
            cls.push(self.rtm_cls[l].forward(&c)?);
            let stride = Array::from_f32(self.cfg.head.strides[l] as f32);
            reg.push(ops::exp(&self.rtm_reg[l].forward(&r)?)?.multiply(&stride)?);
        }
        Ok(RtmdetOutput {
            backbone: [c3, c4, c5],
            neck,
            cls,
            reg,
        })
    }
}
