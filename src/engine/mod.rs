//! The engine: one MLX thread owns every model and MLX array. Frames reach
//! it through a latest-wins gate ([`gate`]), a prep thread that does each
//! route's CPU preparation (the detectors' letterboxes), and a second such
//! gate; results leave it as plain Rust data, route by route.
//!
//! The engine knows no route: it runs whatever [`RouteSet`] its loader
//! returns, through the [`crate::routes::Route`] interface, and carries a
//! waiting caller's [`Waiter`] from the frame to its output untouched.

mod gate;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use crate::routes::{
    FrameDeadline, FramePreparer, Prepared, RouteError, RouteId, RouteOutput, RouteRequest,
    RouteSet,
};
use gate::{Gate, Queued};

/// One stream of frames: a source's run or one PushStream call. Unique in
/// the process, so two clients that name the same source never share
/// per-stream state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(u64);

impl StreamId {
    pub fn new() -> StreamId {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        StreamId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for StreamId {
    fn default() -> Self {
        StreamId::new()
    }
}

/// A decoded RGB frame and where it came from.
#[derive(Debug)]
pub struct Frame {
    pub id: u64,
    pub source_id: String,
    pub client_frame_id: u64,
    pub captured: SystemTime,
    /// When the daemon got it (start of the end-to-end clock).
    pub received: Instant,
    /// The stream it continues (a camera, a replay, one PushStream call):
    /// routes may carry state over from the stream's previous frame. None
    /// for a single pushed image, which never sees another frame's state.
    pub stream: Option<StreamId>,
    pub width: usize,
    pub height: usize,
    /// width × height × 3 bytes.
    pub rgb: Vec<u8>,
    /// The camera that took it, when its source or client knows it.
    pub intrinsics: Option<posed_models::camera::Intrinsics>,
}

/// What a caller that waits for a frame's answer hands in with it. The
/// engine carries it to the frame's [`EngineOutput`] untouched, or answers
/// it with why the frame went no further.
pub trait Waiter: Send + 'static {
    fn refuse(self, err: EngineError);
}

impl<T: Send + 'static> Waiter for oneshot::Sender<Result<T, EngineError>> {
    fn refuse(self, err: EngineError) {
        let _ = self.send(Err(err));
    }
}

pub struct FrameJob<W> {
    pub frame: Arc<Frame>,
    /// Routes to run, in this order; empty = every loaded route.
    pub routes: Vec<RouteId>,
    /// What the frame asks of routes (boxes, hints); a route without one
    /// runs with its default request.
    pub requests: Vec<RouteRequest>,
    pub waiter: Option<W>,
}

impl<W> FrameJob<W> {
    /// A frame for every loaded route, with default requests.
    pub fn new(frame: Arc<Frame>, waiter: Option<W>) -> Self {
        FrameJob {
            frame,
            routes: Vec::new(),
            requests: Vec::new(),
            waiter,
        }
    }

    fn request(&self, id: RouteId) -> Option<&RouteRequest> {
        self.requests.iter().find(|r| r.id == id)
    }
}

/// What leaves the MLX thread for one frame: per route a result or an
/// error, and the frame's waiter.
pub struct EngineOutput<W> {
    pub frame: Arc<Frame>,
    pub results: Vec<(RouteId, Result<RouteOutput, EngineError>)>,
    /// Frames replaced in the gates since the previous output.
    pub dropped_before: u64,
    pub waiter: Option<W>,
}

