//! The MLX-thread half of a route: [`Route`], the clock its stages are
//! timed on, and the type-erased set the engine holds.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{stage, RouteId};
use crate::engine::Frame;

/// Times a route's stages as they run: each [`StageClock::mark`] ends the
/// stage that ran since the previous one. With a deadline, a stage that
/// ends past it stops the frame there: `mark` answers
/// [`RouteError::DeadlineExceeded`] and the route returns it with `?`, so
/// the later stages never run.
#[derive(Debug)]
pub struct StageClock {
    lap: Instant,
    timings: Vec<(&'static str, Duration)>,
    deadline: Option<FrameDeadline>,
}

/// When the frame must be done by, and the limit that set it (for the
/// message).
#[derive(Debug, Clone, Copy)]
pub struct FrameDeadline {
    pub at: Instant,
    pub limit: Duration,
}

impl Default for StageClock {
    fn default() -> Self {
        StageClock {
            lap: Instant::now(),
            timings: Vec::with_capacity(8),
            deadline: None,
        }
    }
}

impl StageClock {
    /// A clock that stops the frame at the first stage ending past
    /// `deadline`.
    pub fn until(deadline: Option<FrameDeadline>) -> Self {
        StageClock {
            deadline,
            ..Default::default()
        }
    }

    /// Ends `stage` now.
    pub fn mark(&mut self, stage: &'static str) -> Result<(), RouteError> {
        let now = Instant::now();
        self.timings.push((stage, now - self.lap));
        self.lap = now;
        self.check(stage, now)
    }

    /// A stage done elsewhere (on the prep thread), with how long it took.
    pub fn add(&mut self, stage: &'static str, took: Duration) -> Result<(), RouteError> {
        self.timings.push((stage, took));
        self.lap = Instant::now();
        self.check(stage, self.lap)
    }

    fn check(&self, stage: &'static str, now: Instant) -> Result<(), RouteError> {
        match self.deadline {
            Some(d) if now > d.at => Err(RouteError::DeadlineExceeded {
                stage,
                limit: d.limit,
            }),
            _ => Ok(()),
        }
    }

    /// (stage, time) in the order they ran.
    pub fn into_timings(self) -> Vec<(&'static str, Duration)> {
        self.timings
    }
}

/// Why a route failed on a frame, or failed to load.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("the frame is not {width}x{height} RGB")]
    BadFrame { width: usize, height: usize },
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    /// Its models failed to load (the message says which file, why).
    #[error("{0:#}")]
    Load(anyhow::Error),
    /// The frame was still running when its time was up; abandoned after
    /// `stage`.
    #[error("the frame ran over its {} ms limit (server.max_frame_ms) and was abandoned after its {stage} stage", limit.as_millis())]
    DeadlineExceeded {
        stage: &'static str,
        limit: Duration,
    },
}

/// A frame's pixels as the models read them.
pub fn frame_image(frame: &Frame) -> Result<posed_models::image::RgbImage<'_>, RouteError> {
    posed_models::image::RgbImage::new(frame.width, frame.height, &frame.rgb).ok_or(
        RouteError::BadFrame {
            width: frame.width,
            height: frame.height,
        },
    )
}

/// CPU work on a frame's pixels, and how long it took: made on the prep
/// thread ahead of the MLX thread, or by `run` for a frame handed in
/// directly.
pub struct Timed<T> {
    pub value: T,
    pub took: Duration,
}

impl<T> Timed<T> {
    /// `make` of the frame's pixels; `None` for a frame of the wrong size
    /// (the route's `run` reports that).
    pub fn of_frame(
        frame: &Frame,
        make: impl FnOnce(posed_models::image::RgbImage) -> T,
    ) -> Option<Self> {
        let img = frame_image(frame).ok()?;
        let t = Instant::now();
        let value = make(img);
        Some(Timed {
            value,
            took: t.elapsed(),
        })
    }

    /// What the prep thread made, else made now.
    pub fn or_make(
        prep: Option<Self>,
        frame: &Frame,
        make: impl FnOnce(posed_models::image::RgbImage) -> T,
    ) -> Result<Self, RouteError> {
        match prep {
            Some(p) => Ok(p),
            None => Self::of_frame(frame, make).ok_or(RouteError::BadFrame {
                width: frame.width,
                height: frame.height,
            }),
        }
    }
}

