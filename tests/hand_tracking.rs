//! The hand route's per-frame policy (`hands_of_frame`) on scripted model
//! stages: a scene of true hands that a stand-in detector sees and a
//! stand-in WiLoR finds wherever its crop holds them. No model runs: the
//! tests check when the detector runs or is skipped, which ids and sides
//! the hands get, and what ends.

use std::time::{Duration, Instant};

use posed::config::HandsConfig;
use posed::engine::StreamId;
use posed::routes::hands::{
    hands_of_frame, stage, FrameFacts, HandOrigin, HandOverrides, HandSettings, HandStages,
    HandsRequest,
};
use posed::routes::{RouteError, StageClock};
use posed::tracking::hands::StreamTracks;
use posed_models::camera::Intrinsics;
use posed_models::hand_pipeline::{HandBox, HandEstimate, BOX_EXPAND};

/// WiLoR's answer for one crop: only the projected keypoints matter here.
fn est(bbox: [f32; 4], is_right: bool, keypoints: Vec<[f32; 2]>) -> HandEstimate {
    HandEstimate {
        hand: HandBox {
            bbox,
            is_right,
            score: 0.9,
            keypoints_2d: vec![],
        },
        keypoints_3d: vec![],
        vertices: vec![],
        cam_t: [0.0, 0.0, 1.0],
        keypoints_2d_projected: keypoints,
        global_orient: [0.0; 3],
        hand_pose: vec![],
        betas: vec![],
        crop_cam: [1.0, 0.0, 0.0],
        camera: Intrinsics::pseudo(5000.0, 256.0, 640.0, 480.0),
    }
}

/// A hand of the scripted scene: where its 21 keypoints truly are.
#[derive(Debug, Clone, Copy)]
struct TrueHand {
    x: f32,
    y: f32,
    size: f32,
    is_right: bool,
}

impl TrueHand {
    fn at(x: f32, y: f32, is_right: bool) -> TrueHand {
        TrueHand {
            x,
            y,
            size: 60.0,
            is_right,
        }
    }

    fn keypoints(&self) -> Vec<[f32; 2]> {
        (0..21)
            .map(|i| {
                let t = i as f32 / 20.0;
                let u = (i * 8 % 21) as f32 / 20.0;
                [self.x + t * self.size, self.y + u * self.size]
            })
            .collect()
    }

    fn centre(&self) -> [f32; 2] {
        let h = self.size * 0.5;
        [self.x + h, self.y + h]
    }

    /// What a detector draws: wider than the joints, and lower.
    fn detector_box(&self) -> [f32; 4] {
        let s = self.size;
        [
            self.x - 0.15 * s,
            self.y - 0.1 * s,
            self.x + 1.15 * s,
            self.y + 1.3 * s,
        ]
    }
}

/// Scripted model stages: each frame's true hands; the detector sees
/// them (except where told to miss one, or to call it the other side),
/// and "WiLoR" finds the true hand nearest its crop's centre if the
/// crop holds it, else makes up a small hand in the crop's corner (what
/// a crop without a hand gives).
#[derive(Default)]
struct Scene {
    frames: Vec<Vec<TrueHand>>,
    now: usize,
    /// (frame, hand) the detector misses.
    misses: Vec<(usize, usize)>,
    /// (frame, hand) the detector calls the other side.
    flips: Vec<(usize, usize)>,
    detector_runs: usize,
}

impl HandStages for Scene {
    fn detect(
        &mut self,
        settings: &HandSettings,
        clock: &mut StageClock,
    ) -> Result<Vec<HandBox>, RouteError> {
        self.detector_runs += 1;
        clock.mark(stage::DETECT)?;
        let now = self.now;
        Ok(self.frames[now]
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.misses.contains(&(now, *i)))
            .map(|(i, h)| HandBox {
                bbox: h.detector_box(),
                is_right: h.is_right != self.flips.contains(&(now, i)),
                score: 0.9,
                keypoints_2d: vec![],
            })
            .take(settings.max_hands)
            .collect())
    }

    fn pose(
        &mut self,
        hands: &[HandBox],
        clock: &mut StageClock,
    ) -> Result<Vec<HandEstimate>, RouteError> {
        clock.mark(stage::POSE)?;
        Ok(hands
            .iter()
            .map(|h| {
                let [x1, y1, x2, y2] = h.bbox;
                let c = [(x1 + x2) * 0.5, (y1 + y2) * 0.5];
                let half = 0.5 * BOX_EXPAND * (x2 - x1).max(y2 - y1);
                let dist = |t: &TrueHand| {
                    let [x, y] = t.centre();
                    (x - c[0]).abs().max((y - c[1]).abs())
                };
                let inside = self.frames[self.now]
                    .iter()
                    .filter(|t| dist(t) + 0.5 * t.size <= half)
                    .min_by(|a, b| dist(a).total_cmp(&dist(b)));
                let keypoints = match inside {
                    Some(t) => t.keypoints(),
                    None => TrueHand {
                        x: c[0] - half,
                        y: c[1] - half,
                        size: 0.2 * half,
                        is_right: true,
                    }
                    .keypoints(),
                };
                est(h.bbox, h.is_right, keypoints)
            })
            .collect())
    }
}

