//! [`Secret`]: a credential setting that no `Debug`, log line or error message can show.

use std::fmt;

use serde::Deserialize;

/// A credential (token, password, API key). Deserializes from a plain string; `Debug` prints
/// `<redacted>`; the value is reachable only through [`Secret::expose`], at the point of use.
///
/// Kinds list the settings holding one in [`crate::Kind::SECRETS`], so that the config loader
/// insists they come from the environment and redacts them in every view.
#[derive(Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself: pass it straight to the protocol, never to a formatter.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret: Secret = serde_json::from_str(r#""tok-123""#).unwrap_or_else(|_| Secret::new(""));
        assert_eq!(secret.expose(), "tok-123");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(secret)), "Some(<redacted>)");
    }
}