/// What a frame may ask of a detector-first route (hands, body).
#[derive(Debug, Clone)]
pub struct DetectRequest<B> {
    /// Boxes the client already knows: the detector is skipped.
    pub boxes: Option<Vec<B>>,
    /// Run and time the detector even with `boxes`, whose boxes go on
    /// (the bench's fixed batches).
    pub time_detector: bool,
}

impl<B> Default for DetectRequest<B> {
    fn default() -> Self {
        DetectRequest {
            boxes: None,
            time_detector: false,
        }
    }
}

impl<B> DetectRequest<B> {
    /// The client's boxes; the detector runs only for the bench.
    pub fn with_boxes(boxes: Vec<B>) -> Self {
        DetectRequest {
            boxes: Some(boxes),
            time_detector: false,
        }
    }

    /// The detector runs for this frame.
    pub fn detects(&self) -> bool {
        self.boxes.is_none() || self.time_detector
    }

    /// The detector stage, when this frame needs it: the letterbox (the
    /// prep thread's, or made now) timed as `preprocess`, then `detect`;
    /// nothing otherwise.
    pub fn detect<T, D>(
        &self,
        frame: &Frame,
        prep: Option<Timed<T>>,
        clock: &mut StageClock,
        make: impl FnOnce(posed_models::image::RgbImage) -> T,
        detect: impl FnOnce(&T) -> Result<Vec<D>, RouteError>,
    ) -> Result<Vec<D>, RouteError> {
        if !self.detects() {
            return Ok(Vec::new());
        }
        let letterbox = Timed::or_make(prep, frame, make)?;
        clock.add(stage::PREPROCESS, letterbox.took)?;
        let found = detect(&letterbox.value)?;
        clock.mark(stage::DETECT)?;
        Ok(found)
    }

    /// The prep thread's work: the detector's input if it will run.
    pub fn letterbox<T>(
        &self,
        frame: &Frame,
        make: impl FnOnce(posed_models::image::RgbImage) -> T,
    ) -> Option<Timed<T>> {
        self.detects()
            .then(|| Timed::of_frame(frame, make))
            .flatten()
    }
}

/// A mid-grey frame, for warm-ups and tests.
pub fn blank_frame(width: usize, height: usize) -> Frame {
    Frame {
        id: 0,
        source_id: "warm-up".into(),
        client_frame_id: 0,
        captured: std::time::SystemTime::now(),
        received: Instant::now(),
        stream: None,
        width,
        height,
        rgb: vec![128; width * height * 3],
        intrinsics: None,
    }
}

/// The MLX-thread half of a route: it holds the models (MLX state never
/// leaves this thread) and runs one frame through its stages.
pub trait Route: 'static {
    /// What a frame may bring for this route besides its pixels (boxes the
    /// client knows, a hint).
    type Request: Default + Send + 'static;
    /// What the prep thread makes of a frame ahead of the MLX thread.
    type Prep: Send + 'static;
    /// One frame's answer: plain Rust data, it leaves the MLX thread.
    type Output: Send + Sync + 'static;

    const ID: RouteId;
    /// Every stage `run` may time, in order (`<route>.<stage>` in
    /// telemetry).
    const STAGES: &'static [&'static str];

    /// The CPU work the prep thread does for each frame, if any: a `Send`
    /// closure over what it needs (sizes, not models).
    fn preparer(&self) -> Option<Preparer<Self>>;

    /// Runs every stage once on a blank frame, so the first real frame pays
    /// no first-run (or compile) costs.
    fn warm_up(&mut self) -> Result<(), RouteError>;

    /// One frame through the route's stages, each timed on `clock`.
    fn run(
        &mut self,
        frame: &Frame,
        request: &Self::Request,
        prep: Option<Self::Prep>,
        clock: &mut StageClock,
    ) -> Result<Self::Output, RouteError>;
}

