//! The stack: a build image and a run image that match (the `stack/`
//! folder, built into this binary), and buildpack compiles inside the
//! build image, for the docker (and kube) runtimes.
//!
//! ```text
//! first push ─► ensure: cygni/stack-build:KEY, cygni/stack-run:KEY in the engine?
//!                 │ no: build each FROM stack_base_image (pulled by the engine if
//!                 │     not local; a failed pull says what to do), progress streamed
//!                 ▼
//! compile ─► container of stack-build: /app = the source, /cache = the app's cache
//!            (and /cygni/env, read-only, only with the vars cygni.toml asks for),
//!            user 10001 (the daemon's own uid when it is not root), hostname
//!            cygni-build ─► /cygni/buildpacks/NAME/bin/compile /app /cache /cygni/env
//!        ─► bin/release /app in a second container ─► default process types
//!        ─► the slug onto stack-run (see `image`) ─► cygni/APP:vN
//! ```
//!
//! KEY is a digest of the base image's name, the stack's files and the
//! buildpacks, so a change of any of them builds new images and nothing
//! stale is reused. Nothing of the app's build runs as a host process
//! (its `bin/detect`, a file test over the tree, still does: detection
//! decides between a Dockerfile, a buildpack and Nixpacks in one place).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Sender;

use super::image::{self, EngineBuild};
use super::{blocking, say, BuildError, StepStatus};
use crate::names::{AppName, ProcessType};

/// The stack definition, as shipped in `stack/`.
const BUILD_DOCKERFILE: &str = include_str!("../../stack/build.Dockerfile");
const RUN_DOCKERFILE: &str = include_str!("../../stack/run.Dockerfile");
const INSTALL_MISSING: &str = include_str!("../../stack/install-missing.sh");

/// The base both stack images start from unless `stack_base_image` says
/// otherwise: Debian 12, from Docker Hub.
pub const DEFAULT_BASE_IMAGE: &str = "debian:bookworm-slim";

/// The uid:gid buildpack compiles run as in the build container when the
/// daemon is root: the run image's app user, so the slug needs no chown.
pub const BUILD_USER: (u32, u32) = (10001, 10001);

/// Where things are inside the build container.
const APP_DIR: &str = "/app";
const CACHE_DIR: &str = "/cache";
const ENV_DIR: &str = "/cygni/env";
const BUILDPACKS_DIR: &str = "/cygni/buildpacks";

/// How long building a stack image may take (packages may be installed).
const STACK_BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long `bin/release` may take in its container.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The two images of one stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackImages {
    pub build: String,
    pub run: String,
}

/// The stack images for `base` and the buildpacks in `buildpacks`.
pub fn images_for(base: &str, buildpacks: &Path) -> Result<StackImages, BuildError> {
    let mut hash = Sha256::new();
    for part in [
        "cygni-stack-1",
        base,
        BUILD_DOCKERFILE,
        RUN_DOCKERFILE,
        INSTALL_MISSING,
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash_tree(&mut hash, buildpacks, Path::new(""))?;
    let digest = hash.finalize();
    let key: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    Ok(StackImages {
        build: format!("cygni/stack-build:{key}"),
        run: format!("cygni/stack-run:{key}"),
    })
}

/// Every entry's relative path, kind, mode and contents, in name order.
fn hash_tree(hash: &mut Sha256, root: &Path, rel: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|source| io("list", dir.clone(), source))?
        .collect::<Result<_, _>>()
        .map_err(|source| io("list", dir.clone(), source))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let child = rel.join(entry.file_name());
        let meta =
            std::fs::symlink_metadata(&path).map_err(|source| io("read", path.clone(), source))?;
        hash.update(child.to_string_lossy().as_bytes());
        hash.update(meta.permissions().mode().to_le_bytes());
        if meta.is_dir() {
            hash.update(b"d");
            hash_tree(hash, root, &child)?;
        } else if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&path).map_err(|source| io("read", path.clone(), source))?;
            hash.update(b"l");
            hash.update(target.to_string_lossy().as_bytes());
        } else {
            let bytes = std::fs::read(&path).map_err(|source| io("read", path.clone(), source))?;
            hash.update(b"f");
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(&bytes);
        }
    }
    Ok(())
}

