//! Which providers a message is tried with, in what order: the route's rules (first match
//! wins), then the strategy. Rules are indexed when the snapshot is built, so finding the rule
//! for a message costs a few hash lookups however many rules there are.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::config::resolved::{Matchers, ResolvedRule, Strategy};

/// Rules by the values of one of their matchers. A rule with several matchers is indexed under
/// its most selective one (prefix, else domain, else tags) and checked whole on lookup.
#[derive(Debug, Default)]
pub struct RuleIndex {
    by_prefix: HashMap<String, Vec<usize>>,
    by_domain: HashMap<String, Vec<usize>>,
    by_tag: HashMap<String, Vec<usize>>,
}

impl RuleIndex {
    pub fn new(rules: &[ResolvedRule]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            let m = &rule.matchers;
            let (map, values) = if !m.to_prefix.is_empty() {
                (&mut index.by_prefix, &m.to_prefix)
            } else if !m.to_domain.is_empty() {
                (&mut index.by_domain, &m.to_domain)
            } else {
                (&mut index.by_tag, &m.tags)
            };
            for value in values {
                map.entry(value.clone()).or_default().push(i);
            }
        }
        index
    }

    /// The first rule that matches a message to `to` with `tags`.
    pub fn find(&self, rules: &[ResolvedRule], to: &str, tags: &[String]) -> Option<usize> {
        let mut candidates: Vec<usize> = Vec::new();
        if let Some(digits) = to.strip_prefix('+') {
            // Every prefix of the number: at most 15 lookups.
            for end in 1..=digits.len() {
                if let Some(found) = self.by_prefix.get(&to[..=end]) {
                    candidates.extend(found);
                }
            }
        }
        if let Some((_, domain)) = to.rsplit_once('@') {
            let domain = domain.to_ascii_lowercase();
            if let Some(found) = self.by_domain.get(&domain) {
                candidates.extend(found);
            }
            // `*.example.org` for each parent of the domain.
            let mut rest = domain.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if let Some(found) = self.by_domain.get(&format!("*.{parent}")) {
                    candidates.extend(found);
                }
                rest = parent;
            }
        }
        for tag in tags {
            if let Some(found) = self.by_tag.get(tag) {
                candidates.extend(found);
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.into_iter().find(|&i| matches(&rules[i].matchers, to, tags))
    }
}

/// Whether a message to `to` with `tags` matches every matcher given.
pub fn matches(m: &Matchers, to: &str, tags: &[String]) -> bool {
    let domain = to.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
    let prefix_ok = m.to_prefix.is_empty() || m.to_prefix.iter().any(|p| to.starts_with(p.as_str()));
    let domain_ok = m.to_domain.is_empty()
        || domain.as_deref().is_some_and(|d| {
            m.to_domain.iter().any(|pattern| match pattern.strip_prefix('*') {
                Some(suffix) => d.ends_with(suffix) && d.len() > suffix.len(),
                None => d == pattern,
            })
        });
    let tags_ok = m.tags.is_empty() || m.tags.iter().any(|t| tags.contains(t));
    prefix_ok && domain_ok && tags_ok
}

/// The order in which to try `weights.len()` providers.
///
/// - failover: list order;
/// - round robin: starting at `turn % n`, round the list;
/// - weighted: the first drawn (with `draw`) by weight among those `usable` now, then the rest
///   by weight, heaviest first (ties in list order).
pub fn order(
    strategy: Strategy,
    weights: &[u32],
    usable: impl Fn(usize) -> bool,
    turn: u64,
    draw: u64,
) -> Vec<usize> {
    let n = weights.len();
    match strategy {
        Strategy::Failover => (0..n).collect(),
        Strategy::RoundRobin => {
            let start = if n == 0 { 0 } else { (turn % n as u64) as usize };
            (0..n).map(|i| (start + i) % n.max(1)).collect()
        }
        Strategy::Weighted => {
            let mut by_weight: Vec<usize> = (0..n).collect();
            by_weight.sort_by(|a, b| weights[*b].cmp(&weights[*a]));
            let total: u64 = (0..n).filter(|&i| usable(i)).map(|i| u64::from(weights[i])).sum();
            if total > 0 {
                let mut ticket = draw % total;
                let picked = (0..n).filter(|&i| usable(i)).find(|&i| {
                    let weight = u64::from(weights[i]);
                    if ticket < weight {
                        true
                    } else {
                        ticket -= weight;
                        false
                    }
                });
                if let Some(picked) = picked {
                    by_weight.retain(|&i| i != picked);
                    by_weight.insert(0, picked);
                }
            }
            by_weight
        }
    }
}

/// A well-spread number from a message id and a round: the weighted draw. Deterministic, so a
/// message's draw can be reproduced.
pub fn draw(id: &str, round: u32) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut hasher);
    round.hash(&mut hasher);
    splitmix64(hasher.finish())
}