impl<W> EngineOutput<W> {
    /// Route `id`'s result.
    pub fn result(&self, id: RouteId) -> Result<&RouteOutput, EngineError> {
        match self.results.iter().find(|(r, _)| *r == id) {
            Some((_, r)) => r.as_ref().map_err(Clone::clone),
            None => Err(EngineError::NotEnabled(id)),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("models failed to load: {0:#}")]
    Load(Arc<anyhow::Error>),
    #[error("the {route} route failed on frame {frame}: {source}")]
    Route {
        route: RouteId,
        frame: u64,
        source: Arc<RouteError>,
    },
    #[error("the {route} route panicked on frame {frame}: {message}")]
    Panic {
        route: RouteId,
        frame: u64,
        message: String,
    },
    #[error("the {0} route is not enabled on this daemon")]
    NotEnabled(RouteId),
    #[error("{0} frames already wait for an answer; try again")]
    Busy(usize),
    #[error("the engine has stopped")]
    Stopped,
}

impl EngineError {
    /// The frame ran over `max_frame_ms` and was abandoned.
    pub fn is_deadline(&self) -> bool {
        matches!(self, EngineError::Route { source, .. }
            if matches!(**source, RouteError::DeadlineExceeded { .. }))
    }
}

/// What the engine lets in and how long a frame may run.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Frames with a waiter that may queue at once.
    pub max_waiting: usize,
    /// A frame still running after this long is abandoned at its next
    /// stage (`None`: no limit).
    pub max_frame: Option<Duration>,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_waiting: 8,
            max_frame: None,
        }
    }
}

impl EngineLimits {
    /// From `[server]`: max_waiting_pushes and max_frame_ms.
    pub fn of(config: &crate::config::Config) -> Self {
        EngineLimits {
            max_waiting: config.server.max_waiting_pushes,
            max_frame: crate::config::Config::millis(config.server.max_frame_ms),
        }
    }
}

/// Health of the engine as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Loading,
    Serving,
    /// Loading failed, or the last frame failed; the message says why.
    Failed(String),
}

impl<W: Waiter> Queued for FrameJob<W> {
    fn waits_for_reply(&self) -> bool {
        self.waiter.is_some()
    }

    fn refuse(self, err: EngineError) {
        if let Some(w) = self.waiter {
            w.refuse(err);
        }
    }
}

/// A frame after its CPU preparation on the prep thread.
struct PreparedJob<W> {
    job: FrameJob<W>,
    prepared: Prepared,
    /// Frames the first gate replaced before this one.
    dropped: u64,
}

