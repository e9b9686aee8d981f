//! Procfile parsing: any text, no panic; what parses keeps its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(p) = cygni::procfile::Procfile::parse(text) {
        for (name, command) in p.processes() {
            assert!(cygni::names::ProcessType::parse(name.as_str()).is_ok());
            assert!(!command.contains('\n'), "{command:?}");
        }
        let _ = p.release_command();
        let _ = p.web_and_workers().count();
    }
});
