//! The docker runtime, end to end: a real engine, real git, ssh and curl
//! through `cygni serve --runtime docker`, and the runtime on its own for
//! what the SSH commands cannot drive yet (scaling, one-offs).
//!
//! Nothing is downloaded: scripts/docker-test-setup.sh makes the local
//! images (`cygni-base:test`, busybox; `cygni-run:test`, busybox + the
//! host's python3). Without an engine each test says SKIPPED (and fails
//! under CI=true). Every container and image a test makes carries its
//! app's name (`cygni.app` label, `cygni/APP` images) and is removed at the
//! start and the end of the test, so reruns start clean.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cygni::build::Artifact;
use cygni::logs::LogStore;
use cygni::names::{AppName, ProcessType};
use cygni::runtime::docker::{DockerConfig, DockerRuntime};
use cygni::runtime::{InstanceSpec, InstanceState, OneOffSpec, Runtime, RuntimeError};

/// A daemon on the docker runtime, with `config` as its config file.
fn docker_daemon(config: &str) -> (TestDaemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cygni.toml");
    std::fs::write(&file, config).unwrap();
    let d = TestDaemon::start_with(&["--runtime", "docker", "--config", file.to_str().unwrap()]);
    (d, dir)
}

/// Buildpack apps compile in the stack built from the local Debian base
/// (no network), and run on `cygni-run:test`.
const CONFIG: &str = "run_image = \"cygni-run:test\"\nstack_base_image = \"cygni-stack-base:test\"\nstack_offline = true\n";

/// (container id, StartedAt, RestartCount) of a container, by name.
fn identity(name: &str) -> (String, String, String) {
    let out = docker(&[
        "inspect",
        "-f",
        "{{.Id}} {{.State.StartedAt}} {{.RestartCount}}",
        name,
    ]);
    let mut parts = out.split_whitespace().map(str::to_owned);
    let id = parts.next().unwrap_or_default();
    assert!(!id.is_empty(), "no container {name}");
    (
        id,
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    )
}

fn exists(name: &str) -> bool {
    !docker(&["ps", "-aq", "--filter", &format!("name=^{name}$")]).is_empty()
}

#[test]
fn dockerfile_app_is_served_logged_and_redeployed_with_zero_downtime() {
    if !engine_ready() {
        return;
    }
    let app = "dkweb";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = docker_daemon(CONFIG);
    let repo = fixture_repo(&d, "dockerfile-app", app);

    let out = push(&d, &repo, app).ok();
    assert!(
        out.stderr.contains("Building image cygni/dkweb:v1")
            && out.stderr.contains("remote: -----> Released v1"),
        "{out:#?}"
    );
    let (code, body) = d.curl(&host(app), "/");
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert!(body.contains("hello from dockerfile-app"), "{body}");
    let labels = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"cygni.app\"}} {{index .Config.Labels \"cygni.release\"}} {{index .Config.Labels \"cygni.process\"}} {{index .Config.Labels \"cygni.index\"}}",
        "cygni-dkweb-v1-web-1",
    ]);
    assert_eq!(labels, "dkweb 1 web 1");

    // What the container prints reaches the app's log.
    wait_for(
        "the container's output in the log",
        Duration::from_secs(20),
        || {
            let logs = d.ssh(&d.admin, &format!("logs {app}"));
            logs.stdout
                .contains("dockerfile-app serving on 5000 as web.1")
                .then_some(())
        },
    );

    // Zero downtime: 4 clients keep requesting while v2 replaces v1.
    let traffic = Traffic::start(
        d.http_port,
        &host(app),
        "hello from dockerfile-app",
        "hello from dockerfile-app v2",
        4,
    );
    edit(
        &repo.join("index.html"),
        "hello from dockerfile-app",
        "hello from dockerfile-app v2",
    );
    commit_all(&repo, "v2");
    let out = push(&d, &repo, app);
    let seen = traffic.wait_new(10, Duration::from_secs(10));
    let report = traffic.finish();
    let out = out.ok();
    assert!(out.stderr.contains("Released v2"), "{out:#?}");
    assert!(seen, "the clients never saw v2 ten times: {report:?}");
    assert!(report.failures.is_empty(), "failed requests: {report:?}");
    assert!(report.old > 0, "never saw v1");

    // The old container is stopped and removed once v2 is live: the push
    // returns at live, and the drain and stop finish just after it.
    wait_for(
        "v1's container to be removed",
        Duration::from_secs(20),
        || (!exists("cygni-dkweb-v1-web-1")).then_some(()),
    );
    assert!(exists("cygni-dkweb-v2-web-1"));
}

