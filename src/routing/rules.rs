//! Which providers a message is tried with, in what order: the route's rules (first match
//! wins), then the strategy. Rules are indexed when the snapshot is built, so finding the rule
//! for a message costs a few hash lookups however many rules there are.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::config::resolved::{Matchers, ResolvedRule, Strategy};

/// The most digits a `to_prefix` has (E.164).
const PREFIX_DIGITS: usize = 15;

/// Rules by the values of one of their matchers. A rule with several matchers is indexed under
/// its most selective one (prefix, else domain, else tags) and checked whole on lookup. Each
/// list holds rule numbers in ascending order.
#[derive(Debug, Default)]
pub struct RuleIndex {
    /// `to_prefix` values as numbers ([`prefix_key`]): a number's prefixes are looked up
    /// without hashing a string each.
    by_prefix: FastMap<u64, Vec<usize>>,
    /// Bit `n` set: some indexed prefix has `n` digits (only those lengths are looked up).
    prefix_lengths: u16,
    by_domain: HashMap<String, Vec<usize>>,
    by_tag: HashMap<String, Vec<usize>>,
    /// Rules no index can find (a prefix that is not `+` and digits): always checked.
    unindexed: Vec<usize>,
}

impl RuleIndex {
    pub fn new(rules: &[ResolvedRule]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            let m = &rule.matchers;
            if !m.to_prefix.is_empty() {
                for value in &m.to_prefix {
                    match parse_prefix(value) {
                        Some((len, digits)) => {
                            index.prefix_lengths |= 1 << len;
                            index.by_prefix.entry(prefix_key(len, digits)).or_default().push(i);
                        }
                        None if index.unindexed.last() != Some(&i) => index.unindexed.push(i),
                        None => {}
                    }
                }
                continue;
            }
            let (map, values) = if !m.to_domain.is_empty() {
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
        let mut first = None;
        let mut consider = |list: &[usize]| {
            // Ascending: the list's first match is its lowest; none past the lowest found yet.
            for &i in list {
                if first.is_some_and(|found| i >= found) {
                    break;
                }
                if matches(&rules[i].matchers, to, tags) {
                    first = Some(i);
                    break;
                }
            }
        };
        if let Some(digits) = to.strip_prefix('+') {
            // Every prefix of the number whose length some rule has: at most 15 lookups.
            let mut value = 0u64;
            for (n, byte) in digits.bytes().take(PREFIX_DIGITS).enumerate() {
                if !byte.is_ascii_digit() {
                    break;
                }
                value = value * 10 + u64::from(byte - b'0');
                let len = n + 1;
                if self.prefix_lengths & (1 << len) != 0 {
                    if let Some(found) = self.by_prefix.get(&prefix_key(len, value)) {
                        consider(found);
                    }
                }
            }
        }
        if let Some((_, domain)) = to.rsplit_once('@').filter(|_| !self.by_domain.is_empty()) {
            let domain = domain.to_ascii_lowercase();
            if let Some(found) = self.by_domain.get(&domain) {
                consider(found);
            }
            // `*.example.org` for each parent of the domain.
            let mut rest = domain.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if let Some(found) = self.by_domain.get(&format!("*.{parent}")) {
                    consider(found);
                }
                rest = parent;
            }
        }
        for tag in tags.iter().filter(|_| !self.by_tag.is_empty()) {
            if let Some(found) = self.by_tag.get(tag) {
                consider(found);
            }
        }
        consider(&self.unindexed);
        first
    }
}

/// `+` and 1 to 15 digits: (how many digits, their value).
fn parse_prefix(prefix: &str) -> Option<(usize, u64)> {
    let digits = prefix.strip_prefix('+')?;
    if digits.is_empty() || digits.len() > PREFIX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.len(), digits.parse().ok()?))
}

/// A prefix's digits with their count above them: `+1` and `+01` differ.
fn prefix_key(len: usize, digits: u64) -> u64 {
    ((len as u64) << 56) | digits
}

