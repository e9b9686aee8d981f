//! Builders: turn an exported source tree into an [`Artifact`].
//!
//! `build` knows nothing of SSH, SQLite or the proxy. The detection order
//! lives in one function, [`detect`]; [`build`] runs the builder it picks:
//!
//! ```text
//! source dir ──► detect ──► Dockerfile ──► (needs the docker runtime: refused on Target::Slug)
//!                   │              └─ Target::Image ──► engine build ──────────────┐
//!                   ├─────► buildpack  ──► bin/compile, bin/release ──┐            │
//!                   │                                                 ├──► Artifact::Slug (the source dir, built in place)
//!                   └─────► Nixpacks   ──► plan phases, start cmd  ───┘    + default process types
//!                                 Target::Image: slug on the run image, or ───────┴──► Artifact::Image cygni/APP:vN
//!                                 the Nixpacks plan's Dockerfile (see `image`)
//! ```
//!
//! Every step streams Heroku-style progress lines (`-----> ...`) to the
//! request's channel as it happens. Build processes get a clean environment
//! and, when the daemon is root, run as the app's own `run_as` uid/gid; no
//! string from Cygni or a pusher is ever spliced into a shell line. The only
//! shell commands run are the app's own code: buildpack scripts and the
//! commands of a Nixpacks plan derived from the app's files.
//!
//! On `Target::Image` a buildpack compiles in a container of the stack's
//! build image (`stack`), never as a host process, and config vars reach
//! it only as the caller passes them (deploy: those cygni.toml asks for).
//!
//! Submodules: `detect` (the order), `buildpack` (Heroku buildpack API v2),
//! `nixpacks` (plans run on the host), `process` (running a build step with
//! a deadline and streamed output), `ownership` (handing the tree to the
//! build user), `image` (image builds through the Docker engine), `stack`
//! (the build and run images, and compiles in the build image).

mod buildpack;
mod detect;
pub mod dockerignore;
pub mod image;
mod nixpacks;
mod ownership;
mod process;
pub mod stack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::sync::mpsc::Sender;

use crate::names::{AppName, ProcessType};

pub use detect::{detect, Builder};
pub use ownership::hand_over;

/// What a build produces, and what a runtime runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Artifact {
    /// A directory holding the built app (the buildpack "slug"), run in place.
    Slug { dir: PathBuf },
    /// A container image reference, e.g. `cygni/myapp:v3`.
    Image { reference: String },
}

/// What the runtime needs from a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A slug directory for the local runtime.
    Slug,
    /// A container image for the docker and kube runtimes, built through
    /// the Docker engine and tagged `cygni/APP:vN`.
    Image,
}

/// One build: the app, where its tree is, and where progress goes.
pub struct BuildRequest<'a> {
    pub app: &'a AppName,
    /// The release being built (`N` of the image tag `cygni/APP:vN`).
    pub release: u32,
    /// The exported tree. The build happens in place: this directory becomes
    /// the slug, so it must be where the release will run from.
    pub source_dir: &'a Path,
    /// The app's cache, kept between builds (created if missing).
    pub cache_dir: &'a Path,
    /// The app's config vars, handed to buildpacks as ENV_DIR (one file per
    /// variable). Names must be `[A-Za-z_][A-Za-z0-9_]*`.
    pub env: &'a BTreeMap<String, String>,
    pub buildpacks_dir: &'a Path,
    /// The app's builder setting (`dockerfile`, `nixpacks`, `buildpack:NAME`
    /// or a bare buildpack name), if it has one.
    pub pinned: Option<&'a str>,
    pub target: Target,
    /// The uid and gid build processes run as when the daemon is root: the
    /// app's own. The source and cache dirs are handed to them first
    /// (0700, [`hand_over`]); every directory
    /// above them must be traversable by that user (checked: an error
    /// names the one that is not), and so must the buildpacks dir.
    pub run_as: Option<(u32, u32)>,
    /// Progress, one line per message (with its `\n`), sent as it happens.
    /// A closed receiver does not stop the build.
    pub output: Sender<Vec<u8>>,
}

