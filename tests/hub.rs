//! Downloads against a local stand-in for the Hugging Face hub: a real HTTP
//! server on loopback that answers `resolve` URLs the way the hub does
//! (relative redirects for renamed repos, a 302 to a CDN on another host
//! carrying X-Repo-Commit / X-Linked-Etag / X-Linked-Size, range requests
//! on the CDN), and that can cut a connection or corrupt a file on demand.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Response, StatusCode};
use posed::weights::hub::{self, DownloadProgress, Hub, HubError, HubOptions};
use posed::weights::manifest::{self, ManifestFile};
use sha2::Digest as _;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
/// Files under this size are plain git objects on the hub, not LFS.
const SMALL_FILE: usize = 10_000;

#[derive(Default)]
struct MockState {
    port: u16,
    files: HashMap<String, Vec<u8>>,
    /// Cut the next CDN response once it has sent this byte offset.
    cut_at: Option<usize>,
    /// Flip a byte of what the CDN serves (the ETag stays the true hash).
    corrupt: bool,
    /// (path, range) of every request.
    requests: Vec<(String, String)>,
}

type Shared = Arc<Mutex<MockState>>;

fn git_blob_sha1(b: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    h.finalize().iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

async fn resolve(
    State(state): State<Shared>,
    Path((org, name, rev, path)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    let mut s = state.lock().unwrap();
    s.requests.push((
        format!("/{org}/{name}/resolve/{rev}/{path}"),
        range_of(&headers),
    ));
    if org == "old-org" {
        // A renamed repo: the hub answers with a relative redirect.
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(
                header::LOCATION,
                format!("/posed-test/{name}/resolve/{rev}/{path}"),
            )
            .body(Body::empty())
            .unwrap();
    }
    let key = format!("{org}/{name}/{path}");
    let Some(data) = s.files.get(&key) else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("x-error-code", "EntryNotFound")
            .body(Body::empty())
            .unwrap();
    };
    if data.len() < SMALL_FILE {
        // Small files live in git: the hub serves them itself, with the git
        // blob hash as ETag.
        let data = data.clone();
        let etag = git_blob_sha1(&data);
        let range = range_of(&headers);
        return serve_bytes(
            &mut s,
            data,
            &range,
            &[
                ("x-repo-commit", COMMIT.into()),
                ("etag", format!("\"{etag}\"")),
            ],
        );
    }
    let sha = sha256_hex(data);
    // LFS/Xet files: a 302 to the CDN (another host name, so clients that
    // follow relative redirects only stop here and read these headers).
    Response::builder()
        .status(StatusCode::FOUND)
        .header("x-repo-commit", COMMIT)
        .header("x-linked-etag", format!("\"{sha}\""))
        .header("x-linked-size", data.len().to_string())
        .header("etag", "W/\"git-object-id\"")
        .header(
            header::LOCATION,
            format!("http://localhost:{}/cdn/{key}", s.port),
        )
        .body(Body::empty())
        .unwrap()
}

fn range_of(headers: &HeaderMap) -> String {
    headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn cdn(
    State(state): State<Shared>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let mut s = state.lock().unwrap();
    let range = range_of(&headers);
    s.requests.push((format!("/cdn/{key}"), range.clone()));
    let data = s.files[&key].clone();
    serve_bytes(&mut s, data, &range, &[])
}

/// A GitHub release asset (and its `.sha256` sidecar), with range requests.
async fn release_asset(
    State(state): State<Shared>,
    Path((owner, repo, tag, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    let mut s = state.lock().unwrap();
    let range = range_of(&headers);
    let key = format!("gh/{owner}/{repo}/{tag}/{name}");
    s.requests.push((key.clone(), range.clone()));
    match s.files.get(&key).cloned() {
        Some(data) if name.ends_with(".sha256") => Response::new(Body::from(data)),
        Some(data) if s.cut_at.is_some() && range.is_empty() => {
            // Send the bytes before the cut, let them reach the client, then
            // drop the connection.
            let cut = s.cut_at.take().unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let total = data.len();
            tokio::spawn(async move {
                let _ = tx.send(Ok::<_, std::io::Error>(data[..cut].to_vec())).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = tx
                    .send(Err(std::io::Error::other("connection cut by the test")))
                    .await;
            });
            Response::builder()
                .header(header::CONTENT_LENGTH, total.to_string())
                .body(Body::from_stream(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .unwrap()
        }
        Some(data) => serve_bytes(&mut s, data, &range, &[]),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from("Not Found"))
            .unwrap(),
    }
}

/// `data` (or the asked range of it), cut or corrupted if the test says so.
fn serve_bytes(
    s: &mut MockState,
    mut data: Vec<u8>,
    range: &str,
    extra: &[(&str, String)],
) -> Response<Body> {
    if s.corrupt {
        data[0] ^= 0xff;
    }
    let total = data.len();
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => {
            let a: usize = a.parse().unwrap();
            let b: usize = b.parse::<usize>().unwrap_or(total - 1).min(total - 1);
            (a, b)
        }
        None => (0, total - 1),
    };
    let body = data[start..=end].to_vec();
    let mut builder = Response::builder()
        .status(if range.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::PARTIAL_CONTENT
        })
        .header(header::CONTENT_LENGTH, body.len().to_string())
        .header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{total}"),
        );
    for (k, v) in extra {
        builder = builder.header(*k, v);
    }
    match s.cut_at.take() {
        Some(cut) if (start..=end).contains(&cut) => {
            // Send the bytes before `cut`, then drop the connection.
            let sent = body[..cut - start].to_vec();
            let stream = tokio_stream::iter(vec![
                Ok::<_, std::io::Error>(sent),
                Err(std::io::Error::other("connection cut by the test")),
            ]);
            builder.body(Body::from_stream(stream)).unwrap()
        }
        other => {
            s.cut_at = other;
            builder.body(Body::from(body)).unwrap()
        }
    }
}

struct MockHub {
    state: Shared,
    endpoint: String,
}

impl MockHub {
    async fn start(files: &[(&str, Vec<u8>)]) -> MockHub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(MockState {
            port,
            files: files
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        }));
        let app = axum::Router::new()
            .route(
                "/{org}/{name}/resolve/{rev}/{*path}",
                axum::routing::get(resolve),
            )
            .route("/cdn/{*key}", axum::routing::get(cdn))
            .route(
                "/{owner}/{repo}/releases/download/{tag}/{name}",
                axum::routing::get(release_asset),
            )
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        MockHub {
            state,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    fn options(&self, cache: &std::path::Path) -> HubOptions {
        HubOptions {
            cache_dir: cache.to_owned(),
            endpoint: self.endpoint.clone(),
            github_endpoint: self.endpoint.clone(),
            posed_cache: cache.join("posed"),
            offline: false,
            token: None,
            chunk_size: 64 * 1024,
            attempts: 1,
            retry_delay: Duration::from_millis(10),
        }
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn file(repo: &str, path: &str) -> ManifestFile {
    let mut m = manifest::parse(&format!(
        "route = \"hands\"\n[[file]]\nrole = \"pose\"\nrepo = \"{repo}\"\npath = \"{path}\"\n"
    ))
    .unwrap();
    m.files.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_download_follows_redirects_reports_progress_and_verifies() {
    let data = payload(300_000, 1);
    let mock = MockHub::start(&[("posed-test/hands/weights.safetensors", data.clone())]).await;
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(mock.options(cache.path())).unwrap();
    // The manifest names the repo's old name: the hub redirects (relative).
    let f = file("old-org/hands", "weights.safetensors");
    let progress = DownloadProgress::default();
    let counts = progress.counts();
    let path = hub.fetch(&f, progress).await.unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(path.starts_with(
        cache
            .path()
            .join("models--old-org--hands/snapshots")
            .join(COMMIT)
    ));
    let blob = std::fs::canonicalize(&path).unwrap();
    assert_eq!(
        blob.file_name().unwrap().to_str().unwrap(),
        sha256_hex(&data)
    );
    assert_eq!(
        std::fs::read_to_string(cache.path().join("models--old-org--hands/refs/main")).unwrap(),
        COMMIT
    );
    assert_eq!(counts.total.load(Ordering::Relaxed), 300_000);
    assert_eq!(counts.done.load(Ordering::Relaxed), 300_000);
    assert_eq!(counts.finished.load(Ordering::Relaxed), 1);
    let v = hub::verify(&path, &f).unwrap();
    assert_eq!(v.checks, ["etag sha256"]);
    // 300 000 bytes in 64 KiB range requests: 5 of them, after the probe.
    let ranged: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|(p, r)| p.starts_with("/cdn/") && r != "bytes=0-0")
        .collect();
    assert_eq!(ranged.len(), 5, "{ranged:?}");

    // A second fetch is a cache hit: no request at all.
    let before = mock.requests().len();
    assert_eq!(
        hub.fetch(&f, DownloadProgress::default()).await.unwrap(),
        path
    );
    assert_eq!(mock.requests().len(), before);
}

// hf-hub fetches the chunks of a file as tasks that take turns on a
// semaphore; on one thread they run strictly in order, which makes the cut
// land in a known chunk.
#[tokio::test]
async fn a_cut_connection_resumes_where_it_stopped() {
    let data = payload(300_000, 2);
    let mock = MockHub::start(&[("posed-test/hands/w.safetensors", data.clone())]).await;
    let cache = tempfile::tempdir().unwrap();
    let f = file("posed-test/hands", "w.safetensors");
    // Cut inside the last of five 64 KiB chunks; with one attempt the fetch fails.
    mock.state.lock().unwrap().cut_at = Some(280_000);
    let hub = Hub::new(mock.options(cache.path())).unwrap();
    let err = hub
        .fetch(&f, DownloadProgress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Download { .. }), "{err}");
    assert!(hub.cached(&f).is_none());

    // The next fetch asks only for what is missing: the last chunk.
    let seen = mock.requests().len();
    let progress = DownloadProgress::default();
    let counts = progress.counts();
    let path = hub.fetch(&f, progress).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let ranges: Vec<String> = mock.requests()[seen..]
        .iter()
        .filter(|(p, r)| p.starts_with("/cdn/") && r != "bytes=0-0")
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(ranges, ["bytes=262144-300000"]);
    // Progress counts the kept bytes too.
    assert_eq!(counts.done.load(Ordering::Relaxed), 300_000);

    // With retries, one fetch rides over a cut by itself.
    let other = tempfile::tempdir().unwrap();
    mock.state.lock().unwrap().cut_at = Some(10_000);
    let hub = Hub::new(HubOptions {
        attempts: 3,
        ..mock.options(other.path())
    })
    .unwrap();
    let path = hub.fetch(&f, DownloadProgress::default()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_mismatch_is_rejected_and_removed() {
    let data = payload(100_000, 3);
    let mock = MockHub::start(&[("posed-test/hands/w.safetensors", data.clone())]).await;
    let cache = tempfile::tempdir().unwrap();
    let f = file("posed-test/hands", "w.safetensors");
    mock.state.lock().unwrap().corrupt = true;
    let hub = Hub::new(mock.options(cache.path())).unwrap();
    let err = hub
        .fetch(&f, DownloadProgress::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("sha256 (hub ETag) mismatch"), "{msg}");
    assert!(msg.contains(&sha256_hex(&data)), "{msg}");
    assert!(
        hub.cached(&f).is_none(),
        "the bad file must not stay in the cache"
    );
    let blobs = cache.path().join("models--posed-test--hands/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A manifest sha256 that disagrees is rejected too.
    mock.state.lock().unwrap().corrupt = false;
    let mut pinned = f.clone();
    pinned.sha256 = Some("00".repeat(32));
    let err = hub
        .fetch(&pinned, DownloadProgress::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_uses_the_cache_and_names_what_is_missing() {
    let data = payload(50_000, 4);
    let mock = MockHub::start(&[("posed-test/hands/w.safetensors", data.clone())]).await;
    let cache = tempfile::tempdir().unwrap();
    let f = file("posed-test/hands", "w.safetensors");
    let online = Hub::new(mock.options(cache.path())).unwrap();
    let path = online.fetch(&f, DownloadProgress::default()).await.unwrap();

    let before = mock.requests().len();
    let offline = Hub::new(HubOptions {
        offline: true,
        ..mock.options(cache.path())
    })
    .unwrap();
    assert_eq!(
        offline
            .fetch(&f, DownloadProgress::default())
            .await
            .unwrap(),
        path
    );

    let missing = file("posed-test/hands", "other.safetensors");
    let err = offline
        .fetch(&missing, DownloadProgress::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("posed-test/hands/other.safetensors@main"),
        "{msg}"
    );
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    assert!(msg.contains("posed weights fetch --route hands"), "{msg}");
    assert_eq!(
        mock.requests().len(),
        before,
        "offline must not touch the network"
    );
}

/// `posed weights fetch` end to end against the stand-in hub: a whole route
/// (detector, int4 pose model, MANO pickle, its mean parameters as a small
/// git file), MANO converted, then `weights verify` hashes everything and
/// loads it through the real loaders, and `weights list` works offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_fetch_verify_and_list_a_whole_route() {
    let dir = tempfile::tempdir().unwrap();
    let posed = |args: &[&str], env: Vec<(&'static str, String)>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_posed"));
        c.args(args).envs(env);
        c
    };
    let synth = dir.path().join("synth");
    let mut c = posed(
        &[
            "weights",
            "synth",
            "--size",
            "full",
            "--variant",
            "int4",
            "--out",
            synth.to_str().unwrap(),
        ],
        vec![],
    );
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/data");
    let read = |p: std::path::PathBuf| std::fs::read(p).unwrap();
    let mock = MockHub::start(&[
        (
            "BasinShapers/wilor-mlx/hand-detector.safetensors",
            read(synth.join("detector_weights.safetensors")),
        ),
        (
            "BasinShapers/wilor-mlx/wilor-mlx-int4.safetensors",
            read(synth.join("wilor_weights.safetensors")),
        ),
        (
            "warmshao/WiLoR-mini/pretrained_models/MANO_RIGHT.pkl",
            read(data.join("mano_right_like.pkl")),
        ),
        (
            "warmshao/WiLoR-mini/pretrained_models/mano_mean_params.npz",
            read(data.join("mano_mean_params_like.npz")),
        ),
    ])
    .await;
    let env = vec![
        ("HF_ENDPOINT", mock.endpoint.clone()),
        ("HF_HUB_CACHE", dir.path().join("hub").display().to_string()),
        (
            "POSED_CACHE_DIR",
            dir.path().join("posed").display().to_string(),
        ),
    ];
    let run = |args: &'static [&'static str], env: Vec<(&'static str, String)>| {
        let mut c = posed(args, env);
        async move {
            let out = tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }
    };
    let (ok, text) = run(
        &["weights", "fetch", "--route", "hands", "--variant", "int4"],
        env.clone(),
    )
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("mano.npz (converted)"), "{text}");
    assert_eq!(text.matches("/snapshots/").count(), 4, "{text}");

    let (ok, text) = run(&["weights", "verify", "--route", "hands"], env.clone()).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("ok       hands int4: the detector, WiLoR and MANO load"),
        "{text}"
    );
    assert_eq!(text.matches("checked: etag sha256").count(), 3, "{text}");
    assert_eq!(text.matches("checked: etag git-sha1").count(), 1, "{text}");
    assert!(
        text.contains("missing  BasinShapers/wilor-mlx/wilor-mlx.safetensors@main"),
        "{text}"
    );

    let mut offline = env.clone();
    offline.push(("HF_HUB_OFFLINE", "1".into()));
    let before = mock.requests().len();
    let (ok, text) = run(&["weights", "list"], offline.clone()).await;
    assert!(ok, "{text}");
    assert_eq!(text.matches(" cached ").count(), 4, "{text}");
    let (ok, text) = run(
        &["weights", "fetch", "--route", "hands", "--variant", "f32"],
        offline,
    )
    .await;
    assert!(!ok);
    assert!(
        text.contains("wilor-mlx.safetensors@main is not in the Hugging Face cache"),
        "{text}"
    );
    assert_eq!(mock.requests().len(), before);
}

/// `posed weights fetch --route body` against the stand-in hub: the person
/// detector as mmdet's `.pth` (written in torch.save's format from random
/// RTMDet-m weights in the published layout) and a pose safetensors; the
/// checkpoint is converted once into posed's cache and the conversion
/// loads as RTMDet-m. The pose file served is the small fixture network, so
/// `weights verify` must fail on it and name the mismatch (the full-size
/// 0.4b layout itself is checked in posed-models' body tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_fetch_converts_the_person_detector_checkpoint() {
    use posed_models::rtmdet::{Rtmdet, RtmdetConfig};
    let dir = tempfile::tempdir().unwrap();
    let layout =
        posed_models::random_weights::layout_of(|w| Rtmdet::new(RtmdetConfig::m(), w).map(drop))
            .unwrap();
    let mut tensors: Vec<(String, mlx_rs::Array)> =
        posed_models::random_weights::random_tensors(&layout, 3)
            .unwrap()
            .into_iter()
            .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let pth = dir.path().join("rtmdet_m.pth");
    posed_models::torch_checkpoint::write_state_dict(&pth, &tensors).unwrap();
    let fixture_pose =
        posed_models::parity::fixtures_dir().join("body/sapiens2_pose_weights.safetensors");
    let mock = MockHub::start(&[
        (
            "facebook/sapiens-pose-bbox-detector/rtmdet_m_8xb32-100e_coco-obj365-person-235e8209.pth",
            std::fs::read(&pth).unwrap(),
        ),
        (
            "facebook/sapiens2-pose-0.4b/sapiens2_0.4b_pose.safetensors",
            std::fs::read(fixture_pose).unwrap(),
        ),
    ])
    .await;
    let env = vec![
        ("HF_ENDPOINT", mock.endpoint.clone()),
        ("HF_HUB_CACHE", dir.path().join("hub").display().to_string()),
        (
            "POSED_CACHE_DIR",
            dir.path().join("posed").display().to_string(),
        ),
    ];
    let run = |args: &'static [&'static str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_posed"));
        c.args(args).envs(env.clone());
        async move {
            let out = tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }
    };
    let (ok, text) = run(&["weights", "fetch", "--route", "body"]).await;
    assert!(ok, "{text}");
    assert!(text.contains("person detector (converted)"), "{text}");
    let converted: Vec<_> = std::fs::read_dir(dir.path().join("posed/rtmdet"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(converted.len(), 1);
    let w = posed_models::checked_weights::Weights::from_file(&converted[0]).unwrap();
    Rtmdet::new(RtmdetConfig::m(), &w).unwrap();
    w.finish()
        .expect("the converted checkpoint is exactly RTMDet-m");

    let (ok, text) = run(&["weights", "verify", "--route", "body"]).await;
    assert!(!ok, "{text}");
    assert!(text.contains("FAILED   body 0.4b"), "{text}");
    assert!(text.contains("mis-shaped"), "{text}");
    assert!(
        text.contains("missing  facebook/sapiens2-pose-1b/sapiens2_1b_pose.safetensors@main"),
        "{text}"
    );
}

fn release_file(sha256: Option<&str>) -> ManifestFile {
    let pin = sha256.map_or(String::new(), |h| format!("sha256 = \"{h}\"\n"));
    let mut m = manifest::parse(&format!(
        "route = \"matte\"\n[[file]]\nrole = \"matte\"\nsource = \"github-release\"\nrepo = \"owner/keyer\"\nrevision = \"v1.0.0\"\npath = \"keyer.safetensors\"\n{pin}"
    ))
    .unwrap();
    m.files.remove(0)
}

/// A GitHub release asset: the sidecar is read and checked against the
/// manifest's pin first, the download resumes after a cut connection with
/// a range request, the result is checked against the sidecar, lands in
/// posed's cache with the sidecar beside it, and later fetches (also
/// offline) use the cache. A sidecar that disagrees with the pin stops the
/// fetch before any download; a corrupted download is refused and removed.
#[tokio::test]
async fn release_assets_are_checked_against_their_sidecar() {
    let data = payload(200_000, 9);
    let hash = sha256_hex(&data);
    let sidecar = format!("{hash}  keyer.safetensors\n").into_bytes();
    let mock = MockHub::start(&[
        ("gh/owner/keyer/v1.0.0/keyer.safetensors", data.clone()),
        ("gh/owner/keyer/v1.0.0/keyer.safetensors.sha256", sidecar),
    ])
    .await;
    let cache = tempfile::tempdir().unwrap();
    let mut options = mock.options(cache.path());
    options.attempts = 3;
    mock.state.lock().unwrap().cut_at = Some(70_000);
    let hub = Hub::new(options.clone()).unwrap();
    let f = release_file(Some(&hash));
    assert!(hub.cached(&f).is_none());
    let path = hub.fetch(&f, DownloadProgress::default()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(path.starts_with(cache.path().join("posed/github/owner/keyer/v1.0.0")));
    let ranges: Vec<String> = mock
        .requests()
        .into_iter()
        .filter(|(p, _)| p.ends_with("keyer.safetensors"))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(ranges, ["", "bytes=70000-"], "one cut, one resume");
    let v = hub::verify(&path, &f).unwrap();
    assert_eq!(v.checks, ["manifest sha256", "sidecar sha256"]);
    assert_eq!(hub.cached(&f), Some(path.clone()));

    // Cached: no request, even offline.
    let before = mock.requests().len();
    options.offline = true;
    let offline = Hub::new(options.clone()).unwrap();
    assert_eq!(
        offline
            .fetch(&f, DownloadProgress::default())
            .await
            .unwrap(),
        path
    );
    assert_eq!(mock.requests().len(), before);
    options.offline = false;

    // The release's sidecar disagrees with the pinned hash: nothing is
    // downloaded.
    let fresh = tempfile::tempdir().unwrap();
    let hub = Hub::new(mock.options(fresh.path())).unwrap();
    let before = mock.requests().len();
    let err = hub
        .fetch(
            &release_file(Some(&"0".repeat(64))),
            DownloadProgress::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("sidecar"), "{err}");
    let asked: Vec<_> = mock.requests()[before..]
        .iter()
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(asked, ["gh/owner/keyer/v1.0.0/keyer.safetensors.sha256"]);

    // What arrives does not hash to the sidecar's value: refused, removed.
    mock.state.lock().unwrap().corrupt = true;
    let err = hub
        .fetch(&release_file(None), DownloadProgress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::Mismatch { what: "sha256", .. }),
        "{err}"
    );
    let dir = fresh.path().join("posed/github/owner/keyer/v1.0.0");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
