//! Send-payload parser and the recipient/URL validators: any body is accepted as a message or
//! refused with an API error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::http::payload::{is_http_url, parse, Endpoint};
use switchboard_providers::address::{is_alphanumeric_sender, is_email, is_phone};

fuzz_target!(|data: &[u8]| {
    for endpoint in [Endpoint::LegacySms, Endpoint::LegacyEmail, Endpoint::Native] {
        if let Ok(message) = parse(endpoint, data, "id".into(), |c| matches!(c, "sms" | "mms" | "email" | "push")) {
            assert!(message.attachments.iter().all(|url| is_http_url(url)));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = (is_phone(text), is_email(text), is_http_url(text), is_alphanumeric_sender(text));
    }
});
