//! The console's recent history (specs/console.md): every [`SAMPLE_EVERY`], for each provider
//! of the active config, what its attempts did since the sample before — how many, by outcome,
//! and their durations' p50 and p99 — and the queue depth, kept for the last [`WINDOW`].
//!
//! Read from what `/metrics` exports (`Metrics::attempt_totals`: the attempt counters and the
//! duration histogram): nothing is counted twice and the send path does no more work. Memory is
//! bounded: [`SLOTS`] samples per provider of the active config; a provider that leaves the
//! config is forgotten at the next sample.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::{AttemptTotals, DurationHistogram, Metrics, DURATION_BUCKETS};
use crate::routing::Snapshot;
use crate::store::Outcome;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How far back the samples go.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Samples kept per series.
pub const SLOTS: usize = (WINDOW.as_secs() / SAMPLE_EVERY.as_secs()) as usize;

/// The latest `capacity` values pushed, oldest first.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    values: Vec<T>,
    /// Where the next value goes once full (the oldest).
    next: usize,
    capacity: usize,
}

impl<T> Ring<T> {
    pub fn new(capacity: usize) -> Self {
        Ring { values: Vec::new(), next: 0, capacity: capacity.max(1) }
    }

    pub fn push(&mut self, value: T) {
        if self.values.len() < self.capacity {
            self.values.push(value);
        } else if let Some(slot) = self.values.get_mut(self.next) {
            *slot = value;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        let (newer, older) = self.values.split_at(self.next.min(self.values.len()));
        older.iter().chain(newer)
    }
}

/// One provider's attempts in one sample interval.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    /// By outcome, in the order of `Outcome::ALL`.
    outcomes: [u32; Outcome::ALL.len()],
    /// Estimated from the histogram's buckets, in milliseconds; `None` without attempts.
    p50_ms: Option<f32>,
    p99_ms: Option<f32>,
}

/// One provider's samples and the totals the last one was taken from.
#[derive(Debug)]
struct History {
    last: AttemptTotals,
    samples: Ring<Sample>,
}

impl History {
    fn new(totals: AttemptTotals) -> Self {
        History { last: totals, samples: Ring::new(SLOTS) }
    }

    /// The sample of what happened between the last totals and `totals`. A counter that went
    /// down (a channel left the provider: its counters are no longer summed) counts nothing.
    fn record(&mut self, totals: AttemptTotals) {
        let delta = |now: u64, before: u64| now.saturating_sub(before);
        let outcomes = std::array::from_fn(|i| {
            u32::try_from(delta(totals.outcomes[i], self.last.outcomes[i])).unwrap_or(u32::MAX)
        });
        let durations: [u64; DURATION_BUCKETS] =
            std::array::from_fn(|i| delta(totals.durations[i], self.last.durations[i]));
        let ms = |q| quantile(&durations, q).map(|seconds| (seconds * 1000.0) as f32);
        self.samples.push(Sample { outcomes, p50_ms: ms(0.5), p99_ms: ms(0.99) });
        self.last = totals;
    }

    fn series(&self) -> ProviderSeries {
        let seconds = SAMPLE_EVERY.as_secs_f64();
        let mut series = ProviderSeries::default();
        let mut outcomes = [0u64; Outcome::ALL.len()];
        let success = Outcome::ALL.iter().position(|o| *o == Outcome::Success).unwrap_or_default();
        for sample in self.samples.iter() {
            let attempts: u32 = sample.outcomes.iter().sum();
            let succeeded = sample.outcomes[success];
            series.attempts_per_s.push(round(f64::from(attempts) / seconds, 100.0));
            series.success_pct.push(
                (attempts > 0).then(|| round(f64::from(succeeded) * 100.0 / f64::from(attempts), 10.0)),
            );
            series.p50_ms.push(sample.p50_ms.map(|ms| round(f64::from(ms), 10.0)));
            series.p99_ms.push(sample.p99_ms.map(|ms| round(f64::from(ms), 10.0)));
            for (total, count) in outcomes.iter_mut().zip(sample.outcomes) {
                *total += u64::from(count);
            }
        }
        series.outcomes =
            Outcome::ALL.iter().zip(outcomes).filter(|(_, n)| *n > 0).map(|(o, n)| (o.as_str(), n)).collect();
        series
    }
}

/// `value` rounded to `1 / per` (a short JSON number).
fn round(value: f64, per: f64) -> f64 {
    (value * per).round() / per
}

