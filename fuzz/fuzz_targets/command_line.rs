//! The exec string as the SSH side splits it: words (no shell), then the
//! git repository argument. No panic; a repo name that parses is an app
//! name, safe as a path segment.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|command: &str| {
    let Ok(words) = shell_words::split(command) else {
        return;
    };
    for w in &words {
        if let Ok(app) = cygni::ssh::git::parse_repo_arg(w) {
            let name = app.as_str();
            assert!(!name.contains('/') && !name.contains("..") && !name.starts_with('-'));
        }
    }
});
