//! Hot reload end to end: the real binary, its config in a temp dir, edits of every style.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{client, send_sms, wait_final, Server};
use serde_json::{json, Value};
use switchboard::config::content_version;

fn get_json(server: &Server, path: &str) -> Value {
    client().get(server.url(path)).send().and_then(|r| r.json()).unwrap_or(Value::Null)
}

fn metrics(server: &Server) -> String {
    client().get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default()
}

/// Sends an sms and returns the provider that finally handled it.
fn provider_of_new_sms(server: &Server) -> String {
    let Some(id) = send_sms(server, 0) else { panic!("not accepted:\n{}", server.logs()) };
    wait_final(server, &id)["attempts"][0]["provider"].as_str().unwrap_or_default().to_owned()
}

/// Waits until the active version is `version` (the deadline only guards against a hang).
fn wait_version(server: &Server, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(server, "/admin/routes")["version"] != version {
        assert!(Instant::now() < deadline, "version {version} never became active:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for<F: Fn() -> bool>(what: &str, server: &Server, check: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what} never happened:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn routes_to(sms_provider: &str) -> String {
    format!(
        "[providers.a]\nkind = \"mock\"\nseed = 1\n[providers.b]\nkind = \"mock\"\nseed = 2\n\
         [routes.sms]\nproviders = [\"{sms_provider}\"]\n[routes.mms]\nproviders = [\"a\", \"b\"]\n[routes.email]\nproviders = [\"a\", \"b\"]\n"
    )
}

fn config_path(server: &Server) -> std::path::PathBuf {
    server.dir().join("routes.toml")
}

#[test]
fn an_edit_reroutes_new_messages_and_a_bad_edit_keeps_the_last_good_config() {
    let server = Server::start(&routes_to("a"), &[], &[]);
    assert_eq!(provider_of_new_sms(&server), "a");
    let path = config_path(&server);

    std::fs::write(&path, routes_to("b")).unwrap_or_default();
    wait_version(&server, &content_version(routes_to("b").as_bytes()));
    assert_eq!(provider_of_new_sms(&server), "b");
    assert!(metrics(&server).contains("switchboard_config_reloads_total{result=\"applied\"} 1"));
    assert!(server.logs().contains("routes changed: sms"), "{}", server.logs());

    // A typo: rejected with its position, and b keeps serving.
    let broken = routes_to("a").replace("[\"a\"]", "[\"aa\"]");
    std::fs::write(&path, &broken).unwrap_or_default();
    wait_for("the rejection", &server, || !get_json(&server, "/admin/routes")["last_rejected"].is_null());
    let rejected = &get_json(&server, "/admin/routes")["last_rejected"];
    assert_eq!(rejected["version"], content_version(broken.as_bytes()));
    let error = rejected["diagnostics"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["severity"] == "error"))
        .cloned();
    let error = error.unwrap_or(Value::Null);
    assert_eq!(
        (error["code"].as_str(), error["line"].as_u64(), error["column"].as_u64()),
        (Some("unknown-provider"), Some(8), Some(14))
    );
    assert_eq!(provider_of_new_sms(&server), "b");
    assert!(metrics(&server).contains("switchboard_config_reloads_total{result=\"rejected\"} 1"));
    assert!(server.logs().contains("error[unknown-provider]"), "{}", server.logs());

    // Fixed: picked up normally.
    std::fs::write(&path, routes_to("a")).unwrap_or_default();
    wait_version(&server, &content_version(routes_to("a").as_bytes()));
    assert_eq!(provider_of_new_sms(&server), "a");
    let info = metrics(&server);
    assert!(
        info.contains(&format!(
            "switchboard_config_info{{version=\"{}\"}} 1",
            content_version(routes_to("a").as_bytes())
        )),
        "{info}"
    );
    assert_eq!(info.matches("switchboard_config_info{").count(), 1, "{info}");
}

/// Replaces the file the way `mv tmp routes.toml` (and `sed -i`) do.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap_or_default();
    std::fs::rename(&tmp, path).unwrap_or_default();
}

