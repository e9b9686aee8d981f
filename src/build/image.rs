//! Image builds through the Docker engine, for the docker (and kube)
//! runtimes: every build ends as an image tagged `cygni/APP:vN`.
//!
//! ```text
//! Dockerfile ──► the tree as the build context ─────────────────────────┐
//! buildpack  ──► slug compiled in the stack's build image ──► context:      │
//!                  Dockerfile FROM <run image>, app/ = the slug,         ├─► engine /build (tar stream)
//!                  /cygni/profile.sh (sources .profile.d, then exec)     │     output ──► progress
//! nixpacks   ──► the plan's Dockerfile + assets (nixpacks crate) ───────┘     ──► cygni/APP:vN
//! ```
//!
//! The context is written as a tar file in a private temp dir, then
//! streamed to the engine: never held in memory whole, and symlinks are
//! sent as symlinks (never followed out of the tree). The engine's classic
//! builder runs the build; `FROM` images it lacks are pulled by the engine,
//! so a Dockerfile app on an offline host must start from a local image,
//! and Nixpacks' base images need a registry. Images of older releases are
//! kept (see `Runtime::retain_artifacts`): rollback needs no rebuild.
//!
//! Config vars reach image builds as `--build-arg`s only when the app
//! lists them (cygni.toml `build.config_vars`); otherwise only at run time. A Dockerfile build's context is the pushed tree less what its
//! `.dockerignore` leaves out (see `dockerignore.rs`).

#[cfg(feature = "nixpacks")]
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::Path;

use super::dockerignore::DockerIgnore;
use std::time::Duration;

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc::Sender;

use super::{blocking, say, Artifact, BuildError};
use crate::names::AppName;

/// Build output lines are indented under their `----->` step.
const INDENT: &str = "       ";

/// The uid:gid a buildpack app runs as in its image: unprivileged, and the
/// owner of `/app` so the app may write there as it may on the host.
const APP_USER: &str = "10001:10001";

