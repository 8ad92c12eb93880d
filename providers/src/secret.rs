//! [`Secret`]: a credential setting that no `Debug`, log line or error message can show.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use serde_json::Value;

/// A credential (token, password, API key). Deserializes from a plain string; `Debug` prints
/// `<redacted>`; the value is reachable only through [`Secret::expose`], at the point of use.
///
/// Its JSON schema is a string marked `"writeOnly": true`: a kind's settings holding one are
/// found from the settings' schema ([`crate::Registration::secrets`]), so that the config
/// loader insists they come from the environment and redacts them in every view.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// The schema keyword that marks a credential: set by [`Secret`]'s schema, read by
/// [`is_secret`].
const MARK: &str = "writeOnly";

impl JsonSchema for Secret {
    fn schema_name() -> Cow<'static, str> {
        "Secret".into()
    }

    fn schema_id() -> Cow<'static, str> {
        concat!(module_path!(), "::Secret").into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut schema = json_schema!({ "type": "string" });
        schema.insert(MARK.to_owned(), Value::Bool(true));
        schema
    }
}

/// Whether a setting's schema holds a credential: it, or anything in it (an `Option`'s
/// variants, a list's items, a nested struct, following `$ref` into `defs`), is marked like
/// [`Secret`]'s. Anything holding a credential counts as one: the loader then refuses it in the
/// file as a whole rather than let part of it through.
pub(crate) fn is_secret(schema: &Value, defs: Option<&Value>) -> bool {
    fn walk(schema: &Value, defs: Option<&Value>, seen: &mut Vec<String>) -> bool {
        match schema {
            Value::Object(map) => {
                if map.get(MARK) == Some(&Value::Bool(true)) {
                    return true;
                }
                if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                    let name = reference.rsplit('/').next().unwrap_or_default().to_owned();
                    if !seen.contains(&name) {
                        seen.push(name.clone());
                        if defs.and_then(|d| d.get(&name)).is_some_and(|def| walk(def, defs, seen)) {
                            return true;
                        }
                    }
                }
                // Values given as data (a default, an example) are not schemas; the keys of
                // `properties` are field names, whatever they are called.
                const DATA: [&str; 5] = ["$defs", "default", "examples", "const", "enum"];
                map.iter().any(|(key, value)| match (key.as_str(), value) {
                    ("properties" | "patternProperties", Value::Object(fields)) => {
                        fields.values().any(|field| walk(field, defs, seen))
                    }
                    (key, _) if DATA.contains(&key) => false,
                    _ => walk(value, defs, seen),
                })
            }
            Value::Array(items) => items.iter().any(|item| walk(item, defs, seen)),
            _ => false,
        }
    }
    walk(schema, defs, &mut Vec::new())
}

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
