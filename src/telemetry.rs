//! Logging set-up, and the rate limit that keeps peers from flooding the log.
//!
//! `tracing` prints nothing without a subscriber; [`init`] installs one, human or JSON,
//! filtered by the configured level.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

/// Swaps the installed subscriber's filter; set once by [`init`].
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
static FILTER: OnceLock<SetFilter> = OnceLock::new();

/// Installs the global subscriber: `filter` in `tracing`'s env-filter syntax (e.g. `info` or
/// `warn,rtmp_relay::conn=debug`), JSON lines or human-readable text. A second call (tests
/// starting several servers) is a no-op. The filter can be changed later with [`set_filter`].
pub fn init(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_thread_names(true);
    // The handle's type names the formatter, which differs between JSON and text: keep a
    // closure over it instead. Reloading is set up last, over the final formatter.
    let installed = if json {
        let builder = builder.json().with_filter_reloading();
        let handle = builder.reload_handle();
        builder.try_init().map(|()| -> SetFilter {
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        })
    } else {
        let builder = builder.with_filter_reloading();
        let handle = builder.reload_handle();
        builder.try_init().map(|()| -> SetFilter {
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        })
    };
    if let Ok(set) = installed {
        let _ = FILTER.set(set);
    }
}

/// Changes the log filter of the subscriber [`init`] installed (a reload's new `--log-level`).
/// An invalid filter is refused and the current one kept.
pub fn set_filter(filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter: {e}"))?;
    match FILTER.get() {
        Some(set) => set(filter),
        None => Err("no log subscriber installed by this process".into()),
    }
}

/// At most one log line per `interval` for one source of repeated events (a slow subscriber, a
/// failing accept), so a peer that can cause the event at will (a hostile or slow client)
/// cannot flood the log. The events held back are counted, and the next line says how many.
///
/// Shard-local: plain `Cell`s, no lock. The caller passes the time, so it costs no clock read
/// and tests can run it on virtual time.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    last_logged: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> Self {
        Self { interval, last_logged: Cell::new(None), suppressed: Cell::new(0) }
    }

    /// One event at `now`. `Some(held_back)`: log it, saying that `held_back` events since the
    /// last line were not logged. `None`: stay quiet (the event is counted for the next line).
    pub fn check(&self, now: Instant) -> Option<u64> {
        let quiet = self
            .last_logged
            .get()
            .is_some_and(|last| now.saturating_duration_since(last) < self.interval);
        if quiet {
            self.suppressed.set(self.suppressed.get().saturating_add(1));
            return None;
        }
        self.last_logged.set(Some(now));
        Some(self.suppressed.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_next_line_counts_what_was_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limiter.check(start), Some(0), "the first event is logged");
        for i in 1..=99 {
            assert_eq!(limiter.check(start + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(limiter.check(start + Duration::from_secs(9)), None, "still within 10 s");
        assert_eq!(
            limiter.check(start + Duration::from_secs(10)),
            Some(100),
            "the next line says 100 events were not logged"
        );
        assert_eq!(limiter.check(start + Duration::from_secs(11)), None);
        assert_eq!(limiter.check(start + Duration::from_secs(30)), Some(1));
        assert_eq!(limiter.check(start + Duration::from_secs(45)), Some(0));
    }
}
