//! The daemon against a hostile or broken client (issue #23): every request
//! field at its extremes, images and box lists no route can use, frames
//! over their deadline, subscriptions to what will never come, clients that
//! fall behind or freeze, and pushes that pose as the daemon's sources. In
//! every case the client gets a precise status and everyone else is served.

mod common;

use std::time::{Duration, Instant};

use common::*;
use posed::engine::EngineLimits;
use posed::proto::{self, push_image_request::Image};
use posed::server::{BearerToken, Keepalive, ServeOptions};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const EXTREMES: [f32; 7] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    0.0,
    -1.0,
    3.0e38,
    1.0e-30,
];

/// A push that passes every check, to vary one field at a time.
fn good_push() -> proto::PushImageRequest {
    proto::PushImageRequest {
        hand_options: Some(proto::HandOptions {
            detector_only: true,
            ..Default::default()
        }),
        ..push(jpeg(64, 48), vec![hand_box(10., 10., 40., 40., true)], true)
    }
}

/// Every numeric field of every request, each at NaN, ±inf, 0, negative,
/// huge and tiny: the answer is OK or INVALID_ARGUMENT (never a hang, a
/// panic or another code), and the daemon answers a normal push after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_numeric_field_at_its_extremes_gets_ok_or_invalid_argument() {
    let d = Daemon::start(ServeOptions::default(), None).await;
    d.wait_serving().await;
    let mut c = d.client().await;

    type Edit = Box<dyn Fn(&mut proto::PushImageRequest, f32)>;
    let box_field = |i: usize| -> Edit {
        Box::new(move |r, v| {
            let b = r.hand_boxes[0].r#box.as_mut().unwrap();
            *[&mut b.x1, &mut b.y1, &mut b.x2, &mut b.y2][i] = v;
        })
    };
    let camera = |i: usize| -> Edit {
        Box::new(move |r, v| {
            let mut k = [48.0, 48.0, 32.0, 24.0];
            k[i] = v;
            r.intrinsics = Some(proto::CameraIntrinsics {
                fx: k[0],
                fy: k[1],
                cx: k[2],
                cy: k[3],
            });
        })
    };
    let option = |set: fn(&mut proto::HandOptions, f32)| -> Edit {
        Box::new(move |r, v| set(r.hand_options.as_mut().unwrap(), v))
    };
    let float_fields: Vec<(&str, Edit)> = vec![
        ("hand_boxes.x1", box_field(0)),
        ("hand_boxes.y1", box_field(1)),
        ("hand_boxes.x2", box_field(2)),
        ("hand_boxes.y2", box_field(3)),
        ("intrinsics.fx", camera(0)),
        ("intrinsics.fy", camera(1)),
        ("intrinsics.cx", camera(2)),
        ("intrinsics.cy", camera(3)),
        ("conf_threshold", option(|o, v| o.conf_threshold = Some(v))),
        ("iou_threshold", option(|o, v| o.iou_threshold = Some(v))),
        (
            "min_tracking_confidence",
            option(|o, v| o.min_tracking_confidence = Some(v)),
        ),
    ];
    let mut answers = Vec::new();
    for (name, edit) in &float_fields {
        for v in EXTREMES {
            let mut req = good_push();
            edit(&mut req, v);
            answers.push((format!("{name}={v}"), c.push_image(req).await.err()));
        }
    }
    let integer_cases: Vec<(String, proto::PushImageRequest)> = [0u32, 1 << 31, u32::MAX]
        .into_iter()
        .flat_map(|v| {
            let raw = |w: u32, h: u32| proto::PushImageRequest {
                image: Some(Image::RawRgb(proto::RawImage {
                    width: w,
                    height: h,
                    data: vec![7; 64 * 48 * 3],
                })),
                ..good_push()
            };
            let mut redetect = good_push();
            redetect.hand_options.as_mut().unwrap().redetect_interval = Some(v);
            let mut max_hands = good_push();
            max_hands.hand_options.as_mut().unwrap().max_hands = Some(v);
            [
                (format!("raw_rgb.width={v}"), raw(v, 48)),
                (format!("raw_rgb.height={v}"), raw(64, v)),
                (format!("redetect_interval={v}"), redetect),
                (format!("max_hands={v}"), max_hands),
            ]
        })
        .chain([i64::MAX, i64::MIN, -1, 1].into_iter().map(|ns| {
            (
                format!("capture_unix_ns={ns}"),
                proto::PushImageRequest {
                    capture_unix_ns: ns,
                    ..good_push()
                },
            )
        }))
        .chain([0, u64::MAX].into_iter().map(|id| {
            (
                format!("client_frame_id={id}"),
                proto::PushImageRequest {
                    client_frame_id: id,
                    ..good_push()
                },
            )
        }))
        .collect();
    for (name, req) in integer_cases {
        answers.push((name, c.push_image(req).await.err()));
    }
    for rate in EXTREMES.into_iter().chain([f32::MAX, f32::MIN_POSITIVE]) {
        let answer = c
            .subscribe(proto::SubscribeRequest {
                max_rate_hz: rate,
                ..Default::default()
            })
            .await;
        answers.push((format!("max_rate_hz={rate}"), answer.err()));
    }

    let mut refused = Vec::new();
    for (case, answer) in &answers {
        if let Some(s) = answer {
            // An image over the pixel cap is RESOURCE_EXHAUSTED (documented).
            let over_cap = s.code() == Code::ResourceExhausted
                && case.starts_with("raw_rgb")
                && s.message().contains("over the limit");
            assert!(
                s.code() == Code::InvalidArgument || over_cap,
                "{case}: {:?} {}",
                s.code(),
                s.message()
            );
            refused.push(case.as_str());
        }
    }
    // What a client cannot mean is refused; the rest is a valid request.
    let must_refuse = [
        "hand_boxes.x1=NaN",
        "hand_boxes.x2=inf",
        "hand_boxes.y2=300000000000000000000000000000000000000",
        "hand_boxes.x1=-inf",
        "intrinsics.fx=0",
        "intrinsics.fy=-1",
        "intrinsics.fx=300000000000000000000000000000000000000",
        "intrinsics.fy=0.000000000000000000000000000001",
        "intrinsics.cx=-1",
        "intrinsics.cy=NaN",
        "conf_threshold=-1",
        "iou_threshold=inf",
        "min_tracking_confidence=NaN",
        "raw_rgb.width=0",
        "raw_rgb.height=4294967295",
        "redetect_interval=0",
        "redetect_interval=4294967295",
        "max_hands=0",
        "max_hands=2147483648",
        "capture_unix_ns=9223372036854775807",
        "capture_unix_ns=-9223372036854775808",
        "capture_unix_ns=-1",
        "capture_unix_ns=1",
        "max_rate_hz=NaN",
        "max_rate_hz=inf",
        "max_rate_hz=-1",
        "max_rate_hz=0.000000000000000000000000000001",
        "max_rate_hz=0.000000000000000000000000000000000000011754944",
    ];
    for case in must_refuse {
        assert!(
            answers.iter().any(|(c, _)| c == case),
            "{case} was not tried"
        );
        assert!(refused.contains(&case), "{case} was accepted");
    }
    for accepted in [
        "conf_threshold=0",
        "intrinsics.cx=0",
        "client_frame_id=18446744073709551615",
        "max_rate_hz=0",
        "max_rate_hz=340282350000000000000000000000000000000",
    ] {
        assert!(!refused.contains(&accepted), "{accepted} was refused");
    }

    let ok = c.push_image(good_push()).await.unwrap().into_inner();
    assert_eq!(hands_of(&ok.events[0]).len(), 1);
    d.stop().await;
}