/// Sources the buildpacks' `.profile.d/*.sh`, then runs the command it was
/// given (the container's CMD), as Heroku does.
const PROFILE_SCRIPT: &str = r#"#!/bin/sh
# cygni: sources the buildpacks' .profile.d scripts, then runs the command.
for f in /app/.profile.d/*.sh; do if [ -r "$f" ]; then . "$f"; fi; done
unset f
exec "$@"
"#;

/// `cygni/shop:v3`.
pub fn tag(app: &AppName, release: u32) -> String {
    format!("cygni/{app}:v{release}")
}

/// Whether `image` is a plain image reference (`name[:tag][@digest]`,
/// optionally with a registry): it is written into a generated Dockerfile,
/// so nothing else may get in.
pub fn is_image_reference(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 255
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && !image.starts_with(['-', '.', '/', ':'])
}

/// One image build: where the context comes from and what to call it.
pub(crate) struct ImageBuild<'a> {
    pub app: &'a AppName,
    pub release: u32,
    pub output: &'a Sender<Vec<u8>>,
    pub timeout: Duration,
    /// The config vars the app asked to see at build time (cygni.toml's
    /// `build.config_vars`), as `--build-arg`s; none by default.
    pub build_args: HashMap<String, String>,
}

impl ImageBuild<'_> {
    /// Builds the app's own Dockerfile, with its tree as the context.
    pub(crate) async fn dockerfile(&self, source: &Path) -> Result<Artifact, BuildError> {
        let source = source.to_owned();
        // Read with no symlink followed: a linked .dockerignore is ignored.
        let ignore_path = source.join(".dockerignore");
        let ignore = match std::fs::symlink_metadata(&ignore_path) {
            Ok(m) if m.is_file() => std::fs::read_to_string(&ignore_path)
                .map_err(|source| io("read", ignore_path.clone(), source))?,
            _ => String::new(),
        };
        let (ignore, warnings) = DockerIgnore::parse(&ignore);
        for w in warnings {
            let _ = self
                .output
                .send(format!("       {w}; line skipped\n").into_bytes())
                .await;
        }
        let context = blocking(move || {
            let (file, mut tar) = context_file()?;
            append_tree_except(&mut tar, &source, "", &ignore)?;
            finish(tar, file)
        })
        .await?;
        self.build(context, "Dockerfile").await
    }

    /// Puts a slug built on the host onto `run_image`.
    pub(crate) async fn slug(&self, slug: &Path, run_image: &str) -> Result<Artifact, BuildError> {
        if !is_image_reference(run_image) {
            return Err(BuildError::InvalidRunImage {
                value: run_image.to_owned(),
            });
        }
        let dockerfile = slug_dockerfile(run_image);
        let slug = slug.to_owned();
        let context = blocking(move || {
            let (file, mut tar) = context_file()?;
            append_file(&mut tar, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
            append_file(
                &mut tar,
                "cygni-profile.sh",
                PROFILE_SCRIPT.as_bytes(),
                0o755,
            )?;
            append_tree(&mut tar, &slug, Some("app"))?;
            finish(tar, file)
        })
        .await?;
        say(
            self.output,
            format!("-----> Putting the slug on run image {run_image}"),
        )
        .await;
        self.build(context, "Dockerfile").await
    }

    /// Builds the Nixpacks plan's Dockerfile. Its base image comes from a
    /// registry (ghcr.io): the engine pulls it on first use.
    #[cfg(feature = "nixpacks")]
    pub(crate) async fn nixpacks(
        &self,
        source: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Artifact, BuildError> {
        let (source, env) = (source.to_owned(), env.clone());
        let context = blocking(move || {
            nixpacks_context(&source, &env)?;
            let (file, mut tar) = context_file()?;
            append_tree(&mut tar, &source, None)?;
            finish(tar, file)
        })
        .await?;
        match self.build(context, NIXPACKS_DOCKERFILE).await {
            Err(BuildError::ImageBuildFailed { message }) if is_pull_failure(&message) => {
                Err(BuildError::NixpacksPull { message })
            }
            other => other,
        }
    }

    /// Streams `context` to the engine and builds it as `cygni/APP:vN`.
    async fn build(
        &self,
        context: tempfile::NamedTempFile,
        dockerfile: &str,
    ) -> Result<Artifact, BuildError> {
        let reference = tag(self.app, self.release);
        say(
            self.output,
            format!("-----> Building image {reference} with the Docker engine"),
        )
        .await;
        let labels = HashMap::from([
            ("cygni.app".to_owned(), self.app.to_string()),
            ("cygni.release".to_owned(), self.release.to_string()),
        ]);
        let docker = connect().await?;
        engine_build(
            &docker,
            EngineBuild {
                context,
                dockerfile,
                tag: &reference,
                labels: &labels,
                build_args: &self.build_args,
                output: self.output,
                timeout: self.timeout,
                network: None,
            },
        )
        .await?;
        Ok(Artifact::Image { reference })
    }
}

/// One engine build: a context file, its Dockerfile, the tag.
pub(crate) struct EngineBuild<'a> {
    pub context: tempfile::NamedTempFile,
    pub dockerfile: &'a str,
    pub tag: &'a str,
    pub labels: &'a HashMap<String, String>,
    /// `--build-arg`s: only what the app asked for (cygni.toml), or the
    /// stack's BASE.
    pub build_args: &'a HashMap<String, String>,
    pub output: &'a Sender<Vec<u8>>,
    pub timeout: Duration,
    /// `none` builds with no network at all.
    pub network: Option<&'a str>,
}

/// Streams a context to the engine's classic builder, its output to the
/// build's progress, and tags the result.
pub(crate) async fn engine_build(docker: &Docker, b: EngineBuild<'_>) -> Result<(), BuildError> {
    let file = tokio::fs::File::open(b.context.path())
        .await
        .map_err(|source| io("read", b.context.path().to_owned(), source))?;
    let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(b.dockerfile)
        .t(b.tag)
        .rm(true)
        .forcerm(true)
        .labels(b.labels)
        .buildargs(b.build_args);
    if let Some(network) = b.network {
        options = options.networkmode(network);
    }
    let options = options.build();
    let output = b.output;
    let run = async {
        let mut stream = std::pin::pin!(docker.build_image(options, None, Some(body)));
        // The builder's `stream` pieces are not always whole lines.
        let mut partial = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.or(info.status) {
                        partial.push_str(&text);
                        while let Some(end) = partial.find('\n') {
                            let line: String = partial.drain(..=end).collect();
                            let line = line.trim_end();
                            if !line.is_empty() {
                                say(output, format!("{INDENT}{line}")).await;
                            }
                        }
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(BuildError::ImageBuildFailed {
                        message: error.trim().to_owned(),
                    })
                }
                Err(source) => {
                    return Err(BuildError::Engine {
                        action: "build the image",
                        source: Box::new(source),
                    })
                }
            }
        }
        if !partial.trim().is_empty() {
            say(output, format!("{INDENT}{}", partial.trim_end())).await;
        }
        Ok(())
    };
    match tokio::time::timeout(b.timeout, run).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(BuildError::Timeout {
                what: format!("building image {}", b.tag),
                after: b.timeout,
            })
        }
    }
    drop(b.context);
    Ok(())
}

/// Whether an engine error says an image could not be pulled (no
/// registry, no route, no such image there).
pub(crate) fn is_pull_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "pull access denied",
        "no such host",
        "dial tcp",
        "i/o timeout",
        "manifest unknown",
        "failed to resolve",
        "connection refused",
        "network is unreachable",
        "tls handshake timeout",
        "error pulling image",
        "failed to fetch",
        "/v2/",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// The engine on its local socket (`DOCKER_HOST` if set), with the API
/// version negotiated: an older engine refuses bollard's default.
pub(crate) async fn connect() -> Result<Docker, BuildError> {
    let engine = |source| BuildError::Engine {
        action: "be reached",
        source: Box::new(source),
    };
    let docker = Docker::connect_with_local_defaults().map_err(engine)?;
    docker.negotiate_version().await.map_err(engine)
}

/// The Dockerfile that puts a slug on the run image.
fn slug_dockerfile(run_image: &str) -> String {
    format!(
        "FROM {run_image}\n\
         COPY --chown={APP_USER} app /app\n\
         COPY cygni-profile.sh /cygni/profile.sh\n\
         WORKDIR /app\n\
         ENV HOME=/app\n\
         USER {APP_USER}\n\
         ENTRYPOINT [\"/bin/sh\", \"/cygni/profile.sh\"]\n"
    )
}

/// Where the nixpacks crate writes the plan's Dockerfile in the tree.
#[cfg(feature = "nixpacks")]
pub(crate) const NIXPACKS_DOCKERFILE: &str = ".nixpacks/Dockerfile";

/// Writes the plan's Dockerfile and its assets into `source/.nixpacks`
/// (the crate's `--out` mode: nothing is built or pulled), so that the
/// tree is the build context. (The crate also prints where it saved them
/// on stdout.)
#[cfg(feature = "nixpacks")]
pub(crate) fn nixpacks_context(
    source: &Path,
    env: &BTreeMap<String, String>,
) -> Result<(), BuildError> {
    use nixpacks::nixpacks::builder::docker::DockerBuilderOptions;
    use nixpacks::nixpacks::plan::generator::GeneratePlanOptions;

    let utf8 = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| BuildError::NixpacksPlan {
                reason: "the build dir's path is not UTF-8".into(),
            })
    };
    let source = utf8(source)?;
    // As for host builds: an empty value would make nixpacks read the
    // daemon's own environment.
    let envs: Vec<String> = env
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let options = DockerBuilderOptions {
        out_dir: Some(source.clone()),
        ..Default::default()
    };
    let plan_error = |err: anyhow::Error| BuildError::NixpacksPlan {
        reason: format!("{err:#}"),
    };
    // It must have work, or the crate exits the process instead of failing.
    let plan = nixpacks::generate_build_plan(
        &source,
        envs.iter().map(String::as_str).collect(),
        &GeneratePlanOptions::default(),
    )
    .map_err(plan_error)?;
    if plan.phases.as_ref().is_none_or(|p| p.is_empty()) {
        return Err(BuildError::NixpacksPlan {
            reason: "no plan for this app".into(),
        });
    }
    // `create_docker_image` is async but does only blocking work here; we
    // are on the blocking pool, where waiting on it is fine.
    let handle = tokio::runtime::Handle::current();
    handle
        .block_on(nixpacks::create_docker_image(
            &source,
            envs.iter().map(String::as_str).collect(),
            &GeneratePlanOptions::default(),
            &options,
        ))
        .map_err(plan_error)
}

fn io(action: &'static str, path: std::path::PathBuf, source: std::io::Error) -> BuildError {
    BuildError::Io {
        action,
        path,
        source,
    }
}

pub(crate) type Tar = tar::Builder<std::fs::File>;

/// A private temp file to write the context into.
pub(crate) fn context_file() -> Result<(tempfile::NamedTempFile, Tar), BuildError> {
    let file = tempfile::Builder::new()
        .prefix("cygni-context-")
        .suffix(".tar")
        .tempfile()
        .map_err(|source| io("create", std::env::temp_dir(), source))?;
    let handle = file
        .reopen()
        .map_err(|source| io("open", file.path().to_owned(), source))?;
    let mut tar = tar::Builder::new(handle);
    // Symlinks go in as symlinks: following one could pack host files.
    tar.follow_symlinks(false);
    Ok((file, tar))
}

pub(crate) fn finish(
    tar: Tar,
    file: tempfile::NamedTempFile,
) -> Result<tempfile::NamedTempFile, BuildError> {
    tar.into_inner()
        .and_then(|f| f.sync_all())
        .map_err(|source| io("write", file.path().to_owned(), source))?;
    Ok(file)
}

pub(crate) fn append_file(
    tar: &mut Tar,
    name: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), BuildError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, name, data)
        .map_err(|source| io("pack", name.into(), source))
}

/// Appends the entries of `dir` (at `rel` in the context) that `ignore`
/// keeps. Symlinks go in as links (the builder never follows them).
fn append_tree_except(
    tar: &mut Tar,
    dir: &Path,
    rel: &str,
    ignore: &DockerIgnore,
) -> Result<(), BuildError> {
    let entries = std::fs::read_dir(dir).map_err(|source| io("list", dir.to_owned(), source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io("list", dir.to_owned(), source))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let child = if rel.is_empty() {
            name.into_owned()
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry
            .file_type()
            .map_err(|source| io("read", path.clone(), source))?;
        let excluded = ignore.excludes(&child);
        if kind.is_dir() {
            // An excluded directory goes whole, unless an exception may
            // bring something inside it back.
            if excluded && !ignore.has_exceptions() {
                continue;
            }
            if !excluded {
                tar.append_dir(&child, &path)
                    .map_err(|source| io("pack", path.clone(), source))?;
            }
            append_tree_except(tar, &path, &child, ignore)?;
        } else if !excluded {
            tar.append_path_with_name(&path, &child)
                .map_err(|source| io("pack", path.clone(), source))?;
        }
    }
    Ok(())
}

/// Appends every entry of `dir`, under `prefix` or at the root.
pub(crate) fn append_tree(
    tar: &mut Tar,
    dir: &Path,
    prefix: Option<&str>,
) -> Result<(), BuildError> {
    if let Some(prefix) = prefix {
        return tar
            .append_dir_all(prefix, dir)
            .map_err(|source| io("pack", dir.to_owned(), source));
    }
    let entries = std::fs::read_dir(dir).map_err(|source| io("list", dir.to_owned(), source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io("list", dir.to_owned(), source))?;
        let path = entry.path();
        let name = entry.file_name();
        let kind = entry
            .file_type()
            .map_err(|source| io("read", path.clone(), source))?;
        let packed = if kind.is_dir() {
            tar.append_dir_all(&name, &path)
        } else {
            tar.append_path_with_name(&path, &name)
        };
        packed.map_err(|source| io("pack", path.clone(), source))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn tags_and_references() {
        let app = AppName::parse("shop").unwrap();
        assert_eq!(tag(&app, 3), "cygni/shop:v3");
        for ok in [
            "cygni/run:latest",
            "debian:bookworm-slim",
            "registry.example.com:5000/team/run@sha256:abc",
        ] {
            assert!(is_image_reference(ok), "{ok}");
        }
        for bad in ["", "run image", "x\nRUN rm -rf /", "-x", "a;b", "a\"b"] {
            assert!(!is_image_reference(bad), "{bad:?}");
        }
    }

    #[test]
    fn slug_dockerfile_runs_unprivileged_from_app() {
        let text = slug_dockerfile("cygni/run:latest");
        assert!(text.starts_with("FROM cygni/run:latest\n"), "{text}");
        assert!(text.contains("USER 10001:10001"), "{text}");
        assert!(text.contains("ENTRYPOINT [\"/bin/sh\", \"/cygni/profile.sh\"]"));
    }

    #[test]
    fn context_keeps_symlinks_as_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "hi").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("leak")).unwrap();
        let (file, mut tar) = context_file().unwrap();
        append_tree(&mut tar, dir.path(), None).unwrap();
        let file = finish(tar, file).unwrap();
        let mut archive = tar::Archive::new(std::fs::File::open(file.path()).unwrap());
        let mut seen = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            seen.insert(path, entry.header().entry_type());
        }
        assert_eq!(seen.get("index.html"), Some(&tar::EntryType::Regular));
        assert_eq!(seen.get("sub/a.txt"), Some(&tar::EntryType::Regular));
        assert_eq!(seen.get("leak"), Some(&tar::EntryType::Symlink), "{seen:?}");
    }

    #[cfg(feature = "nixpacks")]
    #[tokio::test(flavor = "multi_thread")]
    async fn nixpacks_writes_the_plans_dockerfile_without_pulling() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nixpacks-app");
        let out = tempfile::tempdir().unwrap();
        for name in ["index.html", "nixpacks.toml"] {
            std::fs::copy(fixture.join(name), out.path().join(name)).unwrap();
        }
        let dir = out.path().to_owned();
        tokio::task::spawn_blocking(move || nixpacks_context(&dir, &BTreeMap::new()))
            .await
            .unwrap()
            .unwrap();
        let dockerfile = std::fs::read_to_string(out.path().join(NIXPACKS_DOCKERFILE)).unwrap();
        assert!(dockerfile.contains("FROM "), "{dockerfile}");
        assert!(
            dockerfile.contains("cp index.html public/index.html"),
            "{dockerfile}"
        );
        assert!(
            dockerfile.contains("python3 -m http.server"),
            "{dockerfile}"
        );
    }
}
