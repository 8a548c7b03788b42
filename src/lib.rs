//! posed: the pose daemon.

pub mod doctor;
