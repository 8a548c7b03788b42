//! One producer, many subscribers, and nobody waits for anybody.
//!
//! Events go into a bounded ring shared by all subscribers (tokio's
//! broadcast channel): publishing never blocks and never allocates per
//! subscriber. A subscriber that falls more than the ring's capacity behind
//! loses its oldest events, learns how many with the next event it gets, and
//! costs the others nothing. A subscriber that goes away just drops its
//! receiver.
//!
//! Each event belongs to a class (the daemon's: its route), and carries how
//! many events of each class were published up to it: a subscriber that
//! lost events learns how many of each class, so the drops are counted
//! against the route they belonged to.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Classes an event may belong to (larger ones share the last).
pub const CLASSES: usize = 8;

/// Events lost by one subscriber, by class.
pub type Lost = [u64; CLASSES];

struct Published<T> {
    event: T,
    class: usize,
    /// Events of each class published up to and including this one.
    totals: Lost,
}

pub struct FanOut<T> {
    tx: broadcast::Sender<Arc<Published<T>>>,
    totals: Arc<Mutex<Lost>>,
}

impl<T> Clone for FanOut<T> {
    fn clone(&self) -> Self {
        FanOut {
            tx: self.tx.clone(),
            totals: self.totals.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> FanOut<T> {
    /// `capacity`: how many events a subscriber may fall behind before it
    /// starts losing the oldest.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        FanOut {
            tx,
            totals: Arc::default(),
        }
    }

    /// Hands `event` of `class` to every current subscriber; returns how
    /// many there are.
    pub fn publish(&self, event: T, class: usize) -> usize {
        let class = class.min(CLASSES - 1);
        // The lock orders the totals as the ring orders the events.
        let mut totals = self.totals.lock().expect("fan-out totals lock");
        totals[class] += 1;
        let published = Published {
            event,
            class,
            totals: *totals,
        };
        self.tx.send(Arc::new(published)).unwrap_or(0)
    }

    pub fn subscribe(&self) -> Subscription<T> {
        let totals = self.totals.lock().expect("fan-out totals lock");
        // Subscribed under the lock: every event after `seen` reaches it.
        Subscription {
            rx: self.tx.subscribe(),
            seen: *totals,
        }
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

pub struct Subscription<T> {
    rx: broadcast::Receiver<Arc<Published<T>>>,
    /// The totals of the last event received (or at subscription).
    seen: Lost,
}

/// An event as a subscriber gets it.
pub struct Received<T> {
    published: Arc<Published<T>>,
    /// Events this subscriber lost just before this one, by class.
    pub lost: Lost,
}

impl<T> Received<T> {
    pub fn event(&self) -> &T {
        &self.published.event
    }

    pub fn lost_total(&self) -> u64 {
        self.lost.iter().sum()
    }
}

impl<T: Send + Sync + 'static> Subscription<T> {
    /// The next event and what this subscriber lost just before it; `None`
    /// once the producer is gone.
    pub async fn next(&mut self) -> Option<Received<T>> {
        loop {
            match self.rx.recv().await {
                Ok(published) => {
                    let mut lost = [0; CLASSES];
                    for (c, l) in lost.iter_mut().enumerate() {
                        let new = published.totals[c].saturating_sub(self.seen[c]);
                        *l = new.saturating_sub(u64::from(c == published.class));
                    }
                    self.seen = published.totals;
                    return Some(Received { published, lost });
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stalled_subscriber_loses_only_its_own_events() {
        let fan = FanOut::<u64>::new(16);
        let mut readers: Vec<_> = (0..32).map(|_| fan.subscribe()).collect();
        let mut stalled = fan.subscribe();
        assert_eq!(fan.subscribers(), 33);

        let mut tasks = Vec::new();
        for mut r in readers.drain(..) {
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(r) = r.next().await {
                    assert_eq!(r.lost_total(), 0);
                    got.push(*r.event());
                }
                got
            }));
        }
        // Publishing never waits, whoever reads or not; keep each step
        // inside the readers' window so only the stalled one falls behind.
        for i in 0..200u64 {
            assert_eq!(fan.publish(i, (i % 2) as usize), 33);
            if i % 8 == 7 {
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        drop(fan);
        for t in tasks {
            assert_eq!(t.await.unwrap(), (0..200).collect::<Vec<_>>());
        }
        // The stalled one wakes up to the last 16 events and is told it
        // lost 184: 92 of each class.
        let first = stalled.next().await.unwrap();
        assert_eq!((*first.event(), first.lost_total()), (184, 184));
        assert_eq!(first.lost[..3], [92, 92, 0]);
        let mut rest = 0;
        while let Some(r) = stalled.next().await {
            assert_eq!(r.lost_total(), 0);
            rest += 1;
        }
        assert_eq!(rest, 15);
    }
}
