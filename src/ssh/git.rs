//! The git bridge: an SSH channel on one side, `git receive-pack` or
//! `git upload-pack` on the other.
//!
//! The repository argument is parsed as an [`AppName`] before it touches a
//! path or a process, so `'../../etc'` or `'--upload-pack=touch x'` never
//! get further than the parser. git runs with the repo's absolute path, an
//! environment built from nothing, and config files Cygni owns.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::commands::CommandError;
use super::terminal::{Cr, Escaper};
use super::{visible_app, Exec};
use crate::hook::PushSession;
use crate::names::AppName;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Receive,
    Upload,
}

/// `'APP'`, `'/APP'`, `'APP.git'` and `'/APP.git'` all name the app `APP`.
pub fn parse_repo_arg(arg: &str) -> Result<AppName, CommandError> {
    let trimmed = arg.strip_prefix('/').unwrap_or(arg);
    let trimmed = trimmed.strip_suffix(".git").unwrap_or(trimmed);
    AppName::parse(trimmed).map_err(|_| {
        CommandError::Invalid(format!(
            "invalid repository {arg:?}: use ssh://cygni@HOST:PORT/APP where APP is a valid app name"
        ))
    })
}

/// Serve one git request; returns the exit status for the channel.
pub(crate) async fn serve(exec: &mut Exec, words: &[String]) -> u32 {
    match serve_inner(exec, words).await {
        Ok(status) => status,
        Err(e) => {
            exec.stderr(format!("error: {e}\n")).await;
            1
        }
    }
}

async fn serve_inner(exec: &mut Exec, words: &[String]) -> Result<u32, CommandError> {
    let service = match words[0].as_str() {
        "git-receive-pack" => Service::Receive,
        _ => Service::Upload,
    };
    let [_, arg] = words else {
        return Err(CommandError::Invalid(format!(
            "{} takes exactly one repository argument",
            words[0]
        )));
    };
    let app = parse_repo_arg(arg)?;
    let ctx = exec.ctx.clone();

    // An admin's first push to an unknown app creates it.
    match visible_app(&ctx, &exec.identity, &app).await {
        Ok(_) => {}
        Err(CommandError::AppNotFound(_))
            if service == Service::Receive && exec.identity.is_admin() =>
        {
            ctx.service
                .create_app(&exec.identity.via(crate::service::Source::GitSsh), &app)
                .await?;
            exec.stderr(format!("-----> Created app {app}\n")).await;
        }
        Err(e) => return Err(e),
    }
    let repo_path = ctx.repos.create(&app)?;

    let mut cmd = ctx.git_env.command(
        match service {
            Service::Receive => "receive-pack",
            Service::Upload => "upload-pack",
        },
        &ctx.data_dir,
    );
    cmd.arg(&repo_path);
    if let Some(proto) = &exec.git_protocol {
        cmd.env("GIT_PROTOCOL", proto);
    }
    // Held until git exits: the hook's token is valid only for this push.
    let _token = match service {
        Service::Receive => {
            let token = ctx.pushes.register(PushSession {
                app: app.clone(),
                actor: exec.identity.via(crate::service::Source::GitSsh),
            });
            cmd.env("CYGNI_BIN", &ctx.cygni_bin)
                .env("CYGNI_HOOK_SOCKET", &ctx.hook_socket)
                .env("CYGNI_PUSH_TOKEN", &token.token);
            Some(token)
        }
        Service::Upload => None,
    };

    let mut child = cmd
        .spawn()
        .map_err(|e| CommandError::Internal(format!("cannot start git: {e}")))?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(CommandError::Internal("git pipes missing".into()));
    };

    // client → git stdin, until the client's EOF. Runs beside the copies
    // below; it ends by itself when stdin ends or git stops reading.
    let mut client_in = std::mem::replace(&mut exec.stdin, tokio::sync::mpsc::channel(1).1);
    let to_git = tokio::spawn(async move {
        while let Some(chunk) = client_in.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Dropping stdin closes git's input.
        drop(stdin);
        // Keep draining so the channel pump never blocks on us.
        while client_in.recv().await.is_some() {}
    });

    // git → client. When the client goes away, git's output is still read
    // to its end and dropped: git, the hook and the build behind it must
    // never block on a pipe nobody reads. The push then runs to its end
    // (ARCHITECTURE.md, "A push").
    let exec = &*exec;
    tokio::join!(
        relay(exec, &mut stdout, Stream::Protocol),
        relay(exec, &mut stderr, Stream::Messages),
    );
    let status = child
        .wait()
        .await
        .map_err(|e| CommandError::Internal(format!("waiting for git: {e}")))?;
    to_git.abort();
    Ok(status.code().map(|c| c as u32).unwrap_or(1))
}

/// What a git pipe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// stdout: the pack protocol, byte for byte.
    Protocol,
    /// stderr: messages for a person, escaped like any other terminal text
    /// (`\r` kept: git's progress uses it).
    Messages,
}

/// Copy one of git's pipes to the client until git closes it. Once the
/// client is gone, keep reading and drop what comes.
async fn relay(exec: &Exec, from: &mut (impl AsyncRead + Unpin), stream: Stream) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut escaper = (stream == Stream::Messages).then(|| Escaper::new(Cr::Keep));
    let mut gone = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if gone {
            continue;
        }
        let delivered = match &mut escaper {
            None => exec.stdout_raw(buf[..n].to_vec()).await,
            Some(e) => {
                let shown = e.push(&buf[..n]);
                shown.is_empty() || exec.stderr_raw(shown).await
            }
        };
        if !delivered {
            gone = true;
            tracing::info!(peer = %exec.peer, ?stream, "client gone; dropping git's output until it exits");
        }
    }
    if let (Some(e), false) = (escaper, gone) {
        let rest = e.finish();
        if !rest.is_empty() {
            exec.stderr_raw(rest).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_args() {
        for ok in ["shop", "/shop", "shop.git", "/shop.git"] {
            assert_eq!(parse_repo_arg(ok).unwrap().as_str(), "shop", "{ok}");
        }
        for bad in [
            "../../etc",
            "/../shop",
            "--upload-pack=touch x",
            "shop/../x",
            "~/shop",
            "",
            "/",
            "Shop",
            "shop.git.git",
        ] {
            let err = parse_repo_arg(bad).unwrap_err().to_string();
            assert!(err.contains("invalid repository"), "{bad:?}: {err}");
        }
    }
}