/// An image whose aspect ratio no route can use is refused before any
/// stage runs; so is a box list over `[hands] max_hands`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strips_and_box_floods_are_refused_before_they_cost_anything() {
    let d = Daemon::start(ServeOptions::default(), None).await;
    d.wait_serving().await;
    let mut c = d.client().await;

    // The 5 KB PNG that held the inference thread for 95 s.
    let mut strip = Vec::new();
    image::codecs::png::PngEncoder::new(&mut strip)
        .write_image(
            &vec![128; 65535 * 3],
            65535,
            1,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    let s = c.push_image(push(strip, vec![], true)).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(
        s.message().contains("server.max_image_aspect_ratio"),
        "{}",
        s.message()
    );

    let boxes = |n: usize| -> Vec<proto::HandBox> {
        (0..n)
            .map(|i| {
                let x = 10.0 * i as f32;
                hand_box(x, 10., x + 30., 40., i % 2 == 0)
            })
            .collect()
    };
    // [hands] max_hands is 4 by default.
    for flood in [5, 1000] {
        let req = proto::PushImageRequest {
            hand_options: good_push().hand_options,
            ..push(jpeg(160, 120), boxes(flood), true)
        };
        let s = c.push_image(req).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            format!("{flood} hand_boxes: at most 4 per image ([hands] max_hands)")
        );
    }
    let four = proto::PushImageRequest {
        hand_options: good_push().hand_options,
        ..push(jpeg(160, 120), boxes(4), true)
    };
    let ok = c.push_image(four).await.unwrap().into_inner();
    assert_eq!(hands_of(&ok.events[0]).len(), 4);
    d.stop().await;
}

