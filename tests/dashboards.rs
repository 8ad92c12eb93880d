//! The Grafana dashboard and the Prometheus alerts of `deploy/` (issue 18) against the real
//! binary: every metric their PromQL names, and every `label="value"` it matches exactly, is in
//! `/metrics` of a server made to produce each series; the dashboard shows every family the
//! service exports and is importable; its PromQL parses (promtool, when `.ci/run` installed it).
//! The alerts themselves are checked and unit-tested by promtool in `.ci/run`.

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/stores.rs"]
mod stores;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::fake_http::{FakeHttp, Reply};
use common::{base64, client, repo_root, send_native, wait_final, Server};
use e2e::{form, twilio_signature};
use serde_json::{json, Value};

const DASHBOARD: &str = "deploy/grafana/switchboard.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
/// The alerts issue 18 asks for, by the names `specs/monitoring.md` documents.
const ALERT_NAMES: [&str; 4] = [
    "SwitchboardBreakerOpen",
    "SwitchboardQueueDepthGrowing",
    "SwitchboardReloadRejected",
    "SwitchboardRouteNotSending",
];
/// What the metrics' names start with.
const PREFIX: &str = "switchboard_";

// ---------------------------------------------------------------------------------------------
// PromQL: the selectors of Switchboard's metrics in an expression

/// A selector of one of Switchboard's metrics: its name as written and its exact `label="value"`
/// matchers (those whose value is not a Grafana variable).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Selector {
    name: String,
    exact: Vec<(String, String)>,
}

fn is_identifier(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The end of the string literal opening at `start`, and its value.
fn string_at(chars: &[char], start: usize) -> (usize, String) {
    let quote = chars[start];
    let mut value = String::new();
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' && i + 1 < chars.len() {
            i += 1;
        }
        value.push(chars[i]);
        i += 1;
    }
    (i + 1, value)
}

/// The matchers of the `{…}` whose content starts at `start`: `(label, operator, value)` each,
/// and the index after the closing brace. Panics on anything else, naming `expr`.
fn matchers_at(chars: &[char], start: usize, expr: &str) -> (Vec<(String, String, String)>, usize) {
    let mut matchers = Vec::new();
    let mut i = start;
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_space(&mut i);
        match chars.get(i) {
            Some('}') => return (matchers, i + 1),
            Some(c) if is_identifier(*c) => {}
            _ => panic!("malformed label matchers at character {i} of {expr:?}"),
        }
        let label_start = i;
        while i < chars.len() && is_identifier(chars[i]) {
            i += 1;
        }
        let label: String = chars[label_start..i].iter().collect();
        skip_space(&mut i);
        let operator_start = i;
        while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
            i += 1;
        }
        let operator: String = chars[operator_start..i].iter().collect();
        skip_space(&mut i);
        if !matches!(chars.get(i), Some('"' | '\'' | '`'))
            || !["=", "!=", "=~", "!~"].contains(&operator.as_str())
        {
            panic!("malformed label matcher `{label}` at character {i} of {expr:?}");
        }
        let (end, value) = string_at(chars, i);
        matchers.push((label, operator, value));
        i = end;
        skip_space(&mut i);
        if chars.get(i) == Some(&',') {
            i += 1;
        }
    }
}

