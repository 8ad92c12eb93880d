//! Circuit breaker: closed → (failure_threshold consecutive counted failures) → open for open_ms
//! (doubling on each consecutive trip, capped at 8×) → half-open, letting `half_open_probes`
//! probes through: a probe success closes it, a probe failure opens it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::resolved::BreakerPolicy;

/// The longest an open period may grow to, as a multiple of `open_ms`.
const MAX_OPEN_FACTOR: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    /// The value of the `switchboard_breaker_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// How an attempt counts for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Counts towards opening (timeouts, 5xx, 401/403, connection failures).
    Failure,
    /// Says nothing about the provider's health (429, rejections).
    Neutral,
}

/// Leave to send one attempt; hand it back with [`Breaker::record`].
#[derive(Debug)]
#[must_use]
pub struct Permit {
    probe: bool,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant, trips: u32 },
    HalfOpen { in_flight: u32, trips: u32 },
}

#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    inner: Mutex<Inner>,
    /// Whether `inner` is other than closed, written under its lock: a closed breaker (the
    /// usual case) answers [`Breaker::open_until`] without taking the lock.
    not_closed: AtomicBool,
}

/// The breaker's state, locked; `not_closed` follows it when the lock is let go.
struct Locked<'a> {
    inner: MutexGuard<'a, Inner>,
    not_closed: &'a AtomicBool,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.not_closed.store(!matches!(*self.inner, Inner::Closed { .. }), Ordering::Release);
    }
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            not_closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock leaves a consistent state: take it anyway.
        let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Locked { inner, not_closed: &self.not_closed }
    }

    /// The state now, moving open → half-open when the open period is over.
    pub fn state(&self, now: Instant) -> BreakerState {
        let mut inner = self.lock();
        Self::expire(&mut inner, now);
        match *inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// When an open breaker will let a probe through; `None` if it is not open.
    pub fn open_until(&self, now: Instant) -> Option<Instant> {
        if !self.not_closed.load(Ordering::Acquire) {
            return None;
        }
        let mut inner = self.lock();
        Self::expire(&mut inner, now);
        match *inner {
            Inner::Open { until, .. } => Some(until),
            _ => None,
        }
    }

    fn expire(inner: &mut Inner, now: Instant) {
        if let Inner::Open { until, trips } = *inner {
            if now >= until {
                *inner = Inner::HalfOpen { in_flight: 0, trips };
            }
        }
    }

    /// Leave to send, or `None` while open or while all half-open probes are out.
    pub fn try_acquire(&self, now: Instant) -> Option<Permit> {
        let mut inner = self.lock();
        Self::expire(&mut inner, now);
        match &mut *inner {
            Inner::Closed { .. } => Some(Permit { probe: false }),
            Inner::Open { .. } => None,
            Inner::HalfOpen { in_flight, .. } => {
                if *in_flight < self.policy.half_open_probes {
                    *in_flight += 1;
                    Some(Permit { probe: true })
                } else {
                    None
                }
            }
        }
    }

    /// Records an attempt's outcome; returns the new state when it changed.
    pub fn record(&self, permit: Permit, verdict: Verdict, now: Instant) -> Option<BreakerState> {
        let mut inner = self.lock();
        match (&mut *inner, verdict) {
            (Inner::Closed { failures }, Verdict::Success) => {
                *failures = 0;
                None
            }
            (Inner::Closed { failures }, Verdict::Failure) => {
                *failures += 1;
                if *failures >= self.policy.failure_threshold {
                    *inner = Inner::Open { until: now + self.open_for(1), trips: 1 };
                    return Some(BreakerState::Open);
                }
                None
            }
            (Inner::Closed { .. }, Verdict::Neutral) => None,
            (Inner::HalfOpen { in_flight, trips }, verdict) if permit.probe => {
                *in_flight = in_flight.saturating_sub(1);
                match verdict {
                    Verdict::Success => {
                        *inner = Inner::Closed { failures: 0 };
                        Some(BreakerState::Closed)
                    }
                    Verdict::Failure => {
                        let trips = *trips + 1;
                        *inner = Inner::Open { until: now + self.open_for(trips), trips };
                        Some(BreakerState::Open)
                    }
                    Verdict::Neutral => None,
                }
            }
            // An attempt that started before the breaker changed state: its outcome is stale.
            _ => None,
        }
    }

    /// The open period of the `trips`th consecutive trip: open_ms doubled per trip, capped.
    fn open_for(&self, trips: u32) -> Duration {
        let factor = 1u32.checked_shl(trips.saturating_sub(1)).unwrap_or(u32::MAX).min(MAX_OPEN_FACTOR);
        self.policy.open.saturating_mul(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, probes: u32) -> Breaker {
        Breaker::new(BreakerPolicy {
            failure_threshold: threshold,
            open: Duration::from_millis(100),
            half_open_probes: probes,
        })
    }

    /// Runs a script of `(ms since start, verdict)` attempts; returns the state after each.
    fn check(b: &Breaker, steps: &[(u64, Option<Verdict>)], expected: &[BreakerState]) {
        let start = Instant::now();
        let mut states = Vec::new();
        for (ms, verdict) in steps {
            let now = start + Duration::from_millis(*ms);
            match (b.try_acquire(now), verdict) {
                (Some(permit), Some(verdict)) => {
                    let _ = b.record(permit, *verdict, now);
                }
                (Some(permit), None) => drop(permit),
                (None, _) => {}
            }
            // open_until's lock-free answer for a closed breaker agrees with the state.
            let open = b.open_until(now).is_some();
            let state = b.state(now);
            assert_eq!(open, state == BreakerState::Open, "at {ms} ms: {state:?}");
            states.push(state);
        }
        assert_eq!(states, expected);
    }

    use BreakerState::*;
    use Verdict::*;

    #[test]
    fn opens_after_consecutive_counted_failures_only() {
        check(
            &breaker(3, 1),
            &[
                (0, Some(Failure)),
                (1, Some(Neutral)),
                (2, Some(Failure)),
                (3, Some(Success)),
                (4, Some(Failure)),
                (5, Some(Failure)),
                (6, Some(Failure)),
            ],
            &[Closed, Closed, Closed, Closed, Closed, Closed, Open],
        );
    }

    #[test]
    fn half_open_probe_closes_or_reopens_with_growing_period() {
        let b = breaker(1, 1);
        // Trip at 0 → open 100 ms; probe fails at 100 → open 200 ms (until 300); probe at 300 succeeds.
        check(
            &b,
            &[
                (0, Some(Failure)),
                (50, Some(Success)),
                (100, Some(Failure)),
                (250, Some(Success)),
                (300, Some(Success)),
                (301, Some(Success)),
            ],
            &[Open, Open, Open, Open, Closed, Closed],
        );
    }

    #[test]
    fn half_open_lets_only_the_configured_probes_through() {
        let b = breaker(1, 2);
        let start = Instant::now();
        let _ = b.try_acquire(start).map(|p| b.record(p, Failure, start));
        let later = start + Duration::from_millis(100);
        let first = b.try_acquire(later);
        let second = b.try_acquire(later);
        assert!(first.is_some() && second.is_some());
        assert!(b.try_acquire(later).is_none(), "a third probe while two are out");
        assert_eq!(first.map(|p| b.record(p, Neutral, later)), Some(None));
        assert!(b.try_acquire(later).is_some(), "a neutral outcome frees its probe slot");
    }

    #[test]
    fn open_period_is_capped() {
        let b = breaker(1, 1);
        assert_eq!(b.open_for(1), Duration::from_millis(100));
        assert_eq!(b.open_for(2), Duration::from_millis(200));
        assert_eq!(b.open_for(4), Duration::from_millis(800));
        assert_eq!(b.open_for(40), Duration::from_millis(800));
    }
}
