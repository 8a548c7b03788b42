//! Published files from the Hugging Face hub, in the standard hub cache.
//!
//! hf-hub does the download: the `resolve` URL, the hub's redirects, chunked
//! range requests, and a `.sync.part` file that remembers how much arrived so
//! an interrupted download resumes. Around it this module adds what a daemon
//! needs: the cache location and `HF_HUB_OFFLINE` with the hub's own
//! meanings, retries that resume, and a check of every file against its
//! ETag (the hub names blobs by the sha256 of LFS/Xet files and the git hash
//! of small ones) and the manifest's size and sha256. A file that fails the
//! check is removed, never used.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hf_hub::api::tokio::{Api, ApiBuilder, Progress};
use hf_hub::{Cache, Repo, RepoType};
use sha1::Digest as _;

use super::manifest::ManifestFile;

#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache (`models--org--name/{blobs,refs,snapshots}` inside).
    pub cache_dir: PathBuf,
    pub endpoint: String,
    /// Where GitHub release assets come from (`POSED_GITHUB_ENDPOINT`, for
    /// mirrors).
    pub github_endpoint: String,
    /// posed's own cache (GitHub release assets, conversions).
    pub posed_cache: PathBuf,
    /// No network: only what is in the cache.
    pub offline: bool,
    pub token: Option<String>,
    /// Bytes per range request; a resumed download restarts at a chunk edge.
    pub chunk_size: usize,
    /// Download attempts per file; each one resumes where the last stopped.
    pub attempts: u32,
    /// Wait before the second attempt (doubles each time).
    pub retry_delay: Duration,
}

impl HubOptions {
    /// The hub's environment: `HF_HUB_CACHE`, `HF_HOME`, `HF_ENDPOINT`,
    /// `HF_HUB_OFFLINE`, `HF_TOKEN`.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        HubOptions {
            cache_dir: cache_dir(&var),
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            github_endpoint: var("POSED_GITHUB_ENDPOINT")
                .unwrap_or_else(|| "https://github.com".into()),
            posed_cache: super::resolve::posed_cache_dir(),
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v)),
            token: var("HF_TOKEN"),
            chunk_size: 16 << 20,
            attempts: 5,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (the
/// same on macOS), as huggingface_hub resolves it.
fn cache_dir(var: &impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(p) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return p.into();
    }
    let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
        var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(var("HOME").unwrap_or_default()).join(".cache"))
            .join("huggingface")
    });
    home.join("hub")
}

/// huggingface_hub's truth values for `HF_HUB_OFFLINE`.
fn is_true(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "yes" | "true"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{file} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: run `posed weights fetch --route {route}` where the network is reachable, or unset HF_HUB_OFFLINE")]
    OfflineMiss {
        file: String,
        cache: String,
        route: String,
    },
    #[error("downloading {file} failed after {attempts} attempt(s): {reason}")]
    Download {
        file: String,
        attempts: u32,
        reason: String,
    },
    #[error("{file}: {what} mismatch (expected {expected}, the file has {actual}); the file was removed: fetch it again")]
    Mismatch {
        file: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// What a check of a cached file found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub size: u64,
    pub sha256: String,
    /// How the content was checked: "etag sha256", "etag git-sha1",
    /// "manifest sha256".
    pub checks: Vec<&'static str>,
}

/// A download's progress as hf-hub reports it, with an optional terminal
/// bar; cheap to clone (hf-hub clones it per chunk).
#[derive(Clone, Default)]
pub struct DownloadProgress {
    bar: Option<indicatif::ProgressBar>,
    counts: Arc<ProgressCounts>,
}

#[derive(Default, Debug)]
pub struct ProgressCounts {
    /// The size hf-hub announced (0 until it starts).
    pub total: AtomicU64,
    /// Bytes on disk, including those kept from an earlier attempt.
    pub done: AtomicU64,
    pub finished: AtomicU64,
}

impl DownloadProgress {
    /// A bar on stderr (drawn only when it is a terminal).
    pub fn bar() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:40!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        DownloadProgress {
            bar: Some(bar),
            counts: Arc::default(),
        }
    }

    pub fn counts(&self) -> Arc<ProgressCounts> {
        self.counts.clone()
    }
}

impl Progress for DownloadProgress {
    async fn init(&mut self, size: usize, filename: &str) {
        self.counts.total.store(size as u64, Ordering::Relaxed);
        self.counts.done.store(0, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(size as u64);
            bar.set_position(0);
            bar.set_message(filename.to_owned());
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            tracing::info!(file = filename, bytes = size, "downloading");
        }
    }

    async fn update(&mut self, size: usize) {
        self.counts.done.fetch_add(size as u64, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(size as u64);
        }
    }

