//! The daemon half of a route: [`RouteKind`] (config, model files, push
//! requests, post-processing), erased once in [`AnyRouteKind`] so the
//! registry can list routes of different types.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use super::{Route, RouteError, RouteId, RouteOutput, RouteRequest, RouteSet, REGISTRY};
use crate::config::Config;
use crate::engine::Frame;
use crate::proto;
use crate::weights::hub::Hub;

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
    Done(Box<proto::Event>),
    OffThread(Box<dyn FnOnce() -> proto::Event + Send>),
}

impl PostWork {
    /// The event, made here and now (the bench; the post loop moves
    /// off-thread work to a blocking thread).
    pub fn finish(self) -> proto::Event {
        match self {
            PostWork::Done(event) => *event,
            PostWork::OffThread(work) => work(),
        }
    }
}

/// The tokio-side, per-route state of post-processing (tracks between
/// frames); one per route, owned by the post loop.
pub trait RoutePost<R: Route>: Send + 'static {
    /// The event for one result of this route; `started` is when
    /// post-processing of it began (its `post` timing).
    fn event(&mut self, frame: &Arc<Frame>, result: &RouteResult<R>, started: Instant) -> PostWork;
}

/// What a route's post-processing reads of one result.
pub struct RouteResult<'a, R: Route> {
    pub output: &'a R::Output,
    /// (stage, time) in the order they ran.
    pub timings: &'a [(&'static str, std::time::Duration)],
    /// Frames the gates replaced since the previous output.
    pub dropped: u64,
    erased: &'a RouteOutput,
}

impl<R: Route> RouteResult<'_, R> {
    /// The output, shared, for work moved to another thread.
    pub fn shared(&self) -> SharedOutput<R> {
        SharedOutput {
            erased: self.erased.clone(),
            route: PhantomData,
        }
    }
}

/// A route's output, shared without copying.
pub struct SharedOutput<R: Route> {
    erased: RouteOutput,
    route: PhantomData<fn() -> R>,
}

impl<R: Route> std::ops::Deref for SharedOutput<R> {
    type Target = R::Output;

    fn deref(&self) -> &R::Output {
        self.erased
            .get::<R>()
            .expect("made from a RouteResult of this route's output")
    }
}

/// How much one push may ask of the routes: each client box costs a crop and
/// a batch row, so their number is capped by the daemon's own per-frame
/// caps (`[hands] max_hands`, `[body] max_people`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_hand_boxes: usize,
    pub max_person_boxes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits::of(&Config::default())
    }
}

impl RequestLimits {
    pub fn of(config: &Config) -> Self {
        RequestLimits {
            max_hand_boxes: config.hands.max_hands,
            max_person_boxes: config.body.max_people,
        }
    }

    /// No caps (the bench's fixed batches).
    pub const NONE: RequestLimits = RequestLimits {
        max_hand_boxes: usize::MAX,
        max_person_boxes: usize::MAX,
    };

    /// INVALID_ARGUMENT when a push brings more than `max` of `field`.
    pub fn check_count(
        field: &str,
        count: usize,
        max: usize,
        setting: &str,
    ) -> Result<(), tonic::Status> {
        if count > max {
            return Err(tonic::Status::invalid_argument(format!(
                "{count} {field}: at most {max} per image ({setting})"
            )));
        }
        Ok(())
    }
}

/// The daemon half of a route. Implemented by a unit struct in the route's
/// module; listed in [`super::REGISTRY`].
pub trait RouteKind: Send + Sync + 'static {
    type Route: Route;
    /// Where its model files are, once found.
    type Files: Send + 'static;
    type Post: RoutePost<Self::Route>;

    const PROTO: proto::Route;

    fn enabled(&self, config: &Config) -> bool;

    /// Its models, with their files once found.
    fn models(&self, config: &Config, files: Option<&Self::Files>) -> Vec<ModelInfo>;

    /// Finds (maybe downloads) its model files, on the tokio side.
    fn find(
        &self,
        config: &Config,
        hub: &Hub,
    ) -> impl Future<Output = anyhow::Result<Self::Files>> + Send;

    /// Loads the route from its files, on the MLX thread; also says whether
    /// the weights are synthetic.
    fn load(files: Self::Files, config: &Config) -> anyhow::Result<(Self::Route, bool)>;

    /// What a push asks of this route, checked against the decoded frame's
    /// size. Runs on a blocking thread (it may decode a hint image).
    fn request(
        &self,
        push: &proto::PushImageRequest,
        width: usize,
        height: usize,
        limits: &RequestLimits,
    ) -> Result<<Self::Route as Route>::Request, tonic::Status>;

    /// Its post-processing state.
    fn post(&self, options: &PostOptions) -> Self::Post;
}