/// Every selector of a `switchboard_*` metric in the PromQL `expr`: whole identifiers only (not
/// inside another name, a string, or a `{…}`), exactly as written — a histogram's `_bucket`,
/// a counter's `_total` stay: [`Exposition::has`] decides which sample names a family has.
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found: Vec<Selector> = Vec::new();
    // The selector just read, while only spaces follow it (its `{…}` may come next).
    let mut open: Option<usize> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_identifier(c) {
            let start = i;
            while i < chars.len() && is_identifier(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            open = None;
            if word.starts_with(PREFIX) {
                found.push(Selector { name: word, exact: Vec::new() });
                open = Some(found.len() - 1);
            }
        } else if matches!(c, '"' | '\'' | '`') {
            i = string_at(&chars, i).0;
            open = None;
        } else if c == '{' {
            let (matchers, end) = matchers_at(&chars, i + 1, expr);
            if let Some(at) = open {
                found[at].exact = matchers
                    .into_iter()
                    .filter(|(_, operator, value)| operator == "=" && !value.contains('$'))
                    .map(|(label, _, value)| (label, value))
                    .collect();
                found[at].exact.sort();
            }
            i = end;
            open = None;
        } else {
            if !c.is_whitespace() {
                open = None;
            }
            i += 1;
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The exposition format: families, their types, their samples

/// `/metrics` as read: each family's type (`# TYPE`), each sample's name and labels.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>)>,
}

/// The names a family's samples take, by its type (OpenMetrics): a counter `x` is sampled as
/// `x_total`, a histogram as `x_bucket`, `x_sum`, `x_count`, a gauge as itself.
fn sample_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
        "summary" => &["", "_sum", "_count", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut exposition = Exposition::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if let (Some("TYPE"), Some(family), Some(kind)) = (words.next(), words.next(), words.next()) {
                    exposition.types.insert(family.to_owned(), kind.to_owned());
                }
                continue;
            }
            let name: String = line.chars().take_while(|c| is_identifier(*c)).collect();
            let mut labels = BTreeMap::new();
            if line[name.len()..].starts_with('{') {
                let chars: Vec<char> = line.chars().collect();
                let (matchers, _) = matchers_at(&chars, name.chars().count() + 1, line);
                labels.extend(matchers.into_iter().map(|(label, _, value)| (label, value)));
            }
            exposition.samples.push((name, labels));
        }
        exposition
    }

    /// The family whose samples are named `name`, given its type.
    fn family_of(&self, name: &str) -> Option<&str> {
        self.types.iter().find_map(|(family, kind)| {
            let suffix = name.strip_prefix(family.as_str())?;
            sample_suffixes(kind).contains(&suffix).then_some(family.as_str())
        })
    }

    /// Whether `selector` names a sample of a family here, and a series of it has its labels.
    fn has(&self, selector: &Selector) -> bool {
        self.family_of(&selector.name).is_some()
            && self.samples.iter().any(|(name, labels)| {
                *name == selector.name
                    && selector.exact.iter().all(|(label, value)| labels.get(label) == Some(value))
            })
    }
}

// ---------------------------------------------------------------------------------------------
// The files

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, those inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, into: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            into.push(panel);
            walk(&panel["panels"], into);
        }
    }
    let mut all = Vec::new();
    walk(&dashboard["panels"], &mut all);
    all
}

/// The PromQL of every panel target (`expr`) and, for each query variable, the selector its
/// `label_values(selector, label)` reads.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries: Vec<String> = panels(dashboard)
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect();
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).unwrap_or_default();
        let Some(inner) = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) else {
            panic!("variable {}: not label_values(…): {query:?}", variable["name"]);
        };
        let selector = inner.rsplit_once(',').map_or(inner, |(selector, _label)| selector);
        queries.push(selector.trim().to_owned());
    }
    queries
}

/// Each alerting rule of alerts.yml: its name and expression.
fn alert_rules() -> Vec<(String, String)> {
    let text = read(ALERTS);
    let documents = yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{ALERTS}: {e}"));
    let Some(document) = documents.first() else { panic!("{ALERTS} is empty") };
    let groups = document["groups"].as_vec().unwrap_or_else(|| panic!("{ALERTS}: no `groups` list"));
    let mut rules = Vec::new();
    for group in groups {
        for rule in group["rules"].as_vec().into_iter().flatten() {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or_default();
            let Some(expr) = rule["expr"].as_str() else { panic!("{ALERTS}: rule {name:?} has no expr") };
            rules.push((name.to_owned(), expr.to_owned()));
        }
    }
    rules
}

/// Every selector in both files, with the file it is in.
fn used_selectors() -> BTreeMap<Selector, BTreeSet<&'static str>> {
    let mut used: BTreeMap<Selector, BTreeSet<&'static str>> = BTreeMap::new();
    let dashboard_queries = dashboard_queries(&dashboard());
    let alert_rules = alert_rules();
    assert!(dashboard_queries.len() >= 20, "{DASHBOARD}: {} queries only", dashboard_queries.len());
    assert!(!alert_rules.is_empty(), "{ALERTS}: no rules");
    let exprs = dashboard_queries
        .iter()
        .map(|q| (DASHBOARD, q.as_str()))
        .chain(alert_rules.iter().map(|(_, expr)| (ALERTS, expr.as_str())));
    for (file, expr) in exprs {
        let found = selectors(expr);
        assert!(!found.is_empty(), "{file}: no Switchboard metric in {expr:?}");
        for selector in found {
            used.entry(selector).or_default().insert(file);
        }
    }
    used
}

// ---------------------------------------------------------------------------------------------
// A server that produced every series

const TWILIO_TOKEN: &str = "twilio-token-for-dashboard-tests-3f1a";
const PUBLIC_URL: &str = "https://sb.example.com";

