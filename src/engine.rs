//! The MLX thread: one `std::thread` owns every model and MLX array. Frames
//! reach it through a latest-wins gate, a prep thread that makes their
//! detector letterboxes on the CPU, and a second such gate; results leave
//! it as plain Rust data.
//!
//! Why a gate and not a queue: an input device must show the newest frame,
//! not work through a backlog. A frame still waiting when a newer one arrives
//! is replaced and counted as dropped; the count rides on the next result.
//! Frames whose sender waits for an answer (`PushImage` with `wait`) are
//! never replaced: they wait in a short FIFO of their own, and when that is
//! full the sender is told so at once.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use posed_models::body_pipeline::{BodyEstimate, BodyPipeline, DetectorInput as BodyDetectorInput};
use posed_models::hand_pipeline::{
    DetectorInput as HandDetectorInput, HandBox, HandEstimate, HandPipeline,
};
use posed_models::image::RgbImage;
use posed_models::matte_pipeline::{FallbackHint, Hint, MatteEstimate, MattePipeline};
use tokio::sync::{mpsc, oneshot, watch};

use crate::proto::Route;

/// A decoded RGB frame and where it came from.
#[derive(Debug)]
pub struct Frame {
    pub id: u64,
    pub source_id: String,
    pub client_frame_id: u64,
    pub captured: SystemTime,
    /// When the daemon got it (start of the end-to-end clock).
    pub received: Instant,
    pub width: usize,
    pub height: usize,
    /// width × height × 3 bytes.
    pub rgb: Vec<u8>,
}

/// What the caller of a waiting push gets back: the events post-processing
/// made of its frame (one per route), or why there are none.
pub type Reply = oneshot::Sender<Result<Vec<crate::proto::Event>, EngineError>>;

pub struct FrameJob {
    pub frame: Arc<Frame>,
    /// Routes to run, in this order; empty = every enabled route.
    pub routes: Vec<Route>,
    /// Hands the client already knows: the hand detector is skipped.
    pub hand_boxes: Option<Vec<HandBox>>,
    /// People the client already knows: the person detector is skipped.
    pub person_boxes: Option<Vec<[f32; 4]>>,
    /// The matte route's hint from the client: 8-bit grey, frame-sized.
    pub matte_hint: Option<Vec<u8>>,
    /// The frame continues a stream of its source (camera, replay,
    /// PushStream): the matte route may use the previous alpha as its hint.
    pub stream: bool,
    /// The waiting caller wants the matte's foreground and composite.
    pub matte_images: bool,
    pub reply: Option<Reply>,
}

impl FrameJob {
    /// A frame of a stream for every enabled route, detectors on.
    pub fn new(frame: Arc<Frame>, reply: Option<Reply>) -> Self {
        FrameJob {
            frame,
            routes: Vec::new(),
            hand_boxes: None,
            person_boxes: None,
            matte_hint: None,
            stream: true,
            matte_images: false,
            reply,
        }
    }
}

/// Every model the MLX thread holds; a route without its models is not
/// enabled.
#[derive(Default)]
pub struct Models {
    pub hands: Option<HandPipeline>,
    pub body: Option<BodyPipeline>,
    pub matte: Option<MatteRoute>,
}

/// CorridorKey and where its hints come from.
pub struct MatteRoute {
    pub pipeline: MattePipeline,
    /// Streams without a pushed hint reuse their previous alpha.
    pub hint_from_previous: bool,
    pub fallback: FallbackHint,
}

impl From<HandPipeline> for Models {
    fn from(hands: HandPipeline) -> Self {
        Models {
            hands: Some(hands),
            ..Models::default()
        }
    }
}

impl Models {
    pub fn routes(&self) -> Vec<Route> {
        let mut r = Vec::new();
        if self.hands.is_some() {
            r.push(Route::Hands);
        }
        if self.body.is_some() {
            r.push(Route::Body);
        }
        if self.matte.is_some() {
            r.push(Route::Matte);
        }
        r
    }
}

/// The body route's answer for one frame.
#[derive(Debug)]
pub struct BodyResult {
    pub frame: Arc<Frame>,
    pub people: Vec<BodyEstimate>,
    pub timings: Vec<(&'static str, Duration)>,
    pub dropped_before: u64,
}

/// Where a matte's hint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintSource {
    Pushed,
    Previous,
    Fallback,
}

