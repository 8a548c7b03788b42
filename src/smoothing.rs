//! One Euro filtering of keypoints (Casiez, Roussel and Vogel, CHI 2012): a
//! low-pass filter whose cutoff rises with speed, so a still hand stops
//! jittering and a moving one does not lag. Opt-in per subscriber; state is
//! kept per source and hand track.

use std::collections::HashMap;

use crate::proto;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneEuroParams {
    /// Cutoff (Hz) at rest: lower = smoother, more lag when slow.
    pub min_cutoff: f64,
    /// How fast the cutoff grows with speed (per unit/s of the signal).
    pub beta: f64,
    /// Cutoff (Hz) for the speed estimate itself.
    pub d_cutoff: f64,
}

impl Default for OneEuroParams {
    fn default() -> Self {
        OneEuroParams {
            min_cutoff: 1.0,
            beta: 0.05,
            d_cutoff: 1.0,
        }
    }
}

fn alpha(cutoff: f64, dt: f64) -> f64 {
    let tau = 1.0 / (2.0 * std::f64::consts::PI * cutoff);
    1.0 / (1.0 + tau / dt)
}

/// One filter over a vector of values sampled together.
#[derive(Debug, Clone)]
struct Filter {
    value: Vec<f64>,
    speed: Vec<f64>,
    t_ns: i64,
}

impl Filter {
    fn step(&mut self, p: &OneEuroParams, x: &mut [f32], t_ns: i64) {
        let dt = (t_ns - self.t_ns) as f64 / 1e9;
        if dt <= 0.0 || x.len() != self.value.len() {
            *self = Filter::start(x, t_ns);
            return;
        }
        let a_d = alpha(p.d_cutoff, dt);
        for ((xi, value), speed) in x.iter_mut().zip(&mut self.value).zip(&mut self.speed) {
            let raw = *xi as f64;
            *speed += a_d * ((raw - *value) / dt - *speed);
            let cutoff = p.min_cutoff + p.beta * speed.abs();
            *value += alpha(cutoff, dt) * (raw - *value);
            *xi = *value as f32;
        }
        self.t_ns = t_ns;
    }

    fn start(x: &[f32], t_ns: i64) -> Self {
        Filter {
            value: x.iter().map(|&v| v as f64).collect(),
            speed: vec![0.0; x.len()],
            t_ns,
        }
    }
}

/// Which series of a hand a filter smooths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Series {
    Keypoints2d,
    Keypoints3d,
    Translation,
}

/// A subscriber's filters, keyed by source, track and series.
pub struct Smoother {
    params: OneEuroParams,
    filters: HashMap<(String, u32, Series), Filter>,
}

/// Tracks not seen for this long start afresh.
const STALE_NS: i64 = 1_000_000_000;

impl Smoother {
    pub fn new(params: OneEuroParams) -> Self {
        Smoother {
            params,
            filters: HashMap::new(),
        }
    }

    /// Smooths every hand of a hands event in place, using its capture time.
    pub fn apply(&mut self, event: &mut proto::Event) {
        let Some(proto::event::Payload::Hands(hands)) = &mut event.payload else {
            return;
        };
        let t = event.capture_unix_ns;
        let p = self.params;
        for hand in &mut hands.hands {
            for (series, values) in [
                (Series::Keypoints2d, &mut hand.keypoints_2d),
                (Series::Keypoints3d, &mut hand.keypoints_3d),
                (Series::Translation, &mut hand.camera_translation),
            ] {
                let key = (event.source_id.clone(), hand.track_id, series);
                match self.filters.get_mut(&key) {
                    Some(f) => f.step(&p, values, t),
                    None => {
                        self.filters.insert(key, Filter::start(values, t));
                    }
                }
            }
        }
        self.filters.retain(|_, f| t - f.t_ns < STALE_NS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t_ms: i64, x: f32) -> proto::Event {
        proto::Event {
            source_id: "cam".into(),
            capture_unix_ns: t_ms * 1_000_000,
            payload: Some(proto::event::Payload::Hands(proto::Hands {
                hands: vec![proto::HandPose {
                    track_id: 1,
                    keypoints_2d: vec![x, 0.0],
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn x_of(e: &proto::Event) -> f32 {
        match &e.payload {
            Some(proto::event::Payload::Hands(h)) => h.hands[0].keypoints_2d[0],
            _ => unreachable!(),
        }
    }

    #[test]
    fn jitter_shrinks_and_a_step_is_followed() {
        let mut s = Smoother::new(OneEuroParams::default());
        // ±2 px jitter around 100 at 30 Hz.
        let mut out = Vec::new();
        for i in 0..60 {
            let mut e = event(i * 33, 100.0 + if i % 2 == 0 { 2.0 } else { -2.0 });
            s.apply(&mut e);
            out.push(x_of(&e));
        }
        let late = &out[30..];
        let spread = late.iter().cloned().fold(f32::MIN, f32::max)
            - late.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread < 1.5, "jitter of 4 px left {spread} px");
        // A fast move of 200 px is followed within a few frames.
        let mut last = 0.0;
        for i in 60..70 {
            let mut e = event(i * 33, 300.0);
            s.apply(&mut e);
            last = x_of(&e);
        }
        assert!((last - 300.0).abs() < 20.0, "{last}");
        // Another track starts unfiltered.
        let mut e = event(70 * 33, 5.0);
        if let Some(proto::event::Payload::Hands(h)) = &mut e.payload {
            h.hands[0].track_id = 2;
        }
        s.apply(&mut e);
        assert_eq!(x_of(&e), 5.0);
    }
}
