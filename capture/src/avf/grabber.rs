//! Opening a camera in the chosen format and handing over its frames.
//!
//! The device stays locked for configuration while it runs: an unlocked
//! device lets the session's preset replace the active format on start.
//! The input joins the session before the format is set, since adding it
//! can reset the format and frame durations.

use std::sync::Arc;
use std::time::Duration;

use objc2::rc::{autoreleasepool, Retained};
use objc2::runtime::{AnyObject, ProtocolObject};
use objc2::{sel, Message};
use objc2_av_foundation::{
    AVCaptureDevice, AVCaptureDeviceInput, AVCaptureSession, AVCaptureVideoDataOutput,
};
use objc2_core_media::{CMClock, CMTime, CMTimeFlags};
use objc2_core_video::kCVPixelBufferPixelFormatTypeKey;
use objc2_foundation::{NSDictionary, NSNumber, NSObjectProtocol, NSString};

use dispatch2::{DispatchQueue, DispatchQueueAttr, DispatchRetained};

use crate::apple::{self, CmTime, FourCc};
use crate::frame::RawFrame;
use crate::grabber::{CaptureError, Device, Grabber, OpenOptions};
use crate::mode::Choice;

use super::delegate::{FrameDelegate, Mailbox};
use super::devices::{self, cm_time};
use super::{catching, ns_error, pixels};

pub struct AvfGrabber {
    /// Declared first: dropping it stops the session, then unlocks.
    rig: Rig,
    device: Retained<AVCaptureDevice>,
    name: String,
    mailbox: Arc<Mailbox>,
    /// Buffers that arrived but could not be read.
    unreadable: u64,
    // Kept alive for the output, which refers to them.
    _delegate: Retained<FrameDelegate>,
    _queue: DispatchRetained<DispatchQueue>,
}

pub(super) fn open(
    device: &Device,
    choice: &Choice,
    options: OpenOptions,
) -> Result<AvfGrabber, CaptureError> {
    let av = devices::find(&device.id)?.ok_or_else(|| CaptureError::Disconnected {
        device: device.name.clone(),
    })?;
    let format = devices::chosen_format(&av, choice)?;
    let interval =
        CmTime::from_interval(choice.interval).ok_or_else(|| CaptureError::Platform {
            call: "setActiveVideoMinFrameDuration",
            reason: format!(
                "frame interval {}/{} does not fit a CMTime",
                choice.interval.numerator, choice.interval.denominator
            ),
        })?;

    // SAFETY: a new, unshared session.
    let mut rig = Rig::new(unsafe { AVCaptureSession::new() });
    // SAFETY: configuring a session nobody else uses, from this thread.
    catching("beginConfiguration", || unsafe {
        rig.session.beginConfiguration()
    })?;
    rig.configuring = true;

    // SAFETY: `av` is a device AVFoundation listed; failure is an NSError.
    let input = catching("AVCaptureDeviceInput", || unsafe {
        AVCaptureDeviceInput::deviceInputWithDevice_error(&av)
    })?
    .map_err(|e| ns_error("AVCaptureDeviceInput", &e))?;
    // SAFETY: `input` was made for this process; the session is ours.
    if !unsafe { rig.session.canAddInput(&input) } {
        return Err(CaptureError::Busy {
            device: device.name.clone(),
            reason: "the capture session cannot take it as an input".to_owned(),
        });
    }
    // SAFETY: checked with canAddInput; a refusal throws, caught.
    catching("addInput", || unsafe { rig.session.addInput(&input) })?;
    rig.input = Some(input);

    rig.lock(&av)?;
    // SAFETY: the device is locked and `format` is one of its own formats;
    // anything else throws, caught.
    catching("setActiveFormat", || unsafe { av.setActiveFormat(&format) })?;
    set_frame_duration(&av, interval, options.pin_frame_rate)?;

    let mailbox = Arc::new(Mailbox::default());
    let delegate = FrameDelegate::new(mailbox.clone());
    let queue = DispatchQueue::new("dev.posed.capture", DispatchQueueAttr::SERIAL);
    // SAFETY: a new, unshared output.
    let output = unsafe { AVCaptureVideoDataOutput::new() };
    // SAFETY: the queue is serial, as frame order needs; the delegate and
    // queue outlive the output's use of them (the grabber keeps both, and
    // Drop detaches the delegate).
    catching("setSampleBufferDelegate", || unsafe {
        output.setAlwaysDiscardsLateVideoFrames(true);
        output.setSampleBufferDelegate_queue(
            Some(ProtocolObject::from_ref(&*delegate)),
            Some(&queue),
        );
    })?;
    // SAFETY: output and session are ours.
    if !unsafe { rig.session.canAddOutput(&output) } {
        return Err(CaptureError::Platform {
            call: "canAddOutput",
            reason: "the capture session cannot take a video data output".to_owned(),
        });
    }
    // SAFETY: checked with canAddOutput; a refusal throws, caught.
    catching("addOutput", || unsafe { rig.session.addOutput(&output) })?;
    rig.output = Some(output.clone());

    // The offered pixel types follow the active format, so ask only now.
    let native = devices::shape(&format).0;
    let pixel_format = apple::output_pixel_format(native, &available_pixel_formats(&output));
    set_pixel_format(&output, pixel_format)?;

    // SAFETY: balances the beginConfiguration above.
    catching("commitConfiguration", || unsafe {
        rig.session.commitConfiguration()
    })?;
    rig.configuring = false;
    // SAFETY: a configured session, started from the capture thread (it
    // blocks until running, so never call it on the main thread).
    catching("startRunning", || unsafe { rig.session.startRunning() })?;
    // SAFETY: a plain getter.
    if !unsafe { rig.session.isRunning() } {
        return Err(CaptureError::Platform {
            call: "startRunning",
            reason: "the capture session did not start".to_owned(),
        });
    }
    // SAFETY: a plain getter.
    if unsafe { av.activeFormat() } != format {
        tracing::warn!("camera: {} changed its format on start", device.name);
    }
    tracing::debug!(
        "camera: {} native {}, output {}",
        device.name,
        FourCc(native),
        FourCc(pixel_format)
    );
    Ok(AvfGrabber {
        rig,
        device: av,
        name: device.name.clone(),
        mailbox,
        unreadable: 0,
        _delegate: delegate,
        _queue: queue,
    })
}

