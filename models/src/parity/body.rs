//! Parity runners of the body route: RTMDet and its post-processing,
//! Sapiens2, and the top-down crops and heatmap decode between them.

use std::path::Path;

use mlx_rs::{Array, Dtype};

use super::{input, load_net, read_tensors, FixtureModel, ParityError, Tensors};
use crate::model_files::read_json;
use crate::nn::host_f32;
use crate::rtmdet::{letterbox_bgr, person_filter, postprocess, Detection, Rtmdet, RtmdetConfig};
use crate::sapiens2::{bgr_to_rgb, Sapiens2Config, Sapiens2Pose};
use crate::topdown::{
    crop_persons, keypoints, person_boxes, HeatmapPeak, PersonCrop, PersonKeypoints,
};

fn rtmdet_net(dir: &Path) -> Result<Rtmdet, ParityError> {
    let cfg: RtmdetConfig = read_json(&dir.join("rtmdet_config.json"))?;
    load_net(&dir.join("rtmdet_weights.safetensors"), |w| {
        Rtmdet::new(cfg, w)
    })
}

/// The RTMDet post-processing fixture (`rtmdet_post_io.safetensors`):
/// our letterbox of the image, and mmdet's post-processing plus the demo's
/// person filter on the network's output for the reference letterbox (so
/// the two stages are checked each on its own).
pub(super) fn rtmdet_post(dir: &Path) -> Result<Tensors, ParityError> {
    let net = rtmdet_net(dir)?;
    let io = read_tensors(&FixtureModel::RtmdetPost.io_file(dir))?;
    let get = |name: &str| input(&io, name);
    let image = get("input.image_bgr_u8")?;
    let (h, w) = (image.dim(0) as usize, image.dim(1) as usize);
    let size = net.config().input_size as usize;
    let (ours, scale_factor) = letterbox_bgr(image.as_slice::<u8>(), w, h, size);
    let mut t = Tensors::new();
    t.insert(
        "intermediate.letterboxed_bgr_u8".into(),
        Array::from_slice(&ours, &[size as i32, size as i32, 3]),
    );
    t.insert(
        "intermediate.scale_factor_wh".into(),
        Array::from_slice(&[scale_factor[0] as f32, scale_factor[1] as f32], &[2]),
    );

    let reference = get("intermediate.letterboxed_bgr_u8")?.expand_dims(0)?;
    let out = net.forward(&reference)?;
    let (letterbox, image_dets) = postprocess(&out, net.config(), scale_factor)?;
    let keep = person_filter(&image_dets, &net.config().demo);
    let rows = |d: &[Detection]| {
        let flat: Vec<f32> = d
            .iter()
            .flat_map(|d| [d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3], d.score])
            .collect();
        Array::from_slice(&flat, &[d.len() as i32, 5])
    };
    let pick = |d: &[Detection]| keep.iter().map(|&i| d[i]).collect::<Vec<_>>();
    t.insert("output.dets_letterbox_xyxy_score".into(), rows(&letterbox));
    t.insert("output.dets_image_xyxy_score".into(), rows(&image_dets));
    t.insert(
        "output.person_boxes_letterbox_xyxy_score".into(),
        rows(&pick(&letterbox)),
    );
    t.insert(
        "output.person_boxes_image_xyxy_score".into(),
        rows(&pick(&image_dets)),
    );
    let keep: Vec<i32> = keep.iter().map(|&i| i as i32).collect();
    t.insert(
        "output.person_keep_index".into(),
        Array::from_slice(&keep, &[keep.len() as i32]),
    );
    Ok(t)
}

