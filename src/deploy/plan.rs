//! The planner: what to do to make what runs match what should run.
//!
//! ```text
//!  desired (SQLite: live release, formation, check, stopped)  ─┐
//!  observed (runtime.list: what runs, with its incarnation)   ─┼─► plan() ─► [Step]
//!  admitted (instances that passed their check: the routes)   ─┘
//! ```
//!
//! [`plan`] is a pure function: it reads three values and returns steps,
//! so a test can call it with made-up ones (`tests` below) and the
//! executor in `converge.rs` is the only code that acts. It does not know
//! why it was called (a push, a config release, a rollback, a scale, the
//! timer, a start-up), only what differs; when nothing does, it returns no
//! steps.
//!
//! The rules it encodes:
//! - an instance is routed only after it passed its release's check
//!   (`Check` then `Route { admit }`), and leaves the routes before it is
//!   stopped (`Route { retire }`, `Drain`, then `Stop`);
//! - an admitted instance whose process is gone or was restarted (its
//!   `restarts` changed, or it is crash looping) is evicted first, and
//!   checked again before it is routed again;
//! - a new release's instances are all checked before one `Route` step
//!   admits them and retires the old ones in the same swap;
//! - with [`Readiness::Backend`] (kube), a process type is applied whole
//!   and the backend's ready instances are admitted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::names::ProcessType;
use crate::runtime::{Instance, InstanceId, InstanceSpec, InstanceState, ProcessSpec, Readiness};

/// What should run for one app.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// The release that should serve; `None` when nothing is deployed.
    pub release: Option<DesiredRelease>,
    /// `ps:stop`: nothing runs until `ps:start`.
    pub stopped: bool,
}

/// A release and its formation: each process type with its count.
#[derive(Debug, Clone)]
pub struct DesiredRelease {
    pub version: u32,
    pub processes: BTreeMap<ProcessType, (ProcessSpec, u32)>,
}

impl DesiredRelease {
    /// Every instance the formation asks for, in process and index order.
    fn instances(&self) -> Vec<InstanceSpec> {
        self.processes
            .values()
            .flat_map(|(spec, count)| (1..=*count).map(|i| spec.instance(i)))
            .collect()
    }
}

/// An instance in the routes: the incarnation that passed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub id: InstanceId,
    pub release: u32,
    pub endpoint: SocketAddr,
    /// `Instance::restarts` when it passed: a different count later means
    /// the checked process is gone.
    pub restarts: u32,
}

/// Why the plan is made, where that changes what it contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Make what runs match what should run (every change but restart).
    Converge,
    /// Replace every running instance (of one type) by a fresh one, with
    /// one extra `web` instance serving meanwhile.
    Restart { only: Option<ProcessType> },
}

/// One thing the executor does. Steps run in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// Forget these admissions now: their process is gone or restarted.
    Evict(Vec<InstanceId>),
    Start(InstanceSpec),
    /// Wait for the instance to pass its release's check. `fresh`: this
    /// plan started it, so a failure fails the plan (and what it started
    /// is stopped); otherwise a failure only keeps it out of the routes.
    Check {
        id: InstanceId,
        fresh: bool,
    },
    /// One routes swap: admit instances that passed their check, retire
    /// others (they take no new requests).
    Route {
        admit: Vec<InstanceId>,
        retire: Vec<InstanceId>,
    },
    /// Let requests in flight on retired instances finish.
    Drain,
    Stop(Vec<InstanceId>),
    /// [`Readiness::Backend`]: run `replicas` instances of a process type.
    Apply {
        spec: ProcessSpec,
        replicas: u32,
    },
    /// [`Readiness::Backend`]: replace every running instance of a process
    /// type by a fresh one, as the backend rolls (kube: a rollout restart).
    Restart {
        spec: ProcessSpec,
        replicas: u32,
    },
    /// [`Readiness::Backend`]: admit what the backend reports ready for
    /// `release`, retire every other admission of the app.
    AdmitReady {
        release: u32,
    },
}

/// A plan, and where it serves the desired release: the steps after
/// `live_at` (draining and stopping what it replaced) can finish after
/// the caller has been told it is live.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Index just past the last step that starts, checks or admits
    /// something: after it the desired release serves, and only retiring
    /// work (retire, drain, stop) is left.
    pub fn live_at(&self) -> usize {
        self.steps
            .iter()
            .rposition(|s| match s {
                Step::Route { admit, .. } => !admit.is_empty(),
                Step::Start(_)
                | Step::Check { .. }
                | Step::Evict(_)
                | Step::AdmitReady { .. }
                | Step::Apply { .. }
                | Step::Restart { .. } => true,
                Step::Drain | Step::Stop(_) => false,
            })
            .map_or(0, |i| i + 1)
    }
}

