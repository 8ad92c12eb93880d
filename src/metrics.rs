//! The service's Prometheus metrics (names are a contract: see specs/http-api.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::health::BreakerState;
use crate::store::{Outcome, Status};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CompletedLabels {
    channel: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    provider: String,
    channel: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedLabels {
    provider: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiptLabels {
    provider: String,
    delivery_status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    provider: String,
    to: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoutingErrorLabels {
    channel: String,
    reason: String,
}

/// How a config reload ended: the `result` label of `switchboard_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    Rejected,
    Unchanged,
}

impl ReloadResult {
    const ALL: [ReloadResult; 3] = [ReloadResult::Applied, ReloadResult::Rejected, ReloadResult::Unchanged];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Rejected => "rejected",
            ReloadResult::Unchanged => "unchanged",
        }
    }
}

/// The upper bounds of the attempt-duration buckets, in seconds: 1 ms … ~16 s (an implicit
/// `+Inf` bucket follows).
static DURATION_BOUNDS: LazyLock<[f64; DURATION_BUCKETS - 1]> = LazyLock::new(|| {
    let mut bounds = [0.0; DURATION_BUCKETS - 1];
    for (bound, value) in bounds.iter_mut().zip(exponential_buckets(0.001, 2.0, DURATION_BOUNDS_COUNT)) {
        *bound = value;
    }
    bounds
});

/// The finite bounds of `switchboard_dispatch_duration_seconds`.
const DURATION_BOUNDS_COUNT: u16 = 15;
/// Its buckets, `+Inf` included.
pub const DURATION_BUCKETS: usize = DURATION_BOUNDS_COUNT as usize + 1;

/// A provider's attempt durations: a classic Prometheus histogram (encoded as
/// prometheus-client's own) whose bucket counts can also be read back, for the console's
/// p50/p99 (`crate::stats`). Lock-free: an observation is two atomic additions.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Observations per bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        // The first bucket whose bound is at least the value, as prometheus-client counts.
        let bucket = DURATION_BOUNDS.partition_point(|bound| *bound < seconds);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations per bucket so far (not cumulative), the last one `+Inf`.
    pub fn counts(&self) -> [u64; DURATION_BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    /// The upper bound of bucket `i` in seconds (`+Inf` for the last).
    pub fn bound(i: usize) -> f64 {
        DURATION_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY)
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.counts();
        let buckets: Vec<(f64, u64)> =
            counts.iter().enumerate().map(|(i, count)| (Self::bound(i), *count)).collect();
        // The count is the buckets' sum, so that it always equals the `+Inf` bucket.
        let count = counts.iter().sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A provider's attempts so far, summed over its channels (`crate::stats` samples them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttemptTotals {
    /// By outcome, in the order of `Outcome::ALL`.
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Per bucket of `switchboard_dispatch_duration_seconds` (not cumulative).
    pub durations: [u64; DURATION_BUCKETS],
}

