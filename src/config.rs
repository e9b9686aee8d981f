//! The daemon's configuration: flags, `CYGNI_*` environment variables and
//! the config file, merged and validated before any port is bound.
//!
//! ```text
//! flag ──► CYGNI_<FLAG> env ──► config file key ──► built-in default
//!  (first one set wins)                                      │
//!                                                            ▼
//!                                   Config::resolve ──► Config (validated)
//! ```
//!
//! Config file keys are the flag names with `_` for `-` (`data_dir`,
//! `ssh_listen`, ...). An error names the key and says what is wrong, so the
//! operator knows what to change; the binary exits 64 (EX_USAGE) on it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The default config file, read when it exists and `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/cygni/cygni.toml";

/// Let's Encrypt production; staging is
/// `https://acme-staging-v02.api.letsencrypt.org/directory`.
pub const DEFAULT_ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("config: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config: {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// `cygni serve` flags; each also reads `CYGNI_<FLAG>`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML). Default: /etc/cygni/cygni.toml when it exists.
    #[arg(long, env = "CYGNI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where state, repos, slugs, logs and keys live.
    #[arg(long, env = "CYGNI_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// SSH listen address (git push and admin commands). Default 0.0.0.0:2222.
    #[arg(long, env = "CYGNI_SSH_LISTEN", value_name = "ADDR")]
    pub ssh_listen: Option<String>,
    /// HTTP listen address. Default :80 as root, else :8080.
    #[arg(long, env = "CYGNI_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// HTTPS listen address. Default :443 as root, else :8443.
    #[arg(long, env = "CYGNI_HTTPS_LISTEN", value_name = "ADDR")]
    pub https_listen: Option<String>,
    /// Apps are served at APP.DOMAIN. Default localhost.
    #[arg(long, env = "CYGNI_DOMAIN", value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// How apps run: auto, local, docker or kube. Default auto.
    #[arg(long, env = "CYGNI_RUNTIME", value_name = "RUNTIME")]
    pub runtime: Option<String>,
    /// The kubeconfig of the cluster for --runtime kube (and auto). Default:
    /// $KUBECONFIG, else /etc/rancher/k3s/k3s.yaml.
    #[arg(long, env = "CYGNI_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// An OpenSSH public key file that becomes an admin key on first start.
    #[arg(long, env = "CYGNI_ADMIN_KEY", value_name = "FILE")]
    pub admin_key: Option<PathBuf>,
    /// ACME directory URL. Default: Let's Encrypt production.
    #[arg(long, env = "CYGNI_ACME_DIRECTORY", value_name = "URL")]
    pub acme_directory: Option<String>,
    /// Contact email for the ACME account.
    #[arg(long, env = "CYGNI_ACME_EMAIL", value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// A PEM file of extra roots to trust for the ACME directory (Pebble, internal CAs).
    #[arg(long, env = "CYGNI_ACME_CA", value_name = "FILE")]
    pub acme_ca: Option<PathBuf>,
    /// The HTTP API and git over HTTP on a plain listener, for local use.
    /// Default 127.0.0.1:7070; `off` disables it.
    #[arg(long, env = "CYGNI_API_LISTEN", value_name = "ADDR")]
    pub api_listen: Option<String>,
    /// Serve the images Cygni builds (pull-only OCI registry) on ADDR.
    /// Off by default.
    #[arg(long, env = "CYGNI_REGISTRY_LISTEN", value_name = "ADDR")]
    pub registry_listen: Option<String>,
    /// Where /metrics, /healthz and /readyz are served, or `off`. Default 127.0.0.1:9100.
    #[arg(long, env = "CYGNI_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// The daemon's own log lines: text or json. Default text.
    #[arg(long, env = "CYGNI_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
}

