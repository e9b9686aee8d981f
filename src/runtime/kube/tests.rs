//! Scripted API-server scenarios (kube-rs's `tower_test` mock-service
//! pattern): each one plays the API server, request by request, and checks
//! the method, the path and the body Cygni sends against golden manifests
//! in `tests/fixtures/kube/`. A request the script does not expect, or a
//! missing one, fails the scenario.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::watcher::Event;
use serde_json::{json, Value};

use super::endpoints::tests::slice;
use super::manifest::tests::{golden, host_mount, web_spec, web_spec_with_storage, worker_spec};
use super::*;
use crate::deploy::plan::{self, Desired, DesiredRelease, Intent, Step};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NS: &str = "/api/v1/namespaces/cygni-shop";
const DEPLOY: &str = "/apis/apps/v1/namespaces/cygni-shop/deployments";
const APPLY: &str = "?&force=true&fieldManager=cygni";

fn runtime() -> (KubeRuntime, Handle, tempfile::TempDir) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = Arc::new(LogStore::open(dir.path()).expect("log store"));
    let rt = KubeRuntime::with_client(
        client,
        logs,
        KubeOptions {
            poll: Duration::from_millis(1),
            follow_logs: false,
            ..KubeOptions::default()
        },
    );
    (rt, handle, dir)
}

/// What the scripted server answers.
enum Reply {
    Json(Value),
    /// The applied body back, as the API server returns the object, with
    /// this generation.
    Echo(i64),
    NotFound,
    Status(u16, &'static str),
}

/// One expected request: method, path and query, the golden its body must
/// match (if any), and the answer.
struct Expect {
    method: &'static str,
    uri: String,
    golden: Option<&'static str>,
    reply: Reply,
}

fn expect(
    method: &'static str,
    uri: impl Into<String>,
    golden: Option<&'static str>,
    reply: Reply,
) -> Expect {
    Expect {
        method,
        uri: uri.into(),
        golden,
        reply,
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "code": code, "reason": reason, "message": message, "metadata": {}})
}

/// Play the API server for `script`, then check nothing more is asked.
async fn serve(mut handle: Handle, script: Vec<Expect>) {
    for (n, step) in script.into_iter().enumerate() {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "step {n}: no request came; wanted {} {}",
                    step.method, step.uri
                )
            })
            .expect("the client went away");
        let (parts, body) = req.into_parts();
        let uri = parts.uri.to_string();
        // A one-off pod's name is random: `*` in the script stands for it.
        let masked = mask_one_off(&uri);
        assert_eq!(
            (parts.method.as_str(), masked.as_str()),
            (step.method, step.uri.as_str()),
            "step {n}"
        );
        let bytes = body.collect_bytes().await.expect("body");
        let mut sent: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        if let Some(name) = sent["metadata"]["name"].as_str() {
            let m = mask_one_off(name);
            sent["metadata"]["name"] = json!(m);
        }
        // A restart's stamp is the time it ran.
        if let Some(stamp) =
            sent.pointer_mut("/spec/template/metadata/annotations/cygni.io~1restarted-at")
        {
            *stamp = json!("STAMP");
        }
        if let Some(name) = step.golden {
            golden(name, &sent);
        }
        let (code, value) = match step.reply {
            Reply::Json(v) => (200, v),
            Reply::Echo(generation) => {
                let mut v = sent.clone();
                v["metadata"]["generation"] = json!(generation);
                (200, v)
            }
            Reply::NotFound => (404, status(404, "NotFound", "not found")),
            Reply::Status(code, message) => (code, status(code, "BadRequest", message)),
        };
        let text = if value.is_string() {
            value.as_str().unwrap_or_default().to_owned()
        } else {
            value.to_string()
        };
        send.send_response(
            Response::builder()
                .status(StatusCode::from_u16(code).expect("status"))
                .body(Body::from(text.into_bytes()))
                .expect("response"),
        );
    }
    let more = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    if let Ok(Some((req, _))) = more {
        panic!("an unexpected request: {} {}", req.method(), req.uri());
    }
}

/// `run-v1-0123abcd` → `run-v1-*`, wherever it appears.
fn mask_one_off(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("run-v") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail[5..].find('-').map(|d| 5 + d + 1).unwrap_or(tail.len());
        out.push_str(&tail[..end]);
        out.push('*');
        rest = tail[end..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
    }
    out.push_str(rest);
    out
}

/// The first requests of every apply: namespace, Secret, the Deployment
/// as it was.
fn prelude(release: u32, previous: Option<Value>) -> Vec<Expect> {
    vec![
        expect(
            "PATCH",
            format!("{NS}{APPLY}"),
            Some("namespace"),
            Reply::Echo(1),
        ),
        expect(
            "PATCH",
            format!("{NS}/secrets/env-v{release}{APPLY}"),
            Some(if release == 1 {
                "secret-v1"
            } else {
                "secret-v2"
            }),
            Reply::Echo(1),
        ),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            previous.map_or(Reply::NotFound, Reply::Json),
        ),
    ]
}

fn service_apply() -> Expect {
    expect(
        "PATCH",
        format!("{NS}/services/web{APPLY}"),
        Some("service-web"),
        Reply::Echo(1),
    )
}