pub struct Metrics {
    registry: Registry,
    accepted: Family<ChannelLabels, Counter>,
    completed: Family<CompletedLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    duration: Family<ProviderLabels, DurationHistogram>,
    breaker_state: Family<ProviderLabels, Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    routing_errors: Family<RoutingErrorLabels, Counter>,
    queue_depth: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    possible_duplicates: Counter,
    store_write_failures: Counter,
    orphans_picked_up: Counter,
    config_info: Family<VersionLabels, Gauge>,
    inbound: Family<ChannelLabels, Counter>,
    inbound_duplicates: Family<ChannelLabels, Counter>,
    opt_outs: Family<ChannelLabels, Counter>,
    inbound_rejected: Family<RejectedLabels, Counter>,
    receipts: Family<ReceiptLabels, Counter>,
    receipts_rejected: Family<RejectedLabels, Counter>,
    callbacks: Family<ResultLabels, Counter>,
    last_reload: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let accepted = Family::default();
        let completed = Family::default();
        let attempts = Family::default();
        let duration = Family::default();
        let breaker_state = Family::default();
        let breaker_transitions = Family::default();
        let routing_errors = Family::default();
        let queue_depth = Gauge::default();
        let reloads: Family<ReloadLabels, Counter> = Family::default();
        // Every result is exported from the start, at 0: an alert on `increase()` sees the first
        // rejection (a series born at 1 shows no increase).
        for result in ReloadResult::ALL {
            reloads.get_or_create(&ReloadLabels { result: result.as_str().to_owned() }).inc_by(0);
        }
        let possible_duplicates = Counter::default();
        let store_write_failures = Counter::default();
        let orphans_picked_up = Counter::default();
        let config_info = Family::default();
        let inbound = Family::default();
        let inbound_duplicates = Family::default();
        let opt_outs = Family::default();
        let inbound_rejected = Family::default();
        let receipts = Family::default();
        let receipts_rejected = Family::default();
        let callbacks = Family::default();
        let last_reload = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "switchboard_messages_accepted",
            "Messages accepted (answered 202)",
            accepted.clone(),
        );
        registry.register(
            "switchboard_messages_completed",
            "Messages that reached sent or failed",
            completed.clone(),
        );
        registry.register(
            "switchboard_dispatch_attempts",
            "Attempts to hand a message to a provider",
            attempts.clone(),
        );
        registry.register(
            "switchboard_dispatch_duration_seconds",
            "Duration of provider attempts",
            duration.clone(),
        );
        registry.register(
            "switchboard_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        registry.register(
            "switchboard_breaker_transitions",
            "Circuit breaker state changes",
            breaker_transitions.clone(),
        );
        registry.register(
            "switchboard_routing_errors",
            "Messages that could not be routed",
            routing_errors.clone(),
        );
        registry.register(
            "switchboard_queue_depth",
            "Messages waiting for dispatch (queued or scheduled for retry)",
            queue_depth.clone(),
        );
        registry.register(
            "switchboard_config_reloads",
            "Config reloads by result: applied, rejected, unchanged",
            reloads.clone(),
        );
        registry.register("switchboard_config_info", "1 for the active config version", config_info.clone());
        registry.register(
            "switchboard_config_last_reload_timestamp_seconds",
            "When the active config was loaded (Unix time)",
            last_reload.clone(),
        );
        registry.register(
            "switchboard_possible_duplicates",
            "Messages resumed after a crash interrupted an attempt: the provider may have sent them twice",
            possible_duplicates.clone(),
        );
        registry.register(
            "switchboard_store_write_failures",
            "Dispatch progress writes the store refused (each is retried until it succeeds)",
            store_write_failures.clone(),
        );
        registry.register(
            "switchboard_orphans_picked_up",
            "Queued messages found in the store with no worker holding them, and dispatched",
            orphans_picked_up.clone(),
        );
        registry.register(
            "switchboard_inbound_messages",
            "Inbound messages stored (webhooks and providers' own inbound URLs), by channel",
            inbound.clone(),
        );
        registry.register(
            "switchboard_inbound_duplicates",
            "Inbound messages received again (a provider's redelivery): answered with the first id, not stored",
            inbound_duplicates.clone(),
        );
        registry.register(
            "switchboard_opt_outs",
            "Opt-outs recorded (a STOP keyword from a pair not opted out yet), by channel family",
            opt_outs.clone(),
        );
        registry.register(
            "switchboard_inbound_rejected",
            "Requests to a provider's inbound URL refused, by provider and reason (invalid_signature, invalid_request, unsupported_media_type)",
            inbound_rejected.clone(),
        );
        registry.register(
            "switchboard_receipts",
            "Providers' delivery receipts taken in, by provider and the delivery status they report \
             (`none`: an event only, such as a click; `unknown`: no message of that provider matches)",
            receipts.clone(),
        );
        registry.register(
            "switchboard_receipts_rejected",
            "Requests to a provider's receipt URL refused, by provider and reason (invalid_signature, invalid_request, unsupported_media_type)",
            receipts_rejected.clone(),
        );
        registry.register(
            "switchboard_callbacks",
            "Status callbacks, by result: delivered, failed (to be retried), expired (given up after 24 h), dropped (its message is gone)",
            callbacks.clone(),
        );
        Metrics {
            registry,
            receipts,
            receipts_rejected,
            callbacks,
            inbound_rejected,
            inbound,
            inbound_duplicates,
            opt_outs,
            store_write_failures,
            orphans_picked_up,
            accepted,
            completed,
            attempts,
            duration,
            breaker_state,
            breaker_transitions,
            routing_errors,
            queue_depth,
            reloads,
            possible_duplicates,
            config_info,
            last_reload,
        }
    }

    pub fn accepted(&self, channel: &str) {
        self.accepted.get_or_create(&ChannelLabels { channel: channel.to_owned() }).inc();
    }

    pub fn completed(&self, channel: &str, status: Status) {
        self.completed
            .get_or_create(&CompletedLabels {
                channel: channel.to_owned(),
                status: status.as_str().to_owned(),
            })
            .inc();
    }

    pub fn attempt(&self, provider: &str, channel: &str, outcome: Outcome, latency: Duration) {
        self.attempts
            .get_or_create(&AttemptLabels {
                provider: provider.to_owned(),
                channel: channel.to_owned(),
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
        self.duration.get_or_create(&ProviderLabels { provider: provider.to_owned() }).observe(latency);
    }

    /// `provider`'s attempts so far on `channels` (the counters and histogram above, read).
    pub fn attempt_totals<'c>(
        &self,
        provider: &str,
        channels: impl IntoIterator<Item = &'c str>,
    ) -> AttemptTotals {
        let mut totals = AttemptTotals::default();
        let mut labels =
            AttemptLabels { provider: provider.to_owned(), channel: String::new(), outcome: String::new() };
        for channel in channels {
            channel.clone_into(&mut labels.channel);
            for (total, outcome) in totals.outcomes.iter_mut().zip(Outcome::ALL) {
                outcome.as_str().clone_into(&mut labels.outcome);
                if let Some(counter) = self.attempts.get(&labels) {
                    *total += counter.get();
                }
            }
        }
        if let Some(histogram) = self.duration.get(&ProviderLabels { provider: labels.provider }) {
            totals.durations = histogram.counts();
        }
        totals
    }

    pub fn breaker_state(&self, provider: &str, state: BreakerState) {
        self.breaker_state
            .get_or_create(&ProviderLabels { provider: provider.to_owned() })
            .set(state.gauge());
    }

    pub fn breaker_transition(&self, provider: &str, to: BreakerState) {
        self.breaker_state(provider, to);
        self.breaker_transitions
            .get_or_create(&TransitionLabels { provider: provider.to_owned(), to: to.as_str().to_owned() })
            .inc();
    }

    pub fn routing_error(&self, channel: &str, reason: &str) {
        self.routing_errors
            .get_or_create(&RoutingErrorLabels { channel: channel.to_owned(), reason: reason.to_owned() })
            .inc();
    }

    /// A provider left the config: its state gauge goes (its counters stay, as history).
    pub fn forget_provider(&self, provider: &str) {
        self.breaker_state.remove(&ProviderLabels { provider: provider.to_owned() });
    }

    /// An inbound message on `channel`: stored, or a redelivery of one stored before.
    pub fn inbound(&self, channel: &str, duplicate: bool) {
        let counter = if duplicate { &self.inbound_duplicates } else { &self.inbound };
        counter.get_or_create(&ChannelLabels { channel: channel.to_owned() }).inc();
    }

    /// A request to `provider`'s inbound URL refused for `reason`.
    pub fn inbound_rejected(&self, provider: &str, reason: &str) {
        self.inbound_rejected
            .get_or_create(&RejectedLabels { provider: provider.to_owned(), reason: reason.to_owned() })
            .inc();
    }

    /// A receipt from `provider` reporting `delivery_status` (`none`, `unknown`: see the metric).
    pub fn receipt(&self, provider: &str, delivery_status: &str) {
        let labels =
            ReceiptLabels { provider: provider.to_owned(), delivery_status: delivery_status.to_owned() };
        self.receipts.get_or_create(&labels).inc();
    }

    /// A request to `provider`'s receipt URL refused for `reason`.
    pub fn receipt_rejected(&self, provider: &str, reason: &str) {
        self.receipts_rejected
            .get_or_create(&RejectedLabels { provider: provider.to_owned(), reason: reason.to_owned() })
            .inc();
    }

    /// A callback delivery ended with `result`.
    pub fn callback(&self, result: &str) {
        self.callbacks.get_or_create(&ResultLabels { result: result.to_owned() }).inc();
    }

    /// An opt-out recorded on channel family `family`.
    pub fn opted_out(&self, family: &str) {
        self.opt_outs.get_or_create(&ChannelLabels { channel: family.to_owned() }).inc();
    }

    pub fn possible_duplicate(&self) {
        self.possible_duplicates.inc();
    }

    pub fn store_write_failed(&self) {
        self.store_write_failures.inc();
    }

    pub fn orphan_picked_up(&self) {
        self.orphans_picked_up.inc();
    }

    pub fn reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result: result.as_str().to_owned() }).inc();
    }

    /// Marks `version` as the active config, loaded now.
    pub fn config_active(&self, previous: Option<&str>, version: &str) {
        if let Some(previous) = previous.filter(|p| *p != version) {
            self.config_info.remove(&VersionLabels { version: previous.to_owned() });
        }
        self.config_info.get_or_create(&VersionLabels { version: version.to_owned() }).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_reload.set(now);
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let metrics = Metrics::new();
        metrics.accepted("sms");
        metrics.completed("sms", Status::Sent);
        metrics.attempt("p1", "sms", Outcome::RateLimited, Duration::from_millis(3));
        metrics.breaker_transition("p1", BreakerState::Open);
        metrics.routing_error("push", "no_route");
        metrics.set_queue_depth(7);
        metrics.reload(ReloadResult::Rejected);
        metrics.config_active(None, "aaa");
        metrics.config_active(Some("aaa"), "bbb");
        metrics.inbound("mms", false);
        metrics.inbound("sms", true);
        metrics.opted_out("sms");
        metrics.inbound_rejected("tw", "invalid_signature");
        let text = metrics.render();
        assert!(!text.contains("version=\"aaa\""), "{text}");
        assert!(text.contains("switchboard_config_last_reload_timestamp_seconds "), "{text}");
        for line in [
            "switchboard_messages_accepted_total{channel=\"sms\"} 1",
            "switchboard_messages_completed_total{channel=\"sms\",status=\"sent\"} 1",
            "switchboard_dispatch_attempts_total{provider=\"p1\",channel=\"sms\",outcome=\"rate_limited\"} 1",
            "switchboard_dispatch_duration_seconds_count{provider=\"p1\"} 1",
            "switchboard_breaker_state{provider=\"p1\"} 2",
            "switchboard_breaker_transitions_total{provider=\"p1\",to=\"open\"} 1",
            "switchboard_routing_errors_total{channel=\"push\",reason=\"no_route\"} 1",
            "switchboard_queue_depth 7",
            "switchboard_config_reloads_total{result=\"rejected\"} 1",
            "switchboard_config_reloads_total{result=\"applied\"} 0",
            "switchboard_config_reloads_total{result=\"unchanged\"} 0",
            "switchboard_config_info{version=\"bbb\"} 1",
            "switchboard_possible_duplicates_total 0",
            "switchboard_inbound_messages_total{channel=\"mms\"} 1",
            "switchboard_inbound_duplicates_total{channel=\"sms\"} 1",
            "switchboard_opt_outs_total{channel=\"sms\"} 1",
            "switchboard_inbound_rejected_total{provider=\"tw\",reason=\"invalid_signature\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    /// The durations histogram is encoded as prometheus-client's own histogram with the same
    /// buckets would be (what dashboards and alerts read), and its counts read back.
    #[test]
    fn durations_encode_as_a_classic_histogram() {
        use prometheus_client::metrics::histogram::Histogram;
        let check = |observed_ms: &[u64], counts: &[(usize, u64)]| {
            let ours = DurationHistogram::default();
            let theirs = Histogram::new(exponential_buckets(0.001, 2.0, DURATION_BOUNDS_COUNT));
            for ms in observed_ms {
                ours.observe(Duration::from_millis(*ms));
                theirs.observe(Duration::from_millis(*ms).as_secs_f64());
            }
            fn render(metric: impl prometheus_client::registry::Metric) -> (Option<f64>, Vec<String>) {
                let mut registry = Registry::default();
                registry.register("d", "d", metric);
                let mut out = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                // The sum is added up differently (nanoseconds, not floats): compared apart.
                let sum =
                    out.lines().find_map(|l| l.strip_prefix("d_sum ")).and_then(|v| v.parse::<f64>().ok());
                let rest = out.lines().filter(|l| !l.starts_with("d_sum ")).map(str::to_owned).collect();
                (sum, rest)
            }
            let ((our_sum, ours_text), (their_sum, theirs_text)) = (render(ours), render(theirs));
            assert_eq!(ours_text, theirs_text, "{observed_ms:?}");
            assert!(
                our_sum.zip(their_sum).is_some_and(|(a, b)| (a - b).abs() < 1e-9),
                "{our_sum:?} {their_sum:?}"
            );
            let read = DurationHistogram::default();
            for ms in observed_ms {
                read.observe(Duration::from_millis(*ms));
            }
            let nonzero: Vec<(usize, u64)> =
                read.counts().iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i, *c)).collect();
            assert_eq!(nonzero, counts, "{observed_ms:?}");
        };
        check(&[], &[]);
        // 1 ms is the first bucket's bound (le is inclusive); 3 ms falls in le=0.004.
        check(&[0, 1, 3], &[(0, 2), (2, 1)]);
        check(&[2, 2, 1000, 16_384], &[(1, 2), (10, 1), (14, 1)]);
        check(&[16_385, 60_000], &[(15, 2)]);
    }
}
