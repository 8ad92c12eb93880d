//! Channel names: `sms`, `mms` and `email` built in, any other valid name for plugins.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A message channel. Built-in channels cost nothing to clone; plugin channels share one `Arc`.
///
/// Equality and hashing go by name, so a `HashMap<Channel, _>` can be looked up with a `&str`.
#[derive(Clone)]
pub struct Channel(Repr);

#[derive(Clone)]
enum Repr {
    Sms,
    Mms,
    Email,
    Other(Arc<str>),
}

/// Why a string is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid channel name: use lowercase letters, digits and `_`, starting with a letter")]
pub struct ChannelNameError(pub String);

impl Channel {
    pub const SMS: Channel = Channel(Repr::Sms);
    pub const MMS: Channel = Channel(Repr::Mms);
    pub const EMAIL: Channel = Channel(Repr::Email);

    /// The channels every Switchboard build knows, whatever kinds are linked in.
    pub const BUILT_IN: [Channel; 3] = [Channel::SMS, Channel::MMS, Channel::EMAIL];
    pub const BUILT_IN_NAMES: [&'static str; 3] = ["sms", "mms", "email"];

    /// A channel from its name: `[a-z][a-z0-9_]*`, at most 32 characters.
    pub fn new(name: &str) -> Result<Channel, ChannelNameError> {
        match name {
            "sms" => Ok(Channel::SMS),
            "mms" => Ok(Channel::MMS),
            "email" => Ok(Channel::EMAIL),
            _ if is_valid_name(name) => Ok(Channel(Repr::Other(Arc::from(name)))),
            _ => Err(ChannelNameError(name.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Sms => "sms",
            Repr::Mms => "mms",
            Repr::Email => "email",
            Repr::Other(name) => name,
        }
    }

    pub fn is_built_in(&self) -> bool {
        !matches!(self.0, Repr::Other(_))
    }
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PartialEq for Channel {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Channel {}

impl Hash for Channel {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialOrd for Channel {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Channel {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({})", self.as_str())
    }
}

impl serde::Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn check(name: &str, valid: bool) {
        assert_eq!(Channel::new(name).is_ok(), valid, "{name:?}");
    }

    #[test]
    fn names() {
        check("sms", true);
        check("push", true);
        check("web_push2", true);
        check("", false);
        check("Push", false);
        check("2fa", false);
        check("push-web", false);
        check(&"a".repeat(33), false);
    }

    #[test]
    fn built_ins_are_recognised_by_name() -> Result<(), ChannelNameError> {
        assert!(Channel::new("email")?.is_built_in());
        assert!(!Channel::new("push")?.is_built_in());
        let mut map = HashMap::new();
        map.insert(Channel::new("push")?, 1);
        map.insert(Channel::SMS, 2);
        assert_eq!(map.get("push"), Some(&1));
        assert_eq!(map.get("sms"), Some(&2));
        Ok(())
    }
}
