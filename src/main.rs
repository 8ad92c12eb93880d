//! The `switchboard` binary: see `switchboard --help`.

use std::process::ExitCode;

// Keep the built-in provider kinds' registrations linked in.
use switchboard_providers as _;

fn main() -> ExitCode {
    switchboard::cli::run()
}