/// The config file: the same keys as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    ssh_listen: Option<String>,
    http_listen: Option<String>,
    https_listen: Option<String>,
    domain: Option<String>,
    runtime: Option<String>,
    kubeconfig: Option<PathBuf>,
    admin_key: Option<PathBuf>,
    acme_directory: Option<String>,
    acme_email: Option<String>,
    acme_ca: Option<PathBuf>,
    boot_timeout_secs: Option<u64>,
    buildpacks_dir: Option<PathBuf>,
    run_image: Option<String>,
    keep_releases: Option<usize>,
    reconcile_interval_secs: Option<u64>,
    min_free_mb: Option<u64>,
    api_listen: Option<String>,
    audit_retention_days: Option<u32>,
    registry_listen: Option<String>,
    storage_host_paths: Option<Vec<PathBuf>>,
    kube_storage_class: Option<String>,
    kube_storage_size: Option<String>,
    stack_base_image: Option<String>,
    stack_offline: Option<bool>,
    metrics_listen: Option<String>,
    log_format: Option<String>,
    metrics: Option<bool>,
    sync_allow_schemes: Option<Vec<String>>,
    sync_allow_private: Option<bool>,
    sync_min_interval_secs: Option<u64>,
    sync_timeout_secs: Option<u64>,
    sync_max_mb: Option<u64>,
}

/// Which runtime backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeChoice {
    Auto,
    Local,
    Docker,
    Kube,
}

impl RuntimeChoice {
    fn parse(s: &str) -> Result<RuntimeChoice, ConfigError> {
        match s {
            "auto" => Ok(RuntimeChoice::Auto),
            "local" => Ok(RuntimeChoice::Local),
            "docker" => Ok(RuntimeChoice::Docker),
            "kube" => Ok(RuntimeChoice::Kube),
            other => Err(invalid(
                "runtime",
                format!("{other:?} is not one of auto, local, docker, kube"),
            )),
        }
    }
}

/// How the daemon writes its own log lines (stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line (tracing-subscriber's json format).
    Json,
}

impl LogFormat {
    fn parse(s: &str) -> Result<LogFormat, ConfigError> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(invalid(
                "log_format",
                format!("{other:?} is not one of text, json"),
            )),
        }
    }
}

/// The metrics listener's default: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9100";

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub ssh_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub https_listen: SocketAddr,
    pub domain: String,
    pub runtime: RuntimeChoice,
    /// `--kubeconfig` (file key `kubeconfig`); `None`: KUBECONFIG, else k3s's.
    pub kubeconfig: Option<PathBuf>,
    pub admin_key: Option<PathBuf>,
    pub acme_directory: String,
    pub acme_email: Option<String>,
    pub acme_ca: Option<PathBuf>,
    /// How long a new `web` instance has to pass its health check.
    pub boot_timeout: Duration,
    /// Where the shipped buildpacks are (config file key `buildpacks_dir`).
    pub buildpacks_dir: PathBuf,
    /// The image buildpack slugs run on under docker instead of the
    /// stack's run image (file key `run_image`; default: the stack's).
    pub run_image: Option<String>,
    /// What the stack's build and run images start from (file key
    /// `stack_base_image`, default `debian:bookworm-slim`).
    pub stack_base_image: String,
    /// Build the stack images with no network, from a complete local base
    /// (file key `stack_offline`, default false).
    pub stack_offline: bool,
    /// Recent good releases whose slug or image is kept for rollback (file
    /// key `keep_releases`).
    pub keep_releases: usize,
    /// How often what runs is compared with what should run (file key
    /// `reconcile_interval_secs`, 1 to 3600, default 10).
    pub reconcile_interval: Duration,
    /// Free space (MiB) the data dir keeps: a push or build that would
    /// start below it is refused (file key `min_free_mb`, default 512).
    pub min_free_mb: u64,
    /// The API's loopback listener (`api_listen`; `None` when `off`).
    pub api_listen: Option<SocketAddr>,
    /// `api_listen` was not set: a port in use turns the listener off
    /// with a warning instead of stopping the start.
    pub api_listen_is_default: bool,
    /// Audit entries older than this many days are pruned (file key
    /// `audit_retention_days`, 1 to 36500, default 90).
    pub audit_retention_days: u32,
    /// Where the image registry listens (`--registry-listen`, file key
    /// `registry_listen`); `None`: no registry, and images are not published.
    pub registry_listen: Option<SocketAddr>,
    /// Host directories admins may mount into apps with `storage:mount
    /// --host-path` (file key `storage_host_paths`, absolute existing
    /// directories; default none).
    pub storage_host_paths: Vec<PathBuf>,
    /// The storage class and size of the PersistentVolumeClaims the kube
    /// runtime makes for `storage:mount` (file keys `kube_storage_class`,
    /// default `local-path`, and `kube_storage_size`, default `1Gi`). They
    /// apply to claims made after a change; an existing claim keeps its own.
    pub kube_storage: crate::runtime::kube::manifest::ClaimClass,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; None: `off`.
    pub metrics_listen: Option<SocketAddr>,
    /// The proxy records per-request figures (file key `metrics`, default
    /// true; false is for measuring what recording costs).
    pub metrics: bool,
    pub log_format: LogFormat,
    /// What `apps:create --from` / `git:sync` may fetch besides https from
    /// public addresses (file keys `sync_allow_schemes`, e.g. `["file"]`,
    /// and `sync_allow_private`; env `CYGNI_SYNC_ALLOW_SCHEMES` (comma
    /// separated) and `CYGNI_SYNC_ALLOW_PRIVATE`).
    pub sync_policy: crate::sync::url::Policy,
    /// The shortest `git:sync --every` (file key `sync_min_interval_secs`,
    /// default 60).
    pub sync_min_interval: Duration,
    /// How long one fetch may take (file key `sync_timeout_secs`, default 600).
    pub sync_timeout: Duration,
    /// The largest pack one fetch may bring (file key `sync_max_mb`, default 2048).
    pub sync_max_bytes: u64,
}

