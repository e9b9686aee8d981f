//! The kube runtime at start-up, against the real binary: `--runtime kube`
//! with a cluster that cannot be reached stops the start within seconds,
//! with one line naming the server it tried; `--runtime auto` then goes on
//! without it. (There is no k3s here: the API behaviour itself is covered
//! by the scripted mock scenarios in `src/runtime/kube/tests.rs`.)

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig.yaml");
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: test
  user:
    token: not-a-real-token
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// `cygni serve` with `args`; returns (exit status, stderr, how long it took),
/// or panics if it is still running after `limit`.
fn serve(dir: &Path, args: &[&str], limit: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cygni"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--ssh-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--https-listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cygni serve");
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cygni serve was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn closed_port() -> u16 {
    // Bound then dropped: nothing listens there now.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn kube_with_a_closed_port_stops_the_start_naming_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = closed_port();
    let server = format!("https://127.0.0.1:{port}");
    let kc = kubeconfig(dir.path(), &server);
    let (code, err, took) = serve(
        dir.path(),
        &["--runtime", "kube", "--kubeconfig", kc.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("cygni:")).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].contains(&server), "{err}");
    assert!(lines[0].contains("--runtime kube"), "{err}");
    assert!(lines[0].to_lowercase().contains("refused"), "{err}");
}

#[test]
fn kube_with_a_silent_listener_stops_the_start_within_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Accepts (the kernel does) and never answers the TLS handshake.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = format!("https://{}", listener.local_addr().expect("addr"));
    let kc = kubeconfig(dir.path(), &server);
    let (code, err, took) = serve(
        dir.path(),
        &["--runtime", "kube", "--kubeconfig", kc.to_str().unwrap()],
        Duration::from_secs(30),
    );
    drop(listener);
    assert_ne!(code, Some(0), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("cygni:")).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].contains(&server), "{err}");
    assert!(lines[0].contains("no answer within 5s"), "{err}");
}

#[test]
fn kube_with_a_missing_kubeconfig_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.yaml");
    let (code, err, _) = serve(
        dir.path(),
        &[
            "--runtime",
            "kube",
            "--kubeconfig",
            missing.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("cannot read the kubeconfig"), "{err}");
    assert!(err.contains("nope.yaml"), "{err}");
}

#[test]
fn cluster_commands_on_a_runtime_that_is_not_kube_say_so() {
    let d = common::TestDaemon::start();
    let out = d
        .ssh(&d.admin, "cluster:nodes")
        .fails_with("the runtime is local, not kube");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    d.ssh(&d.admin, "cluster:join-command")
        .fails_with("the runtime is local, not kube");
    // Not for developers, whatever the runtime.
    let dev = d.add_key("dev", "developer");
    d.ssh(&dev, "cluster:join-command")
        .fails_with("only admins can see the cluster's join token");
    d.ssh(&dev, "cluster:nodes")
        .fails_with("only admins can list the cluster's nodes");
}

#[test]
fn auto_with_an_unreachable_cluster_starts_on_another_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = format!("https://127.0.0.1:{}", closed_port());
    let kc = kubeconfig(dir.path(), &server);
    let started = Instant::now();
    let d = common::TestDaemon::start_with(&[
        "--runtime",
        "auto",
        "--kubeconfig",
        kc.to_str().expect("utf-8 path"),
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let log = d.log();
    assert!(
        log.contains("no Kubernetes cluster; trying Docker"),
        "{log}"
    );
    assert!(log.contains(&server), "{log}");
    // It serves: commands answer, and the runtime is not kube.
    d.ssh(&d.admin, "cluster:nodes").fails_with("not kube");
}
