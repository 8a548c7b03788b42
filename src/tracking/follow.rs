//! Following a hand without the detector: its next crop box comes from its
//! own keypoints, and a confidence says whether the hand is still in it.
//!
//! A detector box is not the keypoints' bounding box: it also holds the
//! palm and the fingertips' flesh, and sits off the joints' centre by an
//! amount that depends on the hand's pose. So each track learns its own
//! [`BoxRule`] on every frame the detector (or the client) gave its box,
//! and applies that rule to the keypoints on followed frames: a followed
//! crop and a detected crop of the same hand in the same pose agree.

/// A box side below this (pixels) is no hand to follow.
const MIN_BOX_SIDE: f32 = 4.0;
/// A rule edge further than this many keypoint extents from their centre
/// is a detector box that does not belong to these keypoints.
const MAX_RULE_EDGE: f32 = 4.0;
/// The confidence's size term: a box ×1.5 or ÷1.5 the crop's scores e^-½.
const SIZE_SIGMA: f32 = 0.405_465; // ln 1.5
/// The confidence's centring term: a centre 0.4 box sides off scores e^-½.
const CENTRE_SIGMA: f32 = 0.4;

/// Where a hand's box sits around its keypoints: the box's edges (x1, y1,
/// x2, y2) from the keypoints' centre, in units of their longer extent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxRule([f32; 4]);

impl Default for BoxRule {
    /// Before any box was seen with the keypoints: their extent and a
    /// tenth more on each side.
    fn default() -> Self {
        BoxRule([-0.6, -0.6, 0.6, 0.6])
    }
}

/// The keypoints' centre and longer extent.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Extent {
    centre: [f32; 2],
    size: f32,
}

