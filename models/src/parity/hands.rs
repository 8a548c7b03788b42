//! Parity runners of the hand route: the YOLOv8-pose detector and WiLoR.

use std::path::Path;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use super::{input, load_net, read_tensors, FixtureModel, ParityError, Tensors};
use crate::hand_detector::{self, DetectorConfig, HandDetector};
use crate::mano::Mano;
use crate::model_files::read_json;
use crate::nn::host_f32;
use crate::rotation;
use crate::wilor::{Wilor, WilorConfig};

/// The detector fixture: the raw predictions and the detections after
/// threshold and NMS.
pub(super) fn detector(dir: &Path) -> Result<Tensors, ParityError> {
    let cfg: DetectorConfig = read_json(&dir.join("detector_config.json"))?;
    let net = load_net(&dir.join("detector_weights.safetensors"), |w| {
        HandDetector::new(cfg.clone(), w)
    })?;
    let io = read_tensors(&FixtureModel::Detector.io_file(dir))?;
    let image = input(&io, "input.image_letterboxed_f32")?;

    let pred = net.forward(image)?;
    pred.eval()?;
    let rows = cfg.output_rows();
    let mut out = Tensors::new();
    out.insert("output.raw".into(), pred.transpose_axes(&[0, 2, 1])?);

    let first = host_f32(&pred.index(0))?;
    let dets = hand_detector::select_detections(
        &first,
        rows as usize,
        cfg.nc as usize,
        cfg.conf_threshold,
        cfg.iou_threshold,
    );
    let mut flat = Vec::with_capacity(dets.len() * rows as usize);
    for d in &dets {
        flat.extend_from_slice(&d.bbox);
        flat.push(d.score);
        flat.push(d.class as f32);
        flat.extend(d.keypoints.iter().flatten());
    }
    out.insert(
        "output.detections_xyxy_score_cls_kpts".into(),
        Array::from_slice(&flat, &[dets.len() as i32, rows]),
    );
    Ok(out)
}

/// The WiLoR fixture (weights, config, `mano.npz`, inputs): the final
/// outputs and the backbone's estimate before RefineNet.
pub(super) fn wilor(dir: &Path) -> Result<Tensors, ParityError> {
    let cfg: WilorConfig = read_json(&dir.join("wilor_config.json"))?;
    let mano = Mano::from_npz(&dir.join("mano.npz"))?;
    let model = load_net(&dir.join("wilor_weights.safetensors"), |w| {
        Wilor::new(cfg, w, mano)
    })?;
    let io = read_tensors(&FixtureModel::Wilor.io_file(dir))?;
    let crops = input(&io, "input.crops_rgb_u8")?;
    let out = model.forward(crops)?;

    let (global_orient, hand_pose) = rotation::split_axis_angles(&out.rotations)?;
    let mut t = Tensors::new();
    t.insert("output.pred_keypoints_3d".into(), out.keypoints_3d.clone());
    t.insert("output.pred_vertices".into(), out.vertices.clone());
    t.insert("output.pred_cam".into(), out.cam.clone());
    t.insert("output.betas".into(), out.betas.clone());
    t.insert("output.global_orient".into(), global_orient);
    t.insert("output.hand_pose".into(), hand_pose);
    let bb = &out.backbone;
    let p = "intermediate.backbone";
    t.insert(format!("{p}.pred_cam"), bb.cam.clone());
    t.insert(format!("{p}.pred_mano_feats.cam"), bb.cam.clone());
    t.insert(format!("{p}.pred_mano_feats.betas"), bb.betas.clone());
    t.insert(
        format!("{p}.pred_mano_feats.hand_pose"),
        bb.hand_pose_6d.clone(),
    );
    t.insert(format!("{p}.temp_betas"), bb.betas.clone());
    t.insert(
        format!("{p}.temp_global_orient"),
        out.backbone_rotations.index((.., 0..1, .., ..)),
    );
    t.insert(
        format!("{p}.temp_hand_pose"),
        out.backbone_rotations.index((.., 1.., .., ..)),
    );
    // Fixture stores the feature map channels-first.
    t.insert(
        format!("{p}.vit_out"),
        bb.features.transpose_axes(&[0, 3, 1, 2])?,
    );
    Ok(t)
}
