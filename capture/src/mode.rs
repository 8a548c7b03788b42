//! What a camera offers (recorded from the driver's own lists) and picking
//! the one mode that matches the config exactly.
//!
//! Cameras list modes per pixel format: a size (or, on V4L2, a stepwise size
//! range) and the frame rates it supports at that size. We never ask a driver
//! to "get close": a mode is chosen from its own list, size and rate
//! together, so the format and its rate always belong to each other (pairing
//! one format's rate with another's is what makes AVFoundation throw).

use std::fmt;

use crate::format::{PixelFormat, YuvRange};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    pub const fn new(width: u32, height: u32) -> Size {
        Size { width, height }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// The sizes of one entry of the driver's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sizes {
    One(Size),
    /// V4L2 `STEPWISE`/`CONTINUOUS`: every min + k·step up to max.
    Stepwise {
        min: Size,
        max: Size,
        step: Size,
    },
}

impl Sizes {
    pub fn contains(&self, size: Size) -> bool {
        match *self {
            Sizes::One(s) => s == size,
            Sizes::Stepwise { min, max, step } => {
                let on_grid = |v: u32, lo: u32, hi: u32, step: u32| {
                    (lo..=hi).contains(&v) && (v - lo) % step.max(1) == 0
                };
                on_grid(size.width, min.width, max.width, step.width)
                    && on_grid(size.height, min.height, max.height, step.height)
            }
        }
    }

    /// The listed size nearest to `size` (itself when contained).
    fn nearest(&self, size: Size) -> Size {
        match *self {
            Sizes::One(s) => s,
            Sizes::Stepwise { min, max, step } => {
                // In u64 and with the bounds put in order: a driver's list
                // is not trusted to be sane.
                let snap = |v: u32, a: u32, b: u32, step: u32| {
                    let (lo, hi) = (u64::from(a.min(b)), u64::from(a.max(b)));
                    let step = u64::from(step.max(1));
                    let k = (u64::from(v).clamp(lo, hi) - lo + (step - 1) / 2) / step;
                    let snapped = (lo + k * step).min(hi);
                    u32::try_from(snapped).unwrap_or(u32::MAX)
                };
                Size::new(
                    snap(size.width, min.width, max.width, step.width),
                    snap(size.height, min.height, max.height, step.height),
                )
            }
        }
    }
}

impl fmt::Display for Sizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sizes::One(s) => s.fmt(f),
            Sizes::Stepwise { min, max, step } => write!(f, "{min}..{max} step {step}"),
        }
    }
}

/// Seconds per frame as a fraction, the way drivers state rates (V4L2's
/// `v4l2_fract`, CoreMedia's `CMTime` value/timescale): 1001/30000 is 29.97 fps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interval {
    pub numerator: u32,
    pub denominator: u32,
}

impl Interval {
    pub const fn new(numerator: u32, denominator: u32) -> Interval {
        Interval {
            numerator,
            denominator,
        }
    }

    /// The time between frames; a second for a degenerate interval.
    pub fn period(self) -> std::time::Duration {
        if self.denominator == 0 {
            return std::time::Duration::from_secs(1);
        }
        std::time::Duration::from_secs(u64::from(self.numerator)) / self.denominator
    }

    /// Frames per second; 0 for a degenerate interval.
    pub fn fps(self) -> f64 {
        if self.numerator == 0 {
            0.0
        } else {
            f64::from(self.denominator) / f64::from(self.numerator)
        }
    }
}

/// The rates a mode supports: one rate (`fastest == slowest`) or a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// The shortest frame interval (the highest rate).
    pub fastest: Interval,
    /// The longest frame interval (the lowest rate).
    pub slowest: Interval,
}

impl Rates {
    pub const fn exactly(interval: Interval) -> Rates {
        Rates {
            fastest: interval,
            slowest: interval,
        }
    }

    /// The range's ends in frames per second, lowest first (whatever order
    /// the driver listed them in).
    fn bounds(&self) -> (f64, f64) {
        let (a, b) = (self.slowest.fps(), self.fastest.fps());
        (a.min(b), a.max(b))
    }

    /// The interval to ask for to get `fps`, and how far its rate is from
    /// `fps`: 1/fps when the range holds it (or the range's end that is
    /// exactly it), else the end within [`FPS_TOLERANCE`] of it (a camera
    /// listing 29.97 serves a config of 30 at 29.97).
    fn interval_for(&self, fps: u32) -> Option<(Interval, f64)> {
        let (lo, hi) = self.bounds();
        let wanted = f64::from(fps);
        let ends = [self.fastest, self.slowest];
        let miss = |i: &Interval| (i.fps() - wanted).abs();
        if lo <= wanted && wanted <= hi {
            let end = ends.into_iter().find(|i| miss(i) < 1e-9);
            return Some((end.unwrap_or(Interval::new(1, fps)), 0.0));
        }
        ends.into_iter()
            .filter(|i| miss(i) <= wanted * FPS_TOLERANCE)
            .min_by(|a, b| miss(a).total_cmp(&miss(b)))
            .map(|i| (i, miss(&i)))
    }

    /// How far `fps` lies outside the range (0 inside).
    fn distance(&self, fps: f64) -> f64 {
        let (lo, hi) = self.bounds();
        if fps < lo {
            lo - fps
        } else if fps > hi {
            fps - hi
        } else {
            0.0
        }
    }

    /// The rate nearest to `fps` within the range.
    fn nearest(&self, fps: f64) -> f64 {
        let (lo, hi) = self.bounds();
        fps.clamp(lo, hi)
    }
}

