//! Hardening regressions for the SSH front door, what reaches a client's
//! terminal, and pushes whose client goes away (issue 16). Each test drives
//! the real daemon as an attacker or an unlucky user would, and checks that
//! the running release, the repos and the database are unchanged afterwards
//! where the attack should have changed nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// Helpers

/// Push fixture `name` as `app`; returns the repo.
fn deploy(d: &TestDaemon, name: &str, app: &str) -> PathBuf {
    let repo = fixture_repo(d, name, app);
    push(d, &repo, app).ok();
    repo
}

/// What a user can observe of an app: its releases, config, branch and
/// what it serves. Equal before and after an attack that must change nothing.
fn world(d: &TestDaemon, repo: &Path, app: &str) -> String {
    let apps = d.ssh(&d.admin, "apps --json").ok().stdout;
    let releases = d
        .ssh(&d.admin, &format!("releases {app} --json"))
        .ok()
        .stdout;
    let config = d
        .ssh(&d.admin, &format!("config {app} --json --reveal"))
        .ok()
        .stdout;
    let refs = d
        .git(&d.admin, repo, &["ls-remote", &d.remote(app)])
        .ok()
        .stdout;
    let (code, body) = d.curl(&host(app), "/");
    format!("{apps}\n{releases}\n{config}\n{refs}\n{code} {body}")
}

/// Run `cmd` and give up (killing it) after `limit`: None when it hung.
fn output_within(cmd: &mut Command, limit: Duration) -> Option<Out> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let o = child.wait_with_output().expect("output");
            return Some(Out {
                code: o.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The floods and the chatty build load the machine: they run one at a
/// time, so that none of them measures the others.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A russh client that trusts any host key (the daemon is ours).
struct TrustAll;

impl russh::client::Handler for TrustAll {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Log in over SSH as `user` with `key`, from Rust: for what OpenSSH's
/// client will not send.
async fn russh_login(port: u16, key: &Key, user: &str) -> (russh::client::Handle<TrustAll>, bool) {
    let config = Arc::new(russh::client::Config {
        inactivity_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    let mut session = russh::client::connect(config, ("127.0.0.1", port), TrustAll)
        .await
        .expect("ssh connect");
    let secret = russh::keys::load_secret_key(&key.private, None).expect("load key");
    let auth = session
        .authenticate_publickey(
            user,
            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(secret), None),
        )
        .await
        .expect("auth exchange");
    let ok = auth.success();
    (session, ok)
}

/// Exec `command` on a fresh channel and collect (status, stdout, stderr).
async fn russh_exec(
    session: &russh::client::Handle<TrustAll>,
    command: &str,
) -> (Option<u32>, String, String) {
    let mut ch = session.channel_open_session().await.expect("open channel");
    ch.exec(true, command).await.expect("exec");
    read_channel(&mut ch).await
}

async fn read_channel(
    ch: &mut russh::Channel<russh::client::Msg>,
) -> (Option<u32>, String, String) {
    let (mut status, mut out, mut err) = (None, Vec::new(), Vec::new());
    while let Some(msg) = ch.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            _ => {}
        }
    }
    (
        status,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// 1. A flood of channel requests before exec

/// About 100 `env` requests (want_reply false) before `exec` used to fill a
/// per-channel queue that nothing read before the exec: the session never
/// answered again, yet held its connection. Now the channel is drained from
/// the moment it opens and env requests past a handful are refused.
#[test]
fn session_wedge_regression_env_flood_before_exec() {
    let _one_at_a_time = heavy();
    let d = TestDaemon::start();
    let repo = deploy(&d, "procfile-app", "calm");
    let before = world(&d, &repo, "calm");

    let rt = runtime();
    let flood = async {
        let (session, ok) = russh_login(d.ssh_port, &d.admin, "cygni").await;
        assert!(ok, "admin login");
        let mut ch = session.channel_open_session().await.expect("open channel");
        // Three times what used to wedge it (about 100), small enough that
        // the client never waits on TCP buffers on a busy machine.
        for i in 0..300 {
            ch.set_env(false, format!("FLOOD_{i}"), "x".repeat(16))
                .await
                .expect("send env");
        }
        // A pty request and window changes queue the same way.
        for _ in 0..150 {
            ch.window_change(100, 40, 0, 0)
                .await
                .expect("window change");
        }
        ch.exec(true, "apps").await.expect("exec");
        let got = tokio::time::timeout(Duration::from_secs(20), read_channel(&mut ch)).await;
        let (status, out, err) = got.expect("the session answered the exec after the env flood");
        assert_eq!(status, Some(0), "stdout {out:?} stderr {err:?}");
        assert!(out.contains("calm"), "{out:?}");

        // The same connection still serves a second channel.
        let (status, out, _) =
            tokio::time::timeout(Duration::from_secs(10), russh_exec(&session, "version"))
                .await
                .expect("second channel answers");
        assert_eq!(status, Some(0));
        assert!(out.starts_with("cygni "), "{out:?}");

        // A flood of env requests that want replies gets refusals, not a hang.
        let mut ch = session.channel_open_session().await.expect("open channel");
        for i in 0..200 {
            ch.set_env(true, format!("ASK_{i}"), "x")
                .await
                .expect("send env");
        }
        ch.exec(true, "version").await.expect("exec");
        let (status, out, _) = tokio::time::timeout(Duration::from_secs(20), read_channel(&mut ch))
            .await
            .expect("answered after env requests with want_reply");
        assert_eq!(status, Some(0));
        assert!(out.starts_with("cygni "), "{out:?}");
    };
    // Bounded as a whole: a wedged session fails the test, never hangs it.
    // On failure the daemon's log says why the server ended the session.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(90), flood)
                .await
                .expect("the whole exchange finished within 90 s: the session wedged");
        });
    }));
    if let Err(panic) = outcome {
        let log = d.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("daemon log, last lines:");
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
        std::panic::resume_unwind(panic);
    }
    drop(rt);
    assert_eq!(world(&d, &repo, "calm"), before, "nothing changed");
}

