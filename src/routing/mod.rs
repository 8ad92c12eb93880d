//! Routing at run time: the live snapshot built from a resolved config (a provider instance and
//! its health per provider, a plan per route), the rule index that picks a message's rule, the
//! provider order for each attempt, and `explain`. Config loading (`crate::config`) is the pure
//! step before it: bytes in, a resolved config or diagnostics out; nothing there knows of
//! instances or health.

pub mod explain;
pub mod rules;
mod snapshot;

pub use snapshot::{BuildError, NoRoute, ProviderHandle, Route, Snapshot};
