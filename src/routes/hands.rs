//! The hand route: letterbox → hand detector (YOLOv8-pose, left/right) →
//! NMS → one crop per hand (left hands mirrored) → WiLoR on the batch →
//! MANO → full-image coordinates. Between detection and crop, the stream's
//! tracks give each hand its id and its voted side (see
//! [`crate::tracking::hands`]); the post stage builds the `Hands` event.
//!
//! On a stream, a frame whose hands were all posed in the previous frame
//! skips the detector: each hand is cropped where its own keypoints put it
//! ([`crate::tracking::follow`]). The detector runs again when a hand is
//! lost (its tracking confidence falls below `min_tracking_confidence`),
//! every `redetect_interval` frames (to find new hands), or when a push
//! asks; [`hands_of_frame`] holds that policy.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use posed_models::camera::Intrinsics;
use posed_models::hand_pipeline::{
    DetectorInput, HandBox, HandEstimate, HandModelFiles, HandPipeline,
};
use tonic::Status;

use super::{
    frame_image, DetectRequest, ModelInfo, PostOptions, PostWork, Preparer, RequestLimits, Route,
    RouteError, RouteId, RouteKind, RoutePost, RouteResult, StageClock, Timed,
};
use crate::config::{Config, HandsConfig};
use crate::engine::{Frame, StreamId};
use crate::events::{checked_box, route_event};
use crate::proto;
use crate::tracking::hands::{Sighting, StreamTracks, TrackSettings, TrackedHand};
use crate::weights::hub::Hub;

/// The hand route's stages, in order. A frame runs either `preprocess`
/// and `detect`, or `track` (its hands followed without the detector).
pub mod stage {
    pub use crate::routes::stage::{DETECT, PREPROCESS};
    /// Every hand's box from its previous keypoints, instead of detecting.
    pub const TRACK: &str = "track";
    /// One crop per hand, on the CPU.
    pub const CROP: &str = "crop";
    /// WiLoR and the final MANO pass on the batch, evaluated.
    pub const POSE: &str = "pose";
    /// Read-back, un-mirroring and placement in the image.
    pub const MANO: &str = "mano";
}

/// How the hand route treats a frame: the config's `[hands]`, which a push
/// may change for its image ([`HandOverrides`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandSettings {
    pub conf_threshold: f32,
    pub iou_threshold: f32,
    /// At most this many hands per frame, strongest first.
    pub max_hands: usize,
    /// Follow hands between frames of a stream without the detector.
    pub tracking: bool,
    pub min_tracking_confidence: f32,
    /// The detector runs at least every this many frames of a stream.
    pub redetect_interval: u32,
    /// Boxes, sides and the detector's keypoints only: no WiLoR.
    pub detector_only: bool,
}

impl HandSettings {
    pub fn from_config(c: &HandsConfig) -> HandSettings {
        HandSettings {
            conf_threshold: c.conf_threshold,
            iou_threshold: c.iou_threshold,
            max_hands: c.max_hands,
            tracking: c.tracking,
            min_tracking_confidence: c.min_tracking_confidence,
            redetect_interval: c.redetect_interval,
            detector_only: c.detector_only,
        }
    }

    /// These settings with a push's changes.
    pub fn with(&self, o: &HandOverrides) -> HandSettings {
        HandSettings {
            conf_threshold: o.conf_threshold.unwrap_or(self.conf_threshold),
            iou_threshold: o.iou_threshold.unwrap_or(self.iou_threshold),
            // A push may ask for fewer hands, never more than the config.
            max_hands: o
                .max_hands
                .map_or(self.max_hands, |n| n.min(self.max_hands)),
            tracking: o.tracking.unwrap_or(self.tracking),
            min_tracking_confidence: o
                .min_tracking_confidence
                .unwrap_or(self.min_tracking_confidence),
            redetect_interval: o.redetect_interval.unwrap_or(self.redetect_interval),
            detector_only: self.detector_only || o.detector_only,
        }
    }
}