/// Caps the frame rate at the chosen one; with `pin`, also floors it there
/// (min = max duration), so dim light cannot stretch frames.
fn set_frame_duration(
    device: &AVCaptureDevice,
    interval: CmTime,
    pin: bool,
) -> Result<(), CaptureError> {
    // macOS 15's automatic frame rate makes both setters throw.
    if device.respondsToSelector(sel!(isAutoVideoFrameRateEnabled))
        // SAFETY: the selector exists (checked above).
        && unsafe { device.isAutoVideoFrameRateEnabled() }
    {
        catching("setAutoVideoFrameRateEnabled", || unsafe {
            device.setAutoVideoFrameRateEnabled(false)
        })?;
    }
    let time = CMTime {
        value: interval.value,
        timescale: interval.timescale,
        flags: CMTimeFlags::Valid,
        epoch: 0,
    };
    // SAFETY (both setters): the device is locked and `time` lies in the
    // active format's ranges (it came from them); otherwise they throw,
    // caught.
    let set_min = || {
        catching("setActiveVideoMinFrameDuration", || unsafe {
            device.setActiveVideoMinFrameDuration(time)
        })
    };
    let set_max = || {
        catching("setActiveVideoMaxFrameDuration", || unsafe {
            device.setActiveVideoMaxFrameDuration(time)
        })
    };
    // Keep min ≤ max at each step: a duration longer than the current max
    // moves the max first (needed even unpinned).
    // SAFETY: a plain getter.
    let current_max = cm_time(unsafe { device.activeVideoMaxFrameDuration() });
    let stretch = !current_max.is_numeric() || interval.longer_than(current_max);
    if stretch {
        set_max()?;
    }
    set_min()?;
    // Pinning is a nicety (a steady rate in the dark), not a reason to
    // refuse the camera: as on V4L2, a refusal is logged and capture runs.
    if pin && !stretch {
        if let Err(e) = set_max() {
            tracing::warn!("camera: the frame rate is not pinned: {e}");
        }
    }
    Ok(())
}

fn available_pixel_formats(output: &AVCaptureVideoDataOutput) -> Vec<u32> {
    // SAFETY: a plain getter; the array holds NSNumbers.
    let types = unsafe { output.availableVideoCVPixelFormatTypes() };
    types.iter().map(|n| n.as_u32()).collect()
}

fn set_pixel_format(output: &AVCaptureVideoDataOutput, code: u32) -> Result<(), CaptureError> {
    // SAFETY: reading CoreVideo's constant key.
    let key: &NSString = unsafe { kCVPixelBufferPixelFormatTypeKey }.as_ref();
    let value = NSNumber::new_u32(code);
    let value: &AnyObject = &value;
    let settings = NSDictionary::from_slices(&[key], &[value]);
    // SAFETY: the dictionary maps the pixel-format key to an NSNumber, the
    // one setting macOS documents; an unsupported type throws, caught.
    catching("setVideoSettings", || unsafe {
        output.setVideoSettings(Some(&settings))
    })
}