// By hand, so that a logged request shows which config vars were set but
// never their values (they are secrets).
impl std::fmt::Debug for BuildRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRequest")
            .field("app", &self.app)
            .field("release", &self.release)
            .field("source_dir", &self.source_dir)
            .field("cache_dir", &self.cache_dir)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("buildpacks_dir", &self.buildpacks_dir)
            .field("pinned", &self.pinned)
            .field("target", &self.target)
            .field("run_as", &self.run_as)
            .finish_non_exhaustive()
    }
}

/// Knobs an operator may turn; [`build`] uses the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildLimits {
    /// How long `bin/compile` (or all Nixpacks phases together) may run;
    /// an image build gets as long again.
    pub compile_timeout: Duration,
    /// The image buildpack slugs are put on for `Target::Image` (config
    /// key `run_image`) instead of the stack's run image. It must match
    /// the stack's build image (the same Debian and interpreters), and be
    /// in the engine already, or pullable.
    pub run_image: Option<String>,
    /// What both stack images start from (config key `stack_base_image`).
    pub stack_base_image: String,
    /// Build the stack images with no network (config key
    /// `stack_offline`): the base must have what they need.
    pub stack_offline: bool,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            compile_timeout: Duration::from_secs(15 * 60),
            run_image: None,
            stack_base_image: stack::DEFAULT_BASE_IMAGE.to_owned(),
            stack_offline: false,
        }
    }
}

/// A successful build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    pub artifact: Artifact,
    /// Which builder ran, for humans and the release record, e.g.
    /// `buildpack python` or `nixpacks`.
    pub builder: String,
    /// The builder's idea of what to run, from `bin/release`'s
    /// `default_process_types` or the Nixpacks start command (as `web`). A
    /// Procfile, when the app has one, takes precedence: that is the
    /// caller's merge, not the builder's.
    pub default_processes: BTreeMap<ProcessType, String>,
}

/// Why a build failed.
///
/// [`BuildError::is_app_fault`] says whether the pusher can fix it (their
/// tree, their settings, their build script) or whether the host is at
/// fault, in which case the detail belongs in the server log and the pusher
/// should see a generic message.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no builder detected: {}", describe_tried(.buildpacks, .nixpacks))]
    NoBuilder {
        /// The buildpacks tried, in order.
        buildpacks: Vec<String>,
        /// Why Nixpacks did not apply.
        nixpacks: String,
    },
    #[error("unknown builder {value:?}: use dockerfile, nixpacks, or buildpack:NAME with NAME one of {}", .buildpacks.join(", "))]
    UnknownBuilder {
        value: String,
        buildpacks: Vec<String>,
    },
    #[error("the builder is set to {pinned}, but {reason}")]
    PinnedNotApplicable { pinned: String, reason: String },
    #[error("this app has a Dockerfile, which needs the docker runtime: start cygni with --runtime docker (or remove the Dockerfile to use a buildpack)")]
    DockerfileNeedsDocker,
    #[error("building {what} is not supported yet")]
    Unsupported { what: String },
    #[error("invalid config var name {name:?} for a build: use A-Z, a-z, 0-9 and '_', not starting with a digit")]
    InvalidEnvName { name: String },
    #[error("buildpack {buildpack} failed: bin/{step} {status}")]
    BuildpackFailed {
        buildpack: String,
        step: &'static str,
        status: StepStatus,
    },
    #[error("buildpack {buildpack}: bin/release printed invalid YAML: {reason}")]
    BadRelease { buildpack: String, reason: String },
    #[error("{what} timed out after {}", human_duration(*.after))]
    Timeout { what: String, after: Duration },
    #[error("nixpacks could not plan this app: {reason}")]
    NixpacksPlan { reason: String },
    #[error("nixpacks {phase} phase failed: `{command}` {status}")]
    NixpacksFailed {
        phase: String,
        command: String,
        status: StepStatus,
    },
    #[error("the Nixpacks builder is not built into this cygni (cargo feature `nixpacks`); add a Procfile or pin a buildpack")]
    NixpacksDisabled,
    #[error("could not run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the build user (uid {uid}) cannot reach {path}: {blocker} has mode {mode:o}; make it traversable (o+x)")]
    Unreachable {
        uid: u32,
        path: PathBuf,
        blocker: PathBuf,
        mode: u32,
    },
    #[error("the image build failed: {message}")]
    ImageBuildFailed { message: String },
    #[error("the Docker engine could not {action}: {source}")]
    Engine {
        action: &'static str,
        /// Boxed: bollard's errors are large.
        #[source]
        source: Box<bollard::errors::Error>,
    },
    #[error("run image {value:?} is not an image reference (config key run_image)")]
    InvalidRunImage { value: String },
    #[error("the Nixpacks image build could not pull its base image from its registry (ghcr.io): {message}; let the Docker engine reach ghcr.io (or a registry mirror), or add a Procfile so that a buildpack builds the app on the local stack, which needs no registry")]
    NixpacksPull { message: String },
    #[error("the stack's base image {base} is not on this host and could not be pulled ({message}); on a host without a registry, load a Debian 12 image (`docker load`, or `docker import` of a debootstrap'd rootfs) and set stack_base_image in cygni.toml")]
    StackBase { base: String, message: String },
    #[error("buildpack {buildpack} failed in the build container: bin/{step} {status}")]
    ContainerStepFailed {
        buildpack: String,
        step: &'static str,
        status: StepStatus,
    },
    #[error("build task failed: {reason}")]
    Internal { reason: String },
}

