//! The body route: mmdet letterbox → RTMDet person detector → 3:4 crops →
//! Sapiens2 pose (308 keypoints, with the reference's flip test) → DARK
//! decode back to the image; then track ids and the `Bodies` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use posed_models::body_pipeline::{BodyEstimate, BodyModelFiles, BodyPipeline, DetectorInput};
use tonic::Status;

use super::{
    frame_image, DetectRequest, ModelInfo, PostOptions, PostWork, Preparer, RequestLimits, Route,
    RouteError, RouteId, RouteKind, RoutePost, RouteResult, StageClock, Timed,
};
use crate::config::Config;
use crate::engine::Frame;
use crate::events::{checked_box, route_event};
use crate::proto;
use crate::tracking::BoxTracker;
use crate::weights::hub::Hub;

/// The body route's stages, in order.
pub mod stage {
    /// mmdet's letterbox, then RTMDet and its post-processing.
    pub use crate::routes::stage::{DETECT, PREPROCESS};
    /// The UDP warps of the person crops.
    pub const CROP: &str = "crop";
    /// Sapiens2 on the crops (and their mirror images), evaluated.
    pub const POSE: &str = "pose";
    /// Flip average, DARK decode, back to the image.
    pub const KEYPOINTS: &str = "keypoints";
}

/// The body models on the MLX thread.
pub struct BodyRoute {
    pipeline: BodyPipeline,
}

impl BodyRoute {
    pub fn new(pipeline: BodyPipeline) -> Self {
        BodyRoute { pipeline }
    }
}

/// What a frame may ask of the body route: boxes it knows, or detect.
pub type BodyRequest = DetectRequest<[f32; 4]>;

/// The detector's letterbox, made on the prep thread.
pub type Letterbox = Timed<DetectorInput>;

/// The people of one frame.
#[derive(Debug)]
pub struct BodyOutput {
    pub people: Vec<BodyEstimate>,
}

impl Route for BodyRoute {
    type Request = BodyRequest;
    type Prep = Letterbox;
    type Output = BodyOutput;

    const ID: RouteId = RouteId::Body;
    const STAGES: &'static [&'static str] = &[
        stage::PREPROCESS,
        stage::DETECT,
        stage::CROP,
        stage::POSE,
        stage::KEYPOINTS,
    ];

    fn preparer(&self) -> Option<Preparer<Self>> {
        let size = self.pipeline.detector_input_size();
        Some(Box::new(move |frame, request| {
            request.letterbox(frame, |img| DetectorInput::new(img, size))
        }))
    }

    fn warm_up(&mut self) -> Result<(), RouteError> {
        // The detector, then one person through the pose network and decode.
        let frame = super::blank_frame(320, 240);
        let mut clock = StageClock::default();
        self.run(&frame, &BodyRequest::default(), None, &mut clock)?;
        let one = BodyRequest {
            boxes: Some(vec![[100.0, 40.0, 180.0, 220.0]]),
            time_detector: false,
        };
        self.run(&frame, &one, None, &mut clock)?;
        Ok(())
    }

    fn run(
        &mut self,
        frame: &Frame,
        request: &BodyRequest,
        prep: Option<Letterbox>,
        clock: &mut StageClock,
    ) -> Result<BodyOutput, RouteError> {
        let p = &self.pipeline;
        let img = frame_image(frame)?;
        let size = p.detector_input_size();
        let detected = request.detect(
            frame,
            prep,
            clock,
            |img| DetectorInput::new(img, size),
            |input| Ok(p.detect(input)?),
        )?;
        let boxes: Vec<([f32; 4], f32)> = match &request.boxes {
            Some(b) => b.iter().map(|&b| (b, 1.0)).collect(),
            None => detected,
        };
        let batch = p.prepare_crops(img, &boxes);
        clock.mark(stage::CROP)?;
        let heatmaps = p.heatmaps(&batch)?;
        clock.mark(stage::POSE)?;
        let people = match heatmaps {
            Some((hm, mirrored)) => p.decode(&batch, &hm, mirrored.as_ref())?,
            None => Vec::new(),
        };
        clock.mark(stage::KEYPOINTS)?;
        Ok(BodyOutput { people })
    }
}

