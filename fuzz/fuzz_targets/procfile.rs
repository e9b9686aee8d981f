//! Procfile parsing: any text, no panic; what parses keeps its invariants.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    checks::procfile(text);
});