/// Stdin sent to a command that never reads it (`logs -f`) filled the
/// stdin queue, blocked the channel pump and with it the whole connection:
/// no other channel was served, and a client that went away was never
/// noticed. Such commands now drop their stdin.
#[test]
fn session_wedge_regression_stdin_nobody_reads() {
    let d = TestDaemon::start();
    let repo = deploy(&d, "procfile-app", "tail");
    let before = world(&d, &repo, "tail");
    let rt = runtime();
    rt.block_on(async {
        let (session, ok) = russh_login(d.ssh_port, &d.admin, "cygni").await;
        assert!(ok, "admin login");
        let follow = session.channel_open_session().await.expect("open channel");
        follow.exec(true, "logs tail -f").await.expect("exec");
        let junk = vec![b'x'; 16 * 1024];
        let sent = tokio::time::timeout(Duration::from_secs(20), async {
            for _ in 0..256 {
                follow.data(&junk[..]).await.expect("send stdin");
            }
        })
        .await;
        assert!(sent.is_ok(), "4 MiB of stdin to `logs -f` was not taken");
        let (status, out, _) =
            tokio::time::timeout(Duration::from_secs(10), russh_exec(&session, "version"))
                .await
                .expect("another channel on the same connection answers");
        assert_eq!(status, Some(0));
        assert!(out.starts_with("cygni "), "{out:?}");
    });
    drop(rt);
    assert_eq!(world(&d, &repo, "tail"), before, "nothing changed");
}

// ---------------------------------------------------------------------------
// 2. Pre-auth slots under a flood from many addresses

/// Open a TCP connection from `src` to the daemon; Some(stream) if the daemon
/// kept it (it sent its SSH banner), None if it dropped it at once.
async fn hold_one(src: std::net::Ipv4Addr, port: u16) -> Option<tokio::net::TcpStream> {
    use tokio::io::AsyncReadExt;
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind((src, 0).into()).ok()?;
    let mut s = sock.connect(([127, 0, 0, 1], port).into()).await.ok()?;
    let mut buf = [0u8; 8];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 && buf.starts_with(b"SSH-") => Some(s),
        _ => None,
    }
}