/// The RTMDet fixture in `dir` (`rtmdet_config.json`,
/// `rtmdet_weights.safetensors`, `rtmdet_io.safetensors`): the backbone's,
/// the neck's and the head's outputs.
pub(super) fn rtmdet(dir: &Path) -> Result<Tensors, ParityError> {
    let net = rtmdet_net(dir)?;
    let io = read_tensors(&FixtureModel::Rtmdet.io_file(dir))?;
    let image = input(&io, "input.letterboxed_bgr_u8")?;
    let out = net.forward(image)?;
    let mut t = Tensors::new();
    for (name, a) in ["c3", "c4", "c5"].iter().zip(&out.backbone) {
        t.insert(format!("intermediate.backbone_{name}"), a.clone());
    }
    for (name, a) in ["p3", "n4", "n5"].iter().zip(&out.neck) {
        t.insert(format!("intermediate.neck_{name}"), a.clone());
    }
    for (l, (c, r)) in out.cls.iter().zip(&out.reg).enumerate() {
        t.insert(format!("output.cls_l{l}"), c.clone());
        t.insert(format!("output.reg_l{l}"), r.clone());
    }
    // Evaluate here so an MLX error surfaces in this call.
    for a in t.values() {
        a.eval()?;
    }
    Ok(t)
}

/// The Sapiens2 config of the body fixture in `dir`.
pub fn sapiens2_config(dir: &Path) -> Result<Sapiens2Config, ParityError> {
    Ok(read_json(&dir.join("sapiens2_pose_config.json"))?)
}

/// The Sapiens2 network of the body fixture in `dir`, in float32.
pub fn sapiens2_net(dir: &Path) -> Result<Sapiens2Pose, ParityError> {
    let cfg = sapiens2_config(dir)?;
    load_net(&dir.join("sapiens2_pose_weights.safetensors"), |w| {
        Sapiens2Pose::new(cfg, w)
    })
}

/// The Sapiens2 network fixture (`sapiens2_pose_io.safetensors`): the BGR
/// demo crops through the network, every stage the fixture names.
pub(super) fn sapiens2(dir: &Path) -> Result<Tensors, ParityError> {
    let net = sapiens2_net(dir)?;
    let io = read_tensors(&FixtureModel::Sapiens2.io_file(dir))?;
    let crops = input(&io, "input.crops_bgr_u8")?;
    let rgb = bgr_to_rgb(crops)?;
    let mut t = Tensors::new();
    let mut keep = |name: &str, a: &Array| {
        let key = match name {
            "featmap" => "output.featmap".to_string(),
            n => format!("intermediate.{n}"),
        };
        t.insert(key, a.as_dtype(Dtype::Float32).expect("f32 cast"));
    };
    let heatmaps = net.forward(&rgb, &mut keep)?;
    t.insert("output.heatmaps".into(), heatmaps);
    let rope = net.backbone.rope();
    t.insert(
        "intermediate.rope_sin".into(),
        rope.sin.as_dtype(Dtype::Float32)?,
    );
    t.insert(
        "intermediate.rope_cos".into(),
        rope.cos.as_dtype(Dtype::Float32)?,
    );
    let periods = net.backbone.periods();
    t.insert(
        "intermediate.rope_periods".into(),
        Array::from_slice(periods, &[periods.len() as i32]),
    );
    for a in t.values() {
        a.eval()?;
    }
    Ok(t)
}