/// What one push changes of [`HandSettings`] (checked: thresholds in
/// [0, 1], counts in range), and asks besides.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HandOverrides {
    pub conf_threshold: Option<f32>,
    pub iou_threshold: Option<f32>,
    pub max_hands: Option<usize>,
    pub tracking: Option<bool>,
    pub min_tracking_confidence: Option<f32>,
    pub redetect_interval: Option<u32>,
    pub detector_only: bool,
    /// Run the detector on this frame even if every hand can be followed.
    pub redetect: bool,
}

/// The most frames `redetect_interval` may let pass without the detector.
pub const MAX_REDETECT_INTERVAL: u32 = 1000;

/// The hand models on the MLX thread.
pub struct HandsRoute {
    pipeline: HandPipeline,
    settings: HandSettings,
    /// Every stream's hand tracks: they decide a hand's side before its
    /// crop is mirrored (so geometry and side always agree), and whether a
    /// frame needs the detector.
    tracks: StreamTracks,
    /// Streams whose next frame will be followed, as far as the last frame
    /// tells: the prep thread makes no letterbox for them (if the guess is
    /// wrong, `run` makes it).
    followed_next: Arc<Mutex<HashSet<StreamId>>>,
}

impl HandsRoute {
    pub fn new(pipeline: HandPipeline, settings: HandSettings, tracking: TrackSettings) -> Self {
        HandsRoute {
            pipeline,
            settings,
            tracks: StreamTracks::new(tracking),
            followed_next: Arc::default(),
        }
    }

    pub fn pipeline(&self) -> &HandPipeline {
        &self.pipeline
    }

    pub fn settings(&self) -> &HandSettings {
        &self.settings
    }
}

/// What a frame may ask of the hands route: boxes it knows (or detect),
/// and its own settings.
#[derive(Debug, Clone, Default)]
pub struct HandsRequest {
    pub boxes: DetectRequest<HandBox>,
    pub overrides: HandOverrides,
}

impl HandsRequest {
    /// The client's boxes, nothing else changed.
    pub fn with_boxes(boxes: Vec<HandBox>) -> HandsRequest {
        HandsRequest {
            boxes: DetectRequest::with_boxes(boxes),
            overrides: HandOverrides::default(),
        }
    }
}

/// The detector's letterbox, made on the prep thread.
pub type Letterbox = Timed<DetectorInput>;

/// Where a frame's box for a hand came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOrigin {
    Detected,
    /// From the hand's own keypoints in the previous frame.
    Tracked,
    /// The client's box.
    Client,
}

/// One hand of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct HandResult {
    /// The box its crop was cut from, with the track's side; its score is
    /// the detector's (1 for the client's, the tracking confidence for a
    /// followed hand).
    pub hand: HandBox,
    pub origin: HandOrigin,
    pub track: TrackedHand,
    /// See [`crate::tracking::follow::tracking_confidence`]; 0 without a
    /// pose.
    pub tracking_confidence: f32,
    /// WiLoR's hand; None in detector-only frames.
    pub pose: Option<HandEstimate>,
}

/// The hands of one frame.
#[derive(Debug)]
pub struct HandsOutput {
    pub hands: Vec<HandResult>,
    /// Tracks of the frame's stream that ended with this frame.
    pub ended: Vec<u32>,
    /// Whether the detector ran (else every hand was followed).
    pub detector_ran: bool,
    /// The camera the hands were placed with, and whether it is the
    /// frame's own (else WiLoR's pseudo camera).
    pub camera: Intrinsics,
    pub camera_given: bool,
}

/// The hand route's model stages as [`hands_of_frame`] calls them: the
/// route's run the pipeline; tests script them.
pub trait HandStages {
    /// Letterbox, detector and NMS with these thresholds (timed as
    /// `preprocess` and `detect`), strongest first.
    fn detect(
        &mut self,
        settings: &HandSettings,
        clock: &mut StageClock,
    ) -> Result<Vec<HandBox>, RouteError>;
    /// One crop per hand, WiLoR on the batch, each hand placed in the image
    /// (timed as `crop`, `pose`, `mano`); in the hands' order.
    fn pose(
        &mut self,
        hands: &[HandBox],
        clock: &mut StageClock,
    ) -> Result<Vec<HandEstimate>, RouteError>;
}