impl Config {
    /// Merge flags/env over the config file over defaults, and validate.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                load_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => FileConfig::default(),
        };
        let root = is_root();

        let data_dir = match args.data_dir.clone().or(file.data_dir) {
            Some(dir) => dir,
            None => default_data_dir(root)?,
        };
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let data_dir = absolute(&data_dir).map_err(|e| invalid("data_dir", e.to_string()))?;

        let (http_port, https_port) = if root { (80, 443) } else { (8080, 8443) };
        let ssh_listen = listen_addr(
            "ssh_listen",
            args.ssh_listen.as_deref().or(file.ssh_listen.as_deref()),
            2222,
        )?;
        let http_listen = listen_addr(
            "http_listen",
            args.http_listen.as_deref().or(file.http_listen.as_deref()),
            http_port,
        )?;
        let https_listen = listen_addr(
            "https_listen",
            args.https_listen
                .as_deref()
                .or(file.https_listen.as_deref()),
            https_port,
        )?;

        let domain = args
            .domain
            .clone()
            .or(file.domain)
            .unwrap_or_else(|| "localhost".to_owned());
        let domain = normalize_domain(&domain).map_err(|m| invalid("domain", m))?;

        let runtime = RuntimeChoice::parse(
            args.runtime
                .as_deref()
                .or(file.runtime.as_deref())
                .unwrap_or("auto"),
        )?;

        let admin_key = args.admin_key.clone().or(file.admin_key);
        if let Some(path) = &admin_key {
            if !path.is_file() {
                return Err(invalid(
                    "admin_key",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }

        let acme_directory = args
            .acme_directory
            .clone()
            .or(file.acme_directory)
            .unwrap_or_else(|| DEFAULT_ACME_DIRECTORY.to_owned());
        if !acme_directory.starts_with("https://") {
            return Err(invalid(
                "acme_directory",
                format!("{acme_directory:?} must be an https:// URL"),
            ));
        }
        let acme_email = args.acme_email.clone().or(file.acme_email);
        if let Some(email) = &acme_email {
            let valid = email.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty() && host.contains('.') && !email.contains(char::is_whitespace)
            });
            if !valid {
                return Err(invalid(
                    "acme_email",
                    format!("{email:?} is not an email address"),
                ));
            }
        }
        let acme_ca = args.acme_ca.clone().or(file.acme_ca);
        if let Some(path) = &acme_ca {
            if !path.is_file() {
                return Err(invalid(
                    "acme_ca",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        let boot_timeout = Duration::from_secs(file.boot_timeout_secs.unwrap_or(60));
        if boot_timeout.is_zero() {
            return Err(invalid("boot_timeout_secs", "must be at least 1"));
        }

        let buildpacks_dir = match file.buildpacks_dir {
            Some(dir) if dir.is_dir() => dir,
            Some(dir) => {
                return Err(invalid(
                    "buildpacks_dir",
                    format!("{} is not a directory", dir.display()),
                ))
            }
            None => default_buildpacks_dir(),
        };

        let run_image = file.run_image;
        if let Some(image) = &run_image {
            if !crate::build::image::is_image_reference(image) {
                return Err(invalid(
                    "run_image",
                    format!("{image:?} is not an image reference (e.g. debian:bookworm-slim)"),
                ));
            }
        }
        let stack_base_image = file
            .stack_base_image
            .unwrap_or_else(|| crate::build::stack::DEFAULT_BASE_IMAGE.to_owned());
        if !crate::build::image::is_image_reference(&stack_base_image) {
            return Err(invalid(
                "stack_base_image",
                format!(
                    "{stack_base_image:?} is not an image reference (e.g. debian:bookworm-slim)"
                ),
            ));
        }
        let keep_releases = file.keep_releases.unwrap_or(crate::deploy::KEEP_RELEASES);
        if keep_releases == 0 {
            return Err(invalid("keep_releases", "must be at least 1"));
        }

        let reconcile_interval = Duration::from_secs(file.reconcile_interval_secs.unwrap_or(10));
        if !(1..=3600).contains(&reconcile_interval.as_secs()) {
            return Err(invalid(
                "reconcile_interval_secs",
                "must be 1 to 3600 seconds",
            ));
        }

        let api_listen_arg = args.api_listen.as_deref().or(file.api_listen.as_deref());
        let api_listen_is_default = api_listen_arg.is_none();
        let api_listen = match api_listen_arg {
            Some("off") => None,
            other => Some(listen_addr(
                "api_listen",
                other.or(Some("127.0.0.1:7070")),
                7070,
            )?),
        };
        let audit_retention_days = file.audit_retention_days.unwrap_or(90);
        if !(1..=36_500).contains(&audit_retention_days) {
            return Err(invalid("audit_retention_days", "must be 1 to 36500 days"));
        }

        let registry_listen = args
            .registry_listen
            .as_deref()
            .or(file.registry_listen.as_deref())
            .map(|v| listen_addr("registry_listen", Some(v), 0))
            .transpose()?;

        let kube_storage = crate::runtime::kube::manifest::ClaimClass::parse(
            file.kube_storage_class.as_deref(),
            file.kube_storage_size.as_deref(),
        )
        .map_err(|e| invalid(e.key(), e.to_string()))?;

        let mut storage_host_paths = Vec::new();
        for dir in file.storage_host_paths.unwrap_or_default() {
            // Canonical, so that a mount's check against it is on real paths.
            match dir.canonicalize() {
                Ok(real) if dir.is_absolute() && real.is_dir() && real != Path::new("/") => {
                    storage_host_paths.push(real)
                }
                _ => {
                    return Err(invalid(
                        "storage_host_paths",
                        format!(
                            "{} is not an absolute path to an existing directory other than /",
                            dir.display()
                        ),
                    ))
                }
            }
        }

        let metrics_listen = match args
            .metrics_listen
            .as_deref()
            .or(file.metrics_listen.as_deref())
            .unwrap_or(DEFAULT_METRICS_LISTEN)
        {
            "off" => None,
            value => Some(listen_addr("metrics_listen", Some(value), 9100)?),
        };
        let log_format = LogFormat::parse(
            args.log_format
                .as_deref()
                .or(file.log_format.as_deref())
                .unwrap_or("text"),
        )?;

        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let schemes: Vec<String> = match env("CYGNI_SYNC_ALLOW_SCHEMES") {
            Some(v) => v.split(',').map(|s| s.trim().to_owned()).collect(),
            None => file.sync_allow_schemes.unwrap_or_default(),
        };
        let mut allow_schemes = Vec::new();
        for s in schemes.iter().filter(|s| !s.is_empty()) {
            match crate::sync::url::Scheme::parse(s) {
                Some(scheme) => allow_schemes.push(scheme),
                None => {
                    return Err(invalid(
                        "sync_allow_schemes",
                        format!("{s:?} is not one of https, http, ssh, git, file"),
                    ))
                }
            }
        }
        let allow_private = match env("CYGNI_SYNC_ALLOW_PRIVATE").as_deref() {
            Some("1" | "true" | "yes") => true,
            Some("0" | "false" | "no") => false,
            Some(other) => {
                return Err(invalid(
                    "sync_allow_private",
                    format!("{other:?} is not true or false"),
                ))
            }
            None => file.sync_allow_private.unwrap_or(false),
        };
        let sync_min_interval = Duration::from_secs(file.sync_min_interval_secs.unwrap_or(60));
        if sync_min_interval.is_zero() {
            return Err(invalid("sync_min_interval_secs", "must be at least 1"));
        }
        let sync_timeout = Duration::from_secs(file.sync_timeout_secs.unwrap_or(600));
        if sync_timeout.is_zero() {
            return Err(invalid("sync_timeout_secs", "must be at least 1"));
        }

        Ok(Config {
            sync_policy: crate::sync::url::Policy {
                allow_schemes,
                allow_private,
            },
            sync_min_interval,
            sync_timeout,
            sync_max_bytes: file.sync_max_mb.unwrap_or(2048).saturating_mul(1 << 20),
            api_listen,
            api_listen_is_default,
            audit_retention_days,
            registry_listen,
            storage_host_paths,
            kube_storage,
            metrics_listen,
            metrics: file.metrics.unwrap_or(true),
            log_format,
            min_free_mb: file.min_free_mb.unwrap_or(512),
            reconcile_interval,
            data_dir,
            ssh_listen,
            http_listen,
            https_listen,
            domain,
            runtime,
            kubeconfig: args.kubeconfig.clone().or(file.kubeconfig),
            admin_key,
            acme_directory,
            acme_email,
            acme_ca,
            boot_timeout,
            buildpacks_dir,
            run_image,
            stack_base_image,
            stack_offline: file.stack_offline.unwrap_or(false),
            keep_releases,
        })
    }
}

/// The installer puts buildpacks in /usr/share/cygni; a build from source
/// uses the tree it was built from.
fn default_buildpacks_dir() -> PathBuf {
    let installed = PathBuf::from("/usr/share/cygni/buildpacks");
    if installed.is_dir() {
        installed
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("buildpacks")
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        // toml's Display spans several lines; keep the first, which names the key.
        message: e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_owned(),
    })
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn default_data_dir(root: bool) -> Result<PathBuf, ConfigError> {
    if root {
        return Ok(PathBuf::from("/var/lib/cygni"));
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("cygni"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/cygni")),
        None => Err(invalid(
            "data_dir",
            "neither XDG_DATA_HOME nor HOME is set: pass --data-dir",
        )),
    }
}

fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

/// `:8080` (all interfaces), `127.0.0.1:0`, `[::1]:2222`.
fn listen_addr(
    key: &'static str,
    value: Option<&str>,
    default_port: u16,
) -> Result<SocketAddr, ConfigError> {
    let Some(value) = value else {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            default_port,
        ));
    };
    if let Some(port) = value.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(key, format!("{value:?} has no valid port")))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address like 0.0.0.0:2222 or :2222"),
        )
    })
}

