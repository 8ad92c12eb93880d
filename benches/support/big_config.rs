//! A large, valid routes.toml for benchmarks: `providers` mock providers with a few overrides
//! each; sms lists half of them, mms three tenths, email the rest.

use std::fmt::Write as _;

pub fn big_config(providers: usize) -> String {
    let mut out = String::from(
        "[defaults]\ntimeout_ms = 5000\nbreaker.open_ms = 20000\n\n[kinds.mock]\nlatency_ms = 0\n\n",
    );
    for i in 0..providers {
        let channels =
            if i < providers / 2 || i < providers * 8 / 10 { "[\"sms\", \"mms\"]" } else { "[\"email\"]" };
        let _ = write!(
            out,
            "[providers.p{i:05}]\nkind = \"mock\"\nchannels = {channels}\nseed = {i}\ntimeout_ms = {}\nbreaker.failure_threshold = {}\n\n",
            1000 + i % 5000,
            1 + i % 10,
        );
    }
    let list =
        |range: std::ops::Range<usize>| range.map(|i| format!("\"p{i:05}\"")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(out, "[routes.sms]\nproviders = [{}]\n", list(0..providers / 2));
    let _ = writeln!(
        out,
        "[routes.mms]\nproviders = [{}]\nmax_attempts = 5\n",
        list(providers / 2..providers * 8 / 10)
    );
    let _ = writeln!(out, "[routes.email]\nproviders = [{}]", list(providers * 8 / 10..providers));
    out
}
