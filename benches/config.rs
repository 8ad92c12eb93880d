//! Config benchmarks: validating a 10,000-provider config, and finding a channel's route in a
//! built snapshot. Run: `cargo bench --bench config`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use switchboard::config::{load_bytes, Environment, Snapshot};
use switchboard_providers as _;

#[path = "support/big_config.rs"]
mod big_config;

fn validate_10k(c: &mut Criterion) {
    let text = big_config::big_config(10_000);
    let env = Environment::default();
    let mut group = c.benchmark_group("validate");
    group.sample_size(10);
    group.bench_function("10k_providers", |b| {
        b.iter(|| {
            let loaded = load_bytes("big.toml", black_box(text.as_bytes()), &env);
            assert!(loaded.config.is_some(), "{:?}", loaded.diagnostics.first());
            loaded
        })
    });
    group.finish();
}

fn route_lookup(c: &mut Criterion) {
    let text = big_config::big_config(10_000);
    let loaded = load_bytes("big.toml", text.as_bytes(), &Environment::default());
    let Some(config) = loaded.config else { panic!("invalid bench config") };
    let snapshot = match Snapshot::build(config, loaded.version, None) {
        Ok(snapshot) => snapshot,
        Err(error) => panic!("{error}"),
    };
    c.bench_function("route_lookup/sms", |b| {
        b.iter(|| snapshot.route(black_box("sms")).map(|r| r.providers.len()))
    });
    c.bench_function("route_lookup/missing", |b| b.iter(|| snapshot.route(black_box("push")).is_none()));
}

criterion_group!(benches, validate_10k, route_lookup);
criterion_main!(benches);