/// Plan the steps from `observed` and `admitted` to `desired`. Pure.
pub fn plan(
    readiness: Readiness,
    intent: &Intent,
    desired: &Desired,
    observed: &[Instance],
    admitted: &[Admission],
) -> Plan {
    match (readiness, intent) {
        (Readiness::Backend, Intent::Converge) => plan_backend(desired, observed, admitted),
        (Readiness::Backend, Intent::Restart { only }) => {
            plan_backend_restart(desired, observed, admitted, only.as_ref())
        }
        (Readiness::Cygni, Intent::Converge) => plan_converge(desired, observed, admitted),
        (Readiness::Cygni, Intent::Restart { only }) => {
            plan_restart(desired, observed, admitted, only.as_ref())
        }
    }
}

fn alive(i: &Instance) -> bool {
    matches!(i.state, InstanceState::Running | InstanceState::Starting)
}

fn wanted(desired: &Desired) -> Vec<InstanceSpec> {
    match &desired.release {
        Some(r) if !desired.stopped => r.instances(),
        _ => Vec::new(),
    }
}

fn plan_converge(desired: &Desired, observed: &[Instance], admitted: &[Admission]) -> Plan {
    let wanted = wanted(desired);
    let by_id: BTreeMap<&InstanceId, &Instance> = observed.iter().map(|i| (&i.id, i)).collect();
    let admitted_by_id: BTreeMap<&InstanceId, &Admission> =
        admitted.iter().map(|a| (&a.id, a)).collect();
    let wanted_ids: BTreeSet<InstanceId> = wanted.iter().map(InstanceSpec::id).collect();

    let mut evict = Vec::new();
    let mut starts = Vec::new();
    let mut checks = Vec::new();
    let mut admit = Vec::new();

    // Admissions whose incarnation is gone leave the routes first.
    for a in admitted {
        let current = by_id
            .get(&a.id)
            .is_some_and(|i| alive(i) && i.restarts == a.restarts);
        if !current {
            evict.push(a.id.clone());
        }
    }

    for spec in &wanted {
        let id = spec.id();
        let web = spec.process.is_web();
        match by_id.get(&id) {
            None => {
                starts.push(Step::Start(spec.clone()));
                if web {
                    checks.push(Step::Check {
                        id: id.clone(),
                        fresh: true,
                    });
                    admit.push(id);
                }
            }
            Some(i) if i.state == InstanceState::Stopped => {
                starts.push(Step::Start(spec.clone()));
                if web {
                    checks.push(Step::Check {
                        id: id.clone(),
                        fresh: true,
                    });
                    admit.push(id);
                }
            }
            Some(i) if web => {
                let current = admitted_by_id
                    .get(&id)
                    .is_some_and(|a| a.restarts == i.restarts && alive(i));
                // Running (or restarting after a crash) but not admitted:
                // adopted at start-up, or back from a crash. Check it again;
                // a crash-looping one stays out until it settles.
                if !current && alive(i) {
                    checks.push(Step::Check {
                        id: id.clone(),
                        fresh: false,
                    });
                    admit.push(id);
                }
            }
            Some(_) => {}
        }
    }

    // What runs but is not wanted: other releases, scaled-down indexes, a
    // stopped app's instances.
    let extra: Vec<&Instance> = observed
        .iter()
        .filter(|i| !wanted_ids.contains(&i.id) && i.state != InstanceState::Stopped)
        .collect();
    let retire: Vec<InstanceId> = extra
        .iter()
        .filter(|i| admitted_by_id.contains_key(&i.id) && !evict.contains(&i.id))
        .map(|i| i.id.clone())
        .collect();

    let mut steps = Vec::new();
    if !evict.is_empty() {
        steps.push(Step::Evict(evict));
    }
    steps.extend(starts);
    steps.extend(checks);
    if !admit.is_empty() || !retire.is_empty() {
        steps.push(Step::Route {
            admit,
            retire: retire.clone(),
        });
    }
    if !retire.is_empty() {
        steps.push(Step::Drain);
    }
    if !extra.is_empty() {
        steps.push(Step::Stop(extra.iter().map(|i| i.id.clone()).collect()));
    }
    Plan { steps }
}