/// The body route as the daemon knows it.
pub struct Body;

impl RouteKind for Body {
    type Route = BodyRoute;
    type Files = BodyModelFiles;
    type Post = BodyPost;

    const PROTO: proto::Route = proto::Route::Body;

    fn enabled(&self, config: &Config) -> bool {
        config.body.enabled
    }

    fn models(&self, config: &Config, files: Option<&BodyModelFiles>) -> Vec<ModelInfo> {
        vec![
            ModelInfo {
                name: "person-detector".into(),
                route: RouteId::Body,
                weights: files
                    .map(|f| f.detector_weights.clone())
                    .unwrap_or_default(),
                dtype: "float32".into(),
            },
            ModelInfo {
                name: format!("sapiens2-pose-{}", config.body.size),
                route: RouteId::Body,
                weights: files.map(|f| f.pose_weights.clone()).unwrap_or_default(),
                dtype: config.body.dtype.to_string(),
            },
        ]
    }

    async fn find(&self, config: &Config, hub: &Hub) -> anyhow::Result<BodyModelFiles> {
        crate::weights::resolve::body_files(&config.body, hub).await
    }

    fn load(mut files: BodyModelFiles, config: &Config) -> anyhow::Result<(BodyRoute, bool)> {
        tracing::info!(
            detector = %files.detector_weights.display(),
            pose = %files.pose_weights.display(),
            "loading the body route"
        );
        let body = &config.body;
        files.pose_config.demo.flip_test = body.flip_test;
        let (mut pipeline, synthetic) = BodyPipeline::load(&files, Some(body.dtype.dtype()))
            .context("loading the body route")?;
        pipeline.max_people = body.max_people;
        Ok((BodyRoute::new(pipeline), synthetic))
    }

    fn request(
        &self,
        push: &proto::PushImageRequest,
        width: usize,
        height: usize,
        limits: &RequestLimits,
    ) -> Result<BodyRequest, Status> {
        RequestLimits::check_count(
            "person_boxes",
            push.person_boxes.len(),
            limits.max_person_boxes,
            "[body] max_people",
        )?;
        let boxes = if push.person_boxes.is_empty() {
            None
        } else {
            let boxes = push
                .person_boxes
                .iter()
                .enumerate()
                .map(|(i, b)| checked_box("person_boxes", i, Some(b), width, height))
                .collect::<Result<_, _>>()?;
            Some(boxes)
        };
        Ok(BodyRequest {
            boxes,
            time_detector: false,
        })
    }

    fn post(&self, _: &PostOptions) -> BodyPost {
        BodyPost::default()
    }
}

/// Track ids per source.
#[derive(Default)]
pub struct BodyPost {
    tracker: BoxTracker,
}

impl RoutePost<BodyRoute> for BodyPost {
    fn event(
        &mut self,
        frame: &Arc<Frame>,
        result: &RouteResult<BodyRoute>,
        started: Instant,
    ) -> PostWork {
        let people = &result.output.people;
        let boxes: Vec<([f32; 4], bool)> = people.iter().map(|p| (p.bbox, false)).collect();
        let ids = self.tracker.assign(&frame.source_id, &boxes);
        PostWork::Done(Box::new(body_event(
            frame,
            people,
            &ids,
            result.timings,
            result.dropped,
            started.elapsed(),
        )))
    }
}

/// The event for one frame's people.
pub fn body_event(
    frame: &Frame,
    people: &[BodyEstimate],
    track_ids: &[u32],
    timings: &[(&'static str, Duration)],
    dropped: u64,
    post_time: Duration,
) -> proto::Event {
    let people = people
        .iter()
        .zip(track_ids)
        .map(|(p, &track_id)| {
            let [x1, y1, x2, y2] = p.bbox;
            proto::BodyPose {
                track_id,
                bbox: Some(proto::Box2D { x1, y1, x2, y2 }),
                score: p.score,
                keypoints: p.keypoints.iter().flatten().copied().collect(),
                keypoint_scores: p.keypoint_scores.clone(),
            }
        })
        .collect();
    let payload = proto::event::Payload::Bodies(proto::Bodies { people });
    route_event(
        frame,
        proto::Route::Body,
        timings,
        post_time,
        dropped,
        payload,
    )
}
