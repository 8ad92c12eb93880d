//! The merged config as a tree whose every value and key remembers where it came from: a span
//! of the file or the environment variable that overrode it.

use super::diagnostic::Origin;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
    /// Some of the value came from a `${VAR}` reference: never show it.
    pub secret: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Node>),
    Table(Table),
}

/// Entries sorted by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_origin: Origin,
    pub node: Node,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.binary_search_by(|entry| entry.key.as_str().cmp(key)).ok().map(|i| &self.entries[i])
    }
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&Table> {
        match &self.value {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The value quoted for a message, or a placeholder when it came from a secret.
    pub fn shown(&self) -> String {
        if self.secret {
            return "(value from an environment variable, not shown)".to_owned();
        }
        match &self.value {
            Value::Str(s) => format!("{s:?}"),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(_) => "an array".to_owned(),
            Value::Table(_) => "a table".to_owned(),
        }
    }

    /// The value as JSON, for a provider kind's settings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Str(s) => J::String(s.clone()),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Bool(b) => J::Bool(*b),
            Value::Array(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Table(table) => {
                J::Object(table.entries.iter().map(|e| (e.key.clone(), e.node.to_json())).collect())
            }
        }
    }
}
