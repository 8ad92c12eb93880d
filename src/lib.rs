//! Switchboard: routes outbound messages to providers chosen from routes.toml.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod accept;
pub mod api_schema;
pub mod auth;
pub mod callbacks;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod health;
pub mod http;
pub mod inbound;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod reload;
pub mod routing;
pub mod serve;
pub mod stats;
pub mod store;

// Keep the built-in provider kinds' registrations linked into everything that uses this crate.
use switchboard_providers as _;
