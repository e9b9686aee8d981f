//! Running git against a remote: `fetch` into an app's repository and
//! `ls-remote` for scheduled checks, with fixed arguments and no shell.
//!
//! Every run: an environment built from nothing (no system or user
//! config: `GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`, HOME an
//! empty directory Cygni owns), no prompts, only the URL's own protocol
//! allowed, no redirects, the checked address pinned, a time limit, and a
//! bound on what it may write (the pack being received) and print.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::url::{Scheme, SourceUrl};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot start git: {0}")]
    Spawn(std::io::Error),
    #[error("git gave up after {0}s")]
    Timeout(u64),
    #[error("the repository is over {0} MiB")]
    TooLarge(u64),
    /// git's own last error line, credentials removed.
    #[error("{0}")]
    Git(String),
}

/// How fetches run.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// An empty directory git gets as HOME (`DATA/sync/home`).
    pub home: PathBuf,
    pub timeout: Duration,
    /// The largest pack a fetch may receive.
    pub max_bytes: u64,
}

/// Lines of git output kept (progress included).
const MAX_OUTPUT_LINES: usize = 2_000;

impl Fetcher {
    fn command(
        &self,
        url: &SourceUrl,
        pinned: Option<IpAddr>,
        cwd: &Path,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("git");
        cmd.env_clear();
        let scheme = url.scheme().as_str();
        let mut configs = vec![
            "protocol.allow=never".to_owned(),
            format!("protocol.{scheme}.allow=always"),
            "http.followRedirects=false".to_owned(),
            // A stalled server does not hold a sync forever.
            "http.lowSpeedLimit=1000".to_owned(),
            "http.lowSpeedTime=30".to_owned(),
            "credential.helper=".to_owned(),
            "core.askPass=".to_owned(),
            "submodule.recurse=false".to_owned(),
            "transfer.fsckObjects=true".to_owned(),
            // Always keep what arrives as a pack, so its size can be watched.
            "fetch.unpackLimit=1".to_owned(),
            "core.hooksPath=/dev/null".to_owned(),
        ];
        // A literal address needs no pin: curl does not resolve it.
        if let (Some(ip), Scheme::Https | Scheme::Http, Some(host)) = (
            pinned,
            url.scheme(),
            url.host().filter(|h| h.parse::<IpAddr>().is_err()),
        ) {
            let addr = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            configs.push(format!("http.curloptResolve={host}:{}:{addr}", url.port()));
        }
        for c in &configs {
            cmd.arg("-c").arg(c);
        }
        if let Some((_, header)) = url.http_auth() {
            // Through the environment, not argv (see SourceUrl::http_auth).
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env("GIT_CONFIG_VALUE_0", header);
        }
        cmd.env("PATH", crate::git::SAFE_PATH)
            .env("HOME", &self.home)
            .env("LANG", "C.UTF-8")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("SSH_ASKPASS", "/bin/false")
            // ssh reads HOME/.ssh/config, which Cygni writes (see
            // `ssh_config`): no prompts, first-use host keys kept in the
            // data dir.
            .env("GIT_SSH_VARIANT", "ssh")
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Fetch `reference` of `url` into `repo` as `dest`, reporting git's
    /// progress lines to `on_line`. The ref must exist.
    pub async fn fetch(
        &self,
        url: &SourceUrl,
        pinned: Option<IpAddr>,
        repo: &Path,
        reference: &str,
        dest: &str,
        on_line: impl FnMut(String),
    ) -> Result<(), FetchError> {
        let mut cmd = self.command(url, pinned, repo);
        let spec = format!("+{reference}:{dest}");
        cmd.args([
            "fetch",
            "--no-tags",
            "--no-recurse-submodules",
            "--no-write-fetch-head",
            "--progress",
            "--",
            &git_url(url, pinned),
            &spec,
        ]);
        let watch = repo.join("objects").join("pack");
        self.run(cmd, url, Some(&watch), on_line).await.map(|_| ())
    }

    /// The commit `reference` points at on the remote, or None when the
    /// remote has no such ref.
    pub async fn remote_sha(
        &self,
        url: &SourceUrl,
        pinned: Option<IpAddr>,
        reference: &str,
    ) -> Result<Option<String>, FetchError> {
        let mut cmd = self.command(url, pinned, &self.home);
        cmd.args(["ls-remote", "--", &git_url(url, pinned), reference]);
        let out = self.run(cmd, url, None, |_| {}).await?;
        Ok(out.lines().find_map(|l| {
            let (sha, name) = l.split_once('\t')?;
            (name == reference && sha.len() >= 40).then(|| sha.to_owned())
        }))
    }

    /// HOME/.ssh/config for ssh:// sources (an admin allowed them): no
    /// prompts, host keys trusted on first use and kept beside it, and a
    /// deploy key at HOME/.ssh/id_ed25519 when the admin put one there.
    fn ssh_config(&self) {
        let dir = self.home.join(".ssh");
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let config = format!(
            "Host *\n  BatchMode yes\n  StrictHostKeyChecking accept-new\n  UserKnownHostsFile {}\n  IdentityFile {}\n  IdentitiesOnly yes\n",
            dir.join("known_hosts").display(),
            dir.join("id_ed25519").display()
        );
        let _ = std::fs::write(dir.join("config"), config);
    }

    /// Run git to the end within the bounds; its stdout on success.
    async fn run(
        &self,
        mut cmd: tokio::process::Command,
        url: &SourceUrl,
        watch: Option<&Path>,
        mut on_line: impl FnMut(String),
    ) -> Result<String, FetchError> {
        let _ = std::fs::create_dir_all(&self.home);
        self.ssh_config();
        let mut child = cmd.spawn().map_err(FetchError::Spawn)?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| FetchError::Git("git pipes missing".into()))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| FetchError::Git("git pipes missing".into()))?;
        let out_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            // ls-remote of one ref prints a line; more is not a repository.
            let _ = (&mut stdout).take(1 << 20).read_to_end(&mut buf).await;
            buf
        });
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last_error = String::new();
        let mut kept = 0usize;
        let mut pending = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        let outcome: Result<(), FetchError> = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    break Err(FetchError::Timeout(self.timeout.as_secs()));
                }
                _ = ticker.tick() => {
                    if let Some(dir) = watch {
                        if incoming_bytes(dir) > self.max_bytes {
                            break Err(FetchError::TooLarge(self.max_bytes >> 20));
                        }
                    }
                }
                n = stderr.read(&mut chunk) => match n {
                    Ok(0) | Err(_) => break Ok(()),
                    Ok(n) => {
                        pending.extend_from_slice(&chunk[..n]);
                        // Lines end in \n, progress updates in \r.
                        while let Some(pos) = pending.iter().position(|b| *b == b'\n' || *b == b'\r') {
                            let is_newline = pending[pos] == b'\n';
                            let line: Vec<u8> = pending.drain(..=pos).collect();
                            let text = url.scrub(String::from_utf8_lossy(&line[..line.len() - 1]).trim());
                            if text.is_empty() {
                                continue;
                            }
                            if text.starts_with("fatal:") || text.starts_with("error:") {
                                last_error = text.clone();
                            }
                            if is_newline && kept < MAX_OUTPUT_LINES {
                                kept += 1;
                                on_line(text);
                            }
                        }
                        if pending.len() > 64 * 1024 {
                            pending.clear();
                        }
                    }
                },
            }
        };
        if let Err(e) = outcome {
            let _ = child.kill().await;
            return Err(e);
        }
        let status = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(FetchError::Spawn(e)),
            Err(_) => {
                let _ = child.kill().await;
                return Err(FetchError::Timeout(self.timeout.as_secs()));
            }
        };
        let stdout = out_task.await.unwrap_or_default();
        if status.success() {
            return Ok(String::from_utf8_lossy(&stdout).into_owned());
        }
        let reason = last_error
            .trim_start_matches("fatal: ")
            .trim_start_matches("error: ")
            .chars()
            .take(300)
            .collect::<String>();
        Err(FetchError::Git(if reason.is_empty() {
            format!("git exited with {status}")
        } else {
            reason
        }))
    }
}

