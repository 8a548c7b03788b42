//! The body route's model work, stage by stage, as the Sapiens demo runs
//! it: letterbox → RTMDet → mmdet post-processing and the demo's person
//! filter (whole image when nobody is found) → padded 3:4 UDP crops →
//! Sapiens2 on every crop as one batch (with the mirrored crops when the
//! flip test is on) → heatmap decode → keypoints in image pixels.
//!
//! CPU stages ([`BodyPipeline::prepare_detector_input`],
//! [`BodyPipeline::prepare_crops`]) touch no MLX state, so the caller can
//! time them apart and move them off the MLX thread.

use std::path::{Path, PathBuf};

use mlx_rs::{ops, Array, Dtype};

use crate::checked_weights::Weights;
use crate::image::RgbImage;
use crate::model_files::{optional_config, required_file, LoadError, ModelFilesError};
use crate::nn::Result;
use crate::rtmdet::{self, Detection, Rtmdet, RtmdetConfig};
use crate::sapiens2::{self, Sapiens2Config, Sapiens2Pose};
use crate::topdown::{self, PersonCrop};

/// Where the body route's files are and what they hold.
#[derive(Debug, Clone)]
pub struct BodyModelFiles {
    pub detector_config: RtmdetConfig,
    /// mmdet's state dict as safetensors (PyTorch layouts).
    pub detector_weights: PathBuf,
    pub pose_config: Sapiens2Config,
    /// The published `sapiens2_<size>_pose.safetensors` layout.
    pub pose_weights: PathBuf,
}

pub const DETECTOR_WEIGHTS: &str = "rtmdet_weights.safetensors";
pub const DETECTOR_CONFIG: &str = "rtmdet_config.json";
pub const POSE_WEIGHTS: &str = "sapiens2_pose_weights.safetensors";
pub const POSE_CONFIG: &str = "sapiens2_pose_config.json";

impl BodyModelFiles {
    /// A models folder: the two weight files, and optionally their configs
    /// (RTMDet-m and Sapiens2 0.4b otherwise).
    pub fn from_dir(dir: &Path) -> std::result::Result<Self, ModelFilesError> {
        let note = format!("the body route needs {DETECTOR_WEIGHTS} and {POSE_WEIGHTS}");
        let need = |name: &str| required_file(dir, name, &note);
        let detector_config = optional_config(dir, DETECTOR_CONFIG, RtmdetConfig::m)?;
        let pose_config = optional_config(dir, POSE_CONFIG, || {
            Sapiens2Config::pose(sapiens2::Sapiens2Size::B0_4)
        })?;
        Ok(BodyModelFiles {
            detector_config,
            detector_weights: need(DETECTOR_WEIGHTS)?,
            pose_config,
            pose_weights: need(POSE_WEIGHTS)?,
        })
    }
}

/// One person's pose in image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyEstimate {
    /// The person box the crop came from, x1 y1 x2 y2.
    pub bbox: [f32; 4],
    /// Detector score (1 for client boxes and the whole-image fallback).
    pub score: f32,
    pub keypoints: Vec<[f32; 2]>,
    /// Heatmap maxima.
    pub keypoint_scores: Vec<f32>,
}

/// The letterboxed BGR detector input and its scale factor.
pub struct DetectorInput {
    pub bgr: Vec<u8>,
    pub scale_factor: [f64; 2],
    pub size: usize,
    pub image_size: [usize; 2],
}

impl DetectorInput {
    /// CPU: mmdet's `size`² letterbox of `img`, channels in the detector's
    /// BGR order. A free function of the frame, for any thread.
    pub fn new(img: RgbImage, size: usize) -> Self {
        let (mut bgr, scale_factor) = rtmdet::letterbox_bgr(img.data, img.width, img.height, size);
        for px in bgr.chunks_exact_mut(3) {
            px.swap(0, 2);
        }
        DetectorInput {
            bgr,
            scale_factor,
            size,
            image_size: [img.width, img.height],
        }
    }
}

/// A batch of person crops ready for Sapiens2 (RGB bytes, N × H × W × 3).
pub struct CropBatch {
    pub pixels: Vec<u8>,
    pub crops: Vec<PersonCrop>,
    pub boxes: Vec<([f32; 4], f32)>,
}

pub struct BodyPipeline {
    pub detector: Rtmdet,
    pub pose: Sapiens2Pose,
    /// At most this many people per frame, strongest first.
    pub max_people: usize,
}

impl BodyPipeline {
    /// Loads both networks; the pose network's float tensors in `pose_dtype`
    /// when given. Also says whether either file is synthetic.
    pub fn load(
        files: &BodyModelFiles,
        pose_dtype: Option<Dtype>,
    ) -> std::result::Result<(Self, bool), LoadError> {
        let dw = Weights::from_file(&files.detector_weights)?;
        let detector = Rtmdet::new(files.detector_config.clone(), &dw)?;
        dw.finish()?;
        let mut pw = Weights::from_file(&files.pose_weights)?;
        let synthetic = dw.is_synthetic() || pw.is_synthetic();
        if let Some(d) = pose_dtype {
            pw = pw.with_float_dtype(d);
        }
        let pose = Sapiens2Pose::new(files.pose_config.clone(), &pw)?;
        pw.finish()?;
        Ok((
            BodyPipeline {
                detector,
                pose,
                max_people: 4,
            },
            synthetic,
        ))
    }