/// 16 connections from each of 16 addresses used to fill all 256
/// unauthenticated slots, locking everyone out for the whole 30 s login
/// window. Now, past a threshold, an address's further connections are
/// dropped at random (MaxStartups-style) and, when every slot is taken, a
/// newcomer takes the oldest slot of the address holding the most: a real
/// push gets through while the flood holds every slot and keeps retrying.
#[test]
fn login_lockout_regression_flood_from_many_addresses() {
    let _one_at_a_time = heavy();
    let d = TestDaemon::start();
    let repo = deploy(&d, "procfile-app", "busy");
    std::fs::write(repo.join("index.html"), "hello from busy v2\n").unwrap();
    commit_all(&repo, "v2");

    let rt = runtime();
    let port = d.ssh_port;
    let flood_started = Instant::now();
    let held = rt.block_on(async {
        let mut held = Vec::new();
        // Every flood address tries until it holds 16 or has tried 120 times.
        for last in 2..18u8 {
            let src = std::net::Ipv4Addr::new(127, 0, 0, last);
            let mut mine = 0;
            for _ in 0..120 {
                if mine == 16 {
                    break;
                }
                if let Some(s) = hold_one(src, port).await {
                    held.push(s);
                    mine += 1;
                }
            }
        }
        // Then one each from more addresses, whose first connection is
        // never dropped early, until every slot is taken.
        for last in 1..=250u8 {
            if held.len() >= 256 {
                break;
            }
            if let Some(s) = hold_one(std::net::Ipv4Addr::new(127, 0, 1, last), port).await {
                held.push(s);
            }
        }
        held
    });
    let flood = held.len();
    eprintln!(
        "flood holds {flood} unauthenticated connections after {:?}",
        flood_started.elapsed()
    );
    assert_eq!(flood, 256, "the flood holds every pre-auth slot");

    // While the flood holds its slots (and keeps trying for more), a real
    // client pushes. The flood's own retries must not take the slot back.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let retry = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async {
                let mut extra = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(15);
                let mut last = 2u8;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    let src = std::net::Ipv4Addr::new(127, 0, 0, last);
                    if let Some(s) = hold_one(src, port).await {
                        extra.push(s);
                    }
                    last = if last == 17 { 2 } else { last + 1 };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                extra.len()
            })
        })
    };
    let out = push(&d, &repo, "busy");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let extra = retry.join().expect("retry thread");
    assert!(
        flood_started.elapsed() < Duration::from_secs(28),
        "the flood outlived its login window; the test proves nothing"
    );
    assert_eq!(out.code, 0, "a real push gets through the flood: {out:#?}");

    // The flood's connections were not all dropped to make room.
    let still = rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut open = 0;
        for mut s in held {
            let mut buf = [0u8; 4096];
            // Read what the server sent (banner, KEXINIT) up to silence
            // (still waiting for us: open) or the end (dropped).
            loop {
                match tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
                    Err(_) => {
                        open += 1;
                        break;
                    }
                    Ok(Ok(n)) if n > 0 => continue,
                    _ => break,
                }
            }
        }
        open
    });
    eprintln!("after the push: {still} of {flood} flood connections still open; {extra} more taken while retrying");
    assert!(
        still + 4 >= flood,
        "the flood kept its slots: {still} of {flood}"
    );
    let (code, body) = d.curl(&host("busy"), "/");
    assert_eq!(code, 200);
    assert!(body.contains("hello from busy v2"), "{body}");
}

// ---------------------------------------------------------------------------
// 3. Escape sequences in what reaches a terminal

const EVIL: &str = "\x1b]0;owned\x07\x1b[2J";
const EVIL_SHOWN: &str = "\\u001b]0;owned\\u0007\\u001b[2J";

/// A buildpacks dir with the shipped ones plus `extra` (name, detect file,
/// compile script).
fn buildpacks_with(root: &Path, extra: &[(&str, &str, &str)]) -> PathBuf {
    let dir = root.join("buildpacks");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("buildpacks"),
        &dir,
    );
    for (name, marker, compile) in extra {
        let bin = dir.join(name).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(
            bin.join("detect"),
            format!("#!/bin/sh\n[ -f \"$1/{marker}\" ] || exit 1\necho {name}\n"),
        )
        .unwrap();
        std::fs::write(bin.join("compile"), format!("#!/bin/sh\n{compile}\n")).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("buildpacks/procfile/bin/release"),
            bin.join("release"),
        )
        .unwrap();
    }
    for e in walk(&dir) {
        if e.parent().is_some_and(|p| p.ends_with("bin")) {
            set_mode(&e, 0o755);
        } else {
            set_mode(&e, if e.is_dir() { 0o755 } else { 0o644 });
        }
    }
    set_mode(&dir, 0o755);
    dir
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            all.extend(walk(&p));
        }
        all.push(p);
    }
    all
}

