//! `cygni serve`: start-up, the task tree, and shutdown.
//!
//! ```text
//! Config (validated) ──► data dir, SQLite (migrated), host key, admin key
//!                    ──► stored certificates into the TLS store
//!                    ──► bind SSH, HTTP, HTTPS, hook socket (all before serving)
//!                    ──► spawn under one CancellationToken:
//!                          ssh::serve · hook::serve · proxy (HTTP, HTTPS) ·
//!                          registry (with --registry-listen) ·
//!                          reconcile loop · preview sweep · ACME renewer · metrics listener
//! SIGTERM / Ctrl-C ──► cancel ──► tasks stop accepting and finish (bounded)
//!                  ──► the local runtime stops its instances (docker
//!                      containers keep running, and are adopted at the
//!                      next start)
//! ```
//!
//! Runtime choice: `local`; `docker` (the engine must answer, or the start
//! fails); `auto`: docker when the engine's socket answers within a few
//! seconds, else local.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::{Acme, AcmeConfig};
use crate::config::Config;
use crate::deploy::{self, Paths, Platform};
use crate::git::{GitEnv, Repos};
use crate::hook::{self, PushRegistry};
use crate::logs::LogStore;
use crate::metrics::{self, Health, InstanceFigure, Metrics};
use crate::names::KeyName;
use crate::proxy::{self, CertStore, Challenges, ProxyConfig, RouteTable, Routes};
use crate::runtime::local::RunAs;
use crate::runtime::{self, ConnectOptions};
use crate::ssh::{self, keys, SshContext};
use crate::state::{self, keys::Role, Db};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error(transparent)]
    Hook(#[from] hook::HookError),
    #[error("admin key {path}: {source}")]
    AdminKey {
        path: PathBuf,
        #[source]
        source: keys::KeyError,
    },
    #[error("cannot find this program's path: {0}")]
    SelfPath(std::io::Error),
    #[error(transparent)]
    Logs(#[from] crate::logs::LogError),
    #[error(transparent)]
    Runtime(#[from] runtime::ConnectError),
    #[error(transparent)]
    Tls(#[from] proxy::tls::TlsError),
    #[error(transparent)]
    Acme(#[from] crate::acme::AcmeError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

fn create_dir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| DaemonError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// Slugs and caches a Cygni before per-app users left open (`slugs/APP`
/// 0755, each slug and cache as the build made it, all `cygni-app`'s):
/// `slugs/APP` becomes traversable only (0711), each slug and cache 0700.
/// Who owns them changes when the app next builds or starts
/// (`build::hand_over`); until then no app can read them. Only modes
/// change here, and only of directories Cygni made (apps cannot write in
/// `slugs/` or `cache/`): a failure is logged and the start goes on.
fn close_app_dirs(data: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let restrict = |path: &Path, mode: u32| {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() && meta.mode() & 0o7777 != mode {
            if let Err(error) =
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            {
                tracing::warn!(path = %path.display(), %error, "cannot close an app's directory");
            }
        }
    };
    let entries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default()
    };
    for app_dir in entries(&data.join("slugs")) {
        restrict(&app_dir, 0o711);
        for slug in entries(&app_dir) {
            restrict(&slug, 0o700);
        }
    }
    for cache in entries(&data.join("cache")) {
        restrict(&cache, 0o700);
    }
}

fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, DaemonError> {
    let l = std::net::TcpListener::bind(addr).map_err(|source| DaemonError::Bind {
        what,
        addr,
        source,
    })?;
    l.set_nonblocking(true)
        .map_err(|source| DaemonError::Bind { what, addr, source })?;
    Ok(l)
}

/// Make the `--admin-key` an admin on first start (idempotent by fingerprint).
/// With no admin at all and no flag, adopt the running user's own key, as
/// Piku does, so `cygni serve` works out of the box on a workstation.
fn ensure_admin(db: &Db, config: &Config) -> Result<(), DaemonError> {
    let candidate = match &config.admin_key {
        Some(path) => Some(path.clone()),
        None => {
            let admins = db.call_blocking(|c| state::keys::count_admins(c))?;
            if admins > 0 {
                None
            } else {
                std::env::var_os("HOME").and_then(|home| {
                    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
                        .iter()
                        .map(|f| Path::new(&home).join(".ssh").join(f))
                        .find(|p| p.is_file())
                })
            }
        }
    };
    let Some(path) = candidate else {
        let admins = db.call_blocking(|c| state::keys::count_admins(c))?;
        if admins == 0 {
            tracing::warn!("no admin key: restart with --admin-key ~/.ssh/id_ed25519.pub");
        }
        return Ok(());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| DaemonError::AdminKey {
        path: path.clone(),
        source: keys::KeyError::Parse(e.to_string()),
    })?;
    let key = keys::parse_user_key(&text).map_err(|source| DaemonError::AdminKey {
        path: path.clone(),
        source,
    })?;
    let fingerprint = keys::fingerprint(&key);
    let public = key.to_openssh().map_err(|e| DaemonError::AdminKey {
        path: path.clone(),
        source: keys::KeyError::Parse(e.to_string()),
    })?;
    let comment_name = KeyName::parse(key.comment().as_str_lossy()).ok();
    db.call_blocking(move |c| {
        if state::keys::by_fingerprint(c, &fingerprint)?.is_some() {
            return Ok(());
        }
        // Prefer the key's comment as its name; fall back to admin, admin-2, ...
        let mut names = comment_name.into_iter().chain(
            std::iter::once("admin".to_owned())
                .chain((2..100).map(|i| format!("admin-{i}")))
                .filter_map(|n| KeyName::parse(&n).ok()),
        );
        loop {
            let Some(name) = names.next() else {
                return Ok(());
            };
            match state::keys::add(
                c,
                state::keys::NewKey {
                    name: &name,
                    fingerprint: &fingerprint,
                    public_key: &public,
                    role: Role::Admin,
                },
            ) {
                Ok(_) => {
                    tracing::info!(key = %name, %fingerprint, "added admin key");
                    return Ok(());
                }
                Err(state::StateError::Exists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    })?;
    Ok(())
}

/// Run the daemon until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> Result<(), DaemonError> {
    // rustls panics at first use if it cannot tell which crypto provider
    // to use; install aws-lc-rs process-wide (Err: already installed).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let data = config.data_dir.clone();
    create_dir(&data, 0o711)?;
    let db = Db::open(&data.join("cygni.db"))?;
    let host_key = keys::load_or_create_host_key(&data.join("ssh_host_ed25519_key"))?;
    let host_fingerprint = keys::fingerprint(host_key.public_key());
    ensure_admin(&db, &config)?;
    let git_env = GitEnv::install(&data)?;
    let repos = Repos::new(&data)?;
    let interrupted = db.call_blocking(state::releases::fail_unfinished)?;
    for (app, version) in &interrupted {
        // A release that never went live is never rolled back to: its
        // half-built directory goes.
        let dir = data
            .join("slugs")
            .join(app.as_str())
            .join(format!("v{version}"));
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(%app, version, error = %e, "cannot remove an interrupted build");
            }
            _ => {}
        }
        tracing::warn!(%app, version, "a deploy interrupted by the last stop is marked failed");
    }
    for dir in ["slugs", "cache"] {
        create_dir(&data.join(dir), 0o711)?;
    }
    // Apps run as unprivileged users that can traverse the data dir (to
    // reach their slug): what only the daemon reads stays closed to them.
    for dir in ["repos", "logs", "git"] {
        create_dir(&data.join(dir), 0o700)?;
    }
    // Root: each app runs as its own uid/gid (state::app_users), and
    // RunAs is only the floor for a process that names none.
    let run_as = RunAs::resolve_default();
    let app_users = run_as.is_some();
    if app_users {
        close_app_dirs(&data);
    }
    let logs = Arc::new(LogStore::open(&data.join("logs"))?);
    let connected = runtime::connect(
        config.runtime,
        ConnectOptions {
            data_dir: data.clone(),
            logs: logs.clone(),
            run_as: run_as.clone(),
            kubeconfig: config.kubeconfig.clone(),
            kube_storage: config.kube_storage.clone(),
        },
    )
    .await?;
    // Only the local runtime's instances stop with the daemon.
    let (runtime, local, runtime_text) =
        (connected.runtime, connected.local, connected.description);
    let metrics = Metrics::new(data.clone(), config.metrics);
    let routes = Arc::new(RouteTable::new(Routes::empty()));
    routes.record_into(metrics.clone());
    routes.log_access_into(logs.clone());
    let challenges = Challenges::shared();
    let certs = Arc::new(CertStore::new());
    let acme = Acme::new(
        db.clone(),
        certs.clone(),
        challenges.clone(),
        AcmeConfig {
            directory: config.acme_directory.clone(),
            email: config.acme_email.clone(),
            ca: config.acme_ca.clone(),
            domain: config.domain.clone(),
        },
    );
    acme.set_metrics(metrics.clone());
    // Serve what is stored from the first handshake; orders come later.
    acme.install_stored().await?;
    let tls_config = proxy::tls::server_config(certs)?;
    let mut platform = Platform::new(
        db.clone(),
        repos.clone(),
        runtime,
        routes.clone(),
        logs,
        Paths {
            slugs: data.join("slugs"),
            cache: data.join("cache"),
            buildpacks: config.buildpacks_dir.clone(),
            storage: data.join("storage"),
        },
        config.domain.clone(),
        config.boot_timeout,
        app_users,
    );

    // Bind everything before serving anything: a port in use fails the
    // start cleanly, with nothing half-running.
    let ssh_std = bind_tcp("ssh", config.ssh_listen)?;
    let http_std = bind_tcp("http", config.http_listen)?;
    let https_std = bind_tcp("https", config.https_listen)?;
    let hook_listener = hook::bind(&data)?;
    let registry_std = config
        .registry_listen
        .map(|addr| bind_tcp("registry", addr))
        .transpose()?;
    let metrics_std = match config.metrics_listen {
        Some(addr) => Some((bind_tcp("metrics", addr)?, addr)),
        None => None,
    };
    let ssh_addr = ssh_std.local_addr().map_err(|source| DaemonError::Bind {
        what: "ssh",
        addr: config.ssh_listen,
        source,
    })?;
    let http_addr = http_std.local_addr().map_err(|source| DaemonError::Bind {
        what: "http",
        addr: config.http_listen,
        source,
    })?;
    let https_addr = https_std.local_addr().map_err(|source| DaemonError::Bind {
        what: "https",
        addr: config.https_listen,
        source,
    })?;
    let registry = match &registry_std {
        Some(l) => {
            let addr = l.local_addr().map_err(|source| DaemonError::Bind {
                what: "registry",
                addr: config.registry_listen.unwrap_or(http_addr),
                source,
            })?;
            // References name an address a puller can dial.
            let host = if addr.ip().is_unspecified() {
                std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
            } else {
                addr
            };
            let registry = crate::registry::Registry::open(&data, host.to_string())?;
            Some((addr, Arc::new(registry)))
        }
        None => None,
    };
    platform.registry = registry.as_ref().map(|(_, r)| r.clone());
    if registry.is_some() && platform.runtime.artifact_kind() == runtime::ArtifactKind::Slug {
        tracing::warn!("the registry serves image builds, and this runtime builds none (slugs)");
    }
    platform.build_limits.run_image = config.run_image.clone();
    platform.build_limits.stack_base_image = config.stack_base_image.clone();
    platform.build_limits.stack_offline = config.stack_offline;
    platform.keep_releases = config.keep_releases;
    platform.min_free = config.min_free_mb.saturating_mul(1 << 20);
    platform.storage_host_paths = config.storage_host_paths.clone();
    platform.metrics = metrics.clone();
    platform.http_port = http_addr.port();
    let platform = Arc::new(platform);
    let ssh_listener =
        tokio::net::TcpListener::from_std(ssh_std).map_err(|source| DaemonError::Bind {
            what: "ssh",
            addr: ssh_addr,
            source,
        })?;

    let api_listener =
        match config.api_listen {
            None => None,
            Some(addr) => match bind_tcp("api", addr) {
                Ok(l) => Some(tokio::net::TcpListener::from_std(l).map_err(|source| {
                    DaemonError::Bind {
                        what: "api",
                        addr,
                        source,
                    }
                })?),
                // The default loopback port may be taken by another daemon on a
                // workstation; an address the operator chose must bind.
                Err(e) if config.api_listen_is_default => {
                    tracing::warn!(error = %e, "the API's loopback listener is off");
                    None
                }
                Err(e) => return Err(e),
            },
        };
    // Where a `dashboard:login` link points: the control host on the
    // proxy, and the loopback listener.
    let control_host = format!("cygni.{}", config.domain);
    let mut dashboard_urls = vec![if crate::acme::is_local_host(&control_host) {
        match http_addr.port() {
            80 => format!("http://{control_host}"),
            port => format!("http://{control_host}:{port}"),
        }
    } else {
        match https_addr.port() {
            443 => format!("https://{control_host}"),
            port => format!("https://{control_host}:{port}"),
        }
    }];
    if let Some(addr) = api_listener.as_ref().and_then(|l| l.local_addr().ok()) {
        dashboard_urls.push(format!("http://{addr}"));
    }
    let pushes = Arc::new(PushRegistry::default());
    let ctx = Arc::new(SshContext {
        db: db.clone(),
        repos,
        git_env,
        pushes: pushes.clone(),
        hook_socket: hook::socket_path(&data),
        cygni_bin: std::env::current_exe().map_err(DaemonError::SelfPath)?,
        data_dir: data.clone(),
        domain: config.domain.clone(),
        dashboard_urls,
        platform: platform.clone(),
        started: std::time::Instant::now(),
        acme: acme.clone(),
        service: Arc::new(crate::service::Service::new(
            db.clone(),
            platform.clone(),
            acme.clone(),
            config.domain.clone(),
        )),
    });

    // Syncs from repository URLs push through the same hook as any push.
    ctx.service.enable_sync(crate::service::sync::Syncer {
        policy: config.sync_policy.clone(),
        fetcher: crate::sync::fetch::Fetcher {
            home: data.join("sync").join("home"),
            timeout: config.sync_timeout,
            max_bytes: config.sync_max_bytes,
        },
        min_every: config.sync_min_interval,
        push: Arc::new(crate::local_push::PushEnv {
            git_env: ctx.git_env.clone(),
            pushes: pushes.clone(),
            hook_socket: ctx.hook_socket.clone(),
            cygni_bin: ctx.cygni_bin.clone(),
            data_dir: data.clone(),
        }),
    });

    // The control host: the API and git over HTTPS, through the proxy and
    // on the loopback listener.
    let shutdown = CancellationToken::new();
    let api = crate::api::Api::new(
        ctx.service.clone(),
        control_host.clone(),
        crate::acme::is_local_host(&control_host),
        crate::api::GitHttpEnv {
            git_env: ctx.git_env.clone(),
            pushes: pushes.clone(),
            hook_socket: ctx.hook_socket.clone(),
            cygni_bin: ctx.cygni_bin.clone(),
            data_dir: data.clone(),
        },
        shutdown.clone(),
    );
    let proxy_config = ProxyConfig {
        control: Some(proxy::ControlHook(Arc::new(crate::api::ControlHost(
            api.clone(),
        )))),
        ..ProxyConfig::default()
    };
    if let Err(e) = ctx.service.prune_audit(config.audit_retention_days).await {
        tracing::warn!(error = %e, "cannot prune the audit log");
    }

    let host = if ssh_addr.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        ssh_addr.ip().to_string()
    };
    println!("cygni {} ready", env!("CARGO_PKG_VERSION"));
    println!("  ssh:   {ssh_addr} (host key {host_fingerprint})");
    println!(
        "  http:  {http_addr} (apps at {})",
        ctx.app_url(&example_app())
    );
    println!(
        "  https: {https_addr} (certificates from {})",
        config.acme_directory
    );
    if let Some(l) = &api_listener {
        if let Ok(addr) = l.local_addr() {
            println!("  api:   {addr} (and {control_host} on the proxy)");
        }
    }
    if let Some((addr, _)) = &registry {
        println!(
            "  registry: {addr} (pull-only; credential in {})",
            data.join(crate::registry::CREDENTIAL_FILE).display()
        );
    }
    let metrics_listener = match metrics_std {
        Some((std, addr)) => {
            let bound = std.local_addr().map_err(|source| DaemonError::Bind {
                what: "metrics",
                addr,
                source,
            })?;
            println!("  metrics: {bound} (/metrics, /healthz, /readyz)");
            Some(
                tokio::net::TcpListener::from_std(std).map_err(|source| DaemonError::Bind {
                    what: "metrics",
                    addr: bound,
                    source,
                })?,
            )
        }
        None => {
            println!("  metrics: off");
            None
        }
    };
    println!("  data:  {}", data.display());
    println!("  runtime: {runtime_text}");
    println!(
        "  push:  git remote add cygni ssh://cygni@{host}:{}/myapp && git push cygni main",
        ssh_addr.port()
    );

    let tasks = TaskTracker::new();
    {
        // The dashboard's host chart: one hour of samples, taken in the
        // background so no page load waits on sysinfo.
        let history = Arc::new(metrics::history::HostHistory::default());
        api.dashboard().show_history(history.clone());
        tasks.spawn(metrics::history::run(
            history,
            data.clone(),
            metrics::history::EVERY,
            shutdown.clone(),
        ));
    }
    if let Some(l) = api_listener {
        tasks.spawn(crate::api::serve_loopback(l, api.clone(), shutdown.clone()));
    }
    {
        // Old audit entries go once a day.
        let (service, days, stop) = (
            ctx.service.clone(),
            config.audit_retention_days,
            shutdown.clone(),
        );
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(86_400)) => {}
                }
                if let Err(e) = service.prune_audit(days).await {
                    tracing::warn!(error = %e, "cannot prune the audit log");
                }
            }
        });
    }
    let stopped = Stopped::default();
    metrics.set_sources(Arc::new(DaemonSources {
        db: db.clone(),
        runtime: platform.runtime.clone(),
    }));
    let health = Arc::new(readiness(&db, &platform.runtime, &stopped));
    // The control host answers them too (/metrics behind a token).
    api.observe(metrics.clone(), health.clone());
    if let Some(listener) = metrics_listener {
        tasks.spawn(metrics::http::serve(
            listener,
            metrics.clone(),
            health,
            shutdown.clone(),
        ));
    }
    let ssh_config = Arc::new(ssh::server::russh_config(host_key));
    tasks.spawn(stopped.watch(
        "ssh",
        shutdown.clone(),
        ssh::server::serve(ssh_listener, ctx.clone(), ssh_config, shutdown.clone()),
    ));
    tasks.spawn(hook::serve(
        hook_listener,
        pushes,
        platform.clone(),
        shutdown.clone(),
    ));
    let proxy_shutdown = shutdown.clone();
    let (http_routes, http_challenges) = (routes.clone(), challenges.clone());
    let http_proxy_config = proxy_config.clone();
    tasks.spawn(stopped.watch("http", shutdown.clone(), async move {
        if let Err(e) = proxy::serve_http(
            http_std,
            http_routes,
            http_challenges,
            http_proxy_config,
            proxy_shutdown,
        )
        .await
        {
            tracing::error!(error = %e, "the HTTP proxy stopped");
        }
    }));
    let https_shutdown = shutdown.clone();
    let https_routes = routes.clone();
    tasks.spawn(stopped.watch("https", shutdown.clone(), async move {
        if let Err(e) = proxy::serve_https(
            https_std,
            https_routes,
            challenges,
            tls_config,
            proxy_config,
            https_shutdown,
        )
        .await
        {
            tracing::error!(error = %e, "the HTTPS proxy stopped");
        }
    }));
    if let (Some(listener), Some((_, registry))) = (registry_std, registry) {
        let registry_shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) =
                crate::registry::server::serve(listener, registry, registry_shutdown).await
            {
                tracing::error!(error = %e, "the registry stopped");
            }
        });
    }
    // A new certificate can turn an app's HTTPS redirect on.
    let republish = {
        let platform = platform.clone();
        move || {
            let platform = platform.clone();
            tokio::spawn(async move {
                if let Err(e) = platform.publish_routes().await {
                    tracing::warn!(error = %e, "route update after a new certificate");
                }
            });
        }
    };
    tasks.spawn(acme.run(routes, republish, shutdown.clone()));
    // Before the first reconcile: a release whose push died between live
    // and git's ref update is settled, so reconcile starts the right one.
    platform.settle_lost_ref_updates().await;
    tasks.spawn(ctx.service.clone().run_sync_schedule(shutdown.clone()));
    // Idle previews go at the reconcile pace (the test suite's 1 s too).
    tasks.spawn(deploy::previews::sweep_every(
        platform.clone(),
        shutdown.clone(),
        config.reconcile_interval,
    ));
    tasks.spawn(deploy::reconcile::run_every(
        platform,
        shutdown.clone(),
        config.reconcile_interval,
    ));
    tasks.close();

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(15), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 15s; exiting anyway");
    }
    // Local instances are children of the daemon: stop them with it. The
    // next start's reconcile brings the live releases back. Containers keep
    // running: the next start adopts them.
    if let Some(local) = local {
        local.shutdown().await;
    }
    Ok(())
}

