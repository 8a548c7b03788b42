//! The latest-wins gate between threads.
//!
//! Why a gate and not a queue: an input device must show the newest frame,
//! not work through a backlog. A frame still waiting when a newer one arrives
//! is replaced and counted as dropped; the count rides on the next frame
//! taken. Frames whose sender waits for an answer are never replaced: they
//! wait in a short FIFO of their own, and when that is full the sender is
//! told so at once.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

use super::EngineError;

/// What a gate holds: frames, before or after their CPU preparation.
pub(super) trait Queued {
    /// Whose sender waits for an answer: never replaced, only refused.
    fn waits_for_reply(&self) -> bool;
    /// Frames an earlier gate replaced before this one.
    fn drops_carried(&self) -> u64 {
        0
    }
    /// Answers a waiting sender with why its frame went no further.
    fn refuse(self, err: EngineError);
}

struct Pending<T> {
    latest: Option<T>,
    dropped: u64,
    waiting: VecDeque<T>,
    closed: bool,
}

pub(super) struct Gate<T> {
    pending: Mutex<Pending<T>>,
    wake: Condvar,
    max_waiting: usize,
}

impl<T: Queued> Gate<T> {
    pub(super) fn new(max_waiting: usize) -> Self {
        Gate {
            pending: Mutex::new(Pending {
                latest: None,
                dropped: 0,
                waiting: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            max_waiting,
        }
    }

    /// A refused job comes back with the reason (boxed: a job is large).
    pub(super) fn offer(&self, job: T) -> Result<(), Box<(T, EngineError)>> {
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

    /// Offers `job`; a refused one answers its waiting sender.
    pub(super) fn offer_or_refuse(&self, job: T) {
        if let Err(refused) = self.offer(job) {
            let (job, err) = *refused;
            job.refuse(err);
        }
    }

    /// The next job (waiting ones first) and the drops before it; `None`
    /// once closed and drained.
    pub(super) fn take(&self) -> Option<(T, u64)> {
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

    /// Nothing waits in the gate.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        let p = self.pending.lock().expect("gate lock");
        p.latest.is_none() && p.waiting.is_empty()
    }

    pub(super) fn close(&self) {
        self.pending.lock().expect("gate lock").closed = true;
        self.wake.notify_all();
    }
}
