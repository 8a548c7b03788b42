//! Hand tracks of one stream: which detection is which hand, frame after
//! frame, and which side it is.
//!
//! A gesture UI needs the same id and the same side for a hand as long as
//! it is in view, and to be told when it is gone. So a track
//! - is matched on its *predicted* box (constant velocity from its last
//!   frames), which keeps two crossing hands apart where their boxes overlap;
//! - coasts through up to `max_coast_frames` frames without a detection
//!   before it ends, so one missed detection does not renumber a hand;
//! - ends at once when the stream pauses longer than `stale_after` (a hand
//!   is not resumed at an old place);
//! - keeps its side by a vote: a running average of the detector's belief
//!   that the hand is a right hand, with hysteresis, so a one-frame class
//!   flip never flips it;
//! - remembers the hand's last keypoints, so that the next frame can crop
//!   it where it is without the detector ([`super::follow`]).

use std::time::{Duration, Instant};

use posed_models::hand_detector::iou;

use super::follow::{self, BoxRule};
use crate::engine::StreamId;

/// How tracks are kept. Defaults suit 30 fps input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackSettings {
    /// A detection continues a track when it overlaps the track's predicted
    /// box at least this much.
    pub min_iou: f32,
    /// Frames a track survives without a detection.
    pub max_coast_frames: u32,
    /// A gap between frames longer than this ends every track.
    pub stale_after: Duration,
    /// Weight of each frame in the side vote (0..1).
    pub side_rate: f32,
    /// The vote must pass this (or 1 − this) to change a track's side.
    pub side_switch: f32,
}

impl Default for TrackSettings {
    fn default() -> Self {
        TrackSettings {
            min_iou: 0.3,
            max_coast_frames: 3,
            stale_after: Duration::from_secs(2),
            side_rate: 0.3,
            side_switch: 0.75,
        }
    }
}

/// One detection of a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sighting {
    /// x1, y1, x2, y2 in image pixels.
    pub bbox: [f32; 4],
    /// The detector's belief that this is a right hand, 0..1 (1 or 0 for a
    /// side the client stated).
    pub right: f32,
    /// The client stated the side: it is taken as is.
    pub side_given: bool,
    /// A box made from this track's own keypoints: it continues the track
    /// without matching, and brings no side evidence.
    pub track: Option<u32>,
}

impl Sighting {
    /// From a detector box: its class, and its score as the confidence in
    /// that class.
    pub fn detected(bbox: [f32; 4], is_right: bool, score: f32) -> Sighting {
        let score = if score.is_finite() {
            score.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = 0.5 * score;
        Sighting {
            bbox,
            right: if is_right { 0.5 + half } else { 0.5 - half },
            side_given: false,
            track: None,
        }
    }
}

impl Sighting {
    /// A box whose side the client stated.
    pub fn stated(bbox: [f32; 4], is_right: bool) -> Sighting {
        Sighting {
            bbox,
            right: if is_right { 1.0 } else { 0.0 },
            side_given: true,
            track: None,
        }
    }

    /// Track `id`'s box for this frame, from its last keypoints.
    pub fn followed(bbox: [f32; 4], id: u32) -> Sighting {
        Sighting {
            bbox,
            right: 0.5,
            side_given: false,
            track: Some(id),
        }
    }
}

/// What a sighting became.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackedHand {
    pub id: u32,
    pub is_right: bool,
    /// Confidence in `is_right`, 0.5..1: the vote's lean toward that side.
    pub handedness: f32,
}

/// One frame's assignment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackUpdate {
    /// One per sighting, in the same order.
    pub hands: Vec<TrackedHand>,
    /// Tracks that ended with this frame: lost longer than the coast, or
    /// stale.
    pub ended: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Track {
    id: u32,
    bbox: [f32; 4],
    /// Centre motion per frame, smoothed.
    velocity: [f32; 2],
    /// Frames since it was last seen.
    missed: u32,
    /// Running belief that it is a right hand.
    right: f32,
    is_right: bool,
    /// Its 2-D keypoints in the previous frame, when that frame posed it.
    keypoints: Option<Vec<[f32; 2]>>,
    /// Where its detector box sits around its keypoints.
    rule: BoxRule,
}