fn settings() -> HandSettings {
    HandSettings::from_config(&HandsConfig::default())
}

/// One frame's outcome, as the event would say it.
#[derive(Debug)]
struct Seen {
    detector_ran: bool,
    hands: Vec<(u32, bool, HandOrigin)>,
    ended: Vec<u32>,
}

/// Runs every frame of the scene as one stream, 33 ms apart.
fn play(scene: &mut Scene, settings: &HandSettings) -> Vec<Seen> {
    let mut tracks = StreamTracks::default();
    play_on(&mut tracks, Some(StreamId::new()), scene, settings, |_| {
        HandsRequest::default()
    })
}

fn play_on(
    tracks: &mut StreamTracks,
    stream: Option<StreamId>,
    scene: &mut Scene,
    settings: &HandSettings,
    request: impl Fn(usize) -> HandsRequest,
) -> Vec<Seen> {
    let t0 = Instant::now();
    (0..scene.frames.len())
        .map(|i| {
            scene.now = i;
            let facts = FrameFacts {
                stream,
                received: t0 + Duration::from_millis(33) * u32::try_from(i).unwrap(),
                width: 640,
                height: 480,
            };
            let mut clock = StageClock::default();
            let (hands, ended, detector_ran) =
                hands_of_frame(tracks, facts, settings, &request(i), scene, &mut clock).unwrap();
            let stages: Vec<&str> = clock.into_timings().iter().map(|t| t.0).collect();
            assert_eq!(
                stages.contains(&stage::DETECT),
                detector_ran,
                "frame {i}: {stages:?}"
            );
            assert_eq!(stages.contains(&stage::TRACK), !detector_ran, "frame {i}");
            Seen {
                detector_ran,
                hands: hands
                    .iter()
                    .map(|h| (h.track.id, h.track.is_right, h.origin))
                    .collect(),
                ended,
            }
        })
        .collect()
}

fn detected_frames(seen: &[Seen]) -> Vec<usize> {
    seen.iter()
        .enumerate()
        .filter(|(_, s)| s.detector_ran)
        .map(|(i, _)| i)
        .collect()
}

/// One right hand drifting right 4 px a frame.
fn drifting(frames: usize) -> Vec<Vec<TrueHand>> {
    (0..frames)
        .map(|i| vec![TrueHand::at(100.0 + 4.0 * i as f32, 200.0, true)])
        .collect()
}

#[test]
fn followed_frames_skip_the_detector_until_the_interval_is_due() {
    let mut scene = Scene {
        frames: drifting(25),
        ..Scene::default()
    };
    let seen = play(&mut scene, &settings());
    assert_eq!(settings().redetect_interval, 10);
    assert_eq!(detected_frames(&seen), [0, 10, 20]);
    assert_eq!(scene.detector_runs, 3);
    for (i, s) in seen.iter().enumerate() {
        let origin = if i % 10 == 0 {
            HandOrigin::Detected
        } else {
            HandOrigin::Tracked
        };
        assert_eq!(s.hands, [(1, true, origin)], "frame {i}");
    }
}

#[test]
fn tracking_off_or_a_redetect_request_runs_the_detector() {
    let frames = drifting(6);
    let mut scene = Scene {
        frames: frames.clone(),
        ..Scene::default()
    };
    let off = HandSettings {
        tracking: false,
        ..settings()
    };
    let seen = play(&mut scene, &off);
    assert_eq!(detected_frames(&seen), [0, 1, 2, 3, 4, 5]);
    assert!(seen
        .iter()
        .all(|s| s.hands == [(1, true, HandOrigin::Detected)]));

    let mut scene = Scene {
        frames,
        ..Scene::default()
    };
    let mut tracks = StreamTracks::default();
    let seen = play_on(
        &mut tracks,
        Some(StreamId::new()),
        &mut scene,
        &settings(),
        |i| HandsRequest {
            overrides: HandOverrides {
                redetect: i == 3,
                ..HandOverrides::default()
            },
            ..HandsRequest::default()
        },
    );
    assert_eq!(detected_frames(&seen), [0, 3]);
}

