//! The routing snapshot: a resolved config with a live provider instance per provider,
//! immutable once built. Routes are found by channel in O(1).

use std::collections::HashMap;
use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use switchboard_providers::{BuildContext, Channel, OutboundMessage, Provider, SettingsError};

use super::rules::{self as routing, FastMap, RuleIndex};
use crate::config::resolved::Strategy;

use crate::config::resolved::{ResolvedConfig, ResolvedProvider, ResolvedRoute};
use crate::health::ProviderHealth;

/// The active config routes no message of this channel. Its text is the one every refusal,
/// failure and explanation of this kind shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel `{channel}` has no route in the active config")]
pub struct NoRoute {
    pub channel: String,
}

/// One configured provider, its instance and its live health (breaker, rate limit, pause).
pub struct ProviderHandle {
    pub config: ResolvedProvider,
    /// The provider's name, shared by every attempt record and metric that names it.
    pub label: Arc<str>,
    runtime: Arc<Runtime>,
}

/// What a provider keeps across reloads while its name, kind and resolved settings stay the
/// same: its instance (connection pool, mock stream) and its health.
struct Runtime {
    instance: Arc<dyn Provider>,
    health: ProviderHealth,
}

impl ProviderHandle {
    pub fn instance(&self) -> &Arc<dyn Provider> {
        &self.runtime.instance
    }

    pub fn health(&self) -> &ProviderHealth {
        &self.runtime.health
    }

    /// Whether `other` is the same provider with the same effective settings, so that it may
    /// keep this one's instance and health.
    pub fn same_as(&self, other: &ResolvedProvider) -> bool {
        let mine = &self.config;
        mine.name == other.name
            && mine.kind.kind == other.kind.kind
            && mine.channels == other.channels
            && mine.settings == other.settings
            && mine.kind_settings == other.kind_settings
    }
}

impl std::fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config.fmt(f)
    }
}

/// A route with its providers (in list order), its rules' providers, and the index that finds
/// a message's rule.
#[derive(Debug)]
pub struct Route {
    pub config: ResolvedRoute,
    pub providers: Vec<Arc<ProviderHandle>>,
    /// Each rule's providers, in the order of `config.rules`.
    rule_providers: Vec<Vec<Arc<ProviderHandle>>>,
    index: RuleIndex,
    /// Round-robin turns: one per rule, then the route's own.
    turns: Vec<AtomicU64>,
    /// Providers heaviest first ([`routing::heaviest_first`]): one per rule, then the route's own.
    heaviest: Vec<Vec<usize>>,
}

impl Route {
    /// Every number or address `message` may be sent from on this route: its own `from` and the
    /// sender each provider of the route (its own list and its rules') would use instead. An
    /// opt-out from any of them stops the message, at accept and before every attempt, so that
    /// failing over to another provider never routes around one.
    pub fn senders<'a>(&'a self, message: &'a OutboundMessage) -> Vec<&'a str> {
        let providers = self.providers.iter().chain(self.rule_providers.iter().flatten());
        let mut senders = vec![message.from.as_str()];
        for sender in providers.map(|p| p.instance().sender(message)) {
            if !senders.contains(&sender) {
                senders.push(sender);
            }
        }
        senders
    }

    /// The rule a message matches, if any.
    pub fn rule_for(&self, message: &OutboundMessage) -> Option<usize> {
        if self.config.rules.is_empty() {
            return None;
        }
        self.index.find(&self.config.rules, &message.to, &message.tags)
    }

    /// The providers to try for `message` in its `round`-th round, in order: the first matching
    /// rule's, else the route's own, ordered by the strategy. Providers paused
    /// or with an open breaker stay in the list (the caller skips them) but are never drawn
    /// first by `weighted`.
    pub fn plan(&self, message: &OutboundMessage, round: u32, now: Instant) -> Vec<Arc<ProviderHandle>> {
        let (at, strategy, weights, members) = match self.rule_for(message) {
            Some(i) => {
                let config = &self.config.rules[i];
                (i, config.strategy, &config.weights, &self.rule_providers[i])
            }
            None => (self.config.rules.len(), self.config.strategy, &self.config.weights, &self.providers),
        };
        let turn =
            if strategy == Strategy::RoundRobin { self.turns[at].fetch_add(1, Ordering::Relaxed) } else { 0 };
        let usable = |i: usize| {
            let health = members[i].health();
            health.pause.paused_until(now).is_none() && health.breaker.open_until(now).is_none()
        };
        // Only `weighted` draws (hashing the id costs more than the rest of the plan).
        let draw = if strategy == Strategy::Weighted { routing::draw(&message.id, round) } else { 0 };
        let mut plan = Vec::with_capacity(members.len());
        routing::order_into(strategy, weights, &self.heaviest[at], usable, turn, draw, |i| {
            plan.push(Arc::clone(&members[i]));
        });
        plan
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: String,
    providers: Vec<Arc<ProviderHandle>>,
    routes: FastMap<Channel, Route>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("provider `{provider}`: {source}")]
    Provider { provider: String, source: SettingsError },
    #[error("route `{channel}` names provider `{provider}`, which is not configured")]
    MissingProvider { channel: String, provider: String },
}

