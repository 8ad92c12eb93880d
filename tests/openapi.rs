//! The OpenAPI document (src/http/openapi.rs) against the binary: `switchboard openapi` prints
//! what `GET /openapi.json` serves (public, also with keys on) and what `specs/openapi.json`
//! holds; the router serves every documented path with exactly its documented methods; with
//! the python `.ci/run` sets up (`SWITCHBOARD_TEST_PYTHON`), the document validates as OpenAPI
//! 3.1 (openapi-spec-validator) and schemathesis passes against the real binary on a temporary
//! SQLite store. Built without that variable, the python tests are ignored (build.rs).

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/stores.rs"]
mod stores;

use std::path::PathBuf;
use std::process::Command;

use common::{client, repo_root, stdout, switchboard, Server};
use sha2::{Digest, Sha256};

/// The committed document.
const COMMITTED: &str = "specs/openapi.json";
/// How to refresh it.
const REGENERATE: &str = "cargo run -- openapi > specs/openapi.json";
/// The admin key the servers here are started with.
const KEY: &str = "sb_openapi_test_key_4f1c9a";

fn keys() -> String {
    let hash: String = Sha256::digest(KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("openapi:{hash}:admin")
}

/// What `switchboard openapi` prints.
fn printed() -> String {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let output = switchboard(dir.path(), &["openapi"], &[]);
    assert!(output.status.success(), "switchboard openapi failed: {}", common::stderr(&output));
    stdout(&output)
}

fn document() -> serde_json::Value {
    serde_json::from_str(&printed()).unwrap_or_else(|e| panic!("switchboard openapi printed no JSON: {e}"))
}

fn routes_toml() -> String {
    std::fs::read_to_string(repo_root().join("routes.toml")).unwrap_or_else(|e| panic!("routes.toml: {e}"))
}

#[test]
fn the_committed_document_is_what_the_binary_prints() {
    let committed = std::fs::read_to_string(repo_root().join(COMMITTED)).unwrap_or_default();
    let printed = printed();
    assert!(printed.ends_with("}\n"), "the document ends with a newline");
    assert_eq!(printed, self::printed(), "switchboard openapi prints the same twice");
    // Never rewritten here (nor under CI=true): the developer regenerates it on purpose.
    assert!(
        committed == printed,
        "{COMMITTED} differs from what `switchboard openapi` prints: regenerate it with `{REGENERATE}` and commit it"
    );
}

#[test]
fn the_document_is_served_publicly_as_printed() {
    let server =
        Server::start(&routes_toml(), &["--store", "memory://"], &[("SWITCHBOARD_API_KEYS", &keys())]);
    let response =
        client().get(server.url("/openapi.json")).send().unwrap_or_else(|e| panic!("GET /openapi.json: {e}"));
    assert_eq!(response.status().as_u16(), 200, "no key needed");
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(response.text().unwrap_or_default(), printed());
}

#[test]
fn the_document_says_what_the_contract_says() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    // Error codes per operation and status, as an enum.
    let codes = |path: &str, method: &str, status: &str| -> Vec<String> {
        let schema = &op(path, method)["responses"][status]["content"]["application/json"]["schema"];
        let codes = schema["properties"]["error"]["properties"]["code"]["enum"].as_array().cloned();
        codes.unwrap_or_default().iter().filter_map(|c| c.as_str().map(str::to_owned)).collect()
    };
    for (path, method, status, expected) in [
        (
            "/v1/messages",
            "post",
            "422",
            &["idempotency_key_reused", "recipient_opted_out", "recipient_suppressed"][..],
        ),
        ("/v1/messages", "post", "401", &["unauthorized"]),
        ("/v1/messages", "post", "409", &["idempotency_key_in_flight"]),
        ("/api/messages/sms", "post", "429", &["rate_limited", "recipient_rate_limited"]),
        ("/v1/messages/{id}", "get", "404", &["not_found"]),
        ("/v1/opt-outs", "get", "403", &["forbidden"]),
        ("/v1/receipts/{kind}/{provider}", "post", "403", &["invalid_signature"]),
        ("/healthz", "get", "414", &["uri_too_long"]),
        ("/v1/messages", "get", "400", &["invalid_field"]),
        ("/v1/messages/{id}/retry", "post", "404", &["not_found"]),
        ("/v1/messages/{id}/retry", "post", "409", &["not_retryable"]),
        ("/v1/messages/{id}/retry", "post", "422", &["idempotency_key_reused"]),
        ("/v1/messages/{id}/retry", "post", "429", &["rate_limited"]),
    ] {
        assert_eq!(codes(path, method, status), expected, "{method} {path} {status}");
    }
    // `not_retryable` says the message's status; no other refusal has `error.status`.
    let detail = |path: &str, method: &str, status: &str| {
        op(path, method)["responses"][status]["content"]["application/json"]["schema"]["properties"]["error"]
            ["properties"]
            .clone()
    };
    assert_eq!(detail("/v1/messages/{id}/retry", "post", "409")["status"]["enum"][3], "failed");
    assert!(detail("/v1/messages", "post", "409")["status"].is_null());
    // A search's page and filters.
    let page = &op("/v1/messages", "get")["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(page["$ref"], "#/components/schemas/MessagesSearchPage");
    let search = &doc["components"]["schemas"]["MessagesSearchPage"]["properties"];
    assert_eq!(search["messages"]["items"]["$ref"], "#/components/schemas/MessageView");
    assert!(search["next_cursor"].is_object());
    // Security: the bearer key, none for health and this document, a provider's own proof.
    let security = |path: &str, method: &str| op(path, method)["security"].to_string();
    assert_eq!(security("/v1/messages", "post"), r#"[{"bearer":[]}]"#);
    assert_eq!(security("/healthz", "get"), "[{}]");
    assert_eq!(security("/openapi.json", "get"), "[{}]");
    assert!(security("/v1/inbound/{kind}/{provider}", "post").contains("twilioSignature"));
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    // No 401 where no key is asked for.
    assert!(op("/healthz", "get")["responses"]["401"].is_null());
    assert!(op("/v1/receipts/{kind}/{provider}", "post")["responses"]["401"].is_null());
    // Examples from the README.
    let example = &op("/api/messages/sms", "post")["requestBody"]["content"]["application/json"]["example"];
    assert_eq!(example["from"], "+12016661234");
}

/// Every documented path answers its documented methods from a handler (not 405), and every
/// other method with 405: the router serves exactly the document's operations.
#[test]
fn the_router_serves_exactly_the_documented_operations() {
    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
    let doc = document();
    let Some(paths) = doc["paths"].as_object() else { panic!("no paths") };
    let server =
        Server::start(&routes_toml(), &["--store", "memory://"], &[("SWITCHBOARD_API_KEYS", &keys())]);
    let client = client();
    let mut checked = 0;
    for (template, item) in paths {
        // Every parameter as `1`: a message id, a conversation id, a kind or provider name.
        let path: String = template
            .split('/')
            .map(|part| if part.starts_with('{') { "1" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        for method in METHODS {
            let request = client
                .request(method.to_uppercase().parse().unwrap_or_default(), server.url(&path))
                .header("authorization", format!("Bearer {KEY}"));
            let response = request.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status().as_u16();
            let documented = item.get(method).is_some();
            if documented {
                assert_ne!(status, 405, "{method} {template} is documented but the router does not serve it");
                checked += 1;
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {template} is not documented but the router answers {status}"
                );
            }
        }
    }
    assert_eq!(checked, 25, "every operation was tried");
    // An unknown path is the router's fallback.
    let unknown =
        client.get(server.url("/v1/nothing")).header("authorization", format!("Bearer {KEY}")).send();
    assert_eq!(unknown.map(|r| r.status().as_u16()).ok(), Some(404));
}

/// The python of the venv `.ci/run` makes.
fn python() -> PathBuf {
    match std::env::var_os("SWITCHBOARD_TEST_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => panic!(
            "SWITCHBOARD_TEST_PYTHON is not set: run .ci/run, which installs the python tools and sets it"
        ),
    }
}

#[test]
#[cfg_attr(no_python, ignore = "SWITCHBOARD_TEST_PYTHON is unset: .ci/run installs openapi-spec-validator")]
fn the_document_validates_as_openapi_3_1() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, printed()).unwrap_or_else(|e| panic!("write: {e}"));
    let output = Command::new(python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("openapi-spec-validator: {e}"));
    assert!(
        output.status.success(),
        "not valid OpenAPI 3.1:\n{}{}",
        stdout(&output),
        common::stderr(&output)
    );
}

