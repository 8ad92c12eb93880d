//! Switchboard's provider plugin API and the built-in provider kinds.
//!
//! A provider *kind* (e.g. `mock`) is one file in this crate that defines its settings struct,
//! implements [`Kind`] and registers itself with `inventory::submit!`. Nothing else lists the
//! kinds: [`registry()`] collects every registration linked into the binary.
//!
//! Binaries and tests that need the built-in kinds must reference this crate (for example
//! `use switchboard_providers as _;`) so the linker keeps the registrations.

mod channel;
mod message;
mod registry;

pub use channel::{Channel, ChannelNameError};
pub use message::{mask_recipient, ErrorClass, OutboundMessage, Receipt, SendError};
pub use registry::{
    find, registry, BuildContext, Kind, Provider, Registration, SettingDoc, SettingIssue, SettingsError,
};

// Built-in kinds: one file each, registered from inside the file.
mod mock;

pub use mock::MockSettings;

#[doc(hidden)]
pub use inventory;
