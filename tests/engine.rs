//! The MLX thread with the real hand models (fixture weights): it loads and
//! warms before reporting ready, answers waiting pushes, and survives a
//! failing frame and a failing load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use posed::engine::{Engine, EngineError, Frame, FrameJob, Models, Readiness, RouteResult};
use posed::proto::Route;
use posed_models::body_pipeline::{BodyModelFiles, BodyPipeline};
use posed_models::hand_pipeline::{HandBox, HandModelFiles, HandPipeline};
use tokio::sync::{mpsc, oneshot};

fn files() -> HandModelFiles {
    HandModelFiles::from_dir(&posed_models::fixture::fixtures_dir().join("hands")).unwrap()
}

fn frame(id: u64, width: usize, height: usize) -> Arc<Frame> {
    Arc::new(Frame {
        id,
        source_id: "test".into(),
        client_frame_id: id,
        captured: SystemTime::now(),
        received: Instant::now(),
        width,
        height,
        rgb: (0..width * height * 3)
            .map(|i| (i * 31 % 251) as u8)
            .collect(),
    })
}

async fn wait_ready(engine: &Engine) -> Readiness {
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
    let engine = Engine::start(move || Ok(HandPipeline::load(&files)?.0), tx, 4, 4);
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
            hand_boxes: Some(vec![hand]),
            ..FrameJob::new(frame(7, 200, 160), Some(reply))
        })
        .unwrap();
    // Post-processing answers the reply; here the test plays that part.
    let out = rx.recv().await.unwrap();
    let result = out.hands().unwrap().clone();
    assert_eq!(result.frame.id, 7);
    assert_eq!(result.hands.len(), 1);
    assert_eq!(result.hands[0].keypoints_3d.len(), 21);
    let stages: Vec<_> = result.timings.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        stages,
        ["crop", "pose", "mano"],
        "client boxes skip the detector"
    );
    let event = posed::post::hands_event(&result, &[1], false, std::time::Duration::ZERO);
    out.reply.unwrap().send(Ok(vec![event])).unwrap();
    assert_eq!(answer.await.unwrap().unwrap()[0].frame_id, 7);

    // A frame the route cannot take is an error for that frame only.
    let mut bad = Frame {
        ..Arc::try_unwrap(frame(8, 10, 10)).unwrap()
    };
    bad.rgb.truncate(5);
    engine.submit(FrameJob::new(Arc::new(bad), None)).unwrap();
    let out = rx.recv().await.unwrap();
    assert!(
        matches!(out.hands(), Err(EngineError::Route { frame: 8, .. })),
        "{:?}",
        out.hands().err()
    );
    assert!(matches!(*engine.readiness().borrow(), Readiness::Failed(_)));

    // ...and the next good frame brings the route back.
    engine
        .submit(FrameJob::new(frame(9, 64, 48), None))
        .unwrap();
    let out = rx.recv().await.unwrap();
    let result = out.hands().unwrap();
    assert_eq!(result.frame.id, 9);
    assert_eq!(result.timings[0].0, "preprocess");
    assert_eq!(*engine.readiness().borrow(), Readiness::Serving);
    engine.shutdown();
}

