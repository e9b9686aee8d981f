//! Builder detection: the one place that decides how an app is built.
//!
//! ```text
//! pinned? ──yes──► dockerfile | nixpacks | buildpack:NAME (checked, never guessed)
//!    │no
//!    ▼
//! Dockerfile at the root? ──► Dockerfile
//!    │no
//!    ▼
//! buildpacks_dir/*, by name, `procfile` last: first bin/detect to exit 0 ──► Buildpack
//!    │none
//!    ▼
//! a Nixpacks plan? ──► Nixpacks
//!    │no
//!    ▼
//! error naming everything tried
//! ```
//!
//! `procfile` goes last because it accepts any app with a Procfile and builds
//! nothing: a Python app with a Procfile still needs the Python buildpack.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{Ended, Step};
use super::{nixpacks, BuildError};

/// The fallback buildpack, tried after all others.
const FALLBACK_BUILDPACK: &str = "procfile";

/// How long a `bin/detect` may take: it looks at a few files.
const DETECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How an app is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builder {
    /// A `Dockerfile` at the root of the tree.
    Dockerfile,
    /// A buildpack: `name` is its directory's name in the buildpacks dir.
    Buildpack { name: String, dir: PathBuf },
    /// A Nixpacks plan generated from the tree.
    Nixpacks,
}

impl fmt::Display for Builder {
    /// The builder as the settings spell it: `dockerfile`, `buildpack:NAME`,
    /// `nixpacks`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Builder::Dockerfile => f.write_str("dockerfile"),
            Builder::Buildpack { name, .. } => write!(f, "buildpack:{name}"),
            Builder::Nixpacks => f.write_str("nixpacks"),
        }
    }
}

/// A detected builder and the name to show for it (a buildpack's
/// `bin/detect` prints its own, e.g. "Python").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Detected {
    pub builder: Builder,
    pub display: String,
}

/// Picks the builder for the tree at `source`: the `pinned` one if the app
/// has a setting (`dockerfile`, `nixpacks`, `buildpack:NAME` or a bare
/// buildpack name), else the first that applies in the order above.
///
/// Blocking: it runs the buildpacks' `bin/detect` scripts, as the daemon's
/// own user. [`super::build`] detects as the build user instead.
pub fn detect(
    source: &Path,
    buildpacks_dir: &Path,
    pinned: Option<&str>,
) -> Result<Builder, BuildError> {
    detect_as(source, buildpacks_dir, pinned, None).map(|detected| detected.builder)
}

pub(crate) fn detect_as(
    source: &Path,
    buildpacks_dir: &Path,
    pinned: Option<&str>,
    run_as: Option<(u32, u32)>,
) -> Result<Detected, BuildError> {
    // Absolute, because the scripts run in another working directory.
    let source = &canonical(source)?;
    let buildpacks_dir = &canonical(buildpacks_dir)?;
    let buildpacks = list_buildpacks(buildpacks_dir)?;
    let run_detect = |name: &str| run_bin_detect(source, &buildpacks_dir.join(name), run_as);

    if let Some(pinned) = pinned {
        return match parse_pinned(pinned, &buildpacks)? {
            Pin::Dockerfile if has_dockerfile(source)? => Ok(Detected {
                builder: Builder::Dockerfile,
                display: "Dockerfile".into(),
            }),
            Pin::Dockerfile => Err(BuildError::PinnedNotApplicable {
                pinned: "dockerfile".into(),
                reason: "the app has no Dockerfile".into(),
            }),
            Pin::Buildpack(name) => match run_detect(&name)? {
                Some(display) => Ok(Detected {
                    builder: Builder::Buildpack {
                        dir: buildpacks_dir.join(&name),
                        name,
                    },
                    display,
                }),
                None => Err(BuildError::PinnedNotApplicable {
                    reason: format!(
                        "buildpack {name} does not recognise this app (its bin/detect refused it)"
                    ),
                    pinned: format!("buildpack:{name}"),
                }),
            },
            Pin::Nixpacks => match nixpacks::detect(source)? {
                nixpacks::Detection::Plan { display } => Ok(Detected {
                    builder: Builder::Nixpacks,
                    display,
                }),
                nixpacks::Detection::NoPlan => Err(BuildError::PinnedNotApplicable {
                    pinned: "nixpacks".into(),
                    reason: "nixpacks found no plan for this app".into(),
                }),
                nixpacks::Detection::Disabled => Err(BuildError::NixpacksDisabled),
            },
        };
    }

    if has_dockerfile(source)? {
        return Ok(Detected {
            builder: Builder::Dockerfile,
            display: "Dockerfile".into(),
        });
    }
    for name in &buildpacks {
        if let Some(display) = run_detect(name)? {
            return Ok(Detected {
                builder: Builder::Buildpack {
                    name: name.clone(),
                    dir: buildpacks_dir.join(name),
                },
                display,
            });
        }
    }
    let nixpacks = match nixpacks::detect(source)? {
        nixpacks::Detection::Plan { display } => {
            return Ok(Detected {
                builder: Builder::Nixpacks,
                display,
            })
        }
        nixpacks::Detection::NoPlan => "found no plan",
        nixpacks::Detection::Disabled => "is not built in",
    };
    Err(BuildError::NoBuilder {
        buildpacks,
        nixpacks: nixpacks.into(),
    })
}