#[test]
fn a_hand_lost_in_its_crop_is_dropped_and_the_next_frame_detects() {
    // The hand jumps 300 px between frames 4 and 5: frame 5's crop,
    // cut where it was, holds no hand.
    let mut frames = drifting(5);
    frames.extend((0..8).map(|_| vec![TrueHand::at(450.0, 200.0, true)]));
    let mut scene = Scene {
        frames,
        ..Scene::default()
    };
    let seen = play(&mut scene, &settings());
    assert!(!seen[5].detector_ran);
    assert!(seen[5].hands.is_empty(), "{:?}", seen[5]);
    assert!(seen[6].detector_ran);
    // Far from where track 1 was: a new hand. While track 1 coasts the
    // detector looks for it on every frame; once it ended, hand 2 is
    // followed.
    assert_eq!(seen[6].hands, [(2, true, HandOrigin::Detected)]);
    assert_eq!(detected_frames(&seen), [0, 6, 7, 8]);
    assert_eq!(seen[9].hands, [(2, true, HandOrigin::Tracked)]);
    let ended: Vec<(usize, &[u32])> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.ended.is_empty())
        .map(|(i, s)| (i, s.ended.as_slice()))
        .collect();
    // Missed on frames 5, 6, 7; max_coast_frames = 3 ends it on 8.
    assert_eq!(ended, [(8, &[1][..])]);
}

#[test]
fn a_new_hand_is_found_at_the_next_redetect() {
    let frames: Vec<Vec<TrueHand>> = (0..12)
        .map(|i| {
            let mut f = vec![TrueHand::at(100.0 + 2.0 * i as f32, 200.0, true)];
            if i >= 3 {
                f.push(TrueHand::at(400.0, 150.0, false));
            }
            f
        })
        .collect();
    let mut scene = Scene {
        frames,
        ..Scene::default()
    };
    let seen = play(&mut scene, &settings());
    assert_eq!(detected_frames(&seen), [0, 10]);
    assert_eq!(seen[9].hands.len(), 1);
    assert_eq!(
        seen[10].hands,
        [
            (1, true, HandOrigin::Detected),
            (2, false, HandOrigin::Detected)
        ]
    );
    assert_eq!(seen[11].hands.len(), 2);
}

#[test]
fn crossing_hands_keep_their_ids_whether_followed_or_detected() {
    // The right hand moves right and the left hand left, 12 px a frame,
    // through the same place.
    let frames: Vec<Vec<TrueHand>> = (0..30)
        .map(|i| {
            let x = 12.0 * i as f32;
            vec![
                TrueHand::at(100.0 + x, 200.0, true),
                TrueHand::at(450.0 - x, 210.0, false),
            ]
        })
        .collect();
    for tracking in [true, false] {
        let mut scene = Scene {
            frames: frames.clone(),
            ..Scene::default()
        };
        let s = HandSettings {
            tracking,
            ..settings()
        };
        for (i, seen) in play(&mut scene, &s).iter().enumerate() {
            let ids: Vec<(u32, bool)> = seen.hands.iter().map(|h| (h.0, h.1)).collect();
            assert_eq!(
                ids,
                [(1, true), (2, false)],
                "tracking {tracking}, frame {i}"
            );
        }
    }
}

#[test]
fn one_frame_class_flips_and_misses_change_neither_side_nor_id() {
    let mut scene = Scene {
        frames: drifting(12),
        misses: vec![(4, 0)],
        flips: vec![(2, 0), (7, 0)],
        ..Scene::default()
    };
    let every_frame = HandSettings {
        tracking: false,
        ..settings()
    };
    let seen = play(&mut scene, &every_frame);
    for (i, s) in seen.iter().enumerate() {
        let expected: &[(u32, bool, HandOrigin)] = if i == 4 {
            &[]
        } else {
            &[(1, true, HandOrigin::Detected)]
        };
        assert_eq!(s.hands, expected, "frame {i}");
        assert!(s.ended.is_empty());
    }
}

