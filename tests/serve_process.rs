//! `posed serve` as a service manager runs it: configured through the
//! environment, healthy once warm, `/metrics` on loopback, and out within
//! two seconds of SIGTERM with its streams ended cleanly.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use posed::proto::pose_service_client::PoseServiceClient;
use posed::proto::{self, push_image_request::Image};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn models_dir(dir: &std::path::Path) -> PathBuf {
    let src = posed_models::parity::fixtures_dir().join("hands");
    let out = dir.join("models");
    std::fs::create_dir_all(&out).unwrap();
    for f in [
        "detector_weights.safetensors",
        "detector_config.json",
        "wilor_weights.safetensors",
        "wilor_config.json",
        "mano.npz",
    ] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    out
}

/// A channel to the daemon at `grpc` once it listens and health reports
/// `service` SERVING (within 60 s).
async fn serving_channel(grpc: &str, service: &str) -> tonic::transport::Channel {
    let url = format!("http://{grpc}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("daemon never listened: {e}"),
        }
    };
    let mut health = HealthClient::new(channel.clone());
    while health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|s| s.into_inner().status)
        .unwrap_or(0)
        != 1
    {
        assert!(Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    channel
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_reports_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, metrics) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    // Play systemd: a notify socket and a 200 ms watchdog.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_posed"))
        .arg("serve")
        .env("POSED_HANDS_MODELS_DIR", models_dir(dir.path()))
        .env("POSED_SERVER_LISTEN", &grpc)
        .env("POSED_SERVER_METRICS", &metrics)
        .env("POSED_LOG_FORMAT", "json")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let channel = serving_channel(&grpc, "posed.v1.PoseService").await;

    // READY=1 once warm, then watchdog pings.
    let mut messages = Vec::new();
    let mut buf = [0u8; 256];
    let seen = |messages: &Vec<String>, what: &str| messages.iter().any(|m| m.contains(what));
    while !(seen(&messages, "WATCHDOG=1") && seen(&messages, "READY=1")) {
        let n = notify.recv(&mut buf).unwrap();
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = messages.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=serving"), "{messages:?}");

    let mut client = PoseServiceClient::new(channel);
    let mut events = client
        .subscribe(proto::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let raw = proto::RawImage {
        width: 64,
        height: 48,
        data: vec![100; 64 * 48 * 3],
    };
    let reply = client
        .push_image(proto::PushImageRequest {
            image: Some(Image::RawRgb(raw)),
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        events.message().await.unwrap().unwrap().frame_id,
        reply.frame_id
    );

    let text = http_get(&metrics, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("posed_stage_latency_seconds_count{stage=\"hands.pose\"} 1"),
        "{text}"
    );
    let status = client
        .get_status(proto::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.models.len(), 2);
    assert!(status.models.iter().all(|m| m.ready));

    // SIGTERM: the open stream ends and the process exits, well within 2 s.
    let t = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = events.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "stream still open after SIGTERM");
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "still running 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(code.success(), "{code:?}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.iter().all(|l| l.starts_with('{')), "json logs: {log}");
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
}

/// No models folder, an empty hub cache and HF_HUB_OFFLINE: the daemon
/// still answers, health stays NOT_SERVING, and GetStatus names the
/// missing file and the command that fetches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_without_weights_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_posed"))
        .arg("serve")
        .env("POSED_SERVER_LISTEN", &grpc)
        .env("POSED_SERVER_METRICS", "")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", dir.path().join("hub"))
        .env("POSED_CACHE_DIR", dir.path().join("posed"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut client = PoseServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        let status = client
            .get_status(proto::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if let Some(m) = status.models.iter().find(|m| !m.error.is_empty()) {
            break m.error.clone();
        }
        assert!(Instant::now() < deadline, "no load error reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        error.contains("BasinShapers/wilor-mlx/hand-detector.safetensors"),
        "{error}"
    );
    assert!(error.contains("HF_HUB_OFFLINE"), "{error}");
    assert!(
        error.contains("posed weights fetch --route hands"),
        "{error}"
    );
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "posed.v1.PoseService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 2, "NOT_SERVING");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success());
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("not serving")).collect();
    assert_eq!(lines.len(), 1, "{log}");
}

/// A body-only daemon configured through the environment (hand route off,
/// body route on with a models folder): `posed push --route body` prints
/// the people found, and GetStatus lists the body models and the keypoint
/// names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_only_daemon_answers_pushes_from_the_cli() {
    let grpc = format!("127.0.0.1:{}", free_port());
    let body = posed_models::parity::fixtures_dir().join("body");
    let mut child = Command::new(env!("CARGO_BIN_EXE_posed"))
        .arg("serve")
        .env("POSED_HANDS_ENABLED", "false")
        .env("POSED_BODY_ENABLED", "true")
        .env("POSED_BODY_MODELS_DIR", &body)
        .env("POSED_SERVER_LISTEN", &grpc)
        .env("POSED_SERVER_METRICS", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let channel = serving_channel(&grpc, "posed.v1.PoseService/body").await;
    let image = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/replay");
    let image = std::fs::read_dir(image)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let addr = grpc.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_posed"))
            .args(["push", "--addr", &addr, "--route", "body"])
            .arg(&image)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("person(s) ["), "{text}");

    // The hand route is off: asking for it is the client's mistake.
    let mut client = PoseServiceClient::new(channel);
    let err = client
        .push_image(proto::PushImageRequest {
            image: Some(Image::RawRgb(proto::RawImage {
                width: 8,
                height: 8,
                data: vec![0; 8 * 8 * 3],
            })),
            routes: vec![proto::Route::Hands as i32],
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    let status = client
        .get_status(proto::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = status.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["person-detector", "sapiens2-pose-0.4b"]);
    assert!(status.models.iter().all(|m| m.ready));
    assert_eq!(status.body_keypoint_names.len(), 308);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// A matte-only daemon configured through the environment (CorridorKey's
/// fixture network at 128², raw events): `posed push --route matte --hint
/// --matte-out` writes the alpha, foreground and composite PNGs at the
/// pushed image's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matte_only_daemon_writes_pngs_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let matte = posed_models::parity::fixtures_dir().join("matte");
    let mut child = Command::new(env!("CARGO_BIN_EXE_posed"))
        .arg("serve")
        .env("POSED_HANDS_ENABLED", "false")
        .env("POSED_MATTE_ENABLED", "true")
        .env("POSED_MATTE_MODELS_DIR", &matte)
        .env("POSED_MATTE_IMG_SIZE", "128")
        .env("POSED_MATTE_HEAD_DTYPE", "float32")
        .env("POSED_MATTE_ENCODING", "raw")
        .env("POSED_SERVER_LISTEN", &grpc)
        .env("POSED_SERVER_METRICS", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let channel = serving_channel(&grpc, "posed.v1.PoseService/matte").await;
    let (w, h) = (96u32, 64u32);
    let frame = dir.path().join("frame.png");
    image::RgbImage::from_fn(w, h, |x, y| {
        if x > 30 && x < 60 {
            image::Rgb([200, 150, 120])
        } else {
            image::Rgb([30, 200 - y as u8, 40])
        }
    })
    .save(&frame)
    .unwrap();
    let hint = dir.path().join("hint.png");
    image::GrayImage::from_fn(w, h, |x, _| {
        image::Luma([if x > 30 && x < 60 { 255 } else { 0 }])
    })
    .save(&hint)
    .unwrap();
    let out_dir = dir.path().join("out");
    let addr = grpc.clone();
    let (f, hn, od) = (frame.clone(), hint.clone(), out_dir.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_posed"))
            .args(["push", "--addr", &addr, "--route", "matte", "--hint"])
            .arg(&hn)
            .arg("--matte-out")
            .arg(&od)
            .arg(&f)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("matte 96x64 coverage"), "{text}");
    assert!(text.contains("hint pushed"), "{text}");
    for (name, colour) in [
        ("frame.alpha.png", image::ColorType::L8),
        ("frame.fg.png", image::ColorType::Rgb8),
        ("frame.rgba.png", image::ColorType::Rgba8),
    ] {
        let img = image::open(out_dir.join(name)).unwrap();
        assert_eq!(
            (img.width(), img.height(), img.color()),
            (w, h, colour),
            "{name}"
        );
    }
    let status = PoseServiceClient::new(channel)
        .get_status(proto::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = status.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["corridorkey-128"]);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// A second daemon on a live daemon's socket names it and exits, leaving
/// the socket to it; a file that is not a socket is never removed; and the
/// socket is the owner's only (0600) unless configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_names_the_first_and_leaves_its_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let models = models_dir(dir.path());
    let socket = dir.path().join("posed.sock");
    let serve = |grpc: &str, socket: &std::path::Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_posed"));
        cmd.arg("serve")
            .env("POSED_HANDS_MODELS_DIR", &models)
            .env("POSED_SERVER_LISTEN", grpc)
            .env("POSED_SERVER_SOCKET", socket)
            .env("POSED_SERVER_METRICS", "")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut first = serve(&grpc, &socket).spawn().unwrap();
    serving_channel(&grpc, "posed.v1.PoseService").await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let second = serve(&format!("127.0.0.1:{}", free_port()), &socket)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    let expected = format!(
        "another posed is serving on {} (pid {})",
        socket.display(),
        first.id()
    );
    assert!(said.contains(&expected), "{said}");
    // The first still answers on its socket.
    let mut over_socket = posed::client::connect(&posed::client::Target::Unix(socket.clone()))
        .await
        .unwrap();
    over_socket
        .get_status(proto::GetStatusRequest {})
        .await
        .unwrap();

    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "keep me").unwrap();
    let third = serve(&format!("127.0.0.1:{}", free_port()), &notes)
        .output()
        .unwrap();
    assert!(!third.status.success());
    let said = String::from_utf8_lossy(&third.stderr);
    assert!(said.contains("is not a socket; not removing it"), "{said}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me");

    unsafe { libc::kill(i32::try_from(first.id()).unwrap(), libc::SIGTERM) };
    assert!(first.wait().unwrap().success());
    assert!(!socket.exists(), "the socket is removed on exit");
}

/// A misspelt `POSED_*` variable stops the daemon with one line naming the
/// closest real one, as a misspelt key in the config file does.
#[test]
fn a_misspelt_environment_variable_is_named_with_its_closest_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_posed"))
        .arg("serve")
        .env("POSED_SERVER_LISTN", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        said.trim_end(),
        "posed: environment POSED_SERVER_LISTN: not a posed variable (did you mean POSED_SERVER_LISTEN?)"
    );
}
