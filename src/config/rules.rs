//! A route's weights and rules (`[[routes.C.rules]]`): reading and checking them, and which
//! rules an earlier one makes unreachable.

use switchboard_providers::address::is_domain;

use super::diagnostic::{Code, Diagnostic, Origin};
use super::members::{Listed, RouteMembers};
use super::resolved::{Matchers, ResolvedRule, Strategy};
use super::settings::wrong_type;
use super::suggest::did_you_mean;
use super::tree::{Entry, Node, Value};

/// Largest weight: weights are shares, not counts.
const MAX_WEIGHT: i64 = 1_000_000;

/// Names and weights of a checked list. Weights belong to `weighted` only; without weights
/// every provider weighs 1.
pub(super) fn weigh(
    listed: Vec<Listed>,
    strategy: Strategy,
    origin: &Origin,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(Vec<String>, Vec<u32>)> {
    let mut ok = true;
    let mut names = Vec::with_capacity(listed.len());
    let mut weights = Vec::with_capacity(listed.len());
    for (name, weight) in listed {
        let value = match weight {
            None => 1,
            Some((_, at)) if strategy != Strategy::Weighted => {
                diagnostics.push(
                    Diagnostic::error(
                        Code::InvalidWeight,
                        at,
                        format!("provider `{name}` has a weight, but the strategy is `{}`", strategy.name()),
                    )
                    .with_help(Some(
                        "weights are for strategy = \"weighted\": set it, or remove the weight".into(),
                    )),
                );
                ok = false;
                1
            }
            Some((value, at)) => match u32::try_from(value) {
                Ok(value) if i64::from(value) <= MAX_WEIGHT => value,
                _ => {
                    diagnostics.push(Diagnostic::error(
                        Code::InvalidWeight,
                        at,
                        format!("weight of `{name}` must be between 0 and {MAX_WEIGHT}, got {value}"),
                    ));
                    ok = false;
                    1
                }
            },
        };
        names.push(name);
        weights.push(value);
    }
    if ok && strategy == Strategy::Weighted && weights.iter().all(|w| *w == 0) {
        diagnostics.push(Diagnostic::error(
            Code::InvalidWeight,
            origin.clone(),
            "every weight is 0: no provider would ever be picked first",
        ));
        ok = false;
    }
    ok.then_some((names, weights))
}

const RULE_KEYS: [&str; 5] = ["to_prefix", "to_domain", "tags", "providers", "strategy"];

/// Reads `[[routes.C.rules]]`; a rule's strategy defaults to the route's.
pub(super) fn read(
    entry: &Entry,
    route_strategy: Strategy,
    members: &RouteMembers<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Vec<ResolvedRule>> {
    let channel = members.channel_name;
    let Value::Array(items) = &entry.node.value else {
        diagnostics.push(wrong_type("rules", &entry.node, "an array of tables ([[routes.C.rules]])"));
        return None;
    };
    let mut rules = Vec::with_capacity(items.len());
    let mut origins = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let context = format!("rule {} of route `{channel}`", i + 1);
        match read_rule(item, &context, route_strategy, members, diagnostics) {
            Some(rule) => {
                rules.push(rule);
                origins.push(item.origin.clone());
            }
            None => ok = false,
        }
    }
    warn_shadowed(&rules, &origins, channel, diagnostics);
    ok.then_some(rules)
}

fn read_rule(
    item: &Node,
    context: &str,
    route_strategy: Strategy,
    members: &RouteMembers<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ResolvedRule> {
    let Some(table) = item.as_table() else {
        diagnostics.push(wrong_type("rules", item, "a table"));
        return None;
    };
    let mut ok = true;
    let mut matchers = Matchers::default();
    let mut strategy = route_strategy;
    let mut list = None;
    for entry in &table.entries {
        match entry.key.as_str() {
            "to_prefix" => {
                ok &= read_values(
                    entry,
                    context,
                    is_prefix,
                    "an E.164 prefix: + and 1 to 15 digits",
                    &mut matchers.to_prefix,
                    diagnostics,
                )
            }
            "to_domain" => {
                ok &= read_values(
                    entry,
                    context,
                    is_domain_pattern,
                    "a domain (example.org) or its subdomains (*.example.org)",
                    &mut matchers.to_domain,
                    diagnostics,
                )
            }
            "tags" => {
                ok &= read_values(
                    entry,
                    context,
                    is_tag,
                    "a tag: 1 to 64 printable characters",
                    &mut matchers.tags,
                    diagnostics,
                )
            }
            "providers" => list = Some(entry),
            "strategy" => match entry.node.as_str().map(|name| (name, Strategy::from_name(name))) {
                Some((_, Some(named))) => strategy = named,
                Some((name, None)) => {
                    diagnostics.push(
                        Diagnostic::error(
                            Code::UnknownStrategy,
                            entry.node.origin.clone(),
                            format!("unknown strategy `{name}`"),
                        )
                        .with_help(
                            did_you_mean(name, Strategy::NAMES.iter().copied())
                                .or_else(|| Some(format!("strategies: {}", Strategy::NAMES.join(", ")))),
                        ),
                    );
                    ok = false;
                }
                None => {
                    diagnostics.push(wrong_type("strategy", &entry.node, "a string"));
                    ok = false;
                }
            },
            _ => {
                diagnostics.push(
                    Diagnostic::error(
                        Code::UnknownKey,
                        entry.key_origin.clone(),
                        format!("unknown key `{}` in {context}", entry.key),
                    )
                    .with_help(did_you_mean(&entry.key, RULE_KEYS)),
                );
                ok = false;
            }
        }
    }
    let has_matcher = ["to_prefix", "to_domain", "tags"].iter().any(|key| table.get(key).is_some());
    if !has_matcher {
        diagnostics.push(
            Diagnostic::error(Code::InvalidRule, item.origin.clone(), format!("{context} matches nothing"))
                .with_help(Some("give it `to_prefix`, `to_domain` or `tags`".into())),
        );
        ok = false;
    }
    let Some(list) = list else {
        diagnostics.push(Diagnostic::error(
            Code::MissingKey,
            item.origin.clone(),
            format!("{context} has no `providers` list"),
        ));
        return None;
    };
    let listed = members.check_list(&list.node, context, diagnostics)?;
    let (providers, weights) = weigh(listed, strategy, &list.node.origin, diagnostics)?;
    ok.then_some(ResolvedRule { matchers, strategy, providers, weights })
}

/// A matcher's list: non-empty, each value valid (domains kept in lowercase).
fn read_values(
    entry: &Entry,
    context: &str,
    valid: fn(&str) -> bool,
    expected: &str,
    into: &mut Vec<String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> bool {
    let key = &entry.key;
    let Value::Array(items) = &entry.node.value else {
        diagnostics.push(wrong_type(key, &entry.node, "an array of strings"));
        return false;
    };
    if items.is_empty() {
        diagnostics.push(
            Diagnostic::error(
                Code::EmptyList,
                entry.node.origin.clone(),
                format!("`{key}` in {context} is empty: it would match nothing"),
            )
            .with_help(Some(format!("remove `{key}`, or list what it should match"))),
        );
        return false;
    }
    let mut ok = true;
    for item in items {
        match item.as_str() {
            Some(value) if valid(value) => {
                into.push(if key == "to_domain" { value.to_ascii_lowercase() } else { value.to_owned() })
            }
            Some(_) => {
                diagnostics.push(Diagnostic::error(
                    Code::InvalidRule,
                    item.origin.clone(),
                    format!("`{key}` in {context}: {} is not {expected}", item.shown()),
                ));
                ok = false;
            }
            None => {
                diagnostics.push(wrong_type(key, item, "a string"));
                ok = false;
            }
        }
    }
    ok
}

fn is_prefix(value: &str) -> bool {
    value
        .strip_prefix('+')
        .is_some_and(|digits| (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// A domain, or all its subdomains (`*.example.org`).
fn is_domain_pattern(value: &str) -> bool {
    is_domain(value.strip_prefix("*.").unwrap_or(value))
}

fn is_tag(value: &str) -> bool {
    (1..=64).contains(&value.chars().count()) && !value.chars().any(char::is_control)
}

/// Warns about each rule that an earlier one makes unreachable.
fn warn_shadowed(
    rules: &[ResolvedRule],
    origins: &[Origin],
    channel: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    for (j, later) in rules.iter().enumerate() {
        if let Some(i) = rules[..j].iter().position(|earlier| covers(&earlier.matchers, &later.matchers)) {
            diagnostics.push(
                Diagnostic::warning(
                    Code::ShadowedRule,
                    origins[j].clone(),
                    format!(
                        "rule {} of route `{channel}` never applies: rule {} matches every message it would",
                        j + 1,
                        i + 1
                    ),
                )
                .with_help(Some("put the narrower rule first, or remove it".into())),
            );
        }
    }
}

/// Whether every message `b` matches is matched by `a`.
pub(super) fn covers(a: &Matchers, b: &Matchers) -> bool {
    fn dimension(a: &[String], b: &[String], covers: fn(&str, &str) -> bool) -> bool {
        // `a` does not look at this: no constraint. `b` does not, but `a` does: `a` is narrower.
        a.is_empty() || (!b.is_empty() && b.iter().all(|bv| a.iter().any(|av| covers(av, bv))))
    }
    dimension(&a.to_prefix, &b.to_prefix, |a, b| b.starts_with(a))
        && dimension(&a.to_domain, &b.to_domain, domain_covers)
        && dimension(&a.tags, &b.tags, |a, b| a == b)
}

/// `a` matches every recipient domain `b` matches.
fn domain_covers(a: &str, b: &str) -> bool {
    a == b || a.strip_prefix('*').is_some_and(|suffix| b.ends_with(suffix) && b.len() > suffix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(prefix: &[&str], domain: &[&str], tags: &[&str]) -> Matchers {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Matchers { to_prefix: owned(prefix), to_domain: owned(domain), tags: owned(tags) }
    }

    #[test]
    fn coverage() {
        let cases = [
            (m(&["+44"], &[], &[]), m(&["+447"], &[], &[]), true),
            (m(&["+447"], &[], &[]), m(&["+44"], &[], &[]), false),
            (m(&["+44"], &[], &[]), m(&["+44"], &[], &["otp"]), true),
            (m(&["+44"], &[], &["otp"]), m(&["+44"], &[], &[]), false),
            (m(&[], &[], &["otp", "x"]), m(&[], &[], &["otp"]), true),
            (m(&[], &[], &["otp"]), m(&[], &[], &["otp", "x"]), false),
            (m(&[], &["*.example.org"], &[]), m(&[], &["a.example.org"], &[]), true),
            (m(&[], &["*.example.org"], &[]), m(&[], &["example.org"], &[]), false),
            (m(&[], &["*.example.org"], &[]), m(&[], &["*.b.example.org"], &[]), true),
            (m(&[], &["example.org"], &[]), m(&[], &["example.org"], &[]), true),
            (m(&["+1", "+44"], &[], &[]), m(&["+4420", "+12"], &[], &[]), true),
            (m(&["+1"], &[], &[]), m(&["+4420", "+12"], &[], &[]), false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(covers(&a, &b), expected, "{a:?} covers {b:?}");
        }
    }

    #[test]
    fn values() {
        for (value, prefix, domain) in [
            ("+44", true, false),
            ("+1234567890123456", false, false),
            ("44", false, false),
            ("+", false, false),
            ("example.org", false, true),
            ("*.example.org", false, true),
            ("*example.org", false, false),
            ("org", false, false),
            ("a..b", false, false),
            ("ex_ample.org", false, false),
        ] {
            assert_eq!((is_prefix(value), is_domain_pattern(value)), (prefix, domain), "{value}");
        }
    }
}