pub fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &[&str], domain: &[&str], tags: &[&str]) -> ResolvedRule {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        ResolvedRule {
            matchers: Matchers { to_prefix: owned(prefix), to_domain: owned(domain), tags: owned(tags) },
            strategy: Strategy::Failover,
            providers: vec![],
            weights: vec![],
        }
    }

    fn check(rules: &[ResolvedRule], to: &str, tags: &[&str], expected: Option<usize>) {
        let index = RuleIndex::new(rules);
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        assert_eq!(index.find(rules, to, &tags), expected, "{to} {tags:?}");
        let linear = rules.iter().position(|r| matches(&r.matchers, to, &tags));
        assert_eq!(linear, expected, "index and linear scan agree for {to}");
    }

    #[test]
    fn first_match_wins() {
        let rules = [
            rule(&["+4477"], &[], &["otp"]),
            rule(&["+44"], &[], &[]),
            rule(&[], &["example.org"], &[]),
            rule(&[], &["*.example.com"], &[]),
            rule(&[], &[], &["otp"]),
            rule(&["+1"], &[], &[]),
        ];
        check(&rules, "+447700900123", &["otp"], Some(0));
        check(&rules, "+447700900123", &[], Some(1));
        check(&rules, "+12016661234", &["otp"], Some(4));
        check(&rules, "+12016661234", &[], Some(5));
        check(&rules, "a@example.org", &[], Some(2));
        check(&rules, "a@EXAMPLE.org", &[], Some(2));
        check(&rules, "a@mail.example.com", &[], Some(3));
        check(&rules, "a@example.com", &[], None);
        check(&rules, "a@sub.example.org", &[], None);
        check(&rules, "+33612345678", &[], None);
        check(&rules, "12345", &["otp"], Some(4));
    }

    #[test]
    fn orders() {
        let all = |_: usize| true;
        assert_eq!(order(Strategy::Failover, &[1, 1, 1], all, 7, 0), [0, 1, 2]);
        assert_eq!(order(Strategy::RoundRobin, &[1, 1, 1], all, 0, 0), [0, 1, 2]);
        assert_eq!(order(Strategy::RoundRobin, &[1, 1, 1], all, 4, 0), [1, 2, 0]);
        // weights 10/30/60: tickets 0–9 → 0, 10–39 → 1, 40–99 → 2; the rest by weight.
        assert_eq!(order(Strategy::Weighted, &[10, 30, 60], all, 0, 5), [0, 2, 1]);
        assert_eq!(order(Strategy::Weighted, &[10, 30, 60], all, 0, 35), [1, 2, 0]);
        assert_eq!(order(Strategy::Weighted, &[10, 30, 60], all, 0, 99), [2, 1, 0]);
        // Provider 2 unusable: its share goes to the others (tickets 0–9 → 0, 10–39 → 1).
        assert_eq!(order(Strategy::Weighted, &[10, 30, 60], |i| i != 2, 0, 45), [0, 2, 1]);
        // Nothing usable: weight order.
        assert_eq!(order(Strategy::Weighted, &[10, 30, 60], |_| false, 0, 45), [2, 1, 0]);
        assert_eq!(order(Strategy::Weighted, &[0, 5], all, 0, 0), [1, 0]);
    }

    /// Over 10,000 seeded draws each provider is picked first within ±2 % of its weight, and
    /// an unusable provider's share is spread over the others in proportion.
    #[test]
    fn weighted_shares() {
        let shares = |weights: &[u32], usable: &dyn Fn(usize) -> bool| {
            let mut firsts = vec![0u32; weights.len()];
            for n in 0..10_000u64 {
                firsts[order(Strategy::Weighted, weights, usable, 0, splitmix64(42 ^ n))[0]] += 1;
            }
            firsts.iter().map(|c| f64::from(*c) / 100.0).collect::<Vec<f64>>()
        };
        let within = |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 2.0);
        let got = shares(&[95, 5], &|_| true);
        assert!(within(&got, &[95.0, 5.0]), "{got:?}");
        let got = shares(&[50, 30, 20], &|_| true);
        assert!(within(&got, &[50.0, 30.0, 20.0]), "{got:?}");
        let got = shares(&[50, 30, 20], &|i| i != 0);
        assert!(within(&got, &[0.0, 60.0, 40.0]), "{got:?}");
    }

    #[test]
    fn round_robin_is_fair() {
        let mut firsts = [0u32; 3];
        for turn in 0..3_000 {
            firsts[order(Strategy::RoundRobin, &[1, 1, 1], |_| true, turn, 0)[0]] += 1;
        }
        assert_eq!(firsts, [1_000, 1_000, 1_000]);
    }
}
