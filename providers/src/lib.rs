//! Switchboard's provider plugin API and the built-in provider kinds.
//!
//! A provider *kind* (e.g. `mock`) is one file in this crate that defines its settings struct,
//! implements [`Kind`] and registers itself with `inventory::submit!`. Nothing else lists the
//! kinds: [`registry()`] collects every registration linked into the binary.
//!
//! Binaries and tests that need the built-in kinds must reference this crate (for example
//! `use switchboard_providers as _;`) so the linker keeps the registrations.

pub mod address;
mod channel;
mod email;
pub mod http;
pub mod inbound;
mod message;
pub mod receipt;
mod registry;
pub mod scrub;
mod secret;
#[cfg(test)]
mod test_support;

pub use channel::{Channel, ChannelNameError};
pub use message::{mask_recipient, ErrorClass, OutboundMessage, Receipt, SendError};
pub use registry::{
    find, registry, BuildContext, Kind, Provider, Registration, SettingDoc, SettingIssue, SettingsError,
};
pub use scrub::SentCredentials;
pub use secret::Secret;

// Built-in kinds: one file each, registered from inside the file.
mod mock;
mod sendgrid;
mod smtp;
mod twilio;
mod webhook;

pub use mock::MockSettings;
pub use sendgrid::SendgridSettings;
pub use smtp::{SmtpSettings, TlsMode};
pub use twilio::TwilioSettings;
pub use webhook::{signature as webhook_signature, WebhookSettings};

#[doc(hidden)]
pub use inventory;
