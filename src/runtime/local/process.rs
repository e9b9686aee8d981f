//! Process groups: spawn one command in a group of its own, learn when its
//! leader exits, signal the whole group, and reap it.
//!
//! ```text
//! spawn ──► [spawner thread] fork: setgid, setgroups(0), setuid, chdir,
//!              │                   setpgid(0,0), PDEATHSIG, exec
//!              ▼
//!         ProcessGroup ──► exited()  (pidfd readable: the leader is a zombie)
//!              │       ──► signal(-pgid)
//!              └─────────► reap()    (SIGKILL the group, then waitpid)
//! ```
//!
//! One invariant makes group signals safe: the leader is reaped only after
//! the group has been killed. Until it is reaped its zombie holds its pid, so
//! `-pgid` cannot name some unrelated group that reused the number.
//!
//! Why a dedicated spawner thread: `PR_SET_PDEATHSIG` fires when the
//! *thread* that forked the child ends, not the process. Tokio's blocking
//! threads end after being idle, so a child forked from one would be killed
//! seconds later. The spawner thread lives as long as anything this module
//! started may run (every group holds an `Arc` to it), so the death signal
//! means exactly "the daemon is gone".

use std::ffi::OsString;
use std::fmt;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::cgroup::{self, Cgroup, Cgroups};
use super::RunAs;

/// How often the leader is polled for exit on kernels without pidfd (< 5.3).
const EXIT_POLL: Duration = Duration::from_millis(100);

/// Everything needed to start one process: no shell is added here.
#[derive(Debug, Clone)]
pub(super) struct Launch {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// The whole environment: nothing is inherited from the daemon.
    pub env: Vec<(OsString, OsString)>,
    pub run_as: Option<RunAs>,
    /// Where each process gets a cgroup of its own, named after `name`
    /// (None: a process group only; see `cgroup`).
    pub cgroups: Option<Arc<Cgroups>>,
    /// The instance (`shop.web.1`) or one-off it runs, for its cgroup.
    pub name: String,
}

impl Launch {
    /// A fresh cgroup for one process of this launch; without one (none
    /// configured, or it cannot be made) the process runs in its group only.
    fn cgroup(&self) -> Option<Cgroup> {
        let cgroups = self.cgroups.as_ref()?;
        match cgroups.create(&self.name) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(instance = %self.name, error = %e, "cannot create a cgroup; the process runs in its process group only");
                None
            }
        }
    }
}

/// Owns the thread every child is forked from; see the module docs.
pub(super) struct Spawner {
    jobs: mpsc::Sender<Job>,
}

type Job = (Command, oneshot::Sender<io::Result<Child>>);

impl Spawner {
    pub fn new() -> io::Result<Spawner> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cygni-spawner".into())
            .spawn(move || {
                // Ends when the last Spawner handle is dropped.
                for (mut command, reply) in queue {
                    let spawned = command.spawn();
                    // Closes the parent's copies of the child's pipe ends.
                    drop(command);
                    if let Err(Ok(child)) = reply.send(spawned) {
                        // The caller went away while we forked: nobody owns
                        // this child, so end it now rather than leak it.
                        kill_and_reap(child);
                    }
                }
            })?;
        Ok(Spawner { jobs })
    }

    async fn spawn(&self, command: Command) -> io::Result<Child> {
        let gone = || io::Error::other("the spawner thread is gone");
        let (reply, child) = oneshot::channel();
        self.jobs.send((command, reply)).map_err(|_| gone())?;
        child.await.map_err(|_| gone())?
    }
}

/// Starts `launch` in a new process group, its stdout and stderr both on
/// the returned pipe (one pipe, so lines keep the order they were written in).
pub(super) async fn spawn(
    spawner: &Arc<Spawner>,
    launch: &Launch,
) -> io::Result<(ProcessGroup, pipe::Receiver)> {
    let (read, write) = pipe_cloexec()?;
    let cgroup = launch.cgroup();
    let mut command = command_for(launch, false, cgroup.as_ref());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(write.try_clone()?))
        .stderr(Stdio::from(write))
        .process_group(0);
    let child = spawn_in(spawner, command, cgroup.as_ref()).await?;
    let group = ProcessGroup::new(child, spawner, cgroup);
    // From here on, an error drops `group`, which kills it.
    let output = pipe::Receiver::from_owned_fd(read)?;
    Ok((group, output))
}