#[test]
fn failing_health_check_is_rejected_and_the_old_container_keeps_serving() {
    if !engine_ready() {
        return;
    }
    let app = "dkfail";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = docker_daemon(CONFIG);
    let repo = fixture_repo(&d, "dockerfile-app", app);
    push(&d, &repo, app).ok();
    let good_sha = head_sha(&repo);
    let before = identity("cygni-dkfail-v1-web-1");

    // It runs, but never listens: the engine's port proxy still accepts.
    replace_with_fixture(&repo, "docker-fail-noport");
    commit_all(&repo, "break it");
    assert_push_refused(
        &d,
        &repo,
        app,
        &good_sha,
        "did not pass its health check within 5s",
        "hello from dockerfile-app",
    );
    assert_eq!(identity("cygni-dkfail-v1-web-1"), before, "v1 was touched");
    assert!(
        !exists("cygni-dkfail-v2-web-1"),
        "the failed container is left"
    );
    let rel = d.ssh(&d.admin, &format!("releases {app} --json")).ok();
    let rel: serde_json::Value = serde_json::from_str(&rel.stdout).unwrap();
    assert_eq!(rel[0]["status"], "failed");
    assert_eq!(rel[1]["status"], "live");
}

#[test]
fn a_restarted_daemon_adopts_running_containers_without_restarting_them() {
    if !engine_ready() {
        return;
    }
    let app = "dkadopt";
    let _cleanup = DockerCleanup::new(&[app]);
    let (mut d, _config) = docker_daemon(CONFIG);
    let repo = fixture_repo(&d, "dockerfile-app", app);
    push(&d, &repo, app).ok();
    assert_eq!(d.curl(&host(app), "/").0, 200);
    let before = identity("cygni-dkadopt-v1-web-1");

    d.restart();
    // The container kept running while the daemon was away.
    assert_eq!(identity("cygni-dkadopt-v1-web-1"), before);
    wait_for(
        "the app to answer after a restart",
        Duration::from_secs(30),
        || {
            let (code, body) = d.curl(&host(app), "/");
            (code == 200 && body.contains("hello from dockerfile-app")).then_some(())
        },
    );
    // Same container, same start time, no restart: adopted, not replaced.
    assert_eq!(identity("cygni-dkadopt-v1-web-1"), before);
    let rel = d.ssh(&d.admin, &format!("releases {app} --json")).ok();
    let rel: serde_json::Value = serde_json::from_str(&rel.stdout).unwrap();
    assert_eq!(rel.as_array().unwrap().len(), 1, "no new release was made");
}

/// Images of recent releases are kept (rollback needs no rebuild); older
/// ones are pruned. (`rollback APP vN` itself is another issue: once it
/// lands, roll back to v2 here and check that nothing was built.)
#[test]
fn images_of_recent_releases_are_kept_and_older_ones_pruned() {
    if !engine_ready() {
        return;
    }
    let app = "dkkeep";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = docker_daemon(&format!("{CONFIG}keep_releases = 2\n"));
    let repo = fixture_repo(&d, "dockerfile-app", app);
    let image = |v: u32| !docker(&["images", "-q", &format!("cygni/{app}:v{v}")]).is_empty();

    push(&d, &repo, app).ok();
    for v in 2..=3 {
        edit(
            &repo.join("index.html"),
            "hello from dockerfile-app",
            &format!("hello from dockerfile-app v{v}"),
        );
        commit_all(&repo, &format!("v{v}"));
        push(&d, &repo, app).ok();
        if v == 2 {
            assert!(image(1) && image(2), "v1 and v2 are both kept");
        }
    }
    assert!(!image(1), "v1's image was not pruned");
    assert!(image(2) && image(3), "the last two images are kept");
    let (code, body) = d.curl(&host(app), "/");
    assert_eq!(code, 200);
    assert!(body.contains("hello from dockerfile-app v3"), "{body}");
}