#[test]
fn streams_keep_their_own_tracks_and_a_single_image_uses_none() {
    let mut tracks = StreamTracks::default();
    let (a, b) = (Some(StreamId::new()), Some(StreamId::new()));
    let mut scene = Scene {
        frames: drifting(3),
        ..Scene::default()
    };
    let s = settings();
    let none = |_| HandsRequest::default();
    let on_a = play_on(&mut tracks, a, &mut scene, &s, none);
    let on_b = play_on(&mut tracks, b, &mut scene, &s, none);
    // b's first frame detects: a's hands are not b's.
    assert_eq!(detected_frames(&on_a), [0]);
    assert_eq!(detected_frames(&on_b), [0]);
    assert!(on_a.iter().all(|f| f.hands[0].0 == 1));
    assert!(on_b.iter().all(|f| f.hands[0].0 == 2));
    // Single images: every one detects, and each hand is new.
    let single = play_on(&mut tracks, None, &mut scene, &s, none);
    assert_eq!(detected_frames(&single), [0, 1, 2]);
    let ids: Vec<u32> = single.iter().map(|f| f.hands[0].0).collect();
    assert_eq!(ids, [3, 4, 5]);
}

#[test]
fn a_stream_that_pauses_detects_again_and_ends_its_old_tracks() {
    let mut scene = Scene {
        frames: drifting(5),
        ..Scene::default()
    };
    let mut tracks = StreamTracks::default();
    let stream = Some(StreamId::new());
    let t0 = Instant::now();
    let pause = tracks.settings.stale_after + Duration::from_millis(100);
    let mut seen = Vec::new();
    for i in 0..5u32 {
        scene.now = i as usize;
        let mut received = t0 + Duration::from_millis(33) * i;
        if i == 4 {
            received += pause;
        }
        let facts = FrameFacts {
            stream,
            received,
            width: 640,
            height: 480,
        };
        let (hands, ended, ran) = hands_of_frame(
            &mut tracks,
            facts,
            &settings(),
            &HandsRequest::default(),
            &mut scene,
            &mut StageClock::default(),
        )
        .unwrap();
        seen.push((ran, hands[0].track.id, ended));
    }
    assert_eq!(seen[3], (false, 1, vec![]));
    // Not followed from where it was two seconds ago: detected anew.
    assert_eq!(seen[4], (true, 2, vec![1]));
}

#[test]
fn a_push_that_lowers_max_hands_gets_the_strongest_from_the_detector() {
    let frames: Vec<Vec<TrueHand>> = (0..4)
        .map(|_| {
            vec![
                TrueHand::at(100.0, 200.0, true),
                TrueHand::at(400.0, 150.0, false),
            ]
        })
        .collect();
    let mut scene = Scene {
        frames,
        ..Scene::default()
    };
    let mut tracks = StreamTracks::default();
    let seen = play_on(
        &mut tracks,
        Some(StreamId::new()),
        &mut scene,
        &settings(),
        |i| HandsRequest {
            overrides: HandOverrides {
                max_hands: (i >= 2).then_some(1),
                ..HandOverrides::default()
            },
            ..HandsRequest::default()
        },
    );
    assert_eq!(seen[1].hands.len(), 2);
    assert!(!seen[1].detector_ran);
    assert!(seen[2].detector_ran, "two tracks, one allowed: detect");
    assert_eq!(seen[2].hands, [(1, true, HandOrigin::Detected)]);
}

#[test]
fn detector_only_frames_never_pose_and_never_follow() {
    let mut scene = Scene {
        frames: drifting(4),
        ..Scene::default()
    };
    let s = HandSettings {
        detector_only: true,
        ..settings()
    };
    let mut tracks = StreamTracks::default();
    let stream = Some(StreamId::new());
    let t0 = Instant::now();
    for i in 0..4u32 {
        scene.now = i as usize;
        let facts = FrameFacts {
            stream,
            received: t0 + Duration::from_millis(33) * i,
            width: 640,
            height: 480,
        };
        let (hands, _, ran) = hands_of_frame(
            &mut tracks,
            facts,
            &s,
            &HandsRequest::default(),
            &mut scene,
            &mut StageClock::default(),
        )
        .unwrap();
        assert!(ran);
        assert_eq!(hands.len(), 1);
        assert!(hands[0].pose.is_none());
        assert_eq!(hands[0].track.id, 1);
    }
    assert_eq!(scene.detector_runs, 4);
}
