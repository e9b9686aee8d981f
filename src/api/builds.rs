//! Deploys from an uploaded source tarball (`POST /api/v1/apps/{app}/builds`,
//! in the spirit of Heroku's source endpoint).
//!
//! The tarball becomes a commit on top of the app's deploy branch, and
//! that commit is pushed into the app's repository by `git push` with the
//! same environment, hook and push token as any push ([`crate::local_push`]). So it runs exactly
//! the pipeline a `git push` runs (build, release, checks, routes), its
//! output is the push's `remote:` output, and the repository keeps the
//! history. The request returns 202 with a build record to poll.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use super::body::json as reply;
use super::{Api, ApiError};
use crate::names::AppName;
use crate::proxy::ControlBody;
use crate::service::{Access, Actor};

/// The largest tarball accepted.
const MAX_TARBALL: u64 = 512 * 1024 * 1024;
/// Build records kept in memory (oldest go first).
const KEPT: usize = 100;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Build {
    pub id: String,
    pub app: AppName,
    /// `pending`, then `succeeded` or `failed`.
    pub status: &'static str,
    /// The release it made, once live.
    pub release: Option<u32>,
    /// What a push would print (`remote: ` removed), as it comes.
    pub output: Vec<String>,
    pub error: Option<String>,
    #[serde(skip)]
    seq: u64,
}

#[derive(Default)]
pub struct Builds {
    map: Mutex<HashMap<String, Build>>,
    next: std::sync::atomic::AtomicU64,
}

impl Builds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Build>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, app: &AppName) -> Build {
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{:016x}", rand::random::<u64>());
        let build = Build {
            id: id.clone(),
            app: app.clone(),
            status: "pending",
            release: None,
            output: Vec::new(),
            error: None,
            seq,
        };
        let mut map = self.lock();
        if map.len() >= KEPT {
            if let Some(oldest) = map
                .values()
                .filter(|b| b.status != "pending")
                .min_by_key(|b| b.seq)
                .map(|b| b.id.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id, build.clone());
        build
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Build)) {
        if let Some(b) = self.lock().get_mut(id) {
            f(b);
        }
    }
}

pub(super) async fn create(
    api: &Api,
    actor: &Actor,
    app: &AppName,
    req: Request<Incoming>,
) -> Result<Response<ControlBody>, ApiError> {
    let record = api.service.app(actor, app, Access::Manage).await?;
    let branch = record.deploy_branch.unwrap_or_else(|| "main".to_owned());
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&api.git.data_dir)
        .map_err(|e| ApiError::internal(format!("cannot make a work dir: {e}")))?;
    let tarball = work.path().join("source.tar.gz");
    receive(req, &tarball).await?;
    let build = api.builds.insert(app);
    let id = build.id.clone();
    let api_ref = api.self_arc()?;
    let (actor, app) = (actor.clone(), app.clone());
    tokio::spawn(async move {
        let result = run(&api_ref, &actor, &app, &branch, work.path(), &tarball, &id).await;
        let release = match &result {
            Ok(()) => latest_live(&api_ref, &app).await,
            Err(_) => None,
        };
        api_ref.builds.update(&id, |b| match result {
            Ok(()) => {
                b.status = "succeeded";
                b.release = release;
            }
            Err(e) => {
                b.status = "failed";
                b.error = Some(e);
            }
        });
        drop(work);
    });
    Ok(reply(StatusCode::ACCEPTED, &build))
}

pub(super) async fn get(
    api: &Api,
    actor: &Actor,
    app: &AppName,
    id: &str,
) -> Result<Response<ControlBody>, ApiError> {
    api.service.app(actor, app, Access::Read).await?;
    let found = api.builds.lock().get(id).filter(|b| &b.app == app).cloned();
    match found {
        Some(b) => Ok(reply(StatusCode::OK, &b)),
        None => Err(ApiError::not_found(format!("no build {id:?} of {app}"))),
    }
}

