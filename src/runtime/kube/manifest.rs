//! The objects Cygni applies for an app, built from a [`ProcessSpec`]:
//! pure functions, checked against golden JSON in `tests/fixtures/kube/`.
//!
//! ```text
//! ProcessSpec ──► namespace(app)            cygni-APP, labelled cygni.app
//!            ├──► secret(spec)              env-vREL: the release's config vars
//!            ├──► deployment(spec, n)       PROCESS: n pods, envFrom the secret,
//!            │                              readiness probe from the check, limits
//!            └──► service(app)              web: port 5000 of the web pods
//! ```
//!
//! Each object holds only the fields Cygni owns (server-side apply sends
//! them whole, and whatever else the cluster defaults or other managers
//! set is left alone). Config vars are never in the Deployment: they are in
//! the release's Secret, which the pods read through `envFrom`. The last
//! Deployment Cygni applied is kept in an annotation, so a failed rollout
//! can put exactly that back.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvFromSource, EnvVar, HTTPGetAction, Lifecycle, LifecycleHandler,
    Namespace, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretEnvSource,
    Service, ServicePort, ServiceSpec, SleepAction, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use crate::build::Artifact;
use crate::names::{AppName, ProcessType};
use crate::runtime::ProcessSpec;

pub const LABEL_APP: &str = "cygni.app";
pub const LABEL_RELEASE: &str = "cygni.release";
pub const LABEL_PROCESS: &str = "cygni.process";
const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The Deployment as Cygni last applied it (JSON), for restoring it.
pub const ANNOTATION_APPLIED: &str = "cygni.io/applied";
/// The port `web` listens on inside its pod (`$PORT`), as on docker.
pub const WEB_PORT: u16 = 5000;
/// The Service in front of `web`.
pub const WEB_SERVICE: &str = "web";
/// How long a terminating web pod keeps serving, so that it leaves the
/// routes (its endpoint turns not-ready) before the app gets SIGTERM.
const PRE_STOP_SECS: i64 = 5;

/// The app's namespace: `cygni-APP`, kept a DNS label.
pub fn namespace_name(app: &AppName) -> String {
    crate::names::dns_label(&format!("cygni-{app}"))
}

/// The Deployment of a process type (`web`, `worker`, `clock-1`).
pub fn deployment_name(process: &ProcessType) -> String {
    crate::names::dns_label(&process.dns_label())
}

/// The Secret holding a release's config vars.
pub fn secret_name(release: u32) -> String {
    format!("env-v{release}")
}

/// The label selector of everything Cygni made for an app.
pub fn app_selector(app: &AppName) -> String {
    format!("{LABEL_APP}={app}")
}

/// The label selector of a process type's pods, of every release.
pub fn process_selector(app: &AppName, process: &ProcessType) -> String {
    format!("{LABEL_APP}={app},{LABEL_PROCESS}={process}")
}

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .chain([(LABEL_MANAGED_BY.to_owned(), "cygni".to_owned())])
        .collect()
}

