//! `switchboard keys callback-secret` through the binary.

mod common;

use switchboard::callbacks::{sign, CallbackSecret};

#[test]
fn keys_callback_secret_prints_a_fresh_usable_secret() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let output = common::switchboard(dir.path(), &["keys", "callback-secret"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", common::stderr(&output));
    let stdout = common::stdout(&output);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let text = lines[0];
    // whsec_ and the padded base64 of 32 bytes.
    assert!(text.starts_with("whsec_") && text.len() == 6 + 44 && text.ends_with('='), "{text}");
    let secret = CallbackSecret::parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert!(sign(&secret, "msg_1", 1, b"{}").starts_with("v1,"));

    // The hint is on stderr, naming the variable, without the secret.
    let stderr = common::stderr(&output);
    assert!(stderr.contains("SWITCHBOARD_CALLBACK_SECRET") && !stderr.contains(text), "{stderr}");

    let again = common::stdout(&common::switchboard(dir.path(), &["keys", "callback-secret"], &[]));
    assert!(again.starts_with("whsec_") && !again.contains(text), "secrets must be fresh");
    let extra = common::switchboard(dir.path(), &["keys", "callback-secret", "extra"], &[]);
    assert_eq!(extra.status.code(), Some(2));
}
