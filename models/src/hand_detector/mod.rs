//! Hand detector: YOLOv8-pose with two classes (left, right hand) and 21
//! keypoints, in the wilor-mlx key layout (`b0..b9` backbone, `h12..h21`
//! neck, `pose.*` head; kernels OHWI; BatchNorm unfolded).
//!
//! The layer list is YOLOv8-pose's; widths and repeats follow from the
//! config's scale multipliers, so the `n` fixture and the published `m` run
//! the same code. Its C2f and SPPF blocks are in `yolo.rs`.

mod yolo;

use mlx_rs::{ops, Array};
use serde::{Deserialize, Serialize};

use crate::checked_weights::Weights;
use crate::nn::{self, Conv2d, ConvBnSilu, Result};
use yolo::{C2f, Sppf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectorConfig {
    pub depth_multiple: f64,
    pub width_multiple: f64,
    pub max_channels: i32,
    /// Classes: 0 = left hand, 1 = right hand.
    pub nc: i32,
    /// Keypoints × values per keypoint (x, y, visibility).
    pub kpt_shape: [i32; 2],
    /// Side of the square network input in pixels.
    pub input_size: i32,
    pub bn_eps: f32,
    pub reg_max: i32,
    pub strides: Vec<i32>,
    /// Minimum class score to keep a candidate (inclusive).
    pub conf_threshold: f32,
    /// Greedy NMS drops a box whose IoU with a kept one exceeds this.
    pub iou_threshold: f32,
}

impl DetectorConfig {
    /// The published `hand-detector.safetensors`: YOLOv8m-pose.
    pub fn yolov8m() -> Self {
        DetectorConfig {
            depth_multiple: 0.67,
            width_multiple: 0.75,
            max_channels: 768,
            nc: 2,
            kpt_shape: [21, 3],
            input_size: 512,
            bn_eps: 1e-3,
            reg_max: 16,
            strides: vec![8, 16, 32],
            conf_threshold: 0.3,
            iou_threshold: 0.5,
        }
    }

    /// YOLOv8n-pose (the parity fixtures' size), for tests and demos.
    pub fn yolov8n() -> Self {
        DetectorConfig {
            depth_multiple: 0.33,
            width_multiple: 0.25,
            max_channels: 1024,
            ..Self::yolov8m()
        }
    }

    /// Channels of a YOLOv8 layer whose base (scale 1.0) width is `base`.
    fn width(&self, base: i32) -> i32 {
        let c = (base.min(self.max_channels) as f64 * self.width_multiple).ceil();
        ((c / 8.0).ceil() * 8.0) as i32
    }

    /// Repeats of a C2f whose base depth is `base`.
    fn depth(&self, base: i32) -> i32 {
        ((base as f64 * self.depth_multiple).round() as i32).max(1)
    }

    pub fn num_keypoints(&self) -> i32 {
        self.kpt_shape[0]
    }

    /// Rows per anchor in the raw output: box (4), class scores, keypoints.
    pub fn output_rows(&self) -> i32 {
        4 + self.nc + self.kpt_shape[0] * self.kpt_shape[1]
    }
}

/// Conv, Conv, then a plain 1×1 conv with bias: one head branch at one level.
struct HeadBranch {
    a: ConvBnSilu,
    b: ConvBnSilu,
    out: Conv2d,
}

impl HeadBranch {
    fn new(w: &Weights, c_in: i32, hidden: i32, c_out: i32, eps: f32) -> Result<Self> {
        Ok(HeadBranch {
            a: ConvBnSilu::new(&w.pp(0), c_in, hidden, 3, 1, eps)?,
            b: ConvBnSilu::new(&w.pp(1), hidden, hidden, 3, 1, eps)?,
            out: Conv2d::new(&w.pp(2), hidden, c_out, 1, 1, 0, true),
        })
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        self.out.forward(&self.b.forward(&self.a.forward(x)?)?)
    }
}

struct PoseHead {
    boxes: Vec<HeadBranch>,
    classes: Vec<HeadBranch>,
    keypoints: Vec<HeadBranch>,
}

pub struct HandDetector {
    cfg: DetectorConfig,
    stem: [ConvBnSilu; 2],
    b2: C2f,
    b3: ConvBnSilu,
    b4: C2f,
    b5: ConvBnSilu,
    b6: C2f,
    b7: ConvBnSilu,
    b8: C2f,
    b9: Sppf,
    h12: C2f,
    h15: C2f,
    h16: ConvBnSilu,
    h18: C2f,
    h19: ConvBnSilu,
    h21: C2f,
    head: PoseHead,
}

impl HandDetector {
    /// Builds the network from `w`, asking for every tensor with the shape
    /// the config implies. Call `w.finish()` afterwards for the verdict.
    pub fn new(cfg: DetectorConfig, w: &Weights) -> Result<Self> {
        let e = cfg.bn_eps;
        let c = |base| cfg.width(base);
        let n = |base| cfg.depth(base);
        let (c64, c128, c256, c512, c1024) = (c(64), c(128), c(256), c(512), c(1024));
        let conv = |name: &str, ci, co| ConvBnSilu::new(&w.pp(name), ci, co, 3, 2, e);
        let c2f = |name: &str, ci, co, reps, sc| C2f::new(&w.pp(name), ci, co, n(reps), sc, e);

        let level_channels = [c256, c512, c1024];
        let nk = cfg.kpt_shape[0] * cfg.kpt_shape[1];
        let box_hidden = 16.max(level_channels[0] / 4).max(cfg.reg_max * 4);
        let cls_hidden = level_channels[0].max(cfg.nc.min(100));
        let kpt_hidden = (level_channels[0] / 4).max(nk);
        let branch = |kind: &str, hidden, out| {
            level_channels
                .iter()
                .enumerate()
                .map(|(i, &ci)| HeadBranch::new(&w.pp("pose").pp(kind).pp(i), ci, hidden, out, e))
                .collect::<Result<Vec<_>>>()
        };
        let head = PoseHead {
            boxes: branch("cv2", box_hidden, 4 * cfg.reg_max)?,
            classes: branch("cv3", cls_hidden, cfg.nc)?,
            keypoints: branch("cv4", kpt_hidden, nk)?,
        };
        // `pose.stride` is a buffer some exports carry; the strides come from the config.
        let _ = w.get_optional("pose.stride", &[cfg.strides.len() as i32]);

        Ok(HandDetector {
            stem: [
                ConvBnSilu::new(&w.pp("b0"), 3, c64, 3, 2, e)?,
                conv("b1", c64, c128)?,
            ],
            b2: c2f("b2", c128, c128, 3, true)?,
            b3: conv("b3", c128, c256)?,
            b4: c2f("b4", c256, c256, 6, true)?,
            b5: conv("b5", c256, c512)?,
            b6: c2f("b6", c512, c512, 6, true)?,
            b7: conv("b7", c512, c1024)?,
            b8: c2f("b8", c1024, c1024, 3, true)?,
            b9: Sppf::new(&w.pp("b9"), c1024, c1024, e)?,
            h12: c2f("h12", c1024 + c512, c512, 3, false)?,
            h15: c2f("h15", c512 + c256, c256, 3, false)?,
            h16: conv("h16", c256, c256)?,
            h18: c2f("h18", c256 + c512, c512, 3, false)?,
            h19: conv("h19", c512, c512)?,
            h21: c2f("h21", c512 + c1024, c1024, 3, false)?,
            head,
            cfg,
        })
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// `image` (B, S, S, 3) RGB in [0, 1] → decoded predictions (B, A, rows):
    /// per anchor cx, cy, w, h (input px), class scores, then 21 × (x, y, vis).
    pub fn forward(&self, image: &Array) -> Result<Array> {
        let x = self.stem[1].forward(&self.stem[0].forward(image)?)?;
        let x = self.b3.forward(&self.b2.forward(&x)?)?;
        let p3 = self.b4.forward(&x)?;
        let p4 = self.b6.forward(&self.b5.forward(&p3)?)?;
        let p5 = self.b9.forward(&self.b8.forward(&self.b7.forward(&p4)?)?)?;

        let cat = |a: &Array, b: &Array| ops::concatenate(&[a, b], -1);
        let h12 = self
            .h12
            .forward(&cat(&nn::upsample_nearest_2x(&p5)?, &p4)?)?;
        let out_small = self
            .h15
            .forward(&cat(&nn::upsample_nearest_2x(&h12)?, &p3)?)?;
        let out_mid = self
            .h18
            .forward(&cat(&self.h16.forward(&out_small)?, &h12)?)?;
        let out_large = self.h21.forward(&cat(&self.h19.forward(&out_mid)?, &p5)?)?;

        self.decode(&[out_small, out_mid, out_large])
    }

    fn decode(&self, levels: &[Array; 3]) -> Result<Array> {
        let b = levels[0].dim(0);
        let flat = |x: Array| -> Result<Array> {
            let c = x.dim(3);
            x.reshape(&[b, -1, c])
        };
        let mut boxes = Vec::new();
        let mut classes = Vec::new();
        let mut keypoints = Vec::new();
        let mut anchors = Vec::new();
        let mut strides = Vec::new();
        for (i, x) in levels.iter().enumerate() {
            boxes.push(flat(self.head.boxes[i].forward(x)?)?);
            classes.push(flat(self.head.classes[i].forward(x)?)?);
            keypoints.push(flat(self.head.keypoints[i].forward(x)?)?);
            let (h, w) = (x.dim(1), x.dim(2));
            for y in 0..h {
                for xx in 0..w {
                    anchors.push(xx as f32 + 0.5);
                    anchors.push(y as f32 + 0.5);
                    strides.push(self.cfg.strides[i] as f32);
                }
            }
        }
        let a = strides.len() as i32;
        let anchors = Array::from_slice(&anchors, &[1, a, 2]);
        let stride = Array::from_slice(&strides, &[1, a, 1]);
        let boxes = ops::concatenate(&boxes, 1)?;
        let classes = ops::concatenate(&classes, 1)?;
        let keypoints = ops::concatenate(&keypoints, 1)?;

        // Distribution focal loss decode: expected bin of a softmax over reg_max bins.
        let r = self.cfg.reg_max;
        let bins = ops::arange::<_, f32>(0.0, r as f32, None)?;
        let dist = ops::softmax_axis(boxes.reshape(&[b, a, 4, r])?, -1, None)?
            .matmul(bins.reshape(&[r, 1])?)?
            .reshape(&[b, a, 4])?;
        let lt = dist.index((.., .., 0..2));
        let rb = dist.index((.., .., 2..4));
        let x1y1 = anchors.subtract(&lt)?;
        let x2y2 = anchors.add(&rb)?;
        let centre = x1y1.add(&x2y2)?.divide(Array::from_f32(2.0))?;
        let size = x2y2.subtract(&x1y1)?;
        let cxcywh = ops::concatenate(&[centre, size], -1)?.multiply(&stride)?;

        let nk = self.cfg.kpt_shape[0];
        let kp = keypoints.reshape(&[b, a, nk, 3])?;
        let offset = anchors
            .subtract(Array::from_f32(0.5))?
            .reshape(&[1, a, 1, 2])?;
        let xy = kp
            .index((.., .., .., 0..2))
            .multiply(Array::from_f32(2.0))?
            .add(&offset)?
            .multiply(stride.reshape(&[1, a, 1, 1])?)?;
        let vis = ops::sigmoid(kp.index((.., .., .., 2..3)))?;
        let kp = ops::concatenate(&[xy, vis], -1)?.reshape(&[b, a, nk * 3])?;

        ops::concatenate(&[cxcywh, ops::sigmoid(&classes)?, kp], -1)
    }
}

/// One detected hand in network-input or image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// x1, y1, x2, y2.
    pub bbox: [f32; 4],
    pub score: f32,
    /// 0 = left, 1 = right.
    pub class: usize,
    /// (x, y, visibility) per keypoint.
    pub keypoints: Vec<[f32; 3]>,
}

/// Score threshold (inclusive) then class-agnostic greedy NMS, strongest
/// first, on one image's decoded predictions (`rows` values per anchor).
pub fn select_detections(
    pred: &[f32],
    rows: usize,
    nc: usize,
    conf_threshold: f32,
    iou_threshold: f32,
) -> Vec<Detection> {
    // (anchor, class, score, box): keypoints are copied for the kept ones
    // only, since an untrained or confused detector can pass thousands.
    let mut candidates: Vec<(usize, usize, f32, [f32; 4])> = pred
        .chunks_exact(rows)
        .enumerate()
        .filter_map(|(anchor, p)| {
            let (class, score) =
                p[4..4 + nc]
                    .iter()
                    .copied()
                    .enumerate()
                    .fold(
                        (0, f32::MIN),
                        |best, (i, s)| if s > best.1 { (i, s) } else { best },
                    );
            (score >= conf_threshold).then(|| {
                let (cx, cy, w, h) = (p[0], p[1], p[2], p[3]);
                let bbox = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
                (anchor, class, score, bbox)
            })
        })
        .collect();
    candidates.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut kept: Vec<(usize, usize, f32, [f32; 4])> = Vec::new();
    for c in candidates {
        if kept.iter().all(|k| iou(&k.3, &c.3) <= iou_threshold) {
            kept.push(c);
        }
    }
    kept.into_iter()
        .map(|(anchor, class, score, bbox)| Detection {
            bbox,
            score,
            class,
            keypoints: pred[anchor * rows + 4 + nc..(anchor + 1) * rows]
                .chunks_exact(3)
                .map(|k| [k[0], k[1], k[2]])
                .collect(),
        })
        .collect()
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter + 1e-6)
}

use mlx_rs::ops::indexing::IndexOp;
