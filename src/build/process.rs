//! Running one build step: a program with its arguments as arguments, a
//! clean environment, the build user when the daemon is root, its own
//! process group, and a deadline.
//!
//! The process group is what makes deadlines and cleanup real: a build
//! script's children (npm, pip, go) inherit it, so one `killpg` stops the
//! whole step, and no stray process keeps a pipe open or outlives its build.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::Sender;

use super::BuildError;

/// `PATH` for build steps when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest line forwarded as one message: a step printing megabytes without
/// a newline must not grow one buffer without bound.
const MAX_LINE: usize = 16 * 1024;

/// Most stdout kept from a captured step (`bin/detect`, `bin/release`).
const MAX_CAPTURE: u64 = 64 * 1024;

/// How long output is still read once a step has ended and its group has
/// been killed. Only a process that left the group (setsid) can hold the
/// pipe open that long; it is not waited for.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How often a blocking wait checks on its step.
const POLL: Duration = Duration::from_millis(5);

/// Where and as whom the steps of one build run, and where their output goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    /// The build dir: the working directory of every step.
    pub cwd: &'a Path,
    /// `HOME` for the steps: writable by the build user, outside the slug.
    pub home: &'a Path,
    pub run_as: Option<(u32, u32)>,
    pub output: &'a Sender<Vec<u8>>,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Exited(ExitStatus),
    TimedOut,
}

/// A captured step's result.
#[derive(Debug)]
pub(crate) struct Captured {
    pub ended: Ended,
    /// Its stdout, at most [`MAX_CAPTURE`] bytes.
    pub stdout: Vec<u8>,
}

/// One program to run, built up like a `Command` but with the environment
/// cleared from the start: a step sees `PATH`, `HOME`, `LANG`, `STACK` and
/// what its caller adds, never the daemon's own variables.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    program: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
    run_as: Option<(u32, u32)>,
}