/// Builds the stack's images unless the engine has them, streaming the
/// progress. One at a time: two pushes never build the same image twice.
///
/// `offline` (config key `stack_offline`): build with no network, from a
/// base that has what the stack needs; what it lacks is reported, not
/// fetched.
pub async fn ensure(
    docker: &Docker,
    base: &str,
    offline: bool,
    buildpacks: &Path,
    output: &Sender<Vec<u8>>,
) -> Result<StackImages, BuildError> {
    static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if !image::is_image_reference(base) {
        return Err(BuildError::InvalidRunImage {
            value: base.to_owned(),
        });
    }
    let dir = buildpacks.to_owned();
    let base2 = base.to_owned();
    let images = blocking(move || images_for(&base2, &dir)).await?;
    let _one_at_a_time = BUILDING.lock().await;
    for (role, tag) in [("build", &images.build), ("run", &images.run)] {
        if has_image(docker, tag).await? {
            continue;
        }
        say(
            output,
            format!("-----> Building the stack's {role} image {tag} from {base} (first use)"),
        )
        .await;
        let base_is_local = has_image(docker, base).await?;
        if !base_is_local && offline {
            return Err(BuildError::StackBase {
                base: base.to_owned(),
                message: "stack_offline is set".into(),
            });
        }
        if !base_is_local {
            say(
                output,
                format!("       {base} is not on this host: the Docker engine pulls it"),
            )
            .await;
        }
        let (dockerfile, name) = match role {
            "build" => (BUILD_DOCKERFILE, "build.Dockerfile"),
            _ => (RUN_DOCKERFILE, "run.Dockerfile"),
        };
        let bp = buildpacks.to_owned();
        let with_buildpacks = role == "build";
        let context = blocking(move || {
            let (file, mut tar) = image::context_file()?;
            image::append_file(&mut tar, name, dockerfile.as_bytes(), 0o644)?;
            image::append_file(
                &mut tar,
                "install-missing.sh",
                INSTALL_MISSING.as_bytes(),
                0o755,
            )?;
            if with_buildpacks {
                image::append_tree(&mut tar, &bp, Some("buildpacks"))?;
            }
            image::finish(tar, file)
        })
        .await?;
        let labels = HashMap::from([("cygni.stack".to_owned(), role.to_owned())]);
        let build_args = HashMap::from([("BASE".to_owned(), base.to_owned())]);
        let built = image::engine_build(
            docker,
            EngineBuild {
                context,
                dockerfile: name,
                tag,
                labels: &labels,
                build_args: &build_args,
                output,
                timeout: STACK_BUILD_TIMEOUT,
                network: offline.then_some("none"),
            },
        )
        .await;
        match built {
            Err(BuildError::ImageBuildFailed { message })
                if !base_is_local && image::is_pull_failure(&message) =>
            {
                return Err(BuildError::StackBase {
                    base: base.to_owned(),
                    message: first_line(&message),
                })
            }
            other => other?,
        }
    }
    Ok(images)
}

async fn has_image(docker: &Docker, reference: &str) -> Result<bool, BuildError> {
    match docker.inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(source) => Err(BuildError::Engine {
            action: "inspect an image",
            source: Box::new(source),
        }),
    }
}

/// One buildpack compile in the build image.
pub(crate) struct Compile<'a> {
    pub app: &'a AppName,
    pub release: u32,
    pub image: &'a str,
    /// The buildpack's directory name (it is baked in under that name).
    pub buildpack: &'a str,
    pub display: &'a str,
    pub source: &'a Path,
    pub cache: &'a Path,
    /// The config vars the app asked for at build time (ENV_DIR).
    pub env: &'a BTreeMap<String, String>,
    /// uid:gid the steps run as; the source and cache belong to it.
    pub user: (u32, u32),
    pub output: &'a Sender<Vec<u8>>,
    pub timeout: Duration,
}

