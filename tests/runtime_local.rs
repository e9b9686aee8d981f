//! The local runtime against real processes on loopback: what an app owner
//! sees when Cygni runs their app without containers.
//!
//! Every wait is a deadline on an observable fact, never a bare sleep. When
//! the tests run as root (CI), apps run as the unprivileged default account,
//! so the privilege-drop path is exercised too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cygni::build::Artifact;
use cygni::logs::LogStore;
use cygni::names::{AppName, ProcessType};
use cygni::runtime::local::{Backoff, LocalConfig, LocalRuntime, RunAs};
use cygni::runtime::{
    Instance, InstanceId, InstanceSpec, InstanceState, OneOffSpec, Runtime, RuntimeError,
};

const DEADLINE: Duration = Duration::from_secs(20);

/// A slug directory, a log store and a runtime, all in one temp dir.
struct Host {
    _tmp: tempfile::TempDir,
    slug: PathBuf,
    logs: Arc<LogStore>,
    runtime: LocalRuntime,
    app: AppName,
}

fn host() -> Host {
    host_with(LocalConfig {
        run_as: RunAs::resolve_default(),
        stop_grace: Duration::from_secs(5),
        backoff: Backoff {
            first: Duration::from_millis(50),
            max: Duration::from_millis(200),
            reset_after: Duration::from_secs(30),
            crash_loop_after: 3,
        },
        ..LocalConfig::default()
    })
}

fn host_with(config: LocalConfig) -> Host {
    let tmp = tempfile::tempdir().expect("temp dir");
    // Apps may run as `nobody`: the path to the slug must be traversable
    // and the slug readable by others (tempdir makes 0700 dirs).
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod tmp");
    let slug = tmp.path().join("slug");
    fs::create_dir(&slug).expect("slug dir");
    fs::set_permissions(&slug, fs::Permissions::from_mode(0o755)).expect("chmod slug");
    let logs = Arc::new(LogStore::open(&tmp.path().join("logs")).expect("log store"));
    let runtime = LocalRuntime::new(config, logs.clone());
    Host {
        _tmp: tmp,
        slug,
        logs,
        runtime,
        app: AppName::parse("shop").expect("valid name"),
    }
}

impl Host {
    fn spec(&self, process: &str, command: &str) -> InstanceSpec {
        InstanceSpec {
            app: self.app.clone(),
            release: 3,
            process: ProcessType::parse(process).expect("valid process type"),
            index: 1,
            command: command.to_owned(),
            env: BTreeMap::new(),
            artifact: Artifact::Slug {
                dir: self.slug.clone(),
            },
            limits: Default::default(),
            mounts: Vec::new(),
            run_as: None,
        }
    }

    fn one_off(&self, argv: &[&str], timeout: Duration) -> OneOffSpec {
        OneOffSpec {
            app: self.app.clone(),
            release: 3,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            artifact: Artifact::Slug {
                dir: self.slug.clone(),
            },
            timeout,
            mounts: Vec::new(),
            run_as: None,
        }
    }