/// The Deployment as the API server reports it: what Cygni applied for
/// `release`, at `generation`, with `status`.
fn reported(release: u32, replicas: u32, generation: i64, status: Value) -> Value {
    let spec = web_spec(release);
    let d = manifest::with_applied_annotation(manifest::deployment(
        &spec,
        manifest::image(&spec).expect("image"),
        replicas,
    ));
    let mut v = serde_json::to_value(d).expect("json");
    v["metadata"]["generation"] = json!(generation);
    v["status"] = status;
    v
}

fn done(generation: i64, n: i64) -> Value {
    json!({"observedGeneration": generation, "replicas": n, "updatedReplicas": n,
           "readyReplicas": n, "availableReplicas": n})
}

fn pods_selector(release: u32) -> String {
    format!("{NS}/pods?&labelSelector=cygni.app%3Dshop%2Ccygni.process%3Dweb%2Ccygni.release%3D{release}")
}

fn pod(
    name: &str,
    release: u32,
    ip: &str,
    container_state: Value,
    ready: bool,
    restarts: i32,
) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "cygni-shop",
                     "creationTimestamp": "2026-12-02T00:00:00Z",
                     "labels": {"cygni.app": "shop", "cygni.process": "web",
                                "cygni.release": release.to_string()}},
        "status": {"phase": "Running", "podIP": ip, "startTime": "2026-12-02T00:00:01Z",
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
                   "containerStatuses": [{"name": "web", "image": "x", "imageID": "",
                                          "ready": ready, "restartCount": restarts,
                                          "state": container_state}]}
    })
}

fn pod_list(items: Vec<Value>) -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
}

#[tokio::test]
async fn first_deploy_applies_namespace_secret_deployment_and_service() {
    let (rt, handle, _dir) = runtime();
    let mut script = prelude(1, None);
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v1"),
            Reply::Echo(1),
        ),
        service_apply(),
        // Not observed yet, then rolled out.
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(1, 1, 1, json!({}))),
        ),
        expect("GET", pods_selector(1), None, Reply::Json(pod_list(vec![]))),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(1, 1, 1, done(1, 1))),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    rt.apply(&web_spec(1), 1).await.expect("rolled out");
    server.await.expect("script");
}

#[tokio::test]
async fn redeploy_waits_for_the_new_pods_then_succeeds() {
    let (rt, handle, _dir) = runtime();
    let mut script = prelude(2, Some(reported(1, 1, 1, done(1, 1))));
    let creating = pod(
        "web-v2-a",
        2,
        "10.42.0.7",
        json!({"waiting": {"reason": "ContainerCreating"}}),
        false,
        0,
    );
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v2"),
            Reply::Echo(2),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(
                2,
                1,
                2,
                json!({"observedGeneration": 2, "replicas": 2,
                "updatedReplicas": 1, "availableReplicas": 1}),
            )),
        ),
        expect(
            "GET",
            pods_selector(2),
            None,
            Reply::Json(pod_list(vec![creating])),
        ),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(2, 1, 2, done(2, 1))),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    rt.apply(&web_spec(2), 1).await.expect("rolled out");
    server.await.expect("script");
}

#[tokio::test]
async fn progress_deadline_restores_the_previous_spec_and_says_why() {
    let (rt, handle, _dir) = runtime();
    let mut script = prelude(2, Some(reported(1, 1, 1, done(1, 1))));
    let unready = pod("web-v2-a", 2, "10.42.0.7", json!({"running": {}}), false, 0);
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v2"),
            Reply::Echo(2),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(
                2,
                1,
                2,
                json!({"observedGeneration": 2, "replicas": 2,
                "updatedReplicas": 1, "availableReplicas": 1,
                "conditions": [{"type": "Progressing", "status": "False",
                                "reason": "ProgressDeadlineExceeded"}]}),
            )),
        ),
        expect(
            "GET",
            pods_selector(2),
            None,
            Reply::Json(pod_list(vec![unready])),
        ),
        expect(
            "GET",
            format!("{NS}/pods/web-v2-a/log?&tailLines=20"),
            None,
            Reply::Json(json!("booting\nlistening on 8080 instead of $PORT\n")),
        ),
        // The v1 Deployment exactly as first applied: the same golden.
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v1"),
            Reply::Echo(3),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    let err = rt
        .apply(&web_spec(2), 1)
        .await
        .expect_err("the rollout fails");
    server.await.expect("script");
    let text = err.to_string();
    assert!(
        text.contains("the rollout of web v2 failed, what ran before is back"),
        "{text}"
    );
    assert!(text.contains("ProgressDeadlineExceeded"), "{text}");
    assert!(
        text.contains("web-v2-a: running, but its readiness probe is failing"),
        "{text}"
    );
    assert!(
        text.contains("listening on 8080 instead of $PORT"),
        "{text}"
    );
}

