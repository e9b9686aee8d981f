//! `keys`, `keys:add`, `keys:remove`, `keys:grant`, `keys:revoke`: admins only.

use super::{json, require_admin, CommandError};
use crate::names::{AppName, KeyName};
use crate::ssh::{keys, Exec};
use crate::state::{self, keys::Role};

pub(super) async fn list(exec: &mut Exec, as_json: bool) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    require_admin(exec, "list keys")?;
    let keys = ctx.db.call(|c| state::keys::list(c)).await?;
    let text = if as_json {
        json(&keys)?
    } else {
        keys.iter()
            .map(|k| {
                let apps = if k.role == Role::Admin {
                    "all apps".to_owned()
                } else if k.apps.is_empty() {
                    "no apps".to_owned()
                } else {
                    k.apps
                        .iter()
                        .map(AppName::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                format!(
                    "{:<20} {:<9} {} {}\n",
                    k.name,
                    k.role.as_str(),
                    k.fingerprint,
                    apps
                )
            })
            .collect()
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn add(exec: &mut Exec, name: String, role: Role) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    require_admin(exec, "add keys")?;
    let name = KeyName::parse(&name)?;
    let input = exec.read_stdin(16 * 1024).await?;
    let text = String::from_utf8(input)
        .map_err(|_| CommandError::Invalid("the key on stdin is not UTF-8 text".into()))?;
    let key = keys::parse_user_key(&text)?;
    let fingerprint = keys::fingerprint(&key);
    let public = key
        .to_openssh()
        .map_err(|e| CommandError::Internal(e.to_string()))?;
    ctx.service
        .add_key(&exec.identity, &name, role, &fingerprint, &public)
        .await?;
    exec.stdout(format!(
        "added key {name} ({}) {fingerprint}\n",
        role.as_str()
    ))
    .await;
    Ok(())
}

pub(super) async fn remove(exec: &mut Exec, key: String) -> Result<(), CommandError> {
    let removed = exec.ctx.service.remove_key(&exec.identity, &key).await?;
    exec.stdout(format!(
        "removed key {} {}\n",
        removed.name, removed.fingerprint
    ))
    .await;
    Ok(())
}

pub(super) async fn grant(exec: &mut Exec, name: String, app: AppName) -> Result<(), CommandError> {
    exec.ctx
        .service
        .set_grant(&exec.identity, &name, &app, true)
        .await?;
    exec.stdout(format!("key {name} can now push to and manage {app}\n"))
        .await;
    Ok(())
}

pub(super) async fn revoke(
    exec: &mut Exec,
    name: String,
    app: AppName,
) -> Result<(), CommandError> {
    exec.ctx
        .service
        .set_grant(&exec.identity, &name, &app, false)
        .await?;
    exec.stdout(format!("key {name} no longer has access to {app}\n"))
        .await;
    Ok(())
}