/// A daemon whose buildpacks dir holds `extra` buildpacks too.
fn daemon_with_buildpacks(extra: &[(&str, &str, &str)]) -> (TestDaemon, tempfile::TempDir) {
    let side = tempfile::tempdir().unwrap();
    set_mode(side.path(), 0o755);
    let bp = buildpacks_with(side.path(), extra);
    let config = side.path().join("cygni.toml");
    std::fs::write(
        &config,
        format!("buildpacks_dir = {:?}\n", bp.display().to_string()),
    )
    .unwrap();
    let d = TestDaemon::start_with(&["--config", config.to_str().unwrap()]);
    (d, side)
}

#[track_caller]
fn assert_escaped(what: &str, text: &str) {
    assert!(
        !text.contains('\x1b') && !text.contains('\x07'),
        "{what}: raw control characters reached the terminal: {text:?}"
    );
    assert!(
        text.contains(EVIL_SHOWN),
        "{what}: escaped form missing: {text:?}"
    );
}

/// A config value or an app's log line holding ESC/OSC bytes was written
/// as is by `config --reveal`, `config:get` and `logs` (the class of Soft
/// Serve's CVE-2025-64494). Now everything written to a terminal shows
/// control characters as `\u00XX`; `--json` stays exact and `run` raw.
#[test]
fn terminal_injection_regression_escape_sequences_are_shown_not_run() {
    let (d, _side) = daemon_with_buildpacks(&[(
        "noisy",
        "NOISY",
        "printf 'compiling \\033]0;owned\\007\\033[2J\\n'",
    )]);
    let repo = d.dir.path().join("evil");
    make_repo(
        &repo,
        &[
            (
                "Procfile",
                "web: printf 'boot \\033]0;owned\\007\\033[2J\\n'; exec python3 -m http.server $PORT\n",
            ),
            ("index.html", "hello from evil\n"),
            ("NOISY", ""),
        ],
    );
    let out = push(&d, &repo, "evil").ok();
    // Build output relayed through the hook reaches the pusher escaped.
    assert_escaped("push output", &out.stderr);
    let build_log = d.ssh(&d.admin, "logs evil --build v1").ok();
    assert_escaped("logs --build", &build_log.stdout);

    d.ssh_stdin(&d.admin, "config:set evil --stdin EVIL", EVIL.as_bytes())
        .ok();
    assert_escaped(
        "config --reveal",
        &d.ssh(&d.admin, "config evil --reveal").ok().stdout,
    );
    assert_escaped(
        "config:get",
        &d.ssh(&d.admin, "config:get evil EVIL").ok().stdout,
    );
    // --json stays exact: the JSON string decodes to the stored bytes.
    let json = d.ssh(&d.admin, "config:get evil EVIL --json").ok().stdout;
    let value: String = serde_json::from_str(&json).expect("JSON string");
    assert_eq!(value, EVIL);
    let all: serde_json::Value =
        serde_json::from_str(&d.ssh(&d.admin, "config evil --json --reveal").ok().stdout).unwrap();
    assert_eq!(all["EVIL"], EVIL);

    // The app's own output, from the log store.
    let logs = wait_for("the boot line in the log", Duration::from_secs(20), || {
        let out = d.ssh(&d.admin, "logs evil").ok();
        out.stdout.contains("boot ").then_some(out.stdout)
    });
    assert_escaped("logs", &logs);

    // `run` is the one place raw bytes are the point: they pass untouched.
    let run = Command::new("ssh")
        .arg("-p")
        .arg(d.ssh_port.to_string())
        .arg("-i")
        .arg(&d.admin.private)
        .args(ssh_opts())
        .arg("cygni@127.0.0.1")
        .arg("run evil -- printf '\\033[2Jraw\\n'")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout, b"\x1b[2Jraw\n", "run output is raw");

    // An error that quotes user input is escaped too.
    let bad = d.ssh(&d.admin, "config:get evil 'NO\x1b[2JPE'");
    assert_ne!(bad.code, 0);
    assert!(!bad.stderr.contains('\x1b'), "{bad:?}");
}

