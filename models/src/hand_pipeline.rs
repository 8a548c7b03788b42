//! The hand route's model work, stage by stage: letterbox → detector → NMS
//! → square crops (left hands mirrored) → WiLoR on all hands of the frame as
//! one batch → outputs un-mirrored and placed in the full image.
//!
//! Each stage is its own call so the caller can time it and keep the CPU
//! stages off the MLX thread.

use mlx_rs::Array;

use crate::camera;
use crate::hand_detector::{self, HandDetector};
use crate::image::{self, HandCrop, RgbImage};
use crate::model_files::{optional_config, required_file, LoadError, ModelFilesError};
use crate::nn::{host_f32, Result};
use crate::rotation;
use std::cell::RefCell;
use std::rc::Rc;

use mlx_rs::error::Exception;

use crate::wilor::{Wilor, NUM_BETAS};

/// Crop side = this × the longer box side (WiLoR's training rescale).
pub const BOX_EXPAND: f32 = 2.5;

/// A hand box in image pixels, from the detector or from the client.
#[derive(Debug, Clone, PartialEq)]
pub struct HandBox {
    /// x1, y1, x2, y2.
    pub bbox: [f32; 4],
    pub is_right: bool,
    /// Detector confidence (1 for client-provided boxes).
    pub score: f32,
    /// Detector keypoints (x, y, visibility) in image pixels; empty for
    /// client-provided boxes.
    pub keypoints_2d: Vec<[f32; 3]>,
}

/// One hand's 3-D estimate, in the user's frame (left hands un-mirrored).
#[derive(Debug, Clone, PartialEq)]
pub struct HandEstimate {
    pub hand: HandBox,
    /// 21 joints, metres, camera-aligned MANO frame relative to the root.
    pub keypoints_3d: Vec<[f32; 3]>,
    /// Mesh vertices, metres, same frame.
    pub vertices: Vec<[f32; 3]>,
    /// Translation of the hand in camera space (metres) for the full image.
    pub cam_t: [f32; 3],
    /// The 21 joints projected into the image (pixels).
    pub keypoints_2d_projected: Vec<[f32; 2]>,
    /// Axis-angle, radians.
    pub global_orient: [f32; 3],
    /// 15 × axis-angle, MANO joint order.
    pub hand_pose: Vec<[f32; 3]>,
    pub betas: Vec<f32>,
    /// The crop's weak-perspective camera [s, tx, ty] (un-mirrored).
    pub crop_cam: [f32; 3],
    /// Focal length (pixels) of the full-image camera `cam_t` assumes.
    /// The full image's camera the translation and projection used: the
    /// caller's, or WiLoR's pseudo camera ([`camera::Intrinsics::pseudo`]).
    pub camera: camera::Intrinsics,
}

pub struct HandPipeline {
    pub detector: Rc<HandDetector>,
    pub wilor: Rc<Wilor>,
    /// The networks as compiled MLX graphs (see [`Self::compile`]).
    compiled: RefCell<Option<Compiled>>,
}

type CompiledFn = Box<dyn FnMut(&[Array]) -> std::result::Result<Vec<Array>, Exception>>;

struct Compiled {
    detector: CompiledFn,
    pose: CompiledFn,
}

/// What the WiLoR model gives for a batch of crops: the network's MANO
/// parameters and camera, and the final MANO pass on them.
pub struct PoseParams {
    /// (B, 16, 3, 3)
    pub rotations: Array,
    /// (B, 10)
    pub betas: Array,
    /// (B, 3) weak-perspective [s, tx, ty]
    pub cam: Array,
    /// (B, 21, 3), metres, relative to the root joint.
    pub keypoints_3d: Array,
    /// (B, 778, 3), metres, same frame.
    pub vertices: Array,
}

impl PoseParams {
    /// WiLoR's network and the final MANO pass as one graph, so that a
    /// frame's whole model runs in one evaluation (and, compiled, as one
    /// traced function). The order is [`Self::from_outputs`]'.
    fn outputs(wilor: &Wilor, crops: &Array) -> std::result::Result<Vec<Array>, Exception> {
        let r = wilor.regress(crops)?;
        let (vertices, keypoints_3d) = wilor.mano().forward(&r.rotations, &r.betas)?;
        Ok(vec![r.rotations, r.betas, r.cam, keypoints_3d, vertices])
    }

    fn from_outputs(outputs: Vec<Array>) -> Self {
        let [rotations, betas, cam, keypoints_3d, vertices] = <[Array; 5]>::try_from(outputs)
            .unwrap_or_else(|o| panic!("the pose graph returns 5 arrays, not {}", o.len()));
        PoseParams {
            rotations,
            betas,
            cam,
            keypoints_3d,
            vertices,
        }
    }