#[tokio::test]
async fn image_pull_backoff_fails_early_and_restores_the_previous_spec() {
    let (rt, handle, _dir) = runtime();
    let mut script = prelude(2, Some(reported(1, 1, 1, done(1, 1))));
    let pulling = pod(
        "web-v2-a",
        2,
        "10.42.0.7",
        json!({"waiting": {"reason": "ImagePullBackOff",
                           "message": "Back-off pulling image \"10.0.0.1:5005/shop@sha256:02\""}}),
        false,
        0,
    );
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v2"),
            Reply::Echo(2),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(
                2,
                1,
                2,
                json!({"observedGeneration": 2, "replicas": 2,
                "updatedReplicas": 1, "availableReplicas": 1}),
            )),
        ),
        expect(
            "GET",
            pods_selector(2),
            None,
            Reply::Json(pod_list(vec![pulling])),
        ),
        expect(
            "GET",
            format!("{NS}/pods/web-v2-a/log?&tailLines=20"),
            None,
            Reply::Status(
                400,
                "container \"web\" is waiting to start: trying and failing to pull image",
            ),
        ),
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v1"),
            Reply::Echo(3),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    let err = rt
        .apply(&web_spec(2), 1)
        .await
        .expect_err("the rollout fails");
    server.await.expect("script");
    let text = err.to_string();
    assert!(
        text.contains("web-v2-a: ImagePullBackOff: Back-off pulling image"),
        "{text}"
    );
    assert!(text.contains("what ran before is back"), "{text}");
}

#[tokio::test]
async fn a_failed_first_rollout_leaves_no_deployment() {
    let (rt, handle, _dir) = runtime();
    let mut script = prelude(1, None);
    let crashing = pod(
        "web-v1-a",
        1,
        "10.42.0.7",
        json!({"waiting": {"reason": "CrashLoopBackOff"}}),
        false,
        3,
    );
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v1"),
            Reply::Echo(1),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(
                1,
                1,
                1,
                json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}),
            )),
        ),
        expect(
            "GET",
            pods_selector(1),
            None,
            Reply::Json(pod_list(vec![crashing])),
        ),
        // It crashed: the log of the previous container.
        expect(
            "GET",
            format!("{NS}/pods/web-v1-a/log?&previous=true&tailLines=20"),
            None,
            Reply::Json(json!(
                "Traceback (most recent call last):\nKeyError: 'DATABASE_URL'\n"
            )),
        ),
        expect(
            "DELETE",
            format!("{DEPLOY}/web?"),
            Some("delete-background"),
            Reply::Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            ),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    let err = rt
        .apply(&web_spec(1), 1)
        .await
        .expect_err("the rollout fails");
    server.await.expect("script");
    let text = err.to_string();
    assert!(text.contains("web-v1-a: CrashLoopBackOff"), "{text}");
    assert!(text.contains("KeyError: 'DATABASE_URL'"), "{text}");
}

#[tokio::test]
async fn scale_changes_replicas_only() {
    let (rt, handle, _dir) = runtime();
    let mut script = prelude(2, Some(reported(2, 1, 2, done(2, 1))));
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v2-x3"),
            Reply::Echo(3),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(2, 3, 3, done(3, 3))),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    rt.apply(&web_spec(2), 3).await.expect("scaled");
    server.await.expect("script");
    // Only replicas differ from the v2 manifest.
    let read = |n: &str| -> Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/kube/{n}.json"));
        serde_json::from_str(&std::fs::read_to_string(p).expect("golden")).expect("json")
    };
    let (mut one, three) = (read("apply-web-v2"), read("apply-web-v2-x3"));
    assert_eq!(three["spec"]["replicas"], json!(3));
    one["spec"]["replicas"] = json!(3);
    one["metadata"]["annotations"] = three["metadata"]["annotations"].clone();
    assert_eq!(one, three);
}

#[tokio::test]
async fn stop_sets_zero_replicas_and_start_brings_them_back() {
    let (rt, handle, _dir) = runtime();
    let mut script = prelude(2, Some(reported(2, 1, 2, done(2, 1))));
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v2-x0"),
            Reply::Echo(3),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(2, 0, 3, json!({"observedGeneration": 3}))),
        ),
    ]);
    script.extend(prelude(
        2,
        Some(reported(2, 0, 3, json!({"observedGeneration": 3}))),
    ));
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v2"),
            Reply::Echo(4),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(2, 1, 4, done(4, 1))),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    rt.apply(&web_spec(2), 0).await.expect("stopped");
    rt.apply(&web_spec(2), 1).await.expect("started");
    server.await.expect("script");
}

#[tokio::test]
async fn destroy_removes_the_deployments_then_the_namespace() {
    let (rt, handle, _dir) = runtime();
    let web = pod("web-v2-a", 2, "10.42.0.7", json!({"running": {}}), true, 0);
    let ok = || {
        Reply::Json(
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
        )
    };
    let script = vec![
        expect(
            "GET",
            "/api/v1/pods?&fieldSelector=metadata.name%3Dweb-v2-a&labelSelector=cygni.app%2Ccygni.process",
            None,
            Reply::Json(pod_list(vec![web])),
        ),
        expect("DELETE", format!("{DEPLOY}/web?"), Some("delete-background"), ok()),
        // A pod already gone is fine.
        expect(
            "GET",
            "/api/v1/pods?&fieldSelector=metadata.name%3Dweb-v2-b&labelSelector=cygni.app%2Ccygni.process",
            None,
            Reply::Json(pod_list(vec![])),
        ),
        expect("DELETE", "/api/v1/namespaces/cygni-shop?", Some("delete-background"), ok()),
    ];
    let server = tokio::spawn(serve(handle, script));
    rt.stop(&InstanceId("web-v2-a".into()), Duration::from_secs(1))
        .await
        .expect("stopped");
    rt.stop(&InstanceId("web-v2-b".into()), Duration::from_secs(1))
        .await
        .expect("gone is fine");
    rt.remove_app(&AppName::parse("shop").unwrap())
        .await
        .expect("namespace deleted");
    server.await.expect("script");
}

