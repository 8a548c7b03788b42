//! `Subscribe`: one stream of events per client, filtered, rate-limited and
//! optionally smoothed; a slow client loses its own oldest events only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::{EventStream, Shared};
use crate::events::without_heavy_fields;
use crate::proto;
use crate::routes::{stage, RouteId};
use crate::smoothing::Smoother;

/// The most routes and sources one subscription may name.
const MAX_FILTER_ENTRIES: usize = 64;

/// Initial metadata naming the requested sources that have not sent a
/// frame yet: pushes may bring them later, so the stream waits for them.
pub const WAITING_FOR_SOURCES: &str = "posed-waiting-for-sources";

pub(super) fn subscribe(
    shared: &Arc<Shared>,
    req: proto::SubscribeRequest,
) -> Result<Response<EventStream>, Status> {
    check_routes(&req.routes, &shared.facts.routes)?;
    let waiting = check_sources(&req.source_ids, &shared.source_names(), |id| {
        shared.push_sources.contains(id)
    })?;
    let min_gap = event_gap(req.max_rate_hz)?;
    let mut subscription = shared.fanout.subscribe();
    let shutdown = shared.shutdown.clone();
    let telemetry = shared.telemetry.clone();
    let (tx, rx) = mpsc::channel(4);
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
            let Some(received) = next else { break };
            // Counted against the routes the lost events belonged to.
            for (class, &n) in received.lost.iter().enumerate() {
                if let (true, Some(route)) = (n > 0, super::post::class_route(class)) {
                    telemetry.record_dropped(&format!("{route}.{}", stage::FANOUT), n);
                }
            }
            lost_here += received.lost_total();
            let event = received.event();
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
                // At most MAX_RATE_KEYS entries whatever the number of
                // sources: expired ones go first, then the oldest (whose
                // source may then get its next event a little early).
                if !last_sent.contains_key(&key) && last_sent.len() >= MAX_RATE_KEYS {
                    last_sent.retain(|_, t| now.duration_since(*t) < gap);
                    if last_sent.len() >= MAX_RATE_KEYS {
                        let oldest = last_sent
                            .iter()
                            .min_by_key(|(_, t)| **t)
                            .map(|(k, _)| k.clone());
                        if let Some(k) = oldest {
                            last_sent.remove(&k);
                        }
                    }
                }
                last_sent.insert(key, now);
            }
            let mut out =
                without_heavy_fields(event, req.include_vertices, req.include_matte_images);
            if let Some(s) = &mut smoother {
                s.apply(&mut out);
            }
            out.dropped_for_subscriber = std::mem::take(&mut lost_here);
            if tx.send(Ok(out)).await.is_err() {
                break;
            }
        }
    });
    let stream: EventStream = Box::pin(ReceiverStream::new(rx));
    let mut response = Response::new(stream);
    if !waiting.is_empty() {
        // Names were checked: no control characters, so a valid header
        // unless non-ASCII, which is then left out of the note.
        if let Ok(v) = waiting.join(",").parse() {
            response.metadata_mut().insert(WAITING_FOR_SOURCES, v);
        }
    }
    Ok(response)
}

/// Rate-limit entries a subscriber keeps at most (one per route and source).
const MAX_RATE_KEYS: usize = 256;

/// Every named route must be known and enabled here.
fn check_routes(routes: &[i32], enabled: &[RouteId]) -> Result<(), Status> {
    if routes.len() > MAX_FILTER_ENTRIES {
        return Err(Status::invalid_argument(format!(
            "{} routes named: at most {MAX_FILTER_ENTRIES}",
            routes.len()
        )));
    }
    for &r in routes {
        let Some(id) = RouteId::from_proto(r) else {
            return Err(Status::invalid_argument(format!("unknown route {r}")));
        };
        if !enabled.contains(&id) {
            return Err(Status::failed_precondition(format!(
                "route {id} is not enabled on this daemon ([{id}] enabled = false)"
            )));
        }
    }
    Ok(())
}

