//! Blocks shared by the networks. All tensors are channels-last (NHWC), all
//! convolution kernels OHWI, all Linear weights `(out, in)` as in PyTorch.
//! Everything is re-exported here: `crate::nn::Linear`, `crate::nn::select`.
//!
//! - [`layers`]: [`Linear`] (dense or 4-bit), [`Conv2d`], [`ConvTranspose2d`],
//!   [`ConvBnSilu`]; norms: [`BatchNorm`] (eval), [`LayerNorm`], [`RmsNorm`],
//!   [`instance_norm`]; activations [`silu`], [`relu`], [`gelu`]
//! - [`ops`]: [`upsample_nearest_2x`], [`max_pool_same`],
//!   [`grid_sample_zeros`]; [`select`] (an entry of an axis as a view) and
//!   [`scalar`] (a constant in a given dtype)
//! - [`blocks`]: the vision transformer's [`VitBlock`] and its [`Attention`]
//! - [`host`]: [`host_f32`], an array's values on the host
//!
//! Blocks only one network uses live beside it (the YOLO blocks in
//! [`crate::hand_detector`]).

pub mod blocks;
pub mod host;
pub mod layers;
pub mod ops;

pub use blocks::{Attention, Mlp, VitBlock};
pub use host::host_f32;
pub use layers::{
    gelu, instance_norm, relu, silu, BatchNorm, Conv2d, ConvBnSilu, ConvTranspose2d, LayerNorm,
    Linear, RmsNorm,
};
pub use ops::{grid_sample_zeros, max_pool_same, scalar, select, upsample_nearest_2x};

pub type Result<T> = std::result::Result<T, mlx_rs::error::Exception>;

#[cfg(test)]
mod test_data {
    /// Deterministic test values in `[-50, 50] · scale`.
    pub fn ramp(n: i32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * scale)
            .collect()
    }
}
