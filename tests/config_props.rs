//! Property tests: whatever the bytes, the loader never panics and always reaches a verdict;
//! the binary always exits 0, 1 or 2. Seeded, so every run checks the same cases.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use switchboard::config::{load_bytes, Environment, Severity};
use switchboard_providers as _;

fn config(cases: u32) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(0x005b_0a2d), failure_persistence: None, ..Config::default() }
}

/// The verdict is consistent: a resolved config exactly when there is no error, and every
/// diagnostic's position lies inside the file.
fn verdict_is_consistent(bytes: &[u8]) -> Result<(), TestCaseError> {
    let env = Environment::from_pairs([("SET", "value")]);
    let loaded = load_bytes("p.toml", bytes, &env);
    let errors = loaded.diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    prop_assert_eq!(loaded.config.is_some(), errors == 0);
    for diagnostic in &loaded.diagnostics {
        if let switchboard::config::Origin::File(span) = &diagnostic.origin {
            prop_assert!(span.start <= bytes.len(), "{:?} outside the file", diagnostic);
        }
        let _ = switchboard::config::render_human(&loaded.source, diagnostic);
    }
    Ok(())
}

const KEYS: &[&str] = &[
    "defaults",
    "kinds",
    "providers",
    "routes",
    "mock",
    "kind",
    "channels",
    "sms",
    "mms",
    "email",
    "push",
    "p1",
    "p2",
    "timeout_ms",
    "max_attempts",
    "strategy",
    "retry",
    "breaker",
    "rate_limit",
    "initial_backoff_ms",
    "max_backoff_ms",
    "failure_threshold",
    "open_ms",
    "half_open_probes",
    "per_second",
    "burst",
    "seed",
    "error_pct",
    "rate_limited_pct",
    "timeout_pct",
    "latency_ms",
    "Bad Name",
    "x",
];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS).prop_map(|k| if k.contains(' ') { format!("{k:?}") } else { k.to_owned() })
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-5i64..200).prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::sample::select(KEYS).prop_map(|k| format!("{k:?}")),
        prop::sample::select(&["\"${SET}\"", "\"${UNSET}\"", "\"${\"", "\"$${X}\"", "\"failover\""][..])
            .prop_map(str::to_owned),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => scalar(),
        1 => prop::collection::vec(scalar(), 0..4).prop_map(|items| format!("[{}]", items.join(", "))),
        1 => prop::collection::vec((key(), scalar()), 0..3)
            .prop_map(|pairs| format!("{{ {} }}", pairs.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", "))),
    ]
}

/// Tables with dotted headers and key/value lines, drawn from config-like names so that the
/// validator's deeper checks are reached, not only "unknown key".
fn toml_document() -> impl Strategy<Value = String> {
    let line = (prop::collection::vec(key(), 1..3), value())
        .prop_map(|(path, v)| format!("{} = {v}", path.join(".")));
    let table = (prop::collection::vec(key(), 1..4), prop::collection::vec(line, 0..6))
        .prop_map(|(header, lines)| format!("[{}]\n{}\n", header.join("."), lines.join("\n")));
    prop::collection::vec(table, 0..8)
        .prop_map(|tables| tables.concat())
        .prop_filter("well-formed TOML", |text| toml::de::DeTable::parse(text).is_ok())
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_bytes_get_a_verdict(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        verdict_is_consistent(&bytes)?;
    }

    #[test]
    fn arbitrary_well_formed_toml_gets_a_verdict(text in toml_document()) {
        verdict_is_consistent(text.as_bytes())?;
    }
}

proptest! {
    #![proptest_config(config(40))]

    #[test]
    fn the_binary_exits_0_1_or_2(text in toml_document(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        for content in [text.as_bytes(), &raw[..]] {
            std::fs::write(dir.path().join("routes.toml"), content).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let output = common::switchboard(dir.path(), &["validate", "--format", "json"], &[]);
            let code = output.status.code();
            prop_assert!(matches!(code, Some(0 | 1)), "exit {:?} for {:?}", code, String::from_utf8_lossy(content));
            let report = common::json(&output);
            prop_assert_eq!(report["valid"].as_bool(), Some(code == Some(0)));
        }
    }
}