/// What [`hands_of_frame`] needs of the frame besides its pixels.
#[derive(Debug, Clone, Copy)]
pub struct FrameFacts {
    pub stream: Option<StreamId>,
    pub received: Instant,
    pub width: usize,
    pub height: usize,
}

impl FrameFacts {
    pub fn of(frame: &Frame) -> FrameFacts {
        FrameFacts {
            stream: frame.stream,
            received: frame.received,
            width: frame.width,
            height: frame.height,
        }
    }
}

/// One frame's hands: followed from the previous frame when it can be,
/// else detected (or the client's boxes); then tracked, posed, and each
/// followed hand checked by its tracking confidence. `settings` are the
/// route's; the request's overrides apply on top.
pub fn hands_of_frame(
    tracks: &mut StreamTracks,
    frame: FrameFacts,
    settings: &HandSettings,
    request: &HandsRequest,
    stages: &mut impl HandStages,
    clock: &mut StageClock,
) -> Result<(Vec<HandResult>, Vec<u32>, bool), RouteError> {
    let settings = &settings.with(&request.overrides);
    let FrameFacts {
        stream,
        received,
        width,
        height,
    } = frame;
    // The bench's boxes with `time_detector` stand in for the detector's
    // answer: such a frame may be followed like any other.
    let stand_in = request.boxes.time_detector;
    let may_follow = settings.tracking
        && !settings.detector_only
        && !request.overrides.redetect
        && (request.boxes.boxes.is_none() || stand_in);
    // More hands than this frame may have (a push lowered `max_hands`):
    // the detector picks the strongest.
    let followed = may_follow
        .then(|| tracks.follow(stream, received, settings.redetect_interval, width, height))
        .flatten()
        .filter(|hands| hands.len() <= settings.max_hands);

    let (found, sightings, origin): (Vec<HandBox>, Vec<Sighting>, HandOrigin) =
        match (followed, &request.boxes.boxes) {
            (Some(sightings), _) => {
                clock.mark(stage::TRACK)?;
                let found = sightings
                    .iter()
                    .map(|s| HandBox {
                        bbox: s.bbox,
                        is_right: true,
                        score: 0.0,
                        keypoints_2d: Vec::new(),
                    })
                    .collect();
                (found, sightings, HandOrigin::Tracked)
            }
            (None, Some(boxes)) if stand_in => {
                stages.detect(settings, clock)?;
                let sightings = boxes
                    .iter()
                    .map(|h| Sighting::detected(h.bbox, h.is_right, h.score))
                    .collect();
                (boxes.clone(), sightings, HandOrigin::Detected)
            }
            (None, Some(boxes)) => {
                let sightings = boxes
                    .iter()
                    .map(|h| Sighting::stated(h.bbox, h.is_right))
                    .collect();
                (boxes.clone(), sightings, HandOrigin::Client)
            }
            (None, None) => {
                let mut found = stages.detect(settings, clock)?;
                found.truncate(settings.max_hands);
                let sightings = found
                    .iter()
                    .map(|h| Sighting::detected(h.bbox, h.is_right, h.score))
                    .collect();
                (found, sightings, HandOrigin::Detected)
            }
        };
    let detector_ran = origin == HandOrigin::Detected;
    let update = tracks.update(stream, &sightings, received);
    let mut ended = update.ended;
    // The track's side, not this frame's class, decides the mirroring.
    let hands: Vec<HandBox> = found
        .into_iter()
        .zip(&update.hands)
        .map(|(h, t)| HandBox {
            is_right: t.is_right,
            ..h
        })
        .collect();
    if settings.detector_only {
        let results = hands
            .into_iter()
            .zip(update.hands)
            .map(|(hand, track)| HandResult {
                hand,
                origin,
                track,
                tracking_confidence: 0.0,
                pose: None,
            })
            .collect();
        return Ok((results, ended, detector_ran));
    }

    let poses = stages.pose(&hands, clock)?;
    let track_settings = tracks.settings;
    let stream_tracks = tracks.of(stream);
    let mut results = Vec::with_capacity(poses.len());
    for ((mut hand, track), pose) in hands.into_iter().zip(update.hands).zip(poses) {
        let confidence = stream_tracks.observe(
            track.id,
            hand.bbox,
            &pose.keypoints_2d_projected,
            origin != HandOrigin::Tracked,
            width,
            height,
        );
        if origin == HandOrigin::Tracked {
            if confidence < settings.min_tracking_confidence {
                // Lost in its crop: not reported; the next frame detects.
                if stream_tracks.lose(track.id, &track_settings) {
                    ended.push(track.id);
                }
                continue;
            }
            hand.score = confidence;
        }
        let pose = HandEstimate {
            hand: hand.clone(),
            ..pose
        };
        results.push(HandResult {
            hand,
            origin,
            track,
            tracking_confidence: confidence,
            pose: Some(pose),
        });
    }
    Ok((results, ended, detector_ran))
}
impl HandsRoute {
    /// Notes whether the stream's next frame will be followed (see
    /// `followed_next`), and forgets streams the tracks forgot.
    fn guess_next(&mut self, frame: &Frame, settings: &HandSettings) {
        let Some(stream) = frame.stream else {
            return;
        };
        let followed = settings.tracking
            && !settings.detector_only
            && self
                .tracks
                .follow(
                    Some(stream),
                    frame.received,
                    settings.redetect_interval,
                    frame.width,
                    frame.height,
                )
                .is_some();
        if let Ok(mut streams) = self.followed_next.lock() {
            streams.retain(|s| self.tracks.holds(*s));
            if followed {
                streams.insert(stream);
            } else {
                streams.remove(&stream);
            }
        }
    }
}

