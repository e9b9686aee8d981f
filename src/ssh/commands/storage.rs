//! `storage`, `storage:mount`, `storage:unmount`: an app's persistent
//! storage. The rules (who may, host paths, what is created) are the
//! service layer's (`service/storage.rs`); this parses and renders.

use super::{json, time, CommandError};
use crate::names::AppName;
use crate::service::storage::parse_mount;
use crate::ssh::Exec;

pub(super) async fn list(exec: &mut Exec, app: AppName, as_json: bool) -> Result<(), CommandError> {
    let mounts = exec.ctx.service.storage(&exec.identity, &app).await?;
    let text = if as_json {
        json(&mounts)?
    } else if mounts.is_empty() {
        format!("{app} has no persistent storage: storage:mount {app} NAME:/path adds some\n")
    } else {
        let mut s = format!("=== {app} storage\n");
        for m in &mounts {
            let source = match &m.host_path {
                Some(dir) => format!("host {}", dir.display()),
                None => m.source.to_owned(),
            };
            s.push_str(&format!(
                "{:<16} {:<24} {:<28} {} (since {})\n",
                m.name,
                m.path,
                m.env,
                source,
                time(m.created_at)
            ));
        }
        s
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn mount(
    exec: &mut Exec,
    app: AppName,
    spec: String,
    host_path: Option<String>,
) -> Result<(), CommandError> {
    // The app first: a key without a grant learns nothing of it.
    exec.ctx
        .service
        .app(&exec.identity, &app, crate::service::Access::Manage)
        .await?;
    let (name, path) = parse_mount(&spec)?;
    exec.ctx
        .service
        .mount_storage(&exec.identity, &app, &name, &path, host_path.as_deref())
        .await?;
    exec.stdout(format!(
        "mounted storage {name} at {path} on {app} (the app finds it in ${})\n\
         it applies from the next deploy or restart: ps:restart {app}\n",
        name.env_var()
    ))
    .await;
    Ok(())
}

pub(super) async fn unmount(
    exec: &mut Exec,
    app: AppName,
    spec: String,
) -> Result<(), CommandError> {
    exec.ctx
        .service
        .app(&exec.identity, &app, crate::service::Access::Manage)
        .await?;
    let (name, path) = parse_mount(&spec)?;
    exec.ctx
        .service
        .unmount_storage(&exec.identity, &app, &name, &path)
        .await?;
    exec.stdout(format!(
        "unmounted storage {name} from {path} on {app}; its files are kept (mount it again to use them, apps:destroy removes them)\n\
         it applies from the next deploy or restart: ps:restart {app}\n"
    ))
    .await;
    Ok(())
}