/// A restarted daemon lists what runs, routes what the Service says is
/// ready, and plans nothing to apply: it restarts nothing.
#[tokio::test]
async fn a_restarted_daemon_adopts_by_labels_and_restarts_nothing() {
    let (rt, handle, _dir) = runtime();
    let mut events = rt.events().expect("events");
    let pods = vec![
        pod("web-v2-a", 2, "10.42.0.7", json!({"running": {}}), true, 0),
        pod("web-v2-b", 2, "10.42.0.8", json!({"running": {}}), false, 0),
    ];
    let list = format!("{NS}/pods?&labelSelector=cygni.app%2Ccygni.process");
    let script = vec![
        expect(
            "GET",
            list.clone(),
            None,
            Reply::Json(pod_list(pods.clone())),
        ),
        expect("GET", list, None, Reply::Json(pod_list(pods))),
    ];
    let server = tokio::spawn(serve(handle, script));
    let shop = AppName::parse("shop").unwrap();

    // Before the EndpointSlices arrive nothing is routable.
    let before = rt.list(Some(&shop)).await.expect("list");
    assert_eq!(before.len(), 2);
    assert!(before
        .iter()
        .all(|i| i.endpoint.is_none() && i.release == 2));

    rt.endpoint_event(Event::Init);
    rt.endpoint_event(Event::InitApply(slice(
        "web-x",
        &[
            ("web-v2-a", "10.42.0.7", Some(true), false),
            ("web-v2-b", "10.42.0.8", Some(false), false),
        ],
    )));
    rt.endpoint_event(Event::InitDone);
    assert_eq!(
        events.try_recv().ok(),
        Some(InstanceEvent::ReadyChanged(shop.clone()))
    );

    let observed = rt.list(Some(&shop)).await.expect("list");
    server.await.expect("script");
    let a = observed.iter().find(|i| i.id.0 == "web-v2-a").expect("a");
    let b = observed.iter().find(|i| i.id.0 == "web-v2-b").expect("b");
    assert_eq!(a.state, InstanceState::Running);
    assert_eq!(a.endpoint, Some("10.42.0.7:5000".parse().unwrap()));
    assert_eq!((a.index, b.index), (1, 2));
    assert_eq!(b.state, InstanceState::Starting, "not ready: never routed");
    assert_eq!(b.endpoint, None);

    let desired = Desired {
        release: Some(DesiredRelease {
            version: 2,
            processes: [(ProcessType::web(), (web_spec(2), 2))]
                .into_iter()
                .collect(),
        }),
        stopped: false,
    };
    let p = plan::plan(
        Readiness::Backend,
        &Intent::Converge,
        &desired,
        &observed,
        &[],
    );
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s, Step::Apply { .. } | Step::Stop(_))),
        "{:?}",
        p.steps
    );
    assert!(p
        .steps
        .iter()
        .any(|s| matches!(s, Step::AdmitReady { release: 2 })));
}

#[tokio::test]
async fn a_worker_gets_no_service() {
    let (rt, handle, _dir) = runtime();
    let script = vec![
        expect(
            "PATCH",
            format!("{NS}{APPLY}"),
            Some("namespace"),
            Reply::Echo(1),
        ),
        expect(
            "PATCH",
            format!("{NS}/secrets/env-v3{APPLY}"),
            Some("secret-v3"),
            Reply::Echo(1),
        ),
        expect("GET", format!("{DEPLOY}/worker"), None, Reply::NotFound),
        expect(
            "PATCH",
            format!("{DEPLOY}/worker{APPLY}"),
            Some("apply-worker-v3"),
            Reply::Echo(1),
        ),
        expect(
            "GET",
            format!("{DEPLOY}/worker"),
            None,
            Reply::Json(json!({"metadata": {"name": "worker", "generation": 1},
                "spec": {"replicas": 1, "selector": {}, "template": {}},
                "status": done(1, 1)})),
        ),
    ];
    let server = tokio::spawn(serve(handle, script));
    rt.apply(&worker_spec(3), 1).await.expect("rolled out");
    server.await.expect("script");
}

#[tokio::test]
async fn a_slug_is_refused_before_any_request() {
    let (rt, handle, _dir) = runtime();
    let server = tokio::spawn(serve(handle, vec![]));
    let mut spec = web_spec(1);
    spec.artifact = crate::build::Artifact::Slug {
        dir: "/tmp/x".into(),
    };
    let err = rt.apply(&spec, 1).await.expect_err("refused");
    assert!(
        err.to_string()
            .contains("the kube runtime cannot run slug directories"),
        "{err}"
    );
    server.await.expect("script");
}

