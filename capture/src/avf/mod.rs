//! macOS capture through AVFoundation, on objc2.
//!
//! - `permission`: TCC status, the one-time request, the embedded
//!   Info.plist (also for `posed doctor`).
//! - `devices`: discovery and each device's formats as [`Mode`]s.
//! - `grabber`: the running session; `delegate` and `pixels`: frames from
//!   AVFoundation's queue to the capture thread without copying.
//!
//! Every call Apple documents as throwing runs under [`catching`], so an
//! `NSException` becomes a [`CaptureError::Platform`] instead of an abort.
//! Numbers and texts that need no Mac live in [`crate::apple`].
//!
//! [`Mode`]: crate::mode::Mode

mod delegate;
mod devices;
mod grabber;
mod permission;
mod pixels;

use std::panic::AssertUnwindSafe;

use objc2::rc::autoreleasepool;
use objc2_av_foundation::{AVMediaType, AVMediaTypeVideo};
use objc2_foundation::NSError;

use crate::grabber::{Backend, CaptureError, Device, OpenOptions, Permission};
use crate::mode::Choice;

pub use grabber::AvfGrabber;
pub use permission::{authorization, bundle_identity};

/// The cameras AVFoundation lists. Holds no Objective-C objects, so it can
/// move to the capture thread.
#[derive(Debug, Default)]
pub struct AvfBackend {
    _private: (),
}

impl AvfBackend {
    pub fn new() -> AvfBackend {
        AvfBackend::default()
    }
}

impl Backend for AvfBackend {
    type Grabber = AvfGrabber;

    fn permission(&mut self, request: bool) -> Permission {
        autoreleasepool(|_| permission::permission(request))
    }

    fn devices(&mut self) -> Result<Vec<Device>, CaptureError> {
        autoreleasepool(|_| {
            let found = devices::discover()?;
            Ok(found.iter().map(|d| devices::describe(d)).collect())
        })
    }

    fn open(
        &mut self,
        device: &Device,
        choice: &Choice,
        options: OpenOptions,
    ) -> Result<AvfGrabber, CaptureError> {
        autoreleasepool(|_| grabber::open(device, choice, options))
    }
}

/// Runs `f`, turning an Objective-C exception into `Platform { call, reason }`.
fn catching<R>(call: &'static str, f: impl FnOnce() -> R) -> Result<R, CaptureError> {
    objc2::exception::catch(AssertUnwindSafe(f)).map_err(|exception| CaptureError::Platform {
        call,
        reason: exception.map_or_else(|| "nil exception".to_owned(), |e| e.to_string()),
    })
}

/// An `NSError` out-parameter as `Platform { call, reason }`.
fn ns_error(call: &'static str, error: &NSError) -> CaptureError {
    CaptureError::Platform {
        call,
        reason: error.localizedDescription().to_string(),
    }
}

fn video() -> Result<&'static AVMediaType, CaptureError> {
    // SAFETY: reading an immutable framework constant.
    unsafe { AVMediaTypeVideo }.ok_or(CaptureError::Platform {
        call: "AVMediaTypeVideo",
        reason: "AVFoundation does not define the video media type".to_owned(),
    })
}

const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<AvfBackend>();
};
