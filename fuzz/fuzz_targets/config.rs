//! routes.toml loader and validator: any bytes give diagnostics (each with a position that
//! renders) or a valid config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::config::{load_bytes, render_human, Environment};

fuzz_target!(|data: &[u8]| {
    let env = Environment::from_pairs([("TWILIO_AUTH_TOKEN", "t"), ("SWITCHBOARD_DEFAULTS__TIMEOUT_MS", "5")]);
    let loaded = load_bytes("routes.toml", data, &env);
    for diagnostic in &loaded.diagnostics {
        let _ = render_human(&loaded.source, diagnostic);
    }
});
