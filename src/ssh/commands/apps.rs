//! `apps`, `apps:create`, `apps:destroy`, `apps:info`.

use super::{json, time, CommandError};
use crate::names::AppName;
use crate::ssh::{readable_app, Exec};
use crate::state;

pub(super) async fn list(exec: &mut Exec, as_json: bool) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let apps = ctx.service.visible_apps(&exec.identity).await?;
    let text = if as_json {
        let rows: Vec<_> = apps
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name,
                    "url": ctx.app_url(&a.name),
                    "created_at": a.created_at,
                })
            })
            .collect();
        json(&rows)?
    } else if apps.is_empty() {
        "no apps yet: push one with `git push cygni main`\n".to_owned()
    } else {
        apps.iter()
            .map(|a| format!("{:<24} {}\n", a.name, ctx.app_url(&a.name)))
            .collect()
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn create(exec: &mut Exec, app: AppName) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    ctx.service.create_app(&exec.identity, &app).await?;
    exec.stdout(format!(
        "created {app}\ngit remote: ssh://cygni@HOST:PORT/{app}\nurl: {}\n",
        ctx.app_url(&app)
    ))
    .await;
    Ok(())
}

pub(super) async fn destroy(
    exec: &mut Exec,
    app: AppName,
    confirm: Option<String>,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let storage = ctx
        .service
        .destroy_app(&exec.identity, &app, confirm.as_deref())
        .await?;
    let text = if storage.is_empty() {
        format!("destroyed {app}\n")
    } else {
        let names: Vec<&str> = storage.iter().map(|n| n.as_str()).collect();
        format!(
            "destroyed {app} and its persistent storage ({})\n",
            names.join(", ")
        )
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn info(exec: &mut Exec, app: AppName, as_json: bool) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let record = readable_app(&ctx, &exec.identity, &app).await?;
    let a = app.clone();
    let (live, domains, stored) = ctx
        .db
        .call(move |c| {
            Ok((
                state::releases::live(c, &a)?,
                state::domains::list(c, &a)?,
                state::formation::get(c, &a)?,
            ))
        })
        .await?;
    let formation = live
        .as_ref()
        .map(|r| state::formation::desired(&stored, &r.processes))
        .unwrap_or_default();
    let running = ctx
        .platform
        .runtime
        .list(Some(&app))
        .await
        .map(|v| v.len())
        .unwrap_or(0);
    let branches = ctx.repos.branches(&app).unwrap_or_default();
    let repo_bytes = ctx.repos.size(&app);
    let runtime = ctx.platform.runtime.name();
    let a = app.clone();
    let mut certs = ctx
        .db
        .call(move |c| state::certs::list(c, Some(&a)))
        .await?;
    let cert_hosts = ctx.acme.hosts_of(&app).await?;
    certs.retain(|r| cert_hosts.contains(&r.host));
    let now = state::now();
    let (source, last_sync) = ctx.service.sync_info(&exec.identity, &app).await?;
    // The live image as a cluster pulls it from Cygni's registry.
    let image = live.as_ref().and_then(|r| {
        ctx.platform
            .registry
            .as_ref()
            .and_then(|reg| reg.release_reference(r))
    });
    let info = serde_json::json!({
        "name": record.name,
        "url": ctx.app_url(&app),
        "domains": domains,
        "created_at": record.created_at,
        "deploy_branch": record.deploy_branch.as_deref().unwrap_or("main"),
        "live_release": live.as_ref().map(|r| r.version),
        "live_sha": live.as_ref().and_then(|r| r.sha.clone()),
        "builder": live.as_ref().and_then(|r| r.builder.clone()),
        "image_digest": live.as_ref().and_then(|r| r.image_digest.clone()),
        "image": image,
        "runtime": runtime,
        "formation": formation,
        "instances_running": running,
        "stopped": record.stopped,
        "repo_size_bytes": repo_bytes,
        "branches": branches.iter().map(|(b, sha)| serde_json::json!({"name": b, "sha": sha})).collect::<Vec<_>>(),
        "source": source,
        "last_sync": last_sync,
        "certificates": certs.iter().map(|r| serde_json::json!({"host": r.host, "status": super::certs::status(r, now), "not_after": r.not_after})).collect::<Vec<_>>(),
    });
    let text = if as_json {
        json(&info)?
    } else {
        let f: Vec<String> = formation.iter().map(|(p, n)| format!("{p}={n}")).collect();
        let mut s = format!("=== {app}\n");
        let mut row = |k: &str, v: String| s.push_str(&format!("{k:<14} {v}\n"));
        row("url:", ctx.app_url(&app));
        row(
            "domains:",
            if domains.is_empty() {
                "(none)".into()
            } else {
                domains
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        row(
            "live release:",
            match &live {
                Some(r) => format!(
                    "v{} ({})",
                    r.version,
                    r.sha
                        .as_deref()
                        .map(|s| &s[..s.len().min(7)])
                        .unwrap_or("no sha")
                ),
                None => "none yet: git push to deploy".into(),
            },
        );
        row(
            "builder:",
            live.as_ref()
                .and_then(|r| r.builder.clone())
                .unwrap_or_else(|| "-".into()),
        );
        if let Some(image) = &image {
            row("image:", image.clone());
        }
        row("runtime:", runtime.into());
        row(
            "formation:",
            if f.is_empty() {
                "-".into()
            } else {
                f.join(" ")
            },
        );
        row(
            "state:",
            if record.stopped {
                "stopped".into()
            } else {
                format!("{running} instance(s) running")
            },
        );
        row("created:", time(record.created_at));
        row(
            "deploy branch:",
            record.deploy_branch.as_deref().unwrap_or("main").into(),
        );
        row("repo size:", format!("{} KiB", repo_bytes / 1024));
        if let Some(src) = &source {
            row("source:", src.url.clone());
            row("source ref:", crate::sync::short_ref(&src.reference).into());
            row(
                "sync every:",
                src.every_secs
                    .map(|s| format!("{s}s (when the source moves)"))
                    .unwrap_or_else(|| "off".into()),
            );
            if src.submodules {
                row("submodules:", "fetched (https only)".into());
            }
        }
        if let Some(run) = &last_sync {
            let mut line = format!(
                "#{} {} ({}) {}",
                run.id,
                run.state,
                run.states.join(" > "),
                run.sha
                    .as_deref()
                    .map(|s| &s[..s.len().min(7)])
                    .unwrap_or("-"),
            );
            if let Some(v) = run.release {
                line.push_str(&format!(" v{v}"));
            }
            if let Some(e) = &run.error {
                line.push_str(&format!(": {e}"));
            }
            row("last sync:", line);
        }
        for (b, sha) in &branches {
            row("branch:", format!("{b} {}", &sha[..sha.len().min(7)]));
        }
        if cert_hosts.is_empty() {
            s.push_str("certificate:   none (local names only)\n");
        }
        for host in &cert_hosts {
            let line = certs.iter().find(|r| &r.host == host).map_or_else(
                || "none yet, ordering".to_owned(),
                |r| super::certs::status(r, now),
            );
            s.push_str(&format!("certificate:   {host}: {line}\n"));
        }
        s
    };
    exec.stdout(text).await;
    Ok(())
}