/// Checks the named sources; returns those that have not sent a frame yet
/// (pushes may bring them). The daemon's own sources that are not running
/// here (camera, replay) never will: NOT_FOUND.
fn check_sources(
    ids: &[String],
    running: &[&str],
    seen: impl Fn(&str) -> bool,
) -> Result<Vec<String>, Status> {
    if ids.len() > MAX_FILTER_ENTRIES {
        return Err(Status::invalid_argument(format!(
            "{} source_ids named: at most {MAX_FILTER_ENTRIES}",
            ids.len()
        )));
    }
    let mut waiting = Vec::new();
    for id in ids {
        if id.is_empty()
            || id.len() > super::MAX_SOURCE_ID_BYTES
            || id.chars().any(char::is_control)
        {
            return Err(Status::invalid_argument(format!(
                "source_id {id:?}: 1 to {} bytes, no control characters",
                super::MAX_SOURCE_ID_BYTES
            )));
        }
        if running.contains(&id.as_str()) || seen(id) {
            continue;
        }
        if super::BUILT_IN_SOURCES.contains(&id.as_str()) {
            return Err(Status::not_found(format!(
                "source {id:?} is not running on this daemon ([{id}] is not configured)"
            )));
        }
        waiting.push(id.clone());
    }
    Ok(waiting)
}

/// The slowest rate cap a subscriber may ask for: one event per ~17 min.
const MIN_RATE_HZ: f32 = 0.001;

/// The shortest time between two events of a route and source for a
/// `max_rate_hz` cap; `None` for 0 (no cap).
fn event_gap(max_rate_hz: f32) -> Result<Option<Duration>, Status> {
    if max_rate_hz == 0.0 {
        return Ok(None);
    }
    let bad = || {
        Status::invalid_argument(format!(
            "max_rate_hz is {max_rate_hz}: 0 (no cap) or a rate from {MIN_RATE_HZ} Hz"
        ))
    };
    if !(max_rate_hz >= MIN_RATE_HZ && max_rate_hz.is_finite()) {
        return Err(bad());
    }
    Duration::try_from_secs_f64(1.0 / f64::from(max_rate_hz))
        .map(Some)
        .map_err(|_| bad())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_name_routes_that_run_here() {
        let hands = proto::Route::Hands as i32;
        let body = proto::Route::Body as i32;
        assert!(check_routes(&[hands], &[RouteId::Hands]).is_ok());
        let s = check_routes(&[body], &[RouteId::Hands]).unwrap_err();
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(s.message().contains("not enabled"), "{}", s.message());
        let s = check_routes(&[99], &[RouteId::Hands]).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        let s = check_routes(&vec![hands; 65], &[RouteId::Hands]).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn sources_that_cannot_appear_are_not_found_and_the_rest_wait() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let seen = |id: &str| id == "ipad";
        let waiting = check_sources(&ids(&["camera", "ipad", "later"]), &["camera"], seen);
        assert_eq!(waiting.unwrap(), vec!["later".to_string()]);
        for (id, code) in [
            ("camera", tonic::Code::NotFound),
            ("replay", tonic::Code::NotFound),
            ("", tonic::Code::InvalidArgument),
            ("a\tb", tonic::Code::InvalidArgument),
        ] {
            let s = check_sources(&ids(&[id]), &[], seen).unwrap_err();
            assert_eq!(s.code(), code, "{id:?}");
        }
        let many = vec!["s".to_string(); 65];
        assert!(check_sources(&many, &[], seen).is_err());
    }

    #[test]
    fn rate_caps_are_checked_before_they_become_durations() {
        assert_eq!(event_gap(0.0).unwrap(), None);
        assert_eq!(event_gap(4.0).unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(event_gap(0.5).unwrap(), Some(Duration::from_secs(2)));
        let slowest = event_gap(0.001).unwrap().unwrap();
        assert!(slowest.abs_diff(Duration::from_secs(1000)) < Duration::from_millis(1));
        assert!(event_gap(f32::MAX).unwrap().unwrap() < Duration::from_nanos(1));
        for bad in [
            1e-30,
            f32::MIN_POSITIVE,
            -0.5,
            -0.0001,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            let s = event_gap(bad).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