impl AvfGrabber {
    /// The camera went away or AVFoundation stopped the session (a runtime
    /// error, another app taking the camera exclusively): reopen.
    fn check_alive(&self) -> Result<(), CaptureError> {
        let session = &self.rig.session;
        // `interrupted` is not in every macOS's AVFoundation; a missing
        // selector would throw outside any catch.
        let can_interrupt = session.respondsToSelector(sel!(isInterrupted));
        // SAFETY: plain getters (the last one checked to exist).
        let (connected, running, interrupted) = unsafe {
            (
                self.device.isConnected(),
                session.isRunning(),
                can_interrupt && session.isInterrupted(),
            )
        };
        if connected && running && !interrupted {
            return Ok(());
        }
        tracing::debug!(
            "camera: {} connected {connected}, running {running}, interrupted {interrupted}",
            self.name
        );
        Err(CaptureError::Disconnected {
            device: self.name.clone(),
        })
    }
}

impl Grabber for AvfGrabber {
    fn next_frame(
        &mut self,
        timeout: Duration,
        use_frame: &mut dyn FnMut(&RawFrame<'_>),
    ) -> Result<bool, CaptureError> {
        autoreleasepool(|_| {
            self.check_alive()?;
            let Some(delivery) = self.mailbox.take(timeout) else {
                return Ok(false);
            };
            // SAFETY: the host time clock is a process-wide singleton;
            // reading it has no preconditions.
            let now = unsafe { CMClock::host_time_clock().time() };
            let driver_now = cm_time(now).to_duration().unwrap_or_default();
            let lent = pixels::lend(&delivery, driver_now, use_frame)?;
            if !lent {
                self.unreadable += 1;
            }
            Ok(lent)
        })
    }

    fn dropped(&self) -> u64 {
        self.mailbox.dropped().saturating_add(self.unreadable)
    }
}

/// A session and what open() attached to it so far; dropping it undoes
/// that in order: stop, detach, unlock.
struct Rig {
    session: Retained<AVCaptureSession>,
    input: Option<Retained<AVCaptureDeviceInput>>,
    output: Option<Retained<AVCaptureVideoDataOutput>>,
    locked: Option<Retained<AVCaptureDevice>>,
    /// Inside beginConfiguration (open() failed half-way).
    configuring: bool,
}

impl Rig {
    fn new(session: Retained<AVCaptureSession>) -> Rig {
        Rig {
            session,
            input: None,
            output: None,
            locked: None,
            configuring: false,
        }
    }

    fn lock(&mut self, device: &AVCaptureDevice) -> Result<(), CaptureError> {
        // SAFETY: a device AVFoundation listed; failure is an NSError.
        catching("lockForConfiguration", || unsafe {
            device.lockForConfiguration()
        })?
        .map_err(|e| CaptureError::Busy {
            // SAFETY: a plain getter.
            device: unsafe { device.localizedName() }.to_string(),
            reason: e.localizedDescription().to_string(),
        })?;
        self.locked = Some(device.retain());
        Ok(())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        autoreleasepool(|_| {
            let session = &self.session;
            let mut steps: Vec<Result<(), CaptureError>> = Vec::new();
            if !self.configuring {
                // SAFETY: stopping our own session; it blocks until stopped.
                steps.push(catching("stopRunning", || unsafe { session.stopRunning() }));
                steps.push(catching("beginConfiguration", || unsafe {
                    session.beginConfiguration()
                }));
            }
            if let Some(output) = &self.output {
                // SAFETY: a nil delegate with a nil queue is the documented
                // way to detach; then the output leaves our session.
                steps.push(catching("removeOutput", || unsafe {
                    output.setSampleBufferDelegate_queue(None, None);
                    session.removeOutput(output);
                }));
            }
            if let Some(input) = &self.input {
                // SAFETY: the input is in our session.
                steps.push(catching("removeInput", || unsafe {
                    session.removeInput(input)
                }));
            }
            // SAFETY: balances the beginConfiguration above or open()'s.
            steps.push(catching("commitConfiguration", || unsafe {
                session.commitConfiguration()
            }));
            if let Some(device) = &self.locked {
                // SAFETY: we hold the lock taken in `Rig::lock`.
                steps.push(catching("unlockForConfiguration", || unsafe {
                    device.unlockForConfiguration()
                }));
            }
            for e in steps.into_iter().filter_map(Result::err) {
                tracing::warn!("camera: closing: {e}");
            }
        });
    }
}
