//! `cygni.toml`: an app's own settings, read from the pushed commit's git
//! objects (never from a checkout, so a symlink cannot point it elsewhere).
//!
//! ```toml
//! [build]
//! builder = "buildpack:python"   # or "dockerfile", "nixpacks", a buildpack name
//! config_vars = ["NPM_TOKEN"]    # image builds see only these config vars
//!
//! [healthcheck]
//! path = "/health"   # HTTP check (2xx/3xx) instead of the default TCP check
//! timeout = 60       # seconds the new `web` instances have to pass it
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::runtime::HealthCheck;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub build: BuildSection,
    #[serde(default)]
    pub healthcheck: HealthSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    pub builder: Option<String>,
    /// The config vars an image build (docker runtime) may see: as
    /// `--build-arg`s of a Dockerfile or Nixpacks build, in ENV_DIR of a
    /// buildpack compile. None unless listed: a build's layers and logs
    /// outlive it.
    #[serde(default)]
    pub config_vars: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub path: Option<String>,
    pub timeout: Option<u64>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "cygni.toml is not UTF-8".to_owned())?;
        let m: Manifest = toml::from_str(text).map_err(|e| {
            let what = e.message().lines().next().unwrap_or("invalid TOML");
            match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    format!("cygni.toml:{line}:{col}: {what}")
                }
                None => format!("cygni.toml: {what}"),
            }
        })?;
        if let Some(path) = &m.healthcheck.path {
            let ok = path.starts_with('/')
                && path.len() <= 1024
                && path.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(format!(
                    "cygni.toml: healthcheck.path {path:?} must be a URL path starting with /"
                ));
            }
        }
        if m.healthcheck.timeout == Some(0) || m.healthcheck.timeout > Some(3600) {
            return Err("cygni.toml: healthcheck.timeout must be 1 to 3600 seconds".into());
        }
        Ok(m)
    }

    /// The check the release stores: the path (or TCP) and the boot
    /// timeout, `default` unless the manifest sets one.
    pub fn health_check(&self, default: Duration) -> HealthCheck {
        HealthCheck {
            path: self.healthcheck.path.clone(),
            timeout_secs: self.healthcheck.timeout.unwrap_or(default.as_secs()).max(1),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let m = Manifest::parse(
            b"[build]\nbuilder = \"nixpacks\"\n[healthcheck]\npath = \"/up\"\ntimeout = 5\n",
        )
        .unwrap();
        assert_eq!(m.build.builder.as_deref(), Some("nixpacks"));
        assert_eq!(
            m.health_check(Duration::from_secs(60)),
            HealthCheck {
                path: Some("/up".into()),
                timeout_secs: 5
            }
        );
        assert_eq!(
            Manifest::parse(b"")
                .unwrap()
                .health_check(Duration::from_secs(60)),
            HealthCheck::tcp(Duration::from_secs(60))
        );
        // Errors say where.
        let e = Manifest::parse(b"[build]\nbuilder = \"x\"\ncolour = 1\n").unwrap_err();
        assert!(e.starts_with("cygni.toml:3:1: "), "{e}");
        let e = Manifest::parse(b"[healthcheck]\ntimeout = \"ten\"\n").unwrap_err();
        assert!(e.starts_with("cygni.toml:2:11: "), "{e}");
        for bad in [
            &b"[healthcheck]\npath = \"up\"\n"[..],
            b"[healthcheck]\npath = \"/a b\"\n",
            b"[healthcheck]\ntimeout = 0\n",
            b"colour = 1\n",
            b"[build\n",
        ] {
            let e = Manifest::parse(bad).unwrap_err();
            assert!(e.starts_with("cygni.toml"), "{e}");
        }
    }
}
