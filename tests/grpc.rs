//! The daemon over real gRPC: a tonic client on loopback TCP and on a Unix
//! socket, the real hand models on the fixture weights.

use std::time::{Duration, Instant};

use image::ImageEncoder;
use posed::proto::pose_service_client::PoseServiceClient;
use posed::proto::{self, push_image_request::Image};
use posed::routes::RouteId;
use posed::server::{self, ServeOptions};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_serving_after_warm_up_and_pushes_return_real_hands() {
    let (release, gate) = std::sync::mpsc::channel();
    let d = Daemon::start(ServeOptions::default(), Some(gate)).await;
    let mut health = HealthClient::new(d.channel().await);
    for service in [
        server::SERVICE_NAME.to_owned(),
        server::route_health_name(RouteId::Hands),
    ] {
        let s = health
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            s.status,
            ServingStatus::NotServing as i32,
            "{service} before load"
        );
    }
    release.send(()).unwrap();
    d.wait_serving().await;

    let mut c = d.client().await;
    let reply = c
        .push_image(push(
            jpeg(320, 240),
            vec![
                hand_box(60., 50., 130., 140., true),
                hand_box(200., 60., 260., 150., false),
            ],
            true,
        ))
        .await
        .unwrap()
        .into_inner();
    let event = &reply.events[0];
    let hands = hands_of(event);
    assert_eq!(hands.len(), 2);
    assert_eq!((event.image_width, event.image_height), (320, 240));
    for h in hands {
        assert_eq!(h.keypoints_2d.len(), 42);
        assert_eq!(h.keypoints_3d.len(), 63);
        assert_eq!(h.mano_pose.len(), 48);
        assert_eq!(h.camera_translation.len(), 3);
        assert!(h.vertices.is_empty(), "vertices are opt-in");
    }
    assert_eq!(hands[0].side, proto::HandSide::Right as i32);
    assert_eq!(hands[1].side, proto::HandSide::Left as i32);
    // Sides the client states are certain, and nothing ended yet.
    assert!(hands.iter().all(|h| h.handedness_score == 1.0));
    assert!(hands
        .iter()
        .all(|h| h.origin == proto::HandOrigin::Client as i32));
    let Some(proto::event::Payload::Hands(payload)) = &event.payload else {
        panic!("not a hands event")
    };
    assert!(payload.ended_track_ids.is_empty());
    let stages: Vec<_> = event.timings.iter().map(|t| t.stage.as_str()).collect();
    assert_eq!(stages, ["crop", "pose", "mano", "post"]);

    // The same frame again, as a single push: a single image sees no other
    // frame's tracks (a PushStream does), so its hands are new; vertices
    // when asked.
    let mut req = push(
        jpeg(320, 240),
        vec![
            hand_box(62., 52., 132., 142., true),
            hand_box(200., 60., 260., 150., false),
        ],
        true,
    );
    req.include_vertices = true;
    let again = c.push_image(req).await.unwrap().into_inner();
    let again = hands_of(&again.events[0]);
    assert!(again[0].track_id > hands[1].track_id);
    assert!(again[1].track_id > again[0].track_id);
    assert_eq!(again[0].vertices.len(), 778 * 3);

    // Without boxes the detector runs; without wait the frame id comes back.
    let detected = c
        .push_image(push(jpeg(320, 240), vec![], true))
        .await
        .unwrap()
        .into_inner();
    let stages: Vec<_> = detected.events[0]
        .timings
        .iter()
        .map(|t| t.stage.as_str())
        .collect();
    assert_eq!(
        stages,
        ["preprocess", "detect", "crop", "pose", "mano", "post"]
    );
    let queued = c
        .push_image(push(jpeg(64, 48), vec![], false))
        .await
        .unwrap()
        .into_inner();
    assert!(queued.frame_id > detected.frame_id && queued.events.is_empty());

    let status = c
        .get_status(proto::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.sources[0].frames, 4);
    let t = c
        .get_telemetry(proto::GetTelemetryRequest {
            include_histograms: true,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = t.stages.iter().map(|s| s.name.as_str()).collect();
    for stage in [
        "push.decode",
        "hands.detect",
        "hands.crop",
        "hands.pose",
        "hands.post",
        "hands.fanout",
        "hands.end_to_end",
    ] {
        assert!(names.contains(&stage), "{stage} missing from {names:?}");
    }
    let pose = t.stages.iter().find(|s| s.name == "hands.pose").unwrap();
    assert!(
        pose.count >= 3
            && pose.p50_ns > 0
            && pose.p99_ns >= pose.p50_ns
            && !pose.histogram_v2.is_empty()
    );

    assert!(d.stop().await < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_and_the_daemon_keeps_serving() {
    let options = ServeOptions {
        image_limits: posed::decode::ImageLimits {
            max_pixels: 1000 * 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    let d = Daemon::start(options, None).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let expect = |code: Code, needle: &'static str| (code, needle);
    let mut truncated = jpeg(320, 240);
    truncated.truncate(400);
    let with_camera = |fx, fy, cx, cy| proto::PushImageRequest {
        intrinsics: Some(proto::CameraIntrinsics { fx, fy, cx, cy }),
        ..push(jpeg(64, 64), vec![], true)
    };
    let mut cases: Vec<(proto::PushImageRequest, (Code, &str))> = vec![
        (
            push(truncated, vec![], true),
            expect(Code::InvalidArgument, "cannot decode Jpeg"),
        ),
        (
            push(b"\x89PNG\r\n\x1a\nnot really".to_vec(), vec![], true),
            expect(Code::InvalidArgument, "cannot decode Png"),
        ),
        (
            push(jpeg(1200, 1000), vec![], true),
            expect(Code::ResourceExhausted, "over the limit"),
        ),
        (
            proto::PushImageRequest {
                image: Some(Image::RawRgb(proto::RawImage {
                    width: 10,
                    height: 10,
                    data: vec![0; 299],
                })),
                wait: true,
                ..Default::default()
            },
            expect(Code::InvalidArgument, "needs 300"),
        ),
        (
            proto::PushImageRequest {
                image: Some(Image::RawRgb(proto::RawImage {
                    width: 0,
                    height: 0,
                    data: vec![],
                })),
                ..Default::default()
            },
            expect(Code::InvalidArgument, "at least 1 pixel"),
        ),
        (
            push(
                jpeg(64, 64),
                vec![hand_box(f32::NAN, 0., 10., 10., true)],
                true,
            ),
            expect(Code::InvalidArgument, "not finite"),
        ),
        (
            push(
                jpeg(64, 64),
                vec![hand_box(100., 100., 120., 120., true)],
                true,
            ),
            expect(Code::InvalidArgument, "outside the 64x64 image"),
        ),
        (
            push(jpeg(64, 64), vec![hand_box(10., 10., 5., 20., true)], true),
            expect(Code::InvalidArgument, "inverted"),
        ),
        (
            proto::PushImageRequest {
                routes: vec![42],
                ..push(jpeg(8, 8), vec![], true)
            },
            expect(Code::InvalidArgument, "unknown route 42"),
        ),
        (
            proto::PushImageRequest {
                routes: vec![proto::Route::Matte as i32],
                ..push(jpeg(8, 8), vec![], true)
            },
            expect(Code::FailedPrecondition, "ROUTE_MATTE is not enabled"),
        ),
        (
            proto::PushImageRequest {
                wait: true,
                ..Default::default()
            },
            expect(Code::InvalidArgument, "no image"),
        ),
    ];
    for (req, needle) in [
        (with_camera(0., 600., 32., 32.), "positive focal lengths"),
        (with_camera(600., -1., 32., 32.), "positive focal lengths"),
        (with_camera(f32::NAN, 600., 32., 32.), "not finite"),
        (with_camera(600., 600., f32::INFINITY, 32.), "not finite"),
        (with_camera(600., 600., 32., 65.), "outside the 64x64 image"),
    ] {
        cases.push((req, expect(Code::InvalidArgument, needle)));
    }
    for (req, (code, needle)) in cases {
        let s = c.push_image(req).await.unwrap_err();
        assert_eq!(s.code(), code, "{}", s.message());
        assert!(
            s.message().contains(needle),
            "{needle:?} not in {:?}",
            s.message()
        );
    }
    let s = c
        .subscribe(proto::SubscribeRequest {
            routes: vec![9],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);

    // Still serving everyone, over both transports.
    let ok = c
        .push_image(push(
            jpeg(160, 120),
            vec![hand_box(40., 30., 90., 100., true)],
            true,
        ))
        .await
        .unwrap();
    assert_eq!(hands_of(&ok.into_inner().events[0]).len(), 1);
    let mut u = d.unix_client().await;
    let ok = u
        .push_image(push(
            jpeg(160, 120),
            vec![hand_box(40., 30., 90., 100., false)],
            true,
        ))
        .await
        .unwrap();
    assert_eq!(hands_of(&ok.into_inner().events[0]).len(), 1);
    assert!(d.stop().await < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_event_and_a_stalled_one_loses_only_its_own() {
    let options = ServeOptions {
        subscriber_queue: 8,
        ..Default::default()
    };
    let d = Daemon::start(options, None).await;
    d.wait_serving().await;

    let mut readers = Vec::new();
    for _ in 0..32 {
        let mut c = d.client().await;
        let mut stream = c
            .subscribe(proto::SubscribeRequest::default())
            .await
            .unwrap()
            .into_inner();
        readers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let end = loop {
                match stream.message().await {
                    Ok(Some(e)) => {
                        assert_eq!(e.dropped_for_subscriber, 0);
                        ids.push(e.frame_id);
                    }
                    end => break end,
                }
            };
            // The shutdown ends the stream with UNAVAILABLE.
            assert_eq!(end.unwrap_err().code(), Code::Unavailable);
            ids
        }));
    }
    // A client with small HTTP/2 windows, so its unread events back up
    // into the daemon quickly.
    let small = Endpoint::from_shared(format!("http://{}", d.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut stalled_client = PoseServiceClient::new(small);
    // Heavy events (with vertices) so that transport buffers fill quickly.
    let heavy = proto::SubscribeRequest {
        include_vertices: true,
        ..Default::default()
    };
    let mut stalled = stalled_client.subscribe(heavy).await.unwrap().into_inner();
    let mut c = d.client().await;
    let status = c
        .get_status(proto::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.subscribers, 33);

    let n = 120;
    let mut pushed = Vec::new();
    let raw = proto::RawImage {
        width: 96,
        height: 72,
        data: vec![90; 96 * 72 * 3],
    };
    for i in 0..n {
        let req = proto::PushImageRequest {
            image: Some(Image::RawRgb(raw.clone())),
            hand_boxes: vec![hand_box(20., 20., 60., 60., i % 2 == 0)],
            wait: true,
            ..Default::default()
        };
        pushed.push(c.push_image(req).await.unwrap().into_inner().frame_id);
    }
    // The stalled subscriber wakes up: what it gets plus what it is told it
    // lost is everything, and it did lose some.
    let (mut seen, mut lost) = (0u64, 0u64);
    loop {
        let e = stalled.message().await.unwrap().unwrap();
        seen += 1;
        lost += e.dropped_for_subscriber;
        if e.frame_id == *pushed.last().unwrap() {
            break;
        }
    }
    assert!(lost > 0, "stalled subscriber lost nothing");
    assert_eq!(seen + lost, n as u64);

    // Shutdown ends every stream; each reader saw every event in order.
    let took = d.stop().await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    for r in readers {
        assert_eq!(r.await.unwrap(), pushed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_stream_answers_every_frame_and_survives_a_client_that_leaves() {
    let d = Daemon::start(ServeOptions::default(), None).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let (tx, rx) = mpsc::channel(16);
    let mut events = c
        .push_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // One frame alone runs; a burst behind a running frame is latest-wins.
    let mut first = push(
        jpeg(120, 90),
        vec![hand_box(20., 20., 70., 80., true)],
        false,
    );
    first.client_frame_id = 1;
    tx.send(first).await.unwrap();
    let e = events.message().await.unwrap().unwrap();
    assert_eq!(e.client_frame_id, 1);
    assert_eq!(hands_of(&e).len(), 1);
    let mut answered = vec![(1, "hands")];
    for i in 2..=5u64 {
        let mut req = push(
            jpeg(120, 90),
            vec![hand_box(20., 20., 70., 80., true)],
            false,
        );
        req.client_frame_id = i;
        tx.send(req).await.unwrap();
    }
    let mut bad = push(b"garbage".to_vec(), vec![], false);
    bad.client_frame_id = 6;
    tx.send(bad).await.unwrap();
    drop(tx);
    while let Some(e) = events.message().await.unwrap() {
        let kind = match &e.payload {
            Some(proto::event::Payload::Hands(_)) => "hands",
            Some(proto::event::Payload::Skipped(_)) => "skipped",
            Some(proto::event::Payload::Error(err)) => {
                assert_eq!(err.code, Code::InvalidArgument as i32);
                "error"
            }
            other => panic!("{other:?}"),
        };
        answered.push((e.client_frame_id, kind));
    }
    answered.sort();
    let ids: Vec<u64> = answered.iter().map(|a| a.0).collect();
    assert_eq!(
        ids,
        [1, 2, 3, 4, 5, 6],
        "one answer per frame: {answered:?}"
    );
    assert_eq!(answered[5], (6, "error"));

    // A client that leaves mid-stream costs the daemon nothing.
    let (tx, rx) = mpsc::channel(4);
    let stream = c
        .push_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap();
    tx.send(push(jpeg(120, 90), vec![], false)).await.unwrap();
    drop(stream);
    drop(tx);
    let ok = c
        .push_image(push(
            jpeg(120, 90),
            vec![hand_box(20., 20., 70., 80., true)],
            true,
        ))
        .await
        .unwrap();
    assert_eq!(hands_of(&ok.into_inner().events[0]).len(), 1);
    assert!(d.stop().await < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_feeds_subscribers_and_a_missing_camera_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3u32 {
        let img = image::RgbImage::from_fn(80, 60, |x, y| image::Rgb([(x + i) as u8, y as u8, 50]));
        img.save(dir.path().join(format!("frame{i}.png"))).unwrap();
    }
    // A corrupt record between frames 1 and 2: skipped and named, and the
    // recording plays on.
    std::fs::write(dir.path().join("frame1c.png"), b"not a png").unwrap();
    let mut sources = vec![server::SourceSpec::Replay {
        id: "replay".into(),
        config: posed::sources::ReplayConfig {
            dir: dir.path().into(),
            pace: posed::sources::Pace::Original { fps: 40.0 },
            repeat: true,
            max_gap: Duration::from_secs(2),
        },
    }];
    sources.push(server::SourceSpec::Camera {
        id: "camera".into(),
        config: camera_config("97"),
        backend: posed::sources::camera::CameraBackend::Platform,
    });
    let d = Daemon::start_with(ServeOptions::default(), None, sources).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let mut stream = c
        .subscribe(proto::SubscribeRequest {
            source_ids: vec!["replay".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        let e = stream.message().await.unwrap().unwrap();
        assert_eq!(e.source_id, "replay");
        assert_eq!((e.image_width, e.image_height), (80, 60));
        assert!(matches!(e.payload, Some(proto::event::Payload::Hands(_))));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = c
            .get_status(proto::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let replay = status.sources.iter().find(|s| s.id == "replay").unwrap();
        assert_eq!(replay.state, "running");
        assert!(replay.frames >= 3);
        assert!(
            replay.detail.contains("unreadable") && replay.detail.contains("frame1c.png"),
            "{}",
            replay.detail
        );
        let cam = status.sources.iter().find(|s| s.id == "camera").unwrap();
        if cam.state == "reconnecting" && !cam.detail.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "camera never reported its failure: {:?}",
            status.sources
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.stop().await < Duration::from_secs(2));
}

/// The same hands with the camera's intrinsics: depth scales with the
/// focal length (metric), the hand stays on its box, and the event says
/// which camera was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_with_camera_intrinsics_get_metric_hands() {
    let d = Daemon::start(ServeOptions::default(), None).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let boxes = || vec![hand_box(60., 50., 130., 140., true)];
    let hands_and_camera = |r: proto::PushImageReply| {
        let Some(proto::event::Payload::Hands(h)) = r.events[0].payload.clone() else {
            panic!("not a hands event")
        };
        h
    };
    let pseudo = hands_and_camera(
        c.push_image(push(jpeg(320, 240), boxes(), true))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(!pseudo.camera_given);
    let k = pseudo.camera.unwrap();
    // WiLoR's 5000 px at 256 px, scaled to the longer side; centred.
    assert_eq!((k.fx, k.fy, k.cx, k.cy), (6250.0, 6250.0, 160.0, 120.0));
    assert_eq!(pseudo.hands[0].focal_length_px, 6250.0);

    let req = proto::PushImageRequest {
        intrinsics: Some(proto::CameraIntrinsics {
            fx: 250.0,
            fy: 250.0,
            cx: 160.0,
            cy: 120.0,
        }),
        ..push(jpeg(320, 240), boxes(), true)
    };
    let metric = hands_and_camera(c.push_image(req).await.unwrap().into_inner());
    assert!(metric.camera_given);
    assert_eq!(metric.hands[0].focal_length_px, 250.0);
    let (p, m) = (&pseudo.hands[0], &metric.hands[0]);
    let ratio = m.camera_translation[2] / p.camera_translation[2];
    assert!((ratio - 250.0 / 6250.0).abs() < 1e-4, "depth ratio {ratio}");
    // The hand's origin projects to the same pixel with either camera (the
    // joints around it differ by perspective: the real camera is closer).
    let origin = |t: &[f32], f: f32| [f * t[0] / t[2] + 160.0, f * t[1] / t[2] + 120.0];
    let (a, b) = (
        origin(&p.camera_translation, 6250.0),
        origin(&m.camera_translation, 250.0),
    );
    assert!(
        (a[0] - b[0]).abs() < 0.05 && (a[1] - b[1]).abs() < 0.05,
        "{a:?} vs {b:?}"
    );
    d.stop().await;
}

fn camera_config(device: &str) -> posed::sources::camera::CameraConfig {
    posed::sources::camera::CameraConfig {
        device: device.into(),
        width: 64,
        height: 48,
        fps: 30,
        formats: Vec::new(),
        pin_frame_rate: true,
        intrinsics: None,
    }
}

/// The camera source end to end, with a scripted camera in place of the
/// platform's: it waits for permission, delivers only the newest of each
/// burst, counts the rest as dropped, reconnects after an unplug, and
/// records its queue and conversion stages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_feeds_routes_with_its_newest_frames_and_reports_drops_and_stages() {
    use posed_capture::fake::{bgra_camera, Call, FakeBackend, Step};
    use posed_capture::{Permission, PixelFormat, Size};

    let (mut fake, calls) = FakeBackend::new(vec![bgra_camera("Desk Cam", Size::new(64, 48))]);
    fake.permissions = [Permission::Pending, Permission::Granted].into();
    // Old enough that no route could account for it.
    fake.frame_age = Duration::from_secs(2);
    fake.scripts = [
        vec![
            Step::Frames(vec![10, 20, 30]),
            Step::Frames(vec![40]),
            Step::Unplug,
        ],
        vec![Step::Frames(vec![50, 60])],
    ]
    .into();
    let mut config = camera_config("desk");
    config.formats = vec![PixelFormat::Bgra];
    let source = server::SourceSpec::Camera {
        id: "camera".into(),
        config,
        backend: posed::sources::camera::CameraBackend::Scripted(fake),
    };
    let d = Daemon::start_with(ServeOptions::default(), None, vec![source]).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let camera = loop {
        let status = c
            .get_status(proto::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let cam = status
            .sources
            .into_iter()
            .find(|s| s.id == "camera")
            .unwrap();
        // 3 bursts delivered after the reconnect; 1 + 1 frames superseded.
        if cam.frames == 3 && cam.dropped == 3 {
            break cam;
        }
        assert!(Instant::now() < deadline, "camera never delivered: {cam:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(camera.kind, "camera");
    assert_eq!(
        calls
            .take()
            .into_iter()
            .filter(|c| matches!(c, Call::Open(_)))
            .count(),
        2,
        "one open, one reopen after the unplug"
    );
    // Wait for the hand route to publish at least one camera frame.
    let stages = loop {
        let stages = c
            .get_telemetry(proto::GetTelemetryRequest::default())
            .await
            .unwrap()
            .into_inner()
            .stages;
        if stages
            .iter()
            .any(|s| s.name == "hands.end_to_end" && s.count > 0)
        {
            break stages;
        }
        assert!(
            Instant::now() < deadline,
            "no camera frame reached an event: {stages:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stage = |name: &str| stages.iter().find(|s| s.name == name).cloned();
    // An event's clock starts at capture: the 2 s the frame spent in the
    // driver are part of its end-to-end latency.
    let end_to_end = stage("hands.end_to_end").unwrap();
    assert!(end_to_end.p50_ns >= 2_000_000_000, "{end_to_end:?}");
    let queue = stage("camera.queue").expect("camera.queue recorded");
    assert_eq!(queue.count, 3);
    assert_eq!(queue.dropped, 3);
    // The driver said each frame was 2 s old when it was dequeued.
    assert!(
        queue.p50_ns.abs_diff(2_000_000_000) < 10_000_000,
        "{queue:?}"
    );
    assert_eq!(
        stage("camera.convert")
            .expect("camera.convert recorded")
            .count,
        3
    );
    assert!(d.stop().await < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let d = Daemon::start(ServeOptions::default(), None).await;
    let mut r = ServerReflectionClient::new(d.channel().await);
    let requests = vec![
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("posed.v1.PoseService".into()),
    ];
    let outbound = tokio_stream::iter(requests.into_iter().map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    }));
    let mut replies = r
        .server_reflection_info(outbound)
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "posed.v1.PoseService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("no descriptor for posed.v1.PoseService")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_frames_are_recorded_in_the_replay_layout() {
    let rec = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        record_dir: Some(rec.path().into()),
        ..Default::default()
    };
    let d = Daemon::start(options, None).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let mut pushed = Vec::new();
    // Capture times a second apart, starting a minute ago (pushed times
    // must be near the daemon's clock).
    let base_ns = u64::try_from(
        (std::time::SystemTime::now() - Duration::from_secs(60))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap();
    for i in 0..3u8 {
        let data: Vec<u8> = (0..40 * 30 * 3)
            .map(|k| (k as u8).wrapping_mul(i + 1))
            .collect();
        pushed.push(data.clone());
        let req = proto::PushImageRequest {
            image: Some(Image::RawRgb(proto::RawImage {
                width: 40,
                height: 30,
                data,
            })),
            capture_unix_ns: i64::try_from(base_ns + 1_000_000_000 * (u64::from(i) + 1)).unwrap(),
            wait: true,
            ..Default::default()
        };
        c.push_image(req).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let files = loop {
        let files = posed::sources::replay_files(rec.path()).unwrap();
        if files.len() == 3 && files.iter().all(|(p, _)| image::open(p).is_ok()) {
            break files;
        }
        assert!(Instant::now() < deadline, "recording incomplete: {files:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let times: Vec<_> = files.iter().map(|(_, t)| t.unwrap()).collect();
    let second = 1_000_000_000;
    assert_eq!(
        times,
        [base_ns + second, base_ns + 2 * second, base_ns + 3 * second]
    );
    for ((path, _), want) in files.iter().zip(&pushed) {
        assert_eq!(&image::open(path).unwrap().into_rgb8().into_raw(), want);
    }
    d.stop().await;
}

/// The body route over gRPC: a subscriber to body events only, a push with
/// two person boxes that waits, the `BodyPose` events both get (308
/// keypoints with scores, in image pixels), the keypoint names in
/// GetStatus, body telemetry, bad person boxes refused, and a push to both
/// routes answered with one event per route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_with_person_boxes_get_body_pose_events() {
    let d =
        Daemon::start_routes(ServeOptions::default(), None, vec![], &[proto::Route::Body]).await;
    d.wait_serving().await;
    let mut health = HealthClient::new(d.channel().await);
    let s = health
        .check(HealthCheckRequest {
            service: server::route_health_name(RouteId::Body),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, ServingStatus::Serving as i32);

    let mut c = d.client().await;
    let mut body_events = c
        .subscribe(proto::SubscribeRequest {
            routes: vec![proto::Route::Body as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let people = vec![
        proto::Box2D {
            x1: 40.,
            y1: 20.,
            x2: 140.,
            y2: 230.,
        },
        proto::Box2D {
            x1: 180.,
            y1: 30.,
            x2: 290.,
            y2: 235.,
        },
    ];
    let reply = c
        .push_image(proto::PushImageRequest {
            image: Some(Image::Encoded(jpeg(320, 240))),
            routes: vec![proto::Route::Body as i32],
            person_boxes: people.clone(),
            wait: true,
            client_frame_id: 41,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.events.len(), 1);
    let check = |e: &proto::Event| {
        assert_eq!(e.route, proto::Route::Body as i32);
        assert_eq!(e.client_frame_id, 41);
        let Some(proto::event::Payload::Bodies(b)) = &e.payload else {
            panic!("not a body event: {:?}", e.payload)
        };
        assert_eq!(b.people.len(), 2);
        for (p, want) in b.people.iter().zip(&people) {
            assert_eq!(p.bbox.as_ref(), Some(want));
            assert_eq!(p.score, 1.0);
            assert_eq!(p.keypoints.len(), 2 * 308);
            assert_eq!(p.keypoint_scores.len(), 308);
            assert!(p.keypoints.iter().all(|v| v.is_finite()));
        }
        assert_ne!(b.people[0].track_id, b.people[1].track_id);
        let stages: Vec<_> = e.timings.iter().map(|t| t.stage.as_str()).collect();
        assert_eq!(stages, ["crop", "pose", "keypoints", "post"]);
    };
    check(&reply.events[0]);
    let streamed = tokio::time::timeout(Duration::from_secs(30), body_events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    check(&streamed);

    let status = c
        .get_status(proto::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.body_keypoint_names.len(), 308);
    assert_eq!(status.body_keypoint_names[0], "nose");
    let telemetry = c
        .get_telemetry(proto::GetTelemetryRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = telemetry.stages.iter().map(|s| s.name.as_str()).collect();
    for stage in ["body.crop", "body.pose", "body.end_to_end"] {
        assert!(names.contains(&stage), "{stage} missing from {names:?}");
    }

    // A box outside the image is the client's error, named.
    let err = c
        .push_image(proto::PushImageRequest {
            image: Some(Image::Encoded(jpeg(320, 240))),
            routes: vec![proto::Route::Body as i32],
            person_boxes: vec![proto::Box2D {
                x1: 400.,
                y1: 0.,
                x2: 500.,
                y2: 100.,
            }],
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("person_boxes[0]"),
        "{}",
        err.message()
    );

    // Both routes: one event each, in the order asked.
    let reply = c
        .push_image(proto::PushImageRequest {
            image: Some(Image::Encoded(jpeg(320, 240))),
            routes: vec![proto::Route::Hands as i32, proto::Route::Body as i32],
            hand_boxes: vec![hand_box(60., 50., 130., 140., true)],
            person_boxes: people,
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let routes: Vec<i32> = reply.events.iter().map(|e| e.route).collect();
    assert_eq!(
        routes,
        [proto::Route::Hands as i32, proto::Route::Body as i32]
    );
    assert_eq!(hands_of(&reply.events[0]).len(), 1);
    // The body subscriber sees only the body event of that frame.
    let next = tokio::time::timeout(Duration::from_secs(30), body_events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.route, proto::Route::Body as i32);
    assert_eq!(next.frame_id, reply.events[1].frame_id);
    d.stop().await;
}

/// The matte route over gRPC: a push of RGB and a grey hint that waits gets
/// a Matte event with a PNG alpha at the pushed image's size; a subscriber
/// that asked for matte images gets the same event with the foreground and
/// the RGBA composite, one that did not gets the alpha only; a hint of the
/// wrong size is the client's error, named; PushStream frames after the
/// first use the previous alpha; telemetry has the matte stages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_with_a_hint_get_matte_events() {
    let d = Daemon::start_routes(
        ServeOptions::default(),
        None,
        vec![],
        &[proto::Route::Matte],
    )
    .await;
    d.wait_serving().await;
    let mut health = HealthClient::new(d.channel().await);
    let s = health
        .check(HealthCheckRequest {
            service: server::route_health_name(RouteId::Matte),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, ServingStatus::Serving as i32);

    let mut c = d.client().await;
    let subscribe = |images: bool| {
        let mut c = c.clone();
        async move {
            c.subscribe(proto::SubscribeRequest {
                routes: vec![proto::Route::Matte as i32],
                include_matte_images: images,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let mut with_images = subscribe(true).await;
    let mut alpha_only = subscribe(false).await;

    let (w, h) = (200u32, 150u32);
    // The hint: the left half is the subject.
    let hint: Vec<u8> = (0..h)
        .flat_map(|_| (0..w).map(|x| if x < w / 2 { 255 } else { 0 }))
        .collect();
    let mut hint_png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut hint_png)
        .write_image(&hint, w, h, image::ExtendedColorType::L8)
        .unwrap();
    let push = |matte_hint: Vec<u8>, images: bool| proto::PushImageRequest {
        image: Some(Image::Encoded(jpeg(w, h))),
        routes: vec![proto::Route::Matte as i32],
        matte_hint,
        include_matte_images: images,
        wait: true,
        client_frame_id: 5,
        ..Default::default()
    };
    let reply = c
        .push_image(push(hint_png.clone(), false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.events.len(), 1);
    let matte_of = |e: &proto::Event| -> proto::Matte {
        assert_eq!(e.route, proto::Route::Matte as i32);
        assert_eq!((e.image_width, e.image_height), (w, h));
        let Some(proto::event::Payload::Matte(m)) = &e.payload else {
            panic!("not a matte event: {:?}", e.payload)
        };
        assert_eq!((m.width, m.height), (w, h));
        assert_eq!(m.encoding, proto::ImageEncoding::Png as i32);
        assert!((0.0..=1.0).contains(&m.coverage));
        let alpha = image::load_from_memory(&m.alpha).unwrap();
        assert_eq!(alpha.color(), image::ColorType::L8);
        assert_eq!((alpha.width(), alpha.height()), (w, h));
        let mean =
            alpha.as_bytes().iter().map(|&a| a as f64).sum::<f64>() / (255.0 * (w * h) as f64);
        assert!(
            (mean - m.coverage as f64).abs() < 1e-3,
            "{mean} vs {}",
            m.coverage
        );
        let stages: Vec<_> = e.timings.iter().map(|t| t.stage.as_str()).collect();
        assert_eq!(stages, ["preprocess", "matte", "resize", "post"]);
        m.clone()
    };
    let m = matte_of(&reply.events[0]);
    assert_eq!(m.hint_source, proto::MatteHintSource::Pushed as i32);
    assert!(
        m.foreground.is_empty() && m.composite.is_empty(),
        "not asked for"
    );

    let full = matte_of(&next(&mut with_images).await);
    let fg = image::load_from_memory(&full.foreground).unwrap();
    assert_eq!(fg.color(), image::ColorType::Rgb8);
    let comp = image::load_from_memory(&full.composite).unwrap();
    assert_eq!(comp.color(), image::ColorType::Rgba8);
    assert_eq!((comp.width(), comp.height()), (w, h));
    // The composite is the foreground with the alpha as its fourth channel.
    let alpha = image::load_from_memory(&full.alpha).unwrap();
    for (i, px) in comp.as_bytes().chunks_exact(4).enumerate().step_by(97) {
        assert_eq!(&px[..3], &fg.as_bytes()[3 * i..3 * i + 3]);
        assert_eq!(px[3], alpha.as_bytes()[i]);
    }
    assert_eq!(full.alpha, m.alpha, "the same frame");
    let lean = matte_of(&next(&mut alpha_only).await);
    assert!(lean.foreground.is_empty() && lean.composite.is_empty());

    // A hint of another size is refused with the reason; the daemon goes on.
    let err = c.push_image(push(vec![0; 10], false)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("matte_hint"), "{}", err.message());

    // A stream: the first frame has no hint (fallback), the second reuses
    // the first one's alpha.
    let (tx, rx) = mpsc::channel(4);
    let mut answers = c
        .push_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut sources = Vec::new();
    for i in 0..2 {
        tx.send(proto::PushImageRequest {
            source_id: "clip".into(),
            client_frame_id: 100 + i,
            wait: false,
            ..push(Vec::new(), false)
        })
        .await
        .unwrap();
        let e = next(&mut answers).await;
        sources.push(matte_of(&e).hint_source);
    }
    assert_eq!(
        sources,
        [
            proto::MatteHintSource::Fallback as i32,
            proto::MatteHintSource::Previous as i32
        ]
    );
    drop(tx);

    let telemetry = c
        .get_telemetry(proto::GetTelemetryRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = telemetry.stages.iter().map(|s| s.name.as_str()).collect();
    for stage in [
        "matte.preprocess",
        "matte.matte",
        "matte.resize",
        "matte.post",
        "matte.end_to_end",
    ] {
        assert!(names.contains(&stage), "{stage} missing from {names:?}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_grpc_times_every_frame_and_counts_the_ones_the_gate_replaced() {
    use posed::bench_grpc::{self, GrpcBenchOptions};
    let d = Daemon::start(ServeOptions::default(), None).await;
    let target = posed::client::Target::Tcp(d.addr.to_string());
    let options = GrpcBenchOptions {
        hands: vec![2],
        in_flight: vec![1, 3],
        tracking: vec![false],
        warmup: 1,
        runs: 6,
        ready_timeout: Duration::from_secs(120),
    };
    let report = bench_grpc::run(&target, &options).await.unwrap();
    let [one, three, stream] = &report.cases[..] else {
        panic!("three cases expected: {:?}", report.cases)
    };
    // One in flight: nothing can be replaced, every frame is timed.
    assert_eq!((one.frames, one.lost), (6, 0));
    assert_eq!((one.hands_min, one.hands_max), (2, 2));
    assert!(one.latency.p50_ms > 0.0 && one.latency.p50_ms <= one.latency.max_ms);
    // The latency covers what the daemon reports about the same frames.
    let in_daemon = one.event_stages_p50_ms["in_daemon"];
    assert!(in_daemon > one.event_stages_p50_ms["pose"], "{one:?}");
    assert!(
        one.latency.p50_ms >= one.event_stages_p50_ms["pose"],
        "{one:?}"
    );
    // Three in flight: the latest-wins gate replaces some of them; each
    // frame is either timed or counted as lost.
    assert_eq!(three.frames + three.lost, 6, "{three:?}");
    assert!(three.frames >= 1);
    assert!(report.daemon_stages.contains_key("hands.pose"));
    assert!(bench_grpc::table(&report).contains("| 2 hand boxes | 1 | 6 | 0 |"));
    // A PushStream without boxes, tracking off: the detector on every frame.
    assert_eq!(
        (stream.tracking, stream.frames, stream.detector_frames),
        (Some(false), 6, Some(6)),
        "{stream:?}"
    );
    assert!(stream.hands_max <= 2);
    assert!(stream.event_stages_p50_ms.contains_key("detect"));
    d.stop().await;
}

/// `posed bench` runs the daemon's stage code: on the fixture weights, the
/// stages it reports for each route are exactly those the daemon's
/// telemetry records for a push through that route (the bench's `decode`
/// is the daemon's `push.decode`; its spans, such as `model`, add up
/// stages and are left out).
#[tokio::test]
async fn posed_bench_reports_the_stages_the_daemon_records() {
    let fixtures = posed_models::parity::fixtures_dir();
    let d = Daemon::start_routes(
        ServeOptions::default(),
        None,
        vec![],
        &[proto::Route::Body, proto::Route::Matte],
    )
    .await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let dir = tempfile::tempdir().unwrap();
    for (route, models, extra) in [
        (proto::Route::Hands, "hands", &["--hands", "1"][..]),
        (proto::Route::Body, "body", &["--people", "1"][..]),
        (proto::Route::Matte, "matte", &["--sizes", "128"][..]),
    ] {
        let name = RouteId::from_proto(route as i32).unwrap().name();
        let mut req = push(jpeg(320, 240), vec![], true);
        req.routes = vec![route as i32];
        let reply = c.push_image(req).await.unwrap().into_inner();
        assert!(
            !matches!(
                reply.events[0].payload,
                Some(proto::event::Payload::Error(_))
            ),
            "{name}: {:?}",
            reply.events[0]
        );
        let telemetry = c
            .get_telemetry(proto::GetTelemetryRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut daemon: Vec<String> = telemetry
            .stages
            .iter()
            .filter(|s| s.count > 0)
            .filter_map(|s| match s.name.as_str() {
                "push.decode" => Some("decode".to_owned()),
                n => n.strip_prefix(&format!("{name}.")).map(str::to_owned),
            })
            .collect();
        daemon.sort();

        let json = dir.path().join(format!("{name}.json"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_posed"))
            .args(["bench", "--route", name, "--models"])
            .arg(fixtures.join(models))
            .args([
                "--pose-dtypes",
                "f32",
                "--warmup",
                "1",
                "--runs",
                "2",
                "--json",
            ])
            .arg(&json)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let cases = report["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 1, "{name}");
        let spans: Vec<&str> = posed::bench::SPANS.iter().map(|(s, _)| *s).collect();
        let mut bench: Vec<String> = cases[0]["stages"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| !spans.contains(&k.as_str()) && v["n"].as_u64() > Some(0))
            .map(|(k, _)| k.clone())
            .collect();
        bench.sort();
        assert_eq!(bench, daemon, "{name}: bench vs daemon telemetry");
        // And both are the route's own stages between decode and post (a
        // detected frame's: a followed one tracks instead).
        for stage in RouteId::from_proto(route as i32).unwrap().kind().stages() {
            let ran = bench.iter().any(|s| s == stage);
            assert_eq!(ran, *stage != "track", "{name}: {stage}");
        }
    }
    d.stop().await;
}

/// The detector's runs so far, as GetTelemetry (and the Prometheus
/// histogram's `_count`) reports them.
async fn detector_runs(c: &mut PoseServiceClient<Channel>) -> u64 {
    let t = c
        .get_telemetry(proto::GetTelemetryRequest::default())
        .await
        .unwrap()
        .into_inner();
    t.stages
        .iter()
        .find(|s| s.name == "hands.detect")
        .map_or(0, |s| s.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_follows_its_hands_and_skips_the_detector_until_redetect() {
    let d = Daemon::start(ServeOptions::default(), None).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    const FRAMES: usize = 9;
    // The tiny detector finds "hands" in anything at a zero threshold; its
    // random WiLoR's hands are kept whatever their tracking confidence.
    let options = |tracking: bool| proto::HandOptions {
        conf_threshold: Some(0.0),
        min_tracking_confidence: Some(0.0),
        redetect_interval: Some(4),
        max_hands: Some(2),
        tracking: Some(tracking),
        ..Default::default()
    };
    let mut counts = Vec::new();
    for tracking in [true, false] {
        let before = detector_runs(&mut c).await;
        let (tx, rx) = mpsc::channel(1);
        let mut events = c
            .push_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        for i in 0..FRAMES {
            let mut req = push(jpeg(320, 240), vec![], true);
            req.client_frame_id = i as u64;
            req.hand_options = Some(options(tracking));
            tx.send(req).await.unwrap();
            let e = events.message().await.unwrap().unwrap();
            let Some(proto::event::Payload::Hands(h)) = &e.payload else {
                panic!("frame {i}: {:?}", e.payload)
            };
            let origins: Vec<i32> = h.hands.iter().map(|p| p.origin).collect();
            let ids: Vec<u32> = h.hands.iter().map(|p| p.track_id).collect();
            seen.push((h.detector_ran, origins, ids));
        }
        drop(tx);
        let runs = detector_runs(&mut c).await - before;
        let ran = seen.iter().filter(|s| s.0).count() as u64;
        assert_eq!(runs, ran, "tracking {tracking}: telemetry vs events");
        counts.push((tracking, ran));
        assert!(!seen[0].1.is_empty(), "the detector found no hands");
        let (detected, tracked) = (
            proto::HandOrigin::Detected as i32,
            proto::HandOrigin::Tracked as i32,
        );
        for (i, (ran, origins, ids)) in seen.iter().enumerate() {
            let expected = if *ran { detected } else { tracked };
            assert!(
                origins.iter().all(|&o| o == expected),
                "frame {i}: {seen:?}"
            );
            // The same hands all along: one image, followed or re-found.
            assert_eq!(ids, &seen[0].2, "frame {i}: {seen:?}");
        }
        if tracking {
            // Detected on frames 0, 4, 8; followed in between.
            let ran: Vec<bool> = seen.iter().map(|s| s.0).collect();
            let every_4th: Vec<bool> = (0..FRAMES).map(|i| i % 4 == 0).collect();
            assert_eq!(ran, every_4th, "{seen:?}");
        }
    }
    assert_eq!(counts, [(true, 3), (false, FRAMES as u64)]);
    d.stop().await;
}

/// A shutdown ends every open stream with UNAVAILABLE, the status a client
/// takes as "reconnect", not with OK ("no more events").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_open_streams_with_unavailable() {
    let d = Daemon::start(ServeOptions::default(), None).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let mut events = c
        .subscribe(proto::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (tx, rx) = mpsc::channel(1);
    let mut pushed = c
        .push_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // One frame through both streams first: they are live.
    tx.send(push(jpeg(64, 48), vec![], true)).await.unwrap();
    assert!(pushed.message().await.unwrap().is_some());
    assert!(events.message().await.unwrap().is_some());

    assert!(d.stop().await < Duration::from_secs(2));
    for (name, stream) in [("Subscribe", &mut events), ("PushStream", &mut pushed)] {
        let end = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        let status = end.expect_err(name);
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        assert!(status.message().contains("shutting down"), "{name}");
    }
    drop(tx);
}
