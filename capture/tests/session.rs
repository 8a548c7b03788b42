//! The capture loop against a scripted camera: permission, reconnects,
//! stalls, backoff, stop, and which frames get through.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use posed_capture::fake::{bgra_camera, Call, Calls, FakeBackend, Step};
use posed_capture::{
    CameraState, CapturedFrame, Observer, Permission, PixelFormat, Session, SessionConfig, Size,
    Want,
};

/// Everything the loop reported.
#[derive(Debug, Default)]
struct Log {
    states: Vec<(CameraState, String)>,
    /// First byte of each delivered frame's RGB, and its queue time.
    frames: Vec<(u8, Duration)>,
    dropped: u64,
}

impl Log {
    fn count(&self, state: CameraState) -> usize {
        self.states.iter().filter(|(s, _)| *s == state).count()
    }

    fn details(&self, state: CameraState) -> Vec<&str> {
        self.states
            .iter()
            .filter(|(s, _)| *s == state)
            .map(|(_, d)| d.as_str())
            .collect()
    }
}

/// Logs, and raises the stop flag once `done` holds.
struct Recorder {
    log: Log,
    stop: Arc<AtomicBool>,
    done: Box<dyn FnMut(&Log) -> bool + Send>,
}

impl Recorder {
    fn check(&mut self) {
        if (self.done)(&self.log) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

impl Observer for Recorder {
    fn state(&mut self, state: CameraState, detail: &str) {
        self.log.states.push((state, detail.to_owned()));
        self.check();
    }

    fn frame(&mut self, frame: CapturedFrame) -> ControlFlow<()> {
        assert_eq!((frame.image.width, frame.image.height), (4, 2));
        assert_eq!(frame.image.data.len(), 4 * 2 * 3);
        self.log
            .frames
            .push((frame.image.data[0], frame.captured.queue));
        self.check();
        ControlFlow::Continue(())
    }

    fn dropped(&mut self, frames: u64) {
        self.log.dropped += frames;
        self.check();
    }
}

fn camera() -> (FakeBackend, Calls) {
    FakeBackend::new(vec![bgra_camera("Desk Cam", Size::new(4, 2))])
}

fn config() -> SessionConfig {
    let want = Want {
        size: Size::new(4, 2),
        fps: 30,
        formats: vec![PixelFormat::Bgra],
    };
    let mut c = SessionConfig::new("desk", want);
    c.poll = Duration::from_millis(20);
    c.stall_floor = Duration::from_millis(200);
    c.first_frame = Duration::from_millis(200);
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(40);
    c.permission_recheck = Duration::from_millis(20);
    c
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Log>,
}

fn start(
    fake: FakeBackend,
    config: SessionConfig,
    done: impl FnMut(&Log) -> bool + Send + 'static,
) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let mut recorder = Recorder {
        log: Log::default(),
        stop: stop.clone(),
        done: Box::new(done),
    };
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        Session::new(fake, config).run(&flag, &mut recorder);
        recorder.log
    });
    Running { stop, thread }
}

