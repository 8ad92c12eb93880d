//! The service's Prometheus metrics (names are a contract: see specs/http-api.md).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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

type HistogramFamily = Family<ProviderLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms … ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    accepted: Family<ChannelLabels, Counter>,
    completed: Family<CompletedLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    duration: HistogramFamily,
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
        let duration = HistogramFamily::new_with_constructor(duration_histogram);
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
        self.duration
            .get_or_create(&ProviderLabels { provider: provider.to_owned() })
            .observe(latency.as_secs_f64());
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
}