/// sms: a failing provider first (its breaker opens at its first failure), then a good one;
/// mms: a provider that rejects every message (failed at once); no email route; a Twilio
/// provider for its signed receipt and inbound URLs.
fn config(twilio_base: &str) -> String {
    format!(
        r#"
[providers.sms-bad]
kind = "mock"
channels = ["sms"]
error_pct = 100
breaker.failure_threshold = 1
breaker.open_ms = 600000

[providers.sms-ok]
kind = "mock"
channels = ["sms"]

[providers.mms-rejects]
kind = "mock"
channels = ["mms"]
rejected_pct = 100

[providers.tw]
kind = "twilio"
account_sid = "AC0123456789abcdef"
auth_token = "${{TW_TOKEN}}"
public_url = "{PUBLIC_URL}"
base_url = "{twilio_base}"

[routes.sms]
providers = ["sms-bad", "sms-ok"]

[routes.mms]
providers = ["mms-rejects"]
"#
    )
}

fn post(server: &Server, path: &str, content_type: &str, headers: &[(&str, String)], body: String) -> u16 {
    let mut request = client().post(server.url(path)).header("content-type", content_type).body(body);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    request.send().map(|r| r.status().as_u16()).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn post_json(server: &Server, path: &str, body: &Value) -> u16 {
    post(server, path, "application/json", &[], body.to_string())
}

fn metrics_text(server: &Server) -> String {
    client()
        .get(server.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_else(|e| panic!("/metrics: {e}"))
}

/// Starts a server and makes it produce a series of every family with the labels the files
/// match: sends (sent after a failover, failed, refused for no route), inbound messages (stored,
/// redelivered, a STOP), refused inbound and receipt requests, a receipt, a status callback, a
/// rejected reload. `/metrics` once `wanted` are all there (the deadline only guards a hang).
fn exercised_metrics(wanted: &[&Selector]) -> (Server, Exposition) {
    let twilio = FakeHttp::start(Reply::json(201, json!({"sid": "SM0", "status": "queued"})));
    let receiver = FakeHttp::start(Reply::new(200, ""));
    let secret = format!("whsec_{}", base64(&[7u8; 32]));
    let server = Server::start(
        &config(&twilio.base),
        &["--store", "memory://", "--allow-loopback-callbacks"],
        &[("TW_TOKEN", TWILIO_TOKEN), ("SWITCHBOARD_CALLBACK_SECRET", &secret)],
    );
    let logs = || server.logs();

    // Outbound: an SMS sent by sms-ok after sms-bad failed (opening its breaker), with a status
    // callback; an MMS rejected; an email with no route.
    let callback_url = format!("{}/status", receiver.base);
    let sms = json!({"channel": "sms", "from": "+12016661234", "to": "+18045550001", "body": "hi", "status_callback": callback_url});
    let id = send_native(&server, &sms).unwrap_or_else(|| panic!("sms not accepted\n{}", logs()));
    assert_eq!(wait_final(&server, &id)["status"], "sent", "{}", logs());
    let mms = json!({"channel": "mms", "from": "+12016661234", "to": "+18045550002", "body": "hi", "attachments": ["https://example.com/a.png"]});
    let id = send_native(&server, &mms).unwrap_or_else(|| panic!("mms not accepted\n{}", logs()));
    assert_eq!(wait_final(&server, &id)["status"], "failed", "{}", logs());
    let email = json!({"channel": "email", "from": "a@example.com", "to": "b@example.com", "body": "hi"});
    assert_eq!(post_json(&server, "/v1/messages", &email), 503, "no route for email\n{}", logs());

    // Inbound: one stored, its redelivery, a STOP.
    let inbound = |id: &str, body: &str| json!({"from": "+18045550001", "to": "+12016661234", "type": "sms", "messaging_provider_id": id, "body": body, "attachments": null, "timestamp": "2024-11-01T14:00:00Z"});
    assert_eq!(post_json(&server, "/api/webhooks/sms", &inbound("in-1", "hello")), 200);
    assert_eq!(post_json(&server, "/api/webhooks/sms", &inbound("in-1", "hello")), 200);
    assert_eq!(post_json(&server, "/api/webhooks/sms", &inbound("in-2", "STOP")), 200);

    // Twilio's URLs: unsigned requests refused; a signed receipt for a message nobody sent.
    let form_type = "application/x-www-form-urlencoded";
    let params =
        [("MessageSid", "SMunknown"), ("MessageStatus", "delivered"), ("AccountSid", "AC0123456789abcdef")];
    assert_eq!(post(&server, "/v1/inbound/twilio/tw", form_type, &[], form(&params)), 403);
    assert_eq!(post(&server, "/v1/receipts/twilio/tw", form_type, &[], form(&params)), 403);
    let path = "/v1/receipts/twilio/tw";
    let signature = twilio_signature(TWILIO_TOKEN, &format!("{PUBLIC_URL}{path}"), &params);
    assert_eq!(post(&server, path, form_type, &[("x-twilio-signature", signature)], form(&params)), 200);

    // A bad edit of routes.toml, rejected.
    std::fs::write(server.dir().join("routes.toml"), "[routes.sms]\nproviders = [\"nobody\"]\n")
        .unwrap_or_else(|e| panic!("write routes.toml: {e}"));
    let reload = client().post(server.url("/admin/reload")).send().map(|r| r.status().as_u16());
    assert!(
        matches!(reload, Ok(status) if status >= 400),
        "the bad edit is rejected: {reload:?}\n{}",
        logs()
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let exposition = Exposition::parse(&metrics_text(&server));
        if wanted.iter().all(|selector| exposition.has(selector)) || Instant::now() > deadline {
            return (server, exposition);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let used = used_selectors();
    let wanted: Vec<&Selector> = used.keys().collect();
    let (server, exposition) = exercised_metrics(&wanted);
    let missing: Vec<String> = used
        .iter()
        .filter(|(selector, _)| !exposition.has(selector))
        .map(|(selector, files)| format!("{selector:?} in {files:?}"))
        .collect();
    assert!(
        missing.is_empty(),
        "not in /metrics (a name, or no series with these labels):\n{}\n\n/metrics:\n{}",
        missing.join("\n"),
        metrics_text(&server)
    );

    // The other way round: the dashboard shows every family the service exports.
    let shown: BTreeSet<&str> = used
        .iter()
        .filter(|(_, files)| files.contains(DASHBOARD))
        .filter_map(|(selector, _)| exposition.family_of(&selector.name))
        .collect();
    let not_shown: Vec<&String> =
        exposition.types.keys().filter(|family| !shown.contains(family.as_str())).collect();
    assert!(not_shown.is_empty(), "families the dashboard does not show: {not_shown:?}");
}

#[test]
fn the_alerts_are_the_four_of_issue_18() {
    let names: BTreeSet<String> = alert_rules().into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ALERT_NAMES.iter().map(|n| (*n).to_owned()).collect::<BTreeSet<_>>());
}

/// What Grafana needs to import it with a Prometheus data source of the user's choice.
#[test]
fn the_dashboard_is_importable() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 41), "{}", dashboard["schemaVersion"]);
    assert!(dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty() && uid.len() <= 40));
    let variables = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "DS_PROMETHEUS" && v["query"] == "prometheus"),
        "a data source variable DS_PROMETHEUS: {variables:?}"
    );
    let source = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = &panel["title"];
        assert!(panel["id"].as_u64().is_some_and(|id| ids.insert(id)), "panel {title}: a unique id");
        let x = panel["gridPos"]["x"].as_u64().unwrap_or(99);
        let w = panel["gridPos"]["w"].as_u64().unwrap_or(99);
        assert!(x + w <= 24 && panel["gridPos"]["h"].as_u64().is_some(), "panel {title}: gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], source, "panel {title}");
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title}: no query");
        for target in targets {
            assert_eq!(target["datasource"], source, "panel {title}");
            assert!(target["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "panel {title}: {target}");
        }
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(variable["datasource"], source, "variable {}", variable["name"]);
    }
}

