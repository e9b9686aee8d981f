//! Persistent storage: named directories an app keeps across deploys,
//! restarts and rollbacks (`storage:mount APP NAME:/path`), as on Dokku.
//!
//! ```text
//! storage:mount APP NAME:/path [--host-path DIR] ─► Manage on APP (host path: admin,
//!     and DIR under a `storage_host_paths` entry) ─► row in storage_mounts
//!     ─► DATA/storage/APP/NAME created ─► applies from the next deploy or restart
//! storage:unmount APP NAME:/path ─► row removed; the files stay (mount again to use them)
//! apps:destroy APP --confirm APP ─► DATA/storage/APP removed with the app
//! ```
//!
//! Names and paths are typed at the edge ([`StorageName`], [`MountPath`]);
//! every refusal happens before anything is written.

use std::path::{Path, PathBuf};

use super::{Access, Actor, Service, ServiceError};
use crate::names::{AppName, MountPath, StorageName};
use crate::state;

/// One mount as a user sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StorageView {
    pub name: StorageName,
    /// Where it appears in the app's containers.
    pub path: MountPath,
    /// What the app reads to find it, on every runtime.
    pub env: String,
    /// `managed` (Cygni's own directory) or `host` (an admin's).
    pub source: &'static str,
    /// The host directory, for `host` mounts and admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<PathBuf>,
    pub created_at: i64,
}

/// `NAME:/path`, the way Dokku writes a mount.
pub fn parse_mount(spec: &str) -> Result<(StorageName, MountPath), ServiceError> {
    let Some((name, path)) = spec.split_once(':') else {
        return Err(ServiceError::Invalid(format!(
            "{spec:?} is not NAME:/path (e.g. data:/data)"
        )));
    };
    Ok((StorageName::parse(name)?, MountPath::parse(path)?))
}

impl Service {
    pub async fn storage(
        &self,
        actor: &Actor,
        app: &AppName,
    ) -> Result<Vec<StorageView>, ServiceError> {
        self.app(actor, app, Access::Read).await?;
        let a = app.clone();
        let stored = self.db.call(move |c| state::storage::list(c, &a)).await?;
        Ok(stored
            .into_iter()
            .map(|m| StorageView {
                env: m.name.env_var(),
                source: if m.host_path.is_some() {
                    "host"
                } else {
                    "managed"
                },
                host_path: m.host_path.filter(|_| actor.is_admin()),
                name: m.name,
                path: m.path,
                created_at: m.created_at,
            })
            .collect())
    }

    /// Mount `name` at `path` on `app`: Cygni's own directory, or with
    /// `host_path` an admin's host directory under an allowed root.
    pub async fn mount_storage(
        &self,
        actor: &Actor,
        app: &AppName,
        name: &StorageName,
        path: &MountPath,
        host_path: Option<&str>,
    ) -> Result<(), ServiceError> {
        let detail = format!(
            "{name}:{path}{}",
            if host_path.is_some() {
                " (host path)"
            } else {
                ""
            }
        );
        self.audited(actor, "storage:mount", Some(app), detail, async {
            self.app(actor, app, Access::Manage).await?;
            let host = match host_path {
                None => None,
                Some(dir) => {
                    self.require_admin(actor, "mount host directories")?;
                    Some(allowed_host_dir(dir, &self.platform.storage_host_paths)?)
                }
            };
            let (a, n, p, h) = (app.clone(), name.clone(), path.clone(), host.clone());
            self.db
                .call(move |c| state::storage::add(c, &a, &n, &p, h.as_deref()))
                .await?;
            if host.is_none() {
                // Made now, so that a full disk or a bad data dir shows here
                // and not at the next deploy; the runtime gives it to the
                // app's user when an instance starts.
                let dir = crate::deploy::converge::storage_dir(&self.platform.paths.storage, app, name);
                let mount = crate::runtime::Mount {
                    name: name.clone(),
                    target: path.clone(),
                    source: crate::runtime::MountSource::Managed { dir },
                };
                let made =
                    tokio::task::spawn_blocking(move || crate::runtime::prepare_mount(&mount, None))
                        .await
                        .map_err(|e| ServiceError::Internal(e.to_string()));
                if let Err(e) = made.and_then(|r| r.map_err(|e| ServiceError::Internal(e.to_string())))
                {
                    tracing::error!(%app, storage = %name, error = %e, "cannot create a storage directory");
                    let (a, n, p) = (app.clone(), name.clone(), path.clone());
                    let _ = self
                        .db
                        .call(move |c| state::storage::remove(c, &a, &n, &p))
                        .await;
                    return Err(ServiceError::Internal(
                        "cannot create the storage directory; nothing was changed; see the server log"
                            .into(),
                    ));
                }
            }
            Ok(())
        })
        .await
    }

    /// Unmount `name` from `path`. The files stay where they are.
    pub async fn unmount_storage(
        &self,
        actor: &Actor,
        app: &AppName,
        name: &StorageName,
        path: &MountPath,
    ) -> Result<(), ServiceError> {
        self.audited(
            actor,
            "storage:unmount",
            Some(app),
            format!("{name}:{path}"),
            async {
                self.app(actor, app, Access::Manage).await?;
                let (a, n, p) = (app.clone(), name.clone(), path.clone());
                self.db
                    .call(move |c| state::storage::remove(c, &a, &n, &p))
                    .await?;
                Ok(())
            },
        )
        .await
    }
}

/// An admin's host directory, if it is an existing directory under one
/// of `allowed` (canonical paths, so neither `..` nor a symlink leads out).
fn allowed_host_dir(dir: &str, allowed: &[PathBuf]) -> Result<PathBuf, ServiceError> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(ServiceError::Invalid(format!(
            "host path {dir:?} must be absolute"
        )));
    }
    if allowed.is_empty() {
        return Err(ServiceError::Forbidden(
            "host paths are not allowed on this server: its operator lists the directories they may be under in storage_host_paths (cygni.toml)".into(),
        ));
    }
    let real = path
        .canonicalize()
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| {
            ServiceError::Invalid(format!("host path {dir:?} is not an existing directory"))
        })?;
    if !allowed
        .iter()
        .any(|root| real.starts_with(root) && real != *root)
    {
        return Err(ServiceError::Forbidden(format!(
            "host path {dir:?} is not under a directory in storage_host_paths"
        )));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_specs() {
        let (name, path) = parse_mount("data:/data").unwrap();
        assert_eq!((name.as_str(), path.as_str()), ("data", "/data"));
        for bad in [
            "data",
            "data:",
            ":/data",
            "Data:/data",
            "data:/etc",
            "data:rel",
            "a:/x/../y",
        ] {
            let e = parse_mount(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn host_dirs_only_under_an_allowed_root() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().canonicalize().unwrap();
        let inside = allowed.join("shared");
        std::fs::create_dir(&inside).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), allowed.join("link")).unwrap();
        let ok =
            allowed_host_dir(inside.to_str().unwrap(), std::slice::from_ref(&allowed)).unwrap();
        assert_eq!(ok, inside);
        let refused = [
            outside.path().to_str().unwrap().to_owned(),
            allowed.join("link").to_str().unwrap().to_owned(),
            format!("{}/shared/../..", allowed.display()),
            allowed.to_str().unwrap().to_owned(),
            allowed.join("missing").to_str().unwrap().to_owned(),
            "relative".to_owned(),
        ];
        for dir in refused {
            assert!(
                allowed_host_dir(&dir, std::slice::from_ref(&allowed)).is_err(),
                "{dir}"
            );
        }
        assert!(allowed_host_dir(inside.to_str().unwrap(), &[]).is_err());
    }
}
