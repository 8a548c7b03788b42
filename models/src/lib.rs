//! posed-models: every network of posed in pure mlx-rs. Arrays in, arrays out;
//! no threads, no I/O beyond reading weight files.
//!
//! - [`hand_detector`]: YOLOv8-pose hand detector (left/right, 21 keypoints)
//! - [`wilor`]: WiLoR 3-D hand pose (ViT backbone + RefineNet)
//! - [`mano`]: the MANO hand model WiLoR drives
//! - [`rtmdet`]: RTMDet person detector (the body route's first stage)
//! - [`sapiens2`]: Sapiens2 whole-body pose (308 keypoints), [`topdown`]: its
//!   crops and heatmap decode
//! - [`sapiens_demo`]: the Sapiens demo's person filter and top-down settings,
//!   shared by RTMDet and Sapiens2
//! - [`body_pipeline`]: person detector → crops → Sapiens2 → keypoints
//! - [`corridorkey`]: CorridorKey green-screen matting (Hiera + heads + refiner)
//! - [`hand_pipeline`]: detector → crops → WiLoR → image space, stage by stage
//! - [`image`], [`camera`]: CPU crops, letterbox and camera conversion
//! - [`nn`], [`rotation`]: blocks shared by the networks
//! - [`checked_weights`], [`npz`], [`torch_checkpoint`]: loading with key and
//!   shape validation; NumPy archives and PyTorch `.pth` files read without
//!   Python
//! - [`random_weights`]: random weights in a published layout, marked synthetic
//! - [`model_files`]: JSON configs and the errors of loading a route's networks
//! - [`parity`]: parity runs against the PyTorch reference outputs (the
//!   networks never import it)

pub mod body_pipeline;
pub mod camera;
pub mod checked_weights;
pub mod corridorkey;
pub mod hand_detector;
pub mod hand_pipeline;
pub mod image;
pub mod mano;
pub mod mano_convert;
pub mod matte_pipeline;
pub mod model_files;
pub mod nn;
pub mod npz;
pub mod parity;
pub mod pickle;
pub mod random_weights;
pub mod resample;
pub mod rotation;
pub mod rtmdet;
pub mod runtime;
pub mod sapiens2;
pub mod sapiens_demo;
pub mod topdown;
pub mod torch_checkpoint;
pub mod wilor;
