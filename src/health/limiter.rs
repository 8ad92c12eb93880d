//! Rate limiting toward a provider: a token bucket (`rate_limit`) and the pause a 429's
//! Retry-After asks for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::resolved::RateLimit;

/// A token bucket whose reservations never fail: each returns when its token is due, so callers
/// wait instead of dropping.
#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    /// (tokens available, as of when). Tokens go negative when reserved ahead.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(limit: RateLimit) -> Self {
        TokenBucket { limit, state: Mutex::new((f64::from(limit.burst), Instant::now())) }
    }

    /// Takes one token; returns how long to wait before using it (zero if available now).
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (tokens, since) = *state;
        let refilled = (tokens + now.saturating_duration_since(since).as_secs_f64() * self.limit.per_second)
            .min(f64::from(self.limit.burst));
        let left = refilled - 1.0;
        *state = (left, now.max(since));
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.limit.per_second)
        }
    }

    /// Gives back a token [`TokenBucket::reserve`] took that will not be used (its message went
    /// elsewhere or ended): the next reservation comes that much sooner, and no token is lost.
    pub fn refund(&self) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.0 = (state.0 + 1.0).min(f64::from(self.limit.burst));
    }
}

impl TokenBucket {
    /// Takes one token if one is there now; otherwise says how long until one is (and takes
    /// nothing): for refusing, where [`TokenBucket::reserve`] is for waiting.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (tokens, since) = *state;
        let refilled = (tokens + now.saturating_duration_since(since).as_secs_f64() * self.limit.per_second)
            .min(f64::from(self.limit.burst));
        if refilled >= 1.0 {
            *state = (refilled - 1.0, now.max(since));
            Ok(())
        } else {
            *state = (refilled, now.max(since));
            Err(Duration::from_secs_f64((1.0 - refilled) / self.limit.per_second))
        }
    }
}

/// A provider paused until a given instant (by a 429). Lock-free: every plan asks.
#[derive(Debug)]
pub struct Pause {
    /// What `until` counts from.
    base: Instant,
    /// The pause's end in nanoseconds after `base` (0: never paused).
    until: AtomicU64,
}

impl Default for Pause {
    fn default() -> Self {
        Pause { base: Instant::now(), until: AtomicU64::new(0) }
    }
}

impl Pause {
    /// Pauses until `until`, unless already paused for longer.
    pub fn pause_until(&self, until: Instant) {
        let nanos = until.saturating_duration_since(self.base).as_nanos();
        self.until.fetch_max(u64::try_from(nanos).unwrap_or(u64::MAX).max(1), Ordering::AcqRel);
    }

    /// When the pause ends, if it has not yet.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        match self.until.load(Ordering::Acquire) {
            0 => None,
            nanos => self.base.checked_add(Duration::from_nanos(nanos)).filter(|until| *until > now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(per_second: f64, burst: u32, at_ms: &[u64], expected_wait_ms: &[u64]) {
        let bucket = TokenBucket::new(RateLimit { per_second, burst });
        let start = Instant::now();
        let waits: Vec<u64> = at_ms
            .iter()
            .map(|ms| bucket.reserve(start + Duration::from_millis(*ms)).as_millis() as u64)
            .collect();
        assert_eq!(waits, expected_wait_ms);
    }

    #[test]
    fn try_take_refuses_without_queueing() {
        let bucket = TokenBucket::new(RateLimit { per_second: 10.0, burst: 2 });
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(bucket.try_take(at(0)), Ok(()));
        assert_eq!(bucket.try_take(at(0)), Ok(()));
        assert_eq!(bucket.try_take(at(0)).map_err(|d| d.as_millis()), Err(100));
        assert_eq!(bucket.try_take(at(50)).map_err(|d| d.as_millis()), Err(50));
        assert_eq!(bucket.try_take(at(100)), Ok(()));
        assert_eq!(bucket.try_take(at(1000)), Ok(()));
    }

    #[test]
    fn bucket() {
        // Burst of 2 at 10/s: two free, then one every 100 ms, queued ahead.
        check(10.0, 2, &[0, 0, 0, 0], &[0, 0, 100, 200]);
        // Refills over time, never above the burst.
        check(10.0, 2, &[0, 0, 1000, 1000, 1000], &[0, 0, 0, 0, 100]);
        check(1000.0, 1, &[0, 1, 2], &[0, 0, 0]);
    }

    /// `reserve` at each time in ms (`r`), or `refund` (`g`): the waits of the reservations.
    fn check_refunds(per_second: f64, burst: u32, steps: &[(char, u64)], expected_wait_ms: &[u64]) {
        let bucket = TokenBucket::new(RateLimit { per_second, burst });
        let start = Instant::now();
        let mut waits = Vec::new();
        for (step, ms) in steps {
            match step {
                'r' => waits.push(bucket.reserve(start + Duration::from_millis(*ms)).as_millis() as u64),
                _ => bucket.refund(),
            }
        }
        assert_eq!(waits, expected_wait_ms, "{steps:?}");
    }

    #[test]
    fn refunded_tokens_serve_the_next_reservation() {
        // Reserved ahead to 300 ms, one given back: the next is due at 300 ms, not 400.
        check_refunds(
            10.0,
            1,
            &[('r', 0), ('r', 0), ('r', 0), ('r', 0), ('g', 0), ('r', 0)],
            &[0, 100, 200, 300, 300],
        );
        // Every reservation given back: the bucket is as if none was taken.
        check_refunds(
            10.0,
            2,
            &[('r', 0), ('r', 0), ('r', 0), ('g', 0), ('g', 0), ('g', 0), ('r', 0), ('r', 0)],
            &[0, 0, 100, 0, 0],
        );
        // Never above the burst: a refund to a full bucket is lost, not saved up.
        check_refunds(10.0, 1, &[('g', 0), ('r', 0), ('r', 0)], &[0, 100]);
        check_refunds(10.0, 1, &[('r', 0), ('g', 0), ('r', 1000), ('r', 1000)], &[0, 0, 100]);
    }

    #[test]
    fn pause_keeps_the_longest() {
        let pause = Pause::default();
        let now = Instant::now();
        assert_eq!(pause.paused_until(now), None);
        pause.pause_until(now + Duration::from_secs(2));
        pause.pause_until(now + Duration::from_secs(1));
        assert_eq!(pause.paused_until(now), Some(now + Duration::from_secs(2)));
        assert_eq!(pause.paused_until(now + Duration::from_secs(3)), None);
    }
}
