//! Helpers shared by the end-to-end tests: run the real `switchboard` binary in a clean
//! environment.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// Runs the binary in `dir` with only `PATH` and the given variables set.
pub fn switchboard(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.args(args).current_dir(dir).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    match command.output() {
        Ok(output) => output,
        Err(error) => panic!("cannot run switchboard: {error}"),
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn json(output: &Output) -> serde_json::Value {
    match serde_json::from_slice(&output.stdout) {
        Ok(value) => value,
        Err(error) => panic!("stdout is not JSON ({error}): {}", stdout(output)),
    }
}

/// A `switchboard serve` process on an ephemeral port, killed when dropped.
pub struct Server {
    pub base: String,
    child: std::process::Child,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the binary with `config` as its routes.toml in a fresh temp dir; panics if it
    /// does not come up.
    pub fn start(config: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(error) => panic!("tempdir: {error}"),
        };
        if let Err(error) = std::fs::write(dir.path().join("routes.toml"), config) {
            panic!("write config: {error}");
        }
        Self::spawn(dir, None, args, env)
    }

    /// Starts the binary in `cwd`, which the caller prepared (and keeps).
    pub fn start_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(error) => panic!("tempdir: {error}"),
        };
        Self::spawn(dir, Some(cwd), args, env)
    }

    fn spawn(dir: tempfile::TempDir, cwd: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(cwd.unwrap_or(dir.path()))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => panic!("cannot start switchboard: {error}"),
        };
        let Some(stderr) = child.stderr.take() else { panic!("no stderr") };
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let sink = std::sync::Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on http://".len()..];
                    let address: String =
                        rest.chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
                    let _ = address_tx.send(address);
                }
                if let Ok(mut logs) = sink.lock() {
                    logs.push(line);
                }
            }
        });
        let address = match address_rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                let logs = logs.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!("switchboard did not start:\n{logs}");
            }
        };
        Server { base: format!("http://{address}"), child, logs, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The temp dir the server runs in (holding its routes.toml, unless started with `start_in`).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// SIGKILL: no shutdown, no flush: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the server.
    pub fn signal(&mut self, name: &str) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args([&format!("-{name}"), &pid]).status();
    }

    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the log reader catch the last lines.
                std::thread::sleep(std::time::Duration::from_millis(100));
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