    /// Runs a one-off, collecting its output while it runs.
    async fn run(&self, spec: OneOffSpec) -> (Result<i32, RuntimeError>, String) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let collect = async {
            let mut out = Vec::new();
            while let Some(chunk) = rx.recv().await {
                out.extend_from_slice(&chunk);
            }
            String::from_utf8(out).expect("utf-8 output")
        };
        tokio::join!(self.runtime.run_once(spec, tx), collect)
    }

    fn log_texts(&self, source: &str) -> Vec<String> {
        self.logs
            .tail(&self.app, 1000, Some(source))
            .expect("tail")
            .into_iter()
            .map(|line| line.text)
            .collect()
    }

    /// Waits until a line from `source` satisfies `pred`, and returns it.
    async fn log_line(&self, source: &str, pred: impl Fn(&str) -> bool) -> String {
        eventually(&format!("a {source} log line"), || {
            self.log_texts(source).into_iter().find(|text| pred(text))
        })
        .await
    }

    async fn instance(&self, id: &InstanceId) -> Option<Instance> {
        let all = self.runtime.list(Some(&self.app)).await.expect("list");
        all.into_iter().find(|i| i.id == *id)
    }

    /// Waits until `list` shows the instance in a state satisfying `pred`.
    async fn instance_until(
        &self,
        id: &InstanceId,
        what: &str,
        pred: impl Fn(&Instance) -> bool,
    ) -> Instance {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(instance) = self.instance(id).await.filter(|i| pred(i)) {
                return instance;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `check` until it gives a value, or panics at the deadline.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: shop.localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

async fn answers(addr: SocketAddr) -> String {
    eventually(&format!("an HTTP answer on {addr}"), || {
        http_get(addr)
            .ok()
            .filter(|r| r.starts_with("HTTP/1.0 200"))
    })
    .await
}

/// Whether `pid` is a live process (a zombie waiting for init is dead).
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !matches!(
        state.and_then(|s| s.chars().next()),
        Some('Z') | Some('X') | None
    )
}

fn pid_after(text: &str, key: &str) -> u32 {
    text.strip_prefix(key)
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"))
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

const WEB: &str = r#"exec python3 -m http.server "$PORT" --bind 127.0.0.1"#;

#[tokio::test]
async fn web_instance_answers_on_its_endpoint_and_logs_as_web_1() {
    let host = host();
    let instance = host.runtime.start(host.spec("web", WEB)).await.unwrap();
    let endpoint = instance.endpoint.expect("web has an endpoint");
    assert!(endpoint.ip().is_loopback());
    assert_eq!(instance.id.0, "shop-v3-web-1");

    let response = answers(endpoint).await;
    assert!(response.contains("Directory listing"), "{response}");
    // http.server logs each request on stderr.
    host.log_line("web.1", |t| t.contains("\"GET / HTTP/1.0\" 200"))
        .await;
    host.log_line("cygni", |t| t.starts_with("web.1 started from v3"))
        .await;

    let listed = host.instance(&instance.id).await.expect("listed");
    assert_eq!(listed.state, InstanceState::Running);
    assert_eq!(listed.endpoint, Some(endpoint));
    assert_eq!(listed.restarts, 0);

    host.runtime
        .stop(&instance.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(host.runtime.list(None).await.unwrap().is_empty());
    assert!(http_get(endpoint).is_err(), "nothing listens after stop");
}

#[tokio::test]
async fn env_is_the_release_env_plus_port_and_dyno() {
    let host = host();
    let mut spec = host.spec(
        "web",
        r#"echo "greeting=$GREETING port=$PORT dyno=$DYNO home=$HOME lang=$LANG"; exec sleep 1000"#,
    );
    spec.env.insert("GREETING".into(), "hello world".into());
    // The runtime owns PORT and DYNO for web.
    spec.env.insert("PORT".into(), "1".into());
    let web = host.runtime.start(spec).await.unwrap();
    let port = web.endpoint.expect("endpoint").port();
    let line = host.log_line("web.1", |t| t.starts_with("greeting=")).await;
    assert_eq!(
        line,
        format!(
            "greeting=hello world port={port} dyno=web.1 home={} lang=C.UTF-8",
            host.slug.display()
        )
    );

    let worker = host
        .runtime
        .start(host.spec(
            "worker",
            r#"echo "port=${PORT-unset} dyno=$DYNO"; exec sleep 1000"#,
        ))
        .await
        .unwrap();
    assert_eq!(worker.endpoint, None);
    let line = host.log_line("worker.1", |t| t.starts_with("port=")).await;
    assert_eq!(line, "port=unset dyno=worker.1");
    host.runtime.shutdown().await;
}

#[tokio::test]
async fn nothing_of_the_daemon_env_leaks_into_apps() {
    let host = host();
    let mut spec = host.one_off(&["env"], DEADLINE);
    spec.env.insert("GREETING".into(), "hi".into());
    let (code, out) = host.run(spec).await;
    assert_eq!(code.unwrap(), 0);
    let keys: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["GREETING", "HOME", "LANG", "PATH"]),
        "{out}"
    );
}

#[tokio::test]
async fn a_killed_instance_comes_back_on_the_same_port() {
    let host = host();
    let web = host.runtime.start(host.spec("web", WEB)).await.unwrap();
    let endpoint = web.endpoint.expect("endpoint");
    answers(endpoint).await;
    let first = host.runtime.pid(&web.id).expect("a pid");

    // SAFETY: plain syscall on a process this test started.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    let second = eventually("a new pid", || {
        host.runtime.pid(&web.id).filter(|&p| p != first)
    })
    .await;
    assert!(!alive(first));
    answers(endpoint).await;
    assert!(alive(second));

    let listed = host.instance(&web.id).await.expect("listed");
    assert_eq!(listed.restarts, 1);
    assert_eq!(listed.endpoint, Some(endpoint));
    assert_eq!(listed.state, InstanceState::Running);
    host.log_line("cygni", |t| {
        t.starts_with("web.1 was killed by signal 9 (SIGKILL), restarting in 50ms")
    })
    .await;
    host.runtime.shutdown().await;
}

