//! The `switchboard` binary: see `switchboard --help`.

use std::process::ExitCode;

// Keep the built-in provider kinds' registrations linked in.
use switchboard_providers as _;

// mimalloc keeps the hot path's many small allocations cheap and returns memory to the OS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    switchboard::cli::run()
}