/// The pipeline's stages on one frame.
struct PipelineStages<'a> {
    pipeline: &'a HandPipeline,
    frame: &'a Frame,
    request: &'a DetectRequest<HandBox>,
    prep: Option<Letterbox>,
    camera: Intrinsics,
}

impl HandStages for PipelineStages<'_> {
    fn detect(
        &mut self,
        settings: &HandSettings,
        clock: &mut StageClock,
    ) -> Result<Vec<HandBox>, RouteError> {
        let p = self.pipeline;
        let size = p.detector_input_size();
        self.request.detect(
            self.frame,
            self.prep.take(),
            clock,
            |img| DetectorInput::new(img, size),
            |input| Ok(p.detect_with(input, settings.conf_threshold, settings.iou_threshold)?),
        )
    }

    fn pose(
        &mut self,
        hands: &[HandBox],
        clock: &mut StageClock,
    ) -> Result<Vec<HandEstimate>, RouteError> {
        let p = self.pipeline;
        let crops = p.prepare_crops(frame_image(self.frame)?, hands);
        clock.mark(stage::CROP)?;
        let regressed = p.regress(&crops)?;
        clock.mark(stage::POSE)?;
        let hands = match regressed {
            Some(r) => p.mesh(&r, &crops, hands, &self.camera)?,
            None => Vec::new(),
        };
        clock.mark(stage::MANO)?;
        Ok(hands)
    }
}

/// Where the warm-up puts its hands on its blank frame.
const WARM_UP_BOX: [f32; 4] = [100.0, 80.0, 160.0, 150.0];

impl Route for HandsRoute {
    type Request = HandsRequest;
    type Prep = Letterbox;
    type Output = HandsOutput;

