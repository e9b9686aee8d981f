//! The end-to-end harness: a real `cygni serve` on free loopback ports in a
//! temp dir, driven with the real OpenSSH client, git and curl.
//!
//! ```ignore
//! let d = TestDaemon::start();
//! let out = d.ssh(&d.admin, "apps:create shop");
//! out.ok();
//! ```

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod git_server;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A key pair made with ssh-keygen.
#[derive(Clone, Debug)]
pub struct Key {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl Key {
    pub fn generate(dir: &Path, name: &str) -> Key {
        Key::generate_typed(dir, name, &["-t", "ed25519"])
    }

    pub fn generate_typed(dir: &Path, name: &str, type_args: &[&str]) -> Key {
        let private = dir.join(name);
        let st = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-C", name, "-f"])
            .arg(&private)
            .args(type_args)
            .status()
            .expect("ssh-keygen runs");
        assert!(st.success(), "ssh-keygen failed for {name}");
        Key {
            public: private.with_extension("pub"),
            private,
        }
    }

    pub fn public_text(&self) -> String {
        std::fs::read_to_string(&self.public).expect("read public key")
    }
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from(o: std::process::Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Assert success and return self.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        self
    }

    /// Assert failure whose stderr contains `needle`.
    #[track_caller]
    pub fn fails_with(self, needle: &str) -> Out {
        assert_ne!(self.code, 0, "expected failure, got {self:#?}");
        assert!(
            self.stderr.contains(needle),
            "stderr should contain {needle:?}: {self:#?}"
        );
        self
    }
}

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub admin: Key,
    pub ssh_port: u16,
    pub http_port: u16,
    pub https_port: u16,
    /// The API's loopback listener (`--api-listen`).
    pub api_port: u16,
    /// The registry's port with `--registry-listen`, else 0.
    pub registry_port: u16,
    /// The metrics listener's port (0 when the test turned it off).
    pub metrics_port: u16,
    pub host_fingerprint: String,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl TestDaemon {
    pub fn start() -> TestDaemon {
        TestDaemon::start_with(&[])
    }

    pub fn start_with(extra_args: &[&str]) -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        // Apps run as an unprivileged user when the tests run as root; let
        // that user reach into the temp dir.
        set_mode(dir.path(), 0o755);
        let admin = Key::generate(dir.path(), "admin");
        let mut d = TestDaemon {
            data_dir: dir.path().join("data"),
            dir,
            admin,
            ssh_port: 0,
            http_port: 0,
            https_port: 0,
            api_port: 0,
            registry_port: 0,
            metrics_port: 0,
            host_fingerprint: String::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cygni"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--ssh-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--https-listen", "127.0.0.1:0"])
            .args(if self.extra_args.iter().any(|a| a == "--api-listen") {
                &[][..]
            } else {
                &["--api-listen", "127.0.0.1:0"][..]
            })
            // Many daemons run at once: never the fixed default port.
            .args(if self.extra_args.iter().any(|a| a == "--metrics-listen") {
                &[][..]
            } else {
                &["--metrics-listen", "127.0.0.1:0"][..]
            })
            .arg("--admin-key")
            .arg(&self.admin.public)
            .args(&self.extra_args)
            // `auto` would pick docker wherever an engine answers; tests
            // that want it say `--runtime docker`.
            .args(if self.extra_args.iter().any(|a| a == "--runtime") {
                &[][..]
            } else {
                &["--runtime", "local"][..]
            })
            // CYGNI_TEST_RUST_LOG widens it when chasing a failure
            // (say `info,cygni=debug,russh=debug`).
            .env(
                "RUST_LOG",
                std::env::var("CYGNI_TEST_RUST_LOG").unwrap_or_else(|_| "info,cygni=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start cygni serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut ssh, mut http, mut https, mut fp) = (None, None, None, None);
        let mut api: Option<u16> = None;
        let mut metrics = None;
        let (mut registry, mut printed_all) = (None, false);
        // `push:` is the last line of the banner.
        while ssh.is_none() || http.is_none() || https.is_none() || !printed_all {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!(
                    "cygni serve did not print its addresses in time; log:\n{}",
                    self.log()
                ),
            };
            if let Some(rest) = line.trim().strip_prefix("ssh:") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                ssh = addr.rsplit(':').next().and_then(|p| p.parse().ok());
                fp = rest
                    .split("host key ")
                    .nth(1)
                    .map(|s| s.trim_end_matches(')').to_string());
            } else if let Some(rest) = line.trim().strip_prefix("http:") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                http = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            } else if let Some(rest) = line.trim().strip_prefix("https:") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                https = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            } else if let Some(rest) = line.trim().strip_prefix("api:") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                api = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            } else if let Some(rest) = line.trim().strip_prefix("registry:") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                registry = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            } else if line.trim().starts_with("push:") {
                printed_all = true;
            } else if let Some(rest) = line.trim().strip_prefix("metrics:") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                metrics = Some(
                    addr.rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0),
                );
            }
        }
        self.ssh_port = ssh.expect("ssh port");
        self.http_port = http.expect("http port");
        self.https_port = https.expect("https port");
        self.api_port = api.unwrap_or(0);
        self.registry_port = registry.unwrap_or(0);
        self.metrics_port = metrics.unwrap_or(0);
        self.host_fingerprint = fp.unwrap_or_default();
        self.child = Some(child);
    }

    /// The daemon's process id (for /proc figures).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's stderr so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Stop with SIGTERM and wait (bounded) for a clean exit; returns its code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("cygni did not stop within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` the daemon (nothing of it runs its shutdown), then start
    /// it again on the same data dir.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// Start the daemon again after [`TestDaemon::stop`], on the same data
    /// dir (for tests that change what it left behind in between).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon still runs");
        self.spawn();
    }

    pub fn restart(&mut self) {
        let code = self.stop();
        assert_eq!(code, Some(0), "clean exit on SIGTERM; log:\n{}", self.log());
        self.spawn();
    }

    pub fn new_key(&self, name: &str) -> Key {
        Key::generate(self.dir.path(), name)
    }

    /// Add a key through the admin's `keys:add`.
    pub fn add_key(&self, name: &str, role: &str) -> Key {
        let key = self.new_key(name);
        self.ssh_stdin(
            &self.admin,
            &format!("keys:add {name} --role {role}"),
            key.public_text().as_bytes(),
        )
        .ok();
        key
    }

    /// `ssh -p PORT -i KEY <options> cygni@127.0.0.1`, for tests that need
    /// more control than [`TestDaemon::ssh`] (flags, streaming output).
    pub fn ssh_command(&self, key: &Key, flags: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-p")
            .arg(self.ssh_port.to_string())
            .arg("-i")
            .arg(&key.private)
            .args(ssh_opts())
            .args(flags)
            .arg("cygni@127.0.0.1");
        c
    }

    /// `ssh cygni@127.0.0.1 COMMAND` with `key`. `command` is sent as the
    /// exec string, as ssh would send it.
    pub fn ssh(&self, key: &Key, command: &str) -> Out {
        let out = self
            .ssh_command(key, &[])
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh");
        Out::from(out)
    }

    pub fn ssh_stdin(&self, key: &Key, command: &str, stdin: &[u8]) -> Out {
        let mut child = self
            .ssh_command(key, &[])
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ssh");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write stdin");
        Out::from(child.wait_with_output().expect("ssh output"))
    }

    pub fn remote(&self, app: &str) -> String {
        format!("ssh://cygni@127.0.0.1:{}/{app}", self.ssh_port)
    }

    /// Run git in `cwd` with `key` as its SSH identity.
    pub fn git(&self, key: &Key, cwd: &Path, args: &[&str]) -> Out {
        let ssh = format!("ssh -i {} {}", key.private.display(), ssh_opts().join(" "));
        let out = git_cmd(cwd)
            .env("GIT_SSH_COMMAND", ssh)
            .args(args)
            .output()
            .expect("run git");
        Out::from(out)
    }

    /// `curl -H 'Host: HOST' http://127.0.0.1:HTTP_PORT/PATH`: (status, body).
    pub fn curl(&self, host: &str, path: &str) -> (u16, String) {
        curl(self.http_port, host, path)
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first so the daemon stops its apps; then make sure.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn ssh_opts() -> Vec<&'static str> {
    vec![
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
    ]
}