/// The `q` quantile (0 < q ≤ 1) of the observations counted per bucket, in seconds, estimated
/// as Prometheus' `histogram_quantile` does: linearly inside the bucket the rank falls in (the
/// first bucket starts at 0); in the `+Inf` bucket, the highest finite bound. `None` without
/// observations.
pub fn quantile(counts: &[u64; DURATION_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &count) in counts.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { DurationHistogram::bound(i - 1) };
            let upper = DurationHistogram::bound(i);
            if upper.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (upper - lower) * (rank - below as f64) / count as f64);
        }
        below += count;
    }
    Some(DurationHistogram::bound(DURATION_BUCKETS - 2))
}

/// A provider's last [`WINDOW`], one value per sample, oldest first (`GET /admin/console`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct ProviderSeries {
    /// Attempts per second.
    pub attempts_per_s: Vec<f64>,
    /// The share of attempts that succeeded, in percent; `null` for an interval without any.
    pub success_pct: Vec<Option<f64>>,
    /// Median attempt duration, in ms (estimated from the histogram buckets); `null` without attempts.
    pub p50_ms: Vec<Option<f64>>,
    /// 99th percentile attempt duration, in ms; `null` without attempts.
    pub p99_ms: Vec<Option<f64>>,
    /// Attempts in the window by outcome (`success`, `error`, `timeout`, `rate_limited`,
    /// `rejected`, `misconfigured`); outcomes with none are left out.
    #[schema(value_type = BTreeMap<String, u64>)]
    pub outcomes: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
struct Inner {
    providers: HashMap<Arc<str>, History>,
    queue_depth: Ring<u32>,
}

