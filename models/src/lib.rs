//! posed-models: every network of posed in pure mlx-rs. Arrays in, arrays out;
//! no threads, no I/O beyond reading weight files.
//!
//! Networks:
//! - [`hand_detector`]: YOLOv8-pose hand detector (left/right, 21 keypoints)
//! - [`wilor`]: WiLoR 3-D hand pose (ViT backbone + RefineNet)
//! - [`mano`]: the MANO hand model WiLoR drives
//! - [`rtmdet`]: RTMDet person detector with mmdet's letterbox and post-processing
//! - [`sapiens2`]: Sapiens2 whole-body pose (308 keypoints)
//! - [`corridorkey`]: CorridorKey green-screen matting (Hiera + heads + refiner)
//!
//! Routes, stage by stage, and their glue:
//! - [`hand_pipeline`]: detector → crops → WiLoR → image space
//! - [`body_pipeline`]: person detector → crops → Sapiens2 → keypoints
//! - [`matte_pipeline`]: frame and hint → CorridorKey → alpha and foreground
//! - [`topdown`]: the body route's person crops and heatmap decode
//! - [`sapiens_demo`]: the Sapiens demo's person filter and top-down settings
//!
//! Shared building blocks:
//! - [`nn`]: layers, ops, transformer blocks and host read-back
//! - [`rotation`]: 6-D → rotation matrix → axis-angle
//! - [`camera`]: the crop's weak-perspective camera → the full image's camera
//! - [`image`]: CPU letterbox and hand crops
//! - [`resample`]: antialiased bilinear resize of MLX arrays
//! - [`runtime`]: the loaded MLX: version, devices, memory, a self-check
//!
//! Files:
//! - [`checked_weights`]: weights resolved by name, every key, shape and dtype checked
//! - [`random_weights`]: random weights in a published layout, marked synthetic
//! - [`model_files`]: a route's models folder and JSON configs; loading errors
//! - [`npz`]: NumPy `.npy` and `.npz` read and written without Python
//! - [`pickle`]: a pickle reader that runs no pickled code
//! - [`torch_checkpoint`]: PyTorch `.pth` checkpoints read and written
//! - [`mano_convert`]: the official MANO pickle → `mano.npz`
//!
//! Checks:
//! - [`parity`]: runs against the PyTorch reference outputs (the networks never
//!   import it)

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

// The build scripts' link arguments, compiled here only for their tests.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../link_mlx.rs"]
mod link_mlx;