/// Spawn `command`; if it fails, its unused cgroup goes too.
async fn spawn_in(
    spawner: &Arc<Spawner>,
    command: Command,
    cgroup: Option<&Cgroup>,
) -> io::Result<Child> {
    let child = spawner.spawn(command).await;
    if child.is_err() {
        if let Some(c) = cgroup {
            c.kill();
        }
    }
    child
}

/// The command for `launch`, with everything every child gets: a cleared
/// environment, its cgroup, the privilege drop, and the death signal. A
/// `session_leader` also becomes the leader of a new session whose
/// controlling terminal is its stdin (a pty's slave side).
fn command_for(launch: &Launch, session_leader: bool, cgroup: Option<&Cgroup>) -> Command {
    let mut command = Command::new(&launch.program);
    command
        .args(&launch.args)
        .current_dir(&launch.cwd)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)));
    let drop_privileges = launch.run_as.as_ref().map(|r| (r.uid, r.gid));
    let cgroup_procs = cgroup.map(Cgroup::procs_fd);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec, so it only makes
    // async-signal-safe calls (write, setgroups, setgid, setuid, prctl,
    // getppid, getgroups, setsid, ioctl) and does not allocate: io::Error
    // from an OS code is not heap allocated.
    unsafe {
        command.pre_exec(move || {
            // The cgroup first, while still the daemon's user: moving a
            // process needs write access that the app's user lacks.
            if let Some(fd) = cgroup_procs {
                cgroup::join_in_child(fd)?;
            }
            // Then the privilege drop, here rather than through
            // Command::uid (which runs before this closure): groups, gid,
            // uid, in that order, no supplementary groups.
            if let Some((uid, gid)) = drop_privileges {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            // After setuid, which clears it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the death signal was armed.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if drop_privileges.is_some() && libc::getgroups(0, std::ptr::null_mut()) != 0 {
                // Supplementary groups survived the switch (no CAP_SETGID?):
                // root's groups must not reach an app.
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            if session_leader {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
}

/// How an attached one-off talks to its client.
#[derive(Debug, Clone, Copy)]
pub(super) enum Terminal {
    /// stdin, and stdout+stderr merged, on pipes.
    Pipes,
    /// A pseudo-terminal of this size: the command is a session leader with
    /// the pty as its controlling terminal, as under `ssh -t`.
    Pty { cols: u16, rows: u16 },
}

/// The client's side of an attached one-off: what it prints, and its stdin.
pub(super) struct Attached {
    pub output: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    pub input: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    /// The pty's master side, for resizing it (None on pipes).
    pub pty: Option<OwnedFd>,
}

/// Tell a pty (by its master side) its new size; the kernel sends the
/// foreground process group SIGWINCH.
pub(super) fn resize_pty(master: &OwnedFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a pointer we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Like [`spawn`], with stdin connected, on pipes or on a pty.
pub(super) async fn spawn_attached(
    spawner: &Arc<Spawner>,
    launch: &Launch,
    terminal: Terminal,
) -> io::Result<(ProcessGroup, Attached)> {
    let attached = match terminal {
        Terminal::Pipes => {
            let (read, write) = pipe_cloexec()?;
            let cgroup = launch.cgroup();
            let mut command = command_for(launch, false, cgroup.as_ref());
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::from(write.try_clone()?))
                .stderr(Stdio::from(write))
                .process_group(0);
            let mut child = spawn_in(spawner, command, cgroup.as_ref()).await?;
            let stdin = child.stdin.take();
            let group = ProcessGroup::new(child, spawner, cgroup);
            let stdin = stdin.ok_or_else(|| io::Error::other("no stdin pipe"))?;
            let io = Attached {
                output: Box::new(pipe::Receiver::from_owned_fd(read)?),
                input: Box::new(pipe::Sender::from_owned_fd(OwnedFd::from(stdin))?),
                pty: None,
            };
            (group, io)
        }
        Terminal::Pty { cols, rows } => {
            let (master, slave) = open_pty(cols, rows)?;
            // An app that runs unprivileged must be able to use its tty.
            if let Some(run_as) = &launch.run_as {
                // SAFETY: fchown on an fd we own.
                unsafe { libc::fchown(slave.as_raw_fd(), run_as.uid, run_as.gid) };
            }
            // No process_group(0): setsid makes the command leader of a new
            // session *and* group (a group leader could not call setsid).
            let cgroup = launch.cgroup();
            let mut command = command_for(launch, true, cgroup.as_ref());
            command
                .stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            let child = spawn_in(spawner, command, cgroup.as_ref()).await?;
            let group = ProcessGroup::new(child, spawner, cgroup);
            let io = Attached {
                input: Box::new(PtyMaster::new(master.try_clone()?)?),
                pty: Some(master.try_clone()?),
                output: Box::new(PtyMaster::new(master)?),
            };
            (group, io)
        }
    };
    Ok(attached)
}

fn open_pty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds on success; the name buffer is null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by no one else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on fds we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

/// The master side of a pty as an async reader/writer. EIO on read means
/// the slave side closed (the command and its children are gone): EOF.
struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    fn new(fd: OwnedFd) -> io::Result<PtyMaster> {
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        // SAFETY: an OwnedFd stays open, naming the same pty, for as long
        // as the AsyncFd that owns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(PtyMaster { fd })
    }
}

impl tokio::io::AsyncRead for PtyMaster {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                std::task::Poll::Ready(g) => g?,
                std::task::Poll::Pending => return std::task::Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            // SAFETY: reading into a buffer we own, of its stated length.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    unfilled.as_mut_ptr().cast(),
                    unfilled.len(),
                )
            };
            if n >= 0 {
                buf.advance(n as usize);
                return std::task::Poll::Ready(Ok(()));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => guard.clear_ready(),
                Some(libc::EIO) => return std::task::Poll::Ready(Ok(())),
                _ => return std::task::Poll::Ready(Err(err)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for PtyMaster {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        loop {
            let mut guard = match self.fd.poll_write_ready(cx) {
                std::task::Poll::Ready(g) => g?,
                std::task::Poll::Pending => return std::task::Poll::Pending,
            };
            // SAFETY: writing from a slice we borrow, of its length.
            let n = unsafe {
                libc::write(
                    guard.get_inner().as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                )
            };
            if n >= 0 {
                return std::task::Poll::Ready(Ok(n as usize));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EAGAIN) {
                guard.clear_ready();
            } else {
                return std::task::Poll::Ready(Err(err));
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A running process and everything it started: the process group, and
/// with a cgroup also whatever left the group. Dropping it kills them all.
pub(super) struct ProcessGroup {
    /// Some until reaped.
    child: Option<Child>,
    pid: libc::pid_t,
    exit: ExitWatch,
    /// Its cgroup, until reaped.
    cgroup: Option<Cgroup>,
    /// Keeps the thread alive whose death would SIGKILL the leader.
    _spawner: Arc<Spawner>,
}

impl ProcessGroup {
    fn new(child: Child, spawner: &Arc<Spawner>, cgroup: Option<Cgroup>) -> ProcessGroup {
        let pid = child.id() as libc::pid_t;
        ProcessGroup {
            exit: ExitWatch::new(pid),
            cgroup,
            child: Some(child),
            pid,
            _spawner: spawner.clone(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Resolves once the leader has exited (it is not reaped yet, so the
    /// group can still be signalled). Cancel-safe.
    pub async fn exited(&self) {
        self.exit.wait(self.pid).await
    }

    /// Sends `signal` to every process of the group.
    pub fn signal(&self, signal: libc::c_int) {
        if self.child.is_some() {
            // SAFETY: plain syscall. The leader is not reaped (child is
            // Some), so the pgid still names our group. ESRCH is fine.
            unsafe { libc::kill(-self.pid, signal) };
        }
    }

    /// After [`ProcessGroup::exited`]: kills what is left of the group (a
    /// leftover holding the port or the output pipe) and reaps the leader.
    pub async fn reap(&mut self) -> Exit {
        self.signal(libc::SIGKILL);
        if let Some(cgroup) = self.cgroup.take() {
            // Everything it started, in or out of the group; removing it
            // waits (bounded) for the kills, so off the runtime's workers.
            cgroup.kill();
            let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
        }
        let Some(mut child) = self.child.take() else {
            return Exit::Unknown;
        };
        match child.try_wait() {
            Ok(Some(status)) => Exit::from(status),
            // Not expected after `exited`; wait without blocking a worker.
            Ok(None) => match tokio::task::spawn_blocking(move || child.wait()).await {
                Ok(Ok(status)) => Exit::from(status),
                _ => Exit::Unknown,
            },
            Err(_) => Exit::Unknown,
        }
    }

    /// SIGTERM to the group; SIGKILL once `grace` has passed without the
    /// leader exiting; then reap.
    pub async fn terminate(&mut self, grace: Duration) -> Exit {
        self.signal(libc::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            self.signal(libc::SIGKILL);
            self.exited().await;
        }
        self.reap().await
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let cgroup = self.cgroup.take();
        if let Some(c) = &cgroup {
            c.kill();
        }
        if let Some(child) = self.child.take() {
            // Owner gone (task aborted, runtime shutting down): nothing may
            // outlive the handle that was meant to stop it.
            std::thread::spawn(move || {
                kill_and_reap(child);
                if let Some(c) = cgroup {
                    c.remove();
                }
            });
        } else if let Some(c) = cgroup {
            std::thread::spawn(move || c.remove());
        }
    }
}

fn kill_and_reap(mut child: Child) {
    // SAFETY: plain syscall; the leader is not reaped yet (see module docs).
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    let _ = child.wait();
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Reaped by someone else; should not happen.
    Unknown,
}

impl Exit {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
            Exit::Unknown => 255,
        }
    }
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Exit {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => Exit::Unknown,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal(signal) => write!(
                f,
                "was killed by signal {signal} ({})",
                signal_name(*signal)
            ),
            Exit::Unknown => f.write_str("exited with an unknown status"),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Learns of the leader's exit without reaping it.
enum ExitWatch {
    /// A pidfd polls readable once the process has exited.
    Pidfd(AsyncFd<OwnedFd>),
    /// Old kernels: `waitid(WNOWAIT)` on a timer.
    Poll,
}

impl ExitWatch {
    fn new(pid: libc::pid_t) -> ExitWatch {
        // SAFETY: plain syscall; the returned fd is ours (and CLOEXEC).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return ExitWatch::Poll;
        }
        // SAFETY: `fd` was just returned by pidfd_open and is owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        // SAFETY: an OwnedFd stays open, and names the same pidfd, for as
        // long as the AsyncFd that owns it.
        match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
            Ok(fd) => ExitWatch::Pidfd(fd),
            Err(_) => ExitWatch::Poll,
        }
    }

    async fn wait(&self, pid: libc::pid_t) {
        if let ExitWatch::Pidfd(fd) = self {
            // Readiness is never cleared: an exited process stays exited.
            if fd.readable().await.is_ok() {
                return;
            }
        }
        while !leader_exited(pid) {
            tokio::time::sleep(EXIT_POLL).await;
        }
    }
}

fn leader_exited(pid: libc::pid_t) -> bool {
    // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on our own child; WNOWAIT leaves it unreaped.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // An error (ECHILD) means there is nothing left to wait for.
    // SAFETY: waitid filled `info` (or left it zeroed: si_pid 0).
    rc != 0 || unsafe { info.si_pid() } != 0
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Splits a byte stream into lines of at most `max` bytes (a longer line
/// comes out in pieces), so a process printing without newlines cannot
/// make the daemon buffer without bound.
pub(super) struct Lines<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max: usize,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub fn new(reader: R, max: usize) -> Lines<R> {
        Lines {
            reader: BufReader::new(reader),
            line: Vec::new(),
            max: max.max(1),
        }
    }

    /// The next line, with its `\n` if it had one; None at the end. A read
    /// error ends the stream like EOF: the writer is gone either way.
    pub async fn next_line(&mut self) -> Option<&[u8]> {
        self.line.clear();
        loop {
            let available = match self.reader.fill_buf().await {
                Ok(available) => available,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => &[],
            };
            if available.is_empty() {
                return (!self.line.is_empty()).then_some(&self.line[..]);
            }
            let room = &available[..available.len().min(self.max - self.line.len())];
            let (taken, complete) = match room.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (room.len(), self.line.len() + room.len() == self.max),
            };
            self.line.extend_from_slice(&room[..taken]);
            self.reader.consume(taken);
            if complete {
                return Some(&self.line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut lines = Lines::new(input, max);
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().await {
            out.push(line.to_vec());
        }
        out
    }

    #[tokio::test]
    async fn lines_split_and_cap() {
        assert_eq!(
            lines_of(b"a\nbb\n", 100).await,
            [b"a\n".to_vec(), b"bb\n".to_vec()]
        );
        assert_eq!(
            lines_of(b"a\nlast", 100).await,
            [b"a\n".to_vec(), b"last".to_vec()]
        );
        assert_eq!(
            lines_of(b"abcdefg\nh", 3).await,
            [
                b"abc".to_vec(),
                b"def".to_vec(),
                b"g\n".to_vec(),
                b"h".to_vec()
            ]
        );
        assert!(lines_of(b"", 3).await.is_empty());
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Signal(9).code(), 137);
        assert_eq!(Exit::Code(1).to_string(), "exited with status 1");
        assert_eq!(
            Exit::Signal(9).to_string(),
            "was killed by signal 9 (SIGKILL)"
        );
    }
}