/// The samples of every provider of the active config, and of the queue depth.
#[derive(Debug)]
pub struct Stats {
    inner: Mutex<Inner>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats { inner: Mutex::new(Inner { providers: HashMap::new(), queue_depth: Ring::new(SLOTS) }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change leaves the samples consistent: take them after a panic too.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes one sample of every provider in `snapshot` (a provider seen for the first time
    /// starts its history: its first sample is the next one) and of `queue_depth`.
    pub fn sample(&self, snapshot: &Snapshot, metrics: &Metrics, queue_depth: usize) {
        // The counters are read before the lock: HTTP readers never wait for them.
        let totals: Vec<(Arc<str>, AttemptTotals)> = snapshot
            .providers()
            .iter()
            .map(|p| {
                let channels = p.config.channels.iter().map(|c| c.as_str());
                (Arc::clone(&p.label), metrics.attempt_totals(&p.label, channels))
            })
            .collect();
        let mut inner = self.lock();
        let mut seen = std::collections::HashSet::with_capacity(totals.len());
        for (name, totals) in totals {
            match inner.providers.get_mut(&name) {
                Some(history) => history.record(totals),
                None => {
                    inner.providers.insert(Arc::clone(&name), History::new(totals));
                }
            }
            seen.insert(name);
        }
        inner.providers.retain(|name, _| seen.contains(name));
        inner.queue_depth.push(u32::try_from(queue_depth).unwrap_or(u32::MAX));
    }

    /// The series of each of `names` (empty for a provider not sampled yet).
    pub fn series<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> Vec<ProviderSeries> {
        let inner = self.lock();
        names
            .into_iter()
            .map(|name| inner.providers.get(name).map(History::series).unwrap_or_default())
            .collect()
    }

    /// The queue depth at each sample, oldest first.
    pub fn queue_depth(&self) -> Vec<u32> {
        self.lock().queue_depth.iter().copied().collect()
    }
}

/// Samples every [`SAMPLE_EVERY`] (the first at once) until `stop` turns true.
pub async fn run(
    stats: Arc<Stats>,
    snapshot: Arc<arc_swap::ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    queue_depth: impl Fn() -> usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => stats.sample(&snapshot.load(), &metrics, queue_depth()),
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_latest_oldest_first() {
        let check = |capacity: usize, pushed: &[u32], expected: &[u32]| {
            let mut ring = Ring::new(capacity);
            for value in pushed {
                ring.push(*value);
            }
            assert_eq!(ring.iter().copied().collect::<Vec<_>>(), expected, "{capacity} {pushed:?}");
        };
        check(3, &[], &[]);
        check(3, &[1, 2], &[1, 2]);
        check(3, &[1, 2, 3], &[1, 2, 3]);
        check(3, &[1, 2, 3, 4], &[2, 3, 4]);
        check(3, &[1, 2, 3, 4, 5, 6, 7], &[5, 6, 7]);
        check(1, &[1, 2], &[2]);
        // A ring of 0 keeps one value rather than none.
        check(0, &[1, 2], &[2]);
    }

    /// Counts per bucket from `(bucket, count)` pairs.
    fn buckets(pairs: &[(usize, u64)]) -> [u64; DURATION_BUCKETS] {
        let mut counts = [0; DURATION_BUCKETS];
        for (bucket, count) in pairs {
            counts[*bucket] = *count;
        }
        counts
    }

    #[test]
    fn quantiles_as_histogram_quantile() {
        // Bounds: bucket i ends at 1 ms · 2^i; bucket 15 is +Inf.
        let check = |pairs: &[(usize, u64)], q: f64, expected_ms: Option<f64>| {
            let got = quantile(&buckets(pairs), q).map(|s| round(s * 1000.0, 1000.0));
            assert_eq!(got, expected_ms, "{pairs:?} q={q}");
        };
        check(&[], 0.5, None);
        // All in the first bucket (0–1 ms): interpolated from 0.
        check(&[(0, 10)], 0.5, Some(0.5));
        check(&[(0, 10)], 0.99, Some(0.99));
        // 2–4 ms holds all: the median halfway.
        check(&[(2, 4)], 0.5, Some(3.0));
        // 90 fast (≤ 1 ms), 10 slow (512–1024 ms): p50 fast, p99 in the slow bucket.
        check(&[(0, 90), (10, 10)], 0.5, Some(0.556));
        check(&[(0, 90), (10, 10)], 0.99, Some(972.8));
        // In +Inf: the highest finite bound (16.384 s).
        check(&[(15, 3)], 0.5, Some(16384.0));
    }

    fn totals(outcomes: [u64; 6], durations: &[(usize, u64)]) -> AttemptTotals {
        AttemptTotals { outcomes, durations: buckets(durations) }
    }

    #[test]
    fn samples_are_what_happened_between_two_totals() {
        // (cumulative totals read at each sample) → the series; the first totals start it.
        let check = |reads: &[AttemptTotals], expected: ProviderSeries| {
            let mut history = History::new(reads[0]);
            for read in &reads[1..] {
                history.record(*read);
            }
            assert_eq!(history.series(), expected);
        };
        let none = ProviderSeries::default();
        check(&[totals([0; 6], &[])], none.clone());
        check(
            &[totals([5, 0, 0, 0, 0, 0], &[(0, 5)]), totals([5, 0, 0, 0, 0, 0], &[(0, 5)])],
            ProviderSeries {
                attempts_per_s: vec![0.0],
                success_pct: vec![None],
                p50_ms: vec![None],
                p99_ms: vec![None],
                outcomes: BTreeMap::new(),
            },
        );
        // 10 attempts in the first interval, 3 success + 7 error (2–4 ms); then 5 timeouts of
        // 8–16 ms; counts before the first read are not in any sample.
        check(
            &[
                totals([100, 0, 0, 0, 0, 0], &[(0, 100)]),
                totals([103, 0, 7, 0, 0, 0], &[(0, 100), (2, 10)]),
                totals([103, 0, 7, 5, 0, 0], &[(0, 100), (2, 10), (4, 5)]),
            ],
            ProviderSeries {
                attempts_per_s: vec![2.0, 1.0],
                success_pct: vec![Some(30.0), Some(0.0)],
                p50_ms: vec![Some(3.0), Some(12.0)],
                p99_ms: vec![Some(4.0), Some(15.9)],
                outcomes: BTreeMap::from([("success", 3), ("error", 7), ("timeout", 5)]),
            },
        );
        // A counter that went down (a channel left the provider) counts nothing.
        check(
            &[totals([9, 0, 0, 0, 0, 0], &[(0, 9)]), totals([4, 0, 0, 0, 0, 0], &[(0, 4)])],
            ProviderSeries {
                attempts_per_s: vec![0.0],
                success_pct: vec![None],
                p50_ms: vec![None],
                p99_ms: vec![None],
                outcomes: BTreeMap::new(),
            },
        );
    }

    #[test]
    fn a_history_holds_the_window_only() {
        let mut history = History::new(AttemptTotals::default());
        for n in 1..=(SLOTS as u64 + 7) {
            history.record(totals([n, 0, 0, 0, 0, 0], &[]));
        }
        let series = history.series();
        assert_eq!(series.attempts_per_s.len(), SLOTS);
        assert_eq!(series.outcomes, BTreeMap::from([("success", SLOTS as u64)]));
    }
}
