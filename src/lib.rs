//! Switchboard: routes outbound messages to providers chosen from routes.toml.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod cli;
pub mod config;

// Keep the built-in provider kinds' registrations linked into everything that uses this crate.
use switchboard_providers as _;