    /// The side of the detector's square input.
    pub fn detector_input_size(&self) -> usize {
        self.detector.config().input_size as usize
    }

    /// CPU: mmdet's letterbox of the frame, channels in the detector's BGR order.
    pub fn prepare_detector_input(&self, img: RgbImage) -> DetectorInput {
        DetectorInput::new(img, self.detector_input_size())
    }

    /// MLX: RTMDet, mmdet's post-processing and the demo's person filter;
    /// the strongest `max_people` boxes in image pixels with their scores,
    /// or the whole image when nobody passes.
    pub fn detect(&self, input: &DetectorInput) -> Result<Vec<([f32; 4], f32)>> {
        let s = input.size as i32;
        let x = Array::from_slice(&input.bgr, &[1, s, s, 3]);
        let out = self.detector.forward(&x)?;
        let cfg = self.detector.config();
        let (_, dets) = rtmdet::postprocess(&out, cfg, input.scale_factor)?;
        let keep = rtmdet::person_filter(&dets, &self.pose.config().demo.person_filter);
        let [w, h] = input.image_size;
        if keep.is_empty() {
            return Ok(vec![([0.0, 0.0, (w - 1) as f32, (h - 1) as f32], 1.0)]);
        }
        Ok(keep
            .into_iter()
            .take(self.max_people)
            .map(|i| {
                let Detection { bbox, score } = dets[i];
                (bbox, score)
            })
            .collect())
    }

    /// CPU: one UDP crop per person.
    pub fn prepare_crops(&self, img: RgbImage, boxes: &[([f32; 4], f32)]) -> CropBatch {
        let cfg = self.pose.config();
        let crops: Vec<PersonCrop> = boxes
            .iter()
            .map(|(b, _)| PersonCrop::from_box(*b, cfg.demo.bbox_padding, cfg.input_size_hw))
            .collect();
        let pixels =
            topdown::crop_persons(img.data, img.width, img.height, &crops, cfg.input_size_hw);
        CropBatch {
            pixels,
            crops,
            boxes: boxes.to_vec(),
        }
    }

    /// MLX: Sapiens2 on every crop (and, with the flip test, every mirrored
    /// crop) as one batch; evaluated heatmaps `(plain, mirrored)`.
    pub fn heatmaps(&self, batch: &CropBatch) -> Result<Option<(Array, Option<Array>)>> {
        let n = batch.crops.len() as i32;
        if n == 0 {
            return Ok(None);
        }
        let [h, w] = self.pose.config().input_size_hw;
        let crops = Array::from_slice(&batch.pixels, &[n, h, w, 3]);
        let flip = self.pose.config().demo.flip_test;
        let input = if flip {
            let reverse: Vec<i32> = (0..w).rev().collect();
            let mirrored = crops.take_axis(Array::from_slice(&reverse, &[w]), 2)?;
            ops::concatenate(&[crops, mirrored], 0)?
        } else {
            crops
        };
        let hm = self.pose.forward(&input, &mut sapiens2::no_taps)?;
        hm.eval()?;
        Ok(Some(if flip {
            use mlx_rs::ops::indexing::IndexOp;
            (hm.index(..n), Some(hm.index(n..)))
        } else {
            (hm, None)
        }))
    }

    /// MLX + CPU: flip average, argmax and DARK, back to image pixels.
    pub fn decode(
        &self,
        batch: &CropBatch,
        heatmaps: &Array,
        mirrored: Option<&Array>,
    ) -> Result<Vec<BodyEstimate>> {
        let (_, people) = topdown::keypoints(self.pose.config(), &batch.crops, heatmaps, mirrored)?;
        Ok(people
            .into_iter()
            .zip(&batch.boxes)
            .map(|(p, &(bbox, score))| BodyEstimate {
                bbox,
                score,
                keypoints: p.image_px,
                keypoint_scores: p.scores,
            })
            .collect())
    }

    /// Every stage for `img`, with client boxes when given.
    pub fn estimate(&self, img: RgbImage, boxes: Option<&[[f32; 4]]>) -> Result<Vec<BodyEstimate>> {
        let boxes = match boxes {
            Some(b) => b.iter().map(|&b| (b, 1.0)).collect(),
            None => self.detect(&self.prepare_detector_input(img))?,
        };
        let batch = self.prepare_crops(img, &boxes);
        match self.heatmaps(&batch)? {
            Some((hm, mirrored)) => self.decode(&batch, &hm, mirrored.as_ref()),
            None => Ok(Vec::new()),
        }
    }
}
