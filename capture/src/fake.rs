//! A scripted camera for tests of everything above the driver: the capture
//! loop's states, reconnects and drop counting, without a device (CI has
//! none and cannot load v4l2loopback).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::format::PixelFormat;
use crate::frame::{Pixels, Plane, RawFrame};
use crate::grabber::{Backend, CaptureError, Device, Grabber, OpenOptions, Permission};
use crate::mode::{Choice, Interval, Mode, Rates, Size, Sizes};

/// What the fake camera does next when asked for a frame.
#[derive(Debug, Clone)]
pub enum Step {
    /// Frames that arrived since the last ask, oldest first; each is a
    /// BGRA image filled with its value. Only the last is delivered.
    Frames(Vec<u8>),
    /// A frame whose bytes are too few for its size.
    Truncated,
    /// No frame within the timeout.
    Silence,
    /// The device goes away.
    Unplug,
    /// The driver code panics.
    Panic,
}

/// Everything that happens to the fake, for tests to read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Permission,
    Devices,
    Open(String),
    Close,
}

#[derive(Debug, Default)]
struct Shared {
    calls: Vec<Call>,
}

#[derive(Debug, Clone)]
pub struct FakeBackend {
    /// Answers to `permission()`; the last repeats.
    pub permissions: VecDeque<Permission>,
    /// Devices listed; open fails with `NotFound` while empty.
    pub devices: Vec<Device>,
    /// One script per open, in order; when they run out the camera is
    /// silent.
    pub scripts: VecDeque<Vec<Step>>,
    /// Driver clock: how old each frame is when dequeued.
    pub frame_age: Duration,
    shared: Arc<Mutex<Shared>>,
}

/// A handle on the calls a [`FakeBackend`] received.
#[derive(Debug, Clone)]
pub struct Calls(Arc<Mutex<Shared>>);

impl Calls {
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut self.0.lock().expect("fake calls lock").calls)
    }
}

impl FakeBackend {
    pub fn new(devices: Vec<Device>) -> (FakeBackend, Calls) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let fake = FakeBackend {
            permissions: VecDeque::from([Permission::Granted]),
            devices,
            scripts: VecDeque::new(),
            frame_age: Duration::from_millis(5),
            shared: shared.clone(),
        };
        (fake, Calls(shared))
    }

    fn log(&self, call: Call) {
        self.shared
            .lock()
            .expect("fake calls lock")
            .calls
            .push(call);
    }
}

/// A BGRA camera of one size at 30 fps.
pub fn bgra_camera(name: &str, size: Size) -> Device {
    Device {
        id: format!("fake:{name}"),
        name: name.to_owned(),
        location: "fake".to_owned(),
        modes: vec![Mode {
            fourcc: "BGRA".to_owned(),
            format: Some(PixelFormat::Bgra),
            range: None,
            sizes: Sizes::One(size),
            rates: vec![Rates::exactly(Interval::new(1, 30))],
        }],
    }
}

impl Backend for FakeBackend {
    type Grabber = FakeGrabber;

    fn permission(&mut self, _request: bool) -> Permission {
        self.log(Call::Permission);
        if self.permissions.len() > 1 {
            self.permissions.pop_front().expect("checked non-empty")
        } else {
            self.permissions
                .front()
                .cloned()
                .unwrap_or(Permission::Granted)
        }
    }

    fn devices(&mut self) -> Result<Vec<Device>, CaptureError> {
        self.log(Call::Devices);
        Ok(self.devices.clone())
    }

    fn open(
        &mut self,
        device: &Device,
        choice: &Choice,
        _options: OpenOptions,
    ) -> Result<FakeGrabber, CaptureError> {
        self.log(Call::Open(device.name.clone()));
        Ok(FakeGrabber {
            device: device.name.clone(),
            script: self.scripts.pop_front().unwrap_or_default().into(),
            size: choice.size,
            buffer: Vec::new(),
            sequence: 0,
            dropped: 0,
            age: self.frame_age,
            shared: self.shared.clone(),
        })
    }
}

pub struct FakeGrabber {
    device: String,
    script: VecDeque<Step>,
    size: Size,
    buffer: Vec<u8>,
    sequence: u64,
    dropped: u64,
    age: Duration,
    shared: Arc<Mutex<Shared>>,
}

impl Grabber for FakeGrabber {
    fn next_frame(
        &mut self,
        timeout: Duration,
        use_frame: &mut dyn FnMut(&RawFrame<'_>),
    ) -> Result<bool, CaptureError> {
        let (width, height) = (self.size.width, self.size.height);
        let stride = usize::try_from(width).expect("u32 fits usize") * 4;
        let bytes = stride * usize::try_from(height).expect("u32 fits usize");
        match self.script.pop_front().unwrap_or(Step::Silence) {
            Step::Silence => {
                std::thread::sleep(timeout);
                Ok(false)
            }
            Step::Unplug => Err(CaptureError::Disconnected {
                device: self.device.clone(),
            }),
            Step::Panic => panic!("fake driver bug"),
            step @ (Step::Frames(_) | Step::Truncated) => {
                let (value, len) = match step {
                    Step::Frames(values) => {
                        let Some(&newest) = values.last() else {
                            return Ok(false);
                        };
                        self.sequence += values.len() as u64;
                        self.dropped += values.len() as u64 - 1;
                        (newest, bytes)
                    }
                    _ => {
                        self.sequence += 1;
                        (0, bytes / 2)
                    }
                };
                self.buffer = vec![value; len];
                let driver_now = Duration::from_secs(100);
                use_frame(&RawFrame {
                    width,
                    height,
                    pixels: Pixels::Bgra(Plane {
                        data: &self.buffer,
                        stride,
                    }),
                    driver_time: driver_now.checked_sub(self.age),
                    driver_now,
                    sequence: self.sequence,
                });
                Ok(true)
            }
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Drop for FakeGrabber {
    fn drop(&mut self) {
        self.shared
            .lock()
            .expect("fake calls lock")
            .calls
            .push(Call::Close);
    }
}
