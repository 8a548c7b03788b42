//! posed: the pose daemon.

pub mod doctor;
pub mod fixture_cmd;
