//! The objects Cygni applies for an app, built from a [`ProcessSpec`]:
//! pure functions, checked against golden JSON in `tests/fixtures/kube/`.
//!
//! ```text
//! ProcessSpec ──► namespace(app)            cygni-APP, labelled cygni.app
//!            ├──► secret(spec)              env-vREL: the release's config vars
//!            ├──► deployment(spec, n)       PROCESS: n pods, envFrom the secret,
//!            │                              readiness probe from the check, limits
//!            ├──► service(app)              web: port 5000 of the web pods
//!            └──► claim(app, mount, class)  storage-NAME: a PersistentVolumeClaim per
//!                                           storage mount, a volume + volumeMount in
//!                                           the pod template
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
    Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretEnvSource, Service,
    ServicePort, ServiceSpec, SleepAction, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use crate::build::Artifact;
use crate::names::{AppName, ProcessType, StorageName};
use crate::runtime::{Mount, MountSource, ProcessSpec};

pub const LABEL_APP: &str = "cygni.app";
pub const LABEL_RELEASE: &str = "cygni.release";
pub const LABEL_PROCESS: &str = "cygni.process";
/// On a PersistentVolumeClaim: the storage name it holds.
pub const LABEL_STORAGE: &str = "cygni.storage";
/// k3s's own storage class: a directory on the node the first pod using
/// the claim was scheduled to.
pub const DEFAULT_STORAGE_CLASS: &str = "local-path";
/// What a claim requests when the operator says nothing. local-path does
/// not enforce it; other classes size the volume by it.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";
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

/// The PersistentVolumeClaim (and the pod volume) of a storage name.
pub fn claim_name(name: &StorageName) -> String {
    crate::names::dns_label(&format!("storage-{name}"))
}

/// The storage class and size a new claim asks for (`kube_storage_class`,
/// `kube_storage_size` in cygni.toml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimClass {
    pub class: String,
    pub size: String,
}

impl Default for ClaimClass {
    fn default() -> ClaimClass {
        ClaimClass {
            class: DEFAULT_STORAGE_CLASS.to_owned(),
            size: DEFAULT_STORAGE_SIZE.to_owned(),
        }
    }
}

/// Why a `kube_storage_*` value was refused, naming the key to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimClassError {
    #[error(
        "{0:?} is not a storage class name (lowercase letters, digits, '-' and '.', up to 253)"
    )]
    Class(String),
    #[error("{0:?} is not a size such as 1Gi or 500Mi (a whole number, then Ki, Mi, Gi or Ti)")]
    Size(String),
}

impl ClaimClassError {
    /// The config key to change.
    pub fn key(&self) -> &'static str {
        match self {
            ClaimClassError::Class(_) => "kube_storage_class",
            ClaimClassError::Size(_) => "kube_storage_size",
        }
    }
}

impl ClaimClass {
    /// The operator's class and size, checked so that a typo stops the
    /// start instead of failing every deploy with storage.
    pub fn parse(class: Option<&str>, size: Option<&str>) -> Result<ClaimClass, ClaimClassError> {
        let class = class.unwrap_or(DEFAULT_STORAGE_CLASS);
        let size = size.unwrap_or(DEFAULT_STORAGE_SIZE);
        let class_ok = !class.is_empty()
            && class.len() <= 253
            && class.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !class_ok {
            return Err(ClaimClassError::Class(class.to_owned()));
        }
        let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &size[digits.len()..];
        let size_ok = matches!(unit, "Ki" | "Mi" | "Gi" | "Ti")
            && !digits.is_empty()
            && digits.len() <= 12
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if !size_ok {
            return Err(ClaimClassError::Size(size.to_owned()));
        }
        Ok(ClaimClass {
            class: class.to_owned(),
            size: size.to_owned(),
        })
    }

    /// What an existing claim was made with. A claim's class is immutable
    /// and local-path cannot grow one: re-applying it with what it has
    /// keeps a changed `kube_storage_*` from failing every deploy of the
    /// apps that already have storage (it applies to new claims only).
    pub fn of(claim: &PersistentVolumeClaim) -> Option<ClaimClass> {
        let spec = claim.spec.as_ref()?;
        Some(ClaimClass {
            class: spec.storage_class_name.clone()?,
            size: spec
                .resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("storage")?
                .0
                .clone(),
        })
    }
}

