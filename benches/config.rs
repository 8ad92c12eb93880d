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

/// What every request and dispatch pays to read the routing snapshot: an `ArcSwap` load and a
/// route lookup, with no reload going on and while another thread swaps in a new snapshot every
/// millisecond.
fn snapshot_read(c: &mut Criterion) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let build = |seed: u32| {
        let text =
            format!("[providers.p]\nkind = \"mock\"\nseed = {seed}\n[routes.sms]\nproviders = [\"p\"]\n");
        let loaded = load_bytes("t.toml", text.as_bytes(), &Environment::default());
        let Some(config) = loaded.config else { panic!("invalid bench config") };
        match Snapshot::build(config, loaded.version, None) {
            Ok(snapshot) => Arc::new(snapshot),
            Err(error) => panic!("{error}"),
        }
    };
    let current = Arc::new(arc_swap::ArcSwap::new(build(0)));
    let read = |current: &arc_swap::ArcSwap<Snapshot>| {
        let snapshot = current.load();
        snapshot.route(black_box("sms")).map(|r| r.providers.len())
    };
    c.bench_function("snapshot_read/idle", |b| b.iter(|| read(&current)));

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (current, stop) = (Arc::clone(&current), Arc::clone(&stop));
        let snapshots = [build(1), build(2)];
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                current.store(Arc::clone(&snapshots[i % 2]));
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    c.bench_function("snapshot_read/during_reloads", |b| b.iter(|| read(&current)));
    stop.store(true, Ordering::Relaxed);
    let _ = swapper.join();
}

criterion_group!(benches, validate_10k, route_lookup, snapshot_read);
criterion_main!(benches);
