//! Exponential backoff with full jitter between retry rounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::resolved::RetryPolicy;

/// The delay before retry round `round` (1 for the first retry): uniform in
/// `[0, min(max_backoff, initial_backoff × 2^(round-1))]`.
pub fn delay(policy: &RetryPolicy, round: u32, random: u64) -> Duration {
    let factor = 1u32.checked_shl(round.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
    let ceiling = policy.initial_backoff.saturating_mul(factor).min(policy.max_backoff);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(random % ceiling_ms.saturating_add(1))
}

/// A process-wide jitter source (SplitMix64 over a counter seeded from the clock). Jitter only
/// spreads retries in time; it never decides an outcome, so it need not be seeded by tests.
pub fn jitter() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut seed = STATE.load(Ordering::Relaxed);
    if seed == 0 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let _ = STATE.compare_exchange(0, now | 1, Ordering::Relaxed, Ordering::Relaxed);
        seed = STATE.load(Ordering::Relaxed);
    }
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(seed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(initial_ms: u64, max_ms: u64, round: u32, random: u64, expected_ms: u64) {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
        };
        assert_eq!(
            delay(&policy, round, random),
            Duration::from_millis(expected_ms),
            "round {round} random {random}"
        );
    }

    #[test]
    fn delays() {
        check(200, 30_000, 1, 150, 150);
        check(200, 30_000, 1, 201, 0); // 201 % 201
        check(200, 30_000, 3, 799, 799); // ceiling 800
        check(200, 1_000, 5, 999_999, 999_999 % 1001); // capped at max
        check(200, 30_000, 200, u64::MAX, u64::MAX % 30_001);
        check(0, 0, 1, 12345, 0);
    }

    #[test]
    fn jitter_varies() {
        let draws: std::collections::HashSet<u64> = (0..100).map(|_| jitter()).collect();
        assert!(draws.len() > 95);
    }
}
