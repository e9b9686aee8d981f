//! What each fuzz target checks, in one place: `cargo fuzz` runs them with
//! coverage guidance (`fuzz_targets/`), and `tests/fuzz_smoke.rs` runs them
//! in every `cargo test` on a bounded stream of mutated inputs. Each must
//! not panic on any input, and states a property of what it accepts.

#![allow(dead_code)] // each fuzz target uses one check

use cygni::ssh::terminal::{escape, Cr, Escaper};

/// The exec string as the SSH side splits it: words (no shell), then the
/// git repository argument. A repo name that parses is an app name, safe
/// as a path segment.
pub fn command_line(command: &str) {
    let Ok(words) = shell_words::split(command) else {
        return;
    };
    for w in &words {
        if let Ok(app) = cygni::ssh::git::parse_repo_arg(w) {
            let name = app.as_str();
            assert!(!name.contains('/') && !name.contains("..") && !name.starts_with('-'));
        }
    }
}

/// The admin command parser (clap) on the same words: a refusal is one
/// line.
pub fn ssh_command(command: &str) {
    let Ok(words) = shell_words::split(command) else {
        return;
    };
    let mut argv = vec!["cygni".to_owned()];
    argv.extend(words);
    cygni::ssh::commands::fuzz_parse(&argv);
}

/// `cygni.toml`: what parses gives a usable check; a refusal is one line
/// that names the file.
pub fn cygni_toml(bytes: &[u8]) {
    match cygni::deploy::manifest::Manifest::parse(bytes) {
        Ok(m) => {
            let check = m.health_check(std::time::Duration::from_secs(60));
            assert!((1..=3600).contains(&check.timeout_secs), "{check:?}");
            if let Some(path) = &check.path {
                assert!(path.starts_with('/') && path.is_ascii(), "{path:?}");
            }
        }
        Err(e) => {
            assert!(e.starts_with("cygni.toml"), "{e:?}");
            assert!(!e.contains('\n'), "{e:?}");
        }
    }
}

/// Both hook protocol decoders on one line.
pub fn hook_protocol(line: &str) {
    cygni::hook::fuzz_decode(line);
}

/// Host normalization is idempotent and ASCII; app names are exact.
pub fn host(text: &str) {
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
}

/// A Procfile that parses has valid process types and one-line commands.
pub fn procfile(text: &str) {
    if let Ok(p) = cygni::procfile::Procfile::parse(text) {
        for (name, command) in p.processes() {
            assert!(cygni::names::ProcessType::parse(name.as_str()).is_ok());
            assert!(!command.contains('\n'), "{command:?}");
        }
        let _ = p.release_command();
        let _ = p.web_and_workers().count();
    }
}

/// Terminal escaping: nothing a terminal acts on survives, and a stream
/// cut anywhere escapes like the whole.
pub fn terminal(cut: u8, bytes: &[u8]) {
    for cr in [Cr::Keep, Cr::OnlyInCrLf] {
        let whole = escape(bytes, cr).into_owned();
        let text = std::str::from_utf8(&whole).expect("escaped output is UTF-8");
        for c in text.chars() {
            let control = c.is_control() && !matches!(c, '\n' | '\t' | '\r');
            assert!(!control, "{c:?} survived in {text:?}");
        }
        if cr == Cr::OnlyInCrLf {
            assert!(
                !text.replace("\r\n", "").contains('\r'),
                "lone CR in {text:?}"
            );
        }
        let at = (cut as usize).min(bytes.len());
        let mut e = Escaper::new(cr);
        let mut streamed = e.push(&bytes[..at]);
        streamed.extend(e.push(&bytes[at..]));
        streamed.extend(e.finish());
        assert_eq!(streamed, whole);
    }
}
