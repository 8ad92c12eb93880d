//! The `switchboard` binary: see `switchboard --help`.

use std::process::ExitCode;

// Keep the built-in provider kinds' registrations linked in.
use switchboard_providers as _;

// mimalloc keeps the hot path's many small allocations cheap and returns memory to the OS.
// Built without transparent huge pages (`no_thp`): mimalloc would `madvise` its regions for
// them, and every 2 MiB page touched counts whole in the resident set (~10–14 MB more RSS at
// idle and under load; specs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    switchboard::cli::run()
}
