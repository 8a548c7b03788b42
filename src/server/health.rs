//! `grpc.health.v1.Health`, as grpc_health_probe, grpcurl and Kubernetes use
//! it: `Check` answers at once (NOT_FOUND for a service nobody registered),
//! `Watch` sends the current status and every change.
//!
//! Our own rather than tonic-health's reporter because a daemon that stops
//! must end every stream: on shutdown each status turns NOT_SERVING, and
//! each Watch sends that, then ends with UNAVAILABLE ("reconnect"). A Watch
//! that never ends would hold the shutdown to its full deadline.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::shutdown::{goodbye, Shutdown, Tasks};

/// Sets the statuses the service reports. Cheap to clone.
#[derive(Clone)]
pub struct HealthReporter {
    statuses: watch::Sender<BTreeMap<String, ServingStatus>>,
    /// Set by [`HealthReporter::all_not_serving`]; read and written only
    /// inside the channel's closures, which hold its lock, so no `set`
    /// can slip a SERVING in after the shutdown's NOT_SERVING.
    stopping: Arc<AtomicBool>,
}

impl HealthReporter {
    pub fn set(&self, service: &str, status: ServingStatus) {
        self.statuses.send_if_modified(|all| {
            let status = if self.stopping.load(Ordering::Relaxed) {
                ServingStatus::NotServing
            } else {
                status
            };
            all.insert(service.to_owned(), status) != Some(status)
        });
    }

    /// Every registered service NOT_SERVING at once, and from now on (the
    /// first step of a shutdown: load balancers and probes stop sending
    /// work).
    pub fn all_not_serving(&self) {
        self.statuses.send_modify(|all| {
            self.stopping.store(true, Ordering::Relaxed);
            for s in all.values_mut() {
                *s = ServingStatus::NotServing;
            }
        });
    }
}

pub struct HealthService {
    statuses: watch::Receiver<BTreeMap<String, ServingStatus>>,
    shutdown: Shutdown,
    tasks: Tasks,
}

/// The reporter and the service it feeds; Watch streams end on `shutdown`.
pub fn health_service(
    shutdown: Shutdown,
    tasks: Tasks,
) -> (HealthReporter, HealthServer<HealthService>) {
    let (tx, rx) = watch::channel(BTreeMap::new());
    let service = HealthService {
        statuses: rx,
        shutdown,
        tasks,
    };
    let reporter = HealthReporter {
        statuses: tx,
        stopping: Arc::new(AtomicBool::new(false)),
    };
    (reporter, HealthServer::new(service))
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.statuses.borrow().get(&service) {
            Some(&s) => Ok(Response::new(response(s))),
            None => Err(Status::not_found(format!(
                "no health status for service {service:?}"
            ))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let service = request.into_inner().service;
        let mut statuses = self.statuses.clone();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(4);
        self.tasks.spawn(async move {
            let mut last = None;
            loop {
                let now = statuses
                    .borrow_and_update()
                    .get(&service)
                    .copied()
                    .unwrap_or(ServingStatus::ServiceUnknown);
                if last != Some(now) {
                    last = Some(now);
                    if tx.send(Ok(response(now))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = statuses.changed() => if changed.is_err() { break },
                    _ = shutdown.wait() => break,
                    _ = tx.closed() => return,
                }
            }
            if last != Some(ServingStatus::NotServing) {
                let _ = tx.try_send(Ok(response(ServingStatus::NotServing)));
            }
            goodbye(&tx).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_turns_serving_after_the_shutdown_began() {
        let (tx, rx) = watch::channel(BTreeMap::new());
        let reporter = HealthReporter {
            statuses: tx,
            stopping: Arc::new(AtomicBool::new(false)),
        };
        reporter.set("posed.v1.Posed", ServingStatus::Serving);
        assert_eq!(rx.borrow()["posed.v1.Posed"], ServingStatus::Serving);
        reporter.all_not_serving();
        // A readiness update that raced the shutdown.
        reporter.set("posed.v1.Posed", ServingStatus::Serving);
        reporter.set("hands", ServingStatus::Serving);
        assert!(rx
            .borrow()
            .values()
            .all(|s| *s == ServingStatus::NotServing));
    }
}