impl BuildError {
    /// Whether the pusher can fix this failure (their tree, their settings,
    /// their build scripts), as opposed to a fault of the host.
    pub fn is_app_fault(&self) -> bool {
        match self {
            BuildError::NoBuilder { .. }
            | BuildError::UnknownBuilder { .. }
            | BuildError::PinnedNotApplicable { .. }
            | BuildError::DockerfileNeedsDocker
            | BuildError::Unsupported { .. }
            | BuildError::InvalidEnvName { .. }
            | BuildError::BuildpackFailed { .. }
            | BuildError::Timeout { .. }
            | BuildError::NixpacksPlan { .. }
            | BuildError::NixpacksFailed { .. }
            | BuildError::NixpacksDisabled
            | BuildError::ImageBuildFailed { .. }
            | BuildError::ContainerStepFailed { .. }
            // The host's, but only the pusher sees the push output: these
            // say what to do.
            | BuildError::NixpacksPull { .. }
            | BuildError::StackBase { .. } => true,
            BuildError::BadRelease { .. }
            | BuildError::Spawn { .. }
            | BuildError::Io { .. }
            | BuildError::Unreachable { .. }
            | BuildError::Engine { .. }
            | BuildError::InvalidRunImage { .. }
            | BuildError::Internal { .. } => false,
        }
    }
}

/// How a build step ended, worded to follow "bin/compile ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepStatus(pub ExitStatus);

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::unix::process::ExitStatusExt;
        match (self.0.code(), self.0.signal()) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(signal)) => write!(f, "was killed by signal {signal}"),
            (None, None) => write!(f, "ended with {}", self.0),
        }
    }
}

/// `15 min`, `90s`, `500ms`: how a timeout reads in an error.
fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else if secs >= 1 {
        format!("{secs}s")
    } else {
        format!("{}ms", duration.as_millis())
    }
}

fn describe_tried(buildpacks: &[String], nixpacks: &str) -> String {
    let buildpacks = if buildpacks.is_empty() {
        "no buildpacks installed".to_owned()
    } else {
        format!("buildpacks {} did not detect", buildpacks.join(", "))
    };
    format!("no Dockerfile; {buildpacks}; nixpacks {nixpacks}")
}

/// Builds with the default [`BuildLimits`].
pub async fn build(req: BuildRequest<'_>) -> Result<BuildOutput, BuildError> {
    build_with(req, &BuildLimits::default()).await
}