/// The proxy's routes follow the web Service's ready endpoints: EndpointSlice
/// events go through the converger into the routes snapshot, and a pod
/// whose endpoint is not ready is never routed.
#[tokio::test]
async fn endpoint_slice_events_feed_the_routes_and_not_ready_is_never_routed() {
    use crate::deploy::converge::Converger;
    use crate::proxy::{RouteTable, Routes};

    let (rt, handle, dir) = runtime();
    let rt = Arc::new(rt);
    let db = crate::state::Db::open(&dir.path().join("cygni.db")).expect("db");
    let shop = AppName::parse("shop").unwrap();
    let a = shop.clone();
    db.call(move |c| crate::state::apps::create(c, &a).map(|_| ()))
        .await
        .expect("app");
    let routes = Arc::new(RouteTable::new(Routes::empty()));
    let logs = Arc::new(LogStore::open(&dir.path().join("logs")).expect("logs"));
    let converger = Arc::new(Converger::new(
        db,
        rt.clone(),
        routes.clone(),
        logs,
        "localhost".into(),
        Duration::from_secs(30),
    ));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let watch = tokio::spawn(converger.clone().watch_exits(shutdown.clone()));
    tokio::task::yield_now().await;

    let list = format!("{NS}/pods?&labelSelector=cygni.app%2Ccygni.process");
    let a_ready = pod("web-v1-a", 1, "10.42.0.5", json!({"running": {}}), true, 0);
    let b_ready = pod("web-v1-b", 1, "10.42.0.6", json!({"running": {}}), true, 0);
    let b_unready = pod("web-v1-b", 1, "10.42.0.6", json!({"running": {}}), false, 0);
    // Each ReadyChanged makes the converger list the app's pods once.
    let script = vec![
        expect(
            "GET",
            list.clone(),
            None,
            Reply::Json(pod_list(vec![a_ready.clone(), b_unready.clone()])),
        ),
        expect(
            "GET",
            list.clone(),
            None,
            Reply::Json(pod_list(vec![a_ready.clone(), b_ready])),
        ),
        expect(
            "GET",
            list,
            None,
            Reply::Json(pod_list(vec![a_ready, b_unready])),
        ),
    ];
    let server = tokio::spawn(serve(handle, script));

    let endpoints = || -> Vec<std::net::SocketAddr> {
        routes
            .load()
            .lookup("shop.localhost")
            .map(|r| r.endpoints.clone())
            .unwrap_or_default()
    };
    let wait_for = |want: Vec<&'static str>| {
        let endpoints = &endpoints;
        async move {
            let want: Vec<std::net::SocketAddr> = want.iter().map(|s| s.parse().unwrap()).collect();
            for _ in 0..400 {
                let mut now = endpoints();
                now.sort();
                if now == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("routes {:?}, wanted {want:?}", endpoints());
        }
    };

    // a ready, b not ready: only a.
    rt.endpoint_event(Event::Init);
    rt.endpoint_event(Event::InitApply(slice(
        "web-x",
        &[
            ("web-v1-a", "10.42.0.5", Some(true), false),
            ("web-v1-b", "10.42.0.6", Some(false), false),
        ],
    )));
    rt.endpoint_event(Event::InitDone);
    wait_for(vec!["10.42.0.5:5000"]).await;

    // b turns ready: both.
    rt.endpoint_event(Event::Apply(slice(
        "web-x",
        &[
            ("web-v1-a", "10.42.0.5", Some(true), false),
            ("web-v1-b", "10.42.0.6", Some(true), false),
        ],
    )));
    wait_for(vec!["10.42.0.5:5000", "10.42.0.6:5000"]).await;

    // b's probe fails again: out of the routes.
    rt.endpoint_event(Event::Apply(slice(
        "web-x",
        &[
            ("web-v1-a", "10.42.0.5", Some(true), false),
            ("web-v1-b", "10.42.0.6", Some(false), false),
        ],
    )));
    wait_for(vec!["10.42.0.5:5000"]).await;

    server.await.expect("script");
    shutdown.cancel();
    watch.await.expect("watch");
}

#[tokio::test]
async fn cluster_nodes_and_the_join_server_come_from_the_node_list() {
    let (rt, handle, _dir) = runtime();
    let nodes = json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": [
        {"metadata": {"name": "agent-1", "labels": {}},
         "status": {"conditions": [{"type": "Ready", "status": "False"}],
                    "addresses": [{"type": "InternalIP", "address": "192.168.56.11"}],
                    "nodeInfo": {"kubeletVersion": "v1.33.1+k3s1", "architecture": "amd64",
                                 "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "",
                                 "kubeProxyVersion": "", "machineID": "", "operatingSystem": "linux",
                                 "osImage": "", "systemUUID": ""}}},
        {"metadata": {"name": "server", "labels": {"node-role.kubernetes.io/control-plane": "true"}},
         "status": {"conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": "192.168.56.10"},
                                  {"type": "Hostname", "address": "server"}]}}
    ]});
    let script = vec![expect("GET", "/api/v1/nodes?", None, Reply::Json(nodes))];
    let server = tokio::spawn(serve(handle, script));
    let cluster = rt.cluster().expect("kube is a cluster");
    let list = cluster.nodes().await.expect("nodes");
    server.await.expect("script");
    assert_eq!(
        list.iter()
            .map(|n| (n.name.as_str(), n.role.as_str(), n.ready))
            .collect::<Vec<_>>(),
        vec![
            ("agent-1", "agent", false),
            ("server", "control-plane", true)
        ]
    );
    assert_eq!(list[1].address.as_deref(), Some("192.168.56.10"));
    assert_eq!(list[0].version, "v1.33.1+k3s1");
}