/// Lowercase, no trailing dot, each label a valid DNS label.
pub fn normalize_domain(domain: &str) -> Result<String, String> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let valid = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        });
    if valid {
        Ok(d)
    } else {
        Err(format!("{domain:?} is not a valid domain name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            data_dir: Some("/tmp/cygni-test".into()),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            listen_addr("k", Some(":8080"), 1).unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            listen_addr("k", Some("[::1]:22"), 1).unwrap(),
            "[::1]:22".parse().unwrap()
        );
        assert_eq!(
            listen_addr("k", None, 2222).unwrap(),
            "0.0.0.0:2222".parse().unwrap()
        );
        let err = listen_addr("ssh_listen", Some("nope"), 1).unwrap_err();
        assert!(err.to_string().starts_with("config: ssh_listen:"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        type Setter = fn(&mut ServeArgs);
        let cases: [(&str, Setter); 6] = [
            ("runtime", |a| a.runtime = Some("podman".into())),
            ("log_format", |a| a.log_format = Some("xml".into())),
            ("metrics_listen", |a| {
                a.metrics_listen = Some("nowhere".into())
            }),
            ("domain", |a| a.domain = Some("bad domain".into())),
            ("acme_directory", |a| {
                a.acme_directory = Some("http://x".into())
            }),
            ("admin_key", |a| {
                a.admin_key = Some("/nonexistent/key.pub".into())
            }),
        ];
        for (key, set) in cases {
            let mut a = args();
            set(&mut a);
            let err = Config::resolve(&a).unwrap_err().to_string();
            assert!(err.starts_with(&format!("config: {key}:")), "{err}");
        }
    }

    #[test]
    fn metrics_listen_and_log_format() {
        let c = Config::resolve(&args()).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.metrics);
        let mut a = args();
        a.metrics_listen = Some("off".into());
        a.log_format = Some("json".into());
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn file_keys_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cygni.toml");
        std::fs::write(&path, "domain = \"Example.COM.\"\nssh_listen = \":2022\"\n").unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.domain, "example.com");
        assert_eq!(c.ssh_listen.port(), 2022);
        // Flags win over the file.
        a.domain = Some("flag.test".into());
        assert_eq!(Config::resolve(&a).unwrap().domain, "flag.test");

        // The registry is off unless asked for; `:0` and the file key work.
        assert_eq!(c.registry_listen, None);
        std::fs::write(&path, "registry_listen = \"127.0.0.1:0\"\n").unwrap();
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.registry_listen, Some("127.0.0.1:0".parse().unwrap()));
        a.registry_listen = Some("five thousand".into());
        let err = Config::resolve(&a).unwrap_err().to_string();
        assert!(err.starts_with("config: registry_listen:"), "{err}");
        a.registry_listen = None;

        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        a.domain = None;
        let err = Config::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn kubeconfig_from_the_file_or_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cygni.toml");
        std::fs::write(&path, "kubeconfig = \"/etc/k.yaml\"\n").unwrap();
        let mut a = args();
        assert_eq!(Config::resolve(&a).unwrap().kubeconfig, None);
        a.config = Some(path);
        assert_eq!(
            Config::resolve(&a).unwrap().kubeconfig,
            Some(PathBuf::from("/etc/k.yaml"))
        );
        a.kubeconfig = Some("/flag.yaml".into());
        assert_eq!(
            Config::resolve(&a).unwrap().kubeconfig,
            Some(PathBuf::from("/flag.yaml"))
        );
    }

    #[test]
    fn kube_storage_class_and_size_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cygni.toml");
        let mut a = args();
        let c = Config::resolve(&a).unwrap();
        assert_eq!(
            (c.kube_storage.class.as_str(), c.kube_storage.size.as_str()),
            ("local-path", "1Gi")
        );
        a.config = Some(path.clone());
        std::fs::write(
            &path,
            "kube_storage_class = \"longhorn\"\nkube_storage_size = \"20Gi\"\n",
        )
        .unwrap();
        let c = Config::resolve(&a).unwrap();
        assert_eq!(
            (c.kube_storage.class.as_str(), c.kube_storage.size.as_str()),
            ("longhorn", "20Gi")
        );
        std::fs::write(&path, "kube_storage_size = \"20GB\"\n").unwrap();
        let err = Config::resolve(&a).unwrap_err().to_string();
        assert!(
            err.starts_with("config: kube_storage_size: \"20GB\" is not a size such as 1Gi"),
            "{err}"
        );
    }
}
