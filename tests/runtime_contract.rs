//! The `Runtime` contract, one suite run against every backend that can
//! run here: the fake (in memory), local (processes) and docker (the real
//! engine; skipped loudly without one, a failure under CI=true).
//!
//! What the converger relies on: `start` is idempotent per id, `list`
//! reports what runs with its incarnation, `stop` of a gone instance is
//! fine, the backend says which artifact it needs, and instances of
//! other apps are not touched.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cygni::build::Artifact;
use cygni::logs::LogStore;
use cygni::names::{AppName, ProcessType};
use cygni::runtime::docker::{DockerConfig, DockerRuntime};
use cygni::runtime::fake::FakeRuntime;
use cygni::runtime::local::{LocalConfig, LocalRuntime, RunAs};
use cygni::runtime::{ArtifactKind, InstanceSpec, InstanceState, Runtime};

fn spec(app: &str, process: &str, index: u32, artifact: &Artifact, command: &str) -> InstanceSpec {
    InstanceSpec {
        app: AppName::parse(app).expect("app name"),
        release: 1,
        process: ProcessType::parse(process).expect("process type"),
        index,
        command: command.to_owned(),
        env: BTreeMap::new(),
        artifact: artifact.clone(),
        limits: Default::default(),
        mounts: Vec::new(),
        run_as: None,
    }
}