#[test]
fn one_off_names_are_masked() {
    assert_eq!(
        mask_one_off("/api/v1/namespaces/x/pods/run-v3-00ab12ef/log?&follow=true"),
        "/api/v1/namespaces/x/pods/run-v3-*/log?&follow=true"
    );
    assert_eq!(
        mask_one_off("/api/v1/namespaces/x/pods?"),
        "/api/v1/namespaces/x/pods?"
    );
}

/// The Procfile `release:` phase on kube: a one-off pod in the release's
/// image and Secret, its output, its exit code, then the pod goes.
#[tokio::test]
async fn a_one_off_pod_streams_its_output_and_returns_its_exit_code() {
    let (rt, handle, _dir) = runtime();
    let spec = web_spec(1);
    let one_off = OneOffSpec {
        app: spec.app.clone(),
        release: 1,
        argv: vec!["/bin/sh".into(), "-c".into(), "./migrate".into()],
        env: (*spec.env).clone(),
        artifact: spec.artifact.clone(),
        timeout: Duration::from_secs(10),
        mounts: Vec::new(),
        run_as: None,
    };
    let state = |s: Value| {
        json!({"metadata": {"name": "run-v1-x"},
               "status": {"phase": "Running", "containerStatuses": [{"name": "run", "image": "x",
                   "imageID": "", "ready": true, "restartCount": 0, "state": s}]}})
    };
    let script = vec![
        expect(
            "PATCH",
            format!("{NS}{APPLY}"),
            Some("namespace"),
            Reply::Echo(1),
        ),
        expect(
            "PATCH",
            format!("{NS}/secrets/env-v1{APPLY}"),
            Some("secret-v1"),
            Reply::Echo(1),
        ),
        expect(
            "POST",
            format!("{NS}/pods?"),
            Some("one-off-pod"),
            Reply::Echo(1),
        ),
        expect(
            "GET",
            format!("{NS}/pods/run-v1-*"),
            None,
            Reply::Json(state(json!({"running": {}}))),
        ),
        expect(
            "GET",
            format!("{NS}/pods/run-v1-*/log?&follow=true"),
            None,
            Reply::Json(json!("migrating\ndone\n")),
        ),
        expect(
            "GET",
            format!("{NS}/pods/run-v1-*"),
            None,
            Reply::Json(state(json!({"terminated": {"exitCode": 3}}))),
        ),
        expect(
            "DELETE",
            format!("{NS}/pods/run-v1-*?"),
            Some("delete-background"),
            Reply::Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            ),
        ),
    ];
    let server = tokio::spawn(serve(handle, script));
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let code = rt.run_once(one_off, tx).await.expect("ran");
    server.await.expect("script");
    assert_eq!(code, 3);
    let mut out = Vec::new();
    while let Ok(chunk) = rx.try_recv() {
        out.extend(chunk);
    }
    assert_eq!(String::from_utf8_lossy(&out), "migrating\ndone\n");
}

/// `ps:restart` on kube: the plan asks the backend for a rolling restart
/// of each running type, and the runtime applies only the restart stamp,
/// under its own field manager, then waits for the rollout.
#[tokio::test]
async fn restart_is_a_rollout_restart_of_the_stamp_alone() {
    let desired = Desired {
        release: Some(DesiredRelease {
            version: 2,
            processes: [
                (ProcessType::web(), (web_spec(2), 2)),
                (ProcessType::parse("worker").unwrap(), (worker_spec(2), 0)),
            ]
            .into_iter()
            .collect(),
        }),
        stopped: false,
    };
    let p = plan::plan(
        Readiness::Backend,
        &Intent::Restart { only: None },
        &desired,
        &[],
        &[],
    );
    let restarts: Vec<(String, u32)> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Restart { spec, replicas } => Some((spec.process.to_string(), *replicas)),
            _ => None,
        })
        .collect();
    assert_eq!(restarts, vec![("web".to_owned(), 2)], "{:?}", p.steps);
    let last = p.steps.last().expect("steps");
    assert!(
        matches!(last, Step::AdmitReady { release: 2 }),
        "{:?}",
        p.steps
    );

    let (rt, handle, _dir) = runtime();
    let script = vec![
        // The spec as it is (a no-op for the API server when unchanged).
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            None,
            Reply::Json(reported(2, 2, 4, done(4, 2))),
        ),
        expect(
            "PATCH",
            format!("{DEPLOY}/web?&force=true&fieldManager=cygni-restart"),
            Some("restart-web"),
            Reply::Json(reported(2, 2, 5, json!({"observedGeneration": 4}))),
        ),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported(2, 2, 5, done(5, 2))),
        ),
    ];
    let server = tokio::spawn(serve(handle, script));
    rt.restart(&web_spec(2), 2).await.expect("restarted");
    server.await.expect("script");
}

const CLAIMS: &str = "/api/v1/namespaces/cygni-shop/persistentvolumeclaims";

/// The Deployment as the API server reports it, for a spec with storage.
fn reported_with_storage(release: u32, generation: i64, status: Value) -> Value {
    let spec = web_spec_with_storage(release);
    let d = manifest::with_applied_annotation(manifest::deployment(
        &spec,
        manifest::image(&spec).expect("image"),
        1,
    ));
    let mut v = serde_json::to_value(d).expect("json");
    v["metadata"]["generation"] = json!(generation);
    v["status"] = status;
    v
}

