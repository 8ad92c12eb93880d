//! Build-time switches for the integration tests: a test group that needs an outside service is
//! compiled `#[ignore]`d when the service is not configured, so libtest counts it as ignored
//! instead of passing it. `.ci/run` configures every one.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // PostgreSQL: `cfg(no_postgres)` when SWITCHBOARD_TEST_POSTGRES_URL is unset or empty.
    println!("cargo::rustc-check-cfg=cfg(no_postgres)");
    println!("cargo::rerun-if-env-changed=SWITCHBOARD_TEST_POSTGRES_URL");
    if std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").map_or(true, |url| url.trim().is_empty()) {
        println!("cargo::rustc-cfg=no_postgres");
    }
    // The Python tools (tests/support/requirements.txt): aiosmtpd, the smtp kind against a relay
    // the project did not write (tests/smtp_relay.rs); openapi-spec-validator and schemathesis,
    // the OpenAPI document against the binary (tests/openapi.rs). `.ci/run` makes the venv
    // (target/py) and sets SWITCHBOARD_TEST_PYTHON to its python.
    println!("cargo::rustc-check-cfg=cfg(no_python)");
    println!("cargo::rerun-if-env-changed=SWITCHBOARD_TEST_PYTHON");
    if std::env::var_os("SWITCHBOARD_TEST_PYTHON").is_none_or(|python| python.is_empty()) {
        println!("cargo::rustc-cfg=no_python");
    }
    // promtool (Debian's `prometheus` package): the dashboard's PromQL parsed by Prometheus's own
    // parser (tests/dashboards.rs). `.ci/run` installs it and sets SWITCHBOARD_TEST_PROMTOOL.
    println!("cargo::rustc-check-cfg=cfg(no_promtool)");
    println!("cargo::rerun-if-env-changed=SWITCHBOARD_TEST_PROMTOOL");
    if std::env::var_os("SWITCHBOARD_TEST_PROMTOOL").is_none_or(|promtool| promtool.is_empty()) {
        println!("cargo::rustc-cfg=no_promtool");
    }
    // The console's browser test (tests/console.rs): `cfg(no_browser)` unless
    // SWITCHBOARD_TEST_BROWSER names the directory whose node_modules holds playwright-core
    // (`.ci/run` installs it with `npm ci` in tests/support/console, and Debian's chromium).
    println!("cargo::rustc-check-cfg=cfg(no_browser)");
    println!("cargo::rerun-if-env-changed=SWITCHBOARD_TEST_BROWSER");
    if std::env::var_os("SWITCHBOARD_TEST_BROWSER").is_none_or(|dir| dir.is_empty()) {
        println!("cargo::rustc-cfg=no_browser");
    }
}
