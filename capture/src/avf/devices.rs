//! Finding cameras and reading what each offers.

use objc2::available;
use objc2::rc::Retained;
use objc2_av_foundation::{
    AVCaptureDevice, AVCaptureDeviceDiscoverySession, AVCaptureDeviceFormat,
    AVCaptureDevicePosition,
};
use objc2_core_media::{CMTime, CMVideoFormatDescriptionGetDimensions};
use objc2_foundation::{NSArray, NSString};

use crate::apple::{self, CmTime};
use crate::grabber::{CaptureError, Device};
use crate::mode::{Choice, Mode};

use super::{catching, video};

/// The video cameras AVFoundation offers now, built-in first.
pub(super) fn discover() -> Result<Vec<Retained<AVCaptureDevice>>, CaptureError> {
    let types: Vec<Retained<NSString>> = apple::discovery_types(available!(macos = 14.0))
        .into_iter()
        .map(NSString::from_str)
        .collect();
    let types = NSArray::from_retained_slice(&types);
    let video = video()?;
    // SAFETY: the device types are AVCaptureDeviceType values for this
    // macOS, `video` is AVMediaTypeVideo; an unknown type throws, caught.
    let session = catching("discoverySessionWithDeviceTypes", || unsafe {
        AVCaptureDeviceDiscoverySession::discoverySessionWithDeviceTypes_mediaType_position(
            &types,
            Some(video),
            AVCaptureDevicePosition::Unspecified,
        )
    })?;
    // SAFETY: a getter on the session just made.
    Ok(unsafe { session.devices() }.to_vec())
}

/// The device under the id the capture loop chose it by.
pub(super) fn find(id: &str) -> Result<Option<Retained<AVCaptureDevice>>, CaptureError> {
    // SAFETY: `uniqueID` is a plain getter.
    Ok(discover()?
        .into_iter()
        .find(|d| unsafe { d.uniqueID() }.to_string() == id))
}

pub(super) fn describe(device: &AVCaptureDevice) -> Device {
    // SAFETY: plain getters on a device AVFoundation listed.
    let (id, name, kind, formats) = unsafe {
        (
            device.uniqueID(),
            device.localizedName(),
            device.deviceType(),
            device.formats(),
        )
    };
    Device {
        id: id.to_string(),
        name: name.to_string(),
        location: apple::location(&kind.to_string()).to_owned(),
        modes: formats.iter().map(|f| mode(&f)).collect(),
    }
}

/// The media subtype and dimensions of a device format.
pub(super) fn shape(format: &AVCaptureDeviceFormat) -> (u32, i32, i32) {
    // SAFETY: a device format's description is a video format description,
    // valid while `format` is; both reads are plain getters.
    unsafe {
        let description = format.formatDescription();
        let dims = CMVideoFormatDescriptionGetDimensions(&description);
        (description.media_sub_type(), dims.width, dims.height)
    }
}

fn mode(format: &AVCaptureDeviceFormat) -> Mode {
    let (subtype, width, height) = shape(format);
    // SAFETY: plain getters on a device format and its rate ranges.
    let ranges: Vec<(CmTime, CmTime)> = unsafe { format.videoSupportedFrameRateRanges() }
        .iter()
        .map(|r| unsafe { (cm_time(r.minFrameDuration()), cm_time(r.maxFrameDuration())) })
        .collect();
    apple::device_mode(subtype, width, height, &ranges)
}

/// The format at `choice.mode` in the device's list, if it is still the
/// one chosen from the list `devices()` returned.
pub(super) fn chosen_format(
    device: &AVCaptureDevice,
    choice: &Choice,
) -> Result<Retained<AVCaptureDeviceFormat>, CaptureError> {
    // SAFETY: a plain getter.
    let formats = unsafe { device.formats() }.to_vec();
    let format = formats.into_iter().nth(choice.mode).filter(|f| {
        let (subtype, width, height) = shape(f);
        apple::still_chosen(subtype, width, height, choice)
    });
    format.ok_or_else(|| CaptureError::Platform {
        call: "formats",
        reason: format!(
            "the camera's format list changed: entry {} is no longer {} {}",
            choice.mode, choice.size, choice.fourcc
        ),
    })
}

pub(super) fn cm_time(time: CMTime) -> CmTime {
    CmTime {
        value: time.value,
        timescale: time.timescale,
        flags: time.flags.0,
    }
}