/// The claim as the API server keeps it once made (bound, with a uid).
fn claim_as_stored() -> Value {
    let app = AppName::parse("shop").unwrap();
    let mut v = serde_json::to_value(manifest::claim(
        &app,
        &super::manifest::tests::data_mount().name,
        &manifest::ClaimClass::default(),
    ))
    .expect("json");
    v["metadata"]["uid"] = json!("0d9c7a3e-1111-4222-8333-944445555666");
    v["spec"]["volumeName"] = json!("pvc-0d9c7a3e");
    v["status"] = json!({"phase": "Bound", "accessModes": ["ReadWriteOnce"],
                         "capacity": {"storage": "1Gi"}});
    v
}

/// An apply with storage: namespace, Secret, then the claim (looked up,
/// applied), and only then the Deployment as it was.
fn prelude_with_storage(
    release: u32,
    claim: Option<Value>,
    previous: Option<Value>,
) -> Vec<Expect> {
    let mut steps = prelude(release, previous);
    let get_deployment = steps.pop().expect("the GET of the Deployment");
    steps.extend([
        expect(
            "GET",
            format!("{CLAIMS}/storage-data"),
            None,
            claim.map_or(Reply::NotFound, Reply::Json),
        ),
        expect(
            "PATCH",
            format!("{CLAIMS}/storage-data{APPLY}"),
            Some("claim-data"),
            Reply::Echo(1),
        ),
        get_deployment,
    ]);
    steps
}

/// `storage:mount shop data:/data`, then a first push: the claim is applied
/// before the Deployment, which mounts it at /data.
#[tokio::test]
async fn a_deploy_with_storage_applies_the_claim_before_the_deployment() {
    let (rt, handle, _dir) = runtime();
    let mut script = prelude_with_storage(1, None, None);
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v1-storage"),
            Reply::Echo(1),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported_with_storage(1, 1, done(1, 1))),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    rt.apply(&web_spec_with_storage(1), 1)
        .await
        .expect("rolled out");
    server.await.expect("script");
    let applied: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/kube/apply-web-v1-storage.json"),
        )
        .expect("golden"),
    )
    .expect("json");
    let pod = &applied["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        json!("storage-data")
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"][0],
        json!({"name": "storage-data", "mountPath": "/data"})
    );
}

/// A redeploy, a rollback to v1 and a stop with the claim already there:
/// each re-applies the same claim (with the class and size it was made
/// with, although the operator has since configured others) and none
/// sends a DELETE: the script fails on any request it does not list.
#[tokio::test]
async fn redeploy_rollback_and_stop_reapply_the_same_claim_and_never_delete_it() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = KubeRuntime::with_client(
        Client::new(svc, "default"),
        Arc::new(LogStore::open(dir.path()).expect("log store")),
        KubeOptions {
            poll: Duration::from_millis(1),
            follow_logs: false,
            // A later kube_storage_* change applies to new claims only.
            storage: manifest::ClaimClass::parse(Some("longhorn"), Some("20Gi")).unwrap(),
        },
    );
    let mut script = prelude_with_storage(
        2,
        Some(claim_as_stored()),
        Some(reported_with_storage(1, 1, done(1, 1))),
    );
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            None,
            Reply::Echo(2),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported_with_storage(2, 2, done(2, 1))),
        ),
    ]);
    // The rollback: release 1's spec again (its Secret is env-v1).
    script.extend(prelude_with_storage(
        1,
        Some(claim_as_stored()),
        Some(reported_with_storage(2, 2, done(2, 1))),
    ));
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v1-storage"),
            Reply::Echo(3),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported_with_storage(1, 3, done(3, 1))),
        ),
    ]);
    // ps:stop: zero replicas, the claim stays.
    script.extend(prelude_with_storage(
        1,
        Some(claim_as_stored()),
        Some(reported_with_storage(1, 3, done(3, 1))),
    ));
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            None,
            Reply::Echo(4),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json({
                let mut v = reported_with_storage(1, 4, json!({"observedGeneration": 4}));
                v["spec"]["replicas"] = json!(0);
                v
            }),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    rt.apply(&web_spec_with_storage(2), 1)
        .await
        .expect("redeployed");
    rt.apply(&web_spec_with_storage(1), 1)
        .await
        .expect("rolled back");
    rt.apply(&web_spec_with_storage(1), 0)
        .await
        .expect("stopped");
    server.await.expect("script");
}

/// A failed rollout puts the previous Deployment back and leaves the claim
/// alone: the data of the release that keeps serving is untouched.
#[tokio::test]
async fn a_failed_first_rollout_with_storage_deletes_the_deployment_not_the_claim() {
    let (rt, handle, _dir) = runtime();
    let crashing = pod(
        "web-v1-a",
        1,
        "10.42.0.7",
        json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}),
        false,
        2,
    );
    let mut script = prelude_with_storage(1, None, None);
    script.extend([
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v1-storage"),
            Reply::Echo(1),
        ),
        service_apply(),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported_with_storage(
                1,
                1,
                json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}),
            )),
        ),
        expect(
            "GET",
            pods_selector(1),
            None,
            Reply::Json(pod_list(vec![crashing])),
        ),
        expect(
            "GET",
            format!("{NS}/pods/web-v1-a/log?&previous=true&tailLines=20"),
            None,
            Reply::Json(json!(
                "sqlite3.OperationalError: unable to open database file\n"
            )),
        ),
        // Only the Deployment goes.
        expect(
            "DELETE",
            format!("{DEPLOY}/web?"),
            Some("delete-background"),
            Reply::Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            ),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    let err = rt
        .apply(&web_spec_with_storage(1), 1)
        .await
        .expect_err("the rollout fails");
    server.await.expect("script");
    let text = err.to_string();
    assert!(text.contains("CrashLoopBackOff"), "{text}");
    assert!(text.contains("unable to open database file"), "{text}");
}