    const ID: RouteId = RouteId::Hands;
    const STAGES: &'static [&'static str] = &[
        stage::PREPROCESS,
        stage::DETECT,
        stage::TRACK,
        stage::CROP,
        stage::POSE,
        stage::MANO,
    ];

    fn preparer(&self) -> Option<Preparer<Self>> {
        let size = self.pipeline.detector_input_size();
        let followed_next = self.followed_next.clone();
        Some(Box::new(move |frame, request| {
            let followed = frame.stream.is_some_and(|s| {
                followed_next
                    .lock()
                    .is_ok_and(|streams| streams.contains(&s))
            });
            if followed && !request.overrides.redetect {
                return None;
            }
            request
                .boxes
                .letterbox(frame, |img| DetectorInput::new(img, size))
        }))
    }

    fn warm_up(&mut self) -> Result<(), RouteError> {
        let frame = super::blank_frame(320, 240);
        let mut clock = StageClock::default();
        self.run(&frame, &HandsRequest::default(), None, &mut clock)?;
        // A compiled network is traced per batch size: trace every size a
        // frame can bring now, not on the first frame with that many hands.
        let batches = if self.pipeline.is_compiled() {
            self.settings.max_hands
        } else {
            1
        };
        for n in 1..=batches {
            let hand = HandBox {
                bbox: WARM_UP_BOX,
                is_right: true,
                score: 1.0,
                keypoints_2d: Vec::new(),
            };
            self.run(
                &frame,
                &HandsRequest::with_boxes(vec![hand; n]),
                None,
                &mut clock,
            )?;
        }
        // The warm-up's hands are nobody's: ids start at 1 for real ones.
        self.tracks = StreamTracks::new(self.tracks.settings);
        Ok(())
    }

    fn run(
        &mut self,
        frame: &Frame,
        request: &HandsRequest,
        prep: Option<Letterbox>,
        clock: &mut StageClock,
    ) -> Result<HandsOutput, RouteError> {
        let p = &self.pipeline;
        frame_image(frame)?;
        let settings = self.settings.with(&request.overrides);
        let camera = frame
            .intrinsics
            .unwrap_or_else(|| p.pseudo_camera(frame.width, frame.height));
        let mut stages = PipelineStages {
            pipeline: p,
            frame,
            request: &request.boxes,
            prep,
            camera,
        };
        let (hands, ended, detector_ran) = hands_of_frame(
            &mut self.tracks,
            FrameFacts::of(frame),
            &self.settings,
            request,
            &mut stages,
            clock,
        )?;
        self.guess_next(frame, &settings);
        Ok(HandsOutput {
            hands,
            ended,
            detector_ran,
            camera,
            camera_given: frame.intrinsics.is_some(),
        })
    }
}

/// The hand route as the daemon knows it.
pub struct Hands;

impl RouteKind for Hands {
    type Route = HandsRoute;
    type Files = HandModelFiles;
    type Post = HandsPost;

    const PROTO: proto::Route = proto::Route::Hands;

    fn enabled(&self, config: &Config) -> bool {
        config.hands.enabled
    }

    fn models(&self, config: &Config, files: Option<&HandModelFiles>) -> Vec<ModelInfo> {
        vec![
            ModelInfo {
                name: "hand-detector".into(),
                route: RouteId::Hands,
                weights: files
                    .map(|f| f.detector_weights.clone())
                    .unwrap_or_default(),
                dtype: "float32".into(),
            },
            ModelInfo {
                name: "wilor".into(),
                route: RouteId::Hands,
                weights: files.map(|f| f.wilor_weights.clone()).unwrap_or_default(),
                dtype: config.hands.variant.to_string(),
            },
        ]
    }

    async fn find(&self, config: &Config, hub: &Hub) -> anyhow::Result<HandModelFiles> {
        crate::weights::resolve::hand_files(&config.hands, hub).await
    }

    fn load(mut files: HandModelFiles, config: &Config) -> anyhow::Result<(HandsRoute, bool)> {
        files.detector_config.conf_threshold = config.hands.conf_threshold;
        files.detector_config.iou_threshold = config.hands.iou_threshold;
        tracing::info!(
            detector = %files.detector_weights.display(),
            wilor = %files.wilor_weights.display(),
            mano = %files.mano.display(),
            "loading the hand route"
        );
        let (pipeline, synthetic) = HandPipeline::load(&files).context("loading the hand route")?;
        let on_gpu = posed_models::runtime::default_device().kind == "gpu";
        if config.hands.compile.enabled(on_gpu) {
            pipeline.compile().context("compiling the hand route")?;
        }
        let tracking = TrackSettings {
            max_coast_frames: config.hands.max_coast_frames,
            stale_after: std::time::Duration::from_millis(config.hands.track_timeout_ms),
            ..TrackSettings::default()
        };
        let settings = HandSettings::from_config(&config.hands);
        Ok((HandsRoute::new(pipeline, settings, tracking), synthetic))
    }

