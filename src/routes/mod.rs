//! The routes. Each is one module that owns its whole pipeline: finding and
//! loading its models from its config section, the CPU work the prep thread
//! does ahead of the MLX thread, its timed stages, warm-up, the state it
//! keeps between frames, what a push may ask of it, and turning its result
//! into an event.
//!
//! Two traits split a route by thread:
//! - [`Route`]: the MLX-thread half (models, [`Route::run`]). The engine runs
//!   it through [`RouteSet`]; `posed bench` calls the very same `run`, so
//!   the bench times the daemon's stage code, not a copy of it.
//! - [`RouteKind`]: the daemon half (config, model files, push requests,
//!   post-processing), one static value per route in [`REGISTRY`].
//!
//! Adding a route: its module, its config section, its proto messages, a
//! [`RouteId`] variant and one line in [`REGISTRY`] (docs/ARCHITECTURE.md).

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::engine::Frame;
use crate::proto;
use crate::weights::hub::Hub;

pub mod body;
pub mod hands;
pub mod matte;

/// Which route. The names are the config sections, the CLI's `--route`
/// values and the telemetry prefixes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum RouteId {
    Hands,
    Body,
    Matte,
}

impl RouteId {
    pub fn name(self) -> &'static str {
        kind(self).name()
    }

    /// The daemon half of this route.
    pub fn kind(self) -> &'static dyn RouteKind {
        kind(self)
    }

    pub fn to_proto(self) -> proto::Route {
        self.kind().proto()
    }

    /// A route of the wire, if this daemon knows it.
    pub fn from_proto(route: i32) -> Option<RouteId> {
        REGISTRY
            .iter()
            .find(|k| k.proto() as i32 == route)
            .map(|k| k.id())
    }
}

impl std::fmt::Display for RouteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every route, in the order a frame runs them.
pub static REGISTRY: [&dyn RouteKind; 3] = [&hands::Hands, &body::Body, &matte::Matte];

fn kind(id: RouteId) -> &'static dyn RouteKind {
    *REGISTRY
        .iter()
        .find(|k| k.id() == id)
        .expect("every RouteId is in the registry")
}

/// Stages every route's events carry besides its own.
pub mod stage {
    /// The push's image (and hint) decoded; recorded as `push.decode`.
    pub const DECODE: &str = "decode";
    /// The result turned into an event.
    pub const POST: &str = "post";
    /// The event handed to the subscribers.
    pub const FANOUT: &str = "fanout";
    /// From the frame's arrival to its event's fan-out.
    pub const END_TO_END: &str = "end_to_end";
}

/// Times a route's stages as they run: each [`StageClock::mark`] ends the
/// stage that ran since the previous one.
#[derive(Debug)]
pub struct StageClock {
    lap: Instant,
    timings: Vec<(&'static str, Duration)>,
}

impl Default for StageClock {
    fn default() -> Self {
        StageClock {
            lap: Instant::now(),
            timings: Vec::with_capacity(8),
        }
    }
}

impl StageClock {
    /// Ends `stage` now.
    pub fn mark(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.timings.push((stage, now - self.lap));
        self.lap = now;
    }