/// `storage:mount --host-path` on a kube server: the push is refused with
/// one line saying what to do, before any request (nothing is applied, so
/// what runs keeps running); the `release:` phase is refused the same way.
#[tokio::test]
async fn a_host_path_mount_is_refused_and_nothing_is_applied() {
    let (rt, handle, _dir) = runtime();
    let server = tokio::spawn(serve(handle, vec![]));
    let mut spec = web_spec_with_storage(2);
    spec.mounts.push(host_mount());
    let err = rt.apply(&spec, 1).await.expect_err("refused");
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(
        text.starts_with(
            "storage shared of shop is a host directory (--host-path), which the kube runtime does not mount"
        ),
        "{text}"
    );
    let one_off = OneOffSpec {
        app: spec.app.clone(),
        release: 2,
        argv: vec!["./migrate".into()],
        env: (*spec.env).clone(),
        artifact: spec.artifact.clone(),
        timeout: Duration::from_secs(10),
        mounts: spec.mounts.clone(),
        run_as: None,
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let err = rt.run_once(one_off, tx).await.expect_err("refused");
    assert!(err.to_string().contains("--host-path"), "{err}");
    server.await.expect("script");
}

/// A `release:` command sees the storage too: the claim is applied, and
/// the one-off pod mounts it at /data with `CYGNI_STORAGE_DATA`.
#[tokio::test]
async fn a_one_off_pod_mounts_the_storage() {
    let (rt, handle, _dir) = runtime();
    let spec = web_spec_with_storage(1);
    let one_off = OneOffSpec {
        app: spec.app.clone(),
        release: 1,
        argv: vec!["/bin/sh".into(), "-c".into(), "./migrate".into()],
        env: (*spec.env).clone(),
        artifact: spec.artifact.clone(),
        timeout: Duration::from_secs(10),
        mounts: spec.mounts.clone(),
        run_as: None,
    };
    let mut script = prelude_with_storage(1, Some(claim_as_stored()), None);
    script.pop(); // no Deployment is read for a one-off
    let exited = json!({"metadata": {"name": "run-v1-x"},
        "status": {"phase": "Succeeded", "containerStatuses": [{"name": "run", "image": "x",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0}}}]}});
    script.extend([
        expect(
            "POST",
            format!("{NS}/pods?"),
            Some("one-off-pod-storage"),
            Reply::Echo(1),
        ),
        expect(
            "GET",
            format!("{NS}/pods/run-v1-*"),
            None,
            Reply::Json(exited.clone()),
        ),
        expect(
            "GET",
            format!("{NS}/pods/run-v1-*/log?&follow=true"),
            None,
            Reply::Json(json!("migrated\n")),
        ),
        expect(
            "GET",
            format!("{NS}/pods/run-v1-*"),
            None,
            Reply::Json(exited),
        ),
        expect(
            "DELETE",
            format!("{NS}/pods/run-v1-*?"),
            Some("delete-background"),
            Reply::Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            ),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let code = rt.run_once(one_off, tx).await.expect("ran");
    server.await.expect("script");
    assert_eq!(code, 0);
}

/// `storage:mount shop data:/data`, then `ps:restart shop`: the restart
/// claims the storage and applies the Deployment with it before stamping,
/// so the mount applies from that restart as the command says.
#[tokio::test]
async fn a_restart_after_storage_mount_applies_the_claim_and_the_mount() {
    let (rt, handle, _dir) = runtime();
    let script = vec![
        expect(
            "GET",
            format!("{CLAIMS}/storage-data"),
            None,
            Reply::NotFound,
        ),
        expect(
            "PATCH",
            format!("{CLAIMS}/storage-data{APPLY}"),
            Some("claim-data"),
            Reply::Echo(1),
        ),
        expect(
            "PATCH",
            format!("{DEPLOY}/web{APPLY}"),
            Some("apply-web-v1-storage"),
            Reply::Json(reported_with_storage(
                1,
                2,
                json!({"observedGeneration": 1}),
            )),
        ),
        expect(
            "PATCH",
            format!("{DEPLOY}/web?&force=true&fieldManager=cygni-restart"),
            None,
            Reply::Json(reported_with_storage(
                1,
                3,
                json!({"observedGeneration": 1}),
            )),
        ),
        expect(
            "GET",
            format!("{DEPLOY}/web"),
            None,
            Reply::Json(reported_with_storage(1, 3, done(3, 1))),
        ),
    ];
    let server = tokio::spawn(serve(handle, script));
    rt.restart(&web_spec_with_storage(1), 1)
        .await
        .expect("restarted");
    server.await.expect("script");
}
