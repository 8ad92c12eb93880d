//! Helpers of the end-to-end tests that run the binary on either store and post to providers'
//! own URLs (`two_way`, `delivery`): where a test's server keeps its messages, Twilio's
//! signature and its form bodies. Included by the test files that use it
//! (`#[path = "common/e2e.rs"] mod e2e;`), beside `mod common;` and `mod stores;`.

#![allow(dead_code)]

use hmac::{Hmac, Mac};

use crate::common::{base64, Server};
use crate::stores;

/// Where a test's server keeps its messages.
pub enum Backend {
    Memory,
    Sqlite(tempfile::TempDir),
    Postgres(stores::TestDatabase),
}

impl Backend {
    pub fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")))
    }

    pub fn postgres(name: &str) -> Backend {
        Backend::Postgres(stores::fresh_database(name))
    }

    pub fn url(&self) -> String {
        match self {
            Backend::Memory => "memory://".into(),
            Backend::Sqlite(dir) => format!("sqlite://{}", dir.path().join("sb.db").display()),
            Backend::Postgres(db) => db.url.clone(),
        }
    }

    /// A server on this store with `config` and `env`.
    pub fn start(&self, config: &str, env: &[(&str, &str)]) -> Server {
        self.start_with_args(config, &[], env)
    }

    /// [`Backend::start`] with more command-line arguments after `--store`.
    pub fn start_with_args(&self, config: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        let url = self.url();
        let mut args = vec!["--store", url.as_str()];
        args.extend_from_slice(extra_args);
        Server::start(config, &args, env)
    }
}

/// Twilio's signature: base64 HMAC-SHA1, keyed with the auth token, of the URL followed by every
/// parameter's name and value, sorted by name.
pub fn twilio_signature(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (name, value) in sorted {
        data.push_str(name);
        data.push_str(value);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    mac.update(data.as_bytes());
    base64(&mac.finalize().into_bytes())
}

/// `params` as an `application/x-www-form-urlencoded` body, as Twilio posts it.
pub fn form(params: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    params.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}