/// An app's builder setting, read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pin {
    Dockerfile,
    Nixpacks,
    Buildpack(String),
}

/// Reads the app's builder setting. Buildpack names are only ever taken
/// from the listing of the buildpacks dir, so a setting like `../x` cannot
/// point anywhere else.
fn parse_pinned(value: &str, buildpacks: &[String]) -> Result<Pin, BuildError> {
    let trimmed = value.trim();
    match trimmed {
        "dockerfile" => return Ok(Pin::Dockerfile),
        "nixpacks" => return Ok(Pin::Nixpacks),
        _ => {}
    }
    let name = trimmed.strip_prefix("buildpack:").unwrap_or(trimmed);
    buildpacks
        .iter()
        .find(|known| *known == name)
        .map(|name| Pin::Buildpack(name.clone()))
        .ok_or_else(|| BuildError::UnknownBuilder {
            value: value.to_owned(),
            buildpacks: buildpacks.to_vec(),
        })
}

pub(crate) fn canonical(path: &Path) -> Result<PathBuf, BuildError> {
    fs::canonicalize(path).map_err(|source| BuildError::Io {
        action: "resolve",
        path: path.to_owned(),
        source,
    })
}

fn has_dockerfile(source: &Path) -> Result<bool, BuildError> {
    let path = source.join("Dockerfile");
    match fs::metadata(&path) {
        Ok(meta) => Ok(meta.is_file()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(BuildError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

/// The buildpacks installed, in detection order: by name, `procfile` last.
/// Hidden entries and plain files (a README) are not buildpacks.
pub(crate) fn list_buildpacks(buildpacks_dir: &Path) -> Result<Vec<String>, BuildError> {
    let io_error = |source| BuildError::Io {
        action: "list the buildpacks in",
        path: buildpacks_dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(buildpacks_dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // `metadata` follows symlinks: a symlinked buildpack is fine.
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        names.push(name);
    }
    names.sort_by(|a, b| {
        (a == FALLBACK_BUILDPACK)
            .cmp(&(b == FALLBACK_BUILDPACK))
            .then_with(|| a.cmp(b))
    });
    Ok(names)
}

/// Runs `DIR/bin/detect SOURCE`: `Some(display name)` if it exits 0, `None`
/// for any other exit (Heroku's rule).
fn run_bin_detect(
    source: &Path,
    buildpack_dir: &Path,
    run_as: Option<(u32, u32)>,
) -> Result<Option<String>, BuildError> {
    let program = buildpack_dir.join("bin/detect");
    let name = buildpack_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    // HOME is the tree itself: detect only reads, and no writable dir is
    // set up yet when `detect` is called on its own.
    let captured = Step::new(&program, source, source, run_as)
        .arg(source)
        .run_captured(DETECT_TIMEOUT)?;
    match captured.ended {
        Ended::TimedOut => Err(BuildError::Timeout {
            what: format!("buildpack {name}: bin/detect"),
            after: DETECT_TIMEOUT,
        }),
        Ended::Exited(status) if status.success() => {
            let stdout = String::from_utf8_lossy(&captured.stdout);
            let display = stdout
                .lines()
                .next()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .unwrap_or(&name);
            Ok(Some(display.to_owned()))
        }
        Ended::Exited(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pinned_values() {
        let installed = names(&["go", "nodejs", "python", "procfile"]);
        assert_eq!(
            parse_pinned("dockerfile", &installed).unwrap(),
            Pin::Dockerfile
        );
        assert_eq!(
            parse_pinned(" nixpacks\n", &installed).unwrap(),
            Pin::Nixpacks
        );
        for value in ["buildpack:python", "python"] {
            assert_eq!(
                parse_pinned(value, &installed).unwrap(),
                Pin::Buildpack("python".into())
            );
        }
    }

    #[test]
    fn unknown_pinned_value_lists_the_valid_ones() {
        let installed = names(&["go", "nodejs", "python", "procfile"]);
        for bad in ["ruby", "buildpack:../go", "Dockerfile", "buildpack:", ""] {
            let err = parse_pinned(bad, &installed).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("unknown builder {bad:?}: use dockerfile, nixpacks, or buildpack:NAME with NAME one of go, nodejs, python, procfile")
            );
        }
    }

    #[test]
    fn procfile_is_listed_last() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["python", "procfile", "go", "nodejs", ".hidden"] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        fs::write(dir.path().join("README.md"), "not a buildpack").unwrap();
        assert_eq!(
            list_buildpacks(dir.path()).unwrap(),
            names(&["go", "nodejs", "python", "procfile"])
        );
    }

    #[test]
    fn display_of_builders() {
        assert_eq!(Builder::Dockerfile.to_string(), "dockerfile");
        assert_eq!(Builder::Nixpacks.to_string(), "nixpacks");
        let bp = Builder::Buildpack {
            name: "go".into(),
            dir: "/x/go".into(),
        };
        assert_eq!(bp.to_string(), "buildpack:go");
    }
}
