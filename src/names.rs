//! Validated names: the edge where user input becomes a type.
//!
//! Every string that ends up in a path, a process argument, a hostname, a
//! Docker name or a Kubernetes name passes through one of these parsers
//! first. After the edge, no code re-checks or re-sanitizes.

use std::fmt;

/// Why a name was refused. The message is shown to users as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error(
        "invalid app name {0:?}: use 1-63 characters a-z, 0-9 and '-', starting with a letter"
    )]
    App(String),
    #[error("invalid process type {0:?}: use 1-30 characters a-z, 0-9, '_' and '-', starting with a letter")]
    Process(String),
    #[error("invalid key name {0:?}: use 1-64 characters A-Z, a-z, 0-9, '.', '_', '@' and '-'")]
    Key(String),
}

/// An app name: `^[a-z][a-z0-9-]{0,62}$`.
///
/// One grammar, DESIGN.md's, safe at once as a path segment, a hostname
/// label, a Docker name and a Kubernetes name: lowercase ASCII only, so no
/// '.', '/', whitespace, shell metacharacters or look-alike Unicode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct AppName(String);

impl AppName {
    pub fn parse(s: &str) -> Result<AppName, InvalidName> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok {
            Ok(AppName(s.to_owned()))
        } else {
            Err(InvalidName::App(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for AppName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AppName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A Procfile process type: `^[a-z][a-z0-9_-]{0,29}$` (`web`, `worker`, `release`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ProcessType(String);

impl ProcessType {
    pub fn parse(s: &str) -> Result<ProcessType, InvalidName> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 30
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_');
        if ok {
            Ok(ProcessType(s.to_owned()))
        } else {
            Err(InvalidName::Process(s.to_owned()))
        }
    }

    pub fn web() -> ProcessType {
        ProcessType("web".into())
    }

    pub fn is_web(&self) -> bool {
        self.0 == "web"
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProcessType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ProcessType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ProcessType::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The name an operator gives an SSH key: `^[A-Za-z0-9._@-]{1,64}$`, not starting with '-'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct KeyName(String);

impl KeyName {
    pub fn parse(s: &str) -> Result<KeyName, InvalidName> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && b[0] != b'-'
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'@' | b'-'));
        if ok {
            Ok(KeyName(s.to_owned()))
        } else {
            Err(InvalidName::Key(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_accepted() {
        for ok in ["a", "myapp", "my-app-2", "a0", &"a".repeat(63)] {
            assert_eq!(AppName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn app_names_refused() {
        let long = "a".repeat(64);
        let refused = [
            "",
            "..",
            ".",
            "-h",
            "--help",
            "a;b",
            "a b",
            "App",
            "1app",
            "a/b",
            "../x",
            "a.git",
            "a_b",
            "ａｐｐ",     // fullwidth letters
            "a\u{200b}b", // zero-width space
            "é",
            &long,
            "a\n",
            "a\0",
        ];
        for bad in refused {
            let err = AppName::parse(bad).unwrap_err();
            assert!(err.to_string().starts_with("invalid app name"), "{bad:?}");
        }
    }

    #[test]
    fn process_types() {
        assert!(ProcessType::parse("web").unwrap().is_web());
        assert!(ProcessType::parse("worker_2").is_ok());
        for bad in ["", "Web", "1x", "a b", "a;b", &"w".repeat(31)] {
            assert!(ProcessType::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_names() {
        assert!(KeyName::parse("alice@laptop").is_ok());
        for bad in ["", "-rf", "a b", "a/b", "a;b"] {
            assert!(KeyName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