    fn eval(&self) -> Result<()> {
        mlx_rs::transforms::eval([
            &self.rotations,
            &self.betas,
            &self.cam,
            &self.keypoints_3d,
            &self.vertices,
        ])
    }
}

/// The letterboxed detector input and how to map back from it.
pub struct DetectorInput {
    pub pixels: Vec<f32>,
    pub letterbox: image::Letterbox,
}

/// A batch of crops ready for WiLoR.
pub struct CropBatch {
    pub pixels: Vec<f32>,
    pub crops: Vec<HandCrop>,
    pub size: usize,
}

impl DetectorInput {
    /// CPU: the detector's `size`² letterbox of `img`. A free function of the
    /// frame, so it can be made on any thread, ahead of the MLX thread.
    pub fn new(img: RgbImage, size: usize) -> Self {
        let (pixels, letterbox) = image::letterbox(img, size);
        DetectorInput { pixels, letterbox }
    }
}

impl HandPipeline {
    /// The side of the detector's square input.
    pub fn detector_input_size(&self) -> usize {
        self.detector.config().input_size as usize
    }

    /// CPU: the detector's square input.
    pub fn prepare_detector_input(&self, img: RgbImage) -> DetectorInput {
        DetectorInput::new(img, self.detector_input_size())
    }

    /// MLX: detector forward, threshold and NMS with the config's
    /// thresholds; boxes in image pixels, strongest first.
    pub fn detect(&self, input: &DetectorInput) -> Result<Vec<HandBox>> {
        let cfg = self.detector.config();
        self.detect_with(input, cfg.conf_threshold, cfg.iou_threshold)
    }

    /// [`Self::detect`] with a minimum class score and an NMS IoU of the
    /// caller's.
    pub fn detect_with(
        &self,
        input: &DetectorInput,
        conf_threshold: f32,
        iou_threshold: f32,
    ) -> Result<Vec<HandBox>> {
        let cfg = self.detector.config();
        let s = input.letterbox.size as i32;
        let x = Array::from_slice(&input.pixels, &[1, s, s, 3]);
        let pred = match self.compiled.borrow_mut().as_mut() {
            Some(c) => (c.detector)(&[x])?.remove(0),
            None => self.detector.forward(&x)?,
        };
        let dets = hand_detector::select_detections(
            &host_f32(&pred)?,
            cfg.output_rows() as usize,
            cfg.nc as usize,
            conf_threshold,
            iou_threshold,
        );
        let lb = &input.letterbox;
        Ok(dets
            .into_iter()
            .map(|d| {
                let [x1, y1] = lb.to_image(d.bbox[0], d.bbox[1]);
                let [x2, y2] = lb.to_image(d.bbox[2], d.bbox[3]);
                HandBox {
                    bbox: [x1, y1, x2, y2],
                    is_right: d.class == 1,
                    score: d.score,
                    keypoints_2d: d
                        .keypoints
                        .iter()
                        .map(|k| {
                            let [x, y] = lb.to_image(k[0], k[1]);
                            [x, y, k[2]]
                        })
                        .collect(),
                }
            })
            .collect())
    }

    /// WiLoR's stand-in camera for an image of `width × height`.
    pub fn pseudo_camera(&self, width: usize, height: usize) -> camera::Intrinsics {
        let cfg = self.wilor.config();
        camera::Intrinsics::pseudo(
            cfg.focal_length,
            cfg.image_size as f32,
            width as f32,
            height as f32,
        )
    }

    /// CPU: one crop per hand, left hands mirrored.
    pub fn prepare_crops(&self, img: RgbImage, hands: &[HandBox]) -> CropBatch {
        let size = self.wilor.config().image_size as usize;
        let crops: Vec<HandCrop> = hands
            .iter()
            .map(|h| HandCrop::from_box(h.bbox, h.is_right, BOX_EXPAND))
            .collect();
        let mut pixels = Vec::with_capacity(crops.len() * size * size * 3);
        for c in &crops {
            pixels.extend(image::crop_hand(img, c, size));
        }
        CropBatch {
            pixels,
            crops,
            size,
        }
    }

    /// MLX: WiLoR on every crop as one batch, then CPU: un-mirror and place
    /// each hand in the full image of `width × height`.
    pub fn estimate(
        &self,
        batch: &CropBatch,
        hands: &[HandBox],
        width: usize,
        height: usize,
    ) -> Result<Vec<HandEstimate>> {
        match self.regress(batch)? {
            Some(r) => self.mesh(&r, batch, hands, &self.pseudo_camera(width, height)),
            None => Ok(Vec::new()),
        }
    }