#[tokio::test]
async fn a_command_that_exits_at_once_crash_loops_and_keeps_retrying() {
    let host = host();
    let worker = host
        .runtime
        .start(host.spec("worker", "echo boom; exit 1"))
        .await
        .unwrap();
    host.log_line("cygni", |t| {
        t.starts_with("worker.1 is crash looping: exited with status 1, restarting in")
    })
    .await;
    host.log_line("worker.1", |t| t == "boom").await;
    host.instance_until(&worker.id, "crash loop with retries", |i| {
        i.state == InstanceState::CrashLoop && i.restarts >= 4
    })
    .await;
    // Retries keep their cap: 50ms, 100ms, 200ms, 200ms, ...
    assert!(host
        .log_texts("cygni")
        .iter()
        .any(|t| t.ends_with("restarting in 200ms")));
    host.runtime
        .stop(&worker.id, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(host.runtime.list(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn stop_ends_the_whole_process_group() {
    let host = host();
    let worker = host
        .runtime
        .start(host.spec("worker", r#"sleep 1000 & echo "bg=$!"; sleep 1000"#))
        .await
        .unwrap();
    let leader = host.runtime.pid(&worker.id).expect("a pid");
    let bg = pid_after(
        &host.log_line("worker.1", |t| t.starts_with("bg=")).await,
        "bg=",
    );
    assert!(alive(leader) && alive(bg));

    let begun = Instant::now();
    host.runtime
        .stop(&worker.id, Duration::from_secs(10))
        .await
        .unwrap();
    // sh and both sleeps die of SIGTERM: no need to wait for the grace.
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "took {:?}",
        begun.elapsed()
    );
    assert!(!alive(leader), "leader {leader} survived");
    // The leader is reaped by stop; the child got the same signal but may
    // still be exiting.
    eventually("the background child to die", || (!alive(bg)).then_some(())).await;
    host.log_line("cygni", |t| t == "worker.1 stopped").await;
}

#[tokio::test]
async fn a_crash_leaves_no_orphans_behind() {
    let host = host();
    // The leader exits; its background child would keep the port or the
    // queue it works on if the group were not killed with it.
    let worker = host
        .runtime
        .start(host.spec("worker", r#"sleep 1000 & echo "bg=$!"; exit 1"#))
        .await
        .unwrap();
    let bg = pid_after(
        &host.log_line("worker.1", |t| t.starts_with("bg=")).await,
        "bg=",
    );
    host.log_line("cygni", |t| t.starts_with("worker.1 exited with status 1"))
        .await;
    eventually("the orphan to die", || (!alive(bg)).then_some(())).await;
    host.runtime
        .stop(&worker.id, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace() {
    let host = host();
    let worker = host
        .runtime
        .start(host.spec("worker", r#"trap "" TERM; echo ready; exec sleep 1000"#))
        .await
        .unwrap();
    host.log_line("worker.1", |t| t == "ready").await;
    let pid = host.runtime.pid(&worker.id).expect("a pid");

    let grace = Duration::from_millis(500);
    let begun = Instant::now();
    host.runtime.stop(&worker.id, grace).await.unwrap();
    let took = begun.elapsed();
    assert!(took >= grace, "stopped in {took:?}, before the grace ended");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!alive(pid));
}

#[tokio::test]
async fn start_is_idempotent_and_stop_of_a_gone_instance_is_ok() {
    let host = host();
    let spec = host.spec("web", "exec sleep 1000");
    let first = host.runtime.start(spec.clone()).await.unwrap();
    let pid = host.runtime.pid(&first.id);
    let again = host.runtime.start(spec).await.unwrap();
    assert_eq!(first.endpoint, again.endpoint);
    assert_eq!(host.runtime.pid(&first.id), pid);
    assert_eq!(host.runtime.list(None).await.unwrap().len(), 1);

    host.runtime
        .stop(&first.id, Duration::from_secs(1))
        .await
        .unwrap();
    host.runtime
        .stop(&first.id, Duration::from_secs(1))
        .await
        .unwrap();
    let unknown = InstanceId("shop-v9-web-9".into());
    host.runtime
        .stop(&unknown, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn one_off_returns_exit_code_and_ordered_output() {
    let host = host();
    let (code, out) = host
        .run(host.one_off(
            &[
                "/bin/sh",
                "-c",
                "echo out; echo err >&2; echo out again; exit 3",
            ],
            DEADLINE,
        ))
        .await;
    assert_eq!(code.unwrap(), 3);
    assert_eq!(out, "out\nerr\nout again\n");

    let (code, _) = host
        .run(host.one_off(&["/bin/sh", "-c", "kill -9 $$"], DEADLINE))
        .await;
    assert_eq!(code.unwrap(), 128 + 9);

    // argv is passed as is: no shell of Cygni's interprets it.
    let (code, out) = host
        .run(host.one_off(&["echo", "$HOME;", "`id`", "a  b"], DEADLINE))
        .await;
    assert_eq!(code.unwrap(), 0);
    assert_eq!(out, "$HOME; `id` a  b\n");

    let (code, _) = host
        .run(host.one_off(&["no-such-program-cygni"], DEADLINE))
        .await;
    assert!(matches!(code, Err(RuntimeError::Spawn { .. })), "{code:?}");
}

#[tokio::test]
async fn one_off_timeout_kills_the_group() {
    let host = host();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let spec = host.one_off(
        &["/bin/sh", "-c", r#"sleep 1000 & echo "bg=$!"; wait"#],
        Duration::from_millis(500),
    );
    let begun = Instant::now();
    let run = host.runtime.run_once(spec, tx);
    let read_bg = async {
        let line = rx.recv().await.expect("a first line");
        pid_after(&String::from_utf8_lossy(&line), "bg=")
    };
    let (result, bg) = tokio::join!(run, read_bg);
    assert!(
        matches!(result, Err(RuntimeError::Timeout { secs: 1, .. })),
        "{result:?}"
    );
    assert!(begun.elapsed() < Duration::from_secs(5));
    // The group got its signal together with the leader; give the kernel a
    // moment to finish the child's exit rather than racing it.
    eventually("the background child to die after the timeout", || {
        (!alive(bg)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_cancelled_one_off_is_killed() {
    let host = host();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let spec = host.one_off(
        &["/bin/sh", "-c", r#"echo "pid=$$"; exec sleep 1000"#],
        DEADLINE,
    );
    let pid = {
        let run = host.runtime.run_once(spec, tx);
        tokio::pin!(run);
        let line = tokio::select! {
            line = rx.recv() => line.expect("a first line"),
            result = &mut run => panic!("finished early: {result:?}"),
        };
        pid_after(&String::from_utf8_lossy(&line), "pid=")
        // `run` is dropped here, as when an SSH client disconnects.
    };
    eventually("the cancelled command to die", || {
        (!alive(pid)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn apps_run_unprivileged_when_the_daemon_is_root() {
    if !is_root() {
        eprintln!("SKIPPED apps_run_unprivileged_when_the_daemon_is_root: needs root");
        return;
    }
    let host = host();
    let run_as = RunAs::resolve_default().expect("root gets a default account");
    let (code, out) = host.run(host.one_off(&["id", "-u"], DEADLINE)).await;
    assert_eq!(code.unwrap(), 0);
    assert_eq!(out.trim(), run_as.uid.to_string());
    // No supplementary groups: root's (gid 0 and others) must not leak.
    let (_, groups) = host.run(host.one_off(&["id", "-G"], DEADLINE)).await;
    assert_eq!(groups.trim(), run_as.gid.to_string());

    host.runtime
        .start(host.spec("worker", r#"echo "uid=$(id -u)"; exec sleep 1000"#))
        .await
        .unwrap();
    let line = host.log_line("worker.1", |t| t.starts_with("uid=")).await;
    assert_eq!(line, format!("uid={}", run_as.uid));
    host.runtime.shutdown().await;
}

#[tokio::test]
async fn profile_d_scripts_are_sourced_and_the_command_is_untouched() {
    let host = host();
    let profile = host.slug.join(".profile.d");
    fs::create_dir(&profile).unwrap();
    fs::set_permissions(&profile, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(profile.join("a.sh"), "export FROM_PROFILE=yes\n").unwrap();
    fs::set_permissions(profile.join("a.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    host.runtime
        .start(host.spec(
            "worker",
            r#"echo "profile=$FROM_PROFILE" 'single $1 quoted' "$0"; exec sleep 1000"#,
        ))
        .await
        .unwrap();
    let line = host
        .log_line("worker.1", |t| t.starts_with("profile="))
        .await;
    assert_eq!(line, "profile=yes single $1 quoted /bin/sh");
    host.runtime.shutdown().await;
}

#[tokio::test]
async fn images_need_another_runtime() {
    let host = host();
    let mut spec = host.spec("web", WEB);
    spec.artifact = Artifact::Image {
        reference: "cygni/shop:v3".into(),
    };
    let err = host.runtime.start(spec).await.unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::Unsupported {
                runtime: "local",
                ..
            }
        ),
        "{err}"
    );
    let mut one_off = host.one_off(&["true"], DEADLINE);
    one_off.artifact = Artifact::Image {
        reference: "cygni/shop:v3".into(),
    };
    let (result, _) = host.run(one_off).await;
    assert!(matches!(result, Err(RuntimeError::Unsupported { .. })));
}

#[tokio::test]
async fn shutdown_and_drop_stop_every_instance() {
    let host = host();
    let a = host
        .runtime
        .start(host.spec("web", "exec sleep 1000"))
        .await
        .unwrap();
    let b = host
        .runtime
        .start(host.spec("worker", "exec sleep 1000"))
        .await
        .unwrap();
    let pids = [
        host.runtime.pid(&a.id).unwrap(),
        host.runtime.pid(&b.id).unwrap(),
    ];
    host.runtime.shutdown().await;
    assert!(host.runtime.list(None).await.unwrap().is_empty());
    assert!(pids.iter().all(|&p| !alive(p)));

    // Dropping the runtime without shutdown still ends what it started.
    let host = self::host();
    let c = host
        .runtime
        .start(host.spec("worker", "exec sleep 1000"))
        .await
        .unwrap();
    let pid = host.runtime.pid(&c.id).unwrap();
    let Host { runtime, _tmp, .. } = host;
    drop(runtime);
    eventually("the instance of a dropped runtime to die", || {
        (!alive(pid)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_missing_slug_dir_is_a_start_error() {
    let host = host();
    let mut spec = host.spec("worker", "exec sleep 1000");
    spec.artifact = Artifact::Slug {
        dir: host.slug.join("missing"),
    };
    let err = host.runtime.start(spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Spawn { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("could not start shop-v3-worker-1"),
        "{err}"
    );
    assert!(host.runtime.list(None).await.unwrap().is_empty());
}
