//! Files published as GitHub release assets (CorridorKey's MLX weights),
//! kept in posed's cache under `github/<owner>/<repo>/<tag>/`.
//!
//! A release has no content-addressed ETag like the hub, so the checks are
//! the asset's `.sha256` sidecar (published beside it) and the hash the
//! manifest pins; both must agree before a byte is downloaded, and the
//! download must match them before it is used. Interrupted downloads
//! resume from a `.part` file with range requests.

use std::path::{Path, PathBuf};

use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use super::hub::{error_chain, DownloadProgress, HubError, HubOptions};
use super::manifest::ManifestFile;

/// Where a release asset lives in posed's cache.
pub fn cache_path(options: &HubOptions, file: &ManifestFile) -> PathBuf {
    options
        .posed_cache
        .join("github")
        .join(&file.repo)
        .join(&file.revision)
        .join(&file.path)
}

/// The sidecar's copy beside the cached asset.
pub fn sidecar_path(asset: &Path) -> PathBuf {
    let mut name = asset.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    asset.with_file_name(name)
}

/// The asset's download URL under `endpoint` (https://github.com).
pub fn url(endpoint: &str, file: &ManifestFile) -> String {
    format!(
        "{}/{}/releases/download/{}/{}",
        endpoint.trim_end_matches('/'),
        file.repo,
        file.revision,
        file.path
    )
}

/// The hash a `.sha256` file states: its first word, 64 hex digits
/// (`shasum -a 256` writes "<hash>  <name>").
pub fn parse_sidecar(text: &str) -> Option<String> {
    let word = text.split_whitespace().next()?;
    (word.len() == 64 && word.bytes().all(|c| c.is_ascii_hexdigit()))
        .then(|| word.to_ascii_lowercase())
}

pub async fn fetch(
    options: &HubOptions,
    file: &ManifestFile,
    progress: DownloadProgress,
) -> Result<PathBuf, HubError> {
    let dest = cache_path(options, file);
    if dest.is_file() && file.size.is_none_or(|s| file_len(&dest) == Some(s)) {
        return Ok(dest);
    }
    if options.offline {
        return Err(HubError::OfflineMiss {
            file: file.label(),
            cache: options.posed_cache.display().to_string(),
            route: file.route.clone(),
        });
    }
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e| HubError::Io(p, e)
    };
    let parent = dest.parent().expect("a cache path has a parent");
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(io(parent))?;
    let client = reqwest::Client::builder()
        .user_agent(concat!("posed/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| download_error(file, 1, &e))?;
    let asset_url = url(&options.github_endpoint, file);

    // 1. What the file must hash to.
    let expected = expected_sha256(&client, &asset_url, file).await?;

    // 2. The bytes, resumed across attempts.
    let part = dest.with_extension("part");
    let attempts = options.attempts.max(1);
    let mut delay = options.retry_delay;
    let mut attempt = 1;
    loop {
        match download(&client, &asset_url, &part, progress.clone()).await {
            Ok(()) => break,
            Err(e) if attempt < attempts => {
                tracing::warn!(file = %file.label(), attempt, "download interrupted, resuming: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(download_error(file, attempt, &*e)),
        }
    }

    // 3. The checks, then the file takes its name.
    let hashed = {
        let part = part.clone();
        tokio::task::spawn_blocking(move || sha256_file(&part))
            .await
            .expect("hashing does not panic")
    };
    let actual = hashed.map_err(io(&part))?;
    let size = file_len(&part).unwrap_or(0);
    let failed = |what, expected: String, actual: String| {
        let _ = std::fs::remove_file(&part);
        HubError::Mismatch {
            file: file.label(),
            what,
            expected,
            actual,
        }
    };
    if let Some(want) = file.size.filter(|&s| s != size) {
        return Err(failed("size", want.to_string(), size.to_string()));
    }
    if actual != expected {
        return Err(failed("sha256", expected, actual));
    }
    tokio::fs::write(sidecar_path(&dest), format!("{expected}  {}\n", file.path))
        .await
        .map_err(io(&dest))?;
    tokio::fs::rename(&part, &dest).await.map_err(io(&dest))?;
    Ok(dest)
}

/// The sidecar's hash, checked against the manifest's pin when there is one.
async fn expected_sha256(
    client: &reqwest::Client,
    asset_url: &str,
    file: &ManifestFile,
) -> Result<String, HubError> {
    let sidecar_url = format!("{asset_url}.sha256");
    let text = async {
        client
            .get(&sidecar_url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }
    .await
    .map_err(|e| HubError::Download {
        file: format!("{} (sha256 sidecar)", file.label()),
        attempts: 1,
        reason: error_chain(&e),
    })?;
    let stated = parse_sidecar(&text).ok_or_else(|| HubError::Download {
        file: format!("{} (sha256 sidecar)", file.label()),
        attempts: 1,
        reason: format!(
            "{sidecar_url} does not start with a sha256: {:?}",
            first_line(&text)
        ),
    })?;
    if let Some(pinned) = &file.sha256 {
        if !pinned.eq_ignore_ascii_case(&stated) {
            return Err(HubError::Mismatch {
                file: file.label(),
                what: "sha256 (the release's sidecar against the manifest)",
                expected: pinned.clone(),
                actual: stated,
            });
        }
    }
    Ok(stated)
}

/// Appends the rest of `url` to `part` (a range request when part of it is
/// there already).
async fn download(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    mut progress: DownloadProgress,
) -> Result<(), BoxError> {
    use hf_hub::api::tokio::Progress as _;
    let have = file_len(part).unwrap_or(0);
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().await?.error_for_status()?;
    // A server that ignores the range sends everything again.
    let resumed = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    let start = if resumed { have } else { 0 };
    let total = start + resp.content_length().unwrap_or(0);
    let name = part
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    progress.init(total as usize, &name).await;
    progress.update(start as usize).await;
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .await?;
    // Whatever arrived stays in the part file for the next attempt: tokio
    // writes in the background, so flush before reporting a cut.
    let received = async {
        while let Some(chunk) = resp.chunk().await? {
            out.write_all(&chunk).await?;
            progress.update(chunk.len()).await;
        }
        Ok::<(), BoxError>(())
    }
    .await;
    out.flush().await?;
    received?;
    progress.finish().await;
    Ok(())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").get(..80).unwrap_or(text)
}

fn download_error(file: &ManifestFile, attempts: u32, e: &dyn std::error::Error) -> HubError {
    HubError::Download {
        file: file.label(),
        attempts,
        reason: error_chain(e),
    }
}