/// A route's prep-thread work for one frame and its request.
pub type Preparer<R> =
    Box<dyn Fn(&Frame, &<R as Route>::Request) -> Option<<R as Route>::Prep> + Send + 'static>;

/// What one frame asks of one route.
pub struct RouteRequest {
    pub id: RouteId,
    value: Box<dyn Any + Send>,
}

impl RouteRequest {
    pub fn new<R: Route>(request: R::Request) -> Self {
        RouteRequest {
            id: R::ID,
            value: Box::new(request),
        }
    }

    /// The route's default request (run it as for a camera frame).
    pub fn default_for(id: RouteId) -> Self {
        id.kind().default_request()
    }

    pub fn get<R: Route>(&self) -> Option<&R::Request> {
        self.value.downcast_ref()
    }

    pub fn into_inner<R: Route>(self) -> Option<R::Request> {
        self.value.downcast().ok().map(|r| *r)
    }
}

/// One route's answer for one frame, with its stage timings.
#[derive(Clone)]
pub struct RouteOutput {
    pub id: RouteId,
    /// (stage, time) in the order they ran.
    pub timings: Vec<(&'static str, Duration)>,
    value: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for RouteOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteOutput")
            .field("id", &self.id)
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}

impl RouteOutput {
    pub fn new<R: Route>(output: R::Output, timings: Vec<(&'static str, Duration)>) -> Self {
        RouteOutput {
            id: R::ID,
            timings,
            value: Arc::new(output),
        }
    }

    pub fn get<R: Route>(&self) -> Option<&R::Output> {
        self.value.downcast_ref()
    }
}

/// Type-erased prep work, as the prep thread holds it.
type AnyPreparer = Box<dyn Fn(&Frame, &RouteRequest) -> Option<Box<dyn Any + Send>> + Send>;

/// A [`Route`] as the engine holds it: routes of different types in one
/// list. Implemented for every `Route`; the downcasts live here only.
trait AnyRoute {
    fn id(&self) -> RouteId;
    fn preparer(&self) -> Option<AnyPreparer>;
    fn warm_up(&mut self) -> Result<(), RouteError>;
    fn run(
        &mut self,
        frame: &Frame,
        request: Option<&RouteRequest>,
        prep: Option<Box<dyn Any + Send>>,
        deadline: Option<FrameDeadline>,
    ) -> Result<RouteOutput, RouteError>;
}

impl<R: Route> AnyRoute for R {
    fn id(&self) -> RouteId {
        R::ID
    }

    fn preparer(&self) -> Option<AnyPreparer> {
        let prepare = Route::preparer(self)?;
        Some(Box::new(move |frame, request| {
            let request = request.get::<R>()?;
            prepare(frame, request).map(|p| Box::new(p) as Box<dyn Any + Send>)
        }))
    }

    fn warm_up(&mut self) -> Result<(), RouteError> {
        Route::warm_up(self)
    }

    fn run(
        &mut self,
        frame: &Frame,
        request: Option<&RouteRequest>,
        prep: Option<Box<dyn Any + Send>>,
        deadline: Option<FrameDeadline>,
    ) -> Result<RouteOutput, RouteError> {
        let default = R::Request::default();
        let request = request.and_then(RouteRequest::get::<R>).unwrap_or(&default);
        let prep = prep.and_then(|p| p.downcast::<R::Prep>().ok()).map(|p| *p);
        let mut clock = StageClock::until(deadline);
        let output = Route::run(self, frame, request, prep, &mut clock)?;
        Ok(RouteOutput::new::<R>(output, clock.into_timings()))
    }
}

/// The loaded routes, on the MLX thread.
#[derive(Default)]
pub struct RouteSet {
    routes: Vec<Box<dyn AnyRoute>>,
}

impl RouteSet {
    pub fn push<R: Route>(&mut self, route: R) {
        self.routes.push(Box::new(route));
    }

    pub fn with<R: Route>(mut self, route: R) -> Self {
        self.push(route);
        self
    }

    pub fn extend(&mut self, other: RouteSet) {
        self.routes.extend(other.routes);
    }

    pub fn ids(&self) -> Vec<RouteId> {
        self.routes.iter().map(|r| r.id()).collect()
    }

