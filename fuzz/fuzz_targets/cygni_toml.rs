//! `cygni.toml` from a pushed tree: any bytes, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(m) = cygni::deploy::manifest::Manifest::parse(bytes) {
        let _ = m.health_check();
        let _ = m.boot_timeout(std::time::Duration::from_secs(60));
    }
});
