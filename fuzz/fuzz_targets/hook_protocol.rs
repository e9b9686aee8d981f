//! The hook socket's JSON lines, both directions: no panic, and a decoded
//! request round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    cygni::hook::fuzz_decode(line);
});