/// A local runtime with a slug directory apps (maybe `nobody`) can reach.
fn local_runtime() -> (tempfile::TempDir, std::path::PathBuf, LocalRuntime) {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let slug = tmp.path().join("slug");
    std::fs::create_dir(&slug).expect("slug");
    std::fs::set_permissions(&slug, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let logs = Arc::new(LogStore::open(&tmp.path().join("logs")).expect("logs"));
    let rt = LocalRuntime::new(
        LocalConfig {
            run_as: RunAs::resolve_default(),
            ..LocalConfig::default()
        },
        logs,
    );
    (tmp, slug, rt)
}

/// A docker runtime on the engine, with the local test images built; None
/// (after saying SKIPPED, or failing under CI=true) without an engine.
async fn docker_runtime() -> Option<(tempfile::TempDir, DockerRuntime)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/docker-test-setup.sh");
    let out = Command::new(&script)
        .output()
        .expect("run docker-test-setup.sh");
    match out.status.code() {
        Some(0) => {}
        Some(3) => {
            common::skip_or_fail("docker engine not available");
            return None;
        }
        _ => panic!(
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let logs = Arc::new(LogStore::open(&tmp.path().join("logs")).expect("logs"));
    let owner = tmp.path().display().to_string();
    let rt = DockerRuntime::connect(DockerConfig { owner }, logs)
        .await
        .expect("connect to the engine");
    Some((tmp, rt))
}

/// The contract, for any backend. `web` and `worker` are the commands
/// each backend's artifact can run.
async fn contract(rt: &dyn Runtime, artifact: Artifact, web: &str, worker: &str) {
    let expected_kind = match artifact {
        Artifact::Slug { .. } => ArtifactKind::Slug,
        Artifact::Image { .. } => ArtifactKind::Image,
    };
    assert_eq!(rt.artifact_kind(), expected_kind, "{}", rt.name());

    let w = spec("contract", "web", 1, &artifact, web);
    let k = spec("contract", "worker", 1, &artifact, worker);
    let other = spec("bystander", "worker", 1, &artifact, worker);

    // Start: a web instance reports an endpoint, a worker none.
    let first = rt.start(w.clone()).await.expect("start web");
    assert_eq!(first.id, w.id());
    assert!(
        first.endpoint.is_some(),
        "{}: web has no endpoint",
        rt.name()
    );
    let worker_inst = rt.start(k.clone()).await.expect("start worker");
    assert!(worker_inst.endpoint.is_none());
    rt.start(other.clone()).await.expect("start bystander");

    // Idempotent per id: the same instance, not a second one.
    let again = rt.start(w.clone()).await.expect("start web again");
    assert_eq!(again.endpoint, first.endpoint, "{}", rt.name());
    let app = w.app.clone();
    let listed = rt.list(Some(&app)).await.expect("list");
    assert_eq!(listed.len(), 2, "{}: {listed:?}", rt.name());
    let web_now = listed.iter().find(|i| i.id == w.id()).expect("web listed");
    assert!(
        matches!(
            web_now.state,
            InstanceState::Running | InstanceState::Starting
        ),
        "{}: {:?}",
        rt.name(),
        web_now.state
    );
    assert_eq!(web_now.restarts, 0);

    // Stop, then stop again: both fine; only that instance goes.
    rt.stop(&w.id(), Duration::from_secs(2))
        .await
        .expect("stop");
    rt.stop(&w.id(), Duration::from_secs(2))
        .await
        .expect("stop of a gone instance is fine");
    let listed = rt.list(Some(&app)).await.expect("list");
    assert!(
        listed
            .iter()
            .all(|i| i.id != w.id() || i.state == InstanceState::Stopped),
        "{}: {listed:?}",
        rt.name()
    );
    assert!(listed.iter().any(|i| i.id == k.id()));
    let bystanders = rt.list(Some(&other.app)).await.expect("list bystander");
    assert_eq!(
        bystanders.len(),
        1,
        "{}: another app was touched",
        rt.name()
    );

    // A stopped id starts afresh.
    let back = rt.start(w.clone()).await.expect("start after stop");
    assert!(back.endpoint.is_some());

    for s in [&w, &k, &other] {
        rt.stop(&s.id(), Duration::from_secs(2))
            .await
            .expect("cleanup");
    }
    assert!(rt
        .list(Some(&app))
        .await
        .expect("list")
        .iter()
        .all(|i| i.state == InstanceState::Stopped));
}

#[tokio::test]
async fn the_fake_keeps_the_contract() {
    let fake = FakeRuntime::default();
    let slug = Artifact::Slug {
        dir: "/nowhere".into(),
    };
    contract(&fake, slug, "serve", "work").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_runtime_keeps_the_contract() {
    let (_tmp, slug, rt) = local_runtime();
    contract(
        &rt,
        Artifact::Slug { dir: slug },
        "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1",
        "exec sleep 300",
    )
    .await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_runtime_keeps_the_contract() {
    let Some((_tmp, rt)) = docker_runtime().await else {
        return;
    };
    contract(
        &rt,
        Artifact::Image {
            reference: "cygni-base:test".into(),
        },
        "exec httpd -f -p \"$PORT\"",
        "exec sleep 300",
    )
    .await;
}

/// An instance whose process dies on its own is reported at once
/// (`Runtime::events`), so the converger takes it out of the routes
/// without waiting for the next reconcile.
async fn exit_is_reported(rt: &dyn Runtime, spec: InstanceSpec, kill: impl FnOnce()) {
    let mut events = rt.events().expect("this backend reports exits");
    rt.start(spec.clone()).await.expect("start");
    // Let it settle, so the kill hits the running process.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(cygni::runtime::InstanceEvent::Exited(id)) if id == spec.id() => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(
        got,
        Ok(true),
        "{}: no exit event for {}",
        rt.name(),
        spec.id()
    );
    rt.stop(&spec.id(), Duration::from_secs(2))
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_exits_are_reported_at_once() {
    let (_tmp, slug, rt) = local_runtime();
    let s = spec(
        "exits",
        "worker",
        1,
        &Artifact::Slug { dir: slug },
        "exec sleep 300",
    );
    let id = s.id();
    let rt_ref = &rt;
    exit_is_reported(&rt, s, || {
        let pid = rt_ref.pid(&id).expect("a pid");
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    })
    .await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_exits_are_reported_at_once() {
    let Some((_tmp, rt)) = docker_runtime().await else {
        return;
    };
    let image = Artifact::Image {
        reference: "cygni-base:test".into(),
    };
    let s = spec("exits", "worker", 1, &image, "exec sleep 300");
    let name = cygni::runtime::docker::container_name(&s.id());
    exit_is_reported(&rt, s, || {
        let status = Command::new("docker")
            .args(["kill", "--signal", "KILL", &name])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("docker kill");
        assert!(status.success());
    })
    .await;
}
