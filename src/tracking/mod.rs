//! Stable track ids across frames of a source: [`hands`] for the hand
//! route (motion, coasting, a side vote, ended tracks), [`BoxTracker`] for
//! people.

use std::collections::HashMap;

use posed_models::hand_detector::iou;

pub mod follow;
pub mod hands;

/// Boxes must overlap at least this much to continue a track.
const TRACK_IOU: f32 = 0.3;

/// Sources whose last boxes a tracker keeps: source names come from
/// clients, so the oldest is forgotten past this many.
pub const MAX_TRACKED_SOURCES: usize = 64;

/// A tracked box: its id, its box and its class.
type TrackedBox = (u32, [f32; 4], bool);

/// Stable ids across frames of a source, by greedy IoU association with the
/// previous frame's boxes of the same class.
#[derive(Default)]
pub struct BoxTracker {
    next_id: u32,
    /// Per source: when it was last seen (a count of calls) and its boxes.
    last: HashMap<String, (u64, Vec<TrackedBox>)>,
    calls: u64,
}

impl BoxTracker {
    /// `boxes`: each box and its class (hands: right or not; people: one class).
    pub fn assign(&mut self, source: &str, boxes: &[([f32; 4], bool)]) -> Vec<u32> {
        self.calls += 1;
        let previous = self.last.remove(source).map(|(_, b)| b).unwrap_or_default();
        if self.last.len() >= MAX_TRACKED_SOURCES {
            let stalest = self.last.iter().min_by_key(|(_, (seen, _))| *seen);
            if let Some(key) = stalest.map(|(k, _)| k.clone()) {
                self.last.remove(&key);
            }
        }
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
        let kept = boxes
            .iter()
            .zip(&ids)
            .map(|((bbox, class), &id)| (id, *bbox, *class))
            .collect();
        self.last.insert(source.to_owned(), (self.calls, kept));
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Client-named sources cannot grow the tracker without bound: past
    /// the cap the least recently seen is forgotten, the others keep
    /// their ids.
    #[test]
    fn the_tracker_keeps_a_bounded_number_of_sources() {
        let mut t = BoxTracker::default();
        let b = [([0., 0., 10., 10.], true)];
        let kept = t.assign("kept", &b);
        let first = t.assign("random-0", &b);
        for i in 1..10 * MAX_TRACKED_SOURCES {
            t.assign(&format!("random-{i}"), &b);
            if i % 8 == 0 {
                assert_eq!(t.assign("kept", &b), kept);
            }
            assert!(t.last.len() <= MAX_TRACKED_SOURCES);
        }
        assert_eq!(t.assign("kept", &b), kept);
        // Long forgotten: a new track.
        assert_ne!(t.assign("random-0", &b), first);
    }

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
