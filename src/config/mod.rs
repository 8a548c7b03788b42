//! Configuration: built-in defaults, then a TOML file, then `POSED_*`
//! environment variables, then command-line flags. Every error names the
//! key, where its value came from, and why it is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::Deserialize;

mod choices;

pub use choices::*;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub hands: HandsConfig,
    pub body: BodyConfig,
    pub matte: MatteConfig,
    pub replay: ReplayConfig,
    pub camera: CameraConfig,
    pub recording: RecordingConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Record pushed and camera frames here; empty = off.
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Folder of PNG/JPEG images or a recording; empty = no replay.
    pub dir: String,
    /// "original" (recorded timestamps, else `fps`) or "fast".
    pub pace: ReplayPace,
    pub fps: f64,
    /// Start over at the end.
    pub repeat: bool,
    /// Longest wait between two recorded frames (pace "original"): a gap
    /// in a recording, or a corrupt timestamp, is cut to this.
    pub max_gap_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    pub enabled: bool,
    /// A unique id, a position in `posed cameras`' list ("0"), or part of
    /// the name; empty = the first camera.
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Pixel formats to accept, best first; empty = the platform's order.
    pub formats: Vec<posed_capture::PixelFormat>,
    /// Hold the frame rate in the dark instead of letting auto-exposure
    /// lengthen frames.
    pub pin_frame_rate: bool,
    /// The camera's calibration at width × height, in pixels, for metric
    /// 3-D hands; all 0 = unknown (WiLoR's pseudo camera).
    pub fx: f32,
    pub fy: f32,
    pub cx: f32,
    pub cy: f32,
}

impl CameraConfig {
    /// The configured intrinsics; `None` when all four are 0.
    pub fn intrinsics(
        &self,
    ) -> Result<Option<posed_models::camera::Intrinsics>, posed_models::camera::InvalidIntrinsics>
    {
        if [self.fx, self.fy, self.cx, self.cy] == [0.0; 4] {
            return Ok(None);
        }
        let (w, h) = (self.width as usize, self.height as usize);
        posed_models::camera::Intrinsics::checked(self.fx, self.fy, self.cx, self.cy, w, h)
            .map(Some)
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            dir: String::new(),
            pace: ReplayPace::Original,
            fps: 30.0,
            repeat: false,
            max_gap_ms: 2000,
        }
    }
}

/// The longest time setting: a day, far beyond any sensible value, small
/// enough that no deadline arithmetic overflows.
const MAX_MILLIS: u64 = 86_400_000;

/// Limits of `[camera]`: larger than any camera offers, small enough that a
/// typo cannot ask the converters for gigabytes.
const MAX_CAMERA_SIDE: u32 = 16384;
const MAX_CAMERA_FPS: u32 = 1000;

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            enabled: false,
            device: String::new(),
            width: 640,
            height: 480,
            fps: 30,
            formats: Vec::new(),
            pin_frame_rate: true,
            fx: 0.0,
            fy: 0.0,
            cx: 0.0,
            cy: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC on TCP; empty to disable.
    pub listen: String,
    /// gRPC on a Unix socket; empty to disable.
    pub socket: String,
    /// Allow `listen` and `metrics` on a non-loopback address.
    pub allow_remote: bool,
    /// Prometheus `/metrics` over HTTP; empty to disable.
    pub metrics: String,
    pub max_image_pixels: u64,
    /// Images more elongated than this (long side / short side) are refused.
    pub max_image_aspect_ratio: f64,
    /// A frame still running after this long is abandoned between two
    /// stages with DEADLINE_EXCEEDED (0 = no limit).
    pub max_frame_ms: u64,
    /// Permissions of the Unix socket, octal ("0600": the owner only).
    pub socket_mode: String,
    /// HTTP/2 pings to idle clients every this often; a client that does
    /// not answer within `keepalive_timeout_ms` is dropped (0 = off).
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    /// A file holding the bearer token that clients on a non-loopback
    /// `listen` address must send (`authorization: Bearer <token>`).
    pub token_file: String,
    pub subscriber_queue: usize,
    pub max_waiting_pushes: usize,
    pub shutdown_deadline_ms: u64,
    /// Cap on the freed buffers MLX keeps for reuse, in MiB (0 = MLX's
    /// default, which may grow to most of the device's memory).
    pub mlx_cache_limit_mb: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandsConfig {
    /// Run the hand route (on by default).
    pub enabled: bool,
    /// Folder with `detector_weights.safetensors`, `wilor_weights.safetensors`
    /// and `mano.npz` (and optionally `detector_config.json`,
    /// `wilor_config.json`; the published sizes otherwise).
    pub models_dir: String,
    /// Published pose model variant to fetch and load: "f32" or "int4".
    pub variant: HandVariant,
    /// A `mano.npz` or the official `MANO_RIGHT.pkl`; empty = the fetched one.
    pub mano: String,
    /// Run the detector and WiLoR as compiled MLX graphs: "auto" (on a
    /// GPU), "on", "off".
    pub compile: Compile,
    /// Report sides as the user's for a mirrored (selfie) camera.
    pub mirror: bool,
    /// At most this many detected hands per frame, strongest first.
    pub max_hands: usize,
    /// The hand detector's minimum class score (0..1) and the IoU above
    /// which its NMS drops the weaker of two boxes.
    pub conf_threshold: f32,
    pub iou_threshold: f32,
    /// Frames a hand track survives without a detection before it ends.
    pub max_coast_frames: u32,
    /// A source that sends no frame for this long ends its hand tracks (a
    /// hand that comes back gets a new id).
    pub track_timeout_ms: u64,
    /// On a stream, follow each hand from its previous keypoints and skip
    /// the detector while every hand is followed.
    pub tracking: bool,
    /// A followed hand whose tracking confidence falls below this (0..1) is
    /// dropped, and the next frame runs the detector.
    pub min_tracking_confidence: f32,
    /// While hands are followed, the detector still runs every this many
    /// frames to find new hands; 1 = every frame.
    pub redetect_interval: u32,
    /// Only the detector: boxes, sides, its 2-D keypoints; no WiLoR.
    pub detector_only: bool,
    /// One Euro smoothing for subscribers that do not say (they can).
    pub smoothing: bool,
    pub smoothing_min_cutoff: f64,
    pub smoothing_beta: f64,
    pub smoothing_d_cutoff: f64,
}