impl Step {
    pub fn new(
        program: impl Into<PathBuf>,
        cwd: &Path,
        home: &Path,
        run_as: Option<(u32, u32)>,
    ) -> Step {
        let path = std::env::var_os("PATH")
            .filter(|path| !path.is_empty())
            .unwrap_or_else(|| DEFAULT_PATH.into());
        Step {
            program: program.into(),
            args: Vec::new(),
            cwd: cwd.to_owned(),
            env: vec![
                ("PATH".into(), path),
                ("HOME".into(), home.into()),
                ("LANG".into(), "C.UTF-8".into()),
                // Heroku buildpacks read STACK to pick binaries; ours say
                // which platform they run on.
                ("STACK".into(), "cygni".into()),
            ],
            run_as,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Step {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Sets a variable, replacing an earlier value of the same name.
    // Only Nixpacks steps take extra variables (buildpacks read ENV_DIR).
    #[cfg_attr(not(feature = "nixpacks"), allow(dead_code))]
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Step {
        let name = name.as_ref();
        self.env.retain(|(existing, _)| existing != name);
        self.env.push((name.to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The value a variable has so far.
    #[cfg_attr(not(feature = "nixpacks"), allow(dead_code))]
    pub fn env_value(&self, name: &str) -> Option<&OsStr> {
        self.env
            .iter()
            .find(|(existing, _)| existing == name)
            .map(|(_, value)| value.as_os_str())
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            // When the daemon is root, std also drops the supplementary
            // groups before setuid, so the step keeps none of root's.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn spawn_error(&self, source: std::io::Error) -> BuildError {
        BuildError::Spawn {
            program: self.program.clone(),
            source,
        }
    }

    /// Runs a short step to completion, blocking, and keeps its stdout;
    /// stderr is dropped (detect and release speak on stdout). For
    /// `bin/detect`, which the synchronous [`super::detect`] runs, and
    /// `bin/release`.
    pub fn run_captured(&self, timeout: Duration) -> Result<Captured, BuildError> {
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|err| self.spawn_error(err))?;
        let mut group = ProcessGroup::of(child.id());
        let stdout = child.stdout.take().ok_or_else(|| BuildError::Internal {
            reason: "a piped stdout was not set up".into(),
        })?;
        // Read on another thread so a chatty step cannot block on a full
        // pipe while this one waits for it to exit.
        let (sender, received) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.take(MAX_CAPTURE).read_to_end(&mut buf);
            let _ = sender.send(buf);
        });

        let deadline = Instant::now() + timeout;
        let ended = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ended::Exited(status),
                Ok(None) if Instant::now() >= deadline => break Ended::TimedOut,
                Ok(None) => std::thread::sleep(POLL),
                Err(source) => {
                    return Err(BuildError::Io {
                        action: "wait for",
                        path: self.program.clone(),
                        source,
                    })
                }
            }
        };
        group.kill();
        if ended == Ended::TimedOut {
            // Reap it; it was just killed, so this returns at once.
            let _ = child.wait();
        }
        let stdout = received.recv_timeout(DRAIN_GRACE).unwrap_or_default();
        Ok(Captured { ended, stdout })
    }

    /// Runs a step, forwarding its stdout and stderr, merged in the order
    /// they were written, to `output` line by line as they come, each line
    /// after `indent` (buildpacks indent their own output; other steps'
    /// output is indented under the `----->` line that introduced them).
    pub async fn run_streamed(
        &self,
        timeout: Duration,
        output: &Sender<Vec<u8>>,
        indent: &str,
    ) -> Result<Ended, BuildError> {
        let io_error = |action, source| BuildError::Io {
            action,
            path: self.program.clone(),
            source,
        };
        // One pipe for both streams, as `2>&1` would: a build's errors make
        // sense only next to the lines around them.
        let (writer, reader) =
            tokio::net::unix::pipe::pipe().map_err(|err| io_error("create a pipe for", err))?;
        let stdout: OwnedFd = writer
            .into_blocking_fd()
            .map_err(|err| io_error("create a pipe for", err))?;
        let stderr = stdout
            .try_clone()
            .map_err(|err| io_error("create a pipe for", err))?;
        let mut child = {
            let mut cmd = tokio::process::Command::from(self.command());
            cmd.stdout(stdout).stderr(stderr).kill_on_drop(true);
            cmd.spawn().map_err(|err| self.spawn_error(err))?
            // `cmd` drops here with this process's copies of the write end,
            // so the reader sees EOF once the step's processes are gone.
        };
        let mut group = ProcessGroup::of(child.id().unwrap_or(0));

        let deadline = tokio::time::Instant::now() + timeout;
        let wait = async {
            let waited = tokio::time::timeout_at(deadline, child.wait()).await;
            // The step's leftovers, or on timeout the step itself.
            group.kill();
            match waited {
                Ok(Ok(status)) => Ok(Ended::Exited(status)),
                Ok(Err(source)) => Err(io_error("wait for", source)),
                Err(_elapsed) => {
                    let _ = child.wait().await;
                    Ok(Ended::TimedOut)
                }
            }
        };
        let forward = tokio::time::timeout_at(
            deadline + DRAIN_GRACE,
            forward_lines(reader, output, indent),
        );
        let (ended, forwarded) = tokio::join!(wait, forward);
        if let Ok(Err(source)) = forwarded {
            return Err(io_error("read the output of", source));
        }
        ended
    }
}

/// Sends everything `reader` yields to `output`, one message per line.
async fn forward_lines(
    reader: tokio::net::unix::pipe::Receiver,
    output: &Sender<Vec<u8>>,
    indent: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let start = indent.len();
    loop {
        let available = reader.fill_buf().await?;
        if line.is_empty() {
            line.extend_from_slice(indent.as_bytes());
        }
        if available.is_empty() {
            if line.len() > start {
                line.push(b'\n');
                send(output, line).await;
            }
            return Ok(());
        }
        let (taken, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (end + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if complete || line.len() >= start + MAX_LINE {
            send(output, std::mem::take(&mut line)).await;
        }
    }
}

async fn send(output: &Sender<Vec<u8>>, line: Vec<u8>) {
    // A gone receiver (the pusher hung up) is no reason to stop reading:
    // the step would block on a full pipe.
    let _ = output.send(line).await;
}

/// A step's process group, killed when dropped (a cancelled build leaves
/// nothing running) or explicitly once the step has ended.
#[derive(Debug)]
struct ProcessGroup(Option<libc::pid_t>);

impl ProcessGroup {
    /// The group a child spawned with `process_group(0)` leads.
    fn of(pid: u32) -> ProcessGroup {
        ProcessGroup(libc::pid_t::try_from(pid).ok().filter(|&pid| pid > 0))
    }

    /// Kills every process left in the group, once.
    ///
    /// Called right after the leader is reaped: its id could in theory be
    /// reused in between, but a new process would have to take it and make
    /// it a group id within microseconds.
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: killpg only sends a signal; it has no memory-safety
            // preconditions. ESRCH (the group is already gone) is fine.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Step {
        let dir = std::env::temp_dir();
        Step::new("/bin/sh", &dir, &dir, None).arg("-c").arg(script)
    }

    #[test]
    fn environment_is_clean() {
        let dir = std::env::temp_dir();
        let out = Step::new("env", &dir, Path::new("/nonexistent-home"), None)
            .env("EXTRA", "1")
            .env("EXTRA", "2")
            .run_captured(Duration::from_secs(10))
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let mut names: Vec<_> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
        names.sort();
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
        assert_eq!(
            names,
            [
                ("EXTRA", "2"),
                ("HOME", "/nonexistent-home"),
                ("LANG", "C.UTF-8"),
                ("PATH", path.as_str()),
                ("STACK", "cygni"),
            ]
        );
    }

    #[test]
    fn captured_step_times_out_and_its_group_dies() {
        let started = Instant::now();
        let out = sh("sleep 30 & sleep 30")
            .run_captured(Duration::from_millis(200))
            .unwrap();
        assert_eq!(out.ended, Ended::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn streamed_step_merges_stderr_and_streams() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let step = sh("echo one; echo two >&2; printf 'no newline'");
        let ended = step
            .run_streamed(Duration::from_secs(10), &tx, "  ")
            .await
            .unwrap();
        assert!(matches!(ended, Ended::Exited(s) if s.success()));
        drop(tx);
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(String::from_utf8(line).unwrap());
        }
        assert_eq!(lines, ["  one\n", "  two\n", "  no newline\n"]);
    }

    #[tokio::test]
    async fn streamed_step_times_out_even_with_a_background_child() {
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let started = Instant::now();
        let ended = sh("sleep 30 & sleep 30")
            .run_streamed(Duration::from_millis(200), &tx, "")
            .await
            .unwrap();
        assert_eq!(ended, Ended::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn leftover_background_processes_do_not_hold_the_step() {
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let started = Instant::now();
        let ended = sh("sleep 30 & echo done")
            .run_streamed(Duration::from_secs(20), &tx, "")
            .await
            .unwrap();
        assert!(matches!(ended, Ended::Exited(s) if s.success()));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let dir = std::env::temp_dir();
        let err = Step::new("/nonexistent/bin/detect", &dir, &dir, None)
            .run_captured(Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(err, BuildError::Spawn { .. }), "{err:?}");
    }
}
