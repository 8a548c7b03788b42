//! One shutdown signal for every task of the server, and the tracker that
//! lets `run` wait for them (after mini-redis's `Shutdown`).

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

/// The server's spawned tasks (stream writers, the post loop, sources):
/// `run` closes it and waits for it, so every stream has ended with its
/// status before the process exits.
pub type Tasks = TaskTracker;
