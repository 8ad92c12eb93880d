//! Config benchmarks: validating a 10,000-provider config, finding a channel's route in a
//! built snapshot, and selecting a message's providers with 3 routes and no rules vs 10,000
//! prefix rules. Run: `cargo bench --bench config`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use switchboard::config::{load_bytes, Environment};
use switchboard::routing::Snapshot;
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

/// What dispatch pays per message to pick its providers (`Route::plan`: rule lookup and the
/// strategy's order): 3 routes without rules vs an sms route with 10,000 prefix rules.
fn selection(c: &mut Criterion) {
    use switchboard_providers::{Channel, OutboundMessage};

    let plain = "[providers.a]\nkind = \"mock\"\n[providers.b]\nkind = \"mock\"\n\
                 [routes.sms]\nstrategy = \"weighted\"\nproviders = [{ name = \"a\", weight = 95 }, { name = \"b\", weight = 5 }]\n\
                 [routes.mms]\nproviders = [\"a\"]\n[routes.email]\nproviders = [\"b\"]\n";
    let ruled = |rules: usize| {
        let mut text = plain.to_owned();
        for n in 0..rules {
            // +1 and a 4-digit area/exchange prefix: distinct prefixes, +12025 among them.
            let prefix = (2025 + n) % 10_000;
            text.push_str(&format!(
                "[[routes.sms.rules]]\nto_prefix = [\"+1{prefix:04}\"]\nproviders = [\"b\", \"a\"]\n"
            ));
        }
        text
    };
    let build = |text: &str| {
        let loaded = load_bytes("t.toml", text.as_bytes(), &Environment::default());
        let Some(config) = loaded.config else {
            panic!("invalid bench config: {:?}", loaded.diagnostics.first())
        };
        match Snapshot::build(config, loaded.version, None) {
            Ok(snapshot) => snapshot,
            Err(error) => panic!("{error}"),
        }
    };
    let message = |to: &str| OutboundMessage {
        id: "01a21b0b-e12f-757d-92cc-ade515dcfd46".into(),
        channel: Channel::SMS,
        from: "+12016661234".into(),
        to: to.into(),
        subject: None,
        body: "x".into(),
        attachments: vec![],
        tags: vec!["otp".into()],
    };
    let mut group = c.benchmark_group("selection");
    let cases =
        [("3_routes", plain.to_owned()), ("10_prefix_rules", ruled(10)), ("10k_prefix_rules", ruled(10_000))];
    for (name, text) in cases {
        let snapshot = build(&text);
        let now = std::time::Instant::now();
        for (case, to) in [("rule_match", "+12025550123"), ("no_match", "+447700900123")] {
            let message = message(to);
            group.bench_function(format!("{name}/{case}"), |b| {
                b.iter(|| snapshot.route("sms").map(|r| r.plan(black_box(&message), 0, now).len()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, validate_10k, route_lookup, snapshot_read, selection);
criterion_main!(benches);
