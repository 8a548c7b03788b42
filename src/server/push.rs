//! `PushImage` and `PushStream`: a client's images through the engine.

use posed_models::camera::Intrinsics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use super::{engine_status, EventStream, Reply, Shared};
use crate::decode::{self, Rgb8};
use crate::engine::{Frame, FrameJob, StreamId};
use crate::events::{unix_ns, without_heavy_fields};
use crate::proto;
use crate::routes::{RequestLimits, RouteId, RouteRequest};

pub(super) async fn push_image(
    shared: &Arc<Shared>,
    req: proto::PushImageRequest,
) -> Result<proto::PushImageReply, Status> {
    if req.wait {
        let events = run_and_wait(shared, req, None).await?;
        return Ok(proto::PushImageReply {
            frame_id: events.first().map_or(0, |e| e.frame_id),
            events,
        });
    }
    let job = frame_job(shared, req, None, None).await?;
    let frame_id = job.frame.id;
    shared.engine.submit(job).map_err(|e| engine_status(&e))?;
    Ok(proto::PushImageReply {
        frame_id,
        events: Vec::new(),
    })
}

pub(super) fn push_stream(
    shared: &Arc<Shared>,
    mut incoming: Streaming<proto::PushImageRequest>,
) -> EventStream {
    let (tx, rx) = mpsc::channel(8);
    // Latest-wins between the reader and the worker: a frame that arrives
    // while another waits replaces it, and the replaced one is answered at
    // once as skipped.
    let slot = Arc::new(PushSlot::default());
    let reader_slot = slot.clone();
    let reader_tx = tx.clone();
    let reader = shared.clone();
    shared.tasks.spawn(async move {
        loop {
            let msg = tokio::select! {
                m = incoming.next() => m,
                _ = reader.shutdown.wait() => {
                    super::shutdown::goodbye(&reader_tx).await;
                    None
                }
            };
            match msg {
                Some(Ok(req)) => {
                    if let Some(old) = reader_slot.put(req) {
                        let skipped = proto::Event {
                            route: first_route(&reader, &old),
                            client_frame_id: old.client_frame_id,
                            source_id: old.source_id,
                            emit_unix_ns: unix_ns(SystemTime::now()),
                            payload: Some(proto::event::Payload::Skipped(proto::Skipped {})),
                            ..Default::default()
                        };
                        if reader_tx.send(Ok(skipped)).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Err(status)) => {
                    let _ = reader_tx.send(Err(status)).await;
                    break;
                }
                None => break,
            }
        }
        reader_slot.finish();
    });
    let worker = shared.clone();
    let stream = StreamId::new();
    shared.tasks.spawn(async move {
        'frames: while let Some(req) = slot.next().await {
            for event in answer(&worker, req, stream).await {
                if tx.send(Ok(event)).await.is_err() {
                    break 'frames;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// One PushStream frame's events: the results, or an error event naming it.
async fn answer(
    shared: &Arc<Shared>,
    req: proto::PushImageRequest,
    stream: StreamId,
) -> Vec<proto::Event> {
    let client_frame_id = req.client_frame_id;
    let source_id = req.source_id.clone();
    let route = first_route(shared, &req);
    run_and_wait(shared, req, Some(stream))
        .await
        .unwrap_or_else(|status| {
            vec![proto::Event {
                client_frame_id,
                source_id,
                route,
                emit_unix_ns: unix_ns(SystemTime::now()),
                payload: Some(proto::event::Payload::Error(proto::EventError {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                })),
                ..Default::default()
            }]
        })
}

/// The routes a push names, checked against the daemon's; empty = all.
fn requested_routes(shared: &Shared, routes: &[i32]) -> Result<Vec<RouteId>, Status> {
    let mut out = Vec::with_capacity(routes.len());
    for &r in routes {
        let Some(id) = RouteId::from_proto(r) else {
            return Err(Status::invalid_argument(format!("unknown route {r}")));
        };
        if !shared.facts.routes.contains(&id) {
            return Err(Status::failed_precondition(format!(
                "route {} is not enabled on this daemon",
                id.to_proto().as_str_name()
            )));
        }
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// A push's image decoded, and what it asks of each of `routes` (checked
/// against the image's size). CPU work: run it on a blocking thread.
pub fn decode_push(
    req: &proto::PushImageRequest,
    image_limits: &decode::ImageLimits,
    request_limits: &RequestLimits,
    routes: &[RouteId],
) -> Result<(Rgb8, Vec<RouteRequest>), Status> {
    let rgb = decode::decode(req.image.as_ref(), image_limits)?;
    let requests = routes
        .iter()
        .map(|id| {
            id.kind()
                .request(req, rgb.width, rgb.height, request_limits)
        })
        .collect::<Result<_, _>>()?;
    Ok((rgb, requests))
}

/// Checks the request, decodes its image (off the async workers) and
/// makes the frame job.
async fn frame_job(
    shared: &Arc<Shared>,
    req: proto::PushImageRequest,
    stream: Option<StreamId>,
    reply: Option<Reply>,
) -> Result<FrameJob<Reply>, Status> {
    let routes = requested_routes(shared, &req.routes)?;
    let source_id = push_source_id(&req.source_id, &shared.source_names())?;
    let received = Instant::now();
    let (image_limits, request_limits) =
        (shared.options.image_limits, shared.options.request_limits);
    let daemon_routes = shared.facts.routes.clone();
    let _decoding = shared
        .decode_permits
        .acquire()
        .await
        .map_err(|_| Status::unavailable("posed is shutting down"))?;
    let (rgb, requests, req) = tokio::task::spawn_blocking(move || {
        let (rgb, requests) = decode_push(&req, &image_limits, &request_limits, &daemon_routes)?;
        Ok::<_, Status>((rgb, requests, req))
    })
    .await
    .map_err(|e| Status::internal(format!("decoder failed: {e}")))??;
    shared.telemetry.record("push.decode", received.elapsed());
    let intrinsics = req
        .intrinsics
        .as_ref()
        .map(|k| Intrinsics::checked(k.fx, k.fy, k.cx, k.cy, rgb.width, rgb.height))
        .transpose()
        .map_err(|e| Status::invalid_argument(format!("intrinsics {e}")))?;
    let captured = capture_time(req.capture_unix_ns, SystemTime::now())?;
    shared.push_sources.heard(&source_id);
    let id = shared.next_frame_id.fetch_add(1, Ordering::Relaxed);
    shared.pushed.fetch_add(1, Ordering::Relaxed);
    let frame = Arc::new(Frame {
        id,
        source_id,
        client_frame_id: req.client_frame_id,
        captured,
        received,
        stream,
        width: rgb.width,
        height: rgb.height,
        rgb: rgb.data,
        intrinsics,
    });
    if let Some(r) = &shared.recorder {
        r.record(&frame);
    }
    Ok(FrameJob {
        frame,
        routes,
        requests,
        waiter: reply,
    })
}

/// The longest `source_id` a push may name (it is kept per source, logged
/// and sent with every event).
pub const MAX_SOURCE_ID_BYTES: usize = 128;

/// The names of the daemon's own sources: a push may not pose as one.
pub const BUILT_IN_SOURCES: [&str; 2] = ["camera", "replay"];

/// A push's source: `push` when empty; not a daemon source's name
/// (`daemon_sources`, and the built-in names whether configured or not),
/// not longer than [`MAX_SOURCE_ID_BYTES`], no control characters.
fn push_source_id(id: &str, daemon_sources: &[&str]) -> Result<String, Status> {
    if id.is_empty() {
        return Ok("push".into());
    }
    if id.len() > MAX_SOURCE_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "source_id is {} bytes: at most {MAX_SOURCE_ID_BYTES}",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "source_id has a control character",
        ));
    }
    if BUILT_IN_SOURCES.contains(&id) || daemon_sources.contains(&id) {
        return Err(Status::permission_denied(format!(
            "source_id {id:?} is the daemon's own source: push under another name"
        )));
    }
    Ok(id.to_owned())
}

/// The push sources heard from lately, newest last; a bounded list, since
/// clients choose the names.
#[derive(Default)]
pub(super) struct RecentSources(std::sync::Mutex<std::collections::VecDeque<String>>);

/// How many push sources [`RecentSources`] remembers.
const RECENT_SOURCES: usize = 256;

impl RecentSources {
    fn heard(&self, id: &str) {
        let mut list = self.0.lock().expect("recent sources lock");
        if list.back().is_some_and(|last| last == id) {
            return;
        }
        list.retain(|s| s != id);
        if list.len() >= RECENT_SOURCES {
            list.pop_front();
        }
        list.push_back(id.to_owned());
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.0
            .lock()
            .expect("recent sources lock")
            .iter()
            .any(|s| s == id)
    }
}

/// How far a pushed capture time may be from the daemon's clock. Clients
/// run on the same machine: a time further off is a bug or a hostile value
/// (it would be recorded, and replay would wait for it).
pub const CAPTURE_TIME_WINDOW: Duration = Duration::from_secs(600);

/// A push's `capture_unix_ns`: 0 = now; otherwise within
/// [`CAPTURE_TIME_WINDOW`] of `now`.
fn capture_time(ns: i64, now: SystemTime) -> Result<SystemTime, Status> {
    if ns == 0 {
        return Ok(now);
    }
    let out_of_window = || {
        Status::invalid_argument(format!(
            "capture_unix_ns {ns} is more than {} s from the daemon's clock (0 = on arrival)",
            CAPTURE_TIME_WINDOW.as_secs()
        ))
    };
    let at = u64::try_from(ns)
        .ok()
        .and_then(|ns| SystemTime::UNIX_EPOCH.checked_add(Duration::from_nanos(ns)))
        .ok_or_else(out_of_window)?;
    let off = at
        .duration_since(now)
        .or_else(|_| now.duration_since(at))
        .unwrap_or(Duration::MAX);
    if off > CAPTURE_TIME_WINDOW {
        return Err(out_of_window());
    }
    Ok(at)
}

/// Submits and waits for the events, one per route (with vertices only if
/// asked).
async fn run_and_wait(
    shared: &Arc<Shared>,
    req: proto::PushImageRequest,
    stream: Option<StreamId>,
) -> Result<Vec<proto::Event>, Status> {
    let (include_vertices, include_matte_images) = (req.include_vertices, req.include_matte_images);
    let (tx, rx) = oneshot::channel();
    let job = frame_job(shared, req, stream, Some(tx)).await?;
    shared.engine.submit(job).map_err(|e| engine_status(&e))?;
    let events = rx
        .await
        .map_err(|_| Status::unavailable("the engine stopped before answering"))?
        .map_err(|e| engine_status(&e))?;
    Ok(events
        .iter()
        .map(|e| without_heavy_fields(e, include_vertices, include_matte_images))
        .collect())
}

/// The route a request's one-line answers (skipped, failed) name.
fn first_route(shared: &Shared, req: &proto::PushImageRequest) -> i32 {
    req.routes
        .first()
        .copied()
        .or_else(|| shared.facts.routes.first().map(|&r| r.to_proto() as i32))
        .unwrap_or(proto::Route::Hands as i32)
}

/// The one frame of a PushStream waiting for the worker.
#[derive(Default)]
struct PushSlot {
    pending: std::sync::Mutex<(Option<proto::PushImageRequest>, bool)>,
    wake: tokio::sync::Notify,
}

impl PushSlot {
    /// Stores `req`; returns the frame it replaced.
    fn put(&self, req: proto::PushImageRequest) -> Option<proto::PushImageRequest> {
        let old = self.pending.lock().expect("slot lock").0.replace(req);
        self.wake.notify_one();
        old
    }

    /// No more frames will come.
    fn finish(&self) {
        self.pending.lock().expect("slot lock").1 = true;
        self.wake.notify_one();
    }

    /// The waiting frame; `None` once finished and empty.
    async fn next(&self) -> Option<proto::PushImageRequest> {
        loop {
            {
                let mut p = self.pending.lock().expect("slot lock");
                if let Some(req) = p.0.take() {
                    return Some(req);
                }
                if p.1 {
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_cannot_pose_as_the_daemons_sources() {
        assert_eq!(push_source_id("", &[]).unwrap(), "push");
        assert_eq!(push_source_id("ipad-1", &["cam2"]).unwrap(), "ipad-1");
        for (id, code) in [
            ("camera", tonic::Code::PermissionDenied),
            ("replay", tonic::Code::PermissionDenied),
            ("cam2", tonic::Code::PermissionDenied),
            ("a\nb", tonic::Code::InvalidArgument),
        ] {
            assert_eq!(
                push_source_id(id, &["cam2"]).unwrap_err().code(),
                code,
                "{id}"
            );
        }
        let long = "x".repeat(MAX_SOURCE_ID_BYTES + 1);
        assert_eq!(
            push_source_id(&long, &[]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(push_source_id(&long[1..], &[]).is_ok());
    }

    #[test]
    fn capture_times_must_be_near_the_daemons_clock() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ns = |t: SystemTime| {
            i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()).unwrap()
        };
        assert_eq!(capture_time(0, now).unwrap(), now);
        let recent = now - Duration::from_millis(40);
        assert_eq!(capture_time(ns(recent), now).unwrap(), recent);
        let soon = now + Duration::from_secs(5);
        assert_eq!(capture_time(ns(soon), now).unwrap(), soon);
        for bad in [
            i64::MAX,
            i64::MIN,
            -1,
            1,
            ns(now - Duration::from_secs(601)),
            ns(now + Duration::from_secs(601)),
        ] {
            let s = capture_time(bad, now).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(
                s.message().contains("from the daemon's clock"),
                "{}",
                s.message()
            );
        }
    }
}