    fn request(
        &self,
        push: &proto::PushImageRequest,
        width: usize,
        height: usize,
        limits: &RequestLimits,
    ) -> Result<HandsRequest, Status> {
        RequestLimits::check_count(
            "hand_boxes",
            push.hand_boxes.len(),
            limits.max_hand_boxes,
            "[hands] max_hands",
        )?;
        let boxes = if push.hand_boxes.is_empty() {
            None
        } else {
            Some(hand_boxes(&push.hand_boxes, width, height)?)
        };
        let overrides = match &push.hand_options {
            Some(o) => hand_overrides(o, limits.max_hand_boxes)?,
            None => HandOverrides::default(),
        };
        Ok(HandsRequest {
            boxes: DetectRequest {
                boxes,
                time_detector: false,
            },
            overrides,
        })
    }

    fn post(&self, options: &PostOptions) -> HandsPost {
        HandsPost {
            mirror: options.mirror,
        }
    }
}

/// A push's hand options, checked; `max_hands` is the daemon's cap.
fn hand_overrides(o: &proto::HandOptions, max_hands: usize) -> Result<HandOverrides, Status> {
    let fraction = |name: &str, v: Option<f32>| match v {
        Some(v) if !(0.0..=1.0).contains(&v) => Err(Status::invalid_argument(format!(
            "hand_options.{name} is {v}: not in [0, 1]"
        ))),
        v => Ok(v),
    };
    let redetect_interval = match o.redetect_interval {
        Some(n) if !(1..=MAX_REDETECT_INTERVAL).contains(&n) => {
            return Err(Status::invalid_argument(format!(
                "hand_options.redetect_interval is {n}: not from 1 to {MAX_REDETECT_INTERVAL}"
            )))
        }
        n => n,
    };
    let max_hands = match o.max_hands.map(usize::try_from) {
        None => None,
        Some(Ok(n)) if (1..=max_hands).contains(&n) => Some(n),
        Some(_) => {
            return Err(Status::invalid_argument(format!(
                "hand_options.max_hands is {}: not from 1 to {max_hands} ([hands] max_hands)",
                o.max_hands.unwrap_or_default()
            )))
        }
    };
    Ok(HandOverrides {
        conf_threshold: fraction("conf_threshold", o.conf_threshold)?,
        iou_threshold: fraction("iou_threshold", o.iou_threshold)?,
        max_hands,
        tracking: o.tracking,
        min_tracking_confidence: fraction("min_tracking_confidence", o.min_tracking_confidence)?,
        redetect_interval,
        detector_only: o.detector_only,
        redetect: o.redetect,
    })
}

fn hand_boxes(
    boxes: &[proto::HandBox],
    width: usize,
    height: usize,
) -> Result<Vec<HandBox>, Status> {
    boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let bbox = checked_box("hand_boxes", i, b.r#box.as_ref(), width, height)?;
            let is_right = match proto::HandSide::try_from(b.side) {
                Ok(proto::HandSide::Left) => false,
                Ok(proto::HandSide::Right) => true,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "hand_boxes[{i}] needs side LEFT or RIGHT"
                    )))
                }
            };
            Ok(HandBox {
                bbox,
                is_right,
                score: 1.0,
                keypoints_2d: Vec::new(),
            })
        })
        .collect()
}

/// The user's sides for a mirrored camera.
pub struct HandsPost {
    mirror: bool,
}

impl RoutePost<HandsRoute> for HandsPost {
    fn event(
        &mut self,
        frame: &Arc<Frame>,
        result: &RouteResult<HandsRoute>,
        started: Instant,
    ) -> PostWork {
        let output = &result.output;
        PostWork::Done(Box::new(hands_event(
            frame,
            output,
            self.mirror,
            result.timings,
            result.dropped,
            started.elapsed(),
        )))
    }
}

