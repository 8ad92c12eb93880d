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
    // aiosmtpd: the smtp kind against a relay the project did not write. `.ci/run` makes the
    // venv (target/py) and sets SWITCHBOARD_TEST_PYTHON to its python (tests/smtp_relay.rs).
    println!("cargo::rustc-check-cfg=cfg(no_aiosmtpd)");
    println!("cargo::rerun-if-env-changed=SWITCHBOARD_TEST_PYTHON");
    if std::env::var_os("SWITCHBOARD_TEST_PYTHON").is_none_or(|python| python.is_empty()) {
        println!("cargo::rustc-cfg=no_aiosmtpd");
    }
}