/// Runs until `done`, with a 10 s limit so a broken loop fails, not hangs.
fn run(
    fake: FakeBackend,
    config: SessionConfig,
    done: impl FnMut(&Log) -> bool + Send + 'static,
) -> Log {
    let running = start(fake, config, done);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !running.thread.is_finished() {
        assert!(Instant::now() < deadline, "the capture loop did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = running.thread.join().expect("the capture loop panicked");
    assert_eq!(log.states.last().map(|s| s.0), Some(CameraState::Stopped));
    log
}

fn opens(calls: &Calls) -> usize {
    calls
        .take()
        .iter()
        .filter(|c| matches!(c, Call::Open(_)))
        .count()
}

#[test]
fn waits_for_permission_then_opens_and_delivers() {
    let (mut fake, calls) = camera();
    fake.permissions = [
        Permission::Pending,
        Permission::Pending,
        Permission::Granted,
    ]
    .into();
    fake.scripts = [vec![Step::Frames(vec![7])]].into();
    let log = run(fake, config(), |l| !l.frames.is_empty());
    let states: Vec<CameraState> = log.states.iter().map(|s| s.0).collect();
    assert_eq!(
        states,
        [
            CameraState::WaitingPermission,
            CameraState::WaitingPermission,
            CameraState::Opening,
            CameraState::Running,
            CameraState::Stopped,
        ]
    );
    assert_eq!(log.details(CameraState::Running), ["Desk Cam 4x2@30 BGRA"]);
    assert_eq!(log.frames.len(), 1);
    // BGRA 7,7,7,7 is RGB 7,7,7.
    assert_eq!(log.frames[0].0, 7);
    assert_eq!(opens(&calls), 1);
}

#[test]
fn denied_and_misconfigured_say_how_to_fix_it_and_are_checked_again() {
    let (mut fake, calls) = camera();
    fake.permissions = [
        Permission::Misconfigured("embed the Info.plist".into()),
        Permission::Denied("turn it on in System Settings".into()),
        Permission::Denied("turn it on in System Settings".into()),
    ]
    .into();
    let log = run(fake, config(), |l| {
        l.count(CameraState::PermissionDenied) == 2
    });
    assert_eq!(
        log.details(CameraState::Misconfigured),
        ["embed the Info.plist"]
    );
    assert_eq!(
        log.details(CameraState::PermissionDenied),
        ["turn it on in System Settings"; 2]
    );
    assert_eq!(opens(&calls), 0, "nothing opens without permission");
}

#[test]
fn a_missing_camera_is_retried_and_the_detail_names_what_is_there() {
    let (mut fake, _) = camera();
    fake.devices[0].name = "FaceTime HD Camera".into();
    let log = run(fake, config(), |l| l.count(CameraState::Reconnecting) == 4);
    assert_eq!(
        log.details(CameraState::Reconnecting),
        [
            "no camera named like \"desk\" (found: FaceTime HD Camera); retrying (attempt 1, next in 0.0 s)",
            "no camera named like \"desk\" (found: FaceTime HD Camera); retrying (attempt 2, next in 0.0 s)",
            "no camera named like \"desk\" (found: FaceTime HD Camera); retrying (attempt 3, next in 0.0 s)",
            "no camera named like \"desk\" (found: FaceTime HD Camera); retrying (attempt 4, next in 0.0 s)",
        ]
    );
}

#[test]
fn the_newest_frame_of_a_burst_is_delivered_and_the_rest_are_counted_as_dropped() {
    let (mut fake, _) = camera();
    fake.frame_age = Duration::from_millis(12);
    fake.scripts = [vec![
        Step::Frames(vec![10, 20, 30]),
        Step::Truncated,
        Step::Frames(vec![40, 50]),
    ]]
    .into();
    let log = run(fake, config(), |l| l.frames.len() == 2 && l.dropped == 4);
    let values: Vec<u8> = log.frames.iter().map(|f| f.0).collect();
    assert_eq!(values, [30, 50]);
    // 2 superseded + 1 unreadable + 1 superseded.
    assert_eq!(log.dropped, 4);
    assert!(log.frames.iter().all(|f| f.1 == Duration::from_millis(12)));
}

#[test]
fn a_stalled_camera_is_reopened() {
    let (mut fake, calls) = camera();
    fake.scripts = [vec![Step::Frames(vec![1])], vec![Step::Frames(vec![2])]].into();
    let log = run(fake, config(), |l| l.frames.len() == 2);
    let stalled = log.details(CameraState::Stalled);
    assert_eq!(stalled.len(), 1);
    assert!(
        stalled[0].starts_with("no frame for 0.")
            && stalled[0].ends_with("from \"Desk Cam\"; reopening (attempt 1, next in 0.0 s)"),
        "{stalled:?}"
    );
    assert_eq!(opens(&calls), 2);
}

#[test]
fn a_slow_first_frame_is_waited_for_and_later_silence_is_a_stall() {
    let (mut fake, calls) = camera();
    let mut script = vec![Step::Silence; 15]; // 15 polls of 20 ms
    script.push(Step::Frames(vec![9]));
    fake.scripts = [script].into();
    let mut c = config();
    c.first_frame = Duration::from_millis(600);
    let log = run(fake, c, |l| l.count(CameraState::Stalled) == 1);
    assert_eq!(
        log.frames.len(),
        1,
        "the first frame came after 300 ms: {log:?}"
    );
    assert_eq!(log.frames[0].0, 9);
    assert_eq!(
        opens(&calls),
        1,
        "no reopen while waiting for the first frame"
    );
}

#[test]
fn an_unplugged_or_panicking_driver_is_reopened() {
    let (mut fake, calls) = camera();
    fake.scripts = [
        vec![Step::Frames(vec![1]), Step::Unplug],
        vec![Step::Panic],
        vec![Step::Frames(vec![3])],
    ]
    .into();
    let log = run(fake, config(), |l| l.frames.len() == 2);
    let reconnecting = log.details(CameraState::Reconnecting);
    assert_eq!(reconnecting.len(), 2, "{reconnecting:?}");
    assert!(reconnecting[0].starts_with("\"Desk Cam\" disconnected; retrying"));
    assert!(reconnecting[1].starts_with("capture panicked: fake driver bug; retrying"));
    assert_eq!(opens(&calls), 3);
}

#[test]
fn backoff_doubles_while_opens_fail_and_starts_over_after_a_good_session() {
    let (mut fake, _) = camera();
    let mut c = config();
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(400);
    fake.scripts = [
        vec![Step::Unplug],
        vec![Step::Unplug],
        vec![Step::Unplug],
        vec![Step::Frames(vec![1]), Step::Unplug],
        vec![Step::Unplug],
    ]
    .into();
    let log = run(fake, c, |l| l.count(CameraState::Reconnecting) == 5);
    let next: Vec<&str> = log
        .details(CameraState::Reconnecting)
        .iter()
        .map(|d| d.rsplit_once("(").unwrap().1)
        .collect();
    assert_eq!(
        next,
        [
            "attempt 1, next in 0.1 s)",
            "attempt 2, next in 0.2 s)",
            "attempt 3, next in 0.4 s)",
            "attempt 1, next in 0.1 s)",
            "attempt 2, next in 0.2 s)",
        ]
    );
}

/// Stop is honoured within 200 ms wherever the loop is: streaming a
/// silent camera, or waiting out a long backoff. (The loop looks at the
/// flag every `poll`, 100 ms by default.)
#[test]
fn stop_is_honoured_within_200_ms_while_streaming_and_during_backoff() {
    for script in [vec![Step::Frames(vec![1])], vec![Step::Unplug]] {
        let (mut fake, _) = camera();
        fake.scripts = [script].into();
        let mut c = config();
        c.poll = Duration::from_millis(100);
        c.stall_floor = Duration::from_secs(60);
        c.backoff_min = Duration::from_secs(10);
        let running = start(fake, c, |_| false);
        std::thread::sleep(Duration::from_millis(300));
        let asked = Instant::now();
        running.stop.store(true, Ordering::Relaxed);
        let log = running.thread.join().unwrap();
        let took = asked.elapsed();
        assert!(took <= Duration::from_millis(200), "stop took {took:?}");
        assert_eq!(log.states.last().unwrap().0, CameraState::Stopped);
    }
}
