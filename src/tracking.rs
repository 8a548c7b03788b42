//! Stable track ids across frames of a source.

use std::collections::HashMap;

use posed_models::hand_detector::iou;
use posed_models::hand_pipeline::HandEstimate;

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

#[cfg(test)]
pub(crate) mod tests {
    use posed_models::hand_pipeline::HandBox;

    use super::*;

    pub(crate) fn est(bbox: [f32; 4], is_right: bool) -> HandEstimate {
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
}
