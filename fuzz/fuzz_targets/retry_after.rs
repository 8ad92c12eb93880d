//! Retry-After parser: delay-seconds, HTTP-dates and garbage, never a panic or an overflow.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use switchboard_providers::http::parse_retry_after;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let _ = parse_retry_after(text, now);
    }
});
