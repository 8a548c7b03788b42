//! A streaming node and its mmap'd buffers, torn down without panicking
//! even when the device is already gone.

use std::io;
use std::ptr::NonNull;

use super::sys::{Filled, Node};

/// One driver buffer mapped read-only into our memory.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value alone;
// nothing about it is tied to the thread that created it.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(node: &Node, offset: u32, length: u32) -> io::Result<Mapping> {
        let len = usize::try_from(length).map_err(io::Error::other)?;
        let offset = libc::off_t::from(offset);
        if len == 0 {
            return Err(io::Error::other("driver gave a buffer of length 0"));
        }
        // SAFETY: a fresh mapping (null hint) of `len` bytes at the offset
        // the driver gave for this buffer; it aliases nothing of ours.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                node.raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mapping { ptr, len })
    }

    /// The first `used` bytes (at most the whole buffer).
    ///
    /// Call only while the buffer is dequeued: once queued, the driver
    /// writes into it.
    fn bytes(&self, used: usize) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is mapped readable for as long as `self`
        // lives and the slice borrows `self`; the caller holds the buffer
        // dequeued, so the driver does not write it meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), used.min(self.len)) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `new` mapped, once; no slice of
        // it outlives `self`.
        let result = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if result != 0 {
            let e = io::Error::last_os_error();
            tracing::debug!("v4l2: munmap failed: {e}");
        }
    }
}

/// A node streaming into mmap'd buffers. Dropping it stops the stream,
/// unmaps the buffers and closes the node, ignoring errors (a device that
/// was unplugged fails all three).
#[derive(Debug)]
pub(super) struct Stream {
    // Unmapped before the node closes (fields drop in order): a live
    // mapping keeps the device's file, and so the camera, open.
    buffers: Vec<Mapping>,
    node: Node,
    streaming: bool,
}

impl Stream {
    /// Maps `count` buffers (the driver may make more or fewer), queues
    /// them all and starts streaming.
    pub fn start(node: Node, count: u32) -> io::Result<Stream> {
        let made = node.request_buffers(count)?;
        if made == 0 {
            return Err(io::Error::other("driver made no buffers"));
        }
        let mut stream = Stream {
            buffers: Vec::new(),
            node,
            streaming: false,
        };
        for index in 0..made {
            let place = stream.node.query_buffer(index)?;
            let mapping = Mapping::new(&stream.node, place.offset, place.length)?;
            stream.buffers.push(mapping);
            stream.node.queue(index)?;
        }
        stream.node.stream_on()?;
        stream.streaming = true;
        Ok(stream)
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn buffer_count(&self) -> usize {
        self.buffers.len()
    }

    /// The oldest filled buffer, if one is ready.
    pub fn dequeue(&self) -> io::Result<Option<Filled>> {
        let Some(filled) = self.node.dequeue()? else {
            return Ok(None);
        };
        let known = usize::try_from(filled.index).is_ok_and(|i| i < self.buffers.len());
        if !known {
            return Err(io::Error::other(format!(
                "driver returned buffer {} of {}",
                filled.index,
                self.buffers.len()
            )));
        }
        Ok(Some(filled))
    }

    /// Hands a buffer back to the driver to fill.
    pub fn queue(&self, filled: &Filled) -> io::Result<()> {
        self.node.queue(filled.index)
    }

    /// The bytes of a dequeued buffer: `bytesused` of them.
    pub fn bytes(&self, filled: &Filled) -> &[u8] {
        let mapping = usize::try_from(filled.index)
            .ok()
            .and_then(|i| self.buffers.get(i));
        let used = usize::try_from(filled.bytes_used).unwrap_or(usize::MAX);
        mapping.map_or(&[], |m| m.bytes(used))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.streaming {
            if let Err(e) = self.node.stream_off() {
                tracing::debug!("v4l2: STREAMOFF failed (device gone?): {e}");
            }
        }
    }
}