/// Listeners whose serving task ended before shutdown: `/readyz` names them.
#[derive(Clone, Default)]
struct Stopped(Arc<std::sync::Mutex<Vec<&'static str>>>);

impl Stopped {
    fn watch(
        &self,
        name: &'static str,
        shutdown: CancellationToken,
        serving: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stopped = self.0.clone();
        async move {
            serving.await;
            if !shutdown.is_cancelled() {
                tracing::error!(listener = name, "a listener stopped serving");
                stopped.lock().unwrap_or_else(|p| p.into_inner()).push(name);
            }
        }
    }
}

/// `/readyz`: SQLite takes a write lock, every listener still serves, the
/// runtime lists what runs.
fn readiness(db: &Db, runtime: &Arc<dyn runtime::Runtime>, stopped: &Stopped) -> Health {
    let (db, runtime, stopped) = (db.clone(), runtime.clone(), stopped.clone());
    Health::new()
        .check("sqlite", move || {
            let db = db.clone();
            Box::pin(async move {
                // A write lock, not just a read: deploys and commands write,
                // and another process holding the file locked stops them.
                db.call(|c| Ok(c.execute_batch("BEGIN IMMEDIATE; ROLLBACK")?))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .check("listeners", move || {
            let down = stopped.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Box::pin(async move {
                if down.is_empty() {
                    Ok(())
                } else {
                    Err(format!("stopped: {}", down.join(", ")))
                }
            })
        })
        .check("runtime", move || {
            let runtime = runtime.clone();
            Box::pin(async move {
                runtime
                    .list(None)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{}: {e}", runtime.name()))
            })
        })
}

/// What a scrape reads from the runtime and SQLite.
struct DaemonSources {
    db: Db,
    runtime: Arc<dyn runtime::Runtime>,
}

#[async_trait::async_trait]
impl metrics::Sources for DaemonSources {
    async fn instances(&self) -> Vec<InstanceFigure> {
        let list = match self.runtime.list(None).await {
            Ok(list) => list,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: cannot list instances");
                return Vec::new();
            }
        };
        list.into_iter()
            .map(|i| InstanceFigure {
                app: i.app.to_string(),
                id: i.id.0,
                state: match i.state {
                    runtime::InstanceState::Starting => "starting",
                    runtime::InstanceState::Running => "running",
                    runtime::InstanceState::CrashLoop => "crash_loop",
                    runtime::InstanceState::Stopped => "stopped",
                },
                restarts: i.restarts,
            })
            .collect()
    }

    async fn certificates(&self) -> Vec<(String, i64)> {
        match self.db.call(|c| state::certs::list(c, None)).await {
            Ok(list) => list
                .into_iter()
                .filter_map(|r| Some((r.host, r.not_after?)))
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "metrics: cannot list certificates");
                Vec::new()
            }
        }
    }
}

fn example_app() -> crate::names::AppName {
    crate::names::AppName::parse("myapp").expect("a valid literal")
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
