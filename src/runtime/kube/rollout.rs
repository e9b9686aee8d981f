//! Is a rollout done, still going, or failed? Pure functions over what the
//! API server reports, as `kubectl rollout status` decides, plus the pod
//! states that will never get better on their own.
//!
//! ```text
//! Deployment ──► generation observed? ── no ──► Waiting
//!                    │ yes
//!                    ├─ Progressing=False, ProgressDeadlineExceeded ──► Failed
//!                    ├─ updated < desired ───────────────────────────► Waiting
//!                    ├─ replicas > updated (old pods terminating) ───► Waiting
//!                    ├─ available < updated ─────────────────────────► Waiting
//!                    └─ otherwise ───────────────────────────────────► Done
//! new pods ──► ImagePullBackOff, CrashLoopBackOff, bad config ───────► Failed (early)
//! ```

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    Done,
    /// Still going; why, in `kubectl rollout status` words.
    Waiting(String),
    /// Will not finish: the reason a user can act on.
    Failed(String),
}

/// The rollout state of `d`, as `kubectl rollout status` reads it.
pub fn status(d: &Deployment) -> Rollout {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = &d.status else {
        return Rollout::Waiting("waiting for the deployment to be observed".into());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Waiting("waiting for the deployment spec update to be observed".into());
    }
    let deadline = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if deadline {
        return Rollout::Failed(format!(
            "it made no progress within {}s (ProgressDeadlineExceeded)",
            d.spec
                .as_ref()
                .and_then(|s| s.progress_deadline_seconds)
                .unwrap_or(600)
        ));
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        return Rollout::Waiting(format!(
            "{updated} out of {want} new replicas have been updated"
        ));
    }
    if replicas > updated {
        return Rollout::Waiting(format!(
            "{} old replicas are pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return Rollout::Waiting(format!(
            "{available} of {updated} updated replicas are available"
        ));
    }
    Rollout::Done
}

/// Container waiting reasons that do not fix themselves: waiting out the
/// progress deadline would only make the user wait longer.
const HOPELESS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// A pod of the new release that cannot become ready: `pod name: reason:
/// message`. `ErrImagePull` counts only once retried (as `ImagePullBackOff`
/// it has failed twice); the first attempt may be a passing fault.
pub fn hopeless(pods: &[Pod]) -> Option<(String, String)> {
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let statuses = pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten());
        for cs in statuses {
            let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let Some(reason) = waiting.reason.as_deref() else {
                continue;
            };
            if reason == "ErrImagePull" || !HOPELESS.contains(&reason) {
                continue;
            }
            let mut why = reason.to_owned();
            if let Some(m) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
                why.push_str(": ");
                why.push_str(first_line(m));
            }
            return Some((name, why));
        }
    }
    None
}

/// Why a pod of the new release is not ready yet, for the deadline's
/// message: its readiness failing, or what it waits for.
pub fn not_ready_reason(pods: &[Pod]) -> Option<(String, String)> {
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(status) = &pod.status else { continue };
        for cs in status.container_statuses.iter().flatten() {
            if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                return Some((
                    name,
                    w.reason.clone().unwrap_or_else(|| "waiting".to_owned()),
                ));
            }
            if cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some() && !cs.ready {
                return Some((
                    name,
                    "running, but its readiness probe is failing".to_owned(),
                ));
            }
        }
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        {
            return Some((
                name,
                format!(
                    "not scheduled: {}",
                    c.message
                        .as_deref()
                        .map(first_line)
                        .unwrap_or("no node fits")
                ),
            ));
        }
    }
    None
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).expect("deployment")
    }

    fn dep(generation: i64, observed: i64, replicas: i32, st: serde_json::Value) -> Deployment {
        let mut status = st;
        status["observedGeneration"] = json!(observed);
        deployment(json!({
            "metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": replicas, "progressDeadlineSeconds": 90,
                     "selector": {}, "template": {}},
            "status": status,
        }))
    }

    #[test]
    fn waits_until_the_new_generation_is_observed() {
        let d = dep(
            3,
            2,
            1,
            json!({"replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}),
        );
        assert!(matches!(status(&d), Rollout::Waiting(w) if w.contains("observed")));
    }

    #[test]
    fn waits_for_updated_then_old_then_available() {
        let d = dep(
            2,
            2,
            2,
            json!({"replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}),
        );
        assert_eq!(
            status(&d),
            Rollout::Waiting("1 out of 2 new replicas have been updated".into())
        );
        let d = dep(
            2,
            2,
            2,
            json!({"replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(
            status(&d),
            Rollout::Waiting("1 old replicas are pending termination".into())
        );
        let d = dep(
            2,
            2,
            2,
            json!({"replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
        );
        assert_eq!(
            status(&d),
            Rollout::Waiting("1 of 2 updated replicas are available".into())
        );
        let d = dep(
            2,
            2,
            2,
            json!({"replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(status(&d), Rollout::Done);
    }

    #[test]
    fn scaled_to_zero_is_done_once_old_pods_are_gone() {
        let d = dep(4, 4, 0, json!({"replicas": 1}));
        assert!(matches!(status(&d), Rollout::Waiting(_)));
        let d = dep(4, 4, 0, json!({}));
        assert_eq!(status(&d), Rollout::Done);
    }

    #[test]
    fn progress_deadline_fails() {
        let d = dep(
            2,
            2,
            1,
            json!({"replicas": 2, "updatedReplicas": 1, "availableReplicas": 1,
                   "conditions": [{"type": "Progressing", "status": "False",
                                   "reason": "ProgressDeadlineExceeded"}]}),
        );
        assert_eq!(
            status(&d),
            Rollout::Failed("it made no progress within 90s (ProgressDeadlineExceeded)".into())
        );
    }

    fn pod(name: &str, container_status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"containerStatuses": [container_status]},
        }))
        .expect("pod")
    }

    #[test]
    fn image_pull_backoff_and_crash_loops_are_hopeless() {
        let p = pod(
            "web-1",
            json!({"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"waiting": {"reason": "ImagePullBackOff",
                                         "message": "Back-off pulling image \"x\"\nmore"}}}),
        );
        assert_eq!(
            hopeless(&[p]),
            Some((
                "web-1".into(),
                "ImagePullBackOff: Back-off pulling image \"x\"".into()
            ))
        );
        let p = pod(
            "web-2",
            json!({"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
                   "state": {"waiting": {"reason": "CrashLoopBackOff"}}}),
        );
        assert_eq!(
            hopeless(&[p]),
            Some(("web-2".into(), "CrashLoopBackOff".into()))
        );
    }

    #[test]
    fn a_first_pull_error_or_a_creating_pod_is_not_hopeless() {
        let first = pod(
            "web-1",
            json!({"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"waiting": {"reason": "ErrImagePull"}}}),
        );
        let creating = pod(
            "web-2",
            json!({"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"waiting": {"reason": "ContainerCreating"}}}),
        );
        assert_eq!(hopeless(&[first, creating]), None);
    }

    #[test]
    fn a_running_pod_that_is_not_ready_has_a_failing_probe() {
        let p = pod(
            "web-1",
            json!({"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"running": {}}}),
        );
        assert_eq!(
            not_ready_reason(&[p]),
            Some((
                "web-1".into(),
                "running, but its readiness probe is failing".into()
            ))
        );
    }
}