/// The URL on git's command line: for http(s) without the credentials
/// (they go in a header, through the environment).
fn git_url(url: &SourceUrl, pinned: Option<IpAddr>) -> String {
    match url.http_auth() {
        Some((bare, _)) => bare,
        None => url.for_git(pinned),
    }
}

/// Bytes of packs being received (`tmp_pack_*`) under `dir`.
fn incoming_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("tmp_pack_"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_and_env(cmd: &tokio::process::Command) -> (Vec<String>, Vec<(String, String)>) {
        let std = cmd.as_std();
        let args = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let env = std
            .get_envs()
            .filter_map(|(k, v)| {
                Some((
                    k.to_string_lossy().into_owned(),
                    v?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        (args, env)
    }

    /// git is pinned to the checked address, allowed only the URL's
    /// protocol, follows no redirects, reads no config of the host's, and
    /// gets credentials through its environment, never argv.
    #[test]
    fn git_runs_pinned_bounded_and_without_credentials_in_argv() {
        let f = Fetcher {
            home: PathBuf::from("/nonexistent/home"),
            timeout: Duration::from_secs(5),
            max_bytes: 1 << 20,
        };
        let url = SourceUrl::parse("https://bob:s3cret@example.org/r.git").unwrap();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let mut cmd = f.command(&url, Some(ip), Path::new("/"));
        cmd.args(["fetch", "--", &git_url(&url, Some(ip))]);
        let (args, env) = args_and_env(&cmd);
        let joined = args.join(" ");
        for needle in [
            "-c protocol.allow=never",
            "-c protocol.https.allow=always",
            "-c http.followRedirects=false",
            "-c http.curloptResolve=example.org:443:203.0.113.7",
            "https://example.org/r.git",
        ] {
            assert!(joined.contains(needle), "{needle:?} not in {joined}");
        }
        assert!(!joined.contains("s3cret"), "{joined}");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GIT_CONFIG_NOSYSTEM"), Some("1"));
        assert_eq!(get("GIT_CONFIG_GLOBAL"), Some("/dev/null"));
        assert_eq!(get("GIT_TERMINAL_PROMPT"), Some("0"));
        assert_eq!(get("HOME"), Some("/nonexistent/home"));
        assert_eq!(get("GIT_CONFIG_KEY_0"), Some("http.extraHeader"));
        assert!(get("GIT_CONFIG_VALUE_0").is_some_and(|v| v.starts_with("Authorization: Basic ")));

        let v6 = SourceUrl::parse("https://[2606:4700::1111]:8443/r.git").unwrap();
        let ip6: IpAddr = "2606:4700::1111".parse().unwrap();
        let (args, _) = args_and_env(&f.command(&v6, Some(ip6), Path::new("/")));
        assert!(
            !args.iter().any(|a| a.starts_with("http.curloptResolve")),
            "a literal address is dialled as it is: {args:?}"
        );
        let ssh = SourceUrl::parse("ssh://git@example.org/r.git").unwrap();
        let (args, _) = args_and_env(&f.command(&ssh, Some(ip), Path::new("/")));
        assert!(
            args.iter().any(|a| a == "protocol.ssh.allow=always"),
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a.starts_with("http.curloptResolve")),
            "{args:?}"
        );
        assert_eq!(git_url(&ssh, Some(ip)), "ssh://git@203.0.113.7/r.git");
    }
}