/// The event for one frame's hands.
pub fn hands_event(
    frame: &Frame,
    output: &HandsOutput,
    mirror: bool,
    timings: &[(&'static str, Duration)],
    dropped: u64,
    post_time: Duration,
) -> proto::Event {
    let hands = output.hands.iter().map(|h| hand_pose(h, mirror)).collect();
    let k = &output.camera;
    let payload = proto::event::Payload::Hands(proto::Hands {
        hands,
        ended_track_ids: output.ended.clone(),
        camera: Some(proto::CameraIntrinsics {
            fx: k.fx,
            fy: k.fy,
            cx: k.cx,
            cy: k.cy,
        }),
        camera_given: output.camera_given,
        detector_ran: output.detector_ran,
    });
    proto::Event {
        mirrored: mirror,
        ..route_event(
            frame,
            proto::Route::Hands,
            timings,
            post_time,
            dropped,
            payload,
        )
    }
}

fn hand_pose(h: &HandResult, mirror: bool) -> proto::HandPose {
    // With `mirror`, the camera shows the user mirrored: the hand the
    // detector calls right is the user's left.
    let right = h.hand.is_right != mirror;
    let [x1, y1, x2, y2] = h.hand.bbox;
    let side = if right {
        proto::HandSide::Right
    } else {
        proto::HandSide::Left
    };
    let origin = match h.origin {
        HandOrigin::Detected => proto::HandOrigin::Detected,
        HandOrigin::Tracked => proto::HandOrigin::Tracked,
        HandOrigin::Client => proto::HandOrigin::Client,
    };
    let mut pose = proto::HandPose {
        track_id: h.track.id,
        handedness_score: h.track.handedness,
        side: side as i32,
        origin: origin as i32,
        confidence: h.hand.score,
        tracking_confidence: h.tracking_confidence,
        bbox: Some(proto::Box2D { x1, y1, x2, y2 }),
        detector_keypoints: h.hand.keypoints_2d.iter().flatten().copied().collect(),
        ..Default::default()
    };
    if let Some(p) = &h.pose {
        pose.keypoints_2d = p.keypoints_2d_projected.iter().flatten().copied().collect();
        pose.keypoints_3d = p.keypoints_3d.iter().flatten().copied().collect();
        pose.camera_translation = p.cam_t.to_vec();
        pose.focal_length_px = p.camera.fx;
        pose.vertices = p.vertices.iter().flatten().copied().collect();
        pose.mano_pose = p
            .global_orient
            .iter()
            .chain(p.hand_pose.iter().flatten())
            .copied()
            .collect();
        pose.mano_betas = p.betas.clone();
    }
    pose
}

#[cfg(test)]
mod tests {
    use posed_models::hand_pipeline::HandBox;

    use super::*;
    use crate::events::without_heavy_fields;

    fn est(bbox: [f32; 4], is_right: bool, keypoints: Vec<[f32; 2]>) -> HandEstimate {
        HandEstimate {
            hand: HandBox {
                bbox,
                is_right,
                score: 0.9,
                keypoints_2d: vec![],
            },
            keypoints_3d: vec![],
            vertices: vec![[1.0, 2.0, 3.0]],
            cam_t: [0.0, 0.0, 1.0],
            keypoints_2d_projected: keypoints,
            global_orient: [0.0; 3],
            hand_pose: vec![],
            betas: vec![],
            crop_cam: [1.0, 0.0, 0.0],
            camera: Intrinsics::pseudo(5000.0, 256.0, 640.0, 480.0),
        }
    }

    fn result(origin: HandOrigin, pose: Option<HandEstimate>) -> HandResult {
        HandResult {
            hand: HandBox {
                bbox: [0., 0., 10., 10.],
                is_right: true,
                score: 0.9,
                keypoints_2d: vec![],
            },
            origin,
            track: TrackedHand {
                id: 7,
                is_right: true,
                handedness: 0.8,
            },
            tracking_confidence: 0.6,
            pose,
        }
    }

    #[test]
    fn mirror_swaps_sides_and_vertices_are_opt_in() {
        let h = result(
            HandOrigin::Tracked,
            Some(est([0., 0., 10., 10.], true, vec![])),
        );
        let pose = hand_pose(&h, false);
        assert_eq!(pose.side, proto::HandSide::Right as i32);
        assert_eq!((pose.track_id, pose.handedness_score), (7, 0.8));
        assert_eq!(pose.origin, proto::HandOrigin::Tracked as i32);
        assert_eq!(pose.tracking_confidence, 0.6);
        assert_eq!(hand_pose(&h, true).side, proto::HandSide::Left as i32);
        let e = proto::Event {
            payload: Some(proto::event::Payload::Hands(proto::Hands {
                hands: vec![hand_pose(&h, false)],
                ..Default::default()
            })),
            ..Default::default()
        };
        let stripped = without_heavy_fields(&e, false, false);
        let Some(proto::event::Payload::Hands(hs)) = stripped.payload else {
            panic!()
        };
        assert!(hs.hands[0].vertices.is_empty());
        let Some(proto::event::Payload::Hands(hs)) = e.payload else {
            panic!()
        };
        assert_eq!(hs.hands[0].vertices, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn a_detector_only_hand_has_a_box_and_a_side_but_no_pose() {
        let pose = hand_pose(&result(HandOrigin::Detected, None), false);
        assert!(pose.bbox.is_some());
        assert_eq!(pose.origin, proto::HandOrigin::Detected as i32);
        assert!(pose.keypoints_2d.is_empty() && pose.camera_translation.is_empty());
    }

    #[test]
    fn push_options_override_the_config_within_its_limits() {
        let config = HandSettings::from_config(&HandsConfig::default());
        let o = hand_overrides(
            &proto::HandOptions {
                conf_threshold: Some(0.6),
                max_hands: Some(1),
                tracking: Some(false),
                redetect_interval: Some(1),
                ..Default::default()
            },
            config.max_hands,
        )
        .unwrap();
        let s = config.with(&o);
        assert_eq!(s.conf_threshold, 0.6);
        assert_eq!(s.max_hands, 1);
        assert!(!s.tracking);
        assert_eq!(s.redetect_interval, 1);
        assert_eq!(s.iou_threshold, config.iou_threshold);
        assert_eq!(config.with(&HandOverrides::default()), config);
    }

    #[test]
    fn push_options_out_of_range_are_refused_with_the_field_named() {
        let cases: Vec<(proto::HandOptions, &str)> = vec![
            (
                proto::HandOptions {
                    conf_threshold: Some(f32::NAN),
                    ..Default::default()
                },
                "hand_options.conf_threshold is NaN",
            ),
            (
                proto::HandOptions {
                    iou_threshold: Some(1.5),
                    ..Default::default()
                },
                "hand_options.iou_threshold is 1.5",
            ),
            (
                proto::HandOptions {
                    min_tracking_confidence: Some(-0.1),
                    ..Default::default()
                },
                "hand_options.min_tracking_confidence is -0.1",
            ),
            (
                proto::HandOptions {
                    min_tracking_confidence: Some(f32::INFINITY),
                    ..Default::default()
                },
                "hand_options.min_tracking_confidence is inf",
            ),
            (
                proto::HandOptions {
                    redetect_interval: Some(0),
                    ..Default::default()
                },
                "hand_options.redetect_interval is 0",
            ),
            (
                proto::HandOptions {
                    redetect_interval: Some(u32::MAX),
                    ..Default::default()
                },
                "hand_options.redetect_interval is 4294967295",
            ),
            (
                proto::HandOptions {
                    max_hands: Some(0),
                    ..Default::default()
                },
                "hand_options.max_hands is 0",
            ),
            (
                proto::HandOptions {
                    max_hands: Some(9),
                    ..Default::default()
                },
                "hand_options.max_hands is 9: not from 1 to 8",
            ),
            (
                proto::HandOptions {
                    max_hands: Some(u32::MAX),
                    ..Default::default()
                },
                "hand_options.max_hands is 4294967295",
            ),
        ];
        for (options, message) in cases {
            let e = hand_overrides(&options, 8).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(message), "{}", e.message());
        }
    }
}