impl<W: Waiter> Queued for PreparedJob<W> {
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

/// The routes `job` runs, in order.
fn routes_of<W>(job: &FrameJob<W>, loaded: &[RouteId]) -> Vec<RouteId> {
    if job.routes.is_empty() {
        loaded.to_vec()
    } else {
        job.routes.clone()
    }
}

fn prepare<W>(
    preparer: &FramePreparer,
    loaded: &[RouteId],
    job: FrameJob<W>,
    dropped: u64,
) -> PreparedJob<W> {
    let runs = routes_of(&job, loaded);
    let prepared = preparer.prepare(&job.frame, &job.requests, |id| runs.contains(&id));
    PreparedJob {
        job,
        prepared,
        dropped,
    }
}

/// The prep thread: waits for the loaded routes' preparers (none if
/// loading failed), then prepares every frame from the first gate and hands
/// it to the MLX thread's gate, until the first gate closes.
fn prep_thread<W: Waiter>(
    input: &Gate<FrameJob<W>>,
    output: &Gate<PreparedJob<W>>,
    preparer: std::sync::mpsc::Receiver<(FramePreparer, Vec<RouteId>)>,
) {
    let (preparer, loaded) = preparer.recv().unwrap_or_default();
    while let Some((job, dropped)) = input.take() {
        match catch_unwind(AssertUnwindSafe(|| {
            prepare(&preparer, &loaded, job, dropped)
        })) {
            Ok(p) => output.offer_or_refuse(p),
            // The job went with the panic; its waiting sender sees its
            // reply channel close.
            Err(panic) => tracing::error!("frame preparation: {}", panic_message(&panic)),
        }
    }
    output.close();
}

/// Handle to the MLX thread and the prep thread before it.
pub struct Engine<W: Waiter> {
    /// Frames as submitted.
    gate: Arc<Gate<FrameJob<W>>>,
    /// Frames after their preparation, for the MLX thread.
    prepared: Arc<Gate<PreparedJob<W>>>,
    prep: Option<JoinHandle<()>>,
    thread: Option<JoinHandle<()>>,
    readiness: watch::Receiver<Readiness>,
}

impl<W: Waiter> Engine<W> {
    /// Starts the MLX thread: `load` builds the routes there (MLX state
    /// must not cross threads), each warms up, then readiness turns
    /// `Serving`. `routes` are the ones `load` will load (if it fails, a
    /// frame's answer names them). Outputs go to `output`; at most
    /// `max_waiting` frames with a waiter queue at once.
    ///
    /// A prep thread sits in front of it: frames pass a latest-wins gate to
    /// it, it does the routes' CPU preparation, and they pass a second gate
    /// to the MLX thread. So the CPU work of one frame overlaps the GPU work
    /// on the frame before, and the MLX thread always takes the newest
    /// prepared frame.
    pub fn start<F>(
        routes: Vec<RouteId>,
        load: F,
        output: mpsc::UnboundedSender<EngineOutput<W>>,
        limits: EngineLimits,
    ) -> Self
    where
        F: FnOnce() -> anyhow::Result<RouteSet> + Send + 'static,
    {
        let gate = Arc::new(Gate::new(limits.max_waiting));
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
                let ends = ThreadEnds {
                    gate: &thread_gate,
                    preparer: preparer_tx,
                    output: &output,
                    ready: &ready_tx,
                };
                mlx_thread(load, routes, ends, limits.max_frame)
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

    /// Queues a frame; a job with a waiter gets its error back through it
    /// too when it cannot be queued.
    pub fn submit(&self, job: FrameJob<W>) -> Result<(), EngineError> {
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
            MLX_THREAD_LEFT_RUNNING.store(true, Ordering::SeqCst);
        }
    }
}

impl<W: Waiter> Drop for Engine<W> {
    fn drop(&mut self) {
        self.stop();
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

static MLX_THREAD_LEFT_RUNNING: AtomicBool = AtomicBool::new(false);

/// True when an engine stopped without its thread finishing: the process
/// should end without running library destructors under that thread's feet.
pub fn mlx_thread_left_running() -> bool {
    MLX_THREAD_LEFT_RUNNING.load(Ordering::SeqCst)
}

/// What the MLX thread talks to.
struct ThreadEnds<'a, W> {
    gate: &'a Gate<PreparedJob<W>>,
    /// Where the loaded routes' prep work goes, for the prep thread.
    preparer: std::sync::mpsc::Sender<(FramePreparer, Vec<RouteId>)>,
    output: &'a mpsc::UnboundedSender<EngineOutput<W>>,
    ready: &'a watch::Sender<Readiness>,
}

fn mlx_thread<F, W: Waiter>(
    load: F,
    expected: Vec<RouteId>,
    ends: ThreadEnds<'_, W>,
    max_frame: Option<Duration>,
) where
    F: FnOnce() -> anyhow::Result<RouteSet>,
{
    let ThreadEnds {
        gate,
        preparer,
        output,
        ready,
    } = ends;
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        let mut routes = load()?;
        routes.warm_up().map_err(|(id, e)| {
            anyhow::Error::new(e).context(format!("warming up the {id} route"))
        })?;
        Ok(routes)
    }));
    let mut routes = match loaded {
        Ok(Ok(r)) => r,
        // Without preparers the prep thread passes frames on as they are.
        Ok(Err(e)) => {
            drop(preparer);
            return fail_all(gate, output, ready, e, &expected);
        }
        Err(panic) => {
            drop(preparer);
            let e = anyhow::anyhow!("{}", panic_message(&panic));
            return fail_all(gate, output, ready, e, &expected);
        }
    };
    let loaded = routes.ids();
    let _ = preparer.send((routes.preparers(), loaded.clone()));
    tracing::info!(routes = ?loaded, "models loaded and warm");
    let _ = ready.send(Readiness::Serving);

    while let Some((prepared, dropped_here)) = gate.take() {
        let PreparedJob {
            job,
            mut prepared,
            dropped,
        } = prepared;
        let frame = job.frame.clone();
        let mut results = Vec::new();
        // One budget for all the frame's routes, from when this thread
        // takes it: a frame that runs over is cut at its next stage.
        let deadline = max_frame.and_then(|limit| {
            Some(FrameDeadline {
                at: Instant::now().checked_add(limit)?,
                limit,
            })
        });
        for id in routes_of(&job, &loaded) {
            let prep = prepared.take(id);
            let result = catch_unwind(AssertUnwindSafe(|| {
                routes.run(id, &frame, job.request(id), prep, deadline)
            }));
            let result = match result {
                Ok(Some(Ok(out))) => Ok(out),
                Ok(Some(Err(e))) => Err(EngineError::Route {
                    route: id,
                    frame: frame.id,
                    source: Arc::new(e),
                }),
                Ok(None) => Err(EngineError::NotEnabled(id)),
                Err(panic) => Err(EngineError::Panic {
                    route: id,
                    frame: frame.id,
                    message: panic_message(&panic),
                }),
            };
            results.push((id, result));
        }
        follow_health(ready, &results);
        let out = EngineOutput {
            frame,
            results,
            dropped_before: dropped + dropped_here,
            waiter: job.waiter,
        };
        if output.send(out).is_err() {
            break;
        }
    }
}

