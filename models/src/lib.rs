//! posed-models: every network of posed in pure mlx-rs. Arrays in, arrays out;
//! no threads, no I/O beyond reading weight files.

pub mod runtime;
