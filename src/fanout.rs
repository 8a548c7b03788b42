//! One producer, many subscribers, and nobody waits for anybody.
//!
//! Events go into a bounded ring shared by all subscribers (tokio's
//! broadcast channel): publishing never blocks and never allocates per
//! subscriber. A subscriber that falls more than the ring's capacity behind
//! loses its oldest events, learns how many with the next event it gets, and
//! costs the others nothing. A subscriber that goes away just drops its
//! receiver.

use std::sync::Arc;

use tokio::sync::broadcast;

pub struct FanOut<T> {
    tx: broadcast::Sender<Arc<T>>,
}

impl<T> Clone for FanOut<T> {
    fn clone(&self) -> Self {
        FanOut {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> FanOut<T> {
    /// `capacity`: how many events a subscriber may fall behind before it
    /// starts losing the oldest.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        FanOut { tx }
    }

    /// Hands `event` to every current subscriber; returns how many there are.
    pub fn publish(&self, event: T) -> usize {
        self.tx.send(Arc::new(event)).unwrap_or(0)
    }

    pub fn subscribe(&self) -> Subscription<T> {
        Subscription {
            rx: self.tx.subscribe(),
            lost: 0,
        }
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

pub struct Subscription<T> {
    rx: broadcast::Receiver<Arc<T>>,
    lost: u64,
}

impl<T: Send + Sync + 'static> Subscription<T> {
    /// The next event and how many this subscriber lost just before it;
    /// `None` once the producer is gone.
    pub async fn next(&mut self) -> Option<(Arc<T>, u64)> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some((event, std::mem::take(&mut self.lost))),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lost += n,
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
                while let Some((e, lost)) = r.next().await {
                    assert_eq!(lost, 0);
                    got.push(*e);
                }
                got
            }));
        }
        // Publishing never waits, whoever reads or not; keep each step
        // inside the readers' window so only the stalled one falls behind.
        for i in 0..200u64 {
            assert_eq!(fan.publish(i), 33);
            if i % 8 == 7 {
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        drop(fan);
        for t in tasks {
            assert_eq!(t.await.unwrap(), (0..200).collect::<Vec<_>>());
        }
        // The stalled one wakes up to the last 16 events and is told it lost 184.
        let (first, lost) = stalled.next().await.unwrap();
        assert_eq!((*first, lost), (184, 184));
        let mut rest = 0;
        while let Some((_, lost)) = stalled.next().await {
            assert_eq!(lost, 0);
            rest += 1;
        }
        assert_eq!(rest, 15);
    }
}