/// Removes build containers a killed daemon left behind: any older than
/// twice the longest a step may run is no live build's (a live one is
/// killed at its deadline), whichever daemon made it.
async fn remove_orphans(docker: &Docker, timeout: Duration) {
    let filters = HashMap::from([("label".to_owned(), vec!["cygni.build".to_owned()])]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(found) = docker.list_containers(Some(options)).await else {
        return;
    };
    let cutoff = chrono::Utc::now().timestamp() - 2 * timeout.as_secs() as i64;
    for c in found {
        if let (Some(id), Some(created)) = (c.id, c.created) {
            if created < cutoff {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                match docker.remove_container(&id, Some(options)).await {
                    Ok(()) => {
                        tracing::info!(container = %id, "removed an orphaned build container")
                    }
                    Err(e) => {
                        tracing::warn!(container = %id, error = %e, "cannot remove an orphaned build container")
                    }
                }
            }
        }
    }
}

impl Compile<'_> {
    /// `bin/compile`, then `bin/release` for the default process types.
    pub(crate) async fn run(
        &self,
        docker: &Docker,
    ) -> Result<BTreeMap<ProcessType, String>, BuildError> {
        remove_orphans(docker, self.timeout.max(RELEASE_TIMEOUT)).await;
        say(
            self.output,
            format!(
                "-----> Building with buildpack {} in the stack's build image {}",
                self.display, self.image
            ),
        )
        .await;
        let env_dir = if self.env.is_empty() {
            None
        } else {
            let env = self.env.clone();
            let user = Some(self.user);
            // Beside the cache, under the data dir: the engine must see it.
            let parent = self.cache.parent().unwrap_or(self.cache).to_owned();
            Some(blocking(move || super::buildpack::write_env_dir_in(&env, user, &parent)).await?)
        };
        let bin = |step: &str| format!("{BUILDPACKS_DIR}/{}/bin/{step}", self.buildpack);
        let compile = vec![
            bin("compile"),
            APP_DIR.to_owned(),
            CACHE_DIR.to_owned(),
            ENV_DIR.to_owned(),
        ];
        let code = self
            .in_container(
                docker,
                "compile",
                compile,
                env_dir.as_ref().map(|d| d.path()),
                Sink::Stream,
                self.timeout,
            )
            .await?
            .0;
        drop(env_dir);
        self.check("compile", code)?;

        let (code, stdout) = self
            .in_container(
                docker,
                "release",
                vec![bin("release"), APP_DIR.to_owned()],
                None,
                Sink::Capture,
                RELEASE_TIMEOUT,
            )
            .await?;
        self.check("release", code)?;
        let processes = super::buildpack::parse_release(&String::from_utf8_lossy(&stdout))
            .map_err(|reason| BuildError::BadRelease {
                buildpack: self.buildpack.to_owned(),
                reason,
            })?;
        super::buildpack::say_types(self.output, self.display, &processes).await;
        Ok(processes)
    }

    fn check(&self, step: &'static str, code: Option<i64>) -> Result<(), BuildError> {
        use std::os::unix::process::ExitStatusExt;
        match code {
            Some(0) => Ok(()),
            Some(code) => Err(BuildError::ContainerStepFailed {
                buildpack: self.buildpack.to_owned(),
                step,
                status: StepStatus(std::process::ExitStatus::from_raw(
                    (i32::try_from(code).unwrap_or(255) & 0xff) << 8,
                )),
            }),
            None => Err(BuildError::Timeout {
                what: format!("buildpack {}: bin/{step}", self.buildpack),
                after: self.timeout,
            }),
        }
    }

    /// Runs `argv` in a fresh container of the build image with the
    /// source and cache mounted, and removes it after. Returns the exit
    /// code (None: timed out, killed) and, for [`Sink::Capture`], stdout.
    async fn in_container(
        &self,
        docker: &Docker,
        step: &str,
        argv: Vec<String>,
        env_dir: Option<&Path>,
        sink: Sink,
        timeout: Duration,
    ) -> Result<(Option<i64>, Vec<u8>), BuildError> {
        let name = format!(
            "cygni-build-{}-v{}-{step}-{:08x}",
            self.app,
            self.release,
            rand::random::<u32>()
        );
        let bind = |source: &Path, target: &str, read_only: bool| Mount {
            target: Some(target.to_owned()),
            source: Some(source.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(read_only),
            ..Default::default()
        };
        let mut mounts = vec![
            bind(self.source, APP_DIR, false),
            bind(self.cache, CACHE_DIR, false),
        ];
        if let Some(dir) = env_dir {
            mounts.push(bind(dir, ENV_DIR, true));
        }
        let labels = HashMap::from([
            ("cygni.app".to_owned(), self.app.to_string()),
            ("cygni.release".to_owned(), self.release.to_string()),
            ("cygni.build".to_owned(), step.to_owned()),
        ]);
        let body = ContainerCreateBody {
            image: Some(self.image.to_owned()),
            cmd: Some(argv),
            // What a host build step gets (build::process), with the
            // container's paths.
            env: Some(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                format!("HOME={CACHE_DIR}/.home"),
                "LANG=C.UTF-8".into(),
                "STACK=cygni".into(),
            ]),
            user: Some(format!("{}:{}", self.user.0, self.user.1)),
            working_dir: Some(APP_DIR.to_owned()),
            hostname: Some("cygni-build".to_owned()),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        docker
            .create_container(Some(options), body)
            .await
            .map_err(engine("create a build container"))?;
        let _remove = RemoveOnDrop {
            docker: docker.clone(),
            name: name.clone(),
        };
        docker
            .start_container(&name, None)
            .await
            .map_err(engine("start a build container"))?;
        let capture = matches!(sink, Sink::Capture);
        let logs = docker.logs(
            &name,
            Some(
                LogsOptionsBuilder::default()
                    .follow(true)
                    .stdout(true)
                    .stderr(!capture)
                    .build(),
            ),
        );
        let output = self.output.clone();
        let pump = async move {
            let mut logs = std::pin::pin!(logs);
            let mut captured = Vec::new();
            let mut partial = Vec::new();
            while let Some(Ok(chunk)) = logs.next().await {
                let bytes = chunk.into_bytes();
                if capture {
                    if captured.len() < 64 * 1024 {
                        captured.extend_from_slice(&bytes);
                    }
                    continue;
                }
                partial.extend_from_slice(&bytes);
                while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=end).collect();
                    let _ = output.send(line).await;
                }
            }
            if !partial.is_empty() {
                partial.push(b'\n');
                let _ = output.send(partial).await;
            }
            captured
        };
        let wait = async {
            let mut waits = std::pin::pin!(docker.wait_container(&name, None));
            match waits.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Ok(code)
                }
                Some(Err(e)) => Err(engine("wait for a build container")(e)),
                None => Ok(-1),
            }
        };
        let run = async { tokio::join!(wait, pump) };
        match tokio::time::timeout(timeout, run).await {
            Ok((code, captured)) => Ok((Some(code?), captured)),
            // The guard removes (kills) the container.
            Err(_) => Ok((None, Vec::new())),
        }
    }
}

