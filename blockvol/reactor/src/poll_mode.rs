//! Poll modes: when a reactor with nothing to do goes to sleep.

use std::str::FromStr;
use std::time::{Duration, Instant};

/// Default spin window of [`PollMode::Adaptive`].
pub const DEFAULT_ADAPTIVE_SPIN: Duration = Duration::from_micros(50);

/// How a reactor waits for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Never sleep: lowest latency, one core burned per reactor.
    Busy,
    /// Keep spinning while the last work is younger than `spin`, then sleep
    /// until a fd is ready, a timer is due or a message arrives. A sleep and
    /// wake-up costs 50-100 µs on small VMs, so a window of about one
    /// request/response turnaround captures most of the gain of polling at
    /// QD1 without burning a core when idle.
    Adaptive {
        /// How long to keep spinning after the last work.
        spin: Duration,
    },
    /// Sleep after every iteration that did no work.
    Interrupt,
}

impl Default for PollMode {
    fn default() -> Self {
        PollMode::Adaptive {
            spin: DEFAULT_ADAPTIVE_SPIN,
        }
    }
}

/// A poll mode name that is not `busy`, `adaptive`, `adaptive:<µs>` or
/// `interrupt`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown poll mode {0:?} (busy, adaptive[:<spin µs>], interrupt)")]
pub struct ParsePollModeError(pub String);

impl FromStr for PollMode {
    type Err = ParsePollModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "busy" => Ok(PollMode::Busy),
            "interrupt" => Ok(PollMode::Interrupt),
            "adaptive" => Ok(PollMode::default()),
            _ => s
                .strip_prefix("adaptive:")
                .and_then(|us| us.parse::<u64>().ok())
                .map(|us| PollMode::Adaptive {
                    spin: Duration::from_micros(us),
                })
                .ok_or_else(|| ParsePollModeError(s.to_owned())),
        }
    }
}

impl std::fmt::Display for PollMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollMode::Busy => f.write_str("busy"),
            PollMode::Interrupt => f.write_str("interrupt"),
            PollMode::Adaptive { spin } => write!(f, "adaptive:{}", spin.as_micros()),
        }
    }
}

impl PollMode {
    /// Whether an idle iteration at `now` may sleep, given when the reactor
    /// last did work.
    pub(crate) fn may_sleep(self, now: Instant, last_work: Instant) -> bool {
        match self {
            PollMode::Busy => false,
            PollMode::Interrupt => true,
            PollMode::Adaptive { spin } => now.saturating_duration_since(last_work) >= spin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for s in ["busy", "interrupt", "adaptive:50", "adaptive:0"] {
            assert_eq!(s.parse::<PollMode>().unwrap().to_string(), s);
        }
        assert_eq!("adaptive".parse::<PollMode>().unwrap(), PollMode::default());
        assert!("spin".parse::<PollMode>().is_err());
        assert!("adaptive:x".parse::<PollMode>().is_err());
    }

    #[test]
    fn sleep_decision_follows_the_mode() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_micros(30);
        let t2 = t0 + Duration::from_micros(80);
        assert!(!PollMode::Busy.may_sleep(t2, t0));
        assert!(PollMode::Interrupt.may_sleep(t0, t0));
        let a = PollMode::default();
        assert!(!a.may_sleep(t1, t0));
        assert!(a.may_sleep(t2, t0));
    }
}