impl fmt::Display for Rates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fastest == self.slowest {
            write!(f, "{}", Fps(self.fastest.fps()))
        } else {
            write!(f, "{}-{}", Fps(self.slowest.fps()), Fps(self.fastest.fps()))
        }
    }
}

/// A rate printed as people write it: 30, 29.97, 7.5.
struct Fps(f64);

impl fmt::Display for Fps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rounded = (self.0 * 100.0).round() / 100.0;
        write!(f, "{rounded}")
    }
}

/// A rate within 1 % of the one asked for is the one asked for (NTSC-style
/// 29.97 for 30; 59.94 for 60).
pub const FPS_TOLERANCE: f64 = 0.01;

/// One entry of a camera's list: a format at some sizes with some rates.
#[derive(Debug, Clone, PartialEq)]
pub struct Mode {
    /// The driver's name for the layout (`420f`, `YUYV`, `MJPG`).
    pub fourcc: String,
    /// How we would read it; `None` for a layout we cannot convert.
    pub format: Option<PixelFormat>,
    /// Known from the fourcc alone for CoreVideo's bi-planar pair.
    pub range: Option<YuvRange>,
    pub sizes: Sizes,
    pub rates: Vec<Rates>,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rates: Vec<String> = self.rates.iter().map(Rates::to_string).collect();
        write!(
            f,
            "{} {} @ {} fps",
            self.sizes,
            self.fourcc,
            rates.join(", ")
        )
    }
}

/// What the config asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    pub size: Size,
    pub fps: u32,
    /// In order of preference; formats not named are never chosen.
    pub formats: Vec<PixelFormat>,
}

/// The mode to open.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Its index in the device's list.
    pub mode: usize,
    pub fourcc: String,
    pub format: PixelFormat,
    pub size: Size,
    pub interval: Interval,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} {}",
            self.size,
            Fps(self.interval.fps()),
            self.fourcc
        )
    }
}

/// No listed mode has the size and rate asked for, in an accepted format.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{device:?} offers no {size} at {fps} fps{formats}; closest: {closest}",
    formats = accepted_formats(formats),
    closest = if closest.is_empty() { "none".to_owned() } else { closest.join(", ") })]
pub struct NoMatch {
    pub device: String,
    pub size: Size,
    pub fps: u32,
    pub formats: Vec<PixelFormat>,
    /// Up to three modes the device does offer, nearest first
    /// (`1280x720@24 MJPG`).
    pub closest: Vec<String>,
}

fn accepted_formats(formats: &[PixelFormat]) -> String {
    if formats.len() == PixelFormat::ALL.len() {
        return String::new();
    }
    let names: Vec<&str> = formats.iter().map(|f| f.name()).collect();
    format!(" in {}", names.join("/"))
}

/// Picks the mode with exactly `want.size`, a rate range holding `want.fps`,
/// and the most preferred format; between CoreVideo's `420f` and `420v`,
/// full range (no values lost to the video-range clamp).
pub fn negotiate(device: &str, modes: &[Mode], want: &Want) -> Result<Choice, NoMatch> {
    let preference = |m: &Mode| {
        let format = m
            .format
            .and_then(|f| want.formats.iter().position(|&w| w == f));
        format.map(|rank| (rank, m.range != Some(YuvRange::Full)))
    };
    let best = modes
        .iter()
        .enumerate()
        .filter(|(_, m)| m.sizes.contains(want.size))
        .filter_map(|(i, m)| {
            let rank = preference(m)?;
            // The listed rate nearest the one asked for: an exact 30 beats
            // a 29.97 listed before it.
            let (interval, _) = m
                .rates
                .iter()
                .filter_map(|r| r.interval_for(want.fps))
                .min_by(|a, b| a.1.total_cmp(&b.1))?;
            Some((rank, i, interval))
        })
        .min_by_key(|(rank, i, _)| (*rank, *i));
    if let Some((_, i, interval)) = best {
        let m = &modes[i];
        return Ok(Choice {
            mode: i,
            fourcc: m.fourcc.clone(),
            format: m.format.expect("preference() kept only known formats"),
            size: want.size,
            interval,
        });
    }
    Err(NoMatch {
        device: device.to_owned(),
        size: want.size,
        fps: want.fps,
        formats: want.formats.clone(),
        closest: closest(modes, want),
    })
}

/// The three offered modes nearest to what was asked, by size, then rate;
/// each mode at its rate nearest the one asked for.
fn closest(modes: &[Mode], want: &Want) -> Vec<String> {
    let fps = f64::from(want.fps);
    let mut offers: Vec<(f64, String)> = Vec::new();
    for m in modes.iter().filter(|m| m.format.is_some()) {
        let size = m.sizes.nearest(want.size);
        let size_miss = f64::from(size.width.abs_diff(want.size.width))
            + f64::from(size.height.abs_diff(want.size.height));
        let Some(rates) = m
            .rates
            .iter()
            .min_by(|a, b| a.distance(fps).total_cmp(&b.distance(fps)))
        else {
            continue;
        };
        // A pixel of size off weighs about as much as 0.1 fps off.
        let score = size_miss + rates.distance(fps) * 10.0;
        let text = format!("{size}@{} {}", Fps(rates.nearest(fps)), m.fourcc);
        offers.push((score, text));
    }
    offers.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut out: Vec<String> = Vec::new();
    for (_, text) in offers {
        if !out.contains(&text) {
            out.push(text);
        }
        if out.len() == 3 {
            break;
        }
    }
    out
}