/// A frame still running after `max_frame` is abandoned at its next stage
/// with DEADLINE_EXCEEDED; the thread takes the next frame, and health does
/// not flap for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_its_deadline_is_abandoned_and_the_next_one_runs() {
    let limits = EngineLimits {
        max_frame: Some(Duration::from_millis(1)),
        ..Default::default()
    };
    let d = Daemon::start_limited(ServeOptions::default(), limits, None, vec![], &[]).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    for _ in 0..2 {
        let s = c
            .push_image(push(jpeg(320, 240), vec![], true))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::DeadlineExceeded, "{}", s.message());
        assert!(
            s.message().contains("over its 1 ms limit"),
            "{}",
            s.message()
        );
    }
    let mut health = HealthClient::new(d.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: posed::server::SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    d.stop().await;
}

/// A raw 1080p frame (6 MiB) fits the message limit the pixel cap sets;
/// a JPEG cut after its header is refused, not decoded as grey.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_1080p_fits_and_a_cut_jpeg_is_refused() {
    let d = Daemon::start(ServeOptions::default(), None).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let raw = proto::PushImageRequest {
        image: Some(Image::RawRgb(proto::RawImage {
            width: 1920,
            height: 1080,
            data: vec![90; 1920 * 1080 * 3],
        })),
        hand_boxes: vec![hand_box(800., 400., 1000., 600., true)],
        hand_options: good_push().hand_options,
        wait: true,
        ..Default::default()
    };
    let ok = c.push_image(raw).await.unwrap().into_inner();
    assert_eq!(ok.events[0].image_width, 1920);

    let full = jpeg(320, 240);
    let cut = full[..full.len() * 2 / 3].to_vec();
    let s = c.push_image(push(cut, vec![], true)).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("ends before the image does"),
        "{}",
        s.message()
    );
    d.stop().await;
}

