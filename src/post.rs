//! Post-processing on the tokio side: stable track ids, mirroring for selfie
//! cameras, and the conversion of route results into `posed.v1` events.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use posed_models::hand_detector::iou;
use posed_models::hand_pipeline::HandEstimate;

use crate::decode::encode_png;
use crate::engine::{BodyResult, Frame, HandsResult, HintSource, MatteResult};
use crate::proto;

/// Boxes must overlap at least this much to continue a track.
const TRACK_IOU: f32 = 0.3;

/// Stable ids across frames of a source, by greedy IoU association with the
/// previous frame's boxes of the same class.
#[derive(Default)]
pub struct BoxTracker {
    next_id: u32,
    last: HashMap<String, Vec<(u32, [f32; 4], bool)>>,
}

impl BoxTracker {
    /// `boxes`: each box and its class (hands: right or not; people: one class).
    pub fn assign(&mut self, source: &str, boxes: &[([f32; 4], bool)]) -> Vec<u32> {
        let previous = self.last.remove(source).unwrap_or_default();
        let mut taken = vec![false; previous.len()];
        // Strongest overlaps first, so two boxes never fight over one track.
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (i, (bbox, class)) in boxes.iter().enumerate() {
            for (j, (_, old, old_class)) in previous.iter().enumerate() {
                let o = iou(bbox, old);
                if class == old_class && o >= TRACK_IOU {
                    pairs.push((o, i, j));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut ids: Vec<Option<u32>> = vec![None; boxes.len()];
        for (_, i, j) in pairs {
            if ids[i].is_none() && !taken[j] {
                ids[i] = Some(previous[j].0);
                taken[j] = true;
            }
        }
        let ids: Vec<u32> = ids
            .into_iter()
            .map(|id| {
                id.unwrap_or_else(|| {
                    self.next_id += 1;
                    self.next_id
                })
            })
            .collect();
        self.last.insert(
            source.to_owned(),
            boxes
                .iter()
                .zip(&ids)
                .map(|((bbox, class), &id)| (id, *bbox, *class))
                .collect(),
        );
        ids
    }
}

/// Hand tracks: boxes of the same side.
#[derive(Default)]
pub struct HandTracker(BoxTracker);

impl HandTracker {
    pub fn assign(&mut self, source: &str, hands: &[HandEstimate]) -> Vec<u32> {
        let boxes: Vec<([f32; 4], bool)> = hands
            .iter()
            .map(|h| (h.hand.bbox, h.hand.is_right))
            .collect();
        self.0.assign(source, &boxes)
    }
}

pub fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn hand_pose(h: &HandEstimate, track_id: u32, mirror: bool) -> proto::HandPose {
    // With `mirror`, the camera shows the user mirrored: the hand the
    // detector calls right is the user's left.
    let right = h.hand.is_right != mirror;
    let [x1, y1, x2, y2] = h.hand.bbox;
    let t = h.cam_t;
    proto::HandPose {
        track_id,
        side: if right {
            proto::HandSide::Right
        } else {
            proto::HandSide::Left
        } as i32,
        confidence: h.hand.score,
        bbox: Some(proto::Box2D { x1, y1, x2, y2 }),
        keypoints_2d: h.keypoints_2d_projected.iter().flatten().copied().collect(),
        keypoints_3d: h.keypoints_3d.iter().flatten().copied().collect(),
        camera_translation: t.to_vec(),
        focal_length_px: h.focal_length,
        vertices: h.vertices.iter().flatten().copied().collect(),
        mano_pose: h
            .global_orient
            .iter()
            .chain(h.hand_pose.iter().flatten())
            .copied()
            .collect(),
        mano_betas: h.betas.clone(),
        detector_keypoints: h.hand.keypoints_2d.iter().flatten().copied().collect(),
    }
}

/// The event for one hand-route result.
pub fn hands_event(
    result: &HandsResult,
    track_ids: &[u32],
    mirror: bool,
    post_time: Duration,
) -> proto::Event {
    let hands = result
        .hands
        .iter()
        .zip(track_ids)
        .map(|(h, &id)| hand_pose(h, id, mirror))
        .collect();
    let payload = proto::event::Payload::Hands(proto::Hands { hands });
    proto::Event {
        mirrored: mirror,
        ..route_event(
            &result.frame,
            proto::Route::Hands,
            &result.timings,
            post_time,
            result.dropped_before,
            payload,
        )
    }
}

/// The event for one body-route result.
pub fn body_event(result: &BodyResult, track_ids: &[u32], post_time: Duration) -> proto::Event {
    let people = result
        .people
        .iter()
        .zip(track_ids)
        .map(|(p, &track_id)| {
            let [x1, y1, x2, y2] = p.bbox;
            proto::BodyPose {
                track_id,
                bbox: Some(proto::Box2D { x1, y1, x2, y2 }),
                score: p.score,
                keypoints: p.keypoints.iter().flatten().copied().collect(),
                keypoint_scores: p.keypoint_scores.clone(),
            }
        })
        .collect();
    let payload = proto::event::Payload::Bodies(proto::Bodies { people });
    route_event(
        &result.frame,
        proto::Route::Body,
        &result.timings,
        post_time,
        result.dropped_before,
        payload,
    )
}

/// How matte events carry their images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatteEncoding {
    Png,
    Raw,
}

/// The event for one matte-route result; `with_images` adds the
/// foreground and the RGBA composite. CPU-heavy (PNG): run it off the
/// async workers.
pub fn matte_event(
    result: &MatteResult,
    encoding: MatteEncoding,
    with_images: bool,
) -> proto::Event {
    let started = std::time::Instant::now();
    let m = &result.matte;
    let (w, h) = (m.width, m.height);
    let encode = |data: Vec<u8>, channels: usize| -> bytes::Bytes {
        match encoding {
            MatteEncoding::Png => encode_png(&data, w, h, channels).into(),
            MatteEncoding::Raw => data.into(),
        }
    };
    let (foreground, composite) = if with_images {
        let rgba: Vec<u8> =
            m.fg.chunks_exact(3)
                .zip(&m.alpha)
                .flat_map(|(rgb, &a)| [rgb[0], rgb[1], rgb[2], a])
                .collect();
        (encode(m.fg.clone(), 3), encode(rgba, 4))
    } else {
        Default::default()
    };
    let coverage = m.alpha.iter().map(|&a| a as u64).sum::<u64>() as f64
        / (255.0 * m.alpha.len().max(1) as f64);
    let matte = proto::Matte {
        width: w as u32,
        height: h as u32,
        encoding: match encoding {
            MatteEncoding::Png => proto::ImageEncoding::Png,
            MatteEncoding::Raw => proto::ImageEncoding::Raw,
        } as i32,
        alpha: encode(m.alpha.clone(), 1),
        foreground,
        composite,
        coverage: coverage as f32,
        hint_source: match result.hint {
            HintSource::Pushed => proto::MatteHintSource::Pushed,
            HintSource::Previous => proto::MatteHintSource::Previous,
            HintSource::Fallback => proto::MatteHintSource::Fallback,
        } as i32,
    };
    route_event(
        &result.frame,
        proto::Route::Matte,
        &result.timings,
        started.elapsed(),
        result.dropped_before,
        proto::event::Payload::Matte(matte),
    )
}

/// The event of one route's result for `frame`: the route's stage timings
/// then post-processing's, and the frame's identity and size.
fn route_event(
    frame: &Frame,
    route: proto::Route,
    stages: &[(&'static str, Duration)],
    post_time: Duration,
    dropped_before: u64,
    payload: proto::event::Payload,
) -> proto::Event {
    let mut timings: Vec<proto::StageTiming> =
        stages.iter().map(|(stage, d)| timing(stage, *d)).collect();
    timings.push(timing("post", post_time));
    proto::Event {
        frame_id: frame.id,
        source_id: frame.source_id.clone(),
        client_frame_id: frame.client_frame_id,
        route: route as i32,
        capture_unix_ns: unix_ns(frame.captured),
        emit_unix_ns: unix_ns(SystemTime::now()),
        timings,
        dropped_frames: dropped_before,
        dropped_for_subscriber: 0,
        image_width: frame.width as u32,
        image_height: frame.height as u32,
        mirrored: false,
        payload: Some(payload),
    }
}

pub fn timing(stage: &str, d: Duration) -> proto::StageTiming {
    proto::StageTiming {
        stage: stage.to_owned(),
        duration_ns: u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
    }
}

/// A copy of `event` without the heavy fields a subscriber did not ask for
/// (matte images are shared, not copied).
pub fn without_heavy_fields(
    event: &proto::Event,
    include_vertices: bool,
    include_matte_images: bool,
) -> proto::Event {
    let mut e = event.clone();
    match &mut e.payload {
        Some(proto::event::Payload::Hands(h)) if !include_vertices => {
            for hand in &mut h.hands {
                hand.vertices = Vec::new();
            }
        }
        Some(proto::event::Payload::Matte(m)) if !include_matte_images => {
            m.foreground = Default::default();
            m.composite = Default::default();
        }
        _ => {}
    }
    e
}

#[cfg(test)]
mod tests {
    use posed_models::hand_pipeline::HandBox;

    use super::*;

    fn est(bbox: [f32; 4], is_right: bool) -> HandEstimate {
        HandEstimate {
            hand: HandBox {
                bbox,
                is_right,
                score: 0.9,
                keypoints_2d: vec![],
            },
            keypoints_3d: vec![],
            vertices: vec![[1.0, 2.0, 3.0]],
            cam_t: [0.0, 0.0, 1.0],
            keypoints_2d_projected: vec![],
            global_orient: [0.0; 3],
            hand_pose: vec![],
            betas: vec![],
            crop_cam: [1.0, 0.0, 0.0],
            focal_length: 1000.0,
        }
    }

    #[test]
    fn tracks_follow_overlapping_boxes_of_the_same_side() {
        let mut t = HandTracker::default();
        let a = t.assign(
            "cam",
            &[
                est([0., 0., 10., 10.], true),
                est([50., 0., 60., 10.], false),
            ],
        );
        assert_eq!(a, [1, 2]);
        // Moved a little, order swapped: ids follow the boxes.
        let b = t.assign(
            "cam",
            &[
                est([51., 1., 61., 11.], false),
                est([1., 1., 11., 11.], true),
            ],
        );
        assert_eq!(b, [2, 1]);
        // Same place but the other side: a new hand.
        let c = t.assign("cam", &[est([1., 1., 11., 11.], false)]);
        assert_eq!(c, [3]);
        // Another source has its own tracks.
        assert_eq!(t.assign("push", &[est([1., 1., 11., 11.], false)]), [4]);
    }

    #[test]
    fn mirror_swaps_sides_and_vertices_are_opt_in() {
        let h = est([0., 0., 10., 10.], true);
        assert_eq!(hand_pose(&h, 1, false).side, proto::HandSide::Right as i32);
        assert_eq!(hand_pose(&h, 1, true).side, proto::HandSide::Left as i32);
        let e = proto::Event {
            payload: Some(proto::event::Payload::Hands(proto::Hands {
                hands: vec![hand_pose(&h, 1, false)],
            })),
            ..Default::default()
        };
        let stripped = without_heavy_fields(&e, false, false);
        let Some(proto::event::Payload::Hands(hs)) = stripped.payload else {
            panic!()
        };
        assert!(hs.hands[0].vertices.is_empty());
        let Some(proto::event::Payload::Hands(hs)) = e.payload else {
            panic!()
        };
        assert_eq!(hs.hands[0].vertices, [1.0, 2.0, 3.0]);
    }
}