/// git with no user or system config in play.
pub fn git_cmd(cwd: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com");
    c
}

/// A fresh git repo holding a copy of `files` (path, contents), committed on `main`.
pub fn make_repo(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("repo dir");
    for (path, contents) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write file");
    }
    run_ok(git_cmd(dir).args(["init", "-q", "-b", "main"]));
    commit_all(dir, "initial");
    dir.to_owned()
}

pub fn commit_all(dir: &Path, message: &str) {
    run_ok(git_cmd(dir).args(["add", "-A"]));
    run_ok(git_cmd(dir).args(["commit", "-q", "--allow-empty", "-m", message]));
}

pub fn head_sha(dir: &Path) -> String {
    let out = git_cmd(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .expect("rev-parse");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[track_caller]
pub fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// One curl request: (status, body). Status 0 when the connection failed.
pub fn curl(port: u16, host: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-o", "-", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Poll `f` until it returns Some, or panic with `what` at the deadline.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Docker and Pebble tests may skip on a developer machine, loudly; under
/// CI=true a skip is a failure.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and this test cannot run: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Whether a Docker engine answers, with the local test images made (once
/// per test binary, by `scripts/docker-test-setup.sh`). Prints `SKIPPED`
/// (and fails under `CI=true`) when there is no engine.
pub fn engine_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ready = *READY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/docker-test-setup.sh");
        let out = Command::new(&script)
            .output()
            .expect("run scripts/docker-test-setup.sh");
        match out.status.code() {
            Some(0) => true,
            Some(3) => false,
            _ => panic!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    });
    if !ready {
        skip_or_fail("docker engine not available");
    }
    ready
}

/// `docker ARGS`: stdout, trimmed ("" when it failed).
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the containers and images of some apps (and any extra images
/// a test names), now and when dropped.
/// Declare it before the daemon, so it runs after the daemon has stopped.
pub struct DockerCleanup {
    apps: Vec<String>,
    images: std::sync::Mutex<Vec<String>>,
}

impl DockerCleanup {
    pub fn new(apps: &[&str]) -> DockerCleanup {
        let c = DockerCleanup {
            apps: apps.iter().map(|a| a.to_string()).collect(),
            images: std::sync::Mutex::default(),
        };
        c.remove();
        c
    }

    /// Remove `image` too (a stack image a test built).
    pub fn also_image(&self, image: &str) {
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(image.to_owned());
    }

    pub fn remove(&self) {
        let all = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        for app in &self.apps {
            let ids = docker(&["ps", "-aq", "--filter", &format!("label=cygni.app={app}")]);
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.lines());
                docker(&args);
            }
            let prefix = format!("cygni/{app}:");
            let mine: Vec<&str> = all.lines().filter(|i| i.starts_with(&prefix)).collect();
            if !mine.is_empty() {
                let mut args = vec!["rmi", "-f"];
                args.extend(mine);
                docker(&args);
            }
        }
        for image in self.images.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            docker(&["rmi", "-f", image]);
        }
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A fixture app's directory under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture dir").flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy fixture file");
        }
    }
}