/// A [`RouteKind`] as the registry lists it; implemented for every
/// `RouteKind`, the downcasts live here only.
pub trait AnyRouteKind: Send + Sync + 'static {
    fn id(&self) -> RouteId;
    fn name(&self) -> &'static str {
        self.id().name()
    }
    fn proto(&self) -> proto::Route;
    /// Every stage its events carry, in order: its [`Route::STAGES`].
    fn stages(&self) -> &'static [&'static str];
    fn enabled(&self, config: &Config) -> bool;
    /// Its models before their files are found (for `GetStatus` meanwhile).
    fn models(&self, config: &Config) -> Vec<ModelInfo>;
    /// Finds its files; the answer says how to load the route.
    fn find<'a>(
        &'a self,
        config: &'a Config,
        hub: &'a Hub,
    ) -> BoxFuture<'a, anyhow::Result<FoundModels>>;
    /// The route's request for frames that say nothing of it.
    fn default_request(&self) -> RouteRequest;
    fn request(
        &self,
        push: &proto::PushImageRequest,
        width: usize,
        height: usize,
        limits: &RequestLimits,
    ) -> Result<RouteRequest, tonic::Status>;
    fn post(&self, options: &PostOptions) -> Box<dyn AnyRoutePost>;
}

impl<K: RouteKind> AnyRouteKind for K {
    fn id(&self) -> RouteId {
        K::Route::ID
    }

    fn proto(&self) -> proto::Route {
        K::PROTO
    }

    fn stages(&self) -> &'static [&'static str] {
        K::Route::STAGES
    }

    fn enabled(&self, config: &Config) -> bool {
        RouteKind::enabled(self, config)
    }

    fn models(&self, config: &Config) -> Vec<ModelInfo> {
        RouteKind::models(self, config, None)
    }

    fn find<'a>(
        &'a self,
        config: &'a Config,
        hub: &'a Hub,
    ) -> BoxFuture<'a, anyhow::Result<FoundModels>> {
        Box::pin(async move {
            let files = RouteKind::find(self, config, hub).await?;
            let models = RouteKind::models(self, config, Some(&files));
            let config = config.clone();
            let load = move || {
                let (route, synthetic) = K::load(files, &config).map_err(RouteError::Load)?;
                Ok((RouteSet::default().with(route), synthetic))
            };
            Ok(FoundModels {
                models,
                load: Box::new(load),
            })
        })
    }

    fn default_request(&self) -> RouteRequest {
        RouteRequest::new::<K::Route>(Default::default())
    }

    fn request(
        &self,
        push: &proto::PushImageRequest,
        width: usize,
        height: usize,
        limits: &RequestLimits,
    ) -> Result<RouteRequest, tonic::Status> {
        RouteKind::request(self, push, width, height, limits).map(RouteRequest::new::<K::Route>)
    }

    fn post(&self, options: &PostOptions) -> Box<dyn AnyRoutePost> {
        Box::new(TypedPost::<K::Route, K::Post> {
            post: RouteKind::post(self, options),
            route: PhantomData,
        })
    }
}

/// A route's post-processing as the post loop holds it.
pub trait AnyRoutePost: Send {
    fn event(
        &mut self,
        frame: &Arc<Frame>,
        output: &RouteOutput,
        dropped: u64,
        started: Instant,
    ) -> PostWork;
}

struct TypedPost<R, P> {
    post: P,
    route: PhantomData<fn() -> R>,
}

impl<R: Route, P: RoutePost<R>> AnyRoutePost for TypedPost<R, P> {
    fn event(
        &mut self,
        frame: &Arc<Frame>,
        output: &RouteOutput,
        dropped: u64,
        started: Instant,
    ) -> PostWork {
        match output.get::<R>() {
            Some(o) => {
                let result = RouteResult {
                    output: o,
                    timings: &output.timings,
                    dropped,
                    erased: output,
                };
                self.post.event(frame, &result, started)
            }
            // The engine keys outputs by route: another type here is a bug,
            // reported as this frame's error, not a crash.
            None => {
                let status = tonic::Status::internal(format!(
                    "the {} route's output has the wrong type",
                    R::ID
                ));
                let event = crate::events::error_event(frame, R::ID.to_proto(), &status);
                PostWork::Done(Box::new(event))
            }
        }
    }
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
pub fn posts(options: &PostOptions) -> Vec<(RouteId, Box<dyn AnyRoutePost>)> {
    REGISTRY.iter().map(|k| (k.id(), k.post(options))).collect()
}
