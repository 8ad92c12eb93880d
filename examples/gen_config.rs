//! Prints a large valid routes.toml: `cargo run --release --example gen_config -- 10000`.
//! Used to time `switchboard validate` on a big config (see specs/performance.md).

#[path = "../benches/support/big_config.rs"]
mod big_config;

fn main() {
    let providers = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
    print!("{}", big_config::big_config(providers));
}
