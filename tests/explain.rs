//! `switchboard explain` through the binary: golden outputs for each kind of match and each
//! layer a setting can come from (`tests/fixtures/explain/*.stdout`; `BLESS=1` rewrites them, but
//! not under `CI=true`),
//! and `GET /admin/explain` giving the same answer with live breaker states.

mod common;

use common::{client, stdout, switchboard, Server};

const ENV: [(&str, &str); 2] = [
    ("TWILIO_AUTH_TOKEN", "MARKER-explain-token"),
    ("SWITCHBOARD_PROVIDERS__VONAGE_CANARY__TIMEOUT_MS", "1500"),
];

/// (golden file, arguments after `explain`)
const CASES: &[(&str, &[&str])] = &[
    ("sms-prefix-rule", &["--channel", "sms", "--to", "+447700900123"]),
    ("sms-tag-rule", &["--channel", "sms", "--to", "+12016661234", "--tag", "otp"]),
    ("sms-default-weighted", &["--channel", "sms", "--to", "+12016661234", "--tag", "news"]),
    ("email-domain-rule", &["--channel", "email", "--to", "ops@mail.example.org"]),
    ("email-default-round-robin", &["--channel", "email", "--to", "someone@gmail.com"]),
    ("sms-prefix-rule-json", &["--channel", "sms", "--to", "+447700900123", "--format", "json"]),
];

fn dir() -> std::path::PathBuf {
    common::repo_root().join("tests/fixtures/explain")
}

#[test]
fn explain_golden_outputs() {
    let bless = common::bless();
    let mut failures = Vec::new();
    for (name, args) in CASES {
        let mut full = vec!["explain"];
        full.extend_from_slice(args);
        let output = switchboard(&dir(), &full, &ENV);
        assert_eq!(output.status.code(), Some(0), "{name}: {}", common::stderr(&output));
        let got = stdout(&output);
        assert!(!got.contains("MARKER"), "{name} shows a secret:\n{got}");
        let golden = dir().join(format!("{name}.stdout"));
        if bless {
            std::fs::write(&golden, &got).unwrap_or_else(|e| panic!("{e}"));
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!("{name}: output differs from {}:\n{got}", golden.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bless_is_refused_under_ci() {
    common::assert_bless_refused_under_ci("explain_golden_outputs");
}

#[test]
fn explain_refuses_what_it_cannot_answer() {
    let no_route = switchboard(&dir(), &["explain", "--channel", "mms", "--to", "+12016661234"], &ENV);
    assert_eq!(no_route.status.code(), Some(2));
    assert!(
        common::stderr(&no_route).contains("channel `mms` has no route"),
        "{}",
        common::stderr(&no_route)
    );
    // Without the token's variable the config is invalid: exit 1 with the diagnostic.
    let invalid = switchboard(&dir(), &["explain", "--channel", "sms", "--to", "+1"], &[]);
    assert_eq!(invalid.status.code(), Some(1));
    assert!(common::stderr(&invalid).contains("missing-env"), "{}", common::stderr(&invalid));
    let missing = switchboard(&dir(), &["explain", "--channel", "sms"], &ENV);
    assert_eq!(missing.status.code(), Some(2));
}

/// `--to` and `--tag` are judged exactly as the send API judges them: what it refuses, explain
/// refuses with the API's reason (exit 2, nothing on stdout).
#[test]
fn explain_refuses_recipients_and_tags_the_send_api_refuses() {
    let refused: &[(&[&str], &str)] = &[
        (&["--channel", "sms", "--to", "foo"], "`to` must be an E.164 number"),
        (&["--channel", "sms", "--to", "+1"], "`to` must be an E.164 number"),
        (&["--channel", "sms", "--to", "ops@mail.example.org"], "`to` must be an E.164 number"),
        (&["--channel", "email", "--to", "+447700900123"], "`to` must be an email address"),
        (&["--channel", "email", "--to", "Ops <ops@mail.example.org>"], "`to` must be an email address"),
        (
            &["--channel", "sms", "--to", "+447700900123", "--tag", ""],
            "tags are 1 to 64 printable characters",
        ),
    ];
    for (args, reason) in refused {
        let full = [&["explain"], *args].concat();
        let output = switchboard(&dir(), &full, &ENV);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", common::stderr(&output));
        assert_eq!(common::stderr(&output).lines().count(), 1, "{args:?}: {}", common::stderr(&output));
        assert!(
            common::stderr(&output).starts_with("switchboard: the send API would refuse this message: "),
            "{args:?}: {}",
            common::stderr(&output)
        );
        assert!(common::stderr(&output).contains(reason), "{args:?}: {}", common::stderr(&output));
        assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
    }
    // What the API accepts is explained: a short code, an E.164 number, an address.
    for args in [
        &["--channel", "sms", "--to", "12345"][..],
        &["--channel", "sms", "--to", "+447700900123", "--tag", "otp"],
        &["--channel", "email", "--to", "ops@mail.example.org"],
    ] {
        let full = [&["explain"], args].concat();
        let output = switchboard(&dir(), &full, &ENV);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", common::stderr(&output));
    }
}

#[test]
fn admin_explain_matches_the_cli_with_live_state() {
    let config = std::fs::read_to_string(dir().join("routes.toml")).unwrap_or_default();
    let server = Server::start(&config, &["--store", "memory://"], &ENV);
    let url = server.url("/admin/explain?channel=sms&to=%2B447700900123");
    let live: serde_json::Value = client().get(url).send().and_then(|r| r.json()).unwrap_or_default();
    let cli = switchboard(
        &dir(),
        &["explain", "--channel", "sms", "--to", "+447700900123", "--format", "json"],
        &ENV,
    );
    let mut offline: serde_json::Value = serde_json::from_str(&stdout(&cli)).unwrap_or_default();
    for provider in offline["providers"].as_array_mut().into_iter().flatten() {
        provider["breaker"] = "closed".into();
        provider["paused"] = false.into();
    }
    assert_eq!(live, offline);
    // An unencoded `+` (a space once decoded) is taken as the `+` it was.
    let url = server.url("/admin/explain?channel=sms&to=+447700900123&tag=otp");
    let plus: serde_json::Value = client().get(url).send().and_then(|r| r.json()).unwrap_or_default();
    assert_eq!(plus["rule"]["number"], 1, "{plus}");
    let bad = client().get(server.url("/admin/explain?channel=fax&to=1")).send().map(|r| r.status().as_u16());
    assert_eq!(bad.ok(), Some(400));
    // Recipients the send API refuses are refused here too, the same way.
    let refused: serde_json::Value = client()
        .get(server.url("/admin/explain?channel=sms&to=foo"))
        .send()
        .and_then(|r| r.json())
        .unwrap_or_default();
    assert_eq!(
        (refused["error"]["code"].as_str(), refused["error"]["field"].as_str()),
        (Some("invalid_field"), Some("to")),
        "{refused}"
    );
}