    pub fn warm_up(&mut self) -> Result<(), (RouteId, RouteError)> {
        for r in &mut self.routes {
            r.warm_up().map_err(|e| (r.id(), e))?;
        }
        Ok(())
    }

    /// What the prep thread does for each frame, route by route.
    pub fn preparers(&self) -> FramePreparer {
        FramePreparer {
            routes: self
                .routes
                .iter()
                .filter_map(|r| Some((r.id(), r.preparer()?)))
                .collect(),
        }
    }

    /// Runs route `id` on `frame` (stopped at `deadline`); `None` if it is
    /// not loaded.
    pub fn run(
        &mut self,
        id: RouteId,
        frame: &Frame,
        request: Option<&RouteRequest>,
        prep: Option<Box<dyn Any + Send>>,
        deadline: Option<FrameDeadline>,
    ) -> Option<Result<RouteOutput, RouteError>> {
        let route = self.routes.iter_mut().find(|r| r.id() == id)?;
        Some(route.run(frame, request, prep, deadline))
    }
}

/// The prep thread's work for a frame: each loaded route's preparer.
#[derive(Default)]
pub struct FramePreparer {
    routes: Vec<(RouteId, AnyPreparer)>,
}

/// What the prep thread made of one frame, per route.
#[derive(Default)]
pub struct Prepared(Vec<(RouteId, Box<dyn Any + Send>)>);

impl Prepared {
    pub fn take(&mut self, id: RouteId) -> Option<Box<dyn Any + Send>> {
        let i = self.0.iter().position(|(r, _)| *r == id)?;
        Some(self.0.swap_remove(i).1)
    }

    pub fn routes(&self) -> Vec<RouteId> {
        self.0.iter().map(|(id, _)| *id).collect()
    }
}

impl FramePreparer {
    /// The prep work of the routes `runs` says the frame goes through.
    pub fn prepare(
        &self,
        frame: &Frame,
        requests: &[RouteRequest],
        runs: impl Fn(RouteId) -> bool,
    ) -> Prepared {
        let mut made = Vec::new();
        for (id, prepare) in &self.routes {
            if !runs(*id) {
                continue;
            }
            let default;
            let request = match requests.iter().find(|r| r.id == *id) {
                Some(r) => r,
                None => {
                    default = RouteRequest::default_for(*id);
                    &default
                }
            };
            if let Some(p) = prepare(frame, request) {
                made.push((*id, p));
            }
        }
        Prepared(made)
    }
}

#[cfg(test)]
mod tests {
    use posed_models::body_pipeline::DetectorInput as PersonInput;
    use posed_models::hand_pipeline::{DetectorInput as HandInput, HandBox};

    use super::*;

    /// The prep thread letterboxes only for a detector that runs: a frame
    /// that brings its own boxes gets none, unless the bench times the
    /// detector anyway.
    #[test]
    fn the_letterbox_is_made_only_when_the_detector_runs() {
        let frame = blank_frame(64, 48);
        let hands = DetectRequest::<HandBox>::default()
            .letterbox(&frame, |img| HandInput::new(img, 32))
            .unwrap();
        assert_eq!(hands.value.letterbox.size, 32);
        let people = DetectRequest::<[f32; 4]>::default()
            .letterbox(&frame, |img| PersonInput::new(img, 40))
            .unwrap();
        assert_eq!(people.value.size, 40);

        let boxed = DetectRequest::<HandBox>::with_boxes(Vec::new());
        assert!(boxed
            .letterbox(&frame, |img| HandInput::new(img, 32))
            .is_none());
        let timed = DetectRequest {
            time_detector: true,
            ..boxed
        };
        assert!(timed
            .letterbox(&frame, |img| HandInput::new(img, 32))
            .is_some());

        // A frame whose pixels do not match its size gets none: the
        // route's run reports it.
        let broken = Frame {
            rgb: vec![0; 5],
            ..blank_frame(64, 48)
        };
        assert!(DetectRequest::<HandBox>::default()
            .letterbox(&broken, |img| HandInput::new(img, 32))
            .is_none());
    }
}