fn plan_restart(
    desired: &Desired,
    observed: &[Instance],
    admitted: &[Admission],
    only: Option<&ProcessType>,
) -> Plan {
    let Some(release) = desired.release.as_ref().filter(|_| !desired.stopped) else {
        return Plan::default();
    };
    let admitted_ids: BTreeSet<&InstanceId> = admitted.iter().map(|a| &a.id).collect();
    let mut targets: Vec<&Instance> = observed
        .iter()
        .filter(|i| {
            i.release == release.version
                && i.state != InstanceState::Stopped
                && release.processes.contains_key(&i.process)
                && only.is_none_or(|p| &i.process == p)
        })
        .collect();
    targets.sort_by(|a, b| (&a.process, a.index).cmp(&(&b.process, b.index)));

    let mut steps = Vec::new();
    let web = ProcessType::web();
    // Surge: one more web instance, checked and routed, before any stops.
    let surge = match release.processes.get(&web) {
        Some((spec, _)) if targets.iter().any(|i| i.process.is_web()) => {
            let top = observed
                .iter()
                .filter(|i| i.release == release.version && i.process.is_web())
                .map(|i| i.index)
                .max()
                .unwrap_or(0);
            let s = spec.instance(top + 1);
            let id = s.id();
            steps.push(Step::Start(s));
            steps.push(Step::Check {
                id: id.clone(),
                fresh: true,
            });
            steps.push(Step::Route {
                admit: vec![id.clone()],
                retire: vec![],
            });
            Some(id)
        }
        _ => None,
    };
    for inst in targets {
        let Some((spec, _)) = release.processes.get(&inst.process) else {
            continue;
        };
        if admitted_ids.contains(&inst.id) {
            steps.push(Step::Route {
                admit: vec![],
                retire: vec![inst.id.clone()],
            });
            steps.push(Step::Drain);
        }
        steps.push(Step::Stop(vec![inst.id.clone()]));
        steps.push(Step::Start(spec.instance(inst.index)));
        if inst.process.is_web() {
            steps.push(Step::Check {
                id: inst.id.clone(),
                fresh: true,
            });
            steps.push(Step::Route {
                admit: vec![inst.id.clone()],
                retire: vec![],
            });
        }
    }
    if let Some(id) = surge {
        steps.push(Step::Route {
            admit: vec![],
            retire: vec![id.clone()],
        });
        steps.push(Step::Drain);
        steps.push(Step::Stop(vec![id]));
    }
    Plan { steps }
}

/// A restart on a backend: converge first (whatever differs), then a
/// rolling restart of each running process type the backend replaces pod
/// by pod, ready before the old one goes.
fn plan_backend_restart(
    desired: &Desired,
    observed: &[Instance],
    admitted: &[Admission],
    only: Option<&ProcessType>,
) -> Plan {
    let mut plan = plan_backend(desired, observed, admitted);
    let Some(release) = desired.release.as_ref().filter(|_| !desired.stopped) else {
        return plan;
    };
    let restarts: Vec<Step> = release
        .processes
        .iter()
        .filter(|(p, (_, count))| *count > 0 && only.is_none_or(|o| o == *p))
        .map(|(_, (spec, count))| Step::Restart {
            spec: spec.clone(),
            replicas: *count,
        })
        .collect();
    if restarts.is_empty() {
        return plan;
    }
    // Before the admission step, so the routes take the fresh pods.
    let at = plan
        .steps
        .iter()
        .position(|s| matches!(s, Step::AdmitReady { .. } | Step::Stop(_)))
        .unwrap_or(plan.steps.len());
    plan.steps.splice(at..at, restarts);
    if !plan
        .steps
        .iter()
        .any(|s| matches!(s, Step::AdmitReady { .. }))
    {
        let at = plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::Stop(_)))
            .unwrap_or(plan.steps.len());
        plan.steps.insert(
            at,
            Step::AdmitReady {
                release: release.version,
            },
        );
    }
    plan
}

fn plan_backend(desired: &Desired, observed: &[Instance], admitted: &[Admission]) -> Plan {
    let mut steps = Vec::new();
    let target = desired.release.as_ref().map(|r| r.version);
    if let Some(release) = &desired.release {
        for (process, (spec, count)) in &release.processes {
            let want = if desired.stopped { 0 } else { *count };
            let of_type: Vec<&Instance> =
                observed.iter().filter(|i| &i.process == process).collect();
            let current = of_type
                .iter()
                .filter(|i| i.release == release.version)
                .count() as u32;
            let others = of_type.iter().any(|i| i.release != release.version);
            if current != want || others {
                steps.push(Step::Apply {
                    spec: spec.clone(),
                    replicas: want,
                });
            }
        }
    }
    // Instances of process types the release no longer has.
    let stale: Vec<InstanceId> = observed
        .iter()
        .filter(|i| {
            desired
                .release
                .as_ref()
                .is_none_or(|r| !r.processes.contains_key(&i.process))
        })
        .map(|i| i.id.clone())
        .collect();
    let ready: BTreeSet<&InstanceId> = observed
        .iter()
        .filter(|i| {
            Some(i.release) == target && i.state == InstanceState::Running && i.endpoint.is_some()
        })
        .map(|i| &i.id)
        .collect();
    let routed: BTreeSet<&InstanceId> = admitted.iter().map(|a| &a.id).collect();
    if !steps.is_empty() || ready != routed {
        steps.push(Step::AdmitReady {
            release: target.unwrap_or(0),
        });
    }
    if !stale.is_empty() {
        steps.push(Step::Stop(stale));
    }
    Plan { steps }
}

#[cfg(test)]
mod tests;