    /// MLX: the WiLoR model on every crop as one batch (the network and the
    /// final MANO pass), evaluated at once; None for no crops.
    pub fn regress(&self, batch: &CropBatch) -> Result<Option<PoseParams>> {
        let n = batch.crops.len();
        if n == 0 {
            return Ok(None);
        }
        let s = batch.size as i32;
        let crops = Array::from_slice(&batch.pixels, &[n as i32, s, s, 3]);
        let outputs = match self.compiled.borrow_mut().as_mut() {
            Some(c) => (c.pose)(&[crops])?,
            None => PoseParams::outputs(&self.wilor, &crops)?,
        };
        let p = PoseParams::from_outputs(outputs);
        p.eval()?;
        Ok(Some(p))
    }

    pub fn is_compiled(&self) -> bool {
        self.compiled.borrow().is_some()
    }

    /// From now on run the detector and WiLoR's network as compiled MLX
    /// graphs: each is traced once per input shape (WiLoR: per batch size)
    /// and its elementwise chains are fused, instead of launching op by op.
    /// The weights are constants of the graphs.
    ///
    /// Every array the networks derive from their weights at load (folded
    /// BatchNorms, transposed kernels, casts to the pose dtype) is still a
    /// lazy expression until something evaluates it. A trace would take
    /// those expressions into the graph and redo them on every call, so one
    /// eager pass on blank inputs evaluates them first.
    pub fn compile(&self) -> Result<()> {
        self.evaluate_weights()?;
        let detector = self.detector.clone();
        let detect = move |args: &[Array]| -> std::result::Result<Vec<Array>, Exception> {
            Ok(vec![detector.forward(&args[0])?])
        };
        let wilor = self.wilor.clone();
        let pose = move |args: &[Array]| PoseParams::outputs(&wilor, &args[0]);
        use mlx_rs::transforms::compile::compile;
        *self.compiled.borrow_mut() = Some(Compiled {
            detector: Box::new(compile(detect, false)),
            pose: Box::new(compile(pose, false)),
        });
        Ok(())
    }

    /// Evaluates both networks once, eagerly, on blank inputs: afterwards
    /// every weight and every array derived from one holds its values.
    fn evaluate_weights(&self) -> Result<()> {
        let d = self.detector.config().input_size;
        let c = self.wilor.config().image_size;
        let detections = self
            .detector
            .forward(&mlx_rs::ops::zeros::<f32>(&[1, d, d, 3])?)?;
        let mut outputs =
            PoseParams::outputs(&self.wilor, &mlx_rs::ops::zeros::<f32>(&[1, c, c, 3])?)?;
        outputs.push(detections);
        mlx_rs::transforms::eval(&outputs)
    }

    /// CPU: the model's outputs back on the host, each hand un-mirrored and
    /// placed in the full image seen by camera `k`.
    pub fn mesh(
        &self,
        r: &PoseParams,
        batch: &CropBatch,
        hands: &[HandBox],
        k: &camera::Intrinsics,
    ) -> Result<Vec<HandEstimate>> {
        let n = batch.crops.len();
        let kp = host_f32(&r.keypoints_3d)?;
        let verts = host_f32(&r.vertices)?;
        let cams = host_f32(&r.cam)?;
        let betas = host_f32(&r.betas)?;
        // Axis-angles are computed on the host from the evaluated rotations.
        let (global, pose) = rotation::split_axis_angles(&r.rotations)?;
        let global = host_f32(&global)?;
        let pose = host_f32(&pose)?;

        let nv = self.wilor.mano().num_vertices as usize;
        let mut estimates = Vec::with_capacity(n);
        for (i, (crop, hand)) in batch.crops.iter().zip(hands).enumerate() {
            let placed = place_hand(crop, &cams[i * 3..i * 3 + 3], &kp[i * 63..(i + 1) * 63], k);
            // Vertices and rotations are mirrored back as the joints are:
            // x → −x; rotations (x, y, z) → (x, −y, −z).
            let sign = mirror_sign(crop);
            let point = |p: &[f32]| [sign * p[0], p[1], p[2]];
            let rot = |r: &[f32]| [r[0], sign * r[1], sign * r[2]];
            let vertices = verts[i * nv * 3..(i + 1) * nv * 3]
                .chunks_exact(3)
                .map(point)
                .collect();
            estimates.push(HandEstimate {
                hand: hand.clone(),
                keypoints_3d: placed.keypoints_3d,
                vertices,
                cam_t: placed.cam_t,
                keypoints_2d_projected: placed.keypoints_2d,
                global_orient: rot(&global[i * 3..i * 3 + 3]),
                hand_pose: pose[i * 45..(i + 1) * 45]
                    .chunks_exact(3)
                    .map(rot)
                    .collect(),
                betas: betas[i * NUM_BETAS as usize..(i + 1) * NUM_BETAS as usize].to_vec(),
                crop_cam: placed.crop_cam,
                camera: *k,
            });
        }
        Ok(estimates)
    }
}

