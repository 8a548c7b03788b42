//! Turning a driver's timestamp into the moment the frame was captured.
//!
//! Drivers stamp frames on their own clock (CoreMedia's host time, V4L2's
//! `CLOCK_MONOTONIC`). Rather than assume how that clock relates to
//! [`Instant`], we read it once when the frame arrives and subtract the
//! frame's age from our own clocks: the result is right whatever epoch each
//! clock counts from.

use std::time::{Duration, Instant, SystemTime};

/// Older than this and the stamp is not believed (a driver on another clock,
/// or a wrapped counter): the frame counts as captured on arrival.
pub const MAX_BELIEVED_AGE: Duration = Duration::from_secs(5);

/// When a frame was captured, on our clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Captured {
    pub instant: Instant,
    pub system: SystemTime,
    /// Capture to dequeue: how long the frame waited in the driver.
    pub queue: Duration,
}

/// `driver_time` and `clock_now` are on the driver's clock; `now` and
/// `now_system` were read together with `clock_now`.
pub fn captured_at(
    driver_time: Option<Duration>,
    clock_now: Duration,
    now: Instant,
    now_system: SystemTime,
) -> Captured {
    let age = driver_time
        .and_then(|t| clock_now.checked_sub(t))
        .filter(|age| *age <= MAX_BELIEVED_AGE)
        .unwrap_or(Duration::ZERO);
    match (now.checked_sub(age), now_system.checked_sub(age)) {
        (Some(instant), Some(system)) => Captured {
            instant,
            system,
            queue: age,
        },
        _ => Captured {
            instant: now,
            system: now_system,
            queue: Duration::ZERO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clocks() -> (Instant, SystemTime) {
        (
            Instant::now(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        )
    }

    #[test]
    fn a_frame_stamped_before_now_is_dated_back_by_its_age() {
        let (now, sys) = clocks();
        let c = captured_at(
            Some(Duration::from_millis(10_000)),
            Duration::from_millis(10_033),
            now,
            sys,
        );
        assert_eq!(c.queue, Duration::from_millis(33));
        assert_eq!(now - c.instant, Duration::from_millis(33));
        assert_eq!(
            sys.duration_since(c.system).unwrap(),
            Duration::from_millis(33)
        );
    }

    #[test]
    fn missing_future_or_ancient_stamps_count_as_captured_on_arrival() {
        let (now, sys) = clocks();
        for (driver, clock) in [
            (None, 5_000),
            (Some(6_000), 5_000),
            (Some(1_000), 1_000 + 5_001),
        ] {
            let c = captured_at(
                driver.map(Duration::from_millis),
                Duration::from_millis(clock),
                now,
                sys,
            );
            assert_eq!((c.instant, c.system, c.queue), (now, sys, Duration::ZERO));
        }
    }

    #[test]
    fn an_age_of_exactly_the_limit_is_believed() {
        let (now, sys) = clocks();
        let c = captured_at(Some(Duration::ZERO), MAX_BELIEVED_AGE, now, sys);
        assert_eq!(c.queue, MAX_BELIEVED_AGE);
    }
}