fn extent(keypoints: &[[f32; 2]]) -> Option<Extent> {
    let mut lo = [f32::INFINITY; 2];
    let mut hi = [f32::NEG_INFINITY; 2];
    for p in keypoints.iter().filter(|p| p.iter().all(|v| v.is_finite())) {
        for k in 0..2 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    let size = (hi[0] - lo[0]).max(hi[1] - lo[1]);
    // Also false when no point was finite (size is -inf).
    (size >= 1.0).then(|| Extent {
        centre: [(lo[0] + hi[0]) * 0.5, (lo[1] + hi[1]) * 0.5],
        size,
    })
}

fn centre(b: &[f32; 4]) -> [f32; 2] {
    [(b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5]
}

fn longer_side(b: &[f32; 4]) -> f32 {
    (b[2] - b[0]).max(b[3] - b[1])
}

impl BoxRule {
    /// The rule that turns `keypoints` into `bbox`; None when they do not
    /// describe one hand (degenerate keypoints, a box far from them).
    pub fn learn(bbox: [f32; 4], keypoints: &[[f32; 2]]) -> Option<BoxRule> {
        let e = extent(keypoints)?;
        let [cx, cy] = e.centre;
        let rule = [
            (bbox[0] - cx) / e.size,
            (bbox[1] - cy) / e.size,
            (bbox[2] - cx) / e.size,
            (bbox[3] - cy) / e.size,
        ];
        let sane =
            rule.iter().all(|v| v.abs() <= MAX_RULE_EDGE) && rule[2] > rule[0] && rule[3] > rule[1];
        sane.then_some(BoxRule(rule))
    }

    /// The box this rule puts around `keypoints`.
    pub fn apply(&self, keypoints: &[[f32; 2]]) -> Option<[f32; 4]> {
        let e = extent(keypoints)?;
        let [cx, cy] = e.centre;
        let r = self.0;
        Some([
            cx + r[0] * e.size,
            cy + r[1] * e.size,
            cx + r[2] * e.size,
            cy + r[3] * e.size,
        ])
    }
}

/// The box to crop a hand from in the next frame: the rule around its
/// last keypoints, moved by its velocity (pixels per frame). None when
/// there is nothing to follow: degenerate keypoints, a box too small, or
/// none of it inside the `width × height` image. A hand partly outside is
/// followed: its keypoints outside the image lower its tracking
/// confidence, which decides when it is lost.
pub fn next_box(
    keypoints: &[[f32; 2]],
    rule: &BoxRule,
    velocity: [f32; 2],
    width: usize,
    height: usize,
) -> Option<[f32; 4]> {
    let [x1, y1, x2, y2] = rule.apply(keypoints)?;
    let [dx, dy] = velocity.map(|v| if v.is_finite() { v } else { 0.0 });
    let b = [x1 + dx, y1 + dy, x2 + dx, y2 + dy];
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    if !(w >= MIN_BOX_SIDE && h >= MIN_BOX_SIDE) {
        return None;
    }
    let inside_w = b[2].min(width as f32) - b[0].max(0.0);
    let inside_h = b[3].min(height as f32) - b[1].max(0.0);
    (inside_w > 0.0 && inside_h > 0.0).then_some(b)
}

/// How well a hand's keypoints agree with the box its crop was cut from,
/// 0..1 (see `HandPose.tracking_confidence` in the proto): the box the
/// track's rule puts around the keypoints is compared with `crop_box` in
/// size and centre, times the share of keypoints inside the image.
///
/// A hand that stayed where it was followed to scores near 1; a crop that
/// lost its hand makes WiLoR place one off-centre or at another scale (or
/// nowhere finite), which scores low.
pub fn tracking_confidence(
    rule: &BoxRule,
    crop_box: [f32; 4],
    keypoints: &[[f32; 2]],
    width: usize,
    height: usize,
) -> f32 {
    let Some(found) = rule.apply(keypoints) else {
        return 0.0;
    };
    let side = longer_side(&crop_box);
    if !(side > 0.0 && side.is_finite()) {
        return 0.0;
    }
    let ratio = longer_side(&found) / side;
    let size = (-0.5 * (ratio.ln() / SIZE_SIGMA).powi(2)).exp();
    let ([fx, fy], [bx, by]) = (centre(&found), centre(&crop_box));
    let d = (fx - bx).hypot(fy - by) / side;
    let centring = (-0.5 * (d / CENTRE_SIGMA).powi(2)).exp();
    let (w, h) = (width as f32, height as f32);
    let inside = keypoints
        .iter()
        .filter(|p| (0.0..=w).contains(&p[0]) && (0.0..=h).contains(&p[1]))
        .count();
    let visible = inside as f32 / keypoints.len().max(1) as f32;
    let c = size * centring * visible;
    if c.is_finite() {
        c.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 21-point "hand": a fan of points filling [x, x+s] × [y, y+s].
    pub fn hand(x: f32, y: f32, s: f32) -> Vec<[f32; 2]> {
        (0..21)
            .map(|i| {
                let t = i as f32 / 20.0;
                let u = (i * 8 % 21) as f32 / 20.0;
                [x + t * s, y + u * s]
            })
            .collect()
    }

    fn close(a: [f32; 4], b: [f32; 4]) -> bool {
        a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-3)
    }

    #[test]
    fn a_learned_rule_puts_the_detector_box_back_around_moved_and_scaled_keypoints() {
        // The detector's box: off-centre and larger than the joints.
        let bbox = [90.0, 70.0, 180.0, 170.0];
        let rule = BoxRule::learn(bbox, &hand(100.0, 90.0, 60.0)).unwrap();
        assert!(close(rule.apply(&hand(100.0, 90.0, 60.0)).unwrap(), bbox));
        // The same hand 40 px right and twice as close.
        let moved = rule.apply(&hand(140.0, 90.0, 120.0)).unwrap();
        let expected = [120.0, 50.0, 300.0, 250.0];
        assert!(close(moved, expected), "{moved:?}");
    }

    #[test]
    fn keypoints_that_are_no_hand_teach_no_rule() {
        let bbox = [90.0, 70.0, 180.0, 170.0];
        assert_eq!(BoxRule::learn(bbox, &[[100.0, 100.0]; 21]), None);
        assert_eq!(BoxRule::learn(bbox, &[[f32::NAN; 2]; 21]), None);
        assert_eq!(BoxRule::learn(bbox, &[]), None);
        // A box 10 extents away from the keypoints.
        assert_eq!(BoxRule::learn(bbox, &hand(1000.0, 1000.0, 10.0)), None);
        // An inverted box.
        assert_eq!(
            BoxRule::learn([180.0, 70.0, 90.0, 170.0], &hand(100.0, 90.0, 60.0)),
            None
        );
    }

    #[test]
    fn the_next_box_moves_with_the_hand_and_gives_up_at_the_image_edge() {
        let rule = BoxRule::default();
        let kp = hand(100.0, 100.0, 50.0);
        let b = next_box(&kp, &rule, [10.0, -5.0], 640, 480).unwrap();
        assert!(close(b, [105.0, 90.0, 165.0, 150.0]), "{b:?}");
        // Gone past the right edge: the detector decides.
        let kp = hand(680.0, 100.0, 50.0);
        assert_eq!(next_box(&kp, &rule, [0.0, 0.0], 640, 480), None);
        // Mostly out is still followed (its confidence says how much).
        let kp = hand(640.0, 100.0, 50.0);
        assert!(next_box(&kp, &rule, [0.0, 0.0], 640, 480).is_some());
        // Too small, degenerate, or a non-finite velocity.
        assert_eq!(
            next_box(&hand(10.0, 10.0, 2.0), &rule, [0.0; 2], 64, 64),
            None
        );
        assert_eq!(next_box(&[[5.0, 5.0]; 21], &rule, [0.0; 2], 64, 64), None);
        let b = next_box(&kp, &rule, [f32::NAN, f32::INFINITY], 640, 480).unwrap();
        assert!(b.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn confidence_is_high_where_the_hand_was_followed_to_and_falls_as_it_strays() {
        let bbox = [90.0, 70.0, 180.0, 170.0];
        let kp = hand(100.0, 90.0, 60.0);
        let rule = BoxRule::learn(bbox, &kp).unwrap();
        let conf = |kp: &[[f32; 2]]| tracking_confidence(&rule, bbox, kp, 640, 480);
        assert!((conf(&kp) - 1.0).abs() < 1e-5);
        // Half a box side off: e^(-½(0.5/0.4)²) ≈ 0.46.
        let side = 100.0;
        let off = conf(&hand(100.0 + 0.5 * side, 90.0, 60.0));
        assert!((off - (-0.5f32 * 1.25 * 1.25).exp()).abs() < 1e-3, "{off}");
        // A whole box side off: lost.
        assert!(conf(&hand(100.0 + side, 90.0, 60.0)) < 0.05);
        // Half the size (the same centre): e^(-½(ln 2 / ln 1.5)²) ≈ 0.38.
        let small = conf(&hand(115.0, 105.0, 30.0));
        let expected = (-0.5 * (2f32.ln() / 1.5f32.ln()).powi(2)).exp();
        assert!((small - expected).abs() < 0.02, "{small} vs {expected}");
        // Twice the size is as far off as half.
        let big = conf(&hand(70.0, 60.0, 120.0));
        assert!((big - small).abs() < 0.02, "{big} vs {small}");
        assert!(conf(&[[f32::NAN; 2]; 21]) == 0.0);
    }

    #[test]
    fn keypoints_outside_the_image_lower_the_confidence_by_their_share() {
        // A hand half past the left edge, where its crop was.
        let kp = hand(-30.0, 100.0, 60.0);
        let bbox = [-40.0, 90.0, 40.0, 170.0];
        let rule = BoxRule::learn(bbox, &kp).unwrap();
        let inside = kp.iter().filter(|p| p[0] >= 0.0).count() as f32 / 21.0;
        let c = tracking_confidence(&rule, bbox, &kp, 640, 480);
        assert!((c - inside).abs() < 1e-5, "{c} vs {inside}");
        assert!((0.4..0.6).contains(&c));
    }
}