#[test]
fn buildpack_app_runs_on_the_run_image() {
    if !engine_ready() {
        return;
    }
    let app = "dkbp";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = docker_daemon(CONFIG);
    let repo = fixture_repo(&d, "procfile-app", app);
    let out = push(&d, &repo, app).ok();
    assert!(
        out.stderr
            .contains("Putting the slug on run image cygni-run:test"),
        "{out:#?}"
    );
    let (code, body) = d.curl(&host(app), "/");
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert!(body.contains("hello from procfile-app"), "{body}");
    // It runs unprivileged, from /app.
    let user = docker(&["inspect", "-f", "{{.Config.User}}", "cygni-dkbp-v1-web-1"]);
    assert_eq!(user, "10001:10001");
}

// ---- The runtime on its own -------------------------------------------

struct RuntimeCase {
    _dir: tempfile::TempDir,
    runtime: DockerRuntime,
    logs: Arc<LogStore>,
}

async fn runtime_case() -> RuntimeCase {
    let dir = tempfile::tempdir().unwrap();
    let logs = Arc::new(LogStore::open(&dir.path().join("logs")).unwrap());
    let runtime = DockerRuntime::connect(
        DockerConfig {
            owner: dir.path().display().to_string(),
        },
        logs.clone(),
    )
    .await
    .expect("the engine answers");
    RuntimeCase {
        _dir: dir,
        runtime,
        logs,
    }
}

fn base_image() -> Artifact {
    Artifact::Image {
        reference: "cygni-base:test".into(),
    }
}

fn web_spec(app: &AppName, index: u32) -> InstanceSpec {
    InstanceSpec {
        app: app.clone(),
        release: 1,
        process: ProcessType::web(),
        index,
        command: "mkdir -p /tmp/www && echo \"instance $DYNO of $GREETING\" > /tmp/www/index.html && echo booted $DYNO && exec httpd -f -p \"$PORT\" -h /tmp/www".into(),
        env: BTreeMap::from([("GREETING".to_owned(), "dkscale".to_owned())]),
        artifact: base_image(),
        limits: Default::default(),
        mounts: Vec::new(),
        run_as: None,
    }
}

