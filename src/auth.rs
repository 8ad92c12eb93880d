//! API keys: who is calling. Keys are configured as SHA-256 hashes with a name
//! (`NAME:SHA256HEX`, or `NAME:SHA256HEX:admin`), from `SWITCHBOARD_API_KEYS` (comma-separated)
//! and/or a file (one per line). A bearer token is hashed and compared with every configured
//! hash in constant time; neither tokens nor hashes are ever logged.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// One configured key. `Debug` leaves the hash out.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Shared with every request it authenticates (no copy per request).
    pub name: Arc<str>,
    hash: [u8; 32],
    pub admin: bool,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("name", &self.name).field("admin", &self.admin).finish_non_exhaustive()
    }
}

/// The configured keys; none configured means authentication is off.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    #[error("{origin}, entry {entry}: {message}")]
    Invalid { origin: String, entry: usize, message: String },
    #[error("cannot read the API keys file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("API key name `{0}` is configured twice")]
    Duplicate(String),
}

impl ApiKeys {
    /// Keys from the `SWITCHBOARD_API_KEYS` value (comma-separated) and the keys file (one
    /// entry per line, `#` comments), together.
    pub fn load(env: Option<&str>, file: Option<&Path>) -> Result<ApiKeys, KeysError> {
        let mut keys = Vec::new();
        if let Some(value) = env {
            keys.extend(parse(value.split(','), "SWITCHBOARD_API_KEYS")?);
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|error| KeysError::Read {
                path: path.display().to_string(),
                reason: error.to_string(),
            })?;
            let lines = text.lines().map(|line| line.split('#').next().unwrap_or_default());
            keys.extend(parse(lines, &path.display().to_string())?);
        }
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|earlier| earlier.name == key.name) {
                return Err(KeysError::Duplicate(key.name.to_string()));
            }
        }
        Ok(ApiKeys { keys })
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &*k.name)
    }

    /// The key whose hash is the token's. Every configured hash is compared, in constant time,
    /// whatever matches: timing tells nothing about which key (or how much of one) matched.
    pub fn authenticate(&self, token: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(&key.hash, &digest) {
                found = Some(key);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

fn parse<'a>(entries: impl Iterator<Item = &'a str>, origin: &str) -> Result<Vec<ApiKey>, KeysError> {
    let mut keys = Vec::new();
    for (i, entry) in entries.enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let invalid =
            |message: String| KeysError::Invalid { origin: origin.to_owned(), entry: i + 1, message };
        let mut parts = entry.split(':');
        let (name, hex, role) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
        if parts.next().is_some() {
            return Err(invalid("expected NAME:SHA256HEX or NAME:SHA256HEX:admin".into()));
        }
        if !is_key_name(name) {
            return Err(invalid(format!("`{name}` is not a key name (1–64 of A–Z a–z 0–9 _ . -)")));
        }
        // The hash is not shown: it is not secret, but an operator may have pasted the key.
        let Some(hash) = hex.and_then(decode_sha256) else {
            return Err(invalid(format!(
                "key `{name}`: expected a SHA-256 hash of 64 hex digits after the name (`switchboard keys new {name}` prints one)"
            )));
        };
        let admin = match role {
            None => false,
            Some("admin") => true,
            Some(other) => {
                return Err(invalid(format!("key `{name}`: unknown role `{other}` (only `admin`)")))
            }
        };
        keys.push(ApiKey { name: Arc::from(name), hash, admin });
    }
    Ok(keys)
}

pub fn is_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The lowercase hex SHA-256 of a key, as configured.
pub fn hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh key: `sb_` and 64 hex digits (256 random bits from the OS).
pub fn new_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("sb_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "sb_test";

    fn check(env: &str, expected: Result<&[(&str, bool)], &str>) {
        let got = ApiKeys::load(Some(env), None);
        match (got, expected) {
            (Ok(keys), Ok(names)) => {
                let got: Vec<(&str, bool)> = keys.keys.iter().map(|k| (&*k.name, k.admin)).collect();
                assert_eq!(got, names, "{env}");
            }
            (Err(error), Err(part)) => assert!(error.to_string().contains(part), "{env}: {error}"),
            (got, expected) => panic!("{env}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn entries() {
        let h = hash_hex(TOKEN);
        check("", Ok(&[]));
        check(&format!("app:{h}"), Ok(&[("app", false)]));
        check(&format!(" app:{h} , ops:{h}:admin ,"), Ok(&[("app", false), ("ops", true)]));
        check(&format!("app:{}", h.to_uppercase()), Ok(&[("app", false)]));
        check("app", Err("expected a SHA-256 hash"));
        check("app:abc", Err("expected a SHA-256 hash"));
        check(&format!("app:{h}:root"), Err("unknown role `root`"));
        check(&format!("app:{h}:admin:x"), Err("expected NAME:SHA256HEX"));
        check(&format!("bad name:{h}"), Err("is not a key name"));
        check(&format!("app:{h},app:{h}"), Err("configured twice"));
        check(&format!("app:{h},x"), Err("SWITCHBOARD_API_KEYS, entry 2"));
    }

    #[test]
    fn authenticates_by_hash() {
        let keys = ApiKeys::load(Some(&format!("a:{},b:{}:admin", hash_hex("ka"), hash_hex("kb"))), None)
            .unwrap_or_default();
        assert_eq!(keys.authenticate("ka").map(|k| &*k.name), Some("a"));
        assert_eq!(keys.authenticate("kb").map(|k| (&*k.name, k.admin)), Some(("b", true)));
        assert!(keys.authenticate("kc").is_none());
        assert!(keys.authenticate("").is_none());
        assert!(!format!("{keys:?}").contains(&hash_hex("ka")));
    }

    #[test]
    fn new_keys_are_random_and_hash_as_configured() {
        let (a, b) = (new_key().unwrap_or_default(), new_key().unwrap_or_default());
        assert!(a.starts_with("sb_") && a.len() == 67 && a != b, "{a} {b}");
        let keys = ApiKeys::load(Some(&format!("k:{}", hash_hex(&a))), None).unwrap_or_default();
        assert!(keys.authenticate(&a).is_some());
    }
}