/// A failing frame marks the daemon unhealthy until one succeeds again.
fn follow_health(
    ready: &watch::Sender<Readiness>,
    results: &[(RouteId, Result<RouteOutput, EngineError>)],
) {
    match results.iter().find_map(|(_, r)| r.as_ref().err()) {
        None => {
            ready.send_if_modified(|r| {
                let changed = *r != Readiness::Serving;
                *r = Readiness::Serving;
                changed
            });
        }
        Some(EngineError::NotEnabled(_)) => {}
        // One frame too costly says nothing of the models' health.
        Some(e) if e.is_deadline() => tracing::warn!("{e}"),
        Some(e) => {
            tracing::error!("{e}");
            let _ = ready.send(Readiness::Failed(e.to_string()));
        }
    }
}

/// Loading failed: say so, and answer every frame that still arrives.
fn fail_all<W: Waiter>(
    gate: &Gate<PreparedJob<W>>,
    output: &mpsc::UnboundedSender<EngineOutput<W>>,
    ready: &watch::Sender<Readiness>,
    error: anyhow::Error,
    expected: &[RouteId],
) {
    let error = Arc::new(error);
    tracing::error!("models failed to load: {error:#}");
    let _ = ready.send(Readiness::Failed(format!("{error:#}")));
    while let Some((PreparedJob { job, .. }, _)) = gate.take() {
        let routes = routes_of(&job, expected);
        let out = EngineOutput {
            frame: job.frame,
            results: routes
                .into_iter()
                .map(|r| (r, Err(EngineError::Load(error.clone()))))
                .collect(),
            dropped_before: 0,
            waiter: job.waiter,
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

#[cfg(test)]
mod tests {
    use super::*;

    type Reply = oneshot::Sender<Result<(), EngineError>>;

    fn job(id: u64, reply: Option<Reply>) -> FrameJob<Reply> {
        FrameJob::new(
            Arc::new(Frame {
                id,
                source_id: "test".into(),
                client_frame_id: 0,
                captured: SystemTime::now(),
                received: Instant::now(),
                stream: Some(StreamId::new()),
                width: 1,
                height: 1,
                rgb: vec![0; 3],
                intrinsics: None,
            }),
            reply,
        )
    }

    /// Frames replaced at either gate are counted once, on the result that
    /// follows them; frames waiting for a reply pass both gates in order.
    #[test]
    fn drops_at_both_gates_add_up_and_waiting_frames_keep_their_order() {
        let first: Gate<FrameJob<Reply>> = Gate::new(4);
        let second: Gate<PreparedJob<Reply>> = Gate::new(usize::MAX);
        let preparer = FramePreparer::default();
        let pass = |n: usize| {
            for _ in 0..n {
                let (job, dropped) = first.take().unwrap();
                second
                    .offer(prepare(&preparer, &[], job, dropped))
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
        assert!(matches!(err, EngineError::Busy(2)), "{err:?}");

        // Waiting frames first, in order; then the newest camera frame with
        // the four it replaced.
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| {
            (!gate.is_empty()).then(|| gate.take().map(|(j, d)| (j.frame.id, d)).unwrap())
        })
        .collect();
        assert_eq!(order, [(10, 4), (11, 0), (4, 0)]);
        gate.close();
        assert!(gate.take().is_none());
        assert!(matches!(
            gate.offer(job(20, None)),
            Err(r) if matches!(r.1, EngineError::Stopped)
        ));
    }
}