/// The promtool `.ci/run` installs.
fn promtool() -> PathBuf {
    match std::env::var_os("SWITCHBOARD_TEST_PROMTOOL") {
        Some(promtool) => PathBuf::from(promtool),
        None => {
            panic!("SWITCHBOARD_TEST_PROMTOOL is not set: run .ci/run, which installs promtool and sets it")
        }
    }
}

/// Prometheus's own parser on every query of the dashboard: each one written as a recording rule,
/// Grafana's interval variables replaced by a duration, and `promtool check rules` on the file.
#[test]
#[cfg_attr(no_promtool, ignore = "SWITCHBOARD_TEST_PROMTOOL is unset: .ci/run installs promtool")]
fn the_dashboard_queries_parse_as_promql() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, query) in dashboard_queries(&dashboard()).iter().enumerate() {
        let promql = ["$__rate_interval", "$__interval", "$__range"]
            .iter()
            .fold(query.clone(), |promql, variable| promql.replace(variable, "5m"));
        // A JSON string is a YAML double-quoted scalar.
        rules.push_str(&format!("      - record: dashboard:query_{n}\n        expr: {}\n", json!(promql)));
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let file = dir.path().join("dashboard_rules.yml");
    std::fs::write(&file, &rules).unwrap_or_else(|e| panic!("write: {e}"));
    let output = std::process::Command::new(promtool())
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(output.status.success(), "{}{}\n{rules}", common::stdout(&output), common::stderr(&output));
}

