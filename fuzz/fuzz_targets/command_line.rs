//! The exec string as the SSH side splits it: words (no shell), then the
//! git repository argument. No panic; a repo name that parses is an app
//! name, safe as a path segment.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|command: &str| {
    checks::command_line(command);
});
