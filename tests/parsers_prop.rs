//! Property tests for the daemon's own parsers (issue #23): pushed images
//! and matte hints (`decode`), whole push requests from protobuf bytes
//! (`decode_push`), the configuration (TOML file and `POSED_*` variables)
//! and the recording reader's file names (`replay_files`).
//!
//! Any input ends in a value or an error, never a panic; an image never
//! passes its pixel cap. The valid inputs here are also the fuzz targets'
//! seeds: `cargo test --test parsers_prop -- --ignored write_fuzz_seeds`
//! rewrites `fuzz/corpus/{decode,push_request,config,replay}/`.

use std::collections::HashMap;
use std::path::Path;

use posed::config::{env_name, Config};
use posed::decode::{self, ImageLimits};
use posed::proto::{self, push_image_request::Image, PushImageRequest, RawImage};
use posed::routes::{RequestLimits, RouteId};
use proptest::prelude::*;
use prost::Message;

const ROUTES: [RouteId; 3] = [RouteId::Hands, RouteId::Body, RouteId::Matte];

fn limits(max_pixels: u64) -> ImageLimits {
    ImageLimits {
        max_pixels,
        ..Default::default()
    }
}

fn rgb(width: usize, height: usize, seed: u8) -> Vec<u8> {
    (0..width * height * 3)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode(
            &rgb(width as usize, height as usize, 9),
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// Small PNGs (RGB and grey) and JPEGs.
fn image_seeds() -> Vec<Vec<u8>> {
    vec![
        decode::encode_png(&rgb(5, 3, 1), 5, 3, 3),
        decode::encode_png(&[0, 64, 128, 255], 2, 2, 1),
        decode::encode_png(&[9; 4 * 4 * 4], 4, 4, 4),
        jpeg(8, 8),
        jpeg(17, 9),
    ]
}

/// One edit of a valid file.
#[derive(Debug, Clone)]
enum Edit {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    /// A big-endian size field (PNG chunk lengths, IHDR and SOF sizes).
    Word(usize, u32, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Edit::Flip(i, x)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                Just(0u32),
                Just(0xffff),
                Just(u32::MAX),
                Just(1 << 31),
                any::<u32>()
            ],
            prop_oneof![Just(2usize), Just(4)],
        )
            .prop_map(|(i, v, w)| Edit::Word(i, v, w)),
    ];
    proptest::collection::vec(edit, 1..4)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match e {
            Edit::Truncate(i) => bytes.truncate(i % n),
            Edit::Flip(i, x) => {
                if let Some(b) = bytes.get_mut(i % n) {
                    *b ^= x;
                }
            }
            Edit::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Word(i, v, w) => {
                let at = i % n;
                for (k, b) in v.to_be_bytes()[4 - w..].iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
        }
    }
    bytes
}

fn check_decode(bytes: Vec<u8>, max_pixels: u64) {
    if let Ok(img) = decode::decode(Some(&Image::Encoded(bytes)), &limits(max_pixels)) {
        assert!((img.width * img.height) as u64 <= max_pixels);
        assert_eq!(img.data.len(), img.width * img.height * 3);
    }
}

// ---- Push requests -------------------------------------------------------------