// ---------------------------------------------------------------------------
// 4. A push whose client goes away during a chatty build

/// A push whose client was killed during a build printing ~300k lines left
/// the release `building` for good, with `receive-pack`, the hook and the
/// build stuck on a pipe nobody read; every later push or `config:set` of
/// the app waited forever for its lock. Now output to a gone client is
/// dropped and the build runs to its end: the release goes live, the
/// branch moves, the lock is released and the next push works.
#[test]
fn app_lock_regression_client_killed_during_chatty_build() {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let _one_at_a_time = heavy();

    let (d, _side) = daemon_with_buildpacks(&[(
        "chatty",
        "CHATTY",
        "echo 'chatty build starts'; seq 1 300000 | sed 's/^/chatty line /'; echo 'chatty build ends'",
    )]);
    let repo = deploy(&d, "procfile-app", "chat");
    std::fs::write(repo.join("CHATTY"), "").unwrap();
    std::fs::write(repo.join("index.html"), "hello from chat v2\n").unwrap();
    commit_all(&repo, "chatty v2");
    let v2 = head_sha(&repo);

    let ssh = format!(
        "ssh -i {} {}",
        d.admin.private.display(),
        ssh_opts().join(" ")
    );
    let mut child = git_cmd(&repo)
        .env("GIT_SSH_COMMAND", ssh)
        .args(["push", "--progress", &d.remote("chat"), "main"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // Read until the build is well under way, then kill git and ssh.
    let mut stderr = child.stderr.take().unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&seen).contains("chatty line 2000")
        && started.elapsed() < Duration::from_secs(60)
    {
        match stderr.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        seen.contains("chatty line 2000") && !seen.contains("chatty build ends"),
        "the build should be under way: {seen:.2000}"
    );
    // SAFETY: kill(2) on the process group we just made.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    drop(stderr);

    // The release ends (live: the build runs to its end), and nothing of
    // the push is left running.
    let status = wait_for("v2 to finish", Duration::from_secs(120), || {
        let out = output_within(
            d.ssh_command(&d.admin, &[]).arg("releases chat --json"),
            Duration::from_secs(10),
        )?;
        let list: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let v2 = list.as_array()?.iter().find(|r| r["version"] == 2)?.clone();
        let s = v2["status"].as_str()?.to_owned();
        matches!(s.as_str(), "live" | "failed").then_some(s)
    });
    assert_eq!(
        status,
        "live",
        "the build runs to its end; log:\n{}",
        d.log()
    );
    wait_for("receive-pack to exit", Duration::from_secs(30), || {
        (receive_packs(&d.data_dir) == 0).then_some(())
    });
    let ls = d
        .git(&d.admin, &repo, &["ls-remote", &d.remote("chat")])
        .ok();
    assert!(
        ls.stdout.contains(&format!("{v2}\trefs/heads/main")),
        "{ls:#?}"
    );
    let (code, body) = d.curl(&host("chat"), "/");
    assert_eq!(code, 200);
    assert!(body.contains("hello from chat v2"), "{body}");

    // The lock is free: a config change and a following push both go through.
    let set = output_within(
        d.ssh_command(&d.admin, &[]).arg("config:set chat AFTER=1"),
        Duration::from_secs(60),
    )
    .expect("config:set must not wait for a dead push's lock");
    assert_eq!(set.code, 0, "{set:#?}");
    std::fs::remove_file(repo.join("CHATTY")).unwrap();
    std::fs::write(repo.join("index.html"), "hello from chat v3\n").unwrap();
    commit_all(&repo, "quiet v3");
    let ssh = format!(
        "ssh -i {} {}",
        d.admin.private.display(),
        ssh_opts().join(" ")
    );
    let out = output_within(
        git_cmd(&repo)
            .env("GIT_SSH_COMMAND", ssh)
            .args(["push", &d.remote("chat"), "main"]),
        Duration::from_secs(90),
    )
    .expect("the next push finishes");
    assert_eq!(out.code, 0, "{out:#?}");
    let (_, body) = d.curl(&host("chat"), "/");
    assert!(body.contains("hello from chat v3"), "{body}");
}

// ---------------------------------------------------------------------------
// 5. SSH hygiene

/// The admin key logged in with any user name (`root@host` worked). Only
/// the documented `cygni` is accepted now.
#[test]
fn login_name_regression_only_cygni_is_accepted() {
    let d = TestDaemon::start();
    for user in ["root", "git", "admin", "Cygni"] {
        let out = Command::new("ssh")
            .arg("-p")
            .arg(d.ssh_port.to_string())
            .arg("-i")
            .arg(&d.admin.private)
            .args(ssh_opts())
            .arg(format!("{user}@127.0.0.1"))
            .arg("apps:create nope")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{user}: {stderr}");
        assert!(stderr.contains("Permission denied"), "{user}: {stderr}");
    }
    // The same from a client that goes straight to a signature.
    let rt = runtime();
    rt.block_on(async {
        let (_s, ok) = russh_login(d.ssh_port, &d.admin, "root").await;
        assert!(!ok, "root@ must not log in");
        let (s, ok) = russh_login(d.ssh_port, &d.admin, "cygni").await;
        assert!(ok, "cygni@ logs in");
        let (status, out, _) = russh_exec(&s, "version").await;
        assert_eq!(status, Some(0));
        assert!(out.starts_with("cygni "));
    });
    d.ssh(&d.admin, "version").ok();
    d.ssh(&d.admin, "apps:info nope")
        .fails_with("app not found");
}

/// SSH offered zlib compression (a pre-auth decompressor for anyone, and
/// compression-oracle attacks on what sessions carry). Only `none` now.
#[test]
fn compression_regression_only_none_is_offered() {
    let d = TestDaemon::start();
    let out = Command::new("ssh")
        .arg("-v")
        .arg("-p")
        .arg(d.ssh_port.to_string())
        .arg("-i")
        .arg(&d.admin.private)
        .args(ssh_opts())
        .args(["-o", "LogLevel=DEBUG1", "-o", "Compression=yes"])
        .arg("cygni@127.0.0.1")
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let kex: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("compression:"))
        .collect();
    assert!(!kex.is_empty(), "no kex lines: {stderr}");
    for l in &kex {
        assert!(l.trim_end().ends_with("compression: none"), "{l}");
    }
}

