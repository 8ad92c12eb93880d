//! `cfg(no_postgres)` when `SWITCHBOARD_TEST_POSTGRES_URL` is unset or empty: the PostgreSQL
//! tests are then `#[ignore]`d, so the test runner counts them as ignored instead of passing
//! them (run them with the variable set, as `.ci/run` does).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_postgres)");
    println!("cargo::rerun-if-env-changed=SWITCHBOARD_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").map_or(true, |url| url.trim().is_empty()) {
        println!("cargo::rustc-cfg=no_postgres");
    }
}
