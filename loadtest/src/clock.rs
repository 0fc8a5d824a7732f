//! One monotonic clock for the whole process: markers carry nanoseconds since [`epoch`], and
//! every executor thread reads the same epoch, so a send time written on one core can be
//! compared with a receive time read on another.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The instant all marker times count from: the first call in the process fixes it.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`]. Wraps after 584 years.
pub fn now_ns() -> u64 {
    ns_since_epoch(Instant::now())
}

/// Nanoseconds from [`epoch`] to `at` (zero for instants before it).
pub fn ns_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

/// The instant `ns` nanoseconds after [`epoch`].
pub fn instant_at(ns: u64) -> Instant {
    epoch() + Duration::from_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_round_trips() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        let at = instant_at(b);
        assert_eq!(ns_since_epoch(at), b);
    }
}