/// Subscribing to a route that is off, or to a daemon source that is not
/// running, is answered at once; a source a push may still bring is
/// accepted, and the stream's first headers say it waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_to_what_cannot_come_are_answered_at_once() {
    let d = Daemon::start(ServeOptions::default(), None).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let answer = |routes: Vec<i32>, sources: Vec<&str>| proto::SubscribeRequest {
        routes,
        source_ids: sources.into_iter().map(String::from).collect(),
        ..Default::default()
    };
    let s = c
        .subscribe(answer(vec![proto::Route::Body as i32], vec![]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(s.message().contains("body"), "{}", s.message());
    let s = c
        .subscribe(answer(vec![], vec!["camera"]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{}", s.message());

    let waiting = c
        .subscribe(answer(vec![], vec!["ipad", "camera2"]))
        .await
        .unwrap();
    let note = waiting
        .metadata()
        .get(posed::server::WAITING_FOR_SOURCES)
        .unwrap();
    assert_eq!(note.to_str().unwrap(), "ipad,camera2");
    let mut events = waiting.into_inner();
    let from_ipad = proto::PushImageRequest {
        source_id: "ipad".into(),
        ..good_push()
    };
    c.push_image(from_ipad).await.unwrap();
    assert_eq!(next(&mut events).await.source_id, "ipad");
    // Heard from now: no note.
    let heard = c.subscribe(answer(vec![], vec!["ipad"])).await.unwrap();
    assert!(heard
        .metadata()
        .get(posed::server::WAITING_FOR_SOURCES)
        .is_none());
    d.stop().await;
}

/// A subscriber that falls behind loses its oldest events; each loss is
/// counted in the route's `fanout` stage and told to that subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_is_counted_in_the_fanout_drops() {
    let options = ServeOptions {
        subscriber_queue: 1,
        ..Default::default()
    };
    let d = Daemon::start(options, None).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    // A small HTTP/2 window: the server's writer blocks after a few events
    // with vertices while this client does not read.
    let slow_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", d.addr))
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let mut slow = proto::pose_service_client::PoseServiceClient::new(slow_channel)
        .subscribe(proto::SubscribeRequest {
            include_vertices: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let pushed = 30;
    for _ in 0..pushed {
        // Full hands (with vertices, ~10 KB an event), not detector-only.
        let req = push(jpeg(64, 48), vec![hand_box(10., 10., 40., 40., true)], true);
        c.push_image(req).await.unwrap();
    }
    let mut told = 0;
    let mut received = 0;
    while received + told < pushed {
        let e = next(&mut slow).await;
        told += e.dropped_for_subscriber;
        received += 1;
    }
    assert!(told > 0, "the slow subscriber lost nothing");
    let telemetry = c
        .get_telemetry(proto::GetTelemetryRequest::default())
        .await
        .unwrap()
        .into_inner();
    let fanout = telemetry
        .stages
        .iter()
        .find(|s| s.name == "hands.fanout")
        .expect("a hands.fanout stage");
    assert_eq!(fanout.dropped, told);
    d.stop().await;
}

/// On shutdown health turns NOT_SERVING, then Watch ends with UNAVAILABLE,
/// and the daemon is out without waiting its (here long) deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watch_ends_with_unavailable_and_shutdown_does_not_wait_its_deadline() {
    let options = ServeOptions {
        shutdown_deadline: Duration::from_secs(30),
        ..Default::default()
    };
    let d = Daemon::start(options, None).await;
    d.wait_serving().await;
    let mut health = HealthClient::new(d.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: posed::server::SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let took = d.stop().await;
    assert!(
        took < Duration::from_secs(30),
        "the shutdown waited its deadline"
    );
    let mut seen = Vec::new();
    let end = loop {
        match watch.message().await {
            Ok(Some(r)) => seen.push(r.status),
            other => break other,
        }
    };
    assert_eq!(seen, vec![ServingStatus::NotServing as i32]);
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("shutting down"));
}

/// A client frozen with SIGSTOP still has its TCP connection (the kernel
/// answers for it) but not its HTTP/2 pings: its stream is dropped once a
/// ping goes unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_subscriber_is_dropped_by_keepalive() {
    let options = ServeOptions {
        keepalive: Some(Keepalive {
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(500),
        }),
        ..Default::default()
    };
    let d = Daemon::start(options, None).await;
    d.wait_serving().await;
    let mut c = d.client().await;
    let subscribers = |c: &mut proto::pose_service_client::PoseServiceClient<_>| {
        let mut c = c.clone();
        async move {
            c.get_status(proto::GetStatusRequest::default())
                .await
                .unwrap()
                .into_inner()
                .subscribers
        }
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_posed"))
        .args(["subscribe", "--addr", &d.addr.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let until = |want: u32, within: Duration| {
        let mut c = c.clone();
        async move {
            let deadline = Instant::now() + within;
            loop {
                let n = subscribers(&mut c).await;
                if n == want {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(until(1, Duration::from_secs(30)).await, "never subscribed");
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let dropped = until(0, Duration::from_secs(20)).await;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait();
    assert!(dropped, "the frozen subscriber's stream was never dropped");
    // Everyone else is served.
    c.push_image(good_push()).await.unwrap();
    d.stop().await;
}

/// Pushes may not pose as the daemon's own sources; over TCP with a token
/// set, a call without the right `authorization` is refused, while the
/// Unix socket (guarded by its file mode) needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_needs_the_token_and_pushes_cannot_pose_as_the_camera() {
    let token = "s3cret-token-for-tests";
    let options = ServeOptions {
        tcp_token: Some(BearerToken::new(token).unwrap()),
        ..Default::default()
    };
    let d = Daemon::start(options, None).await;
    wait_serving_over(d.unix_channel().await).await;
    let mut plain = d.client().await;
    let s = plain
        .get_status(proto::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{}", s.message());
    let mut wrong = tonic::Request::new(proto::GetStatusRequest::default());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer guess-guess-guess".parse().unwrap());
    let s = plain.get_status(wrong).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let mut right = tonic::Request::new(proto::GetStatusRequest::default());
    right
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    plain.get_status(right).await.unwrap();

    let mut local = d.unix_client().await;
    local
        .get_status(proto::GetStatusRequest::default())
        .await
        .unwrap();
    for name in ["camera", "replay"] {
        let s = local
            .push_image(proto::PushImageRequest {
                source_id: name.into(),
                ..good_push()
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());
    }
    d.stop().await;
}

use image::ImageEncoder;