fn push_seeds() -> Vec<PushImageRequest> {
    let boxes = vec![proto::HandBox {
        r#box: Some(proto::Box2D {
            x1: 1.0,
            y1: 1.0,
            x2: 6.0,
            y2: 4.0,
        }),
        side: proto::HandSide::Right as i32,
    }];
    vec![
        PushImageRequest {
            image: Some(Image::Encoded(jpeg(8, 8))),
            routes: vec![proto::Route::Hands as i32, proto::Route::Matte as i32],
            hand_boxes: boxes,
            matte_hint: vec![128; 64],
            client_frame_id: 7,
            ..Default::default()
        },
        PushImageRequest {
            image: Some(Image::RawRgb(RawImage {
                width: 4,
                height: 2,
                data: rgb(4, 2, 3),
            })),
            person_boxes: vec![proto::Box2D {
                x1: 0.0,
                y1: 0.0,
                x2: 3.0,
                y2: 2.0,
            }],
            intrinsics: Some(proto::CameraIntrinsics {
                fx: 500.0,
                fy: 500.0,
                cx: 2.0,
                cy: 1.0,
            }),
            hand_options: Some(proto::HandOptions {
                conf_threshold: Some(0.4),
                max_hands: Some(2),
                redetect: true,
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

fn check_push(bytes: &[u8]) {
    let Ok(req) = PushImageRequest::decode(bytes) else {
        return;
    };
    for n in 1..=ROUTES.len() {
        if let Ok((_, requests)) = posed::server::decode_push(
            &req,
            &limits(1 << 16),
            &RequestLimits::default(),
            &ROUTES[..n],
        ) {
            assert_eq!(requests.len(), n);
        }
    }
}

// ---- Configuration -------------------------------------------------------------

const KEYS: &[&str] = &[
    "server.listen",
    "server.socket",
    "server.allow_remote",
    "server.metrics",
    "server.max_image_pixels",
    "server.max_image_aspect_ratio",
    "server.max_frame_ms",
    "server.socket_mode",
    "server.keepalive_interval_ms",
    "server.keepalive_timeout_ms",
    "server.subscriber_queue",
    "server.mlx_cache_limit_mb",
    "server.max_waiting_pushes",
    "server.shutdown_deadline_ms",
    "hands.enabled",
    "hands.variant",
    "hands.max_hands",
    "hands.conf_threshold",
    "hands.max_coast_frames",
    "hands.track_timeout_ms",
    "hands.redetect_interval",
    "hands.smoothing_min_cutoff",
    "hands.smoothing_beta",
    "body.enabled",
    "body.size",
    "body.max_people",
    "matte.enabled",
    "matte.img_size",
    "matte.tile_overlap",
    "matte.refiner_tile",
    "matte.fallback_hint",
    "replay.dir",
    "replay.pace",
    "replay.fps",
    "replay.max_gap_ms",
    "camera.width",
    "camera.height",
    "camera.fps",
    "camera.formats",
    "camera.fx",
    "camera.cx",
    "log.format",
    "log.telemetry_interval_s",
];

/// TOML values of every type, including the extremes.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        prop_oneof![Just(0i64), Just(-1), Just(1), Just(u32::MAX as i64 + 1)]
            .prop_map(|v| v.to_string()),
        prop_oneof![
            Just("nan".to_owned()),
            Just("inf".to_owned()),
            Just("-inf".to_owned()),
            Just("1e308".to_owned()),
            Just("-0.0".to_owned()),
        ],
        any::<f64>().prop_map(|v| format!("{v:?}")),
        any::<bool>().prop_map(|v| v.to_string()),
        "\\PC{0,12}".prop_map(|s| format!("{s:?}")),
        Just("[\"nv12\", \"nv12\"]".to_owned()),
        Just("{}".to_owned()),
    ]
}

fn load(toml: &str, env: &HashMap<String, String>) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posed.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(Some(&path), |k| env.get(k).cloned(), &[]).map_err(|e| e.to_string())
}

fn config_seed() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/posed.toml"))
        .unwrap()
}

// ---- Properties ----------------------------------------------------------------

#[test]
fn seeds_are_valid() {
    for s in image_seeds() {
        decode::decode(Some(&Image::Encoded(s)), &limits(1 << 20)).unwrap();
    }
    for req in push_seeds() {
        posed::server::decode_push(&req, &limits(1 << 20), &RequestLimits::default(), &ROUTES)
            .unwrap();
    }
    load(&config_seed(), &HashMap::new()).unwrap();
}

