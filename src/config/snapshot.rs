//! The routing snapshot: a resolved config with a live provider instance per provider,
//! immutable once built. Routes are found by channel in O(1).

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_providers::{BuildContext, Channel, Provider, SettingsError};

use super::resolved::{ResolvedConfig, ResolvedProvider, ResolvedRoute};
use crate::health::ProviderHealth;

/// One configured provider, its instance and its live health (breaker, rate limit, pause).
pub struct ProviderHandle {
    pub config: ResolvedProvider,
    /// The provider's name, shared by every attempt record and metric that names it.
    pub label: Arc<str>,
    pub instance: Arc<dyn Provider>,
    pub health: ProviderHealth,
}

impl std::fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config.fmt(f)
    }
}

/// A route with its providers in failover order.
#[derive(Debug)]
pub struct Route {
    pub config: ResolvedRoute,
    pub providers: Vec<Arc<ProviderHandle>>,
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: String,
    providers: Vec<Arc<ProviderHandle>>,
    routes: HashMap<Channel, Route>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("provider `{provider}`: {source}")]
    Provider { provider: String, source: SettingsError },
    #[error("route `{channel}` names provider `{provider}`, which is not configured")]
    MissingProvider { channel: String, provider: String },
}

impl Snapshot {
    /// Builds every provider instance, then the routes over them.
    pub fn build(config: ResolvedConfig, version: String) -> Result<Snapshot, BuildError> {
        let mut providers = Vec::with_capacity(config.providers.len());
        let mut by_name = HashMap::with_capacity(config.providers.len());
        for provider in config.providers {
            let context = BuildContext { name: &provider.name, timeout: provider.settings.timeout };
            let instance = provider
                .kind
                .build(provider.kind_settings.clone(), &context)
                .map_err(|source| BuildError::Provider { provider: provider.name.clone(), source })?;
            let health = ProviderHealth::new(&provider.settings);
            let label = Arc::from(provider.name.as_str());
            let handle = Arc::new(ProviderHandle { config: provider, label, instance, health });
            by_name.insert(handle.config.name.clone(), Arc::clone(&handle));
            providers.push(handle);
        }
        let mut routes = HashMap::with_capacity(config.routes.len());
        for route in config.routes {
            let members = route
                .providers
                .iter()
                .map(|name| {
                    by_name.get(name).cloned().ok_or_else(|| BuildError::MissingProvider {
                        channel: route.channel.to_string(),
                        provider: name.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            routes.insert(route.channel.clone(), Route { config: route, providers: members });
        }
        Ok(Snapshot { version, providers, routes })
    }

    /// The route for a channel: one hash lookup.
    pub fn route(&self, channel: &str) -> Option<&Route> {
        self.routes.get(channel)
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