/// One hand's crop camera and joints in the user's frame, placed in the full
/// image.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The crop's weak-perspective camera [s, tx, ty], un-mirrored.
    pub crop_cam: [f32; 3],
    /// Translation of the hand in camera space for the full image.
    pub cam_t: [f32; 3],
    /// The joints, un-mirrored, relative to the root.
    pub keypoints_3d: Vec<[f32; 3]>,
    /// The joints projected into the image (pixels).
    pub keypoints_2d: Vec<[f32; 2]>,
}

/// −1 for a mirrored (left-hand) crop, whose outputs describe the mirror
/// image: x coordinates and the camera's tx change sign going back.
fn mirror_sign(crop: &HandCrop) -> f32 {
    if crop.mirrored {
        -1.0
    } else {
        1.0
    }
}

/// CPU: the network's camera `net_cam` ([s, tx, ty]) and joints
/// `net_keypoints` (x, y, z, …) for `crop`, which describe the mirror image
/// for a left hand, un-mirrored and placed in the full image seen by camera
/// `k`: WiLoR-mini's post-processing (`cam_crop_to_full`, then perspective
/// projection).
pub fn place_hand(
    crop: &HandCrop,
    net_cam: &[f32],
    net_keypoints: &[f32],
    k: &camera::Intrinsics,
) -> Placement {
    let sign = mirror_sign(crop);
    let keypoints_3d: Vec<[f32; 3]> = net_keypoints
        .chunks_exact(3)
        .map(|p| [sign * p[0], p[1], p[2]])
        .collect();
    let crop_cam = [net_cam[0], sign * net_cam[1], net_cam[2]];
    let cam_t = camera::cam_crop_to_full(crop_cam, crop.centre, crop.side, k);
    let keypoints_2d = keypoints_3d
        .iter()
        .map(|&p| camera::project(p, cam_t, k))
        .collect();
    Placement {
        crop_cam,
        cam_t,
        keypoints_3d,
        keypoints_2d,
    }
}

/// Where the hand route's files are.
#[derive(Debug, Clone)]
pub struct HandModelFiles {
    pub detector_config: crate::hand_detector::DetectorConfig,
    pub detector_weights: std::path::PathBuf,
    pub wilor_config: crate::wilor::WilorConfig,
    pub wilor_weights: std::path::PathBuf,
    pub mano: std::path::PathBuf,
}

impl HandModelFiles {
    /// The hand route's files in `dir` (`detector_weights.safetensors`,
    /// `wilor_weights.safetensors`, `mano.npz`); `detector_config.json` and
    /// `wilor_config.json` there override the published sizes.
    pub fn from_dir(dir: &std::path::Path) -> std::result::Result<Self, ModelFilesError> {
        let need = |name: &str| {
            required_file(
                dir,
                name,
                "the hand route needs detector_weights.safetensors, \
                 wilor_weights.safetensors and mano.npz",
            )
        };
        Ok(HandModelFiles {
            detector_config: optional_config(
                dir,
                "detector_config.json",
                crate::hand_detector::DetectorConfig::yolov8m,
            )?,
            detector_weights: need("detector_weights.safetensors")?,
            wilor_config: optional_config(
                dir,
                "wilor_config.json",
                crate::wilor::WilorConfig::vit_h,
            )?,
            wilor_weights: need("wilor_weights.safetensors")?,
            mano: need("mano.npz")?,
        })
    }
}

impl HandPipeline {
    /// Loads and validates both networks and MANO. `synthetic` in the result
    /// says whether any weight file (or MANO) is marked as random.
    pub fn load(files: &HandModelFiles) -> std::result::Result<(Self, bool), LoadError> {
        Self::load_with(files, None)
    }

    /// Like [`load`](Self::load), with WiLoR's float tensors cast to
    /// `pose_dtype` (bf16/fp16 backbone; MANO stays float32).
    pub fn load_with(
        files: &HandModelFiles,
        pose_dtype: Option<mlx_rs::Dtype>,
    ) -> std::result::Result<(Self, bool), LoadError> {
        let dw = crate::checked_weights::Weights::from_file(&files.detector_weights)?;
        let detector = HandDetector::new(files.detector_config.clone(), &dw)?;
        dw.finish()?;
        let mut ww = crate::checked_weights::Weights::from_file(&files.wilor_weights)?;
        if let Some(dtype) = pose_dtype {
            ww = ww.with_float_dtype(dtype);
        }
        let mano = crate::mano::Mano::from_npz(&files.mano)?;
        let synthetic = dw.is_synthetic() || ww.is_synthetic() || mano.synthetic;
        let wilor = Wilor::new(files.wilor_config.clone(), &ww, mano)?;
        ww.finish()?;
        Ok((
            HandPipeline {
                detector: Rc::new(detector),
                wilor: Rc::new(wilor),
                compiled: RefCell::new(None),
            },
            synthetic,
        ))
    }
}
