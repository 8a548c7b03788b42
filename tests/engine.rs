//! The MLX thread with the real hand models (fixture weights): it loads and
//! warms before reporting ready, answers waiting pushes, and survives a
//! failing frame and a failing load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use posed::engine::{Engine, EngineError, EngineLimits, Frame, FrameJob, Readiness};
use posed::routes::body::{BodyRequest, BodyRoute};
use posed::routes::hands::{HandsRequest, HandsRoute};
use posed::routes::{RouteId, RouteRequest, RouteSet};
use posed_models::body_pipeline::{BodyModelFiles, BodyPipeline};
use posed_models::hand_pipeline::{HandBox, HandModelFiles, HandPipeline};
use tokio::sync::{mpsc, oneshot};

/// A waiting caller as the tests play it: the answer is a string.
type Reply = oneshot::Sender<Result<String, EngineError>>;
type TestEngine = Engine<Reply>;

/// The hand route on the fixture weights, on the MLX thread.
fn hand_engine(
    files: HandModelFiles,
    tx: mpsc::UnboundedSender<posed::engine::EngineOutput<Reply>>,
) -> TestEngine {
    TestEngine::start(
        vec![RouteId::Hands],
        move || {
            Ok(RouteSet::default().with(HandsRoute::new(
                HandPipeline::load(&files)?.0,
                posed::routes::hands::HandSettings::from_config(&Default::default()),
                Default::default(),
            )))
        },
        tx,
        EngineLimits {
            max_waiting: 4,
            ..Default::default()
        },
    )
}

fn with_hand_boxes(boxes: Vec<HandBox>) -> RouteRequest {
    RouteRequest::new::<HandsRoute>(HandsRequest::with_boxes(boxes))
}

fn files() -> HandModelFiles {
    HandModelFiles::from_dir(&posed_models::parity::fixtures_dir().join("hands")).unwrap()
}

fn frame(id: u64, width: usize, height: usize) -> Arc<Frame> {
    Arc::new(Frame {
        id,
        source_id: "test".into(),
        client_frame_id: id,
        captured: SystemTime::now(),
        received: Instant::now(),
        stream: None,
        width,
        height,
        rgb: (0..width * height * 3)
            .map(|i| (i * 31 % 251) as u8)
            .collect(),
        intrinsics: None,
    })
}

async fn wait_ready(engine: &TestEngine) -> Readiness {
    let mut r = engine.readiness();
    loop {
        let now = r.borrow_and_update().clone();
        if now != Readiness::Loading {
            return now;
        }
        r.changed().await.unwrap();
    }
}

#[tokio::test]
async fn serves_after_warm_up_and_answers_waiting_pushes() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let files = files();
    let engine = hand_engine(files, tx);
    assert_eq!(wait_ready(&engine).await, Readiness::Serving);

    let (reply, answer) = oneshot::channel();
    let hand = HandBox {
        bbox: [40.0, 40.0, 100.0, 110.0],
        is_right: false,
        score: 1.0,
        keypoints_2d: vec![],
    };
    engine
        .submit(FrameJob {
            requests: vec![with_hand_boxes(vec![hand])],
            ..FrameJob::new(frame(7, 200, 160), Some(reply))
        })
        .unwrap();
    // Post-processing answers the reply; here the test plays that part.
    let out = rx.recv().await.unwrap();
    let result = out.result(RouteId::Hands).unwrap();
    let hands = &result.get::<HandsRoute>().unwrap().hands;
    assert_eq!(out.frame.id, 7);
    assert_eq!(hands.len(), 1);
    assert_eq!(hands[0].pose.as_ref().unwrap().keypoints_3d.len(), 21);
    let stages: Vec<_> = result.timings.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        stages,
        ["crop", "pose", "mano"],
        "client boxes skip the detector"
    );
    out.waiter
        .unwrap()
        .send(Ok(format!("frame {}", out.frame.id)))
        .unwrap();
    assert_eq!(answer.await.unwrap().unwrap(), "frame 7");

    // A frame the route cannot take is an error for that frame only.
    let mut bad = Frame {
        ..Arc::try_unwrap(frame(8, 10, 10)).unwrap()
    };
    bad.rgb.truncate(5);
    engine.submit(FrameJob::new(Arc::new(bad), None)).unwrap();
    let out = rx.recv().await.unwrap();
    assert!(
        matches!(
            out.result(RouteId::Hands),
            Err(EngineError::Route { frame: 8, .. })
        ),
        "{:?}",
        out.result(RouteId::Hands).err()
    );
    assert!(matches!(*engine.readiness().borrow(), Readiness::Failed(_)));

    // ...and the next good frame brings the route back.
    engine
        .submit(FrameJob::new(frame(9, 64, 48), None))
        .unwrap();
    let out = rx.recv().await.unwrap();
    let result = out.result(RouteId::Hands).unwrap();
    assert_eq!(out.frame.id, 9);
    assert_eq!(result.timings[0].0, "preprocess");
    assert_eq!(*engine.readiness().borrow(), Readiness::Serving);
    engine.shutdown();
}

