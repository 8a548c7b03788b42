//! AVFoundation's side of the hand-over: a delegate on a serial dispatch
//! queue puts each frame's pixel buffer into a one-slot mailbox that the
//! capture thread empties.
//!
//! The delegate runs on AVFoundation's schedule, so it never blocks (one
//! short lock) and never panics (a panic would unwind into libdispatch). It
//! keeps the `CVPixelBuffer`, not the sample buffer: one pooled buffer at a
//! time, released as soon as a newer frame supersedes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use objc2::rc::Retained;
use objc2::runtime::NSObject;
use objc2::{define_class, msg_send, AllocAnyThread, DefinedClass, Message};
use objc2_av_foundation::{
    AVCaptureConnection, AVCaptureOutput, AVCaptureVideoDataOutputSampleBufferDelegate,
};
use objc2_core_media::CMSampleBuffer;
use objc2_core_video::CVPixelBuffer;
use objc2_foundation::NSObjectProtocol;

use super::devices::cm_time;

/// A retained pixel buffer on its way to the capture thread. (objc2's
/// `Retained` works for CoreFoundation types: they are Objective-C objects
/// on Apple platforms.)
pub(super) struct PixelBuffer(pub Retained<CVPixelBuffer>);

// SAFETY: CoreVideo buffers are reference counted atomically and immutable
// once delivered; the mailbox hands each one to a single thread at a time.
unsafe impl Send for PixelBuffer {}

pub(super) struct Delivery {
    pub buffer: PixelBuffer,
    /// Presentation time on the host clock.
    pub time: Option<Duration>,
    pub sequence: u64,
}

#[derive(Default)]
pub(super) struct Mailbox {
    slot: Mutex<Option<Delivery>>,
    arrived: Condvar,
    /// Dropped by AVFoundation or superseded here.
    dropped: AtomicU64,
    /// Frames AVFoundation announced, delivered or dropped.
    seen: AtomicU64,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Option<Delivery>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put(&self, buffer: PixelBuffer, time: Option<Duration>) {
        let sequence = self.next_sequence();
        let old = self.lock().replace(Delivery {
            buffer,
            time,
            sequence,
        });
        self.arrived.notify_one();
        if old.is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        // `old` (a pooled buffer) is released here, outside the lock.
    }

    fn drop_one(&self) {
        self.next_sequence();
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn next_sequence(&self) -> u64 {
        self.seen.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// The newest frame, waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Option<Delivery> {
        let slot = self.lock();
        let (mut slot, _) = self
            .arrived
            .wait_timeout_while(slot, timeout, |slot| slot.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        slot.take()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

define_class!(
    // SAFETY: NSObject has no subclassing requirements, and FrameDelegate
    // does not implement Drop.
    #[unsafe(super(NSObject))]
    #[name = "PosedCaptureFrameDelegate"]
    #[ivars = Arc<Mailbox>]
    pub(super) struct FrameDelegate;

    unsafe impl NSObjectProtocol for FrameDelegate {}

    unsafe impl AVCaptureVideoDataOutputSampleBufferDelegate for FrameDelegate {
        #[unsafe(method(captureOutput:didOutputSampleBuffer:fromConnection:))]
        fn did_output(
            &self,
            _output: &AVCaptureOutput,
            sample: &CMSampleBuffer,
            _connection: &AVCaptureConnection,
        ) {
            // SAFETY: `sample` is the live sample buffer AVFoundation passed;
            // both reads are getters, and the image buffer comes back retained.
            let (image, time) = unsafe { (sample.image_buffer(), sample.presentation_time_stamp()) };
            match image {
                Some(image) => {
                    let buffer = PixelBuffer(Message::retain(&*image));
                    self.ivars().put(buffer, cm_time(time).to_duration());
                }
                None => self.ivars().drop_one(),
            }
        }

        #[unsafe(method(captureOutput:didDropSampleBuffer:fromConnection:))]
        fn did_drop(
            &self,
            _output: &AVCaptureOutput,
            _sample: &CMSampleBuffer,
            _connection: &AVCaptureConnection,
        ) {
            self.ivars().drop_one();
        }
    }
);

impl FrameDelegate {
    pub fn new(mailbox: Arc<Mailbox>) -> Retained<FrameDelegate> {
        let this = FrameDelegate::alloc().set_ivars(mailbox);
        // SAFETY: NSObject's `init` on a freshly allocated object.
        unsafe { msg_send![super(this), init] }
    }
}
