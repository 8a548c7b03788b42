//! The Unix socket's file. Like PostgreSQL's socket lock: a lock file
//! beside the socket (`<socket>.lock`, holding the pid) is locked while the
//! daemon lives, so a second daemon names the first instead of stealing its
//! socket; an existing file is removed only when it is a socket nobody
//! answers on (left by a daemon that was killed). The lock file itself
//! is never removed: a daemon that opened it just before another removed it
//! would lock a file no third daemon sees, and two would serve.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another posed is serving on {path} (pid {pid})")]
    AnotherPosed { path: PathBuf, pid: String },
    #[error("another process answers on {path}; not replacing its socket")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; not removing it")]
    NotASocket { path: PathBuf },
    #[error("cannot listen on unix:{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The bound socket: removed (if it is still ours) and the lock released
/// on drop.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// The socket's device and inode, so that drop never removes a file
    /// that replaced it.
    id: (u64, u64),
    /// Locked while this value lives (the lock ends with the process too).
    lock: File,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if file_id(&self.path).is_some_and(|id| id == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
        // Emptied, not removed (see the module's note); the lock goes with
        // the descriptor.
        let _ = self.lock.set_len(0);
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// An exclusive, non-blocking `flock` on the lock file; the kernel drops
/// it when the process exits, however it exits. (`File::try_lock` does the
/// same but needs Rust 1.89; our MSRV is 1.85.)
fn try_lock(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own, no pointers involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The lock file of a socket path: `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Binds `path` with permission bits `mode`, unless another daemon or
/// process serves on it.
pub fn bind(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), SocketError> {
    let io = |source| SocketError::Io {
        path: path.to_owned(),
        source,
    };
    let lock_path = lock_path(path);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io)?;
    if let Err(e) = try_lock(&lock) {
        return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
            SocketError::AnotherPosed {
                path: path.to_owned(),
                pid: read_pid(&mut lock),
            }
        } else {
            io(e)
        });
    }
    // The pid first, so that a second daemon never names a dead one.
    lock.set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| writeln!(lock, "{}", std::process::id()))
        .map_err(io)?;
    remove_stale(path)?;
    // Bound in a private (0700) folder beside the path, given its mode, then
    // renamed into place: nobody can connect while it has the umask's
    // permissions.
    let staging = staging_dir(path);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io)?;
    let staged = staging.join("s");
    let placed = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, Permissions::from_mode(mode))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&staging);
    let listener = placed.map_err(io)?;
    let id = file_id(path).ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            id,
            lock,
        },
    ))
}

fn staging_dir(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.new", std::process::id()));
    PathBuf::from(name)
}

/// The pid the lock's holder wrote, or "unknown" while it has not yet.
fn read_pid(lock: &mut File) -> String {
    let mut text = String::new();
    // A pid is a few bytes; a larger file is not ours to print.
    let _ = lock.take(32).read_to_string(&mut text);
    match text.trim().parse::<u32>() {
        Ok(pid) => pid.to_string(),
        Err(_) => "unknown".into(),
    }
}

/// Removes what is at `path` only if it is a socket nobody answers on.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_owned(),
        }),
        // Refused: a socket file nobody listens on. Anything else (no
        // permission to connect, say) does not prove it is dead.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| SocketError::Io {
                path: path.to_owned(),
                source,
            }),
        Err(source) => Err(SocketError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_bind_names_the_first_daemon_and_leaves_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posed.sock");
        let (_listener, file) = bind(&path, 0o600).unwrap();
        let e = bind(&path, 0o600).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "another posed is serving on {} (pid {})",
                path.display(),
                std::process::id()
            )
        );
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(file);
        assert!(!path.exists());
        assert_eq!(std::fs::read(lock_path(&path)).unwrap(), b"");
        // Nothing is left beside the socket but its lock file.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![lock_path(&path).file_name().unwrap().to_owned()]
        );
    }

    #[tokio::test]
    async fn the_socket_has_the_configured_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posed.sock");
        let (_listener, _file) = bind(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (_l, _f) = bind(&dir.path().join("group.sock"), 0o660).unwrap();
        let mode = std::fs::metadata(dir.path().join("group.sock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);
    }

    #[tokio::test]
    async fn a_file_that_replaced_the_socket_outlives_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posed.sock");
        let (_listener, file) = bind(&path, 0o600).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
    }

    #[tokio::test]
    async fn a_regular_file_at_the_path_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posed.sock");
        std::fs::write(&path, "notes").unwrap();
        let e = bind(&path, 0o600).unwrap_err();
        assert!(matches!(e, SocketError::NotASocket { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "notes");
    }

    #[tokio::test]
    async fn a_socket_another_process_answers_on_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posed.sock");
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = bind(&path, 0o600).unwrap_err();
        assert!(matches!(e, SocketError::InUse { .. }), "{e}");
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    }

    #[tokio::test]
    async fn a_dead_daemons_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posed.sock");
        // Bound, then closed without removing the file: what SIGKILL leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (_listener, _file) = bind(&path, 0o600).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    }
}
