//! git over HTTPS ("smart HTTP") at `/APP.git`: `info/refs`,
//! `git-upload-pack` and `git-receive-pack`, run as `git *-pack
//! --stateless-rpc` with the same environment, config, hook and push
//! token as the SSH bridge. So a push over HTTPS goes through the same
//! pre-receive hook and pipeline, prints the same `remote:` lines, and has
//! the same limits (size cap, fsck, no deletes).
//!
//! Credentials: HTTP Basic with any user name and a token as the
//! password. No anonymous access: a missing credential is a 401 that
//! makes git ask for one.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{header, Method, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::body;
use super::{Api, ApiError, Call};
use crate::hook::PushSession;
use crate::names::AppName;
use crate::proxy::ControlBody;
use crate::service::{Access, Actor, ServiceError, Source};

/// A gzip'd request (git compresses upload-pack negotiations) is
/// inflated in memory, up to this much.
const MAX_GZIP_BODY: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pack {
    Upload,
    Receive,
}

impl Pack {
    fn name(self) -> &'static str {
        match self {
            Pack::Upload => "upload-pack",
            Pack::Receive => "receive-pack",
        }
    }

    fn parse(service: &str) -> Option<Pack> {
        match service {
            "git-upload-pack" => Some(Pack::Upload),
            "git-receive-pack" => Some(Pack::Receive),
            _ => None,
        }
    }
}

pub(super) fn is_git_path(path: &str) -> bool {
    path.split('/')
        .nth(1)
        .is_some_and(|first| first.ends_with(".git"))
}

/// `/APP.git/REST` → (app, rest); a bad app name is a 404 (as for an
/// app that does not exist).
fn split_path(path: &str) -> Option<(AppName, &str)> {
    let rest = path.strip_prefix('/')?;
    let (repo, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let app = AppName::parse(repo.strip_suffix(".git")?).ok()?;
    Some((app, rest))
}

pub(super) async fn serve(api: &Api, call: Call, path: &str) -> Response<ControlBody> {
    match serve_inner(api, call, path).await {
        Ok(resp) => resp,
        Err(e) => git_error(e),
    }
}

/// git shows a plain-text body of a failed request to the user: one line.
fn git_error(e: ApiError) -> Response<ControlBody> {
    let mut resp = Response::new(body::full(format!("{}\n", e.message)));
    *resp.status_mut() = e.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if e.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"cygni\""),
        );
    }
    if let Some(secs) = e.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    resp
}