#[test]
fn every_style_of_save_is_picked_up() {
    let server = Server::start(&routes_to("a"), &[], &[]);
    let path = config_path(&server);

    rename_over(&path, &routes_to("b"));
    wait_version(&server, &content_version(routes_to("b").as_bytes()));

    let status = std::process::Command::new("sed").args(["-i", "s/\\[\"b\"\\]/[\"a\"]/"]).arg(&path).status();
    assert!(status.is_ok_and(|s| s.success()));
    wait_version(&server, &content_version(routes_to("a").as_bytes()));

    // In place: truncate and write the same file.
    let in_place = routes_to("b").replace("seed = 2", "seed = 3");
    std::fs::write(&path, &in_place).unwrap_or_default();
    wait_version(&server, &content_version(in_place.as_bytes()));
}

#[test]
fn a_symlink_swap_of_a_mounted_config_directory_is_picked_up() {
    // The Kubernetes ConfigMap layout: routes.toml -> ..data/routes.toml, ..data -> v1.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path();
    let write_version = |name: &str, text: &str| {
        std::fs::create_dir_all(root.join(name)).unwrap_or_default();
        std::fs::write(root.join(name).join("routes.toml"), text).unwrap_or_default();
    };
    write_version("v1", &routes_to("a"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        symlink("v1", root.join("..data")).unwrap_or_default();
        symlink("..data/routes.toml", root.join("routes.toml")).unwrap_or_default();
        let config = root.join("routes.toml");
        let server = Server::start_in(root, &["--config", &config.to_string_lossy()], &[]);
        assert_eq!(provider_of_new_sms(&server), "a");
        write_version("v2", &routes_to("b"));
        symlink("v2", root.join("..data_tmp")).unwrap_or_default();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap_or_default();
        wait_version(&server, &content_version(routes_to("b").as_bytes()));
        assert_eq!(provider_of_new_sms(&server), "b");
    }
}

#[test]
fn a_deleted_file_keeps_the_last_good_config_until_it_returns() {
    let server = Server::start(&routes_to("a"), &[], &[]);
    let path = config_path(&server);
    let version = content_version(routes_to("a").as_bytes());
    std::fs::remove_file(&path).unwrap_or_default();
    wait_for("the rejection", &server, || {
        get_json(&server, "/admin/routes")["last_rejected"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not found"))
    });
    assert_eq!(get_json(&server, "/admin/routes")["version"], version);
    assert_eq!(provider_of_new_sms(&server), "a");
    std::fs::write(&path, routes_to("b")).unwrap_or_default();
    wait_version(&server, &content_version(routes_to("b").as_bytes()));
}

/// A config replaced by a FIFO (or a device) is rejected at once, whatever triggers the reload,
/// and the service keeps serving and still stops on SIGTERM: reading it once blocked the
/// reload, `/admin/reload` and shutdown forever.
#[cfg(unix)]
#[test]
fn a_config_replaced_by_a_fifo_is_rejected_and_the_service_still_stops() {
    let mut server = Server::start(&routes_to("a"), &[], &[]);
    let path = config_path(&server);
    let fifo = path.with_extension("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()));
    std::fs::rename(&fifo, &path).unwrap_or_else(|e| panic!("{e}"));
    let reason = "it is a FIFO (named pipe), not a regular file";
    wait_for("the rejection", &server, || {
        get_json(&server, "/admin/routes")["last_rejected"]["error"]
            .as_str()
            .is_some_and(|e| e.contains(reason))
    });
    assert_eq!(provider_of_new_sms(&server), "a");

    let answer = client().post(server.url("/admin/reload")).send();
    let (status, body) = match answer {
        Ok(r) => (r.status().as_u16(), r.json::<Value>().unwrap_or(Value::Null)),
        Err(error) => panic!("{error}"),
    };
    assert_eq!(status, 422, "{body}");
    assert!(body["rejected"]["error"].as_str().is_some_and(|e| e.contains(reason)), "{body}");
    assert_eq!(body["rejected"]["active_version"], content_version(routes_to("a").as_bytes()));
    let rejected = metrics(&server)
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_config_reloads_total{result=\"rejected\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(rejected.is_some_and(|n| n >= 2), "{rejected:?}");
    assert!(server.logs().contains(reason), "{}", server.logs());

    assert_eq!(server.terminate(), Some(0), "{}", server.logs());
}

/// The fix `validate` suggests (did-you-mean) is in the reload's log line and in
/// `/admin/routes`' last rejection.
#[test]
fn a_rejected_reload_shows_the_suggested_fix() {
    let server =
        Server::start(&routes_to("a"), &["--reload-debounce", "60s", "--reload-poll-interval", "1h"], &[]);
    std::fs::write(config_path(&server), routes_to("a").replace("\"mock\"", "\"mokc\"")).unwrap_or_default();
    let answer = client().post(server.url("/admin/reload")).send().and_then(|r| r.json::<Value>());
    let body = answer.unwrap_or(Value::Null);
    assert_eq!(body["result"], "rejected", "{body}");
    let help = "did you mean `mock`?";
    let diagnostics = get_json(&server, "/admin/routes")["last_rejected"]["diagnostics"].clone();
    assert!(diagnostics.as_array().is_some_and(|ds| ds.iter().all(|d| d["help"] == help)), "{diagnostics}");
    wait_for("the log line", &server, || {
        server
            .logs()
            .lines()
            .any(|l| l.contains("error[unknown-kind]") && l.contains(&format!("help: {help}")))
    });
}

#[test]
fn sighup_and_admin_reload_apply_at_once() {
    // A long debounce keeps the watcher out of the way: only the explicit triggers act.
    let mut server =
        Server::start(&routes_to("a"), &["--reload-debounce", "60s", "--reload-poll-interval", "1h"], &[]);
    let path = config_path(&server);

    std::fs::write(&path, routes_to("b")).unwrap_or_default();
    server.signal("HUP");
    wait_version(&server, &content_version(routes_to("b").as_bytes()));
    assert!(server.logs().contains("SIGHUP received"));

    std::fs::write(&path, routes_to("a")).unwrap_or_default();
    let answer = client().post(server.url("/admin/reload")).send();
    let (status, body) = match answer {
        Ok(r) => (r.status().as_u16(), r.json::<Value>().unwrap_or(Value::Null)),
        Err(error) => panic!("{error}"),
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "applied");
    assert_eq!(body["version"], content_version(routes_to("a").as_bytes()));
    assert_eq!(body["changes"]["routes_changed"], json!(["sms"]));

    let again = client()
        .post(server.url("/admin/reload"))
        .send()
        .and_then(|r| r.json::<Value>())
        .unwrap_or(Value::Null);
    assert_eq!(again["result"], "unchanged");

    std::fs::write(&path, "[providers.a]\nkind = \"mokc\"\n").unwrap_or_default();
    let rejected = client().post(server.url("/admin/reload")).send();
    let (status, body) = match rejected {
        Ok(r) => (r.status().as_u16(), r.json::<Value>().unwrap_or(Value::Null)),
        Err(error) => panic!("{error}"),
    };
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["result"], "rejected");
    let error = body["rejected"]["diagnostics"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["severity"] == "error"))
        .cloned();
    let error = error.unwrap_or(Value::Null);
    assert_eq!((error["code"].as_str(), error["line"].as_u64()), (Some("unknown-kind"), Some(2)));
    assert_eq!(get_json(&server, "/admin/routes")["version"], content_version(routes_to("a").as_bytes()));
}

fn breaker_of(server: &Server, provider: &str) -> Value {
    let admin = get_json(server, "/admin/routes");
    admin["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == provider))
        .map_or(Value::Null, |p| p["breaker"].clone())
}

#[test]
fn a_breaker_survives_edits_of_other_providers_and_resets_when_its_own_settings_change() {
    let config = |mail_seed: u32, flaky_timeout: u32| {
        format!(
            "[providers.flaky]\nkind = \"mock\"\nchannels = [\"sms\"]\nerror_pct = 100\ntimeout_ms = {flaky_timeout}\nbreaker.failure_threshold = 1\nbreaker.open_ms = 600000\n\
             [providers.mail]\nkind = \"mock\"\nseed = {mail_seed}\n\
             [routes.sms]\nproviders = [\"flaky\"]\nmax_attempts = 1\n[routes.mms]\nproviders = [\"mail\"]\n[routes.email]\nproviders = [\"mail\"]\n"
        )
    };
    let server = Server::start(&config(1, 1000), &[], &[]);
    let path = config_path(&server);
    assert_eq!(provider_of_new_sms(&server), "flaky");
    assert_eq!(breaker_of(&server, "flaky"), "open");

    std::fs::write(&path, config(2, 1000)).unwrap_or_default();
    wait_version(&server, &content_version(config(2, 1000).as_bytes()));
    assert_eq!(breaker_of(&server, "flaky"), "open", "an edit of `mail` reset `flaky`");
    assert!(server.logs().contains("changed: mail"), "{}", server.logs());

    std::fs::write(&path, config(2, 2000)).unwrap_or_default();
    wait_version(&server, &content_version(config(2, 2000).as_bytes()));
    assert_eq!(breaker_of(&server, "flaky"), "closed", "new settings start fresh");
}

#[test]
fn a_replaced_config_directory_is_watched_again() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap_or_default();
    std::fs::write(conf.join("routes.toml"), routes_to("a")).unwrap_or_default();
    let server = Server::start_in(
        dir.path(),
        &["--config", "conf/routes.toml", "--reload-poll-interval", "200ms"],
        &[],
    );
    // The whole directory is swapped for a new one.
    std::fs::rename(&conf, dir.path().join("conf.old")).unwrap_or_default();
    std::fs::create_dir_all(&conf).unwrap_or_default();
    std::fs::write(conf.join("routes.toml"), routes_to("b")).unwrap_or_default();
    wait_version(&server, &content_version(routes_to("b").as_bytes()));
    // And the new directory's own events are seen.
    std::fs::write(conf.join("routes.toml"), routes_to("a")).unwrap_or_default();
    wait_version(&server, &content_version(routes_to("a").as_bytes()));
    assert!(server.logs().contains("config directory replaced"), "{}", server.logs());
}

/// The ordered outcomes of `count` sms through provider `dice` (a seeded 50 % error rate).
fn outcomes(server: &Server, count: u32) -> Vec<String> {
    (0..count)
        .map(|n| {
            let Some(id) = send_sms(server, n) else { panic!("not accepted:\n{}", server.logs()) };
            wait_final(server, &id)["status"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

#[test]
fn an_unchanged_provider_keeps_its_mock_stream_across_a_reload() {
    let config = |other_seed: u32| {
        format!(
            "[providers.dice]\nkind = \"mock\"\nseed = 99\nerror_pct = 50\n[providers.other]\nkind = \"mock\"\nseed = {other_seed}\n\
             [routes.sms]\nproviders = [\"dice\"]\nmax_attempts = 1\n[routes.mms]\nproviders = [\"other\"]\n[routes.email]\nproviders = [\"other\"]\n"
        )
    };
    let reference = outcomes(&Server::start(&config(1), &[], &[]), 8);
    assert!(
        reference.contains(&"sent".to_owned()) && reference.contains(&"failed".to_owned()),
        "{reference:?}"
    );

    let server = Server::start(&config(1), &[], &[]);
    let mut seen = outcomes(&server, 4);
    std::fs::write(config_path(&server), config(2)).unwrap_or_default();
    wait_version(&server, &content_version(config(2).as_bytes()));
    seen.extend(outcomes(&server, 4));
    assert_eq!(seen, reference, "the reload restarted dice's stream");
}
