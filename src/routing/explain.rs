//! `switchboard explain` and `GET /admin/explain`: for a message (channel, recipient, tags),
//! the rule that matches, the providers in the order they would be tried, and every resolved
//! setting of each with where its value came from.

use serde::Serialize;

use super::rules::{self as routing, RuleIndex};
use crate::config::resolved::{Matchers, ResolvedProvider, ResolvedRoute, SettingSource, Strategy};
use crate::config::PROVIDER_SPECS;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Explanation {
    pub channel: String,
    pub to: String,
    pub tags: Vec<String>,
    /// The rule that matched; `null`: no rule did, the route's own providers apply.
    pub rule: Option<MatchedRule>,
    pub strategy: Strategy,
    /// How the order of `providers` is used by the strategy.
    pub order: &'static str,
    pub providers: Vec<Candidate>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MatchedRule {
    /// 1 for the route's first `[[routes.C.rules]]`.
    pub number: usize,
    pub matchers: Matchers,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Candidate {
    pub name: String,
    pub kind: &'static str,
    /// Under `weighted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    pub settings: Vec<ExplainedSetting>,
    /// Live state, from the running service only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<crate::health::BreakerState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExplainedSetting {
    pub key: String,
    /// Credentials and values from `${VAR}` are `"<redacted>"`.
    #[schema(schema_with = crate::api_schema::any_value)]
    pub value: serde_json::Value,
    pub source: String,
}

/// Explains `route` for a message to `to` with `tags`; `provider` finds a provider by name.
pub fn explain<'a>(
    route: &ResolvedRoute,
    provider: impl Fn(&str) -> Option<&'a ResolvedProvider>,
    to: &str,
    tags: &[String],
) -> Explanation {
    let found = RuleIndex::new(&route.rules).find(&route.rules, to, tags);
    let (strategy, names, weights) = match found {
        Some(i) => (route.rules[i].strategy, &route.rules[i].providers, &route.rules[i].weights),
        None => (route.strategy, &route.providers, &route.weights),
    };
    // The strategy's order before any draw or turn: list order, or heaviest first.
    let order = routing::order(strategy, weights, |_| false, 0, 0);
    let providers = order
        .into_iter()
        .filter_map(|i| {
            let p = provider(&names[i])?;
            Some(Candidate {
                name: p.name.clone(),
                kind: p.kind.kind,
                weight: (strategy == Strategy::Weighted).then_some(weights[i]),
                settings: settings_of(p),
                breaker: None,
                paused: None,
            })
        })
        .collect();
    Explanation {
        channel: route.channel.to_string(),
        to: to.to_owned(),
        tags: tags.to_vec(),
        rule: found.map(|i| MatchedRule { number: i + 1, matchers: route.rules[i].matchers.clone() }),
        strategy,
        order: match strategy {
            Strategy::Failover => "tried in this order until one succeeds",
            Strategy::RoundRobin => "each message starts at the next provider in turn, then goes round this list",
            Strategy::Weighted => {
                "the first is drawn by weight among usable providers (open breakers and paused ones left out), then the rest heaviest first"
            }
        },
        providers,
    }
}

/// Every common setting, then every kind setting, with its value and source.
fn settings_of(provider: &ResolvedProvider) -> Vec<ExplainedSetting> {
    let common = serde_json::to_value(provider.settings).unwrap_or_default();
    let mut settings: Vec<ExplainedSetting> = PROVIDER_SPECS
        .iter()
        .map(|spec| {
            let value =
                spec.key.split('.').try_fold(&common, |v, part| v.get(part)).cloned().unwrap_or_default();
            let source = provider.sources.get(spec.key).cloned().unwrap_or(SettingSource::BuiltIn);
            ExplainedSetting { key: spec.key.to_owned(), value, source: source.to_string() }
        })
        .collect();
    let given = provider.kind_settings_redacted();
    for doc in provider.kind.settings() {
        let (value, source) = match given.get(&doc.name) {
            Some(value) => {
                let source = provider.kind_sources.get(&doc.name).cloned().unwrap_or(SettingSource::BuiltIn);
                (value.clone(), source)
            }
            None => (doc.default.unwrap_or_default(), SettingSource::BuiltIn),
        };
        settings.push(ExplainedSetting { key: doc.name, value, source: source.to_string() });
    }
    settings
}

/// The human form: the rule, the strategy, then each provider with its settings.
pub fn render_human(explanation: &Explanation) -> String {
    let mut out = format!("channel {}, to {}", explanation.channel, explanation.to);
    if !explanation.tags.is_empty() {
        out.push_str(&format!(", tags {}", explanation.tags.join(", ")));
    }
    out.push('\n');
    match &explanation.rule {
        Some(rule) => {
            let m = &rule.matchers;
            let mut parts = Vec::new();
            for (key, values) in [("to_prefix", &m.to_prefix), ("to_domain", &m.to_domain), ("tags", &m.tags)]
            {
                if !values.is_empty() {
                    parts.push(format!("{key} = {values:?}"));
                }
            }
            out.push_str(&format!(
                "rule {} of [routes.{}] matched: {}\n",
                rule.number,
                explanation.channel,
                parts.join(", ")
            ));
        }
        None => {
            out.push_str(&format!("no rule matched: the providers of [routes.{}]\n", explanation.channel))
        }
    }
    out.push_str(&format!("strategy {}: {}\n", explanation.strategy.name(), explanation.order));
    for (i, candidate) in explanation.providers.iter().enumerate() {
        out.push_str(&format!("\n{}. {} (kind {})", i + 1, candidate.name, candidate.kind));
        if let Some(weight) = candidate.weight {
            out.push_str(&format!(", weight {weight}"));
        }
        if let Some(breaker) = &candidate.breaker {
            out.push_str(&format!(", breaker {}", serde_json::to_value(breaker).unwrap_or_default()));
        }
        out.push('\n');
        for setting in &candidate.settings {
            out.push_str(&format!(
                "   {:<26} {:<30} {}\n",
                setting.key,
                setting.value.to_string(),
                setting.source
            ));
        }
    }
    out
}