fn meta(name: &str, namespace: Option<&str>, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

pub fn namespace(app: &AppName) -> Namespace {
    Namespace {
        metadata: meta(
            &namespace_name(app),
            None,
            labels(&[(LABEL_APP, app.to_string())]),
        ),
        ..Namespace::default()
    }
}

/// The release's config vars. `PORT` is the runtime's, not the app's.
pub fn secret(spec: &ProcessSpec) -> Secret {
    secret_of(&spec.app, spec.release, &spec.env)
}

/// The Secret of release `release` of `app` holding `env`.
pub fn secret_of(app: &AppName, release: u32, env: &BTreeMap<String, String>) -> Secret {
    let data = env
        .iter()
        .filter(|(k, _)| k.as_str() != "PORT")
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect();
    Secret {
        metadata: meta(
            &secret_name(release),
            Some(&namespace_name(app)),
            labels(&[
                (LABEL_APP, app.to_string()),
                (LABEL_RELEASE, release.to_string()),
            ]),
        ),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The image a spec runs: the reference the build (and the registry)
/// recorded, by digest when it is known.
pub fn image(spec: &ProcessSpec) -> Option<&str> {
    image_of(&spec.artifact)
}

/// The image reference of an artifact; `None` for a slug.
pub fn image_of(artifact: &Artifact) -> Option<&str> {
    match artifact {
        Artifact::Image { reference } => Some(reference),
        Artifact::Slug { .. } => None,
    }
}

/// How long a rollout may go without progress before the Deployment
/// controller reports `ProgressDeadlineExceeded`: the boot timeout, plus
/// time for the image pull.
pub fn progress_deadline_secs(spec: &ProcessSpec) -> u64 {
    spec.check.timeout_secs.max(1) + 60
}

fn probe(spec: &ProcessSpec) -> Probe {
    let port = IntOrString::Int(i32::from(WEB_PORT));
    let (tcp_socket, http_get) = match &spec.check.path {
        None => (
            Some(TCPSocketAction {
                port,
                ..TCPSocketAction::default()
            }),
            None,
        ),
        Some(path) => (
            None,
            Some(HTTPGetAction {
                path: Some(path.clone()),
                port,
                ..HTTPGetAction::default()
            }),
        ),
    };
    Probe {
        tcp_socket,
        http_get,
        period_seconds: Some(2),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        success_threshold: Some(1),
        ..Probe::default()
    }
}

fn resources(spec: &ProcessSpec) -> Option<ResourceRequirements> {
    let mut limits = BTreeMap::new();
    if let Some(bytes) = spec.limits.memory_bytes {
        limits.insert("memory".to_owned(), Quantity(bytes.to_string()));
    }
    if let Some(m) = spec.limits.millicpus {
        limits.insert("cpu".to_owned(), Quantity(format!("{m}m")));
    }
    // Requests default to the limits, so a limited pod is also scheduled
    // where that much is free.
    (!limits.is_empty()).then(|| ResourceRequirements {
        limits: Some(limits),
        ..ResourceRequirements::default()
    })
}

/// The Deployment of one process type with `replicas` pods. `image` must
/// be a pullable reference (see [`image`]).
pub fn deployment(spec: &ProcessSpec, image: &str, replicas: u32) -> Deployment {
    let web = spec.process.is_web();
    let name = deployment_name(&spec.process);
    let selector = labels(&[
        (LABEL_APP, spec.app.to_string()),
        (LABEL_PROCESS, spec.process.to_string()),
    ]);
    let pod_labels = labels(&[
        (LABEL_APP, spec.app.to_string()),
        (LABEL_PROCESS, spec.process.to_string()),
        (LABEL_RELEASE, spec.release.to_string()),
    ]);
    // PORT is the runtime's, not a config var: the only plain env entry.
    let env = web.then(|| {
        vec![EnvVar {
            name: "PORT".to_owned(),
            value: Some(WEB_PORT.to_string()),
            ..EnvVar::default()
        }]
    });
    let container = Container {
        name: name.clone(),
        image: Some(image.to_owned()),
        // The Procfile line, as on docker: the image's ENTRYPOINT is kept.
        args: (!spec.command.is_empty())
            .then(|| vec!["/bin/sh".to_owned(), "-c".to_owned(), spec.command.clone()]),
        env,
        env_from: Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret_name(spec.release),
                optional: None,
            }),
            ..EnvFromSource::default()
        }]),
        ports: web.then(|| {
            vec![ContainerPort {
                name: Some("http".to_owned()),
                container_port: i32::from(WEB_PORT),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            }]
        }),
        readiness_probe: web.then(|| probe(spec)),
        lifecycle: web.then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: resources(spec),
        ..Container::default()
    };
    Deployment {
        metadata: meta(
            &name,
            Some(&namespace_name(&spec.app)),
            labels(&[
                (LABEL_APP, spec.app.to_string()),
                (LABEL_PROCESS, spec.process.to_string()),
                (LABEL_RELEASE, spec.release.to_string()),
            ]),
        ),
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            // Zero downtime: an old pod goes only once a new one is ready.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            progress_deadline_seconds: Some(
                i32::try_from(progress_deadline_secs(spec)).unwrap_or(i32::MAX),
            ),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    enable_service_links: Some(false),
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The annotation a rolling restart changes (as `kubectl rollout restart`).
pub const ANNOTATION_RESTARTED: &str = "cygni.io/restarted-at";

/// The one field a restart applies: the pod template's restart stamp.
pub fn restart_patch(process: &ProcessType, app: &AppName, stamp: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment_name(process), "namespace": namespace_name(app)},
        "spec": {"template": {"metadata": {"annotations": {ANNOTATION_RESTARTED: stamp}}}},
    })
}

/// `deployment` with itself recorded in [`ANNOTATION_APPLIED`].
pub fn with_applied_annotation(mut d: Deployment) -> Deployment {
    let text = serde_json::to_string(&d).unwrap_or_default();
    d.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_APPLIED.to_owned(), text);
    d
}

/// What Cygni applied last to this Deployment, if it says.
pub fn applied_of(d: &Deployment) -> Option<Deployment> {
    let text = d.metadata.annotations.as_ref()?.get(ANNOTATION_APPLIED)?;
    serde_json::from_str(text).ok()
}