/// Stream the body to `path`, refusing more than [`MAX_TARBALL`].
async fn receive(req: Request<Incoming>, path: &Path) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?;
    let mut body = req.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::bad_request("the upload was cut short"))?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total > MAX_TARBALL {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the tarball is over {} MiB", MAX_TARBALL >> 20),
                ));
            }
            file.write_all(&data)
                .await
                .map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?;
        }
    }
    if total == 0 {
        return Err(ApiError::invalid(
            "the body must be a .tar.gz of the source",
        ));
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?;
    Ok(())
}

/// Unpack `tarball` into `dir/src` (a single top-level directory is the
/// root, as in GitHub's archives). Entries that would land outside are
/// refused by `unpack_in`.
fn unpack(tarball: &Path, dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("src");
    std::fs::create_dir(&src).map_err(|e| e.to_string())?;
    let file = std::fs::File::open(tarball).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_permissions(false);
    let entries = archive
        .entries()
        .map_err(|e| format!("the body is not a readable .tar.gz archive: {e}"))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| format!("the body is not a readable .tar.gz archive: {e}"))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            continue;
        }
        let inside = entry
            .unpack_in(&src)
            .map_err(|e| format!("cannot unpack the archive: {e}"))?;
        if !inside {
            return Err("the archive has a path outside its root".into());
        }
    }
    let children: Vec<_> = std::fs::read_dir(&src)
        .map_err(|e| e.to_string())?
        .flatten()
        .collect();
    match children.as_slice() {
        [] => Err("the archive is empty".into()),
        [only] if only.file_type().is_ok_and(|t| t.is_dir()) => Ok(only.path()),
        _ => Ok(src),
    }
}

async fn run(
    api: &Arc<Api>,
    actor: &Actor,
    app: &AppName,
    branch: &str,
    work: &Path,
    tarball: &Path,
    id: &str,
) -> Result<(), String> {
    let say = |line: String| api.builds.update(id, |b| b.output.push(line));
    say(format!("-----> Unpacking the source of {app}"));
    let (t, w) = (tarball.to_owned(), work.to_owned());
    let src = tokio::task::spawn_blocking(move || unpack(&t, &w))
        .await
        .map_err(|e| e.to_string())??;
    let repo = api.service.platform.repos.path(app);
    let git = |args: &[&str]| api.git.git(actor, &src, args);
    let quiet = |mut c: tokio::process::Command| async move {
        c.output()
            .await
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !quiet(git(&["init", "-q"])).await {
        return Err("cannot prepare the commit (git init)".into());
    }
    let repo_s = repo.to_string_lossy().into_owned();
    let refspec = format!("refs/heads/{branch}");
    // On top of the branch, when it exists: the repo keeps its history.
    if quiet(git(&["fetch", "-q", "--depth=1", &repo_s, &refspec])).await {
        quiet(git(&["reset", "-q", "--soft", "FETCH_HEAD"])).await;
    }
    if !quiet(git(&["add", "-A"])).await {
        return Err("cannot prepare the commit (git add)".into());
    }
    let message = format!("Build {id} uploaded by {}", actor.name);
    if !quiet(git(&["commit", "-q", "--allow-empty", "-m", &message])).await {
        return Err("cannot prepare the commit (git commit)".into());
    }
    // The push itself: receive-pack, the pre-receive hook and the deploy,
    // as for any push.
    let pushed = api
        .git
        .push(
            actor,
            crate::local_push::LocalPush {
                app,
                repo: &repo,
                from: &src,
                src: "HEAD",
                branch,
                force: false,
            },
            say,
        )
        .await?;
    if pushed {
        Ok(())
    } else {
        Err("the deploy failed: see the output".into())
    }
}

async fn latest_live(api: &Api, app: &AppName) -> Option<u32> {
    let a = app.clone();
    api.service
        .db
        .call(move |c| crate::state::releases::live(c, &a))
        .await
        .ok()
        .flatten()
        .map(|r| r.version)
}