/// Where a build container's output goes.
enum Sink {
    /// Line by line to the push, stdout and stderr merged.
    Stream,
    /// Kept (stdout only, 64 KiB at most).
    Capture,
}

/// The user build containers run as: [`BUILD_USER`] when the daemon is
/// root (it can hand the tree over), else the daemon's own uid:gid (it
/// owns the tree already).
pub fn build_user() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 {
        BUILD_USER
    } else {
        (uid, gid)
    }
}

fn engine(action: &'static str) -> impl FnOnce(bollard::errors::Error) -> BuildError {
    move |source| BuildError::Engine {
        action,
        source: Box::new(source),
    }
}

fn io(action: &'static str, path: PathBuf, source: std::io::Error) -> BuildError {
    BuildError::Io {
        action,
        path,
        source,
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_owned()
}

/// Force-removes a build container when dropped, however the step ended.
struct RemoveOnDrop {
    docker: Docker,
    name: String,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let (docker, name) = (self.docker.clone(), std::mem::take(&mut self.name));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                if let Err(e) = docker.remove_container(&name, Some(options)).await {
                    tracing::warn!(container = %name, error = %e, "cannot remove a build container");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_base_and_the_buildpacks() {
        let bp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bp.path().join("x/bin")).unwrap();
        std::fs::write(bp.path().join("x/bin/compile"), "#!/bin/sh\n").unwrap();
        let a = images_for("debian:bookworm-slim", bp.path()).unwrap();
        assert!(a.build.starts_with("cygni/stack-build:"), "{a:?}");
        assert_eq!(a.build[18..], a.run[16..], "one key for both: {a:?}");
        assert_eq!(a, images_for("debian:bookworm-slim", bp.path()).unwrap());
        assert_ne!(a, images_for("debian:bookworm", bp.path()).unwrap());
        std::fs::write(bp.path().join("x/bin/compile"), "#!/bin/sh\necho\n").unwrap();
        assert_ne!(a, images_for("debian:bookworm-slim", bp.path()).unwrap());
    }

    #[test]
    fn pull_failures_are_recognised() {
        assert!(image::is_pull_failure(
            "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io: no such host"
        ));
        assert!(image::is_pull_failure(
            "pull access denied for cygni/run, repository does not exist"
        ));
        assert!(!image::is_pull_failure(
            "The command '/bin/sh -c false' returned a non-zero code: 1"
        ));
    }
}