/// The matte route's answer for one frame.
#[derive(Debug)]
pub struct MatteResult {
    pub frame: Arc<Frame>,
    pub matte: MatteEstimate,
    pub hint: HintSource,
    pub timings: Vec<(&'static str, Duration)>,
    pub dropped_before: u64,
}

/// One route's answer.
#[derive(Debug, Clone)]
pub enum RouteResult {
    Hands(Arc<HandsResult>),
    Body(Arc<BodyResult>),
    Matte(Arc<MatteResult>),
}

/// The hand route's answer for one frame.
#[derive(Debug)]
pub struct HandsResult {
    pub frame: Arc<Frame>,
    pub hands: Vec<HandEstimate>,
    /// (stage, time) in pipeline order.
    pub timings: Vec<(&'static str, Duration)>,
    /// Frames replaced in the gate since the previous result.
    pub dropped_before: u64,
}

/// What leaves the MLX thread: per route a result or an error, and the
/// reply channel of a waiting push, which post-processing answers.
pub struct EngineOutput {
    pub frame: Arc<Frame>,
    pub results: Vec<(Route, Result<RouteResult, EngineError>)>,
    pub reply: Option<Reply>,
    /// The reply's caller wants the matte's heavy images.
    pub matte_images: bool,
}

impl EngineOutput {
    /// The hand route's result (the first one it holds), for callers that
    /// only run that route.
    pub fn hands(&self) -> Result<&Arc<HandsResult>, EngineError> {
        for (_, r) in &self.results {
            match r {
                Ok(RouteResult::Hands(h)) => return Ok(h),
                Err(e) => return Err(e.clone()),
                _ => {}
            }
        }
        Err(EngineError::NotEnabled("hands".into()))
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("models failed to load: {0}")]
    Load(String),
    #[error("the {route} route failed on frame {frame}: {message}")]
    Route {
        route: &'static str,
        frame: u64,
        message: String,
    },
    #[error("the {0} route is not enabled on this daemon")]
    NotEnabled(String),
    #[error("{0} frames already wait for an answer; try again")]
    Busy(usize),
    #[error("the engine has stopped")]
    Stopped,
}

/// Health of the route as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Loading,
    Serving,
    /// Loading failed, or the last frame failed; the message says why.
    Failed(String),
}

/// What a gate holds: frames, before or after their CPU preparation.
trait Queued {
    /// Whose sender waits for an answer: never replaced, only refused.
    fn waits_for_reply(&self) -> bool;
    /// Frames an earlier gate replaced before this one.
    fn drops_carried(&self) -> u64 {
        0
    }
    /// Answers a waiting sender with why its frame went no further.
    fn refuse(self, err: EngineError);
}

impl Queued for FrameJob {
    fn waits_for_reply(&self) -> bool {
        self.reply.is_some()
    }

    fn refuse(self, err: EngineError) {
        if let Some(reply) = self.reply {
            let _ = reply.send(Err(err));
        }
    }
}

struct Pending<T> {
    latest: Option<T>,
    dropped: u64,
    waiting: VecDeque<T>,
    closed: bool,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            latest: None,
            dropped: 0,
            waiting: VecDeque::new(),
            closed: false,
        }
    }
}

struct Gate<T> {
    pending: Mutex<Pending<T>>,
    wake: Condvar,
    max_waiting: usize,
}

impl<T: Queued> Gate<T> {
    fn new(max_waiting: usize) -> Self {
        Gate {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            max_waiting,
        }
    }