#[tokio::test]
async fn a_failed_load_is_reported_and_every_frame_answered() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut files = files();
    files.wilor_weights = PathBuf::from("/nonexistent/wilor.safetensors");
    let engine = hand_engine(files, tx);
    match wait_ready(&engine).await {
        Readiness::Failed(msg) => assert!(msg.contains("/nonexistent/wilor.safetensors"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let (reply, answer) = oneshot::channel();
    engine
        .submit(FrameJob::new(frame(1, 8, 8), Some(reply)))
        .unwrap();
    let out = rx.recv().await.unwrap();
    let Err(err) = out.result(RouteId::Hands) else {
        panic!("loaded without weights")
    };
    assert!(matches!(err, EngineError::Load(_)));
    out.waiter.unwrap().send(Err(err)).unwrap();
    assert!(answer.await.unwrap().is_err());
}

/// Boxes the server rejects (NaN, absurdly large) still cannot crash the
/// MLX thread when they reach it: no NaN-driven gather out of bounds, no
/// overflow; the route keeps serving.
#[tokio::test]
async fn degenerate_boxes_do_not_crash_the_route() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let files = files();
    let engine = hand_engine(files, tx);
    assert_eq!(wait_ready(&engine).await, Readiness::Serving);
    for (id, bbox) in [
        [f32::NAN, 0.0, 10.0, 10.0],
        [0.0, 0.0, 1e30, 1e30],
        [f32::NEG_INFINITY, 0.0, f32::INFINITY, 5.0],
        [-1e9, -1e9, -1e9 + 1.0, -1e9 + 1.0],
    ]
    .into_iter()
    .enumerate()
    {
        engine
            .submit(FrameJob {
                requests: vec![with_hand_boxes(vec![HandBox {
                    bbox,
                    is_right: true,
                    score: 1.0,
                    keypoints_2d: vec![],
                }])],
                ..FrameJob::new(frame(id as u64, 64, 48), None)
            })
            .unwrap();
        let out = rx.recv().await.unwrap();
        let hands = &out
            .result(RouteId::Hands)
            .unwrap()
            .get::<HandsRoute>()
            .unwrap()
            .hands;
        assert_eq!(hands.len(), 1, "{bbox:?}");
    }
    assert_eq!(*engine.readiness().borrow(), Readiness::Serving);
    engine.shutdown();
}

/// Both routes on one MLX thread (fixture-size networks): a frame asks for
/// them in order; client person boxes skip the person detector; without
/// boxes the detector runs (and falls back to the whole image); a frame for
/// a route that is not loaded gets an error for that route only.
#[tokio::test]
async fn the_body_route_runs_beside_the_hand_route() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hand_files = files();
    let body_dir = posed_models::parity::fixtures_dir().join("body");
    let body_files = BodyModelFiles::from_dir(&body_dir).unwrap();
    let engine = TestEngine::start(
        vec![RouteId::Hands, RouteId::Body],
        move || {
            Ok(RouteSet::default()
                .with(HandsRoute::new(
                    HandPipeline::load(&hand_files)?.0,
                    posed::routes::hands::HandSettings::from_config(&Default::default()),
                    Default::default(),
                ))
                .with(BodyRoute::new(BodyPipeline::load(&body_files, None)?.0)))
        },
        tx,
        EngineLimits {
            max_waiting: 4,
            ..Default::default()
        },
    );
    assert_eq!(wait_ready(&engine).await, Readiness::Serving);

    engine
        .submit(FrameJob {
            routes: vec![RouteId::Body, RouteId::Hands],
            requests: vec![RouteRequest::new::<BodyRoute>(BodyRequest {
                boxes: Some(vec![[20.0, 10.0, 90.0, 150.0], [100.0, 20.0, 180.0, 150.0]]),
                time_detector: false,
            })],
            ..FrameJob::new(frame(1, 200, 160), None)
        })
        .unwrap();
    let out = rx.recv().await.unwrap();
    let routes: Vec<RouteId> = out.results.iter().map(|(r, _)| *r).collect();
    assert_eq!(routes, [RouteId::Body, RouteId::Hands]);
    let Ok(output) = &out.results[0].1 else {
        panic!("{:?}", out.results[0].1)
    };
    let body = output.get::<BodyRoute>().unwrap();
    assert_eq!(body.people.len(), 2);
    for p in &body.people {
        assert_eq!(p.keypoints.len(), 308);
        assert_eq!(p.keypoint_scores.len(), 308);
        assert_eq!(p.score, 1.0);
        assert!(p.keypoints.iter().flatten().all(|v| v.is_finite()));
    }
    assert_eq!(body.people[0].bbox, [20.0, 10.0, 90.0, 150.0]);
    let stages: Vec<_> = output.timings.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        stages,
        ["crop", "pose", "keypoints"],
        "client boxes skip the detector"
    );
    assert!(out.result(RouteId::Hands).is_ok());

    // No boxes: the person detector runs first.
    engine
        .submit(FrameJob {
            routes: vec![RouteId::Body],
            ..FrameJob::new(frame(2, 200, 160), None)
        })
        .unwrap();
    let out = rx.recv().await.unwrap();
    let Ok(output) = &out.results[0].1 else {
        panic!("{:?}", out.results[0].1)
    };
    let body = output.get::<BodyRoute>().unwrap();
    assert!(!body.people.is_empty());
    assert!(body.people.len() <= 4);
    let stages: Vec<_> = output.timings.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        stages,
        ["preprocess", "detect", "crop", "pose", "keypoints"]
    );
    engine.shutdown();
}

#[tokio::test]
async fn a_route_without_models_is_refused_for_that_route_only() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let files = files();
    let engine = hand_engine(files, tx);
    assert_eq!(wait_ready(&engine).await, Readiness::Serving);
    engine
        .submit(FrameJob {
            routes: vec![RouteId::Hands, RouteId::Body],
            ..FrameJob::new(frame(3, 64, 48), None)
        })
        .unwrap();
    let out = rx.recv().await.unwrap();
    assert!(out.result(RouteId::Hands).is_ok());
    assert!(matches!(out.results[1].1, Err(EngineError::NotEnabled(_))));
    assert_eq!(*engine.readiness().borrow(), Readiness::Serving);
    engine.shutdown();
}
