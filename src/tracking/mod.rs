//! Stable track ids across frames of a source: [`hands`] for the hand
//! route (motion, coasting, a side vote, ended tracks), [`BoxTracker`] for
//! people.

use std::collections::HashMap;

use posed_models::hand_detector::iou;

pub mod follow;
pub mod hands;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_follow_overlapping_boxes_of_the_same_class() {
        let mut t = BoxTracker::default();
        let a = t.assign(
            "cam",
            &[([0., 0., 10., 10.], true), ([50., 0., 60., 10.], false)],
        );
        assert_eq!(a, [1, 2]);
        // Moved a little, order swapped: ids follow the boxes.
        let b = t.assign(
            "cam",
            &[([51., 1., 61., 11.], false), ([1., 1., 11., 11.], true)],
        );
        assert_eq!(b, [2, 1]);
        // Same place but the other class: a new track.
        assert_eq!(t.assign("cam", &[([1., 1., 11., 11.], false)]), [3]);
        // Another source has its own tracks.
        assert_eq!(t.assign("push", &[([1., 1., 11., 11.], false)]), [4]);
    }
}