/// Scaling at the runtime level: two web instances of one release are two
/// containers, each with its own endpoint, both serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_web_instances_are_two_containers_and_both_serve() {
    if !engine_ready() {
        return;
    }
    let app = AppName::parse("dkscale").unwrap();
    let _cleanup = DockerCleanup::new(&["dkscale"]);
    let case = runtime_case().await;

    let one = case.runtime.start(web_spec(&app, 1)).await.unwrap();
    let two = case.runtime.start(web_spec(&app, 2)).await.unwrap();
    let (e1, e2) = (one.endpoint.unwrap(), two.endpoint.unwrap());
    assert_ne!(e1, e2);
    assert!(e1.ip().is_loopback() && e2.ip().is_loopback());
    // Idempotent per id: starting web.1 again returns the same instance.
    let again = case.runtime.start(web_spec(&app, 1)).await.unwrap();
    assert_eq!(again.endpoint, Some(e1));

    for (endpoint, dyno) in [(e1, "web.1"), (e2, "web.2")] {
        let expected = format!("instance {dyno} of dkscale");
        let body = tokio::task::spawn_blocking(move || {
            wait_for("the instance to serve", Duration::from_secs(20), || {
                let (code, body) = curl(endpoint.port(), "x", "/");
                (code == 200 && body.contains(&expected)).then_some(body)
            })
        })
        .await
        .unwrap();
        assert!(body.contains(dyno), "{body}");
    }
    let listed = case.runtime.list(Some(&app)).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|i| i.state == InstanceState::Running));
    assert_eq!(listed[0].id, one.id);

    // Their output reaches the log store, per instance.
    let logs = case.logs.clone();
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("both instances' output", Duration::from_secs(20), || {
            let lines = logs.tail(&app2, 50, None).unwrap_or_default();
            let has = |s: &str, t: &str| lines.iter().any(|l| l.source == s && l.text.contains(t));
            (has("web.1", "booted web.1") && has("web.2", "booted web.2")).then_some(())
        })
    })
    .await
    .unwrap();

    for instance in [&one, &two] {
        case.runtime
            .stop(&instance.id, Duration::from_secs(5))
            .await
            .unwrap();
    }
    assert!(case.runtime.list(Some(&app)).await.unwrap().is_empty());
    // Stopping what is gone is fine.
    case.runtime
        .stop(&one.id, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_containers_stream_output_return_the_code_and_are_removed() {
    if !engine_ready() {
        return;
    }
    let app = AppName::parse("dkonce").unwrap();
    let _cleanup = DockerCleanup::new(&["dkonce"]);
    let case = runtime_case().await;
    let spec = |argv: &[&str], timeout: u64| OneOffSpec {
        app: app.clone(),
        release: 1,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]),
        artifact: base_image(),
        timeout: Duration::from_secs(timeout),
        mounts: Vec::new(),
        run_as: None,
    };
    let one_offs = || docker(&["ps", "-aq", "--filter", "label=cygni.app=dkonce"]);

    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let code = case
        .runtime
        .run_once(
            spec(
                &["/bin/sh", "-c", "echo out $GREETING; echo err >&2; exit 3"],
                30,
            ),
            tx,
        )
        .await
        .unwrap();
    assert_eq!(code, 3);
    let mut output = String::new();
    while let Some(line) = rx.recv().await {
        output.push_str(&String::from_utf8_lossy(&line));
    }
    assert!(
        output.contains("out hi\n") && output.contains("err\n"),
        "{output:?}"
    );
    // One-offs are not instances.
    assert!(case.runtime.list(Some(&app)).await.unwrap().is_empty());

    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let started = Instant::now();
    let err = case
        .runtime
        .run_once(spec(&["sleep", "60"], 2), tx)
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    tokio::task::spawn_blocking(move || {
        wait_for(
            "one-off containers to be removed",
            Duration::from_secs(20),
            || one_offs().is_empty().then_some(()),
        )
    })
    .await
    .unwrap();
}

