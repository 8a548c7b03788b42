//! The service manager's readiness protocol (`sd_notify`), sent so that it
//! can never block the daemon: `sd_notify::notify` writes to a blocking
//! socket, and when the manager stops reading (a full queue) the tokio
//! worker that pings the watchdog would hang there, and with it shutdown.
//! Here a full queue drops a watchdog ping ([`notify`]), while the state
//! changes that matter (READY, STOPPING) are retried asynchronously until
//! the manager reads again ([`notify_until_delivered`]): a READY lost to a
//! queue full of pings would leave the service "activating" forever.

use std::os::unix::net::UnixDatagram;

use sd_notify::NotifyState;

/// Sends `states` to `$NOTIFY_SOCKET`, if set; errors (no listener, a full
/// queue) are logged at debug level and otherwise ignored.
pub fn notify(states: &[NotifyState]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    if let Err(e) = send(&path, message.as_bytes()) {
        tracing::debug!("notify socket {}: {e}", path.to_string_lossy());
    }
}

/// Sends `states`, retrying while the manager's queue is full, for up to
/// `patience`; other errors end it at once (logged at debug level).
pub async fn notify_until_delivered(states: &[NotifyState<'_>], patience: std::time::Duration) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let until = std::time::Instant::now() + patience;
    loop {
        match send(&path, message.as_bytes()) {
            Ok(()) => return,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < until =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => {
                tracing::debug!("notify socket {}: {e}", path.to_string_lossy());
                return;
            }
        }
    }
}

fn send(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
    // A leading '@' names a socket in Linux's abstract namespace.
    #[cfg(target_os = "linux")]
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message, &addr)?;
        return Ok(());
    }
    let _ = bytes;
    socket.send_to(message, path)?;
    Ok(())
}
