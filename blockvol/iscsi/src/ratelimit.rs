//! Log rate limiting: a misbehaving initiator (a login flood, a stream of
//! protocol errors) must not flood the log. Each limiter lets `burst`
//! events through per second and counts the rest; the next event allowed
//! reports how many were suppressed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A per-second event limiter shared by every thread.
#[derive(Debug)]
pub struct RateLimit {
    burst: u64,
    /// Current second (since the epoch) and events seen in it.
    second: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// At most `burst` events per second.
    pub const fn new(burst: u64) -> RateLimit {
        RateLimit {
            burst,
            second: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed so far)` if this event may be logged.
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Ordering::AcqRel) != now {
            self.count.store(0, Ordering::Release);
        }
        if self.count.fetch_add(1, Ordering::AcqRel) < self.burst {
            Some(self.suppressed.swap(0, Ordering::AcqRel))
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

/// Login refusals and connection drops.
pub static CONNECTION_EVENTS: RateLimit = RateLimit::new(20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_suppresses() {
        let r = RateLimit::new(3);
        let allowed = (0..100).filter(|_| r.allow().is_some()).count();
        // Within one second (or across a boundary: at most twice).
        assert!((3..=6).contains(&allowed), "{allowed}");
        assert!(r.suppressed.load(Ordering::Relaxed) >= 94);
    }
}
