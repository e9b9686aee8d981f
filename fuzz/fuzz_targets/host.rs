//! Host and name normalization: no panic, and normalizing is idempotent
//! (what `domains:add` stores parses to itself).
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    checks::host(text);
});