/// Examples per operation and phase: the whole run stays well under 3 minutes on 2 cores.
const MAX_EXAMPLES: &str = "50";

#[test]
#[cfg_attr(no_python, ignore = "SWITCHBOARD_TEST_PYTHON is unset: .ci/run installs schemathesis")]
fn schemathesis_passes_against_the_binary() {
    let backend = e2e::Backend::sqlite();
    // The send rate is not what is tested: a key limited to 100/s would answer some 429s.
    let args = ["--key-rate-limit", "1000000", "--key-rate-burst", "1000000"];
    let server = backend.start_with_args(&routes_toml(), &args, &[("SWITCHBOARD_API_KEYS", &keys())]);
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let started = std::time::Instant::now();
    let output = Command::new(python())
        .args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(repo_root().join("tests/support/schemathesis.toml"))
        .arg("run")
        .arg(server.url("/openapi.json"))
        .args(["--checks", "all", "--max-examples", MAX_EXAMPLES, "--seed", "17"])
        .args(["--generation-database", "none", "--header"])
        .arg(format!("Authorization: Bearer {KEY}"))
        .current_dir(work.path())
        .output()
        .unwrap_or_else(|e| panic!("schemathesis: {e}"));
    let report = format!("{}{}", stdout(&output), common::stderr(&output));
    eprintln!("schemathesis ran {:.0?}", started.elapsed());
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\nserver log:\n{}",
        server.logs()
    );
    assert!(report.contains("Operations:"), "{report}");
}
