//! Builders: turn an exported source tree into an [`Artifact`].
//!
//! `build` knows nothing of SSH, SQLite or the proxy. The detection order
//! lives in one function, [`detect`].

use std::path::PathBuf;

/// What a build produces, and what a runtime runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Artifact {
    /// A directory holding the built app (the buildpack "slug"), run in place.
    Slug { dir: PathBuf },
    /// A container image reference, e.g. `cygni/myapp:v3`.
    Image { reference: String },
}