/// Detects the builder and runs it in place in `req.source_dir`.
pub async fn build_with(
    req: BuildRequest<'_>,
    limits: &BuildLimits,
) -> Result<BuildOutput, BuildError> {
    if let Some(name) = req.env.keys().find(|name| !is_env_name(name)) {
        return Err(BuildError::InvalidEnvName { name: name.clone() });
    }

    let source_dir = req.source_dir.to_owned();
    let cache_dir = req.cache_dir.to_owned();
    let buildpacks_dir = req.buildpacks_dir.to_owned();
    let pinned = req.pinned.map(str::to_owned);
    let run_as = req.run_as;
    // Image builds compile in a container, as the stack's build user; the
    // tree and the cache are handed to that user, not the host's.
    let owner = match req.target {
        Target::Slug => run_as,
        Target::Image if is_root() => Some(stack::BUILD_USER),
        Target::Image => None,
    };
    // Handing the tree over and running bin/detect scripts are blocking
    // filesystem and process work: keep them off the async workers.
    let (detected, dirs) = blocking(move || {
        // 0700 for the app's own uid; an image build's tree stays as the
        // export made it (the docker runtime is unchanged).
        let private = req.target == Target::Slug;
        let home = ownership::prepare(&source_dir, &cache_dir, owner, private)?;
        // Absolute, because build steps run in another working directory.
        let dirs = Dirs {
            source: detect::canonical(&source_dir)?,
            cache: detect::canonical(&cache_dir)?,
            home: detect::canonical(&home)?,
        };
        let detected = detect::detect_as(&dirs.source, &buildpacks_dir, pinned.as_deref(), run_as)?;
        Ok((detected, dirs))
    })
    .await?;

    let ctx = process::Context {
        cwd: &dirs.source,
        home: &dirs.home,
        run_as: req.run_as,
        output: &req.output,
    };
    let image = image::ImageBuild {
        app: req.app,
        release: req.release,
        output: &req.output,
        timeout: limits.compile_timeout,
        // For image builds the caller passes only what the app asked for.
        build_args: match req.target {
            Target::Image => req.env.clone().into_iter().collect(),
            Target::Slug => Default::default(),
        },
    };
    let (builder, default_processes) = match &detected.builder {
        Builder::Dockerfile if req.target == Target::Slug => {
            return Err(BuildError::DockerfileNeedsDocker)
        }
        Builder::Dockerfile => {
            let artifact = image.dockerfile(&dirs.source).await?;
            tracing::info!(app = %req.app, builder = "dockerfile", "build succeeded");
            // No Procfile: `web` runs the image's own CMD (an empty command).
            return Ok(BuildOutput {
                artifact,
                builder: "dockerfile".to_owned(),
                default_processes: BTreeMap::from([(ProcessType::web(), String::new())]),
            });
        }
        Builder::Buildpack { name, .. } if req.target == Target::Image => {
            // Both go into generated Dockerfiles: refused before the engine
            // is even asked.
            for value in limits.run_image.iter().chain([&limits.stack_base_image]) {
                if !image::is_image_reference(value) {
                    return Err(BuildError::InvalidRunImage {
                        value: value.clone(),
                    });
                }
            }
            let docker = image::connect().await?;
            let stack = stack::ensure(
                &docker,
                &limits.stack_base_image,
                limits.stack_offline,
                req.buildpacks_dir,
                &req.output,
            )
            .await?;
            let processes = stack::Compile {
                app: req.app,
                release: req.release,
                image: &stack.build,
                buildpack: name,
                display: &detected.display,
                source: &dirs.source,
                cache: &dirs.cache,
                env: req.env,
                user: stack::build_user(),
                output: &req.output,
                timeout: limits.compile_timeout,
            }
            .run(&docker)
            .await?;
            let run_image = limits.run_image.clone().unwrap_or(stack.run);
            let artifact = image.slug(&dirs.source, &run_image).await?;
            tracing::info!(app = %req.app, builder = %name, "build succeeded in the stack's build image");
            return Ok(BuildOutput {
                artifact,
                builder: format!("buildpack {name}"),
                default_processes: processes,
            });
        }
        Builder::Buildpack { name, dir } => {
            let processes = buildpack::run(
                &buildpack::Buildpack {
                    name,
                    dir,
                    display: &detected.display,
                },
                &ctx,
                &dirs.cache,
                req.env,
                limits.compile_timeout,
            )
            .await?;
            (format!("buildpack {name}"), processes)
        }
        #[cfg(feature = "nixpacks")]
        Builder::Nixpacks if req.target == Target::Image => {
            let artifact = image.nixpacks(&dirs.source, req.env).await?;
            tracing::info!(app = %req.app, builder = "nixpacks", "build succeeded");
            // The plan's start command is the image's CMD.
            return Ok(BuildOutput {
                artifact,
                builder: "nixpacks".to_owned(),
                default_processes: BTreeMap::from([(ProcessType::web(), String::new())]),
            });
        }
        Builder::Nixpacks => {
            let processes = nixpacks::run(&ctx, req.env, limits.compile_timeout).await?;
            ("nixpacks".to_owned(), processes)
        }
    };
    let artifact = match req.target {
        Target::Slug => Artifact::Slug { dir: dirs.source },
        // Every image build returned above (buildpacks compile in the
        // stack; Dockerfile and Nixpacks apps are engine builds): a host
        // build never becomes an image.
        Target::Image => {
            return Err(BuildError::Internal {
                reason: format!("{builder} built on the host for an image target"),
            })
        }
    };
    tracing::info!(app = %req.app, %builder, "build succeeded");
    Ok(BuildOutput {
        artifact,
        builder,
        default_processes,
    })
}