/// A git repo under the daemon's temp dir holding a copy of fixture
/// `name`, committed on main.
pub fn fixture_repo(d: &TestDaemon, name: &str, dir_name: &str) -> PathBuf {
    let dir = d.dir.path().join(dir_name);
    copy_dir(&fixture(name), &dir);
    make_repo(&dir, &[])
}

/// Replace the repo's files with another fixture's (not yet committed).
pub fn replace_with_fixture(repo: &Path, name: &str) {
    for e in std::fs::read_dir(repo).expect("read repo").flatten() {
        if e.file_name() != ".git" {
            let p = e.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p).expect("rm dir");
            } else {
                std::fs::remove_file(p).expect("rm file");
            }
        }
    }
    copy_dir(&fixture(name), repo);
}

/// Replace `from` with `to` in a file, which must contain it.
#[track_caller]
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read file to edit");
    assert!(text.contains(from), "{} lacks {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).expect("write edited file");
}

/// `git push cygni main` as the admin.
pub fn push(d: &TestDaemon, repo: &Path, app: &str) -> Out {
    d.git(&d.admin, repo, &["push", &d.remote(app), "main"])
}

/// `git push cygni main` as the admin, in the background, its output
/// dropped: for tests that do something while it runs.
pub fn push_in_background(d: &TestDaemon, repo: &Path, app: &str) -> std::process::Child {
    let mut cmd = git_cmd(repo);
    cmd.args(["push", "-q", &d.remote(app), "main"])
        .env(
            "GIT_SSH_COMMAND",
            format!(
                "ssh {} -i {}",
                ssh_opts().join(" "),
                d.admin.private.display()
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().expect("git push")
}

/// Run a `curl -s -D - …` command and split what it printed into
/// (status, head, body); status 0 when no response came.
pub fn curl_response(mut c: Command) -> (u16, String, String) {
    let out = c.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// The app's default host.
pub fn host(app: &str) -> String {
    format!("{app}.localhost")
}

/// Bounded background traffic: `clients` threads GET `/` on `host` until
/// [`Traffic::finish`] (or 120 s at most), sorting the answers into the
/// old and the new content by their markers. Anything else is a failure.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counts: std::sync::Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// What the clients saw.
#[derive(Debug)]
pub struct TrafficReport {
    pub old: usize,
    pub new: usize,
    pub failures: Vec<String>,
}

impl Traffic {
    pub fn start(
        port: u16,
        host: &str,
        old_marker: &str,
        new_marker: &str,
        clients: usize,
    ) -> Traffic {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, counts, failures) = (stop.clone(), counts.clone(), failures.clone());
                let (host, old, new) = (
                    host.to_owned(),
                    old_marker.to_owned(),
                    new_marker.to_owned(),
                );
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let (code, body) = curl(port, &host, "/");
                        if code != 200 {
                            failures
                                .lock()
                                .expect("lock")
                                .push(format!("{code}: {body}"));
                        } else if body.contains(&new) {
                            counts.1.fetch_add(1, Ordering::Relaxed);
                        } else if body.contains(&old) {
                            counts.0.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures
                                .lock()
                                .expect("lock")
                                .push(format!("odd body: {body}"));
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            counts,
            failures,
            threads,
        }
    }

    /// Wait until the new content has been seen `n` times (false at the deadline).
    pub fn wait_new(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.counts.1.load(std::sync::atomic::Ordering::Relaxed) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn finish(self) -> TrafficReport {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread");
        }
        let failures = std::mem::take(&mut *self.failures.lock().expect("lock"));
        TrafficReport {
            old: self.counts.0.load(Ordering::Relaxed),
            new: self.counts.1.load(Ordering::Relaxed),
            failures,
        }
    }
}

/// Push `repo` and check it is refused as a user would see it: git fails,
/// `reason` is among the `remote:` lines, the server's branch is still at
/// `good_sha`, and the app still serves `still_serving`.
#[track_caller]
pub fn assert_push_refused(
    d: &TestDaemon,
    repo: &Path,
    app: &str,
    good_sha: &str,
    reason: &str,
    still_serving: &str,
) -> Out {
    let out = push(d, repo, app);
    assert_ne!(out.code, 0, "push must fail: {out:#?}");
    assert!(
        out.stderr.contains("remote:") && out.stderr.contains(reason),
        "reason {reason:?} missing: {out:#?}"
    );
    let ls = d.git(&d.admin, repo, &["ls-remote", &d.remote(app)]).ok();
    assert!(
        ls.stdout.contains(&format!("{good_sha}\trefs/heads/main")),
        "branch moved: {ls:#?}"
    );
    let (code, body) = d.curl(&host(app), "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(still_serving), "{body}");
    out
}

/// The app processes whose working directory is under this daemon's
/// slugs: everything the local runtime started, however deep.
pub fn app_processes(d: &TestDaemon) -> Vec<u32> {
    let slugs = d.data_dir.join("slugs");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            if cwd.starts_with(&slugs) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The `receive-pack` processes working on the daemon's repos.
pub fn receive_packs(data_dir: &Path) -> usize {
    let needle = data_dir.join("repos").display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("receive-pack") && c.contains(&needle))
        .count()
}