/// A hasher for keys from our own config (prefix keys, channel names): no SipHash, as no
/// outsider chooses them. Bytes are mixed eight at a time.
#[derive(Debug, Default)]
pub struct FastHasher(u64);

/// Hash maps keyed by config values ([`FastHasher`]).
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = mix(self.0, bytes);
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = splitmix64(self.0 ^ value);
    }
}

/// Whether a message to `to` with `tags` matches every matcher given.
pub fn matches(m: &Matchers, to: &str, tags: &[String]) -> bool {
    let prefix_ok = m.to_prefix.is_empty() || m.to_prefix.iter().any(|p| to.starts_with(p.as_str()));
    let domain_ok = m.to_domain.is_empty()
        || to.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).is_some_and(|d| {
            m.to_domain.iter().any(|pattern| match pattern.strip_prefix('*') {
                Some(suffix) => d.ends_with(suffix) && d.len() > suffix.len(),
                None => d == *pattern,
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
    let mut order = Vec::with_capacity(weights.len());
    order_into(strategy, weights, &heaviest_first(weights), usable, turn, draw, |i| order.push(i));
    order
}

/// Indexes of `weights`, heaviest first (ties in list order): `weighted`'s order after its draw,
/// computed once per route.
pub fn heaviest_first(weights: &[u32]) -> Vec<usize> {
    let mut by_weight: Vec<usize> = (0..weights.len()).collect();
    by_weight.sort_by(|a, b| weights[*b].cmp(&weights[*a]));
    by_weight
}

/// [`order`], each index given to `emit` in turn; `heaviest` is [`heaviest_first`] of `weights`.
/// `usable` is asked once per provider.
pub fn order_into(
    strategy: Strategy,
    weights: &[u32],
    heaviest: &[usize],
    usable: impl Fn(usize) -> bool,
    turn: u64,
    draw: u64,
    mut emit: impl FnMut(usize),
) {
    let n = weights.len();
    match strategy {
        Strategy::Failover => (0..n).for_each(emit),
        Strategy::RoundRobin => {
            let start = if n == 0 { 0 } else { (turn % n as u64) as usize };
            (0..n).map(|i| (start + i) % n.max(1)).for_each(emit);
        }
        Strategy::Weighted => {
            // Who is usable, asked once each (a bit per provider; past 64, asked again).
            let mut mask = 0u64;
            let mut total = 0u64;
            for (i, weight) in weights.iter().enumerate() {
                if usable(i) {
                    total += u64::from(*weight);
                    if i < 64 {
                        mask |= 1 << i;
                    }
                }
            }
            let usable_now = |i: usize| if i < 64 { mask & (1 << i) != 0 } else { usable(i) };
            let mut picked = None;
            if total > 0 {
                let mut ticket = draw % total;
                picked = (0..n).filter(|&i| usable_now(i)).find(|&i| {
                    let weight = u64::from(weights[i]);
                    if ticket < weight {
                        true
                    } else {
                        ticket -= weight;
                        false
                    }
                });
            }
            if let Some(first) = picked {
                emit(first);
            }
            heaviest.iter().copied().filter(|&i| Some(i) != picked).for_each(emit);
        }
    }
}

/// A well-spread number from a message id and a round: the weighted draw. Deterministic, so a
/// message's draw can be reproduced.
/// The id is mixed eight bytes at a time (ids are ours: UUIDs; no SipHash needed).
pub fn draw(id: &str, round: u32) -> u64 {
    mix(splitmix64(u64::from(round)), id.as_bytes())
}

/// `seed` and `bytes` mixed eight bytes at a time (their length included).
fn mix(seed: u64, bytes: &[u8]) -> u64 {
    let mut mixed = splitmix64(seed ^ ((bytes.len() as u64) << 32));
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        mixed = splitmix64(mixed ^ u64::from_le_bytes(word));
    }
    mixed
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

    /// Prefixes of every length, later rules with longer prefixes, a number with a non-digit,
    /// one rule listed under two prefixes: the index agrees with the linear scan.
    #[test]
    fn prefixes_of_any_length() {
        let rules = [
            rule(&["+4420", "+331"], &[], &[]),
            rule(&["+1202555"], &[], &[]),
            rule(&["+1"], &[], &["otp"]),
            rule(&["+12"], &[], &[]),
            rule(&["+123456789012345"], &[], &[]),
            rule(&["+01"], &[], &[]),
            rule(&["+44"], &[], &[]),
        ];
        check(&rules, "+442079460000", &[], Some(0));
        check(&rules, "+33123456789", &[], Some(0));
        check(&rules, "+12025550123", &[], Some(1));
        check(&rules, "+12025550123", &["otp"], Some(1));
        check(&rules, "+12035550123", &["otp"], Some(2));
        check(&rules, "+12035550123", &[], Some(3));
        check(&rules, "+1234567890123456", &[], Some(3));
        check(&rules, "+13035550123", &[], None);
        check(&rules, "+0123", &[], Some(5));
        check(&rules, "+123", &[], Some(3));
        check(&rules, "+1x202555", &["otp"], Some(2));
        check(&rules, "+1x202555", &[], None);
        check(&rules, "+447700900123", &[], Some(6));
        check(&rules, "+", &[], None);
        check(&rules, "", &["otp"], None);
        check(&rules, "12025550123", &[], None);
    }

    /// A prefix the config would refuse (not `+` and digits) is still honoured, unindexed.
    #[test]
    fn prefixes_the_index_cannot_hold() {
        let rules = [rule(&["+1"], &[], &["vip"]), rule(&["+1 202"], &[], &[]), rule(&["+1"], &[], &[])];
        check(&rules, "+1 202 555 0123", &[], Some(1));
        check(&rules, "+1 202 555 0123", &["vip"], Some(0));
        check(&rules, "+12025550123", &[], Some(2));
        let long = [rule(&["+1234567890123456"], &[], &[])];
        check(&long, "+12345678901234567", &[], Some(0));
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

    /// Each provider's health is asked once per plan (each ask takes its locks), also past 64.
    #[test]
    fn weighted_asks_each_provider_once() {
        for n in [1usize, 3, 64, 70] {
            let weights = vec![1u32; n];
            let asked = std::cell::Cell::new(0);
            let usable = |i: usize| {
                asked.set(asked.get() + 1);
                i % 2 == 0
            };
            let mut order = Vec::new();
            order_into(Strategy::Weighted, &weights, &heaviest_first(&weights), usable, 0, 7, |i| {
                order.push(i)
            });
            assert_eq!(order.len(), n);
            assert_eq!(order[0] % 2, 0, "an unusable provider drawn first");
            let past_64 = n.saturating_sub(64);
            assert!(asked.get() <= n + past_64 * 2, "{n} providers asked {} times", asked.get());
        }
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

    /// Draws from ids that differ only in their last digits (as consecutive ids do) still
    /// share out by weight, and a message's next round draws anew.
    #[test]
    fn draws_from_close_ids_spread() {
        let mut firsts = [0u32; 2];
        let mut rounds_differ = 0;
        for n in 0..10_000u32 {
            let id = format!("01a21b0b-e12f-757d-92cc-{n:012x}");
            firsts[order(Strategy::Weighted, &[95, 5], |_| true, 0, draw(&id, 0))[0]] += 1;
            rounds_differ += u32::from(draw(&id, 0) != draw(&id, 1));
            assert_eq!(draw(&id, 3), draw(&id, 3), "deterministic");
        }
        let share = |count: u32| f64::from(count) / 100.0;
        assert!((share(firsts[0]) - 95.0).abs() <= 2.0, "{firsts:?}");
        assert_eq!(rounds_differ, 10_000);
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
