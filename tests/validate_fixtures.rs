//! The catalog of broken configs in tests/fixtures/configs, through the real binary.
//!
//! Each fixture says what it expects in its own comments:
//! - `# expect: CODE LINE:COL` (or `# expect: CODE env:VAR`), one line per diagnostic;
//! - `# env: NAME=VALUE …`, the environment to validate it with.
//!
//! Next to each fixture, `NAME.stdout` is the golden human-format output. Run with `BLESS=1` to
//! rewrite the golden files after a deliberate change of wording (refused under `CI=true`).

mod common;

use std::path::Path;

use common::{fixtures, json, stdout, switchboard};

struct Fixture {
    name: String,
    env: Vec<(String, String)>,
    expected: Vec<String>,
}

fn read_fixture(path: &Path) -> Fixture {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let mut fixture = Fixture {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        env: Vec::new(),
        expected: Vec::new(),
    };
    for line in text.lines() {
        if let Some(expect) = line.strip_prefix("# expect: ") {
            fixture.expected.push(expect.trim().to_owned());
        } else if let Some(vars) = line.strip_prefix("# env: ") {
            for pair in vars.split_whitespace() {
                if let Some((k, v)) = pair.split_once('=') {
                    fixture.env.push((k.to_owned(), v.to_owned()));
                }
            }
        }
    }
    fixture
}

/// What the binary reported, as `CODE LINE:COL` / `CODE env:VAR` lines, and its exit code.
fn check(fixture: &Fixture, dir: &Path) -> Result<(), String> {
    let env: Vec<(&str, &str)> = fixture.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let output = switchboard(dir, &["validate", "--config", &fixture.name, "--format", "json"], &env);
    let report = json(&output);
    let mut actual: Vec<String> = report["diagnostics"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .map(|d| match (d["line"].as_u64(), d["column"].as_u64()) {
                    (Some(line), Some(column)) => {
                        format!("{} {line}:{column}", d["code"].as_str().unwrap_or("?"))
                    }
                    _ => format!(
                        "{} env:{}",
                        d["code"].as_str().unwrap_or("?"),
                        d["env"].as_str().unwrap_or("?")
                    ),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut expected = fixture.expected.clone();
    actual.sort();
    expected.sort();
    if actual != expected {
        return Err(format!("{}: expected {expected:?}, got {actual:?}", fixture.name));
    }
    let any_error = report["errors"].as_u64().unwrap_or(0) > 0;
    let exit = output.status.code();
    if exit != Some(if any_error { 1 } else { 0 }) {
        return Err(format!("{}: exit code {exit:?} with errors={any_error}", fixture.name));
    }
    if report["valid"].as_bool() != Some(!any_error) {
        return Err(format!("{}: `valid` disagrees with `errors`", fixture.name));
    }

    let human = stdout(&switchboard(dir, &["validate", "--config", &fixture.name], &env));
    let golden_path = dir.join(format!("{}.stdout", fixture.name.trim_end_matches(".toml")));
    if common::bless() {
        std::fs::write(&golden_path, &human).map_err(|e| e.to_string())?;
    }
    let golden = std::fs::read_to_string(&golden_path).unwrap_or_default();
    if human != golden {
        return Err(format!(
            "{}: human output differs from {}:\n{human}",
            fixture.name,
            golden_path.display()
        ));
    }
    Ok(())
}

#[test]
fn every_broken_config_reports_code_line_and_column() {
    let dir = fixtures().join("configs");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    paths.sort();
    assert!(paths.len() >= 30, "the catalog must hold at least 30 configs, found {}", paths.len());

    let failures: Vec<String> = paths
        .iter()
        .map(|p| read_fixture(p))
        .inspect(|f| assert!(!f.expected.is_empty(), "{} has no `# expect:` line", f.name))
        .filter_map(|f| check(&f, &dir).err())
        .collect();
    assert!(failures.is_empty(), "{} fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn bless_is_refused_under_ci() {
    common::assert_bless_refused_under_ci("every_broken_config_reports_code_line_and_column");
}