/// The top-down fixture (`sapiens2_topdown_io.safetensors`): person
/// filter, crops, and the decode of the stored heatmaps with and without
/// the flip test, plus the whole-image fallback.
pub(super) fn topdown(dir: &Path) -> Result<Tensors, ParityError> {
    let cfg = sapiens2_config(dir)?;
    let io = read_tensors(&FixtureModel::Sapiens2Topdown.io_file(dir))?;
    let get = |name: &str| input(&io, name);
    let image = get("input.image_bgr_u8")?;
    let (h, w) = (image.dim(0) as usize, image.dim(1) as usize);
    let pixels = image.as_slice::<u8>();
    let input_hw = cfg.input_size_hw;
    let mut t = Tensors::new();

    let candidates = |name: &str| -> Result<Vec<Detection>, ParityError> {
        let rows = get(name)?;
        let v = host_f32(rows)?;
        // x1 y1 x2 y2 score label; the demo keeps label 0 (person).
        Ok(v.chunks_exact(6)
            .filter(|r| r[5] == 0.0)
            .map(|r| Detection {
                bbox: [r[0], r[1], r[2], r[3]],
                score: r[4],
            })
            .collect())
    };
    let boxes = person_boxes(&candidates("input.det_boxes_xyxy_score_label")?, &cfg, w, h);
    let crops: Vec<PersonCrop> = boxes
        .iter()
        .map(|&b| PersonCrop::from_box(b, cfg.demo.bbox_padding, input_hw))
        .collect();
    let n = crops.len() as i32;
    let flat = |v: Vec<f32>, shape: &[i32]| Array::from_slice(&v, shape);
    t.insert(
        "intermediate.person_boxes_xyxy".into(),
        flat(boxes.iter().flatten().copied().collect(), &[n, 4]),
    );
    t.insert(
        "intermediate.bbox_center".into(),
        flat(crops.iter().flat_map(|c| c.center).collect(), &[n, 2]),
    );
    t.insert(
        "intermediate.bbox_scale".into(),
        flat(crops.iter().flat_map(|c| c.scale).collect(), &[n, 2]),
    );
    t.insert(
        "intermediate.warp_matrix".into(),
        flat(
            crops
                .iter()
                .flat_map(|c| c.warp_matrix(input_hw).into_iter().flatten())
                .collect(),
            &[n, 2, 3],
        ),
    );
    let crop_shape = [n, input_hw[0], input_hw[1], 3];
    t.insert(
        "intermediate.crops_bgr_u8".into(),
        Array::from_slice(&crop_persons(pixels, w, h, &crops, input_hw), &crop_shape),
    );

    let heatmaps = get("input.heatmaps")?;
    let mirrored = get("input.heatmaps_mirrored_crop")?;
    for (suffix, mirror) in [("", Some(mirrored)), ("_noflip", None)] {
        let (peaks, people) = keypoints(&cfg, &crops, heatmaps, mirror)?;
        let k = cfg.head.num_keypoints;
        if mirror.is_some() {
            let pts = |f: fn(&HeatmapPeak) -> [f32; 2]| {
                flat(peaks.iter().flatten().flat_map(f).collect(), &[n, k, 2])
            };
            t.insert("intermediate.heatmap_argmax_xy".into(), pts(|p| p.argmax));
            t.insert("intermediate.heatmap_dark_xy".into(), pts(|p| p.refined));
        }
        let per = |f: &dyn Fn(&PersonKeypoints) -> Vec<f32>, shape: &[i32]| {
            flat(people.iter().flat_map(f).collect(), shape)
        };
        t.insert(
            format!("output.keypoints_crop{suffix}"),
            per(
                &|p| p.input_px.iter().flatten().copied().collect(),
                &[n, k, 2],
            ),
        );
        t.insert(
            format!("output.keypoints_image{suffix}"),
            per(
                &|p| p.image_px.iter().flatten().copied().collect(),
                &[n, k, 2],
            ),
        );
        t.insert(
            format!("output.keypoint_scores{suffix}"),
            per(&|p| p.scores.clone(), &[n, k]),
        );
    }

    let fallback = person_boxes(
        &candidates("input.det_boxes_fallback_xyxy_score_label")?,
        &cfg,
        w,
        h,
    );
    let fb: Vec<PersonCrop> = fallback
        .iter()
        .map(|&b| PersonCrop::from_box(b, cfg.demo.bbox_padding, input_hw))
        .collect();
    let m = fb.len() as i32;
    t.insert(
        "intermediate.fallback_bbox_center".into(),
        flat(fb.iter().flat_map(|c| c.center).collect(), &[m, 2]),
    );
    t.insert(
        "intermediate.fallback_bbox_scale".into(),
        flat(fb.iter().flat_map(|c| c.scale).collect(), &[m, 2]),
    );
    t.insert(
        "intermediate.fallback_crop_bgr_u8".into(),
        Array::from_slice(
            &crop_persons(pixels, w, h, &fb, input_hw),
            &[m, input_hw[0], input_hw[1], 3],
        ),
    );
    Ok(t)
}
