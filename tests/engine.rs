//! The MLX thread with the real hand models (fixture weights): it loads and
//! warms before reporting ready, answers waiting pushes, and survives a
//! failing frame and a failing load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use posed::engine::{Engine, EngineError, Frame, FrameJob, Readiness};
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
            frame: frame(7, 200, 160),
            hand_boxes: Some(vec![hand]),
            reply: Some(reply),
        })
        .unwrap();
    // Post-processing answers the reply; here the test plays that part.
    let out = rx.recv().await.unwrap();
    let result = out.result.clone().unwrap();
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
    out.reply.unwrap().send(Ok(event)).unwrap();
    assert_eq!(answer.await.unwrap().unwrap().frame_id, 7);

    // A frame the route cannot take is an error for that frame only.
    let mut bad = Frame {
        ..Arc::try_unwrap(frame(8, 10, 10)).unwrap()
    };
    bad.rgb.truncate(5);
    engine
        .submit(FrameJob {
            frame: Arc::new(bad),
            hand_boxes: None,
            reply: None,
        })
        .unwrap();
    let out = rx.recv().await.unwrap();
    assert!(
        matches!(out.result, Err(EngineError::Route { frame: 8, .. })),
        "{:?}",
        out.result.err()
    );
    assert!(matches!(*engine.readiness().borrow(), Readiness::Failed(_)));

    // ...and the next good frame brings the route back.
    engine
        .submit(FrameJob {
            frame: frame(9, 64, 48),
            hand_boxes: None,
            reply: None,
        })
        .unwrap();
    let out = rx.recv().await.unwrap();
    let result = out.result.unwrap();
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
        .submit(FrameJob {
            frame: frame(1, 8, 8),
            hand_boxes: None,
            reply: Some(reply),
        })
        .unwrap();
    let out = rx.recv().await.unwrap();
    let Err(err) = out.result else {
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
                frame: frame(id as u64, 64, 48),
                hand_boxes: Some(vec![HandBox {
                    bbox,
                    is_right: true,
                    score: 1.0,
                    keypoints_2d: vec![],
                }]),
                reply: None,
            })
            .unwrap();
        let out = rx.recv().await.unwrap();
        assert_eq!(out.result.unwrap().hands.len(), 1, "{bbox:?}");
    }
    assert_eq!(*engine.readiness().borrow(), Readiness::Serving);
    engine.shutdown();
}
