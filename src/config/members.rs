//! A route's `providers` lists (the route's own and each rule's): names or `{ name, weight }`
//! tables, checked against the defined providers and the route's channel.

use std::collections::{HashMap, HashSet};

use switchboard_providers::Channel;

use super::diagnostic::{Code, Diagnostic, Origin};
use super::resolved::ResolvedProvider;
use super::settings::{unknown_key, wrong_type};
use super::suggest::did_you_mean;
use super::tree::{Node, Value};

/// What a route's provider lists are checked against.
pub struct RouteMembers<'a> {
    pub channel_name: &'a str,
    pub channel: Option<&'a Channel>,
    pub providers: &'a HashMap<&'a str, &'a ResolvedProvider>,
    pub defined: &'a [&'a str],
}

/// One entry of a provider list: the name and the weight it was given, if any.
pub type Listed = (String, Option<(i64, Origin)>);

impl RouteMembers<'_> {
    /// Checks a `providers` list (names, or `{ name, weight }` tables): every provider defined,
    /// serving the channel, listed once. `None` if anything is wrong (all of it reported).
    pub fn check_list(
        &self,
        node: &Node,
        context: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Option<Vec<Listed>> {
        let channel_name = self.channel_name;
        let Value::Array(items) = &node.value else {
            diagnostics.push(wrong_type("providers", node, "an array of provider names"));
            return None;
        };
        if items.is_empty() {
            diagnostics.push(Diagnostic::error(
                Code::EmptyList,
                node.origin.clone(),
                format!("{context} lists no providers"),
            ));
            return None;
        }
        let mut listed: Vec<Listed> = Vec::with_capacity(items.len());
        let mut seen = HashSet::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let Some((name, weight)) = list_entry(item, diagnostics) else {
                ok = false;
                continue;
            };
            if !seen.insert(name) {
                diagnostics.push(Diagnostic::error(
                    Code::DuplicateEntry,
                    item.origin.clone(),
                    format!("provider `{name}` is listed twice in {context}"),
                ));
                ok = false;
                continue;
            }
            if !self.defined.contains(&name) && !self.providers.contains_key(name) {
                diagnostics.push(
                    Diagnostic::error(
                        Code::UnknownProvider,
                        item.origin.clone(),
                        format!("{context} names undefined provider {name:?}"),
                    )
                    .with_help(
                        did_you_mean(name, self.defined.iter().copied())
                            .or_else(|| Some(format!("define it with [providers.{name}]"))),
                    ),
                );
                ok = false;
                continue;
            }
            if let (Some(provider), Some(channel)) = (self.providers.get(name), self.channel) {
                if !provider.channels.contains(channel) {
                    let help = if provider.kind.serves(channel_name) {
                        format!("add \"{channel_name}\" to the `channels` of provider `{name}`")
                    } else {
                        format!("kind `{}` serves {}", provider.kind.kind, provider.kind.channels.join(", "))
                    };
                    diagnostics.push(
                        Diagnostic::error(
                            Code::ChannelMismatch,
                            item.origin.clone(),
                            format!("provider `{name}` does not serve channel `{channel_name}`"),
                        )
                        .with_help(Some(help)),
                    );
                    ok = false;
                }
            }
            listed.push((name.to_owned(), weight));
        }
        ok.then_some(listed)
    }
}

/// `"name"` or `{ name = "…", weight = N }`.
fn list_entry<'n>(
    item: &'n Node,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(&'n str, Option<(i64, Origin)>)> {
    match &item.value {
        Value::Str(name) => Some((name, None)),
        Value::Table(table) => {
            let mut name = None;
            let mut weight = None;
            let mut ok = true;
            for entry in &table.entries {
                match (entry.key.as_str(), &entry.node.value) {
                    ("name", Value::Str(value)) => name = Some(value.as_str()),
                    ("weight", Value::Int(value)) => weight = Some((*value, entry.node.origin.clone())),
                    ("name", _) => {
                        diagnostics.push(wrong_type("name", &entry.node, "a provider name (string)"));
                        ok = false;
                    }
                    ("weight", _) => {
                        diagnostics.push(wrong_type("weight", &entry.node, "an integer"));
                        ok = false;
                    }
                    _ => {
                        diagnostics.push(unknown_key(entry, "a providers entry", ["name", "weight"]));
                        ok = false;
                    }
                }
            }
            let Some(name) = name else {
                if ok {
                    diagnostics.push(Diagnostic::error(
                        Code::MissingKey,
                        item.origin.clone(),
                        "a providers entry written as a table needs `name`",
                    ));
                }
                return None;
            };
            ok.then_some((name, weight))
        }
        _ => {
            diagnostics.push(wrong_type("providers", item, "a provider name (string) or { name, weight }"));
            None
        }
    }
}

/// The provider names a `providers` list holds, whatever else is wrong with it.
pub fn listed_names(list: &Node) -> Vec<&str> {
    let Value::Array(items) = &list.value else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| match &item.value {
            Value::Str(name) => Some(name.as_str()),
            Value::Table(table) => table.get("name")?.node.as_str(),
            _ => None,
        })
        .collect()
}