#[test]
fn every_prefix_of_an_image_is_an_image_or_an_error() {
    for s in image_seeds() {
        for n in 0..s.len() {
            check_decode(s[..n].to_vec(), 1 << 20);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_takes_mutated_images(seed in 0..5usize, e in edits(), cap in 0u32..21) {
        check_decode(apply(image_seeds()[seed].clone(), &e), 1 << cap);
    }

    #[test]
    fn decode_takes_any_bytes_after_a_magic(
        magic in prop_oneof![Just(&b"\x89PNG\r\n\x1a\n"[..]), Just(&b"\xff\xd8\xff"[..])],
        rest in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = magic.to_vec();
        bytes.extend(rest);
        check_decode(bytes, 1 << 16);
    }

    #[test]
    fn raw_images_of_any_size_are_checked(
        width in prop_oneof![0u32..9, Just(u32::MAX), any::<u32>()],
        height in prop_oneof![0u32..9, Just(u32::MAX), any::<u32>()],
        len in 0usize..256,
        cap in prop_oneof![Just(u64::MAX), 0u64..1024],
    ) {
        let raw = RawImage { width, height, data: vec![7; len] };
        if let Ok(img) = decode::decode(Some(&Image::RawRgb(raw)), &limits(cap)) {
            prop_assert_eq!(img.data.len(), len);
            prop_assert_eq!(img.width * img.height * 3, len);
        }
    }

    #[test]
    fn png_round_trips(width in 1usize..24, height in 1usize..24, seed: u8) {
        let data = rgb(width, height, seed);
        let png = decode::encode_png(&data, width, height, 3);
        let img = decode::decode(Some(&Image::Encoded(png)), &ImageLimits::NONE).unwrap();
        prop_assert_eq!((img.width, img.height), (width, height));
        prop_assert_eq!(img.data, data);
        let grey: Vec<u8> = (0..width * height).map(|i| (i as u8) ^ seed).collect();
        let png = decode::encode_png(&grey, width, height, 1);
        prop_assert_eq!(decode::decode_hint(&png, width, height).unwrap(), grey.clone());
        // Raw grey of the right length is taken as it is.
        prop_assert_eq!(decode::decode_hint(&grey, width, height).unwrap(), grey);
    }

    #[test]
    fn hints_take_mutated_images(seed in 0..5usize, e in edits(), width in 0usize..20, height in 0usize..20) {
        let bytes = apply(image_seeds()[seed].clone(), &e);
        if let Ok(grey) = decode::decode_hint(&bytes, width, height) {
            prop_assert_eq!(grey.len(), width * height);
        }
    }

    #[test]
    fn push_requests_from_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_push(&bytes);
    }

    #[test]
    fn push_requests_from_mutated_messages(seed in 0..2usize, e in edits()) {
        check_push(&apply(push_seeds()[seed].encode_to_vec(), &e));
    }

    #[test]
    fn push_requests_with_any_boxes_and_options(
        boxes in proptest::collection::vec(proptest::array::uniform4(prop_oneof![
            any::<f32>(), Just(f32::NAN), Just(f32::INFINITY), -10f32..20.0
        ]), 0..12),
        conf in proptest::option::of(any::<f32>()),
        max_hands in proptest::option::of(any::<u32>()),
        redetect_interval in proptest::option::of(any::<u32>()),
        hint_len in 0usize..80,
    ) {
        let mut req = push_seeds().swap_remove(0);
        let b = |[x1, y1, x2, y2]: [f32; 4]| proto::Box2D { x1, y1, x2, y2 };
        req.hand_boxes = boxes
            .iter()
            .enumerate()
            .map(|(i, &v)| proto::HandBox { r#box: Some(b(v)), side: i as i32 % 4 })
            .collect();
        req.person_boxes = boxes.iter().map(|&v| b(v)).collect();
        req.matte_hint = vec![1; hint_len];
        req.hand_options = Some(proto::HandOptions {
            conf_threshold: conf,
            iou_threshold: conf,
            min_tracking_confidence: conf,
            max_hands,
            redetect_interval,
            ..Default::default()
        });
        check_push(&req.encode_to_vec());
    }

    #[test]
    fn replay_names_carry_their_capture_time(seq in 0u32..1_000_000, ns: u64, ext in prop_oneof![Just("png"), Just("JPG"), Just("jpeg")]) {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("{seq:06}_{ns}.{ext}");
        std::fs::write(dir.path().join(&name), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let files = posed::sources::replay_files(dir.path()).unwrap();
        prop_assert_eq!(files.len(), 1);
        prop_assert_eq!(files[0].1, Some(ns));
    }

    #[test]
    fn replay_takes_any_file_names(names in proptest::collection::vec("[^/\u{0}]{1,40}", 0..6)) {
        let dir = tempfile::tempdir().unwrap();
        for n in &names {
            if n != "." && n != ".." {
                let _ = std::fs::write(dir.path().join(n), b"\x89PNG\r\n\x1a\n");
            }
        }
        for (path, _) in posed::sources::replay_files(dir.path()).unwrap() {
            check_decode(std::fs::read(path).unwrap(), 1 << 16);
        }
    }
}

proptest! {
    // A file written and parsed per case: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn config_takes_any_values(
        entries in proptest::collection::vec((0..KEYS.len(), toml_value()), 0..8),
        env in proptest::collection::vec((0..KEYS.len(), "\\PC{0,16}"), 0..4),
    ) {
        let mut by_section: HashMap<&str, Vec<String>> = HashMap::new();
        for (k, v) in &entries {
            let (section, key) = KEYS[*k].split_once('.').unwrap();
            by_section.entry(section).or_default().push(format!("{key} = {v}"));
        }
        let toml: String = by_section
            .iter()
            .map(|(s, lines)| format!("[{s}]\n{}\n", lines.join("\n")))
            .collect();
        let env: HashMap<String, String> =
            env.into_iter().map(|(k, v)| (env_name(KEYS[k]), v)).collect();
        let _ = load(&toml, &env);
    }

    #[test]
    fn config_takes_mutated_files(e in edits()) {
        let text = apply(config_seed().into_bytes(), &e);
        let _ = load(&String::from_utf8_lossy(&text), &HashMap::new());
    }
}

/// Writes the seeds into `fuzz/corpus/` (see fuzz/README.md).
#[test]
#[ignore = "writes the fuzz seed corpus"]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, seeds: Vec<Vec<u8>>| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    };
    // decode: a mode byte (0 = encoded, 128 = raw, 192 = hint), then input.
    let mut decode_seeds: Vec<Vec<u8>> = image_seeds()
        .into_iter()
        .map(|s| [vec![20], s].concat())
        .collect();
    let mut raw = vec![148];
    raw.extend(2u32.to_le_bytes());
    raw.extend(2u32.to_le_bytes());
    raw.extend(rgb(2, 2, 0));
    decode_seeds.push(raw);
    decode_seeds.push([vec![200, 2, 0, 2, 0], image_seeds()[1].clone()].concat());
    write("decode", decode_seeds);
    write(
        "push_request",
        push_seeds().iter().map(Message::encode_to_vec).collect(),
    );
    // config: a small file, then `%%env` and variables.
    let small = "[server]\nlisten = \"127.0.0.1:50151\"\nmax_image_pixels = 1000\n\n[hands]\nmax_hands = 2\nconf_threshold = 0.5\n\n[camera]\nformats = [\"nv12\", \"mjpeg\"]\n";
    write(
        "config",
        vec![
            small.as_bytes().to_vec(),
            format!("{small}\n%%env\nPOSED_HANDS_MAX_HANDS=3\nPOSED_REPLAY_FPS=nan\n").into_bytes(),
        ],
    );
    // replay: `name\0contents\0...`.
    let mut replay = b"000001_1700000000000000000.png\0".to_vec();
    replay.extend(&image_seeds()[0]);
    replay.push(0);
    replay.extend(b"000002_1700000000033000000.jpg\0");
    replay.extend(&image_seeds()[3]);
    write("replay", vec![replay]);
}
