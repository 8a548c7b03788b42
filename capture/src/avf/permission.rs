//! Camera permission (TCC) and the identity macOS grants it to.
//!
//! macOS asks the user once per code identity, and only if the binary's
//! Info.plist (embedded in `__TEXT,__info_plist` for a bare binary) says
//! why it wants the camera. The request never blocks: the capture loop
//! polls [`permission`] until the status leaves "not determined".

use std::sync::atomic::{AtomicBool, Ordering};

use block2::RcBlock;
use objc2::rc::autoreleasepool;
use objc2::runtime::Bool;
use objc2_av_foundation::AVCaptureDevice;
use objc2_foundation::{ns_string, NSBundle, NSString};

use crate::apple::{self, Authorization, BundleIdentity};
use crate::grabber::Permission;

use super::{catching, video};

/// Set once this process has asked; macOS shows its dialog at most once
/// per identity anyway, and asking again while it is up is pointless.
static ASKED: AtomicBool = AtomicBool::new(false);

/// Why the one request failed, if it threw: reported instead of asking
/// again every poll.
static REQUEST_FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub(super) fn permission(request: bool) -> Permission {
    let identity = bundle_identity();
    if identity.camera_usage.is_none() {
        return apple::permission(false, Authorization::NotDetermined, false);
    }
    if let Some(why) = REQUEST_FAILED.get() {
        return Permission::Misconfigured(format!("macOS refused to ask for the camera: {why}"));
    }
    let status = authorization();
    let asking = status == Authorization::NotDetermined && request && ask();
    apple::permission(true, status, asking || ASKED.load(Ordering::Relaxed))
}

/// The video authorization status (for `posed doctor` too).
pub fn authorization() -> Authorization {
    let Ok(video) = video() else {
        return Authorization::Other(-1);
    };
    // SAFETY: `video` is AVMediaTypeVideo, one of the two media types this
    // accepts (any other throws).
    let status = catching("authorizationStatusForMediaType", || unsafe {
        AVCaptureDevice::authorizationStatusForMediaType(video)
    });
    match status {
        Ok(status) => Authorization::from_raw(status.0),
        Err(e) => {
            tracing::warn!("camera: {e}");
            Authorization::Other(-1)
        }
    }
}

/// Shows the system dialog once per process. True when the request is (or
/// already was) out.
fn ask() -> bool {
    if ASKED.swap(true, Ordering::Relaxed) {
        return true;
    }
    let Ok(video) = video() else {
        return false;
    };
    // Called on an arbitrary queue once the user answers; the loop reads the
    // new status itself, so the block only logs.
    let answered = RcBlock::new(|granted: Bool| {
        tracing::info!(
            "camera: the user answered the permission dialog (granted: {})",
            granted.as_bool()
        );
    });
    // SAFETY: `video` is AVMediaTypeVideo; the block is retained by
    // AVFoundation for as long as it needs it, and captures nothing.
    let sent = catching("requestAccessForMediaType", || unsafe {
        AVCaptureDevice::requestAccessForMediaType_completionHandler(video, &answered)
    });
    if let Err(e) = sent {
        tracing::warn!("camera: {e}");
        let _ = REQUEST_FAILED.set(e.to_string());
        return false;
    }
    true
}

/// The main bundle's identifier and camera usage text: for a bare binary,
/// the Info.plist the build embedded (absent when it embedded none).
pub fn bundle_identity() -> BundleIdentity {
    autoreleasepool(|_| {
        let bundle = NSBundle::mainBundle();
        let usage = bundle
            .objectForInfoDictionaryKey(ns_string!("NSCameraUsageDescription"))
            .and_then(|value| value.downcast::<NSString>().ok())
            .map(|text| text.to_string())
            .filter(|text| !text.trim().is_empty());
        BundleIdentity {
            identifier: bundle.bundleIdentifier().map(|id| id.to_string()),
            camera_usage: usage,
        }
    })
}