async fn serve_inner(api: &Api, call: Call, path: &str) -> Result<Response<ControlBody>, ApiError> {
    let Some((app, rest)) = split_path(path) else {
        return Err(ApiError::not_found("repository not found"));
    };
    let query = super::v1::Query::parse(call.req.uri().query());
    let (pack, advertise) = match (call.req.method(), rest) {
        (&Method::GET, "info/refs") => {
            let pack = query.get("service").and_then(Pack::parse).ok_or_else(|| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "only smart HTTP is served: use git 1.6.6 or later",
                )
            })?;
            (pack, true)
        }
        (&Method::POST, "git-upload-pack") => (Pack::Upload, false),
        (&Method::POST, "git-receive-pack") => (Pack::Receive, false),
        (_, "info/refs" | "git-upload-pack" | "git-receive-pack") => {
            return Err(
                ApiError::method_not_allowed().with_allow(if rest == "info/refs" {
                    "GET"
                } else {
                    "POST"
                }),
            )
        }
        _ => return Err(ApiError::not_found("repository not found")),
    };
    let actor = api
        .actor(
            call.req.headers(),
            call.req.method(),
            call.peer,
            Source::GitHttp,
        )
        .await?;
    authorize(api, &actor, &app, pack, advertise).await?;
    let repo = api.git.git_env.clone();
    let repo_path = api
        .service
        .platform
        .repos
        .create(&app)
        .map_err(|e| ApiError::from(ServiceError::from(e)))?;

    let mut cmd = repo.command(pack.name(), &api.git.data_dir);
    cmd.arg("--stateless-rpc");
    if advertise {
        cmd.arg("--advertise-refs");
    }
    cmd.arg(&repo_path);
    // Held until git exits: the hook's token is valid only for this push.
    let token = match (pack, advertise) {
        (Pack::Receive, false) => {
            let token = api.git.pushes.register(PushSession {
                app: app.clone(),
                actor: actor.clone(),
            });
            cmd.env("CYGNI_BIN", &api.git.cygni_bin)
                .env("CYGNI_HOOK_SOCKET", &api.git.hook_socket)
                .env("CYGNI_PUSH_TOKEN", &token.token);
            Some(token)
        }
        _ => None,
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| ApiError::internal(format!("cannot start git: {e}")))?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ApiError::internal("git pipes missing"));
    };

    // Request body → git's stdin (nothing for the advertisement).
    let gzip = call
        .req
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let peer = call.peer;
    let mut req_body = call.req.into_body();
    let feeder = tokio::spawn(async move {
        if advertise {
            return;
        }
        if gzip {
            if let Err(e) = feed_gzip(req_body, &mut stdin).await {
                tracing::info!(%peer, error = %e, "git http: bad request body");
            }
            return;
        }
        while let Some(frame) = req_body.frame().await {
            let Ok(frame) = frame else { return };
            if let Ok(data) = frame.into_data() {
                if stdin.write_all(&data).await.is_err() {
                    return;
                }
            }
        }
        // Dropping stdin closes git's input.
    });

    let content_type = if advertise {
        format!("application/x-git-{}-advertisement", pack.name())
    } else {
        format!("application/x-git-{}-result", pack.name())
    };
    let (mut resp, tx) = body::stream(StatusCode::OK, "application/octet-stream");
    if let Ok(v) = header::HeaderValue::from_str(&content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    tokio::spawn(async move {
        let _token = token;
        let mut client_gone = false;
        if advertise {
            let line = format!("# service=git-{}\n", pack.name());
            let pkt = format!("{:04x}{line}0000", line.len() + 4);
            client_gone = tx.send(Bytes::from(pkt)).await.is_err();
        }
        // git → client. When the client goes away, git's output is still
        // read to its end and dropped: git, the hook and the build behind
        // it must never block on a pipe nobody reads (as over SSH).
        let err_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
            // Drain the rest.
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            buf
        });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !client_gone && tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        client_gone = true;
                    }
                }
            }
        }
        let status = child.wait().await;
        feeder.abort();
        let err = err_task.await.unwrap_or_default();
        if !matches!(&status, Ok(s) if s.success()) {
            tracing::info!(
                %peer,
                status = ?status.ok().and_then(|s| s.code()),
                stderr = %String::from_utf8_lossy(&err).trim(),
                "git http: git {} ended badly",
                pack.name()
            );
        }
    });
    Ok(resp)
}

/// Fetching needs read access, pushing needs manage access; an admin's
/// first push to an unknown app creates it, as over SSH.
async fn authorize(
    api: &Api,
    actor: &Actor,
    app: &AppName,
    pack: Pack,
    advertise: bool,
) -> Result<(), ApiError> {
    let access = match pack {
        Pack::Upload => Access::Read,
        Pack::Receive => Access::Manage,
    };
    match api.service.app(actor, app, access).await {
        Ok(_) => Ok(()),
        Err(ServiceError::AppNotFound(_)) if pack == Pack::Receive && actor.is_admin() => {
            if advertise {
                api.service.create_app(actor, app).await?;
            }
            Ok(())
        }
        Err(e) => {
            if pack == Pack::Receive && advertise {
                // A refused push is audited like a refused SSH push.
                let message = e.to_string();
                api.service
                    .record(actor, "push", Some(app), String::new(), "denied", message)
                    .await;
            }
            Err(e.into())
        }
    }
}

async fn feed_gzip(body: Incoming, stdin: &mut tokio::process::ChildStdin) -> std::io::Result<()> {
    use std::io::Read;
    let bytes = http_body_util::Limited::new(body, MAX_GZIP_BODY as usize)
        .collect()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .to_bytes();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .take(MAX_GZIP_BODY)
        .read_to_end(&mut out)?;
    stdin.write_all(&out).await
}