    /// A stage done elsewhere (on the prep thread), with how long it took.
    pub fn add(&mut self, stage: &'static str, took: Duration) {
        self.timings.push((stage, took));
        self.lap = Instant::now();
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
    #[error("loading the models: {0:#}")]
    Load(anyhow::Error),
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

/// A mid-grey frame, for warm-ups and tests.
pub fn blank_frame(width: usize, height: usize) -> Frame {
    Frame {
        id: 0,
        source_id: "warm-up".into(),
        client_frame_id: 0,
        captured: std::time::SystemTime::now(),
        received: Instant::now(),
        stream: false,
        width,
        height,
        rgb: vec![128; width * height * 3],
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
pub type Preparer<R> = Box<
    dyn Fn(&Frame, &<R as Route>::Request) -> Option<<R as Route>::Prep> + Send + 'static,
>;

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
    ) -> Result<RouteOutput, RouteError> {
        let default = R::Request::default();
        let request = request.and_then(RouteRequest::get::<R>).unwrap_or(&default);
        let prep = prep.and_then(|p| p.downcast::<R::Prep>().ok()).map(|p| *p);
        let mut clock = StageClock::default();
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

    /// Runs route `id` on `frame`; `None` if it is not loaded.
    pub fn run(
        &mut self,
        id: RouteId,
        frame: &Frame,
        request: Option<&RouteRequest>,
        prep: Option<Box<dyn Any + Send>>,
    ) -> Option<Result<RouteOutput, RouteError>> {
        let route = self.routes.iter_mut().find(|r| r.id() == id)?;
        Some(route.run(frame, request, prep))
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

/// A model as `GetStatus` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub route: RouteId,
    /// The weight file, once found.
    pub weights: std::path::PathBuf,
    pub dtype: String,
}

/// Every model of the daemon, as `GetStatus` reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelReport {
    pub models: Vec<ModelInfo>,
    /// Some weights are synthetic (random values in the published layout).
    pub synthetic: bool,
}

/// A route's model files, found: what they are, and how to load them on
/// the MLX thread.
pub struct FoundModels {
    pub models: Vec<ModelInfo>,
    /// Loads the route; says whether its weights are synthetic.
    pub load: Box<dyn FnOnce() -> Result<(RouteSet, bool), RouteError> + Send>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What post-processing does with one result: make the event now, or on a
/// blocking thread (PNG encoding takes milliseconds).
pub enum PostWork {
    Done(proto::Event),
    OffThread(Box<dyn FnOnce() -> proto::Event + Send>),
}

impl PostWork {
    /// The event, made here and now (the bench; the post loop moves
    /// off-thread work to a blocking thread).
    pub fn finish(self) -> proto::Event {
        match self {
            PostWork::Done(event) => event,
            PostWork::OffThread(work) => work(),
        }
    }
}

/// The tokio-side, per-route state of post-processing (tracks between
/// frames); one per route, owned by the post loop.
pub trait RoutePost: Send {
    /// The event for one result of this route; `started` is when
    /// post-processing of it began (its `post` timing).
    fn event(
        &mut self,
        frame: &Arc<Frame>,
        output: &RouteOutput,
        dropped: u64,
        started: Instant,
    ) -> PostWork;
}

/// The daemon half of a route.
pub trait RouteKind: Send + Sync + 'static {
    fn id(&self) -> RouteId;
    fn name(&self) -> &'static str;
    fn proto(&self) -> proto::Route;
    /// Every stage its events carry, in order: its [`Route::STAGES`].
    fn stages(&self) -> &'static [&'static str];
    fn enabled(&self, config: &Config) -> bool;

    /// Its models before their files are found (for `GetStatus` meanwhile).
    fn models(&self, config: &Config) -> Vec<ModelInfo>;

    /// Finds (maybe downloads) its model files, on the tokio side.
    fn find<'a>(
        &'a self,
        config: &'a Config,
        hub: &'a Hub,
    ) -> BoxFuture<'a, anyhow::Result<FoundModels>>;

    /// The route's default request, for frames that say nothing of it.
    fn default_request(&self) -> RouteRequest;

    /// What a push asks of this route, checked against the decoded frame's
    /// size. Runs on a blocking thread (it may decode a hint image).
    fn request(
        &self,
        push: &proto::PushImageRequest,
        width: usize,
        height: usize,
    ) -> Result<RouteRequest, tonic::Status>;

    /// Its post-processing state.
    fn post(&self, options: &PostOptions) -> Box<dyn RoutePost>;
}

/// Settings post-processing reads, shared by every route's [`RoutePost`].
#[derive(Debug, Clone)]
pub struct PostOptions {
    /// Swap left/right so they are the user's (selfie cameras).
    pub mirror: bool,
    /// How matte events carry their images.
    pub matte_encoding: crate::config::ImageEncoding,
    /// Subscribers that asked for matte images: they are encoded only
    /// while there is one (or a waiting push asks).
    pub matte_image_subscribers: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for PostOptions {
    fn default() -> Self {
        PostOptions {
            mirror: false,
            matte_encoding: crate::config::ImageEncoding::Png,
            matte_image_subscribers: Default::default(),
        }
    }
}

/// Every route's post-processing, for the post loop.
pub fn posts(options: &PostOptions) -> Vec<(RouteId, Box<dyn RoutePost>)> {
    REGISTRY
        .iter()
        .map(|k| (k.id(), k.post(options)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_id_has_one_registry_entry_and_a_proto_route() {
        for id in [RouteId::Hands, RouteId::Body, RouteId::Matte] {
            assert_eq!(REGISTRY.iter().filter(|k| k.id() == id).count(), 1);
            assert_eq!(RouteId::from_proto(id.to_proto() as i32), Some(id));
        }
        assert_eq!(RouteId::from_proto(proto::Route::Unspecified as i32), None);
        assert_eq!(RouteId::from_proto(99), None);
    }

    #[test]
    fn the_clock_times_stages_in_order() {
        let mut c = StageClock::default();
        c.add("preprocess", Duration::from_millis(3));
        c.mark("detect");
        let t = c.into_timings();
        assert_eq!(t[0], ("preprocess", Duration::from_millis(3)));
        assert_eq!(t[1].0, "detect");
    }
}
