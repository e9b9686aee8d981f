//! Pushes the daemon makes itself: a `git push` from a local repository
//! into an app's repository, with the environment, hook and push token of
//! any push, so it runs exactly the pipeline a user's push runs and its
//! output is the push's `remote:` output.
//!
//! ```text
//! api/builds (tarball → commit) ──┐
//! service/sync (fetched commit) ──┴─► push() ── git push --progress REPO SRC:refs/heads/B
//!                                         └─ receive-pack ─► pre-receive hook ─► deploy
//!                                              remote: lines ─► on_line(line)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncBufReadExt;

use crate::actor::Actor;
use crate::git::GitEnv;
use crate::hook::{PushRegistry, PushSession};
use crate::names::AppName;

/// What running git as the SSH bridge does needs: its config, the hook's
/// socket and token registry, and this binary for the hook to run.
pub struct PushEnv {
    pub git_env: GitEnv,
    pub pushes: Arc<PushRegistry>,
    pub hook_socket: PathBuf,
    pub cygni_bin: PathBuf,
    pub data_dir: PathBuf,
}

/// One push the daemon makes.
pub struct LocalPush<'a> {
    pub app: &'a AppName,
    /// The app's repository.
    pub repo: &'a Path,
    /// The repository the commit is in (the app's own for a sync).
    pub from: &'a Path,
    pub src: &'a str,
    pub branch: &'a str,
    pub force: bool,
}

/// Output lines kept per push.
pub const MAX_LINES: usize = 20_000;

impl PushEnv {
    /// `git SUBCOMMAND` run in `cwd`, with the daemon's git environment
    /// and an author for commits the daemon makes.
    pub fn git(&self, actor: &Actor, cwd: &Path, args: &[&str]) -> tokio::process::Command {
        let mut c = self.git_env.command(args[0], &self.data_dir);
        c.args(&args[1..])
            .current_dir(cwd)
            .env("GIT_AUTHOR_NAME", &actor.name)
            .env("GIT_AUTHOR_EMAIL", "api@cygni")
            .env("GIT_COMMITTER_NAME", "cygni")
            .env("GIT_COMMITTER_EMAIL", "api@cygni");
        c
    }

    /// Push `what.src` (a ref or a commit of the repository at
    /// `what.from`) to `refs/heads/BRANCH` of the app's repository, as
    /// `actor`, forcing when `what.force` (a sync makes the branch what the
    /// source says). Each `remote:` line goes to `on_line` as it comes
    /// (`remote: ` removed, at most [`MAX_LINES`]). Ok(true): the push went
    /// through (deployed).
    pub async fn push(
        &self,
        actor: &Actor,
        what: LocalPush<'_>,
        mut on_line: impl FnMut(String),
    ) -> Result<bool, String> {
        let LocalPush {
            app,
            repo,
            from,
            src,
            branch,
            force,
        } = what;
        // The token ties the hook to this push's actor.
        let token = self.pushes.register(PushSession {
            app: app.clone(),
            actor: actor.clone(),
        });
        let repo_s = repo.to_string_lossy().into_owned();
        let spec = format!("{}{src}:refs/heads/{branch}", if force { "+" } else { "" });
        let mut push = self.git(actor, from, &["push", "--progress", &repo_s, &spec]);
        push.env("CYGNI_BIN", &self.cygni_bin)
            .env("CYGNI_HOOK_SOCKET", &self.hook_socket)
            .env("CYGNI_PUSH_TOKEN", &token.token)
            .stdin(std::process::Stdio::null());
        let mut child = push.spawn().map_err(|e| format!("cannot start git: {e}"))?;
        let stderr = child.stderr.take().ok_or("git pipes missing")?;
        let mut lines = tokio::io::BufReader::new(stderr).split(b'\n');
        let mut kept = 0usize;
        while let Ok(Some(raw)) = lines.next_segment().await {
            // git splits progress on \r; keep the last state of each line.
            let text = String::from_utf8_lossy(&raw);
            let last = text
                .rsplit('\r')
                .find(|s| !s.trim().is_empty())
                .unwrap_or("");
            if let Some(line) = last.strip_prefix("remote: ") {
                if kept < MAX_LINES {
                    on_line(line.trim_end().to_owned());
                    kept += 1;
                }
            }
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        drop(token);
        Ok(status.success())
    }
}
