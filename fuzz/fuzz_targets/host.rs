//! Host and name normalization: no panic, and normalizing is idempotent
//! (what `domains:add` stores parses to itself).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(h) = cygni::names::Hostname::parse(text) {
        let again = cygni::names::Hostname::parse(h.as_str()).expect("a normalized host parses");
        assert_eq!(again.as_str(), h.as_str());
        assert!(h.as_str().is_ascii(), "{h:?}");
    }
    if let Ok(a) = cygni::names::AppName::parse(text) {
        assert_eq!(a.as_str(), text);
    }
    if let Ok(d) = cygni::config::normalize_domain(text) {
        assert_eq!(
            cygni::config::normalize_domain(&d).as_deref(),
            Ok(d.as_str())
        );
    }
});
