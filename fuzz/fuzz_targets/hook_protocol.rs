//! The hook socket's JSON lines, both directions: no panic, and a decoded
//! request round-trips.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    checks::hook_protocol(line);
});
