//! The `switchboard` binary's commands, exit codes and output, end to end.

mod common;

use common::{fixtures, json, repo_root, stderr, stdout, switchboard};

fn temp_config(text: &str) -> tempfile::TempDir {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => panic!("tempdir: {error}"),
    };
    if let Err(error) = std::fs::write(dir.path().join("routes.toml"), text) {
        panic!("write config: {error}");
    }
    dir
}

const VALID: &str = r#"
[providers.sms-main]
kind = "mock"
channels = ["sms", "mms"]

[providers.email-main]
kind = "mock"
channels = ["email"]

[routes.sms]
providers = ["sms-main"]
[routes.mms]
providers = ["sms-main"]
[routes.email]
providers = ["email-main"]
"#;

#[test]
fn repo_config_validates_clean() {
    let output = switchboard(&repo_root(), &["validate", "--format", "json"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report = json(&output);
    assert_eq!(report["valid"], true);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["warnings"], 0, "{report}");

    let human = switchboard(&repo_root(), &["validate"], &[]);
    assert_eq!(human.status.code(), Some(0));
    assert!(stdout(&human).starts_with("routes.toml: valid ("), "{}", stdout(&human));
}

/// kind, channels, settings (schema order), credential settings
type KindListing = (&'static str, &'static [&'static str], &'static [&'static str], &'static [&'static str]);

#[test]
fn providers_lists_exactly_the_built_in_kinds() {
    let output = switchboard(&repo_root(), &["providers", "--format", "json"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let catalog = json(&output);
    let names = |list: &serde_json::Value, key: &str| -> Vec<String> {
        list.as_array()
            .map(|items| items.iter().filter_map(|i| i[key].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let expected: [KindListing; 5] = [
        (
            "mock",
            &["sms", "mms", "email"],
            &[
                "error_pct",
                "latency_ms",
                "rate_limited_pct",
                "rejected_pct",
                "retry_after_ms",
                "seed",
                "timeout_pct",
            ],
            &[],
        ),
        (
            "sendgrid",
            &["email"],
            &["api_key", "base_url", "event_webhook_public_key", "from", "inbound_secret"],
            &["api_key", "inbound_secret"],
        ),
        (
            "smtp",
            &["email"],
            &["ca_file", "from", "host", "password", "pool_size", "port", "tls", "username"],
            &["password"],
        ),
        (
            "twilio",
            &["sms", "mms"],
            &[
                "account_sid",
                "auth_token",
                "base_url",
                "from",
                "messaging_service_sid",
                "public_url",
                "status_callback",
            ],
            &["auth_token"],
        ),
        ("webhook", &["*"], &["secret", "url"], &["secret"]),
    ];
    assert_eq!(names(&catalog["kinds"], "name"), expected.map(|(kind, ..)| kind));
    for ((kind, channels, settings, secrets), listed) in
        expected.iter().zip(catalog["kinds"].as_array().into_iter().flatten())
    {
        assert_eq!(listed["channels"], serde_json::json!(channels), "{kind}");
        assert_eq!(names(&listed["settings"], "name"), *settings, "{kind}");
        for setting in listed["settings"].as_array().into_iter().flatten() {
            assert!(setting["doc"].as_str().is_some_and(|d| !d.is_empty() && !d.contains('\n')), "{setting}");
            let is_secret = secrets.iter().any(|s| setting["name"] == *s);
            let ty = setting["type"].as_str().unwrap_or_default();
            assert_eq!(ty.starts_with("secret"), is_secret, "{kind}: {setting}");
        }
    }
    let mock = &catalog["kinds"][0];
    for setting in mock["settings"].as_array().into_iter().flatten() {
        let expected =
            if setting["name"] == "retry_after_ms" { serde_json::Value::Null } else { serde_json::json!(0) };
        assert_eq!(setting["default"], expected, "{setting}");
    }
    let twilio = &catalog["kinds"][3]["settings"];
    assert_eq!(twilio[0]["required"], true);
    assert_eq!(twilio[2]["default"], "https://api.twilio.com");
    let common = names(&catalog["common_settings"], "name");
    for key in ["channels", "timeout_ms", "breaker.open_ms"] {
        assert!(common.iter().any(|c| c == key), "{common:?}");
    }

    let human = stdout(&switchboard(&repo_root(), &["providers"], &[]));
    assert!(human.starts_with("mock: "), "{human}");
    assert!(human.contains("latency_ms") && human.contains("auth_token                   secret"), "{human}");
}

/// The README's example of real providers is a valid config.
#[test]
fn readme_provider_example_validates() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap_or_default();
    let section = readme.split("## Real providers").nth(1).unwrap_or_default();
    let example =
        section.split("```toml").nth(1).and_then(|rest| rest.split("```").next()).unwrap_or_default();
    assert!(example.contains("kind = \"twilio\""), "no example found in the README");
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    std::fs::write(dir.path().join("routes.toml"), example).unwrap_or_else(|error| panic!("{error}"));
    let env = [
        ("TWILIO_AUTH_TOKEN", "t"),
        ("SENDGRID_API_KEY", "k"),
        ("SENDGRID_INBOUND_SECRET", "s"),
        ("SMTP_PASSWORD", "p"),
    ];
    let output = switchboard(dir.path(), &["validate"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).starts_with("routes.toml: valid"), "{}", stdout(&output));
}

/// Exit code 2, a one-line reason on stderr, nothing on stdout.
fn check_cannot_run(args: &[&str], env: &[(&str, &str)], reason: &str) {
    let output = switchboard(&repo_root(), args, env);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
    assert!(stderr(&output).contains(reason), "{args:?}: {}", stderr(&output));
    assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
}

#[test]
fn exit_code_2_when_validation_cannot_run() {
    check_cannot_run(&["validate", "--config", "no/such/routes.toml"], &[], "not found");
    check_cannot_run(&["validate", "--config", "tests"], &[], "cannot read config file tests");
    check_cannot_run(&["validate", "--format", "xml"], &[], "invalid value 'xml'");
    check_cannot_run(&["validate", "--bogus"], &[], "unexpected argument '--bogus'");
    check_cannot_run(&["frobnicate"], &[], "unrecognized subcommand");
    check_cannot_run(&["validate"], &[("SWITCHBOARD_CONFIG", "missing.toml")], "missing.toml not found");
}

#[test]
fn config_path_comes_from_flag_then_env_then_default() {
    let dir = temp_config(VALID);
    let other = dir.path().join("other.toml");
    if let Err(error) = std::fs::write(&other, "[providers]\nx = 1\n") {
        panic!("{error}");
    }
    assert_eq!(switchboard(dir.path(), &["validate"], &[]).status.code(), Some(0));
    assert_eq!(
        switchboard(dir.path(), &["validate"], &[("SWITCHBOARD_CONFIG", "other.toml")]).status.code(),
        Some(1)
    );
    let flag_wins = switchboard(
        dir.path(),
        &["validate", "--config", "routes.toml"],
        &[("SWITCHBOARD_CONFIG", "other.toml")],
    );
    assert_eq!(flag_wins.status.code(), Some(0));
}

#[test]
fn environment_overrides_reach_the_right_provider() {
    let dir = temp_config(VALID);
    // `SMS_MAIN` names provider `sms-main`; a bad value is reported against the variable.
    let output = switchboard(
        dir.path(),
        &["validate", "--format", "json"],
        &[("SWITCHBOARD_PROVIDERS__SMS_MAIN__BREAKER__FAILURE_THRESHOLD", "0")],
    );
    assert_eq!(output.status.code(), Some(1));
    let d = &json(&output)["diagnostics"][0];
    assert_eq!(d["code"], "out-of-range");
    assert_eq!(d["env"], "SWITCHBOARD_PROVIDERS__SMS_MAIN__BREAKER__FAILURE_THRESHOLD");
    assert_eq!(d["line"], serde_json::Value::Null);

    // Variables without `__` are the service's own settings, not config keys.
    let ok = switchboard(
        dir.path(),
        &["validate"],
        &[("SWITCHBOARD_LISTEN", "x"), ("SWITCHBOARD_LOG_FORMAT", "json")],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));

    let typo = switchboard(
        dir.path(),
        &["validate", "--format", "json"],
        &[("SWITCHBOARD_DEFAULT__TIMEOUT_MS", "5")],
    );
    assert_eq!(typo.status.code(), Some(1));
    let d = &json(&typo)["diagnostics"][0];
    assert_eq!(
        (d["code"].as_str(), d["help"].as_str()),
        (Some("unknown-key"), Some("did you mean `defaults`?"))
    );
}

#[test]
fn secrets_are_never_printed() {
    let marker = "MARKER-hunter2-secret";
    let dir = temp_config(
        (VALID.replace(
            "[providers.email-main]\nkind = \"mock\"",
            "[providers.email-main]\nkind = \"mock\"\nseed = \"${EMAIL_SEED}\"",
        ) + "\n[defaults]\nstrategy = \"${STRATEGY}\"\n")
            .as_str(),
    );
    let env = [("EMAIL_SEED", marker), ("STRATEGY", marker)];
    for format in ["human", "json"] {
        let output = switchboard(dir.path(), &["validate", "--format", format], &env);
        assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
        let all = stdout(&output) + &stderr(&output);
        assert!(!all.contains("hunter2"), "{format}: secret printed:\n{all}");
        assert!(all.contains("invalid-setting") && all.contains("unknown-strategy"), "{all}");
    }
}

#[test]
fn warnings_alone_exit_0() {
    let config = fixtures().join("configs/44-warnings-only.toml");
    let output = switchboard(&repo_root(), &["validate", "--config", &config.to_string_lossy()], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("warning[unused-provider]"));
}

/// Like `switchboard`, but fails instead of hanging when the command has not exited after 30 s
/// (reading a FIFO as the config once blocked forever).
fn switchboard_or_hang(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|error| panic!("cannot run switchboard: {error}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("switchboard {args:?} hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().unwrap_or_else(|error| panic!("{error}"))
}

fn mkfifo(path: &std::path::Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", path.display());
}

/// Only a regular file of at most 16 MiB is read as the config (a symlink to one is followed):
/// anything else is "could not validate" (exit 2) saying what the path is, without blocking.
#[cfg(unix)]
#[test]
fn only_a_regular_file_of_at_most_16_mib_is_read() {
    let dir = temp_config(VALID);
    let path = |name: &str| dir.path().join(name);
    mkfifo(&path("fifo.toml"));
    let symlink = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, path(name)).unwrap_or_else(|e| panic!("{e}"));
    };
    symlink("/dev/zero", "zero.toml");
    symlink("routes.toml", "link.toml");
    let limit = 16 * 1024 * 1024;
    let large = format!("{}\n{}", VALID, "#".repeat(limit - VALID.len()));
    std::fs::write(path("large.toml"), &large).unwrap_or_else(|e| panic!("{e}"));
    let at_limit = &large[..limit];
    std::fs::write(path("at-limit.toml"), at_limit).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(path("dir.toml")).unwrap_or_else(|e| panic!("{e}"));

    let refused = [
        ("fifo.toml", "cannot read config file fifo.toml: it is a FIFO (named pipe), not a regular file"),
        ("zero.toml", "cannot read config file zero.toml: it is a character device, not a regular file"),
        ("dir.toml", "cannot read config file dir.toml: it is a directory, not a regular file"),
        (
            "large.toml",
            "cannot read config file large.toml: it is 16777217 bytes, over the limit of 16 MiB (16777216 bytes)",
        ),
    ];
    for (name, reason) in refused {
        for command in ["validate", "explain"] {
            let mut args = vec![command, "--config", name];
            if command == "explain" {
                args.extend(["--channel", "sms", "--to", "+15005550006"]);
            }
            let output = switchboard_or_hang(dir.path(), &args, &[]);
            assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
            assert_eq!(stderr(&output), format!("switchboard: {reason}\n"), "{args:?}");
            assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
        }
        let serve = switchboard_or_hang(
            dir.path(),
            &["serve", "--config", name, "--listen", "127.0.0.1:0", "--store", "memory://"],
            &[],
        );
        assert_eq!(serve.status.code(), Some(2), "serve {name}: {}", stderr(&serve));
        assert!(stderr(&serve).contains(reason), "serve {name}: {}", stderr(&serve));
    }
    for name in ["link.toml", "at-limit.toml"] {
        let output = switchboard_or_hang(dir.path(), &["validate", "--config", name], &[]);
        assert_eq!(output.status.code(), Some(0), "{name}: {}{}", stdout(&output), stderr(&output));
    }
}

/// Whether `actual` is `expected` where an expected line `…` stands for any run of lines.
fn matches_with_elision(expected: &[&str], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((line, rest)) if line.trim() == "…" => {
            (0..=actual.len()).any(|skip| matches_with_elision(rest, &actual[skip..]))
        }
        Some((line, rest)) => {
            actual.first().is_some_and(|a| a.trim_end() == line.trim_end())
                && matches_with_elision(rest, &actual[1..])
        }
    }
}

/// The ```console example in `section` of specs/cli.md: the command's arguments and the lines
/// it shows.
fn console_example(section: &str) -> (Vec<String>, Vec<String>) {
    let spec = std::fs::read_to_string(repo_root().join("specs/cli.md")).unwrap_or_default();
    let text = spec.split(section).nth(1).unwrap_or_default();
    let block = text.split("```console\n").nth(1).and_then(|b| b.split("```").next()).unwrap_or_default();
    let mut lines = block.lines();
    let command = lines.next().and_then(|l| l.strip_prefix("$ switchboard ")).unwrap_or_default();
    (command.split_whitespace().map(str::to_owned).collect(), lines.map(str::to_owned).collect())
}

/// The examples of specs/cli.md are what the binary prints.
#[test]
fn cli_spec_examples_match_the_binary() {
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (section, cwd) in
        [("## `switchboard explain`", repo_root()), ("## `switchboard migrate`", scratch.path().to_owned())]
    {
        let (args, expected) = console_example(section);
        assert!(!args.is_empty() && !expected.is_empty(), "{section}: no console example");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = switchboard(&cwd, &args, &[]);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", stderr(&output));
        let got = stdout(&output);
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert!(
            matches_with_elision(&expected, &got.lines().collect::<Vec<_>>()),
            "specs/cli.md {section}: the example\n{}\nis not what `switchboard {}` prints:\n{got}",
            expected.join("\n"),
            args.join(" ")
        );
    }
}

/// specs/routes-toml.md names exactly the kinds built into the binary.
#[test]
fn routes_spec_names_the_built_in_kinds() {
    let spec = std::fs::read_to_string(repo_root().join("specs/routes-toml.md")).unwrap_or_default();
    let names = spec.split("Built in: ").nth(1).and_then(|t| t.split(".\n").next()).unwrap_or_default();
    let mut documented: Vec<&str> = names.split('`').skip(1).step_by(2).collect();
    documented.sort_unstable();
    let catalog = json(&switchboard(&repo_root(), &["providers", "--format", "json"], &[]));
    let registered: Vec<&str> =
        catalog["kinds"].as_array().into_iter().flatten().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(documented, registered, "specs/routes-toml.md: {names}");
}

/// benches/http_load.sh, run without its tools and its kit, says what is missing and how to get
/// it, and stops before building anything.
#[cfg(unix)]
#[test]
fn bench_script_lists_what_it_needs() {
    // A PATH with only what the script uses before its check: no wrk, curl, cargo, ….
    let bin = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for tool in ["dirname", "nproc"] {
        for dir in ["/usr/bin", "/bin"] {
            let path = std::path::Path::new(dir).join(tool);
            if path.exists() {
                let _ = std::os::unix::fs::symlink(&path, bin.path().join(tool));
                break;
            }
        }
    }
    let output = std::process::Command::new("/bin/bash")
        .arg(repo_root().join("benches/http_load.sh"))
        .env_clear()
        .env("PATH", bin.path())
        .env("BENCH_KIT", "/nonexistent/bench")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    for needed in [
        "wrk (not on PATH): apt-get install -y wrk",
        "cargo (not on PATH)",
        "the bench kit at /nonexistent/bench: it is not in this repository",
    ] {
        assert!(err.contains(needed), "{needed} not in:\n{err}");
    }
}

/// The README's quick start: its first two commands stay first, it says how to call
/// `switchboard`, and its send-then-read block reads back the message it sent (the id is taken
/// from the first answer, not written out).
#[test]
fn readme_quick_start_works_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap_or_default();
    let blocks: Vec<&str> = readme.split("```sh\n").skip(1).filter_map(|b| b.split("```").next()).collect();
    let first: Vec<&str> = blocks.first().map(|b| b.lines().collect()).unwrap_or_default();
    assert!(
        first.len() >= 2
            && first[0].starts_with("cargo run --release -- serve ")
            && first[1].starts_with("cargo test --workspace "),
        "{first:?}"
    );
    assert!(readme.contains("cargo install --path .") && readme.contains("./target/release/switchboard"));

    let config = std::fs::read_to_string(repo_root().join("routes.toml")).unwrap_or_default();
    let server = common::Server::start(&config, &["--store", "memory://"], &[]);
    let address = server.base.trim_start_matches("http://");
    let script = blocks.get(1).copied().unwrap_or_default().replace("localhost:8080", address);
    assert!(script.contains("curl"), "{script}");
    let output = std::process::Command::new("sh").args(["-c", &script]).output();
    let output = output.unwrap_or_else(|e| panic!("{e}"));
    let answers: Vec<serde_json::Value> =
        stdout(&output).lines().map(|l| serde_json::from_str(l).unwrap_or_default()).collect();
    assert_eq!(answers.len(), 2, "{}{}", stdout(&output), stderr(&output));
    assert_eq!(answers[0]["status"], "queued", "{}", answers[0]);
    assert!(answers[0]["id"].is_string(), "{}", answers[0]);
    assert_eq!(answers[1]["id"], answers[0]["id"], "{}", answers[1]);
    assert!(answers[1]["status"].is_string(), "{}", answers[1]);
}
