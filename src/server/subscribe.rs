//! `Subscribe`: one stream of events per client, filtered, rate-limited and
//! optionally smoothed; a slow client loses its own oldest events only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{EventStream, Shared};
use crate::events::without_heavy_fields;
use crate::proto;
use crate::routes::RouteId;
use crate::smoothing::Smoother;

pub(super) fn subscribe(
    shared: &Arc<Shared>,
    req: proto::SubscribeRequest,
) -> Result<EventStream, Status> {
    for &r in &req.routes {
        if RouteId::from_proto(r).is_none() {
            return Err(Status::invalid_argument(format!("unknown route {r}")));
        }
    }
    if !(req.max_rate_hz >= 0.0 && req.max_rate_hz.is_finite()) {
        return Err(Status::invalid_argument(
            "max_rate_hz must be a finite number ≥ 0",
        ));
    }
    let mut subscription = shared.fanout.subscribe();
    let shutdown = shared.shutdown.clone();
    let telemetry = shared.telemetry.clone();
    let (tx, rx) = mpsc::channel(4);
    let min_gap = (req.max_rate_hz > 0.0)
        .then(|| Duration::try_from_secs_f32(1.0 / req.max_rate_hz).ok())
        .flatten();
    let options = &shared.options;
    let mut smoother = req
        .smoothing
        .unwrap_or(options.smoothing_by_default)
        .then(|| Smoother::new(options.smoothing));
    let image_interest = req
        .include_matte_images
        .then(|| Interest::register(&shared.matte_image_subscribers));
    shared.tasks.spawn(async move {
        let _image_interest = image_interest;
        let mut last_sent: HashMap<(i32, String), Instant> = HashMap::new();
        let mut lost_here = 0u64;
        loop {
            let next = tokio::select! {
                next = subscription.next() => next,
                _ = shutdown.wait() => {
                    super::shutdown::goodbye(&tx).await;
                    None
                }
                _ = tx.closed() => None,
            };
            let Some((event, lost)) = next else { break };
            if lost > 0 {
                telemetry.record_dropped("subscriber", lost);
            }
            lost_here += lost;
            if !req.routes.is_empty() && !req.routes.contains(&event.route) {
                continue;
            }
            if !req.source_ids.is_empty() && !req.source_ids.contains(&event.source_id) {
                continue;
            }
            if let Some(gap) = min_gap {
                let key = (event.route, event.source_id.clone());
                let now = Instant::now();
                if last_sent
                    .get(&key)
                    .is_some_and(|t| now.duration_since(*t) < gap)
                {
                    continue;
                }
                last_sent.insert(key, now);
            }
            let mut out =
                without_heavy_fields(&event, req.include_vertices, req.include_matte_images);
            if let Some(s) = &mut smoother {
                s.apply(&mut out);
            }
            out.dropped_for_subscriber = std::mem::take(&mut lost_here);
            if tx.send(Ok(out)).await.is_err() {
                break;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// One subscriber's interest in matte images, counted while it lives.
struct Interest(Arc<AtomicUsize>);

impl Interest {
    fn register(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Interest(count.clone())
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