/// A storage mount as a claim in the app's namespace: ReadWriteOnce (one
/// node mounts it; pods on that node share it, as containers share a
/// bind mount on docker). Nothing Cygni runs ever deletes it: only the
/// namespace's deletion (`apps:destroy`) takes it, and its volume with it.
pub fn claim(app: &AppName, name: &StorageName, class: &ClaimClass) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(
            &claim_name(name),
            Some(&namespace_name(app)),
            labels(&[
                (LABEL_APP, app.to_string()),
                (LABEL_STORAGE, name.to_string()),
            ]),
        ),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: Some(class.class.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(class.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The first mount kube cannot give a pod: an admin's host directory
/// (`--host-path`). A pod may run on any node, and a hostPath volume there
/// would be another machine's directory, or an escape from the pod onto
/// the node: refused rather than mapped.
pub fn unmappable(mounts: &[Mount]) -> Option<&Mount> {
    mounts
        .iter()
        .find(|m| matches!(m.source, MountSource::Host { .. }))
}

/// The one-line refusal of a host-path mount on kube.
pub fn unmappable_message(app: &AppName, mount: &Mount) -> String {
    format!(
        "storage {name} of {app} is a host directory (--host-path), which the kube runtime does not mount (a pod may run on any node); storage:unmount {app} {name}, then storage:mount {app} {name}:{path} without --host-path",
        name = mount.name,
        path = mount.target,
    )
}

/// Pod volumes and container mounts for Cygni's own storage (host paths
/// are refused before anything is built: see [`unmappable`]).
pub fn volumes(mounts: &[Mount]) -> (Vec<Volume>, Vec<VolumeMount>) {
    mounts
        .iter()
        .filter(|m| matches!(m.source, MountSource::Managed { .. }))
        .map(|m| {
            let name = claim_name(&m.name);
            (
                Volume {
                    name: name.clone(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: name.clone(),
                        read_only: None,
                    }),
                    ..Volume::default()
                },
                VolumeMount {
                    name,
                    mount_path: m.target.to_string(),
                    ..VolumeMount::default()
                },
            )
        })
        .unzip()
}

/// `CYGNI_STORAGE_<NAME>=/path`, as on docker: where the app finds it.
pub fn storage_env(mounts: &[Mount]) -> Vec<EnvVar> {
    mounts
        .iter()
        .map(|m| EnvVar {
            name: m.name.env_var(),
            value: Some(m.target.to_string()),
            ..EnvVar::default()
        })
        .collect()
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
    // PORT and where the storage is are the runtime's, not config vars:
    // the only plain env entries.
    let env: Vec<EnvVar> = web
        .then(|| EnvVar {
            name: "PORT".to_owned(),
            value: Some(WEB_PORT.to_string()),
            ..EnvVar::default()
        })
        .into_iter()
        .chain(storage_env(&spec.mounts))
        .collect();
    let env = (!env.is_empty()).then_some(env);
    let (volumes, volume_mounts) = volumes(&spec.mounts);
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
        volume_mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
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
            // Kept with storage too: a ReadWriteOnce volume is mounted by
            // one node, not one pod, and a local-path volume's node
            // affinity schedules every pod that uses it onto its node, so
            // the surge pod mounts it beside the old one (as docker starts
            // the new container on the same bind mount before stopping the
            // old). Recreate would stop serving on every deploy, and a
            // failed one would leave nothing serving. The cost: all pods of
            // a type with storage run on that one node, and a class whose
            // volumes attach to one node at a time could leave the surge
            // pod unable to attach elsewhere; that rollout fails at its
            // deadline and the old Deployment is put back (README).
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
                    volumes: (!volumes.is_empty()).then_some(volumes),
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
            run_as: None,
        }
    }

    /// Cygni's own storage `data` at `/data`.
    pub(crate) fn data_mount() -> Mount {
        Mount {
            name: StorageName::parse("data").expect("valid"),
            target: crate::names::MountPath::parse("/data").expect("valid"),
            source: MountSource::Managed {
                dir: "/var/lib/cygni/storage/shop/data".into(),
            },
        }
    }

    /// An admin's host directory `shared` at `/srv/shared`.
    pub(crate) fn host_mount() -> Mount {
        Mount {
            name: StorageName::parse("shared").expect("valid"),
            target: crate::names::MountPath::parse("/shared").expect("valid"),
            source: MountSource::Host {
                path: "/srv/shared".into(),
            },
        }
    }

    /// `web_spec` with the storage `data` at `/data`.
    pub(crate) fn web_spec_with_storage(release: u32) -> ProcessSpec {
        ProcessSpec {
            mounts: vec![data_mount()],
            ..web_spec(release)
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

    #[test]
    fn a_claim_is_named_and_labelled_after_its_storage() {
        let app = AppName::parse("shop").unwrap();
        let c = claim(&app, &data_mount().name, &ClaimClass::default());
        golden("claim-data", &json(&c));
        assert_eq!(c.metadata.name.as_deref(), Some("storage-data"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("cygni-shop"));
        let labels = c.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_APP], "shop");
        assert_eq!(labels[LABEL_STORAGE], "data");
        let spec = c.spec.clone().unwrap();
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        let requests = spec.resources.unwrap().requests.unwrap();
        assert_eq!(requests["storage"], Quantity("1Gi".into()));
        // What the claim says it was made with is what it is re-applied with.
        assert_eq!(ClaimClass::of(&c), Some(ClaimClass::default()));
    }

    #[test]
    fn the_operator_picks_class_and_size_and_typos_are_refused() {
        let c = ClaimClass::parse(Some("longhorn"), Some("20Gi")).unwrap();
        assert_eq!((c.class.as_str(), c.size.as_str()), ("longhorn", "20Gi"));
        let app = AppName::parse("shop").unwrap();
        let spec = claim(&app, &data_mount().name, &c).spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("longhorn"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("20Gi".into())
        );
        assert_eq!(
            ClaimClass::parse(None, None).unwrap(),
            ClaimClass::default()
        );
        for bad in ["Local-Path", "", "a..b", "-x", "x/y"] {
            let e = ClaimClass::parse(Some(bad), None).unwrap_err();
            assert_eq!(e.key(), "kube_storage_class", "{bad}");
            assert!(e.to_string().contains("not a storage class name"), "{e}");
        }
        for bad in ["1G", "1gb", "0Gi", "Gi", "1.5Gi", "-1Gi", "1 Gi"] {
            let e = ClaimClass::parse(None, Some(bad)).unwrap_err();
            assert_eq!(e.key(), "kube_storage_size", "{bad}");
            assert!(e.to_string().contains("such as 1Gi"), "{e}");
        }
    }

    #[test]
    fn long_storage_names_still_make_valid_claim_names() {
        let name = StorageName::parse(&format!("a{}", "b".repeat(62))).unwrap();
        let n = claim_name(&name);
        assert!(crate::names::is_dns_label(&n), "{n}");
    }

    #[test]
    fn storage_is_a_volume_a_mount_and_a_variable_in_the_pod_template() {
        let s = web_spec_with_storage(1);
        let d = deployment(&s, image(&s).expect("image"), 1);
        golden("deployment-web-v1-storage", &json(&d));
        let pod = d.spec.unwrap().template.spec.unwrap();
        let volumes = pod.volumes.unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].name, "storage-data");
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "storage-data"
        );
        let c = &pod.containers[0];
        let vm = c.volume_mounts.as_ref().unwrap();
        assert_eq!(
            (vm[0].name.as_str(), vm[0].mount_path.as_str()),
            ("storage-data", "/data")
        );
        let env = c.env.as_ref().unwrap();
        assert!(env
            .iter()
            .any(|e| e.name == "CYGNI_STORAGE_DATA" && e.value.as_deref() == Some("/data")));
        assert!(env.iter().any(|e| e.name == "PORT"));
    }

    #[test]
    fn host_paths_are_not_mapped_and_say_what_to_do() {
        let mounts = vec![data_mount(), host_mount()];
        let m = unmappable(&mounts).expect("the host path");
        assert_eq!(m.name.to_string(), "shared");
        let app = AppName::parse("shop").unwrap();
        let text = unmappable_message(&app, m);
        assert!(!text.contains('\n'));
        assert!(
            text.starts_with("storage shared of shop is a host directory (--host-path), which the kube runtime does not mount"),
            "{text}"
        );
        assert!(text.contains("storage:unmount shop shared"), "{text}");
        assert!(unmappable(&[data_mount()]).is_none());
    }
}