impl Default for HandsConfig {
    fn default() -> Self {
        let p = crate::smoothing::OneEuroParams::default();
        HandsConfig {
            enabled: true,
            models_dir: String::new(),
            variant: HandVariant::F32,
            mano: String::new(),
            compile: Compile::Auto,
            mirror: false,
            max_hands: 4,
            conf_threshold: 0.3,
            iou_threshold: 0.5,
            max_coast_frames: 3,
            track_timeout_ms: 2000,
            tracking: true,
            min_tracking_confidence: 0.5,
            redetect_interval: 10,
            detector_only: false,
            smoothing: false,
            smoothing_min_cutoff: p.min_cutoff,
            smoothing_beta: p.beta,
            smoothing_d_cutoff: p.d_cutoff,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodyConfig {
    /// Run the body route: RTMDet person detector → Sapiens2 308 keypoints.
    pub enabled: bool,
    /// Folder with `rtmdet_weights.safetensors` and
    /// `sapiens2_pose_weights.safetensors` (and optionally their
    /// `*_config.json`); "" = the published files from the hub cache.
    pub models_dir: String,
    /// Published Sapiens2 pose size: "0.4b", "0.8b", "1b" or "5b".
    pub size: BodySize,
    /// Float type the pose network runs in: "float32" or "bfloat16".
    pub dtype: FloatType,
    /// At most this many people per frame, strongest first.
    pub max_people: usize,
    /// Average with the mirrored crop's keypoints, as the reference does
    /// (doubles the pose network's work).
    pub flip_test: bool,
}

impl Default for BodyConfig {
    fn default() -> Self {
        BodyConfig {
            enabled: false,
            models_dir: String::new(),
            size: BodySize::B04,
            dtype: FloatType::Float32,
            max_people: 4,
            flip_test: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatteConfig {
    /// Run the matte route: CorridorKey alpha and foreground.
    pub enabled: bool,
    /// Folder with `corridorkey_weights.safetensors` (and optionally
    /// `corridorkey_config.json`); "" = the published file.
    pub models_dir: String,
    /// The network's square input size (a multiple of 32); the published
    /// model was trained at 2048.
    pub img_size: i32,
    /// Float type of the decoders and refiner: "float32" or "bfloat16"
    /// (the encoder stays float32).
    pub head_dtype: FloatType,
    /// "resize": stretch every frame to img_size² and back; "tiles": native
    /// resolution in img_size² tiles (sharper, slower on large frames).
    pub fit: MatteFit,
    /// Overlap of neighbouring tiles in pixels (fit = "tiles").
    pub tile_overlap: i32,
    /// Run the refiner in tiles of this size (0 = whole frame): bounds its
    /// memory at large img_size, same result.
    pub refiner_tile: i32,
    /// Streams (camera, replay, PushStream) without a pushed hint use
    /// their previous frame's alpha as the hint.
    pub hint_from_previous: bool,
    /// The hint otherwise: "ones" (all foreground) or "chroma" (a soft
    /// green-screen key of the frame).
    pub fallback_hint: FallbackHint,
    /// How events carry the images: "png" or "raw" (8-bit planes).
    pub encoding: ImageEncoding,
}

impl Default for MatteConfig {
    fn default() -> Self {
        MatteConfig {
            enabled: false,
            models_dir: String::new(),
            img_size: 1024,
            head_dtype: FloatType::Float32,
            fit: MatteFit::Resize,
            tile_overlap: 64,
            refiner_tile: 0,
            hint_from_previous: true,
            fallback_hint: FallbackHint::Chroma,
            encoding: ImageEncoding::Png,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: LogFormat,
    /// Seconds between telemetry log lines; 0 turns them off.
    pub telemetry_interval_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:50151".into(),
            socket: String::new(),
            allow_remote: false,
            metrics: "127.0.0.1:9464".into(),
            max_image_pixels: crate::decode::DEFAULT_MAX_PIXELS,
            max_image_aspect_ratio: crate::decode::DEFAULT_MAX_ASPECT_RATIO,
            max_frame_ms: 15_000,
            socket_mode: "0600".into(),
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 20_000,
            token_file: String::new(),
            subscriber_queue: 64,
            max_waiting_pushes: 8,
            shutdown_deadline_ms: 1500,
            mlx_cache_limit_mb: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            telemetry_interval_s: 10,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{origin}: {}{reason}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    pub origin: String,
    pub key: String,
    pub reason: String,
}

type Setter = fn(&mut Config, &str) -> Result<(), String>;

/// Every key that environment variables and flags may set.
const KEYS: &[(&str, Setter)] = &[
    ("server.listen", |c, v| set_string(&mut c.server.listen, v)),
    ("server.socket", |c, v| set_string(&mut c.server.socket, v)),
    ("server.allow_remote", |c, v| {
        set_bool(&mut c.server.allow_remote, v)
    }),
    ("server.metrics", |c, v| {
        set_string(&mut c.server.metrics, v)
    }),
    ("server.max_image_pixels", |c, v| {
        set_num(&mut c.server.max_image_pixels, v)
    }),
    ("server.max_image_aspect_ratio", |c, v| {
        set_float(&mut c.server.max_image_aspect_ratio, v)
    }),
    ("server.max_frame_ms", |c, v| {
        set_num(&mut c.server.max_frame_ms, v)
    }),
    ("server.socket_mode", |c, v| {
        set_string(&mut c.server.socket_mode, v)
    }),
    ("server.keepalive_interval_ms", |c, v| {
        set_num(&mut c.server.keepalive_interval_ms, v)
    }),
    ("server.keepalive_timeout_ms", |c, v| {
        set_num(&mut c.server.keepalive_timeout_ms, v)
    }),
    ("server.token_file", |c, v| {
        set_string(&mut c.server.token_file, v)
    }),
    ("server.subscriber_queue", |c, v| {
        set_num(&mut c.server.subscriber_queue, v)
    }),
    ("server.mlx_cache_limit_mb", |c, v| {
        set_num(&mut c.server.mlx_cache_limit_mb, v)
    }),
    ("server.max_waiting_pushes", |c, v| {
        set_num(&mut c.server.max_waiting_pushes, v)
    }),
    ("server.shutdown_deadline_ms", |c, v| {
        set_num(&mut c.server.shutdown_deadline_ms, v)
    }),
    ("hands.enabled", |c, v| set_bool(&mut c.hands.enabled, v)),
    ("hands.models_dir", |c, v| {
        set_string(&mut c.hands.models_dir, v)
    }),
    ("hands.variant", |c, v| set_choice(&mut c.hands.variant, v)),
    ("hands.mano", |c, v| set_string(&mut c.hands.mano, v)),
    ("hands.compile", |c, v| set_choice(&mut c.hands.compile, v)),
    ("hands.mirror", |c, v| set_bool(&mut c.hands.mirror, v)),
    ("hands.max_hands", |c, v| set_num(&mut c.hands.max_hands, v)),
    ("hands.conf_threshold", |c, v| {
        set_float(&mut c.hands.conf_threshold, v)
    }),
    ("hands.iou_threshold", |c, v| {
        set_float(&mut c.hands.iou_threshold, v)
    }),
    ("hands.max_coast_frames", |c, v| {
        set_num(&mut c.hands.max_coast_frames, v)
    }),
    ("hands.track_timeout_ms", |c, v| {
        set_num(&mut c.hands.track_timeout_ms, v)
    }),
    ("hands.tracking", |c, v| set_bool(&mut c.hands.tracking, v)),
    ("hands.min_tracking_confidence", |c, v| {
        set_float(&mut c.hands.min_tracking_confidence, v)
    }),
    ("hands.redetect_interval", |c, v| {
        set_num(&mut c.hands.redetect_interval, v)
    }),
    ("hands.detector_only", |c, v| {
        set_bool(&mut c.hands.detector_only, v)
    }),
    ("hands.smoothing", |c, v| {
        set_bool(&mut c.hands.smoothing, v)
    }),
    ("hands.smoothing_min_cutoff", |c, v| {
        set_float(&mut c.hands.smoothing_min_cutoff, v)
    }),
    ("hands.smoothing_beta", |c, v| {
        set_float(&mut c.hands.smoothing_beta, v)
    }),
    ("hands.smoothing_d_cutoff", |c, v| {
        set_float(&mut c.hands.smoothing_d_cutoff, v)
    }),
    ("body.enabled", |c, v| set_bool(&mut c.body.enabled, v)),
    ("body.models_dir", |c, v| {
        set_string(&mut c.body.models_dir, v)
    }),
    ("body.size", |c, v| set_choice(&mut c.body.size, v)),
    ("body.dtype", |c, v| set_choice(&mut c.body.dtype, v)),
    ("body.max_people", |c, v| set_num(&mut c.body.max_people, v)),
    ("body.flip_test", |c, v| set_bool(&mut c.body.flip_test, v)),
    ("matte.enabled", |c, v| set_bool(&mut c.matte.enabled, v)),
    ("matte.models_dir", |c, v| {
        set_string(&mut c.matte.models_dir, v)
    }),
    ("matte.img_size", |c, v| set_num(&mut c.matte.img_size, v)),
    ("matte.head_dtype", |c, v| {
        set_choice(&mut c.matte.head_dtype, v)
    }),
    ("matte.fit", |c, v| set_choice(&mut c.matte.fit, v)),
    ("matte.tile_overlap", |c, v| {
        set_num(&mut c.matte.tile_overlap, v)
    }),
    ("matte.refiner_tile", |c, v| {
        set_num(&mut c.matte.refiner_tile, v)
    }),
    ("matte.hint_from_previous", |c, v| {
        set_bool(&mut c.matte.hint_from_previous, v)
    }),
    ("matte.fallback_hint", |c, v| {
        set_choice(&mut c.matte.fallback_hint, v)
    }),
    ("matte.encoding", |c, v| {
        set_choice(&mut c.matte.encoding, v)
    }),
    ("replay.dir", |c, v| set_string(&mut c.replay.dir, v)),
    ("replay.pace", |c, v| set_choice(&mut c.replay.pace, v)),
    ("replay.fps", |c, v| set_float(&mut c.replay.fps, v)),
    ("replay.repeat", |c, v| set_bool(&mut c.replay.repeat, v)),
    ("replay.max_gap_ms", |c, v| {
        set_num(&mut c.replay.max_gap_ms, v)
    }),
    ("camera.enabled", |c, v| set_bool(&mut c.camera.enabled, v)),
    ("camera.device", |c, v| set_string(&mut c.camera.device, v)),
    ("camera.width", |c, v| set_num(&mut c.camera.width, v)),
    ("camera.height", |c, v| set_num(&mut c.camera.height, v)),
    ("camera.fps", |c, v| set_num(&mut c.camera.fps, v)),
    ("camera.formats", |c, v| {
        set_formats(&mut c.camera.formats, v)
    }),
    ("camera.pin_frame_rate", |c, v| {
        set_bool(&mut c.camera.pin_frame_rate, v)
    }),
    ("camera.fx", |c, v| set_float(&mut c.camera.fx, v)),
    ("camera.fy", |c, v| set_float(&mut c.camera.fy, v)),
    ("camera.cx", |c, v| set_float(&mut c.camera.cx, v)),
    ("camera.cy", |c, v| set_float(&mut c.camera.cy, v)),
    ("recording.dir", |c, v| set_string(&mut c.recording.dir, v)),
    ("log.format", |c, v| set_choice(&mut c.log.format, v)),
    ("log.telemetry_interval_s", |c, v| {
        set_num(&mut c.log.telemetry_interval_s, v)
    }),
];

fn set_string(slot: &mut String, v: &str) -> Result<(), String> {
    *slot = v.to_owned();
    Ok(())
}

/// One of a [`choice!`] set: serde's message names the allowed values.
fn set_choice<T: DeserializeOwned>(slot: &mut T, v: &str) -> Result<(), String> {
    let de: serde::de::value::StrDeserializer<serde::de::value::Error> = v.into_deserializer();
    *slot = T::deserialize(de).map_err(|e| format!("{v:?}: {e}"))?;
    Ok(())
}

fn set_bool(slot: &mut bool, v: &str) -> Result<(), String> {
    *slot = match v {
        "true" | "1" | "yes" | "on" => true,
        "false" | "0" | "no" | "off" => false,
        _ => return Err(format!("{v:?} is not a boolean (true/false)")),
    };
    Ok(())
}

fn set_float<T: std::str::FromStr>(slot: &mut T, v: &str) -> Result<(), String> {
    *slot = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
    Ok(())
}

fn set_num<T: std::str::FromStr>(slot: &mut T, v: &str) -> Result<(), String> {
    *slot = v
        .parse()
        .map_err(|_| format!("{v:?} is not a non-negative integer"))?;
    Ok(())
}

/// A comma-separated list of pixel formats ("nv12,mjpeg"); "" = none.
fn set_formats(slot: &mut Vec<posed_capture::PixelFormat>, v: &str) -> Result<(), String> {
    *slot = v
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            posed_capture::PixelFormat::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = posed_capture::PixelFormat::ALL
                    .iter()
                    .map(|f| f.name())
                    .collect();
                format!("{name:?} is not a pixel format ({})", known.join(", "))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(())
}

/// The environment variable for a key: `server.listen` → `POSED_SERVER_LISTEN`.
pub fn env_name(key: &str) -> String {
    format!("POSED_{}", key.replace('.', "_").to_uppercase())
}

/// `POSED_*` variables that are not config keys: paths and switches read by
/// the scripts, the model hub and the tests.
const OTHER_VARIABLES: &[&str] = &[
    "POSED_CONFIG",
    "POSED_ADDR",
    "POSED_BIN",
    "POSED_CACHE_DIR",
    "POSED_DEMO_PORT",
    "POSED_FIXTURES",
    "POSED_GITHUB_ENDPOINT",
    "POSED_LOG_DIR",
    "POSED_MLX_FROM_SOURCE",
    "POSED_MLX_LIB_DIR",
    "POSED_RELIABILITY_CACHE",
    // Set by build.rs at compile time; cargo also exports it to `cargo run`/`cargo test`.
    "POSED_RUSTC_VERSION",
    "POSED_SETUP_PLATFORM",
];

/// Every `POSED_*` name among `names` must be a key's variable, one of the
/// documented other variables, or a test's (`POSED_TEST_*`): a misspelt
/// one would otherwise be ignored without a word, as a misspelt key in the
/// file is not.
pub fn check_environment<S: AsRef<str>>(
    names: impl IntoIterator<Item = S>,
) -> Result<(), ConfigError> {
    let known: Vec<String> = KEYS
        .iter()
        .map(|(k, _)| env_name(k))
        .chain(OTHER_VARIABLES.iter().map(|s| s.to_string()))
        .collect();
    for name in names {
        let name = name.as_ref();
        if !name.starts_with("POSED_")
            || name.starts_with("POSED_TEST_")
            || known.iter().any(|k| k == name)
        {
            continue;
        }
        let closest = known
            .iter()
            .min_by_key(|k| edit_distance(k, name))
            .expect("there are keys");
        return Err(ConfigError {
            origin: format!("environment {name}"),
            key: String::new(),
            reason: format!("not a posed variable (did you mean {closest}?)"),
        });
    }
    Ok(())
}

/// Levenshtein distance, for suggesting the closest name.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

impl Config {
    /// [`Config::load`] from this process's environment, whose `POSED_*`
    /// names are checked first ([`check_environment`]).
    pub fn load_from_env(
        file: Option<&Path>,
        overrides: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        check_environment(std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()))?;
        Self::load(file, |k| std::env::var(k).ok(), overrides)
    }

    /// Defaults, overlaid with `file` (if any), the environment (`env` is
    /// consulted for each key's variable) and `overrides` (key, value) from
    /// command-line flags; then validated.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        for (key, set) in KEYS {
            let var = env_name(key);
            if let Some(value) = env(&var) {
                set(&mut config, &value).map_err(|reason| ConfigError {
                    origin: format!("environment {var}"),
                    key: (*key).into(),
                    reason,
                })?;
            }
        }
        for (key, value) in overrides {
            let (_, set) = KEYS
                .iter()
                .find(|(k, _)| k == key)
                .expect("flags map to known keys");
            set(&mut config, value).map_err(|reason| ConfigError {
                origin: "command line".into(),
                key: (*key).into(),
                reason,
            })?;
        }
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let origin = format!("config file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            key: String::new(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError {
                origin: format!("{origin}{at}"),
                key: String::new(),
                reason: e.message().to_owned(),
            }
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError {
            origin: "configuration".into(),
            key: key.into(),
            reason,
        };
        let addr = |key: &str, v: &str| -> Result<Option<SocketAddr>, ConfigError> {
            if v.is_empty() {
                return Ok(None);
            }
            v.parse()
                .map(Some)
                .map_err(|_| bad(key, format!("{v:?} is not an address like 127.0.0.1:50151")))
        };
        // Every listener answers to the same rule: loopback unless the
        // operator chose to expose the daemon.
        let local = |key: &str, a: Option<SocketAddr>| {
            match a {
            Some(a) if !a.ip().is_loopback() && !self.server.allow_remote => Err(bad(
                key,
                format!("{a} is not a loopback address; set server.allow_remote = true to expose the daemon"),
            )),
            a => Ok(a),
        }
        };
        let listen = local("server.listen", addr("server.listen", &self.server.listen)?)?;
        local(
            "server.metrics",
            addr("server.metrics", &self.server.metrics)?,
        )?;
        if listen.is_some_and(|a| !a.ip().is_loopback()) && self.server.token_file.is_empty() {
            return Err(bad(
                "server.token_file",
                "server.listen is not a loopback address: set token_file to a file holding the clients' bearer token".into(),
            ));
        }
        if listen.is_none() && self.server.socket.is_empty() {
            return Err(bad(
                "server.listen",
                "both server.listen and server.socket are empty: nothing to serve on".into(),
            ));
        }
        if self.server.max_image_pixels == 0 {
            return Err(bad("server.max_image_pixels", "must be at least 1".into()));
        }
        let aspect = self.server.max_image_aspect_ratio;
        if !(aspect >= 1.0 && aspect.is_finite()) {
            return Err(bad(
                "server.max_image_aspect_ratio",
                format!("{aspect} is not a ratio ≥ 1"),
            ));
        }
        if self.server.max_frame_ms > MAX_MILLIS {
            return Err(bad(
                "server.max_frame_ms",
                format!("{} is over {MAX_MILLIS} ms", self.server.max_frame_ms),
            ));
        }
        self.socket_mode()
            .map_err(|why| bad("server.socket_mode", why))?;
        for (key, v) in [
            (
                "server.keepalive_interval_ms",
                self.server.keepalive_interval_ms,
            ),
            (
                "server.keepalive_timeout_ms",
                self.server.keepalive_timeout_ms,
            ),
            ("replay.max_gap_ms", self.replay.max_gap_ms),
        ] {
            if v > MAX_MILLIS {
                return Err(bad(key, format!("{v} is over {MAX_MILLIS} ms")));
            }
        }
        if self.server.keepalive_interval_ms > 0 && self.server.keepalive_timeout_ms == 0 {
            return Err(bad(
                "server.keepalive_timeout_ms",
                "must be at least 1 while keepalive_interval_ms is set".into(),
            ));
        }
        if self.hands.max_hands == 0 {
            return Err(bad("hands.max_hands", "must be at least 1".into()));
        }
        for (key, v) in [
            ("hands.conf_threshold", self.hands.conf_threshold),
            ("hands.iou_threshold", self.hands.iou_threshold),
            (
                "hands.min_tracking_confidence",
                self.hands.min_tracking_confidence,
            ),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(key, format!("{v} is not in [0, 1]")));
            }
        }
        if self.hands.max_coast_frames > 300 {
            return Err(bad(
                "hands.max_coast_frames",
                format!("{} is more than 300 frames", self.hands.max_coast_frames),
            ));
        }
        let max_interval = crate::routes::hands::MAX_REDETECT_INTERVAL;
        if !(1..=max_interval).contains(&self.hands.redetect_interval) {
            return Err(bad(
                "hands.redetect_interval",
                format!(
                    "{} is not from 1 to {max_interval} frames",
                    self.hands.redetect_interval
                ),
            ));
        }
        if !(1..=600_000).contains(&self.hands.track_timeout_ms) {
            return Err(bad(
                "hands.track_timeout_ms",
                format!("{} is not from 1 to 600000 ms", self.hands.track_timeout_ms),
            ));
        }
        if !self.hands.enabled && !self.body.enabled && !self.matte.enabled {
            return Err(bad(
                "hands.enabled",
                "hands.enabled, body.enabled and matte.enabled are all false: no route to run"
                    .into(),
            ));
        }
        let m = &self.matte;
        if m.img_size < 32 || m.img_size % 32 != 0 {
            return Err(bad(
                "matte.img_size",
                format!("{} is not a positive multiple of 32", m.img_size),
            ));
        }
        if !(0..m.img_size).contains(&m.tile_overlap) {
            return Err(bad(
                "matte.tile_overlap",
                format!(
                    "{} must be at least 0 and below matte.img_size ({})",
                    m.tile_overlap, m.img_size
                ),
            ));
        }
        if m.refiner_tile < 0 {
            return Err(bad(
                "matte.refiner_tile",
                "must be 0 (off) or a size".into(),
            ));
        }
        if self.body.max_people == 0 {
            return Err(bad("body.max_people", "must be at least 1".into()));
        }
        if self.server.subscriber_queue == 0 {
            return Err(bad("server.subscriber_queue", "must be at least 1".into()));
        }
        for (key, v) in [
            (
                "hands.smoothing_min_cutoff",
                self.hands.smoothing_min_cutoff,
            ),
            ("hands.smoothing_d_cutoff", self.hands.smoothing_d_cutoff),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(bad(key, "must be a positive number of Hz".into()));
            }
        }
        if !(self.hands.smoothing_beta >= 0.0 && self.hands.smoothing_beta.is_finite()) {
            return Err(bad("hands.smoothing_beta", "must be a number ≥ 0".into()));
        }
        if !(self.replay.fps > 0.0 && self.replay.fps.is_finite()) {
            return Err(bad("replay.fps", "must be a positive number".into()));
        }
        let cam = &self.camera;
        for (key, v) in [("camera.width", cam.width), ("camera.height", cam.height)] {
            if !(1..=MAX_CAMERA_SIDE).contains(&v) {
                return Err(bad(
                    key,
                    format!("{v} is not a size from 1 to {MAX_CAMERA_SIDE}"),
                ));
            }
        }
        if !(1..=MAX_CAMERA_FPS).contains(&cam.fps) {
            return Err(bad(
                "camera.fps",
                format!("{} is not a rate from 1 to {MAX_CAMERA_FPS}", cam.fps),
            ));
        }
        if let Some(f) = cam
            .formats
            .iter()
            .enumerate()
            .find_map(|(i, f)| cam.formats[..i].contains(f).then_some(f))
        {
            return Err(bad("camera.formats", format!("{f} is listed twice")));
        }
        cam.intrinsics()
            .map_err(|why| bad("camera.fx", format!("camera.fx/fy/cx/cy {why}")))?;
        Ok(())
    }

    /// `server.socket_mode` as permission bits.
    pub fn socket_mode(&self) -> Result<u32, String> {
        let v = self.server.socket_mode.trim_start_matches("0o");
        match u32::from_str_radix(v, 8) {
            Ok(m) if m <= 0o777 => Ok(m),
            _ => Err(format!(
                "{:?} is not an octal permission like \"0600\"",
                self.server.socket_mode
            )),
        }
    }

    /// `ms` of a checked millisecond setting; `None` for 0 (off).
    pub fn millis(ms: u64) -> Option<Duration> {
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    pub fn listen(&self) -> Option<SocketAddr> {
        self.server.listen.parse().ok()
    }

    pub fn socket(&self) -> Option<PathBuf> {
        (!self.server.socket.is_empty()).then(|| PathBuf::from(&self.server.socket))
    }

    pub fn metrics(&self) -> Option<SocketAddr> {
        self.server.metrics.parse().ok()
    }

    pub fn smoothing(&self) -> crate::smoothing::OneEuroParams {
        crate::smoothing::OneEuroParams {
            min_cutoff: self.hands.smoothing_min_cutoff,
            beta: self.hands.smoothing_beta,
            d_cutoff: self.hands.smoothing_d_cutoff,
        }
    }

    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_deadline_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn unknown_posed_variables_are_refused_with_the_closest_name() {
        let ok = [
            "PATH",
            "POSED_SERVER_LISTEN",
            "POSED_HANDS_MAX_HANDS",
            "POSED_CACHE_DIR",
            "POSED_TEST_CAMERA",
        ];
        assert_eq!(check_environment(ok), Ok(()));
        let e = check_environment(["HOME", "POSED_SERVER_LISTN"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment POSED_SERVER_LISTN: not a posed variable (did you mean POSED_SERVER_LISTEN?)"
        );
        let e = check_environment(["POSED_HAND_MAX_HANDS"]).unwrap_err();
        assert!(e.reason.contains("POSED_HANDS_MAX_HANDS"), "{e}");
        let e = check_environment(["POSED_CACHEDIR"]).unwrap_err();
        assert!(e.reason.contains("POSED_CACHE_DIR"), "{e}");
    }

    #[test]
    fn the_shipped_default_file_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/posed.toml");
        assert_eq!(
            Config::load(Some(&path), no_env, &[]).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:7000\"\nsubscriber_queue = 5\n[hands]\nmirror = true\n",
        )
        .unwrap();
        let env: HashMap<String, String> = [
            (
                "POSED_SERVER_LISTEN".to_string(),
                "127.0.0.1:7001".to_string(),
            ),
            ("POSED_LOG_FORMAT".to_string(), "json".to_string()),
        ]
        .into();
        let c = Config::load(
            Some(&file),
            |k| env.get(k).cloned(),
            &[("server.listen", "127.0.0.1:7002".into())],
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7002");
        assert_eq!(c.server.subscriber_queue, 5);
        assert!(c.hands.mirror);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_key_and_where_the_value_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n").unwrap();
        let e = Config::load(Some(&file), no_env, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.toml (line 3)") && e.contains("unknown field `lisen`"),
            "{e}"
        );

        std::fs::write(&file, "[server]\nsubscriber_queue = \"many\"\n").unwrap();
        let e = Config::load(Some(&file), no_env, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("invalid type"), "{e}");

        let e = Config::load(
            None,
            |k| (k == "POSED_HANDS_MIRROR").then(|| "maybe".into()),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment POSED_HANDS_MIRROR: hands.mirror: \"maybe\" is not a boolean (true/false)"
        );

        let e =
            Config::load(None, no_env, &[("server.listen", "0.0.0.0:50151".into())]).unwrap_err();
        assert!(
            e.to_string()
                .contains("server.listen: 0.0.0.0:50151 is not a loopback address"),
            "{e}"
        );
        let remote = |k: &str| (k == "POSED_SERVER_ALLOW_REMOTE").then(|| "true".into());
        let e =
            Config::load(None, remote, &[("server.listen", "0.0.0.0:50151".into())]).unwrap_err();
        assert_eq!(e.key, "server.token_file", "{e}");
        let ok = Config::load(
            None,
            |k| match k {
                "POSED_SERVER_ALLOW_REMOTE" => Some("true".into()),
                "POSED_SERVER_TOKEN_FILE" => Some("/etc/posed/token".into()),
                _ => None,
            },
            &[("server.listen", "0.0.0.0:50151".into())],
        );
        assert!(ok.is_ok(), "{ok:?}");

        // The metrics listener answers to the same rule as gRPC's.
        let e =
            Config::load(None, no_env, &[("server.metrics", "0.0.0.0:9464".into())]).unwrap_err();
        assert!(
            e.to_string()
                .contains("server.metrics: 0.0.0.0:9464 is not a loopback address"),
            "{e}"
        );
        let ok = Config::load(
            None,
            |k| (k == "POSED_SERVER_ALLOW_REMOTE").then(|| "true".into()),
            &[("server.metrics", "0.0.0.0:9464".into())],
        );
        assert!(ok.is_ok());

        let e = Config::load(None, no_env, &[("log.format", "xml".into())]).unwrap_err();
        assert_eq!(e.key, "log.format");
    }

    #[test]
    fn camera_settings_are_checked_at_load() {
        let load = |pairs: &[(&str, &str)]| {
            let owned: Vec<(&str, String)> =
                pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            Config::load(None, no_env, &owned)
        };
        let c = load(&[]).unwrap();
        assert_eq!(c.camera.intrinsics(), Ok(None));
        let c = load(&[
            ("camera.fx", "600"),
            ("camera.fy", "600"),
            ("camera.cx", "320"),
            ("camera.cy", "240"),
        ])
        .unwrap();
        assert_eq!(c.camera.intrinsics().unwrap().unwrap().fx, 600.0);
        for (key, value, says) in [
            ("camera.fx", "-1", "positive focal lengths"),
            ("camera.cx", "NaN", "not finite"),
            ("camera.cy", "9000", "outside the 640x480 image"),
            ("camera.fps", "0", "not a rate from 1 to 1000"),
            ("camera.width", "100000", "not a size from 1 to 16384"),
            (
                "camera.formats",
                "nv12,jpeg",
                "\"jpeg\" is not a pixel format",
            ),
            ("camera.formats", "nv12,nv12", "nv12 is listed twice"),
            ("hands.track_timeout_ms", "0", "not from 1 to 600000 ms"),
            ("hands.redetect_interval", "0", "not from 1 to 1000 frames"),
            (
                "hands.redetect_interval",
                "1001",
                "not from 1 to 1000 frames",
            ),
            ("hands.min_tracking_confidence", "1.5", "not in [0, 1]"),
            ("hands.min_tracking_confidence", "nan", "not in [0, 1]"),
            ("hands.conf_threshold", "1.5", "not in [0, 1]"),
            ("hands.iou_threshold", "NaN", "not in [0, 1]"),
        ] {
            let mut pairs = vec![("camera.fx", "600"), ("camera.fy", "600")];
            pairs.push((key, value));
            let e = load(&pairs).unwrap_err().to_string();
            assert!(e.contains(says), "{key}={value}: {e}");
        }
    }

    /// A closed set is parsed once, by serde, wherever its value comes
    /// from; the error names the key, the origin and every allowed value.
    #[test]
    fn closed_sets_parse_from_every_layer_and_list_their_values() {
        let e = Config::load(
            None,
            |k| (k == "POSED_HANDS_COMPILE").then(|| "sometimes".into()),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment POSED_HANDS_COMPILE: hands.compile: \"sometimes\": unknown variant `sometimes`, expected one of `auto`, `on`, `off`"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "[matte]\nfit = \"crop\"\n").unwrap();
        let e = Config::load(Some(&file), no_env, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2")
                && e.contains("unknown variant `crop`, expected `resize` or `tiles`"),
            "{e}"
        );
        let c = Config::load(
            None,
            no_env,
            &[
                ("body.size", "1b".into()),
                ("matte.head_dtype", "bfloat16".into()),
                ("replay.pace", "fast".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.body.size, BodySize::B1);
        assert_eq!(c.matte.head_dtype.dtype(), mlx_rs::Dtype::Bfloat16);
        assert_eq!(c.replay.pace, ReplayPace::Fast);
        assert!(Compile::Auto.enabled(true) && !Compile::Auto.enabled(false));
    }
}
