//! The post loop: the engine's outputs → each route's post-processing
//! (track ids, images) → telemetry → fan-out, and the answer to a waiting
//! push. One task, so route state (tracks) needs no lock.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::{engine_status, Reply};
use crate::engine::{EngineError, EngineOutput, Frame};
use crate::events::{error_event, is_error};
use crate::fanout::FanOut;
use crate::proto;
use crate::routes::{self, stage, AnyRoutePost, PostOptions, PostWork, RouteId, RouteOutput};
use crate::telemetry::Telemetry;

pub(super) async fn post_loop(
    mut outputs: mpsc::UnboundedReceiver<EngineOutput<Reply>>,
    fanout: FanOut<proto::Event>,
    telemetry: Arc<Telemetry>,
    options: PostOptions,
) {
    let mut posts = routes::posts(&options);
    while let Some(out) = outputs.recv().await {
        let mut events = Vec::with_capacity(out.results.len());
        let mut first_error = None;
        for (route, result) in &out.results {
            let name = route.name();
            let event = match result {
                Ok(output) => {
                    let post = posts
                        .iter_mut()
                        .find(|(id, _)| id == route)
                        .map(|(_, p)| p)
                        .expect("every route has its post-processing");
                    let started = Instant::now();
                    let event = post_one(
                        post.as_mut(),
                        &out.frame,
                        output,
                        out.dropped_before,
                        started,
                    )
                    .await;
                    for (stage, d) in &output.timings {
                        telemetry.record(&format!("{name}.{stage}"), *d);
                    }
                    telemetry.record(&format!("{name}.{}", stage::POST), started.elapsed());
                    event
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.clone());
                    error_event(&out.frame, route.to_proto(), &engine_status(e))
                }
            };
            if out.dropped_before > 0 {
                telemetry.record_dropped(&format!("{name}.gate"), out.dropped_before);
            }
            let t = Instant::now();
            fanout.publish(event.clone(), fanout_class(*route));
            telemetry.record(&format!("{name}.{}", stage::FANOUT), t.elapsed());
            telemetry.record(
                &format!("{name}.{}", stage::END_TO_END),
                out.frame.received.elapsed(),
            );
            events.push(event);
        }
        if let Some(reply) = out.waiter {
            // A waiting push fails only when none of its routes succeeded.
            let answer = match first_error {
                Some(e) if events.iter().all(is_error) => Err(e),
                _ => Ok(events),
            };
            let _ = reply.send(answer);
        }
    }
}

/// One result's event; heavy encoding runs on a blocking thread (events
/// stay in order: this task waits for it).
async fn post_one(
    post: &mut dyn AnyRoutePost,
    frame: &Arc<Frame>,
    output: &RouteOutput,
    dropped: u64,
    started: Instant,
) -> proto::Event {
    match post.event(frame, output, dropped, started) {
        PostWork::Done(event) => *event,
        PostWork::OffThread(work) => {
            tokio::task::spawn_blocking(work)
                .await
                .unwrap_or_else(|panic| {
                    let e = EngineError::Panic {
                        route: output.id,
                        frame: frame.id,
                        message: format!("making its event: {panic}"),
                    };
                    error_event(frame, output.id.to_proto(), &engine_status(&e))
                })
        }
    }
}

/// A route's class in the fan-out (drops are counted per route).
pub(super) fn fanout_class(route: RouteId) -> usize {
    usize::try_from(route.to_proto() as i32).unwrap_or(0)
}

/// The route of a fan-out class, if it is one.
pub(super) fn class_route(class: usize) -> Option<RouteId> {
    RouteId::from_proto(i32::try_from(class).ok()?)
}
