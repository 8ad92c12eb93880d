//! When a failed callback is tried again, and when it is given up.

use std::time::Duration;

/// How long a callback is retried, counted from its event: after this it is dropped (logged and
/// counted as `expired`).
pub const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// The ceiling of the first retry's delay; each later retry doubles it up to [`MAX_STEP`].
pub const FIRST_STEP: Duration = Duration::from_secs(10);

/// The largest ceiling of one retry's delay.
pub const MAX_STEP: Duration = Duration::from_secs(60 * 60);

/// The delay before the next try after `attempt` failed tries (1 after the first failure), with
/// "equal jitter": uniform in `[ceiling/2, ceiling]` where the ceiling is
/// `min(FIRST_STEP × 2^(attempt-1), MAX_STEP)`. So the first retry comes after 5–10 s, the
/// eleventh and later after 30–60 min; about 30 tries fit in [`MAX_AGE`]. `random` spreads the
/// delay (any `u64`, e.g. `dispatch::backoff::jitter()`); the same inputs give the same delay.
/// An `attempt` of 0 is taken as 1.
pub fn backoff(attempt: u32, random: u64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let ceiling = FIRST_STEP.saturating_mul(1u32 << doublings).min(MAX_STEP);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    let half = ceiling_ms / 2;
    let spread = ceiling_ms - half;
    Duration::from_millis(half + random % spread.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(attempt: u32, random: u64, expected_ms: u64) {
        assert_eq!(backoff(attempt, random), Duration::from_millis(expected_ms), "{attempt} {random}");
    }

    #[test]
    fn delays() {
        check(1, 0, 5_000);
        check(1, 5_000, 10_000);
        check(1, 5_001, 5_000);
        check(0, 1_234, 6_234);
        check(2, 0, 10_000);
        check(2, 10_000, 20_000);
        check(3, 7, 20_007);
        check(9, 0, 1_280_000);
        check(10, 0, 1_800_000); // 5120 s capped at 3600 s
        check(11, 1_800_000, 3_600_000);
        check(11, 1_800_001, 1_800_000);
        check(32, u64::MAX, 1_800_000 + u64::MAX % 1_800_001);
        check(u32::MAX, u64::MAX, 1_800_000 + u64::MAX % 1_800_001);
    }

    #[test]
    fn bounds_hold_for_every_attempt() {
        let randoms = [0, 1, 4_999, 5_000, 1 << 40, u64::MAX - 1, u64::MAX];
        let mut previous_floor = Duration::ZERO;
        for attempt in 1..200 {
            let floor = backoff(attempt, 0);
            assert!(floor >= previous_floor && floor >= FIRST_STEP / 2, "{attempt}");
            previous_floor = floor;
            for random in randoms {
                let delay = backoff(attempt, random);
                assert!(delay >= floor && delay <= MAX_STEP, "{attempt} {random}: {delay:?}");
            }
        }
    }

    #[test]
    fn retries_fit_in_a_day() {
        let slowest: Duration = (1..=30).map(|attempt| backoff(attempt, u64::MAX)).sum();
        let fastest: Duration = (1..=30).map(|attempt| backoff(attempt, 0)).sum();
        assert!(fastest < MAX_AGE && slowest > MAX_AGE / 2, "{fastest:?} {slowest:?}");
        assert_eq!(MAX_AGE, Duration::from_secs(86_400));
    }
}