/// A build's directories, absolute.
struct Dirs {
    source: PathBuf,
    cache: PathBuf,
    home: PathBuf,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `name` is a portable environment variable name, and so a safe
/// file name in ENV_DIR.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Runs blocking build work on tokio's blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, BuildError>
where
    F: FnOnce() -> Result<T, BuildError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| BuildError::Internal {
            reason: err.to_string(),
        })?
}

/// Sends one progress line; a gone receiver is not the build's problem.
async fn say(output: &Sender<Vec<u8>>, line: impl Into<String>) {
    let mut line = line.into().into_bytes();
    line.push(b'\n');
    let _ = output.send(line).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for ok in ["A", "_", "GREETING", "npm_config_x", "A1"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "../x", "a/b", "A B", "É"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn no_builder_names_what_it_tried() {
        let err = BuildError::NoBuilder {
            buildpacks: vec!["nodejs".into(), "python".into(), "procfile".into()],
            nixpacks: "found no plan".into(),
        };
        assert_eq!(
            err.to_string(),
            "no builder detected: no Dockerfile; buildpacks nodejs, python, procfile did not detect; nixpacks found no plan"
        );
        assert!(err.is_app_fault());
    }

    #[test]
    fn debug_of_a_request_hides_config_values() {
        let app = AppName::parse("a").unwrap();
        let env = BTreeMap::from([("SECRET_KEY".to_owned(), "hunter2".to_owned())]);
        let (output, _rx) = tokio::sync::mpsc::channel(1);
        let req = BuildRequest {
            app: &app,
            release: 1,
            source_dir: Path::new("/src"),
            cache_dir: Path::new("/cache"),
            env: &env,
            buildpacks_dir: Path::new("/bp"),
            pinned: None,
            target: Target::Slug,
            run_as: None,
            output,
        };
        let debug = format!("{req:?}");
        assert!(
            debug.contains("SECRET_KEY") && !debug.contains("hunter2"),
            "{debug}"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(15 * 60)), "15 min");
        assert_eq!(human_duration(Duration::from_secs(90)), "90s");
        assert_eq!(human_duration(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn step_status_wording() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            StepStatus(ExitStatus::from_raw(3 << 8)).to_string(),
            "exited with code 3"
        );
        assert_eq!(
            StepStatus(ExitStatus::from_raw(9)).to_string(),
            "was killed by signal 9"
        );
    }
}
