//! The hand route: letterbox → hand detector (YOLOv8-pose, left/right) →
//! NMS → one crop per hand (left hands mirrored) → WiLoR on the batch →
//! MANO → full-image coordinates. Between detection and crop, the stream's
//! tracks give each hand its id and its voted side (see
//! [`crate::tracking::hands`]); the post stage builds the `Hands` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use posed_models::camera::Intrinsics;
use posed_models::hand_pipeline::{
    DetectorInput, HandBox, HandEstimate, HandModelFiles, HandPipeline,
};
use tonic::Status;

use super::{
    frame_image, DetectRequest, ModelInfo, PostOptions, PostWork, Preparer, Route, RouteError,
    RouteId, RouteKind, RoutePost, RouteResult, StageClock, Timed,
};
use crate::config::Config;
use crate::engine::Frame;
use crate::events::{checked_box, route_event};
use crate::proto;
use crate::tracking::hands::{Sighting, StreamTracks, TrackSettings, TrackedHand};
use crate::weights::hub::Hub;

/// The hand route's stages, in order.
pub mod stage {
    pub use crate::routes::stage::{DETECT, PREPROCESS};
    /// One crop per hand, on the CPU.
    pub const CROP: &str = "crop";
    /// WiLoR and the final MANO pass on the batch, evaluated.
    pub const POSE: &str = "pose";
    /// Read-back, un-mirroring and placement in the image.
    pub const MANO: &str = "mano";
}

/// The hand models on the MLX thread.
pub struct HandsRoute {
    pipeline: HandPipeline,
    /// At most this many detected hands per frame, strongest first.
    max_hands: usize,
    /// Every stream's hand tracks: they decide a hand's side before its
    /// crop is mirrored, so geometry and side always agree.
    tracks: StreamTracks,
}

impl HandsRoute {
    pub fn new(pipeline: HandPipeline, max_hands: usize, tracking: TrackSettings) -> Self {
        HandsRoute {
            pipeline,
            max_hands,
            tracks: StreamTracks::new(tracking),
        }
    }

    pub fn pipeline(&self) -> &HandPipeline {
        &self.pipeline
    }
}

/// What a frame may ask of the hands route: boxes it knows, or detect.
pub type HandsRequest = DetectRequest<HandBox>;

/// The detector's letterbox, made on the prep thread.
pub type Letterbox = Timed<DetectorInput>;

