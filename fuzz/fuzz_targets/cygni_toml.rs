//! `cygni.toml` from a pushed tree: any bytes, no panic.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    checks::cygni_toml(bytes);
});