// ---------------------------------------------------------------------------------------------
// Unit cases of the readers above

fn check(expr: &str, expected: &[(&str, &[(&str, &str)])]) {
    let expected: Vec<Selector> = expected
        .iter()
        .map(|(name, exact)| Selector {
            name: (*name).to_owned(),
            exact: exact.iter().map(|(l, v)| ((*l).to_owned(), (*v).to_owned())).collect(),
        })
        .collect();
    assert_eq!(selectors(expr), expected, "{expr}");
}

#[test]
fn selectors_are_read_from_promql() {
    check("switchboard_queue_depth", &[("switchboard_queue_depth", &[])]);
    check(
        r#"sum by (provider) (rate(switchboard_dispatch_attempts_total{job=~"$job", outcome="success"}[5m]))"#,
        &[("switchboard_dispatch_attempts_total", &[("outcome", "success")])],
    );
    // A histogram's sample names stay as written; `le` and the quantile are no metric.
    check(
        "histogram_quantile(0.99, sum by (le) (rate(switchboard_dispatch_duration_seconds_bucket[$__rate_interval])))",
        &[("switchboard_dispatch_duration_seconds_bucket", &[])],
    );
    // Both sides of a binary operator; matchers on the selector they follow, sorted.
    check(
        "switchboard_a_total{b=\"2\", a = '1'} / on (channel) switchboard_b",
        &[("switchboard_a_total", &[("a", "1"), ("b", "2")]), ("switchboard_b", &[])],
    );
    // Not exact, or a Grafana variable: not checked against a series.
    check(r#"switchboard_x{a!="1", b=~"2", c!~"3", d="$channel"}"#, &[("switchboard_x", &[])]);
    // Inside another name, a string, a matcher's label: not a metric.
    check(
        r#"up{job="switchboard_api"} + my_switchboard_x + label_replace(up, "switchboard_y", "", "", "")"#,
        &[],
    );
    check(r#"up{switchboard_label="1"}"#, &[]);
    // A name with a character metric names here do not have is read whole (and then not found).
    check("switchboard_Queue_depth", &[("switchboard_Queue_depth", &[])]);
    // A recording rule's name is read whole.
    check("switchboard:sends:rate5m", &[]);
    check("switchboard_sends:rate5m", &[("switchboard_sends:rate5m", &[])]);
    // Escapes in strings.
    check(r#"switchboard_x{a="q\"uote"} or vector(0)"#, &[("switchboard_x", &[("a", "q\"uote")])]);
}

#[test]
fn sample_names_follow_the_family_type() {
    let exposition = Exposition::parse(
        "# TYPE c counter\nc_total{channel=\"sms\"} 1\n\
         # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n\
         # TYPE g gauge\ng 3\n\
         # TYPE idle counter\n# EOF\n",
    );
    let has = |name: &str, exact: &[(&str, &str)]| {
        exposition.has(&Selector {
            name: name.to_owned(),
            exact: exact.iter().map(|(l, v)| ((*l).to_owned(), (*v).to_owned())).collect(),
        })
    };
    for (name, exact, expected) in [
        ("c_total", &[][..], true),
        ("c_total", &[("channel", "sms")][..], true),
        ("c_total", &[("channel", "email")][..], false),
        ("c_total", &[("status", "sent")][..], false),
        ("c", &[][..], false),
        ("c_count", &[][..], false),
        ("h_bucket", &[][..], true),
        ("h_sum", &[][..], true),
        ("h_count", &[][..], true),
        ("h", &[][..], false),
        ("h_total", &[][..], false),
        ("g", &[][..], true),
        ("g_count", &[][..], false),
        ("g_total", &[][..], false),
        // A family with no series yet is not enough.
        ("idle_total", &[][..], false),
        ("nothing", &[][..], false),
    ] {
        assert_eq!(has(name, exact), expected, "{name} {exact:?}");
    }
    assert_eq!(exposition.family_of("h_bucket"), Some("h"));
    assert_eq!(exposition.family_of("c_total"), Some("c"));
    assert_eq!(exposition.family_of("g_sum"), None);
}