impl Track {
    /// Where it should be now, `missed + 1` frames after it was seen.
    fn predicted(&self) -> [f32; 4] {
        let k = self.missed as f32 + 1.0;
        let [dx, dy] = self.velocity.map(|v| v * k);
        let [x1, y1, x2, y2] = self.bbox;
        [x1 + dx, y1 + dy, x2 + dx, y2 + dy]
    }

    fn handedness(&self) -> f32 {
        if self.is_right {
            self.right
        } else {
            1.0 - self.right
        }
    }
}

fn centre(b: &[f32; 4]) -> [f32; 2] {
    [(b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5]
}

/// The tracks of one stream.
#[derive(Debug, Default)]
pub struct HandTracks {
    tracks: Vec<Track>,
    last_frame: Option<Instant>,
    /// Frames in a row whose hands were all followed (no detector).
    followed_in_a_row: u32,
}

impl HandTracks {
    /// Matches this frame's sightings to the tracks, starting new ones for
    /// the rest; `next_id` hands out ids (shared by every stream, so an id
    /// never means two hands).
    pub fn update(
        &mut self,
        sightings: &[Sighting],
        now: Instant,
        settings: &TrackSettings,
        next_id: &mut dyn FnMut() -> u32,
    ) -> TrackUpdate {
        let mut ended = Vec::new();
        if self.is_stale(now, settings) {
            ended.extend(self.tracks.drain(..).map(|t| t.id));
        }
        self.last_frame = Some(now);
        let followed = !sightings.is_empty() && sightings.iter().all(|s| s.track.is_some());
        self.followed_in_a_row = if followed {
            self.followed_in_a_row.saturating_add(1)
        } else {
            0
        };
        // Keypoints are the previous frame's: this frame's come with
        // `observe`.
        for t in &mut self.tracks {
            t.keypoints = None;
        }

        let mut track_of: Vec<Option<usize>> = vec![None; sightings.len()];
        let mut taken = vec![false; self.tracks.len()];
        // A followed box continues its own track.
        for (i, s) in sightings.iter().enumerate() {
            let j = s
                .track
                .and_then(|id| self.tracks.iter().position(|t| t.id == id));
            if let Some(j) = j.filter(|&j| !taken[j]) {
                track_of[i] = Some(j);
                taken[j] = true;
            }
        }
        // The others: strongest overlaps first, so two sightings never
        // fight over one track; a shared side breaks ties between equal
        // overlaps.
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (i, s) in sightings.iter().enumerate() {
            if s.track.is_some() {
                continue;
            }
            for (j, t) in self.tracks.iter().enumerate() {
                let overlap = iou(&s.bbox, &t.predicted());
                if overlap >= settings.min_iou {
                    let same_side = (s.right >= 0.5) == t.is_right;
                    pairs.push((overlap + if same_side { 1e-3 } else { 0.0 }, i, j));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, i, j) in pairs {
            if track_of[i].is_none() && !taken[j] {
                track_of[i] = Some(j);
                taken[j] = true;
            }
        }

        for (t, seen) in self.tracks.iter_mut().zip(&taken) {
            if !seen {
                t.missed += 1;
            }
        }
        let mut hands = Vec::with_capacity(sightings.len());
        for (s, matched) in sightings.iter().zip(&track_of) {
            let track = match matched {
                Some(j) => {
                    let t = &mut self.tracks[*j];
                    take(t, s, settings);
                    t.clone()
                }
                None => {
                    let t = Track {
                        id: next_id(),
                        bbox: s.bbox,
                        velocity: [0.0, 0.0],
                        missed: 0,
                        right: s.right,
                        is_right: s.right >= 0.5,
                        keypoints: None,
                        rule: BoxRule::default(),
                    };
                    self.tracks.push(t.clone());
                    t
                }
            };
            hands.push(TrackedHand {
                id: track.id,
                is_right: track.is_right,
                handedness: track.handedness(),
            });
        }
        let max_coast = settings.max_coast_frames;
        self.tracks.retain(|t| {
            let keep = t.missed <= max_coast;
            if !keep {
                ended.push(t.id);
            }
            keep
        });
        TrackUpdate { hands, ended }
    }

    /// The live tracks' ids, oldest first.
    pub fn ids(&self) -> Vec<u32> {
        self.tracks.iter().map(|t| t.id).collect()
    }

    fn is_stale(&self, now: Instant, settings: &TrackSettings) -> bool {
        self.last_frame
            .is_some_and(|t| now.saturating_duration_since(t) > settings.stale_after)
    }

    /// This frame's boxes without the detector: one per live track, from
    /// its keypoints in the previous frame. None when the detector must
    /// run: no tracks, a track that was not posed in the previous frame
    /// (lost, coasting, new from the client), a stream paused past its
    /// timeout, `redetect_interval` frames followed in a row, or a hand
    /// that left the image.
    pub fn follow(
        &self,
        now: Instant,
        settings: &TrackSettings,
        redetect_interval: u32,
        width: usize,
        height: usize,
    ) -> Option<Vec<Sighting>> {
        let due = self.followed_in_a_row.saturating_add(1) >= redetect_interval;
        if self.tracks.is_empty() || due || self.is_stale(now, settings) {
            return None;
        }
        self.tracks
            .iter()
            .map(|t| {
                let keypoints = t.keypoints.as_deref().filter(|_| t.missed == 0)?;
                let bbox = follow::next_box(keypoints, &t.rule, t.velocity, width, height)?;
                Some(Sighting::followed(bbox, t.id))
            })
            .collect()
    }

    /// Track `id`'s hand as this frame posed it from a crop of `crop_box`:
    /// remembered for the next frame. Returns its tracking confidence
    /// (measured with the rule it had). `learn`: `crop_box` is a detector's
    /// or the client's, so the track learns its box rule from it.
    pub fn observe(
        &mut self,
        id: u32,
        crop_box: [f32; 4],
        keypoints: &[[f32; 2]],
        learn: bool,
        width: usize,
        height: usize,
    ) -> f32 {
        let Some(t) = self.tracks.iter_mut().find(|t| t.id == id) else {
            return 0.0;
        };
        let confidence = follow::tracking_confidence(&t.rule, crop_box, keypoints, width, height);
        if learn {
            if let Some(rule) = BoxRule::learn(crop_box, keypoints) {
                t.rule = rule;
            }
        }
        t.keypoints = Some(keypoints.to_vec());
        confidence
    }

    /// Track `id` was followed but its hand was not found in its crop: it
    /// counts as missed, and the next frame detects. True when that ended
    /// it (no coast left).
    pub fn lose(&mut self, id: u32, settings: &TrackSettings) -> bool {
        let Some(j) = self.tracks.iter().position(|t| t.id == id) else {
            return false;
        };
        let t = &mut self.tracks[j];
        t.missed = t.missed.saturating_add(1);
        t.keypoints = None;
        if t.missed > settings.max_coast_frames {
            self.tracks.remove(j);
            return true;
        }
        false
    }
}

/// A track takes a new sighting: box, motion and side vote.
fn take(t: &mut Track, s: &Sighting, settings: &TrackSettings) {
    let frames = t.missed as f32 + 1.0;
    let (old, new) = (centre(&t.bbox), centre(&s.bbox));
    for k in 0..2 {
        let step = (new[k] - old[k]) / frames;
        t.velocity[k] = 0.5 * t.velocity[k] + 0.5 * step;
    }
    t.bbox = s.bbox;
    t.missed = 0;
    if s.track.is_some() {
        return;
    }
    if s.side_given {
        t.right = s.right;
        t.is_right = s.right >= 0.5;
        return;
    }
    t.right += settings.side_rate * (s.right - t.right);
    if t.is_right && t.right < 1.0 - settings.side_switch {
        t.is_right = false;
    } else if !t.is_right && t.right > settings.side_switch {
        t.is_right = true;
    }
}

/// Every stream's tracks, with ids unique across them.
#[derive(Debug, Default)]
pub struct StreamTracks {
    streams: std::collections::HashMap<StreamId, HandTracks>,
    /// The tracks of a frame of no stream (a single pushed image): new for
    /// each such frame, so it neither sees nor leaves any state.
    single: HandTracks,
    last_id: u32,
    pub settings: TrackSettings,
}

impl StreamTracks {
    pub fn new(settings: TrackSettings) -> StreamTracks {
        StreamTracks {
            settings,
            ..StreamTracks::default()
        }
    }

    /// Whether `stream` has tracks here (it was not forgotten).
    pub fn holds(&self, stream: StreamId) -> bool {
        self.streams.contains_key(&stream)
    }

    /// The tracks of `stream`.
    pub fn of(&mut self, stream: Option<StreamId>) -> &mut HandTracks {
        match stream {
            Some(s) => self.streams.entry(s).or_default(),
            None => &mut self.single,
        }
    }

    /// This frame's boxes without the detector (see [`HandTracks::follow`]);
    /// always None for a frame of no stream.
    pub fn follow(
        &mut self,
        stream: Option<StreamId>,
        now: Instant,
        redetect_interval: u32,
        width: usize,
        height: usize,
    ) -> Option<Vec<Sighting>> {
        let settings = self.settings;
        let s = stream?;
        self.streams
            .get(&s)?
            .follow(now, &settings, redetect_interval, width, height)
    }

    /// One frame of `stream`. Streams idle for ten timeouts are forgotten,
    /// so the map stays as small as the set of live streams.
    pub fn update(
        &mut self,
        stream: Option<StreamId>,
        sightings: &[Sighting],
        now: Instant,
    ) -> TrackUpdate {
        let forget_after = self.settings.stale_after * 10;
        self.streams.retain(|s, tracks| {
            Some(*s) == stream
                || tracks
                    .last_frame
                    .is_some_and(|t| now.saturating_duration_since(t) <= forget_after)
        });
        if stream.is_none() {
            self.single = HandTracks::default();
        }
        let settings = self.settings;
        let last_id = &mut self.last_id;
        let mut next_id = || {
            *last_id = last_id.wrapping_add(1).max(1);
            *last_id
        };
        let tracks = match stream {
            Some(s) => self.streams.entry(s).or_default(),
            None => &mut self.single,
        };
        tracks.update(sightings, now, &settings, &mut next_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(33);

    fn right(bbox: [f32; 4]) -> Sighting {
        Sighting::detected(bbox, true, 0.9)
    }

    fn left(bbox: [f32; 4]) -> Sighting {
        Sighting::detected(bbox, false, 0.9)
    }

    fn at(x: f32) -> [f32; 4] {
        [x, 100.0, x + 60.0, 180.0]
    }

    /// Feeds one frame per item, 33 ms apart.
    fn run(frames: &[Vec<Sighting>]) -> Vec<TrackUpdate> {
        let mut tracks = StreamTracks::default();
        let cam = Some(StreamId::new());
        let t0 = Instant::now();
        frames
            .iter()
            .enumerate()
            .map(|(i, s)| tracks.update(cam, s, t0 + MS * i as u32))
            .collect()
    }

    fn ids(u: &TrackUpdate) -> Vec<u32> {
        u.hands.iter().map(|h| h.id).collect()
    }

    #[test]
    fn an_id_survives_a_missed_detection_and_ends_once_after_the_coast() {
        let u = run(&[
            vec![right(at(100.0))],
            vec![],
            vec![right(at(110.0))],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        ]);
        assert_eq!(ids(&u[0]), [1]);
        assert_eq!(ids(&u[2]), [1], "one missed frame keeps the id");
        // Lost after frame 2: coasts through 3 frames, ends on the 4th.
        let ended: Vec<(usize, Vec<u32>)> = u
            .iter()
            .enumerate()
            .filter(|(_, u)| !u.ended.is_empty())
            .map(|(i, u)| (i, u.ended.clone()))
            .collect();
        assert_eq!(ended, [(6, vec![1])]);
    }

    #[test]
    fn crossing_hands_keep_their_ids_where_their_boxes_overlap() {
        // The right hand moves right and the left hand left, 20 px a frame,
        // through the same place; the detector lists them in either order.
        let frames: Vec<Vec<Sighting>> = (0..12)
            .map(|i| {
                let r = right(at(100.0 + 20.0 * i as f32));
                let l = left(at(320.0 - 20.0 * i as f32));
                if i % 2 == 0 {
                    vec![r, l]
                } else {
                    vec![l, r]
                }
            })
            .collect();
        for (i, u) in run(&frames).iter().enumerate() {
            let (r, l) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
            assert_eq!((u.hands[r].id, u.hands[l].id), (1, 2), "frame {i}");
            assert!(u.hands[r].is_right && !u.hands[l].is_right, "frame {i}");
        }
    }

    #[test]
    fn crossing_hands_of_one_side_follow_their_motion() {
        let frames: Vec<Vec<Sighting>> = (0..12)
            .map(|i| {
                let a = right(at(100.0 + 20.0 * i as f32));
                let b = right(at(320.0 - 20.0 * i as f32));
                if i % 3 == 1 {
                    vec![b, a]
                } else {
                    vec![a, b]
                }
            })
            .collect();
        for (i, u) in run(&frames).iter().enumerate() {
            let (a, b) = if i % 3 == 1 { (1, 0) } else { (0, 1) };
            assert_eq!((u.hands[a].id, u.hands[b].id), (1, 2), "frame {i}");
        }
    }

    #[test]
    fn a_one_frame_class_flip_never_flips_the_side_but_a_lasting_one_does() {
        let mut frames = vec![vec![right(at(100.0))]; 5];
        frames.push(vec![left(at(100.0))]);
        frames.extend(vec![vec![right(at(100.0))]; 3]);
        frames.extend(vec![vec![left(at(100.0))]; 8]);
        let u = run(&frames);
        for (i, u) in u.iter().enumerate().take(9) {
            assert!(u.hands[0].is_right, "frame {i}");
            assert_eq!(u.hands[0].id, 1);
        }
        assert!(u[5].hands[0].handedness < u[4].hands[0].handedness);
        assert!(u[5].hands[0].handedness > 0.5);
        let flipped = u.iter().position(|u| !u.hands[0].is_right).unwrap();
        assert!((11..17).contains(&flipped), "flipped at frame {flipped}");
        assert!(!u[16].hands[0].is_right);
        assert!(u.iter().all(|u| u.hands[0].id == 1));
    }

    #[test]
    fn a_side_the_client_states_is_taken_as_is() {
        let stated = |is_right: bool| Sighting::stated(at(100.0), is_right);
        let u = run(&[vec![stated(true)], vec![stated(false)]]);
        assert_eq!(ids(&u[1]), [1]);
        assert!(!u[1].hands[0].is_right);
        assert_eq!(u[1].hands[0].handedness, 1.0);
    }

    #[test]
    fn a_stream_that_pauses_starts_over_and_streams_are_apart() {
        let mut tracks = StreamTracks::default();
        let stale = tracks.settings.stale_after;
        let t0 = Instant::now();
        let (cam, other) = (Some(StreamId::new()), Some(StreamId::new()));
        assert_eq!(ids(&tracks.update(cam, &[right(at(100.0))], t0)), [1]);
        assert_eq!(ids(&tracks.update(other, &[right(at(100.0))], t0)), [2]);
        let u = tracks.update(other, &[right(at(101.0))], t0 + stale / 2);
        assert_eq!(ids(&u), [2]);
        // cam sends nothing for longer than the timeout.
        let later = t0 + stale + MS;
        let u = tracks.update(cam, &[right(at(100.0))], later);
        assert_eq!(u.ended, [1], "not resumed at its old place");
        assert_eq!(ids(&u), [3]);
        // other's track lives on its own clock.
        let u = tracks.update(other, &[right(at(102.0))], later);
        assert_eq!((ids(&u), u.ended), (vec![2], vec![]));
        // A single image neither continues nor leaves a track.
        let u = tracks.update(None, &[right(at(102.0))], later);
        assert_eq!((ids(&u), u.ended), (vec![4], vec![]));
        let u = tracks.update(None, &[right(at(102.0))], later);
        assert_eq!((ids(&u), u.ended), (vec![5], vec![]));
        assert_eq!(tracks.follow(None, later, 10, 640, 480), None);
    }

    #[test]
    fn detector_scores_become_a_belief_in_the_right_side() {
        assert!((Sighting::detected(at(0.0), true, 0.8).right - 0.9).abs() < 1e-6);
        assert!((Sighting::detected(at(0.0), false, 0.8).right - 0.1).abs() < 1e-6);
        assert_eq!(Sighting::detected(at(0.0), true, f32::NAN).right, 0.5);
        assert_eq!(Sighting::detected(at(0.0), false, 7.0).right, 0.0);
    }
}
