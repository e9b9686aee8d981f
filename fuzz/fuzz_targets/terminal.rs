//! Terminal escaping: nothing a terminal acts on survives, and a stream
//! cut anywhere escapes like the whole.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &[u8])| {
    checks::terminal(input.0, input.1);
});