/// A `config:set` argument without `=` was echoed in the error; it may be a
/// secret typed without its name. The error names its position instead.
#[test]
fn secret_echo_regression_config_set_argument_is_not_shown() {
    let d = TestDaemon::start();
    let repo = deploy(&d, "procfile-app", "quiet");
    let before = world(&d, &repo, "quiet");
    let out = d
        .ssh(&d.admin, "config:set quiet GOOD=1 hunter2-s3cr3t-t0ken")
        .fails_with("argument 3 is not KEY=VALUE");
    assert!(!out.stderr.contains("hunter2"), "{out:#?}");
    assert!(!out.stdout.contains("hunter2"), "{out:#?}");
    assert!(!d.log().contains("hunter2"), "the server log echoes it");
    assert_eq!(world(&d, &repo, "quiet"), before, "nothing stored");
}

/// One pending connection from each of 256 addresses filled every
/// unauthenticated slot, and since no address held more than one, none
/// was given up: everyone was locked out for the whole 30 s login window,
/// as with OpenSSH's MaxStartups. Now a newcomer takes the oldest pending
/// slot once that has waited 2 s, which a real login never needs.
#[test]
fn login_lockout_regression_one_connection_from_each_of_256_addresses() {
    let _one_at_a_time = heavy();
    let d = TestDaemon::start();
    let rt = runtime();
    let port = d.ssh_port;
    let started = Instant::now();
    let held = rt.block_on(async {
        let mut held = Vec::new();
        'addresses: for third in 1..=2u8 {
            for last in 1..=200u8 {
                if held.len() >= 256 {
                    break 'addresses;
                }
                let src = std::net::Ipv4Addr::new(127, 0, third, last);
                if let Some(s) = hold_one(src, port).await {
                    held.push(s);
                }
            }
        }
        held
    });
    assert_eq!(held.len(), 256, "one connection from each of 256 addresses");
    // Past the age a pending slot may be taken at, well inside the window.
    std::thread::sleep(Duration::from_millis(2500));
    let out = d.ssh(&d.admin, "version");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the flood outlived its login window; the test proves nothing"
    );
    assert_eq!(out.code, 0, "a real login gets through: {out:#?}");
    assert!(out.stdout.starts_with("cygni "), "{out:#?}");
    drop(held);
}