/// The hands of one frame.
#[derive(Debug)]
pub struct HandsOutput {
    pub hands: Vec<HandEstimate>,
    /// Each hand's track (its id, voted side), in the same order.
    pub tracks: Vec<TrackedHand>,
    /// Tracks of the frame's source that ended with this frame.
    pub ended: Vec<u32>,
    /// The camera the hands were placed with, and whether it is the
    /// frame's own (else WiLoR's pseudo camera).
    pub camera: Intrinsics,
    pub camera_given: bool,
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
        stage::CROP,
        stage::POSE,
        stage::MANO,
    ];

    fn preparer(&self) -> Option<Preparer<Self>> {
        let size = self.pipeline.detector_input_size();
        Some(Box::new(move |frame, request| {
            request.letterbox(frame, |img| DetectorInput::new(img, size))
        }))
    }

    fn warm_up(&mut self) -> Result<(), RouteError> {
        let frame = super::blank_frame(320, 240);
        let mut clock = StageClock::default();
        self.run(&frame, &HandsRequest::default(), None, &mut clock)?;
        // A compiled network is traced per batch size: trace every size a
        // frame can bring now, not on the first frame with that many hands.
        let batches = if self.pipeline.is_compiled() {
            self.max_hands
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
            let request = HandsRequest {
                boxes: Some(vec![hand; n]),
                time_detector: false,
            };
            self.run(&frame, &request, None, &mut clock)?;
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
        let img = frame_image(frame)?;
        let size = p.detector_input_size();
        let detected = request.detect(
            frame,
            prep,
            clock,
            |img| DetectorInput::new(img, size),
            |input| {
                let mut hands = p.detect(input)?;
                // Strongest first: keep the route's cost bounded per frame.
                hands.truncate(self.max_hands);
                Ok(hands)
            },
        )?;
        let found = request.boxes.as_deref().unwrap_or(&detected);
        let sightings: Vec<Sighting> = found
            .iter()
            .map(|h| match request.boxes {
                Some(_) => Sighting::stated(h.bbox, h.is_right),
                None => Sighting::detected(h.bbox, h.is_right, h.score),
            })
            .collect();
        let update = self
            .tracks
            .update(&frame.source_id, &sightings, frame.received);
        // The track's side, not this frame's class, decides the mirroring.
        let hands: Vec<HandBox> = found
            .iter()
            .zip(&update.hands)
            .map(|(h, t)| HandBox {
                is_right: t.is_right,
                ..h.clone()
            })
            .collect();
        let crops = p.prepare_crops(img, &hands);
        let camera = frame
            .intrinsics
            .unwrap_or_else(|| p.pseudo_camera(frame.width, frame.height));
        clock.mark(stage::CROP);
        let regressed = p.regress(&crops)?;
        clock.mark(stage::POSE);
        let hands = match regressed {
            Some(r) => p.mesh(&r, &crops, &hands, &camera)?,
            None => Vec::new(),
        };
        clock.mark(stage::MANO);
        Ok(HandsOutput {
            hands,
            tracks: update.hands,
            ended: update.ended,
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
        Ok((
            HandsRoute::new(pipeline, config.hands.max_hands, tracking),
            synthetic,
        ))
    }

    fn request(
        &self,
        push: &proto::PushImageRequest,
        width: usize,
        height: usize,
    ) -> Result<HandsRequest, Status> {
        let boxes = if push.hand_boxes.is_empty() {
            None
        } else {
            Some(hand_boxes(&push.hand_boxes, width, height)?)
        };
        Ok(HandsRequest {
            boxes,
            time_detector: false,
        })
    }

    fn post(&self, options: &PostOptions) -> HandsPost {
        HandsPost {
            mirror: options.mirror,
        }
    }
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
    let hands = output
        .hands
        .iter()
        .zip(&output.tracks)
        .map(|(h, t)| hand_pose(h, t, mirror))
        .collect();
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

fn hand_pose(h: &HandEstimate, track: &TrackedHand, mirror: bool) -> proto::HandPose {
    // With `mirror`, the camera shows the user mirrored: the hand the
    // detector calls right is the user's left.
    let right = h.hand.is_right != mirror;
    let [x1, y1, x2, y2] = h.hand.bbox;
    proto::HandPose {
        track_id: track.id,
        handedness_score: track.handedness,
        side: if right {
            proto::HandSide::Right
        } else {
            proto::HandSide::Left
        } as i32,
        confidence: h.hand.score,
        bbox: Some(proto::Box2D { x1, y1, x2, y2 }),
        keypoints_2d: h.keypoints_2d_projected.iter().flatten().copied().collect(),
        keypoints_3d: h.keypoints_3d.iter().flatten().copied().collect(),
        camera_translation: h.cam_t.to_vec(),
        focal_length_px: h.camera.fx,
        vertices: h.vertices.iter().flatten().copied().collect(),
        mano_pose: h
            .global_orient
            .iter()
            .chain(h.hand_pose.iter().flatten())
            .copied()
            .collect(),
        mano_betas: h.betas.clone(),
        detector_keypoints: h.hand.keypoints_2d.iter().flatten().copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use posed_models::hand_pipeline::HandBox;

    use super::*;
    use crate::events::without_heavy_fields;

    fn est(bbox: [f32; 4], is_right: bool) -> HandEstimate {
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
            keypoints_2d_projected: vec![],
            global_orient: [0.0; 3],
            hand_pose: vec![],
            betas: vec![],
            crop_cam: [1.0, 0.0, 0.0],
            camera: Intrinsics::pseudo(5000.0, 256.0, 640.0, 480.0),
        }
    }

    const TRACK: TrackedHand = TrackedHand {
        id: 7,
        is_right: true,
        handedness: 0.8,
    };

    #[test]
    fn mirror_swaps_sides_and_vertices_are_opt_in() {
        let h = est([0., 0., 10., 10.], true);
        let pose = hand_pose(&h, &TRACK, false);
        assert_eq!(pose.side, proto::HandSide::Right as i32);
        assert_eq!((pose.track_id, pose.handedness_score), (7, 0.8));
        assert_eq!(
            hand_pose(&h, &TRACK, true).side,
            proto::HandSide::Left as i32
        );
        let e = proto::Event {
            payload: Some(proto::event::Payload::Hands(proto::Hands {
                hands: vec![hand_pose(&h, &TRACK, false)],
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
}