/// Image ids of an app's `cygni/APP:*` tags.
fn app_images(app: &str) -> Vec<String> {
    let mut v: Vec<String> = docker(&["images", "-q", "--no-trunc", &format!("cygni/{app}")])
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn rollback_reuses_the_kept_image_without_building() {
    if !engine_ready() {
        return;
    }
    let app = "dkroll";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = docker_daemon(CONFIG);
    let repo = fixture_repo(&d, "dockerfile-app", app);
    push(&d, &repo, app).ok();
    edit(
        &repo.join("index.html"),
        "hello from dockerfile-app",
        "second dockerfile-app",
    );
    commit_all(&repo, "v2");
    push(&d, &repo, app).ok();
    assert!(d.curl(&host(app), "/").1.contains("second dockerfile-app"));
    let images_before = app_images(app);
    let v1_image = docker(&["images", "-q", "--no-trunc", &format!("cygni/{app}:v1")]);
    assert!(!v1_image.is_empty(), "v1's image is kept");

    let out = d.ssh(&d.admin, &format!("rollback {app} v1")).ok();
    assert!(!out.stderr.contains("Building"), "{out:#?}");
    let (code, body) = d.curl(&host(app), "/");
    assert_eq!(code, 200);
    assert!(body.contains("hello from dockerfile-app"), "{body}");
    // No image was built: the same images exist, and v3 runs v1's.
    assert_eq!(app_images(app), images_before, "an image was built");
    let running = docker(&[
        "inspect",
        "-f",
        "{{.Image}}",
        &format!("cygni-{app}-v3-web-1"),
    ]);
    assert_eq!(running, v1_image, "v3 does not run v1's image");
}

#[test]
fn ps_scale_runs_two_containers_that_both_serve() {
    if !engine_ready() {
        return;
    }
    let app = "dkscale";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = docker_daemon(CONFIG);
    let repo = fixture_repo(&d, "dockerfile-app", app);
    push(&d, &repo, app).ok();
    d.ssh(&d.admin, &format!("ps:scale {app} web=2")).ok();
    assert!(exists(&format!("cygni-{app}-v1-web-1")));
    assert!(exists(&format!("cygni-{app}-v1-web-2")));
    let ps: serde_json::Value =
        serde_json::from_str(&d.ssh(&d.admin, &format!("ps {app} --json")).ok().stdout).unwrap();
    let instances = ps["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    for i in instances {
        let ep = i["endpoint"].as_str().unwrap();
        let port: u16 = ep.rsplit(':').next().unwrap().parse().unwrap();
        let (code, body) = curl(port, "x", "/");
        assert_eq!(code, 200, "{ep} does not serve");
        assert!(body.contains("hello from dockerfile-app"));
    }
    d.ssh(&d.admin, &format!("ps:scale {app} web=1")).ok();
    wait_for("web.2 to be removed", Duration::from_secs(20), || {
        (!exists(&format!("cygni-{app}-v1-web-2"))).then_some(())
    });
}

#[test]
fn run_on_docker_passes_stdin_exit_status_and_a_pty() {
    if !engine_ready() {
        return;
    }
    let app = "dkrun";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = docker_daemon(CONFIG);
    let repo = fixture_repo(&d, "dockerfile-app", app);
    push(&d, &repo, app).ok();
    d.ssh(&d.admin, &format!("config:set {app} GREETING=ahoy"))
        .ok();

    let out = d.ssh(
        &d.admin,
        &format!("run {app} -- sh -c 'echo $GREETING; exit 3'"),
    );
    assert_eq!(out.code, 3, "{out:#?}");
    assert_eq!(out.stdout, "ahoy\n");
    let piped = d
        .ssh_stdin(
            &d.admin,
            &format!("run {app} -- cat"),
            b"through the container\n",
        )
        .ok();
    assert_eq!(piped.stdout, "through the container\n");

    let tty = d
        .ssh_command(&d.admin, &["-tt"])
        .arg(format!("run {app} -- sh -c 'tty; echo TERM=$TERM'"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&tty.stdout);
    assert_eq!(tty.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("/dev/pts/"), "no pty: {stdout:?}");
    // Every one-off container is gone afterwards.
    let filter = format!("label=cygni.app={app}");
    wait_for(
        "one-off containers to be removed",
        Duration::from_secs(20),
        || {
            docker(&[
                "ps",
                "-aq",
                "--filter",
                &filter,
                "--filter",
                "label=cygni.one-off=true",
            ])
            .is_empty()
            .then_some(())
        },
    );
}

/// `.dockerignore` keeps files out of the build context, as with Docker:
/// the image gets the page but not the ignored files.
#[test]
fn dockerignore_keeps_files_out_of_the_image() {
    if !engine_ready() {
        return;
    }
    let app = "dkignore";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = docker_daemon(CONFIG);
    let repo = fixture_repo(&d, "dockerfile-app", app);
    std::fs::write(
        repo.join("Dockerfile"),
        "FROM cygni-base:test\nCOPY . /www/\nCMD [\"/bin/sh\", \"-c\", \"exec httpd -f -p \\\"$PORT\\\" -h /www\"]\n",
    )
    .unwrap();
    std::fs::write(repo.join("secret.txt"), "do not ship\n").unwrap();
    std::fs::create_dir_all(repo.join("logs")).unwrap();
    std::fs::write(repo.join("logs/today.txt"), "noise\n").unwrap();
    std::fs::write(repo.join("logs/keep.txt"), "kept\n").unwrap();
    std::fs::write(
        repo.join(".dockerignore"),
        "secret.txt\nlogs\n!logs/keep.txt\n",
    )
    .unwrap();
    commit_all(&repo, "ignore some files");
    push(&d, &repo, app).ok();

    let (code, body) = d.curl(&host(app), "/index.html");
    assert_eq!(code, 200);
    assert!(body.contains("hello from dockerfile-app"), "{body}");
    assert_eq!(
        d.curl(&host(app), "/secret.txt").0,
        404,
        "an ignored file shipped"
    );
    assert_eq!(
        d.curl(&host(app), "/logs/today.txt").0,
        404,
        "an ignored dir shipped"
    );
    let (code, body) = d.curl(&host(app), "/logs/keep.txt");
    assert_eq!(
        (code, body.trim()),
        (200, "kept"),
        "the exception was not shipped"
    );
}
