//! Table tests of the planner: made-up desired, observed and admitted
//! values in, the exact steps out. No processes, containers or ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::*;
use crate::build::Artifact;
use crate::limits::Limits;
use crate::names::AppName;
use crate::runtime::HealthCheck;

fn app() -> AppName {
    AppName::parse("shop").unwrap()
}

fn spec(release: u32, process: &str) -> ProcessSpec {
    ProcessSpec {
        app: app(),
        release,
        process: ProcessType::parse(process).unwrap(),
        command: format!("run {process}"),
        env: Arc::new(BTreeMap::new()),
        artifact: Artifact::Slug {
            dir: PathBuf::from(format!("/slugs/shop/v{release}")),
        },
        check: HealthCheck {
            path: Some("/up".into()),
            timeout_secs: 5,
        },
        limits: Limits::default(),
        mounts: Vec::new(),
        run_as: None,
    }
}

/// Release `version` with `web=N worker=M` (0 leaves the type out when
/// negative is not needed: a count of 0 keeps the type with no instances).
fn desired(version: u32, formation: &[(&str, u32)]) -> Desired {
    Desired {
        release: Some(DesiredRelease {
            version,
            processes: formation
                .iter()
                .map(|(p, n)| (ProcessType::parse(p).unwrap(), (spec(version, p), *n)))
                .collect(),
        }),
        stopped: false,
    }
}

fn id(release: u32, process: &str, index: u32) -> InstanceId {
    InstanceId::new(
        &app(),
        release,
        &ProcessType::parse(process).unwrap(),
        index,
    )
}

fn running(release: u32, process: &str, index: u32, restarts: u32) -> Instance {
    Instance {
        id: id(release, process, index),
        app: app(),
        release,
        process: ProcessType::parse(process).unwrap(),
        index,
        endpoint: (process == "web").then(|| addr(release, index)),
        state: InstanceState::Running,
        started_at: SystemTime::UNIX_EPOCH,
        restarts,
    }
}

fn addr(release: u32, index: u32) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10000 + (release * 100 + index) as u16))
}

fn admitted(release: u32, index: u32, restarts: u32) -> Admission {
    Admission {
        id: id(release, "web", index),
        release,
        endpoint: addr(release, index),
        restarts,
    }
}

