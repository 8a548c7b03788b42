//! Model weights: the manifests of published files, the Hugging Face hub
//! cache and downloads, MANO conversion, synthetic weights, and how the
//! daemon finds its files at start.
//!
//! - [`manifest`]: `models/manifests/*.toml`, built into the binary
//! - [`hub`]: downloads into the standard hub cache, resumed and verified
//! - [`release`]: GitHub release assets, checked against their sha256 sidecar
//! - [`resolve`]: configured paths → cache → fetch → one clear error
//! - [`synth`]: `posed weights synth`
//! - [`cmd`]: the other `posed weights` commands

pub mod cmd;
pub mod hub;
pub mod manifest;
pub mod release;
pub mod resolve;
pub mod synth;
