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
    #[error("invalid domain {0:?}: {1}")]
    Host(String, &'static str),
    #[error(
        "invalid storage name {0:?}: use 1-63 characters a-z, 0-9 and '-', starting with a letter"
    )]
    Storage(String),
    #[error("invalid mount path {0:?}: {1}")]
    MountPath(String, &'static str),
    #[error("invalid preview name {0:?}: {1}")]
    Preview(String, String),
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

impl std::str::FromStr for AppName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<AppName, InvalidName> {
        AppName::parse(s)
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

/// The separator in a preview's app name, `NAME--APP`. Reserved: no app
/// created by a user (or a first push) has it in its name, so a preview's
/// name can never be taken by, or mistaken for, another app.
pub const PREVIEW_SEPARATOR: &str = "--";

impl AppName {
    /// Does the name hold the reserved preview separator `--`?
    pub fn is_composite(&self) -> bool {
        self.0.contains(PREVIEW_SEPARATOR)
    }
}

/// A preview's name: what its branch has after the pattern's prefix
/// (`x` for `preview/x`). The app-name grammar, without `--` and without
/// a trailing `-` (which would make `NAME--APP` ambiguous).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct PreviewName(String);

impl PreviewName {
    pub fn parse(s: &str) -> Result<PreviewName, InvalidName> {
        let grammar = "use a-z, 0-9 and '-', starting with a letter (the branch's last part becomes a host name)";
        if AppName::parse(s).is_err() {
            return Err(InvalidName::Preview(s.to_owned(), grammar.to_owned()));
        }
        if s.contains(PREVIEW_SEPARATOR) || s.ends_with('-') {
            return Err(InvalidName::Preview(
                s.to_owned(),
                "no '--' and no '-' at the end".to_owned(),
            ));
        }
        Ok(PreviewName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The preview's own app name, `NAME--APP`; refused when it is longer
    /// than an app name may be.
    pub fn app_name(&self, parent: &AppName) -> Result<AppName, InvalidName> {
        let full = format!("{}{PREVIEW_SEPARATOR}{parent}", self.0);
        AppName::parse(&full).map_err(|_| {
            InvalidName::Preview(
                self.0.clone(),
                format!(
                    "{full} would be {} characters, longer than the 63 an app name may have: use a name of at most {}",
                    full.len(),
                    63usize.saturating_sub(parent.as_str().len() + PREVIEW_SEPARATOR.len())
                ),
            )
        })
    }
}

impl fmt::Display for PreviewName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
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

    /// The type as a DNS-1123 label fragment (`_` becomes `-`), for
    /// names that must be one: instance ids, containers, Kubernetes
    /// objects. A Procfile whose types collide this way is refused.
    pub fn dns_label(&self) -> String {
        self.0.replace('_', "-")
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

impl std::str::FromStr for ProcessType {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<ProcessType, InvalidName> {
        ProcessType::parse(s)
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

/// The one mapping from a composed name (an instance id, a per-app
/// resource name) to a valid DNS-1123 label: lowercase `a-z0-9-`, starting
/// with a letter and ending with a letter or digit, at most 63 characters.
///
/// `_` and other characters become `-`. A name that is already a label is
/// returned unchanged, so ids made by earlier versions stay the same. One
/// longer than 63 keeps its first 54 characters, then `-` and 8 hex digits
/// of an FNV-1a hash of the whole name, so two long names that share a
/// prefix still differ.
pub fn dns_label(name: &str) -> String {
    let mut label: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if !label.starts_with(|c: char| c.is_ascii_lowercase()) {
        label.insert(0, 'x');
    }
    if label.len() > 63 {
        let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        label.truncate(54);
        label = format!("{}-{hash:08x}", label.trim_end_matches('-'));
    }
    while label.ends_with('-') {
        label.pop();
    }
    label
}

/// Is `s` a DNS-1123 label (what Kubernetes accepts as a name)?
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
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

/// A hostname as routed and certified: lowercase ASCII (IDNA applied), no
/// trailing dot, no port, at least two labels, not an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Hostname(String);

impl Hostname {
    /// Normalize once: `Shop.Example.COM.`, `shop.example.com:443` and
    /// `ShOp.example.com` are all `shop.example.com`; `bücher.de` is
    /// `xn--bcher-kva.de`.
    pub fn parse(input: &str) -> Result<Hostname, InvalidName> {
        let err = |why| InvalidName::Host(input.to_owned(), why);
        let mut s = input.trim();
        if s.contains('/') || s.contains('@') || s.contains('*') {
            return Err(err("give a bare host name, like www.example.com"));
        }
        // A port is not part of the name (`[v6]:port` is refused below as an IP).
        if let Some((host, port)) = s.rsplit_once(':') {
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                s = host;
            }
        }
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.parse::<std::net::IpAddr>().is_ok() || s.starts_with('[') {
            return Err(err("an IP address is not a domain"));
        }
        let ascii = idna::domain_to_ascii(s).map_err(|_| err("not a valid international name"))?;
        if ascii.is_empty() || ascii.len() > 253 {
            return Err(err("must be 1 to 253 characters"));
        }
        let labels: Vec<&str> = ascii.split('.').collect();
        if labels.len() < 2 {
            return Err(err("needs at least two labels, like example.com"));
        }
        for label in &labels {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.len() <= 63
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
            if !ok {
                return Err(err(
                    "each label is 1-63 of a-z, 0-9 and '-', not starting or ending in '-'",
                ));
            }
        }
        if labels[labels.len() - 1].bytes().all(|c| c.is_ascii_digit()) {
            return Err(err("the last label cannot be numeric"));
        }
        Ok(Hostname(ascii))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// The name of an app's persistent storage (`storage:mount APP NAME:/path`):
/// the app-name grammar, so it is safe as a path segment under
/// `DATA/storage/APP/`, in an environment variable's name and as a
/// Kubernetes object name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct StorageName(String);

impl StorageName {
    pub fn parse(s: &str) -> Result<StorageName, InvalidName> {
        AppName::parse(s)
            .map(|a| StorageName(a.0))
            .map_err(|_| InvalidName::Storage(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `CYGNI_STORAGE_UPLOADS` for `uploads`, `CYGNI_STORAGE_MY_DB` for
    /// `my-db`: where an app finds the storage (its host directory on the
    /// local runtime, its mount path in a container). No two names map to
    /// one variable: names have no `_`.
    pub fn env_var(&self) -> String {
        format!(
            "CYGNI_STORAGE_{}",
            self.0.to_ascii_uppercase().replace('-', "_")
        )
    }
}

impl fmt::Display for StorageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Where storage appears inside an app's container: absolute, normalized
/// (no `.`, `..`, empty segments or trailing `/`), of plain characters
/// (`A-Z a-z 0-9 . _ - + @ =` between the slashes), at most 255 bytes, and
/// neither `/` nor a system directory: mounting over `/proc`, `/etc` or
/// the app itself (`/app`) would break the container or hide the app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct MountPath(String);

/// Directories a mount may be neither at nor under.
const SYSTEM_DIRS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/cygni",
];
/// Directories a mount may be under but not at: the whole of `/app` is
/// the slug, `/var` and `/home` hold more than an app's data.
const SYSTEM_DIRS_EXACT: &[&str] = &["/app", "/var", "/home", "/root", "/tmp"];

impl MountPath {
    pub fn parse(s: &str) -> Result<MountPath, InvalidName> {
        let err = |why| Err(InvalidName::MountPath(s.to_owned(), why));
        if !s.starts_with('/') {
            return err("it must be absolute (start with /)");
        }
        if s == "/" {
            return err("it cannot be the container's root");
        }
        if s.len() > 255 {
            return err("it is longer than 255 bytes");
        }
        for segment in s[1..].split('/') {
            match segment {
                "" => return err("it must be normalized (no // and no trailing /)"),
                "." | ".." => return err("it must be normalized (no . or .. segments)"),
                _ => {}
            }
            let plain = segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+@=".contains(&b));
            if !plain {
                return err("use only A-Z, a-z, 0-9 and . _ - + @ = between the slashes");
            }
        }
        let under = |dir: &str| s == dir || s.starts_with(&format!("{dir}/"));
        if SYSTEM_DIRS.iter().any(|d| under(d)) || SYSTEM_DIRS_EXACT.contains(&s) {
            return err("it is a system directory; mount under /data, /app/NAME or /srv");
        }
        Ok(MountPath(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MountPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

#[cfg(test)]
mod storage_tests {
    use super::*;

    #[test]
    fn storage_names_and_their_variables() {
        let name = StorageName::parse("my-db").unwrap();
        assert_eq!(name.env_var(), "CYGNI_STORAGE_MY_DB");
        for bad in ["", "My", "a_b", "../x", "a/b", "-a", "1a", &"a".repeat(64)] {
            assert!(StorageName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mount_paths() {
        for ok in [
            "/data",
            "/app/uploads",
            "/srv/my-app/db",
            "/var/lib/app",
            "/tmp/x",
        ] {
            assert_eq!(MountPath::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "data",
            "/",
            "//data",
            "/data/",
            "/a/../etc",
            "/a/./b",
            "/proc",
            "/proc/1",
            "/sys/fs",
            "/dev/shm",
            "/etc",
            "/etc/app",
            "/usr/local",
            "/bin",
            "/app",
            "/var",
            "/run/x",
            "/a b",
            "/a:b",
            "/a\nb",
            "/caf\u{e9}",
        ] {
            assert!(MountPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(MountPath::parse(&format!("/{}", "a".repeat(255))).is_err());
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
    fn hostnames_are_normalized_once() {
        for (input, want) in [
            ("Shop.Example.COM.", "shop.example.com"),
            ("shop.example.com:443", "shop.example.com"),
            ("  www.example.org ", "www.example.org"),
            ("bücher.de", "xn--bcher-kva.de"),
            ("ＥＸＡＭＰＬＥ.com", "example.com"),
            ("a.localhost", "a.localhost"),
        ] {
            assert_eq!(Hostname::parse(input).unwrap().as_str(), want, "{input}");
        }
        for bad in [
            "",
            "localhost",
            "127.0.0.1",
            "[::1]:80",
            "-a.com",
            "a-.com",
            "a..com",
            "*.example.com",
            "http://example.com",
            "a b.com",
            "a;b.com",
            "user@example.com",
            "example.123",
            &format!("{}.com", "a".repeat(64)),
        ] {
            let e = Hostname::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid domain"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn key_names() {
        assert!(KeyName::parse("alice@laptop").is_ok());
        for bad in ["", "-rf", "a b", "a/b", "a;b"] {
            assert!(KeyName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn composed_names_are_dns_labels() {
        // Already a label: unchanged (ids of running instances stay stable).
        assert_eq!(dns_label("shop-v3-web-1"), "shop-v3-web-1");
        assert_eq!(dns_label("shop-v3-big_job-1"), "shop-v3-big-job-1");
        let long_app = "a".repeat(63);
        let a = dns_label(&format!("{long_app}-v1234-worker_queue-17"));
        let b = dns_label(&format!("{long_app}-v1234-worker_queue-18"));
        assert_ne!(a, b, "long names that share a prefix still differ");
        for name in [
            a.as_str(),
            b.as_str(),
            &dns_label("9lives"),
            &dns_label("x_"),
            &dns_label(&"-".repeat(80)),
        ] {
            assert!(is_dns_label(name), "{name:?}");
        }
        let process = ProcessType::parse(&"w".repeat(30)).unwrap();
        let app = AppName::parse(&"z".repeat(63)).unwrap();
        let id = crate::runtime::InstanceId::new(&app, u32::MAX, &process, u32::MAX);
        assert!(is_dns_label(&id.0), "{id}");
    }

    #[test]
    fn preview_names_and_their_app_names() {
        let shop = AppName::parse("shop").unwrap();
        let x = PreviewName::parse("x").unwrap();
        assert_eq!(x.app_name(&shop).unwrap().as_str(), "x--shop");
        assert!(x.app_name(&shop).unwrap().is_composite());
        assert!(!shop.is_composite());
        for bad in ["", "Bad_Name", "9x", "a--b", "x-", "a/b", "a.b"] {
            assert!(PreviewName::parse(bad).is_err(), "{bad:?}");
        }
        // 58 + 2 + 4 = 64: one too many.
        let long = PreviewName::parse(&"a".repeat(58)).unwrap();
        let err = long.app_name(&shop).unwrap_err().to_string();
        assert!(err.contains("at most 57"), "{err}");
        let fits = PreviewName::parse(&"a".repeat(57)).unwrap();
        assert_eq!(fits.app_name(&shop).unwrap().as_str().len(), 63);
    }
}
