//! The admin command parser (clap) on any exec string: no panic, and a
//! refusal is one line.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|command: &str| {
    checks::ssh_command(command);
});