    async fn finish(&mut self) {
        self.counts.finished.fetch_add(1, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

pub struct Hub {
    options: HubOptions,
    api: Api,
    cache: Cache,
}

impl Hub {
    pub fn new(options: HubOptions) -> anyhow::Result<Self> {
        let cache = Cache::new(options.cache_dir.clone());
        let api = ApiBuilder::from_cache(cache.clone())
            .with_endpoint(options.endpoint.trim_end_matches('/').to_owned())
            .with_token(options.token.clone())
            .with_chunk_size(Some(options.chunk_size))
            .with_progress(false)
            .with_user_agent("posed", env!("CARGO_PKG_VERSION"))
            .build()?;
        Ok(Hub {
            options,
            api,
            cache,
        })
    }

    pub fn options(&self) -> &HubOptions {
        &self.options
    }

    fn repo(file: &ManifestFile) -> Repo {
        Repo::with_revision(file.repo.clone(), RepoType::Model, file.revision.clone())
    }

    /// The file's path in the cache, if a download of it finished.
    pub fn cached(&self, file: &ManifestFile) -> Option<PathBuf> {
        if file.is_github_release() {
            let p = super::release::cache_path(&self.options, file);
            return p.is_file().then_some(p);
        }
        self.cache.repo(Self::repo(file)).get(&file.path)
    }

    /// The cached file, or (unless offline) a fresh download that passed
    /// its checks.
    pub async fn fetch(
        &self,
        file: &ManifestFile,
        progress: DownloadProgress,
    ) -> Result<PathBuf, HubError> {
        if file.is_github_release() {
            return super::release::fetch(&self.options, file, progress).await;
        }
        if let Some(path) = self.cached(file) {
            // Cheap checks on every start; the hashes are `weights verify`'s.
            if file.size.is_none_or(|s| file_size(&path) == Some(s)) {
                return Ok(path);
            }
        }
        if self.options.offline {
            return Err(HubError::OfflineMiss {
                file: file.label(),
                cache: self.options.cache_dir.display().to_string(),
                route: file.route.clone(),
            });
        }
        let repo = self.api.repo(Self::repo(file));
        let mut delay = self.options.retry_delay;
        let attempts = self.options.attempts.max(1);
        let mut attempt = 1;
        let path = loop {
            match repo
                .download_with_progress(&file.path, progress.clone())
                .await
            {
                Ok(path) => break path,
                Err(e) if attempt < attempts => {
                    tracing::warn!(file = %file.label(), attempt, "download interrupted, resuming: {e}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(HubError::Download {
                        file: file.label(),
                        attempts: attempt,
                        reason: error_chain(&e),
                    })
                }
            }
        };
        let checked = tokio::task::spawn_blocking({
            let (path, file) = (path.clone(), file.clone());
            move || verify(&path, &file)
        })
        .await
        .expect("the verify task does not panic");
        match checked {
            Ok(_) => Ok(path),
            Err(e) => {
                remove_cached(&path);
                Err(e)
            }
        }
    }
}

/// Checks a cached file against its ETag (the blob's name) and the
/// manifest's size and sha256.
pub fn verify(path: &Path, file: &ManifestFile) -> Result<Verified, HubError> {
    let io = |e| HubError::Io(path.display().to_string(), e);
    let blob = std::fs::canonicalize(path).map_err(io)?;
    let etag = blob
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut f = std::fs::File::open(&blob).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mismatch = |what, expected: String, actual: String| HubError::Mismatch {
        file: file.label(),
        what,
        expected,
        actual,
    };
    if let Some(want) = file.size {
        if want != size {
            return Err(mismatch("size", want.to_string(), size.to_string()));
        }
    }
    let mut sha256 = sha2::Sha256::new();
    let mut git = sha1::Sha1::new();
    git.update(format!("blob {size}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
        git.update(&buf[..n]);
    }
    let sha256 = hex(&sha256.finalize());
    let git = hex(&git.finalize());
    let mut checks = Vec::new();
    if is_hex(&etag, 64) {
        if etag != sha256 {
            return Err(mismatch("sha256 (hub ETag)", etag, sha256));
        }
        checks.push("etag sha256");
    } else if is_hex(&etag, 40) {
        if etag != git {
            return Err(mismatch("git hash (hub ETag)", etag, git));
        }
        checks.push("etag git-sha1");
    }
    if let Some(want) = &file.sha256 {
        if !want.eq_ignore_ascii_case(&sha256) {
            return Err(mismatch("sha256", want.clone(), sha256));
        }
        checks.push("manifest sha256");
    }
    let sidecar = super::release::sidecar_path(path);
    if let Ok(text) = std::fs::read_to_string(&sidecar) {
        let stated = super::release::parse_sidecar(&text).unwrap_or_default();
        if stated != sha256 {
            return Err(mismatch("sha256 (release sidecar)", stated, sha256));
        }
        checks.push("sidecar sha256");
    }
    Ok(Verified {
        size,
        sha256,
        checks,
    })
}

/// Removes a snapshot entry and the blob it points to.
pub fn remove_cached(path: &Path) {
    if let Ok(blob) = std::fs::canonicalize(path) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(path);
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// An error and its sources, one line.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_location_and_offline_follow_the_hub_conventions() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let o = HubOptions::from_vars(vars(&[("HOME", "/h")]));
        assert_eq!(o.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        assert!(!o.offline);
        let o = HubOptions::from_vars(vars(&[("HOME", "/h"), ("HF_HOME", "/hf")]));
        assert_eq!(o.cache_dir, PathBuf::from("/hf/hub"));
        let o = HubOptions::from_vars(vars(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]));
        assert_eq!(o.cache_dir, PathBuf::from("/c"));
        let o = HubOptions::from_vars(vars(&[("XDG_CACHE_HOME", "/x")]));
        assert_eq!(o.cache_dir, PathBuf::from("/x/huggingface/hub"));
        for (v, want) in [
            ("1", true),
            ("ON", true),
            ("yes", true),
            ("0", false),
            ("no", false),
        ] {
            let o = HubOptions::from_vars(move |k| (k == "HF_HUB_OFFLINE").then(|| v.to_owned()));
            assert_eq!(o.offline, want, "{v}");
        }
    }
}
