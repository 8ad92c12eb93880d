//! Long-running reload checks, `#[ignore]`d to keep CI short. Run them with:
//!
//! ```sh
//! cargo test --release --test reload_soak -- --ignored --nocapture
//! ```

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, Server};
use serde_json::{json, Value};
use switchboard::config::content_version;

fn config(sms_provider: &str, seed: u32) -> String {
    format!(
        "[providers.a]\nkind = \"mock\"\nseed = {seed}\n[providers.b]\nkind = \"mock\"\n\
         [routes.sms]\nproviders = [\"{sms_provider}\"]\n[routes.mms]\nproviders = [\"a\"]\n[routes.email]\nproviders = [\"b\"]\n"
    )
}

/// 200 reloads (valid, invalid and half-written, in turn) while a client sends continuously:
/// no 5xx, and every accepted message ends `sent`.
#[test]
#[ignore = "soak: about 10 s; run with --ignored"]
fn reloads_under_load_lose_nothing() {
    // Every message must stay queryable to be accounted for.
    let server = Server::start(&config("a", 0), &["--memory-retention", "10000000"], &[]);
    let path = server.dir().join("routes.toml");
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, accepted, failures, base) =
                (Arc::clone(&stop), Arc::clone(&accepted), Arc::clone(&failures), server.base.clone());
            std::thread::spawn(move || {
                let client = client();
                let body =
                    json!({"from": "+12016661234", "to": "+18045551234", "type": "sms", "body": "soak"});
                while !stop.load(Ordering::Relaxed) {
                    match client.post(format!("{base}/api/messages/sms")).json(&body).send() {
                        Ok(r) if r.status().as_u16() == 202 => {
                            let answer: Value = r.json().unwrap_or(Value::Null);
                            if let (Some(id), Ok(mut ids)) = (answer["id"].as_str(), accepted.lock()) {
                                ids.push(id.to_owned());
                            }
                        }
                        Ok(r) => {
                            if let Ok(mut f) = failures.lock() {
                                f.push(format!("status {}", r.status()));
                            }
                        }
                        Err(error) => {
                            if let Ok(mut f) = failures.lock() {
                                f.push(error.to_string());
                            }
                        }
                    }
                }
            })
        })
        .collect();

    for i in 0..200u32 {
        let valid = config(if i % 2 == 0 { "b" } else { "a" }, i);
        let text = match i % 3 {
            0 => valid,
            1 => valid.replace("kind = \"mock\"", "kind = \"mokc\""),
            _ => valid[..valid.len() / 2].to_owned(),
        };
        std::fs::write(&path, text).unwrap_or_default();
        // Each write is also reloaded explicitly (the watcher may get there first): 200 reloads.
        let outcome = client()
            .post(server.url("/admin/reload"))
            .send()
            .and_then(|r| r.json::<Value>())
            .unwrap_or(Value::Null);
        let expected: &[&str] = if i % 3 == 0 { &["applied", "unchanged"] } else { &["rejected"] };
        assert!(expected.contains(&outcome["result"].as_str().unwrap_or("")), "reload {i}: {outcome}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = config("a", 1000);
    std::fs::write(&path, &last).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client()
        .get(server.url("/readyz"))
        .send()
        .and_then(|r| r.json::<Value>())
        .map(|v| v["config_version"].clone())
        .ok()
        != Some(Value::String(content_version(last.as_bytes())))
    {
        assert!(Instant::now() < deadline, "the last config never became active");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        let _ = sender.join();
    }

    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    assert!(failures.is_empty(), "{} failed sends, first: {:?}", failures.len(), failures.first());
    let ids = accepted.lock().map(|ids| ids.clone()).unwrap_or_default();
    let client = client();
    let mut unfinished = 0;
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let view: Value = client
                .get(server.url(&format!("/v1/messages/{id}")))
                .send()
                .and_then(|r| r.json())
                .unwrap_or(Value::Null);
            if view["status"] == "sent" {
                break;
            }
            if view["status"].is_null() || Instant::now() > deadline {
                unfinished += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let metrics = client.get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    let reloads: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("switchboard_config_reloads_total")).collect();
    println!("soak: {} messages accepted, all accounted for; {reloads:?}", ids.len());
    let count = |result: &str| {
        reloads
            .iter()
            .find(|l| l.contains(&format!("\"{result}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    };
    assert!(count("applied") + count("unchanged") >= 67 && count("rejected") >= 133, "{reloads:?}");
    assert_eq!(unfinished, 0, "{unfinished} of {} accepted messages never reached `sent`", ids.len());
    assert!(ids.len() > 100, "too little traffic: {}", ids.len());
}

/// From the end of a write to the new version being active, over 100 reloads.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture; figures go to specs/performance.md"]
fn reload_latency() {
    let server = Server::start(&config("a", 0), &[], &[]);
    let path = server.dir().join("routes.toml");
    let client = client();
    let mut latencies = Vec::new();
    for i in 1..=100u32 {
        let text = config(if i % 2 == 0 { "a" } else { "b" }, i);
        let version = Value::String(content_version(text.as_bytes()));
        std::fs::write(&path, &text).unwrap_or_default();
        let written = Instant::now();
        loop {
            let active = client
                .get(server.url("/readyz"))
                .send()
                .and_then(|r| r.json::<Value>())
                .map(|v| v["config_version"].clone());
            if active.ok().as_ref() == Some(&version) {
                break;
            }
            assert!(written.elapsed() < Duration::from_secs(10), "reload {i} never applied");
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(written.elapsed());
    }
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!(
        "reload latency over {} reloads: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(50),
        pct(99),
        latencies[latencies.len() - 1]
    );
}