    /// A refused job comes back with the reason (boxed: a job is large).
    fn offer(&self, job: T) -> Result<(), Box<(T, EngineError)>> {
        let mut p = self.pending.lock().expect("gate lock");
        if p.closed {
            return Err(Box::new((job, EngineError::Stopped)));
        }
        if job.waits_for_reply() {
            if p.waiting.len() >= self.max_waiting {
                return Err(Box::new((job, EngineError::Busy(self.max_waiting))));
            }
            p.waiting.push_back(job);
        } else if let Some(replaced) = p.latest.replace(job) {
            p.dropped += 1 + replaced.drops_carried();
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The next job (waiting ones first) and the drops before it; `None`
    /// once closed and drained.
    fn take(&self) -> Option<(T, u64)> {
        let mut p = self.pending.lock().expect("gate lock");
        loop {
            if let Some(job) = p.waiting.pop_front() {
                return Some((job, std::mem::take(&mut p.dropped)));
            }
            if let Some(job) = p.latest.take() {
                return Some((job, std::mem::take(&mut p.dropped)));
            }
            if p.closed {
                return None;
            }
            p = self.wake.wait(p).expect("gate lock");
        }
    }

    fn close(&self) {
        self.pending.lock().expect("gate lock").closed = true;
        self.wake.notify_all();
    }
}

/// A frame after the CPU work that needs nothing but the frame: the
/// detectors' letterboxes, made on the prep thread while the MLX thread is
/// busy with the frame before.
struct PreparedJob {
    job: FrameJob,
    letterboxes: Letterboxes,
    /// Frames the first gate replaced before this one.
    dropped: u64,
}

/// The detectors' inputs of one frame, each with the time it took to make.
#[derive(Default)]
struct Letterboxes {
    hands: Option<(HandDetectorInput, Duration)>,
    body: Option<(BodyDetectorInput, Duration)>,
}

impl Queued for PreparedJob {
    fn waits_for_reply(&self) -> bool {
        self.job.waits_for_reply()
    }

    fn drops_carried(&self) -> u64 {
        self.dropped
    }

    fn refuse(self, err: EngineError) {
        self.job.refuse(err)
    }
}

/// What the prep thread makes for each frame: the letterbox sizes of the
/// loaded routes' detectors (none before the models are loaded).
#[derive(Debug, Clone, Copy, Default)]
struct Preparer {
    hands: Option<usize>,
    body: Option<usize>,
}

impl Preparer {
    fn of(models: &Models) -> Self {
        Preparer {
            hands: models.hands.as_ref().map(|p| p.detector_input_size()),
            body: models.body.as_ref().map(|p| p.detector_input_size()),
        }
    }

    /// The letterboxes `job` will need: routes it runs whose detector it
    /// does not skip with boxes of its own.
    fn prepare(&self, job: FrameJob, dropped: u64) -> PreparedJob {
        fn timed<T>(f: &Frame, make: impl FnOnce(RgbImage) -> T) -> Option<(T, Duration)> {
            // A frame of the wrong size is the route's error to report.
            let img = RgbImage::new(f.width, f.height, &f.rgb)?;
            let t = Instant::now();
            Some((make(img), t.elapsed()))
        }
        let f = &job.frame;
        let runs = |route| job.routes.is_empty() || job.routes.contains(&route);
        let hands = match self.hands {
            Some(size) if runs(Route::Hands) && job.hand_boxes.is_none() => {
                timed(f, |img| HandDetectorInput::new(img, size))
            }
            _ => None,
        };
        let body = match self.body {
            Some(size) if runs(Route::Body) && job.person_boxes.is_none() => {
                timed(f, |img| BodyDetectorInput::new(img, size))
            }
            _ => None,
        };
        PreparedJob {
            job,
            letterboxes: Letterboxes { hands, body },
            dropped,
        }
    }
}

/// The prep thread: waits for the loaded models' [`Preparer`] (none if
/// loading failed), then letterboxes every frame from the first gate and
/// hands it to the MLX thread's gate, until the first gate closes.
fn prep_thread(
    input: &Gate<FrameJob>,
    output: &Gate<PreparedJob>,
    preparer: std::sync::mpsc::Receiver<Preparer>,
) {
    let preparer = preparer.recv().unwrap_or_default();
    while let Some((job, dropped)) = input.take() {
        let prepared = catch_unwind(AssertUnwindSafe(|| preparer.prepare(job, dropped)));
        match prepared {
            Ok(p) => {
                if let Err(refused) = output.offer(p) {
                    let (p, err) = *refused;
                    p.refuse(err);
                }
            }
            // The job went with the panic; its waiting sender sees its
            // reply channel close.
            Err(panic) => tracing::error!("frame preparation: {}", panic_message(&panic)),
        }
    }
    output.close();
}

/// Handle to the MLX thread and the prep thread before it.
pub struct Engine {
    /// Frames as submitted.
    gate: Arc<Gate<FrameJob>>,
    /// Frames with their letterboxes, for the MLX thread.
    prepared: Arc<Gate<PreparedJob>>,
    prep: Option<JoinHandle<()>>,
    thread: Option<JoinHandle<()>>,
    readiness: watch::Receiver<Readiness>,
}

impl Engine {
    /// Starts the MLX thread: `load` builds the models there (MLX state must
    /// not cross threads), one warm-up frame runs, then readiness turns
    /// `Serving`. Results go to `output`.
    /// `max_hands` caps the detected hands per frame (strongest first).
    ///
    /// A prep thread sits in front of it: frames pass a latest-wins gate to
    /// it, it letterboxes them for the detectors, and they pass a second
    /// gate to the MLX thread. So the CPU letterbox of one frame overlaps
    /// the GPU work on the frame before, and the MLX thread always takes
    /// the newest prepared frame.
    pub fn start<F, M>(
        load: F,
        output: mpsc::UnboundedSender<EngineOutput>,
        max_waiting: usize,
        max_hands: usize,
    ) -> Self
    where
        F: FnOnce() -> anyhow::Result<M> + Send + 'static,
        M: Into<Models>,
    {
        let gate = Arc::new(Gate::new(max_waiting));
        // Admission is the first gate's: what it let through may all wait here.
        let prepared = Arc::new(Gate::new(usize::MAX));
        let (preparer_tx, preparer_rx) = std::sync::mpsc::channel();
        let (ready_tx, readiness) = watch::channel(Readiness::Loading);
        let (prep_in, prep_out) = (gate.clone(), prepared.clone());
        let prep = std::thread::Builder::new()
            .name("posed-prep".into())
            .spawn(move || prep_thread(&prep_in, &prep_out, preparer_rx))
            .expect("spawning the prep thread");
        let thread_gate = prepared.clone();
        let thread = std::thread::Builder::new()
            .name("posed-mlx".into())
            .spawn(move || {
                mlx_thread(
                    move || load().map(Into::into),
                    &thread_gate,
                    preparer_tx,
                    &output,
                    &ready_tx,
                    max_hands,
                )
            })
            .expect("spawning the MLX thread");
        Engine {
            gate,
            prepared,
            prep: Some(prep),
            thread: Some(thread),
            readiness,
        }
    }

    pub fn readiness(&self) -> watch::Receiver<Readiness> {
        self.readiness.clone()
    }

    /// Queues a frame; a job with a reply gets its error back through it when
    /// it cannot be queued.
    pub fn submit(&self, job: FrameJob) -> Result<(), EngineError> {
        self.gate.offer(job).map_err(|refused| {
            let (job, err) = *refused;
            job.refuse(err.clone());
            err
        })
    }

    /// Stops taking frames, lets the thread finish what it holds, and joins it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.gate.close();
        // The MLX thread stops after the frames already prepared, whatever
        // the prep thread still holds (it refuses those as stopped).
        self.prepared.close();
        // A frame in flight can take long (seconds for full-size models on a
        // CPU); shutdown has a hard deadline, so both threads get one short
        // wait together, then are left to the process's exit. The prep
        // thread is between frames within a letterbox's time, unless it
        // still waits for the models.
        let until = Instant::now() + STOP_WAIT;
        if let Some(prep) = self.prep.take() {
            join_by(prep, until);
        }
        let Some(t) = self.thread.take() else { return };
        if !join_by(t, until) {
            tracing::warn!("the MLX thread is mid-frame; not waiting for it");
            MLX_THREAD_LEFT_RUNNING.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Joins `t` if it finishes by `until`; false if it is still running.
fn join_by(t: JoinHandle<()>, until: Instant) -> bool {
    while !t.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(2));
    }
    let finished = t.is_finished();
    if finished {
        let _ = t.join();
    }
    finished
}

/// How long stopping waits for a frame in flight.
const STOP_WAIT: Duration = Duration::from_millis(300);

static MLX_THREAD_LEFT_RUNNING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// True when an engine stopped without its thread finishing: the process
/// should end without running library destructors under that thread's feet.
pub fn mlx_thread_left_running() -> bool {
    MLX_THREAD_LEFT_RUNNING.load(std::sync::atomic::Ordering::SeqCst)
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn mlx_thread<F>(
    load: F,
    gate: &Gate<PreparedJob>,
    preparer: std::sync::mpsc::Sender<Preparer>,
    output: &mpsc::UnboundedSender<EngineOutput>,
    ready: &watch::Sender<Readiness>,
    max_hands: usize,
) where
    F: FnOnce() -> anyhow::Result<Models>,
{
    let models = match catch_unwind(AssertUnwindSafe(load)) {
        Ok(Ok(m)) => m,
        // Dropping the preparer lets the prep thread pass frames on as they are.
        Ok(Err(e)) => return fail_all(gate, output, ready, format!("{e:#}"), preparer),
        Err(panic) => return fail_all(gate, output, ready, panic_message(&panic), preparer),
    };
    if let Err(e) = warm_up(&models, max_hands) {
        return fail_all(gate, output, ready, format!("warm-up: {e}"), preparer);
    }
    let _ = preparer.send(Preparer::of(&models));
    let enabled = models.routes();
    tracing::info!(routes = ?enabled, "models loaded and warm");
    let _ = ready.send(Readiness::Serving);
    let mut state = RouteState::default();

    while let Some((prepared, dropped_here)) = gate.take() {
        let PreparedJob {
            job,
            mut letterboxes,
            dropped,
        } = prepared;
        let dropped = dropped + dropped_here;
        let frame = job.frame.clone();
        let routes = if job.routes.is_empty() {
            enabled.clone()
        } else {
            job.routes.clone()
        };
        let mut results = Vec::with_capacity(routes.len());
        for route in routes {
            let result = catch_unwind(AssertUnwindSafe(|| {
                run_route(
                    &models,
                    &mut state,
                    route,
                    &job,
                    &mut letterboxes,
                    dropped,
                    max_hands,
                )
            }))
            .unwrap_or_else(|panic| {
                Err(EngineError::Route {
                    route: route_name(route),
                    frame: frame.id,
                    message: panic_message(&panic),
                })
            });
            results.push((route, result));
        }
        // A failing frame marks the daemon unhealthy until one succeeds again.
        match results.iter().find_map(|(_, r)| r.as_ref().err()) {
            None => {
                ready.send_if_modified(|r| {
                    let changed = *r != Readiness::Serving;
                    *r = Readiness::Serving;
                    changed
                });
            }
            Some(EngineError::NotEnabled(_)) => {}
            Some(e) => {
                tracing::error!("{e}");
                let _ = ready.send(Readiness::Failed(e.to_string()));
            }
        }
        let out = EngineOutput {
            frame,
            results,
            reply: job.reply,
            matte_images: job.matte_images,
        };
        if output.send(out).is_err() {
            break;
        }
    }
}

pub fn route_name(route: Route) -> &'static str {
    match route {
        Route::Hands => "hands",
        Route::Body => "body",
        Route::Matte => "matte",
        Route::Unspecified => "unspecified",
    }
}

/// What the routes keep between frames (MLX arrays: this thread only).
#[derive(Default)]
struct RouteState {
    /// The last alpha per source, at the network's resolution, and the
    /// count of alphas kept when it was made.
    previous_alpha: HashMap<String, (u64, mlx_rs::Array)>,
    alphas_kept: u64,
}

/// Streams whose last alpha is kept: PushStream clients name their own
/// sources, so the map is bounded (the stalest stream is forgotten).
const MAX_MATTE_STREAMS: usize = 16;

impl RouteState {
    fn keep_alpha(&mut self, source: &str, alpha: mlx_rs::Array) {
        let map = &mut self.previous_alpha;
        if !map.contains_key(source) && map.len() >= MAX_MATTE_STREAMS {
            if let Some(stalest) = map
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            {
                map.remove(&stalest);
            }
        }
        self.alphas_kept += 1;
        map.insert(source.to_owned(), (self.alphas_kept, alpha));
    }
}

fn run_route(
    models: &Models,
    state: &mut RouteState,
    route: Route,
    job: &FrameJob,
    letterboxes: &mut Letterboxes,
    dropped: u64,
    max_hands: usize,
) -> Result<RouteResult, EngineError> {
    let failed = |message: String| EngineError::Route {
        route: route_name(route),
        frame: job.frame.id,
        message,
    };
    let not_enabled = || EngineError::NotEnabled(route_name(route).into());
    match route {
        Route::Hands => {
            let p = models.hands.as_ref().ok_or_else(not_enabled)?;
            run_hands(p, job, letterboxes.hands.take(), dropped, max_hands)
                .map(|r| RouteResult::Hands(Arc::new(r)))
                .map_err(failed)
        }
        Route::Body => {
            let p = models.body.as_ref().ok_or_else(not_enabled)?;
            run_body(p, job, letterboxes.body.take(), dropped)
                .map(|r| RouteResult::Body(Arc::new(r)))
                .map_err(failed)
        }
        Route::Matte => {
            let m = models.matte.as_ref().ok_or_else(not_enabled)?;
            run_matte(m, state, job, dropped)
                .map(|r| RouteResult::Matte(Arc::new(r)))
                .map_err(failed)
        }
        Route::Unspecified => Err(not_enabled()),
    }
}

/// Loading failed: say so, and answer every frame that still arrives.
fn fail_all(
    gate: &Gate<PreparedJob>,
    output: &mpsc::UnboundedSender<EngineOutput>,
    ready: &watch::Sender<Readiness>,
    message: String,
    preparer: std::sync::mpsc::Sender<Preparer>,
) {
    drop(preparer);
    tracing::error!("models failed to load: {message}");
    let _ = ready.send(Readiness::Failed(message.clone()));
    while let Some((PreparedJob { job, .. }, _)) = gate.take() {
        let routes = if job.routes.is_empty() {
            vec![Route::Hands]
        } else {
            job.routes
        };
        let out = EngineOutput {
            frame: job.frame,
            results: routes
                .into_iter()
                .map(|r| (r, Err(EngineError::Load(message.clone()))))
                .collect(),
            reply: job.reply,
            matte_images: false,
        };
        if output.send(out).is_err() {
            break;
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .map(|m| format!("panic: {m}"))
        .unwrap_or_else(|| "panic".into())
}

/// One frame through every stage of every route, so the first real frame
/// pays no first-run costs.
fn warm_up(models: &Models, max_hands: usize) -> Result<(), String> {
    let (w, h) = (320, 240);
    let rgb = vec![128u8; w * h * 3];
    let img = RgbImage::new(w, h, &rgb).expect("valid size");
    if let Some(p) = &models.hands {
        let input = p.prepare_detector_input(img);
        p.detect(&input).map_err(|e| e.to_string())?;
        let hand = HandBox {
            bbox: [100.0, 80.0, 160.0, 150.0],
            is_right: true,
            score: 1.0,
            keypoints_2d: Vec::new(),
        };
        // A compiled network is traced per batch size: trace every size a
        // frame can bring now, not on the first frame with that many hands.
        let batches = if p.is_compiled() { max_hands } else { 1 };
        for n in 1..=batches {
            let hands = vec![hand.clone(); n];
            let crops = p.prepare_crops(img, &hands);
            p.estimate(&crops, &hands, w, h)
                .map_err(|e| e.to_string())?;
        }
    }
    if let Some(p) = &models.body {
        // The detector and one person through the pose network and decode.
        p.detect(&p.prepare_detector_input(img))
            .map_err(|e| e.to_string())?;
        p.estimate(img, Some(&[[100.0, 40.0, 180.0, 220.0]]))
            .map_err(|e| e.to_string())?;
    }
    if let Some(m) = &models.matte {
        let hint = vec![255u8; w * h];
        let (_, out) = m
            .pipeline
            .estimate(img, Hint::Plane(&hint))
            .map_err(|e| e.to_string())?;
        // The way a stream's next frame goes, too.
        m.pipeline
            .estimate(img, Hint::Previous(&out.network_alpha))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn run_matte(
    m: &MatteRoute,
    state: &mut RouteState,
    job: &FrameJob,
    dropped: u64,
) -> Result<MatteResult, String> {
    let f = &job.frame;
    let img = RgbImage::new(f.width, f.height, &f.rgb)
        .ok_or_else(|| format!("frame is not {}x{} RGB", f.width, f.height))?;
    let p = &m.pipeline;
    let (nh, nw) = p.network_size(f.width, f.height);
    let previous = state
        .previous_alpha
        .get(&f.source_id)
        .map(|(_, a)| a)
        .filter(|a| {
            job.stream && m.hint_from_previous && a.shape() == [1, nh as i32, nw as i32, 1]
        });
    let (hint, source) = match (&job.matte_hint, previous) {
        (Some(plane), _) => (Hint::Plane(plane), HintSource::Pushed),
        (None, Some(a)) => (Hint::Previous(a), HintSource::Previous),
        (None, None) => (Hint::Fallback(m.fallback), HintSource::Fallback),
    };
    let mut timings = Vec::with_capacity(3);
    let t = Instant::now();
    let x = p.prepare(img, hint).map_err(|e| e.to_string())?;
    x.eval().map_err(|e| e.to_string())?;
    timings.push(("preprocess", t.elapsed()));
    let t = Instant::now();
    let out = p.run(&x).map_err(|e| e.to_string())?;
    timings.push(("matte", t.elapsed()));
    let t = Instant::now();
    let matte = p
        .to_frame(&out, f.width, f.height)
        .map_err(|e| e.to_string())?;
    timings.push(("resize", t.elapsed()));
    if job.stream && m.hint_from_previous {
        state.keep_alpha(&f.source_id, out.network_alpha);
    }
    Ok(MatteResult {
        frame: f.clone(),
        matte,
        hint: source,
        timings,
        dropped_before: dropped,
    })
}

fn run_body(
    p: &BodyPipeline,
    job: &FrameJob,
    letterbox: Option<(BodyDetectorInput, Duration)>,
    dropped: u64,
) -> Result<BodyResult, String> {
    let f = &job.frame;
    let img = RgbImage::new(f.width, f.height, &f.rgb)
        .ok_or_else(|| format!("frame is not {}x{} RGB", f.width, f.height))?;
    let mut timings = Vec::with_capacity(5);
    let mut timed = |stage: &'static str, took: Duration| timings.push((stage, took));
    let boxes = match &job.person_boxes {
        Some(b) => b.iter().map(|&b| (b, 1.0)).collect(),
        None => {
            // The prep thread made it; a frame handed in directly has none.
            let (input, took) = letterbox.unwrap_or_else(|| {
                let t = Instant::now();
                (p.prepare_detector_input(img), t.elapsed())
            });
            timed("preprocess", took);
            let t = Instant::now();
            let boxes = p.detect(&input).map_err(|e| e.to_string())?;
            timed("detect", t.elapsed());
            boxes
        }
    };
    let t = Instant::now();
    let batch = p.prepare_crops(img, &boxes);
    timed("crop", t.elapsed());
    let t = Instant::now();
    let heatmaps = p.heatmaps(&batch).map_err(|e| e.to_string())?;
    timed("pose", t.elapsed());
    let t = Instant::now();
    let people = match heatmaps {
        Some((hm, mirrored)) => p
            .decode(&batch, &hm, mirrored.as_ref())
            .map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    timed("keypoints", t.elapsed());
    Ok(BodyResult {
        frame: f.clone(),
        people,
        timings,
        dropped_before: dropped,
    })
}

fn run_hands(
    p: &HandPipeline,
    job: &FrameJob,
    letterbox: Option<(HandDetectorInput, Duration)>,
    dropped: u64,
    max_hands: usize,
) -> Result<HandsResult, String> {
    let f = &job.frame;
    let img = RgbImage::new(f.width, f.height, &f.rgb)
        .ok_or_else(|| format!("frame is not {}x{} RGB", f.width, f.height))?;
    let mut timings = Vec::with_capacity(4);
    let mut timed = |stage: &'static str, took: Duration| timings.push((stage, took));

    let hands = match &job.hand_boxes {
        Some(boxes) => boxes.clone(),
        None => {
            // The prep thread made it; a frame handed in directly has none.
            let (input, took) = letterbox.unwrap_or_else(|| {
                let t = Instant::now();
                (p.prepare_detector_input(img), t.elapsed())
            });
            timed("preprocess", took);
            let t = Instant::now();
            let mut hands = p.detect(&input).map_err(|e| e.to_string())?;
            // Strongest first: keep the route's cost bounded per frame.
            hands.truncate(max_hands);
            timed("detect", t.elapsed());
            hands
        }
    };
    let t = Instant::now();
    let crops = p.prepare_crops(img, &hands);
    timed("crop", t.elapsed());
    let t = Instant::now();
    let regressed = p.regress(&crops).map_err(|e| e.to_string())?;
    timed("pose", t.elapsed());
    let t = Instant::now();
    let estimates = match regressed {
        Some(r) => p
            .mesh(&r, &crops, &hands, f.width, f.height)
            .map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    timed("mano", t.elapsed());
    Ok(HandsResult {
        frame: f.clone(),
        hands: estimates,
        timings,
        dropped_before: dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, reply: Option<Reply>) -> FrameJob {
        FrameJob {
            frame: Arc::new(Frame {
                id,
                source_id: "test".into(),
                client_frame_id: 0,
                captured: SystemTime::now(),
                received: Instant::now(),
                width: 1,
                height: 1,
                rgb: vec![0; 3],
            }),
            routes: Vec::new(),
            hand_boxes: None,
            person_boxes: None,
            matte_hint: None,
            stream: true,
            matte_images: false,
            reply,
        }
    }

    #[test]
    fn matte_streams_are_bounded_and_the_stalest_is_forgotten() {
        let mut state = RouteState::default();
        for i in 0..MAX_MATTE_STREAMS + 3 {
            state.keep_alpha(&format!("s{i}"), mlx_rs::Array::from_f32(i as f32));
            // s1 keeps streaming: it is never the stalest.
            state.keep_alpha("s1", mlx_rs::Array::from_f32(0.0));
        }
        let kept = &state.previous_alpha;
        assert_eq!(kept.len(), MAX_MATTE_STREAMS);
        assert!(kept.contains_key("s1"));
        // Three streams too many: the three stalest went.
        for gone in ["s0", "s2", "s3"] {
            assert!(!kept.contains_key(gone), "{gone}");
        }
        assert!(kept.contains_key("s4") && kept.contains_key("s18"));
    }

    /// Frames replaced at either gate are counted once, on the result that
    /// follows them; frames waiting for a reply pass both gates in order.
    #[test]
    fn drops_at_both_gates_add_up_and_waiting_frames_keep_their_order() {
        let first: Gate<FrameJob> = Gate::new(4);
        let second: Gate<PreparedJob> = Gate::new(usize::MAX);
        let preparer = Preparer::default();
        let pass = |n: usize| {
            for _ in 0..n {
                let (job, dropped) = first.take().unwrap();
                second
                    .offer(preparer.prepare(job, dropped))
                    .map_err(|r| r.1)
                    .unwrap();
            }
        };
        // Frames 0, 1 and 2 are replaced at the first gate, 3 and 4 at the
        // second, each by the next one passed on: five drops before 5.
        for id in 0..4 {
            first.offer(job(id, None)).map_err(|r| r.1).unwrap();
        }
        pass(1);
        for id in 4..6 {
            first.offer(job(id, None)).map_err(|r| r.1).unwrap();
            pass(1);
        }
        let (a, _) = oneshot::channel();
        let (b, _) = oneshot::channel();
        first.offer(job(10, Some(a))).map_err(|r| r.1).unwrap();
        first.offer(job(11, Some(b))).map_err(|r| r.1).unwrap();
        pass(2);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (p, here) = second.take().unwrap();
            seen.push((p.job.frame.id, here + p.dropped));
        }
        // The waiting frames first; the streamed frame's drops ride on the
        // first result taken, as with one gate.
        assert_eq!(seen, [(10, 5), (11, 0), (5, 0)]);
    }

    /// With no models loaded the prep thread makes nothing, and a frame
    /// that brings its own boxes never gets a letterbox.
    #[test]
    fn the_preparer_letterboxes_only_for_detectors_that_run() {
        let with_sizes = Preparer {
            hands: Some(32),
            body: Some(40),
        };
        let l = with_sizes.prepare(job(1, None), 0).letterboxes;
        assert_eq!(l.hands.unwrap().0.letterbox.size, 32);
        assert_eq!(l.body.unwrap().0.size, 40);

        let mut boxed = job(2, None);
        boxed.hand_boxes = Some(Vec::new());
        boxed.routes = vec![Route::Hands];
        let l = with_sizes.prepare(boxed, 0).letterboxes;
        assert!(l.hands.is_none() && l.body.is_none());

        let l = Preparer::default().prepare(job(3, None), 0).letterboxes;
        assert!(l.hands.is_none() && l.body.is_none());
    }

    #[test]
    fn the_gate_keeps_the_newest_frame_and_every_waiting_one() {
        let gate = Gate::new(2);
        for id in 0..5 {
            gate.offer(job(id, None)).map_err(|r| r.1).unwrap();
        }
        let (a, _) = oneshot::channel();
        let (b, _) = oneshot::channel();
        let (c, _) = oneshot::channel();
        gate.offer(job(10, Some(a))).map_err(|r| r.1).unwrap();
        gate.offer(job(11, Some(b))).map_err(|r| r.1).unwrap();
        let err = gate.offer(job(12, Some(c))).map_err(|r| r.1).unwrap_err();
        assert_eq!(err, EngineError::Busy(2));

        // Waiting frames first, in order; then the newest camera frame with
        // the four it replaced.
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| {
            let p = gate.pending.lock().unwrap();
            let empty = p.latest.is_none() && p.waiting.is_empty();
            drop(p);
            (!empty).then(|| gate.take().map(|(j, d)| (j.frame.id, d)).unwrap())
        })
        .collect();
        assert_eq!(order, [(10, 4), (11, 0), (4, 0)]);
        gate.close();
        assert!(gate.take().is_none());
        assert!(matches!(
            gate.offer(job(20, None)),
            Err(r) if r.1 == EngineError::Stopped
        ));
    }
}