/// The Service in front of the web pods (of every release: which of them
/// serve is what their readiness says).
pub fn service(app: &AppName) -> Service {
    let selector = labels(&[
        (LABEL_APP, app.to_string()),
        (LABEL_PROCESS, ProcessType::web().to_string()),
    ]);
    Service {
        metadata: meta(
            WEB_SERVICE,
            Some(&namespace_name(app)),
            labels(&[
                (LABEL_APP, app.to_string()),
                (LABEL_PROCESS, ProcessType::web().to_string()),
            ]),
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: i32::from(WEB_PORT),
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::limits::Limits;
    use crate::runtime::HealthCheck;

    /// A web process of release `release` of app `shop`.
    pub(crate) fn web_spec(release: u32) -> ProcessSpec {
        ProcessSpec {
            app: AppName::parse("shop").expect("valid"),
            release,
            process: ProcessType::web(),
            command: "python3 -m http.server $PORT".into(),
            env: Arc::new(BTreeMap::from([
                (
                    "DATABASE_URL".to_owned(),
                    "postgres://u:secret@db/shop".to_owned(),
                ),
                ("GREETING".to_owned(), format!("hello v{release}")),
            ])),
            artifact: Artifact::Image {
                reference: format!("10.0.0.1:5005/shop@sha256:{:064x}", release),
            },
            check: HealthCheck {
                path: Some("/health".into()),
                timeout_secs: 30,
            },
            limits: Limits {
                memory_bytes: Some(256 << 20),
                millicpus: Some(500),
            },
            mounts: Vec::new(),
        }
    }

    pub(crate) fn worker_spec(release: u32) -> ProcessSpec {
        ProcessSpec {
            process: ProcessType::parse("worker").expect("valid"),
            command: "python3 worker.py".into(),
            check: HealthCheck {
                path: None,
                timeout_secs: 30,
            },
            limits: Limits::default(),
            ..web_spec(release)
        }
    }

    /// Compare `value` with `tests/fixtures/kube/NAME.json`. With
    /// `CYGNI_BLESS=1` the file is written instead (then review the diff).
    pub(crate) fn golden(name: &str, value: &serde_json::Value) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kube")
            .join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(value).expect("json") + "\n";
        if std::env::var_os("CYGNI_BLESS").is_some() {
            std::fs::write(&path, &text).expect("write golden");
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with CYGNI_BLESS=1 to create it)",
                path.display()
            )
        });
        assert_eq!(text, want, "{} differs", path.display());
    }

    fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).expect("json")
    }

    #[test]
    fn web_deployment_matches_golden() {
        let s = web_spec(3);
        let d = deployment(&s, image(&s).expect("image"), 2);
        golden("deployment-web-v3", &json(&d));
    }

    #[test]
    fn worker_deployment_has_no_port_probe_or_limits() {
        let s = worker_spec(3);
        let d = deployment(&s, image(&s).expect("image"), 1);
        golden("deployment-worker-v3", &json(&d));
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert!(c.readiness_probe.is_none() && c.ports.is_none() && c.resources.is_none());
    }

    #[test]
    fn tcp_check_is_a_tcp_probe() {
        let mut s = web_spec(1);
        s.check.path = None;
        let d = deployment(&s, "img", 1);
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        let p = c.readiness_probe.as_ref().unwrap();
        assert!(p.http_get.is_none());
        assert_eq!(p.tcp_socket.as_ref().unwrap().port, IntOrString::Int(5000));
    }

    #[test]
    fn config_vars_are_in_the_secret_never_in_the_deployment() {
        let s = web_spec(3);
        let d = json(&deployment(&s, "img", 1)).to_string();
        assert!(!d.contains("postgres://"), "{d}");
        assert!(!d.contains("DATABASE_URL"), "{d}");
        let secret = json(&secret(&s));
        golden("secret-v3", &secret);
        assert!(d.contains("env-v3"));
    }

    #[test]
    fn namespace_and_service_match_golden() {
        let app = AppName::parse("shop").unwrap();
        golden("namespace", &json(&namespace(&app)));
        golden("service-web", &json(&service(&app)));
    }

    #[test]
    fn long_app_names_still_make_valid_namespaces() {
        let app = AppName::parse(&format!("a{}", "b".repeat(62))).unwrap();
        let ns = namespace_name(&app);
        assert!(crate::names::is_dns_label(&ns), "{ns}");
    }

    #[test]
    fn the_applied_annotation_round_trips() {
        let s = web_spec(2);
        let d = with_applied_annotation(deployment(&s, "img", 1));
        let back = applied_of(&d).expect("annotation");
        assert_eq!(json(&back), json(&deployment(&s, "img", 1)));
    }
}