#[tokio::test]
async fn a_failed_load_is_reported_and_every_frame_answered() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut files = files();
    files.wilor_weights = PathBuf::from("/nonexistent/wilor.safetensors");
    let engine = Engine::start(move || Ok(HandPipeline::load(&files)?.0), tx, 4, 4);
    match wait_ready(&engine).await {
        Readiness::Failed(msg) => assert!(msg.contains("/nonexistent/wilor.safetensors"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let (reply, answer) = oneshot::channel();
    engine
        .submit(FrameJob::new(frame(1, 8, 8), Some(reply)))
        .unwrap();
    let out = rx.recv().await.unwrap();
    let Err(err) = out.hands() else {
        panic!("loaded without weights")
    };
    assert!(matches!(err, EngineError::Load(_)));
    out.reply.unwrap().send(Err(err)).unwrap();
    assert!(answer.await.unwrap().is_err());
}

/// Boxes the server rejects (NaN, absurdly large) still cannot crash the
/// MLX thread when they reach it: no NaN-driven gather out of bounds, no
/// overflow; the route keeps serving.
#[tokio::test]
async fn degenerate_boxes_do_not_crash_the_route() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let files = files();
    let engine = Engine::start(move || Ok(HandPipeline::load(&files)?.0), tx, 4, 4);
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
                hand_boxes: Some(vec![HandBox {
                    bbox,
                    is_right: true,
                    score: 1.0,
                    keypoints_2d: vec![],
                }]),
                ..FrameJob::new(frame(id as u64, 64, 48), None)
            })
            .unwrap();
        let out = rx.recv().await.unwrap();
        assert_eq!(out.hands().unwrap().hands.len(), 1, "{bbox:?}");
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
    let body_dir = posed_models::fixture::fixtures_dir().join("body");
    let body_files = BodyModelFiles::from_dir(&body_dir).unwrap();
    let engine = Engine::start(
        move || {
            Ok(Models {
                hands: Some(HandPipeline::load(&hand_files)?.0),
                body: Some(BodyPipeline::load(&body_files, None)?.0),
                matte: None,
            })
        },
        tx,
        4,
        4,
    );
    assert_eq!(wait_ready(&engine).await, Readiness::Serving);

    engine
        .submit(FrameJob {
            routes: vec![Route::Body, Route::Hands],
            person_boxes: Some(vec![[20.0, 10.0, 90.0, 150.0], [100.0, 20.0, 180.0, 150.0]]),
            ..FrameJob::new(frame(1, 200, 160), None)
        })
        .unwrap();
    let out = rx.recv().await.unwrap();
    let routes: Vec<Route> = out.results.iter().map(|(r, _)| *r).collect();
    assert_eq!(routes, [Route::Body, Route::Hands]);
    let Ok(RouteResult::Body(body)) = &out.results[0].1 else {
        panic!("{:?}", out.results[0].1)
    };
    assert_eq!(body.people.len(), 2);
    for p in &body.people {
        assert_eq!(p.keypoints.len(), 308);
        assert_eq!(p.keypoint_scores.len(), 308);
        assert_eq!(p.score, 1.0);
        assert!(p.keypoints.iter().flatten().all(|v| v.is_finite()));
    }
    assert_eq!(body.people[0].bbox, [20.0, 10.0, 90.0, 150.0]);
    let stages: Vec<_> = body.timings.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        stages,
        ["crop", "pose", "keypoints"],
        "client boxes skip the detector"
    );
    assert!(out.hands().is_ok());

    // No boxes: the person detector runs first.
    engine
        .submit(FrameJob {
            routes: vec![Route::Body],
            ..FrameJob::new(frame(2, 200, 160), None)
        })
        .unwrap();
    let out = rx.recv().await.unwrap();
    let Ok(RouteResult::Body(body)) = &out.results[0].1 else {
        panic!("{:?}", out.results[0].1)
    };
    assert!(!body.people.is_empty());
    assert!(body.people.len() <= 4);
    let stages: Vec<_> = body.timings.iter().map(|(s, _)| *s).collect();
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
    let engine = Engine::start(move || Ok(HandPipeline::load(&files)?.0), tx, 4, 4);
    assert_eq!(wait_ready(&engine).await, Readiness::Serving);
    engine
        .submit(FrameJob {
            routes: vec![Route::Hands, Route::Body],
            ..FrameJob::new(frame(3, 64, 48), None)
        })
        .unwrap();
    let out = rx.recv().await.unwrap();
    assert!(out.hands().is_ok());
    assert!(matches!(out.results[1].1, Err(EngineError::NotEnabled(_))));
    assert_eq!(*engine.readiness().borrow(), Readiness::Serving);
    engine.shutdown();
}