/// Steps as short strings, so a table reads like the plan.
fn show(plan: &Plan) -> Vec<String> {
    let ids = |v: &[InstanceId]| {
        v.iter()
            .map(|i| i.0.strip_prefix("shop-").unwrap_or(&i.0).to_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    plan.steps
        .iter()
        .map(|s| match s {
            Step::Evict(v) => format!("evict {}", ids(v)),
            Step::Start(s) => format!("start {}", ids(&[s.id()])),
            Step::Check { id, fresh } => {
                format!(
                    "check {}{}",
                    ids(std::slice::from_ref(id)),
                    if *fresh { "" } else { " (existing)" }
                )
            }
            Step::Route { admit, retire } => {
                format!("route +[{}] -[{}]", ids(admit), ids(retire))
            }
            Step::Drain => "drain".into(),
            Step::Stop(v) => format!("stop {}", ids(v)),
            Step::Apply { spec, replicas } => {
                format!("apply v{} {}={replicas}", spec.release, spec.process)
            }
            Step::AdmitReady { release } => format!("admit ready v{release}"),
            Step::Restart { spec, replicas } => {
                format!("restart v{} {}={replicas}", spec.release, spec.process)
            }
        })
        .collect()
}

fn converge(d: &Desired, observed: &[Instance], adm: &[Admission]) -> Vec<String> {
    show(&plan(Readiness::Cygni, &Intent::Converge, d, observed, adm))
}

#[test]
fn first_deploy_starts_checks_then_routes() {
    let steps = converge(&desired(1, &[("web", 1), ("worker", 1)]), &[], &[]);
    assert_eq!(
        steps,
        [
            "start v1-web-1",
            "start v1-worker-1",
            "check v1-web-1",
            "route +[v1-web-1] -[]",
        ]
    );
}

#[test]
fn redeploy_switches_in_one_swap_then_drains_and_stops_the_old() {
    let observed = [running(1, "web", 1, 0), running(1, "worker", 1, 0)];
    let steps = converge(
        &desired(2, &[("web", 1), ("worker", 1)]),
        &observed,
        &[admitted(1, 1, 0)],
    );
    assert_eq!(
        steps,
        [
            "start v2-web-1",
            "start v2-worker-1",
            "check v2-web-1",
            "route +[v2-web-1] -[v1-web-1]",
            "drain",
            "stop v1-web-1,v1-worker-1",
        ]
    );
    // The push returns once v2 serves: draining and stopping come after.
    let p = plan(
        Readiness::Cygni,
        &Intent::Converge,
        &desired(2, &[("web", 1), ("worker", 1)]),
        &observed,
        &[admitted(1, 1, 0)],
    );
    assert_eq!(p.live_at(), 4);
}

#[test]
fn nothing_differs_means_no_steps() {
    let observed = [
        running(3, "web", 1, 0),
        running(3, "web", 2, 0),
        running(3, "worker", 1, 0),
    ];
    let adm = [admitted(3, 1, 0), admitted(3, 2, 0)];
    let d = desired(3, &[("web", 2), ("worker", 1)]);
    assert!(plan(Readiness::Cygni, &Intent::Converge, &d, &observed, &adm).is_empty());
    // Also when nothing is deployed and nothing runs.
    assert!(plan(
        Readiness::Cygni,
        &Intent::Converge,
        &Desired::default(),
        &[],
        &[]
    )
    .is_empty());
}

#[test]
fn scale_up_checks_the_new_instance_before_routing_it() {
    let steps = converge(
        &desired(3, &[("web", 2)]),
        &[running(3, "web", 1, 0)],
        &[admitted(3, 1, 0)],
    );
    assert_eq!(
        steps,
        ["start v3-web-2", "check v3-web-2", "route +[v3-web-2] -[]"]
    );
}

#[test]
fn scale_down_retires_drains_then_stops() {
    let steps = converge(
        &desired(3, &[("web", 1)]),
        &[running(3, "web", 1, 0), running(3, "web", 2, 0)],
        &[admitted(3, 1, 0), admitted(3, 2, 0)],
    );
    assert_eq!(steps, ["route +[] -[v3-web-2]", "drain", "stop v3-web-2"]);
}

#[test]
fn a_worker_scaled_to_zero_is_stopped_without_a_drain() {
    let steps = converge(
        &desired(3, &[("web", 1), ("worker", 0)]),
        &[running(3, "web", 1, 0), running(3, "worker", 1, 0)],
        &[admitted(3, 1, 0)],
    );
    assert_eq!(steps, ["stop v3-worker-1"]);
}

#[test]
fn stop_then_start() {
    let observed = [running(3, "web", 1, 0), running(3, "worker", 1, 0)];
    let mut d = desired(3, &[("web", 1), ("worker", 1)]);
    d.stopped = true;
    assert_eq!(
        converge(&d, &observed, &[admitted(3, 1, 0)]),
        [
            "route +[] -[v3-web-1]",
            "drain",
            "stop v3-web-1,v3-worker-1"
        ]
    );
    d.stopped = false;
    assert_eq!(
        converge(&d, &[], &[]),
        [
            "start v3-web-1",
            "start v3-worker-1",
            "check v3-web-1",
            "route +[v3-web-1] -[]"
        ]
    );
}

#[test]
fn reconcile_after_a_crash_evicts_then_checks_the_new_incarnation() {
    // web.1 crashed and the runtime restarted it (restarts 0 → 1): it is
    // still "running", but the admitted process is gone.
    let steps = converge(
        &desired(3, &[("web", 2)]),
        &[running(3, "web", 1, 1), running(3, "web", 2, 0)],
        &[admitted(3, 1, 0), admitted(3, 2, 0)],
    );
    assert_eq!(
        steps,
        [
            "evict v3-web-1",
            "check v3-web-1 (existing)",
            "route +[v3-web-1] -[]"
        ]
    );
}

#[test]
fn a_crash_looping_instance_is_evicted_and_not_checked() {
    let mut looping = running(3, "web", 1, 7);
    looping.state = InstanceState::CrashLoop;
    let steps = converge(&desired(3, &[("web", 1)]), &[looping], &[admitted(3, 1, 6)]);
    assert_eq!(steps, ["evict v3-web-1"]);
}

#[test]
fn an_instance_that_vanished_is_evicted_and_started_again() {
    let steps = converge(&desired(3, &[("web", 1)]), &[], &[admitted(3, 1, 0)]);
    assert_eq!(
        steps,
        [
            "evict v3-web-1",
            "start v3-web-1",
            "check v3-web-1",
            "route +[v3-web-1] -[]"
        ]
    );
}

#[test]
fn adoption_after_a_daemon_restart_checks_before_routing() {
    // A restarted daemon admits nothing it has not checked itself.
    let observed = [running(3, "web", 1, 0), running(3, "worker", 1, 0)];
    let steps = converge(&desired(3, &[("web", 1), ("worker", 1)]), &observed, &[]);
    assert_eq!(
        steps,
        ["check v3-web-1 (existing)", "route +[v3-web-1] -[]"]
    );
}

#[test]
fn a_removed_app_has_everything_stopped() {
    let observed = [running(2, "web", 1, 0)];
    let steps = converge(&Desired::default(), &observed, &[admitted(2, 1, 0)]);
    assert_eq!(steps, ["route +[] -[v2-web-1]", "drain", "stop v2-web-1"]);
}

#[test]
fn restart_surges_one_web_then_replaces_each_in_turn() {
    let observed = [
        running(3, "web", 1, 0),
        running(3, "web", 2, 0),
        running(3, "worker", 1, 0),
    ];
    let adm = [admitted(3, 1, 0), admitted(3, 2, 0)];
    let d = desired(3, &[("web", 2), ("worker", 1)]);
    let p = plan(
        Readiness::Cygni,
        &Intent::Restart { only: None },
        &d,
        &observed,
        &adm,
    );
    assert_eq!(
        show(&p),
        [
            "start v3-web-3",
            "check v3-web-3",
            "route +[v3-web-3] -[]",
            "route +[] -[v3-web-1]",
            "drain",
            "stop v3-web-1",
            "start v3-web-1",
            "check v3-web-1",
            "route +[v3-web-1] -[]",
            "route +[] -[v3-web-2]",
            "drain",
            "stop v3-web-2",
            "start v3-web-2",
            "check v3-web-2",
            "route +[v3-web-2] -[]",
            "stop v3-worker-1",
            "start v3-worker-1",
            "route +[] -[v3-web-3]",
            "drain",
            "stop v3-web-3",
        ]
    );
    // Only workers: no surge, no drains.
    let p = plan(
        Readiness::Cygni,
        &Intent::Restart {
            only: Some(ProcessType::parse("worker").unwrap()),
        },
        &d,
        &observed,
        &adm,
    );
    assert_eq!(show(&p), ["stop v3-worker-1", "start v3-worker-1"]);
}

#[test]
fn a_backend_with_its_own_readiness_gets_whole_process_types() {
    let d = desired(2, &[("web", 2), ("worker", 1)]);
    // First deploy.
    let p = plan(Readiness::Backend, &Intent::Converge, &d, &[], &[]);
    assert_eq!(
        show(&p),
        ["apply v2 web=2", "apply v2 worker=1", "admit ready v2"]
    );
    // Rolled out and admitted: nothing to do.
    let observed = [
        running(2, "web", 1, 0),
        running(2, "web", 2, 0),
        running(2, "worker", 1, 0),
    ];
    let adm = [admitted(2, 1, 0), admitted(2, 2, 0)];
    assert!(plan(Readiness::Backend, &Intent::Converge, &d, &observed, &adm).is_empty());
    // A pod that is not ready leaves the routes.
    let mut unready = observed.clone();
    unready[1].state = InstanceState::Starting;
    assert_eq!(
        show(&plan(
            Readiness::Backend,
            &Intent::Converge,
            &d,
            &unready,
            &adm
        )),
        ["admit ready v2"]
    );
    // Stopped: replicas 0.
    let mut stopped = d.clone();
    stopped.stopped = true;
    assert_eq!(
        show(&plan(
            Readiness::Backend,
            &Intent::Converge,
            &stopped,
            &observed,
            &adm
        )),
        ["apply v2 web=0", "apply v2 worker=0", "admit ready v2"]
    );
}
