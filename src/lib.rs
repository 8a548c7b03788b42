//! posed: the pose daemon.
//!
//! - [`doctor`], [`fixture_cmd`]: the `posed doctor` and `posed fixture` commands
//! - [`proto`]: the generated `posed.v1` gRPC types
//! - [`engine`]: the MLX thread, its latest-wins frame gate, and readiness
//! - [`fanout`]: one producer, many subscribers, drop-oldest per subscriber
//! - [`telemetry`]: per-stage HDR histograms and their exports

pub mod bench;
pub mod bench_grpc;
pub mod client;
pub mod config;
pub mod cpu_profile;
pub mod decode;
pub mod doctor;
pub mod engine;
pub mod fanout;
pub mod fixture_cmd;
pub mod notify;
pub mod post;
pub mod proto;
pub mod recording;
pub mod serve;
pub mod server;
pub mod smoothing;
pub mod sources;
pub mod telemetry;
pub mod weights;
