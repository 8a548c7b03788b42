//! One shutdown signal for every task of the server, and the tracker that
//! lets `run` wait for them (after mini-redis's `Shutdown`).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Listens for the server's shutdown. Cloned into every stream task: a
/// task selects on [`Shutdown::wait`] next to its work and ends its stream
/// when it fires.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// Starts the shutdown; every waiter wakes.
    pub fn begin(&self) {
        self.token.cancel();
    }

    pub fn is_shutdown(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the shutdown has begun.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }
}

/// How long a stream's last message may wait for room in a slow client's
/// queue: the shutdown deadline must hold whatever the client does.
const GOODBYE_WAIT: Duration = Duration::from_millis(100);

/// Ends a stream the server's shutdown cut short with UNAVAILABLE, the
/// status gRPC clients take as "reconnect" (an OK end would read as "no
/// more events, ever"). A client whose queue stays full for
/// [`GOODBYE_WAIT`] gets the stream's end without it.
pub async fn goodbye<T>(tx: &mpsc::Sender<Result<T, tonic::Status>>) {
    let status = tonic::Status::unavailable("posed is shutting down; reconnect to resume");
    let _ = tokio::time::timeout(GOODBYE_WAIT, tx.send(Err(status))).await;
}

/// The server's spawned tasks (stream writers, the post loop, sources):
/// `run` closes it and waits for it, so every stream has ended with its
/// status before the process exits.
pub type Tasks = TaskTracker;