impl Snapshot {
    /// Builds every provider instance, then the routes over them. A provider of `previous`
    /// whose name, kind and resolved settings are unchanged is carried over with its instance
    /// and health; every other one starts fresh.
    pub fn build(
        config: ResolvedConfig,
        version: String,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, BuildError> {
        let mut providers = Vec::with_capacity(config.providers.len());
        let mut by_name = HashMap::with_capacity(config.providers.len());
        for provider in config.providers {
            let kept = previous.and_then(|p| p.provider(&provider.name)).filter(|old| old.same_as(&provider));
            let runtime = match kept {
                Some(old) => Arc::clone(&old.runtime),
                None => {
                    let context = BuildContext { name: &provider.name, timeout: provider.settings.timeout };
                    let instance = provider
                        .kind
                        .build(provider.kind_settings.clone(), &context)
                        .map_err(|source| BuildError::Provider { provider: provider.name.clone(), source })?;
                    Arc::new(Runtime { instance, health: ProviderHealth::new(&provider.settings) })
                }
            };
            let label = Arc::from(provider.name.as_str());
            let handle = Arc::new(ProviderHandle { config: provider, label, runtime });
            by_name.insert(handle.config.name.clone(), Arc::clone(&handle));
            providers.push(handle);
        }
        let mut routes = FastMap::default();
        for route in config.routes {
            let handles = |names: &[String]| {
                names
                    .iter()
                    .map(|name| {
                        by_name.get(name).cloned().ok_or_else(|| BuildError::MissingProvider {
                            channel: route.channel.to_string(),
                            provider: name.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let providers = handles(&route.providers)?;
            let rule_providers =
                route.rules.iter().map(|rule| handles(&rule.providers)).collect::<Result<Vec<_>, _>>()?;
            let index = RuleIndex::new(&route.rules);
            let turns = (0..=route.rules.len()).map(|_| AtomicU64::new(0)).collect();
            let heaviest = route
                .rules
                .iter()
                .map(|rule| routing::heaviest_first(&rule.weights))
                .chain([routing::heaviest_first(&route.weights)])
                .collect();
            routes.insert(
                route.channel.clone(),
                Route { config: route, providers, rule_providers, index, turns, heaviest },
            );
        }
        Ok(Snapshot { version, providers, routes })
    }

    /// A provider by name (providers are sorted by name).
    pub fn provider(&self, name: &str) -> Option<&Arc<ProviderHandle>> {
        self.providers.binary_search_by(|p| p.config.name.as_str().cmp(name)).ok().map(|i| &self.providers[i])
    }

    /// Whether this provider's instance and health are the very ones `other` carries.
    pub fn shares_runtime(a: &ProviderHandle, b: &ProviderHandle) -> bool {
        Arc::ptr_eq(&a.runtime, &b.runtime)
    }

    /// The route for a channel: one hash lookup.
    pub fn route(&self, channel: &str) -> Option<&Route> {
        self.routes.get(channel)
    }

    /// The route for `channel`, or why there is none.
    pub fn route_for(&self, channel: &str) -> Result<&Route, NoRoute> {
        self.route(channel).ok_or_else(|| NoRoute { channel: channel.to_owned() })
    }

    /// Every provider, sorted by name.
    pub fn providers(&self) -> &[Arc<ProviderHandle>] {
        &self.providers
    }

    /// Every route, sorted by channel.
    pub fn routes(&self) -> Vec<&Route> {
        let mut routes: Vec<&Route> = self.routes.values().collect();
        routes.sort_by(|a, b| a.config.channel.cmp(&b.config.channel));
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::Snapshot;
    use crate::config::{load_bytes, Environment};

    #[test]
    fn snapshot_routes_by_channel() {
        let text = "[providers.p]\nkind = \"mock\"\n[routes.sms]\nproviders = [\"p\"]\n";
        let loaded = load_bytes("t.toml", text.as_bytes(), &Environment::from_pairs([]));
        let Some(resolved) = loaded.config else { panic!("invalid config: {:#?}", loaded.diagnostics) };
        let snapshot = match Snapshot::build(resolved, "v1".into(), None) {
            Ok(snapshot) => snapshot,
            Err(error) => panic!("{error}"),
        };
        let route = snapshot
            .route("sms")
            .map(|r| r.providers.iter().map(|p| p.config.name.clone()).collect::<Vec<_>>());
        assert_eq!(route, Some(vec!["p".to_owned()]));
        assert!(snapshot.route("push").is_none());
    }
}
