//! posed: the pose daemon.
//!
//! - [`daemon`]: `posed serve`, the composition root (config → model files →
//!   routes → engine → server)
//! - [`config`]: settings from defaults, TOML, environment and flags
//! - [`routes`]: one module per route (hands, body, matte): loading, CPU
//!   preparation, timed stages, warm-up, per-stream state, events
//! - [`engine`]: the MLX thread, the prep thread and their latest-wins
//!   gates, and readiness; knows no route
//! - [`server`]: gRPC lifecycle and health, one file per RPC family, the
//!   post loop
//! - [`events`]: what every route's event shares; [`tracking`]: track ids
//! - [`fanout`]: one producer, many subscribers, drop-oldest per subscriber
//! - [`telemetry`]: per-stage HDR histograms and their exports
//! - [`sources`]: replay and camera (capture itself is the `posed-capture`
//!   crate); [`cameras`]: `posed cameras`; [`decode`]: pushed images;
//!   [`recording`]: frames to disk in the replay layout
//! - [`smoothing`]: One Euro filters for subscribers
//! - [`weights`]: finding, fetching, converting and synthesising model files
//! - [`bench`], [`bench_grpc`], [`cpu_profile`]: the latency harnesses
//! - [`client`]: the CLI's gRPC client (`posed subscribe`, `posed push`)
//! - [`doctor`], [`fixture_cmd`]: `posed doctor` and `posed fixture`
//! - [`notify`]: systemd notifications; [`proto`]: the generated `posed.v1`
//!   types

pub mod bench;
pub mod bench_grpc;
pub mod cameras;
pub mod client;
pub mod config;
pub mod cpu_profile;
pub mod daemon;
pub mod decode;
pub mod doctor;
pub mod engine;
pub mod events;
pub mod fanout;
pub mod fixture_cmd;
pub mod notify;
pub mod proto;
pub mod recording;
pub mod routes;
pub mod server;
pub mod smoothing;
pub mod sources;
pub mod telemetry;
pub mod tracking;
pub mod weights;
