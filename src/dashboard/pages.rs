//! The pages, rendered on the server from what the service returns for
//! the signed-in actor. Sections marked `data-live` are fetched again by
//! the script while the page is open (releases, a deploy in progress,
//! instances, the host chart), so changes show without a reload.

use std::fmt::Write;
use std::time::SystemTime;

use super::html::{age, badge, bytes, esc, host_chart, time};
use crate::metrics::history::Point;
use crate::names::AppName;
use crate::service::{Actor, Service, ServiceError};
use crate::state::{keys::Role, releases::Status};

/// Build log lines a deploy in progress shows.
const BUILD_LOG_LINES: usize = 40;

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Deployer => "developer",
        Role::Viewer => "viewer",
    }
}

pub(super) fn who(actor: &Actor) -> (&str, &'static str) {
    (actor.name.as_str(), role_name(actor.role))
}

/// Viewers see, and nothing more: no buttons, no forms. The service
/// refuses them anyway.
fn may_change(actor: &Actor) -> bool {
    actor.role != Role::Viewer
}

fn in_progress(s: Status) -> bool {
    matches!(
        s,
        Status::Building | Status::Releasing | Status::Starting | Status::Checking
    )
}

/// The step of the release pipeline a failed deploy stopped in, from
/// the deploy's stage name.
fn failed_step(stage: &str) -> usize {
    match stage {
        "export" | "build" => 0,
        "publish" | "release" => 1,
        "start" => 2,
        "health check" => 3,
        _ => 4,
    }
}

/// The apps the actor sees, with their state, and the host chart.
pub(super) async fn apps(
    svc: &Service,
    actor: &Actor,
    points: Option<Vec<Point>>,
) -> Result<String, ServiceError> {
    let apps = svc.visible_apps(actor).await?;
    let mut rows = String::new();
    for app in &apps {
        let releases = svc.releases(actor, &app.name, 20).await?;
        let live = releases.iter().find(|r| r.status == Status::Live);
        let latest = releases.first();
        let state = match (app.stopped, latest, live) {
            (true, _, _) => "stopped".to_owned(),
            (_, Some(l), _) if in_progress(l.status) => l.status.as_str().to_owned(),
            (_, Some(l), _) if l.status == Status::Failed && live.is_none() => "failed".to_owned(),
            (_, _, Some(_)) => "live".to_owned(),
            _ => "no release".to_owned(),
        };
        let url = svc.platform.app_url(&app.name);
        let _ = write!(
            rows,
            "<tr data-app=\"{name}\"><td><a class=\"app-link\" href=\"/apps/{name}\">{name}</a></td><td>{state}</td>\
             <td>{live}</td><td><a href=\"{url}\" rel=\"noreferrer\">{url}</a></td></tr>",
            name = esc(app.name.as_str()),
            state = badge(&state),
            live = live.map(|r| format!("v{}", r.version)).unwrap_or_else(|| "—".into()),
            url = esc(&url),
        );
    }
    let mut body = String::from("<h1>Apps</h1>");
    if apps.is_empty() {
        body.push_str(
            "<p class=\"empty\">No apps yet. Create one with <code>ssh cygni@HOST apps:create NAME</code> \
             and <code>git push</code> to it.</p>",
        );
    } else {
        let _ = write!(
            body,
            "<section class=\"card\" id=\"apps\" data-live><table><thead><tr><th>App</th><th>State</th>\
             <th>Live</th><th>URL</th></tr></thead><tbody>{rows}</tbody></table></section>"
        );
    }
    if let Some(points) = points {
        body.push_str(&host(&points));
    }
    Ok(body)
}

/// The host's last hour, for admins and viewers of the whole platform.
fn host(points: &[Point]) -> String {
    let now = points.last().map_or_else(crate::state::now, |p| p.at);
    let latest = points.last();
    let figure = |name: &str, class: &str, share: Option<f64>, total: Option<u64>| {
        let value = share.map_or("—".to_owned(), |s| format!("{:.0}%", s * 100.0));
        let of = total
            .filter(|t| *t > 0)
            .map(|t| format!(" of {}", bytes(t)))
            .unwrap_or_default();
        format!("<li><span class=\"key {class}\"></span>{name} <strong>{value}</strong>{of}</li>")
    };
    format!(
        "<h2>Host <span class=\"hint\">last hour, every 15 s</span></h2>\
         <section class=\"card\" id=\"host\" data-live>{chart}<ul class=\"legend\">{cpu}{mem}{disk}</ul></section>",
        chart = host_chart(points, now),
        cpu = figure("CPU", "cpu", latest.map(|p| p.cpu), None),
        mem = figure(
            "Memory",
            "memory",
            latest.map(|p| p.memory),
            latest.map(|p| p.memory_total)
        ),
        disk = figure(
            "Disk",
            "disk",
            latest.map(|p| p.disk),
            latest.map(|p| p.disk_total)
        ),
    )
}

/// One app: where it is served, what runs, its releases, config,
/// certificates, and its log as it comes.
pub(super) async fn app(
    svc: &Service,
    actor: &Actor,
    name: &AppName,
) -> Result<String, ServiceError> {
    let record = svc.app(actor, name, crate::service::Access::Read).await?;
    let releases = svc.releases(actor, name, 15).await?;
    let domains = svc.domains(actor, name).await?;
    let config = svc.config_vars(actor, name).await?;
    let certs = svc.certs(actor, Some(name)).await?;
    let mut instances = svc.platform.runtime.list(Some(name)).await.map_err(|e| {
        tracing::warn!(app = %name, error = %e, "dashboard: cannot list instances");
        ServiceError::Internal("cannot list the app's instances; see the server log".into())
    })?;
    instances.sort_by(|a, b| (&a.process, a.index).cmp(&(&b.process, b.index)));
    let change = may_change(actor);
    let n = esc(name.as_str());
    let url = svc.platform.app_url(name);
    let live = releases.iter().find(|r| r.status == Status::Live);

    let mut body = String::new();
    let _ = write!(
        body,
        "<div class=\"title\"><h1>{n}</h1>{stopped}</div>\
         <section class=\"card facts\" id=\"facts\" data-live><dl>\
         <dt>URL</dt><dd><a href=\"{url}\" rel=\"noreferrer\">{url}</a></dd>\
         <dt>Domains</dt><dd>{domains}</dd>\
         <dt>Live release</dt><dd class=\"live-release\">{live}</dd>\
         <dt>Runtime</dt><dd>{runtime}</dd>\
         <dt>Deploy branch</dt><dd>{branch}</dd></dl></section>",
        stopped = if record.stopped {
            badge("stopped")
        } else {
            String::new()
        },
        url = esc(&url),
        domains = std::iter::once(esc(&domains.default))
            .chain(domains.custom.iter().map(|h| esc(h.as_str())))
            .collect::<Vec<_>>()
            .join(", "),
        live = live
            .map(|r| format!(
                "v{} {} <span class=\"hint\">{}</span>",
                r.version,
                esc(r.sha.as_deref().map(|s| &s[..s.len().min(8)]).unwrap_or("")),
                esc(&r.description)
            ))
            .unwrap_or_else(|| "none yet".into()),
        runtime = esc(svc.platform.runtime.name()),
        branch = esc(record.deploy_branch.as_deref().unwrap_or("main")),
    );

    // A deploy in progress (or the last one, when it failed), stage by stage.
    body.push_str("<section id=\"deploy\" data-live>");
    if let Some(latest) = releases
        .first()
        .filter(|r| in_progress(r.status) || r.status == Status::Failed)
    {
        let logs = svc.platform.logs.clone();
        let (a, v) = (name.clone(), latest.version);
        let log = tokio::task::spawn_blocking(move || logs.read_build_log(&a, v))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().collect();
        let tail = &tail[tail.len().saturating_sub(BUILD_LOG_LINES)..];
        let current = latest.status.as_str();
        let failed_at = latest.failed_stage.as_deref();
        let order = ["building", "releasing", "starting", "checking", "live"];
        let reached = match failed_at {
            Some(stage) => Some(failed_step(stage)),
            None => order.iter().position(|s| *s == current),
        };
        let mut stages = String::new();
        for (i, s) in order.iter().enumerate() {
            let class = match (latest.status, reached) {
                (Status::Failed, Some(r)) if i == r => "failed",
                (Status::Failed, None) if i == 0 => "failed",
                (_, Some(r)) if i < r => "done",
                (_, Some(r)) if i == r => "current",
                _ => "pending",
            };
            let _ = write!(stages, "<li class=\"{class}\">{s}</li>");
        }
        let heading = if latest.status == Status::Failed {
            format!("Deploy of v{} failed", latest.version)
        } else {
            format!("Deploying v{}", latest.version)
        };
        let _ = write!(
            body,
            "<div class=\"card deploy {state}\"><h2>{heading}</h2><ol class=\"stages\">{stages}</ol>{error}\
             <pre class=\"build-log\">{log}</pre></div>",
            state = esc(current),
            error = latest
                .error
                .as_deref()
                .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
                .unwrap_or_default(),
            log = esc(&tail.join("\n")),
        );
    }
    body.push_str("</section>");

    // Releases, newest first, with rollback for the ones with a build.
    let mut rows = String::new();
    for r in &releases {
        let action = if change && r.status != Status::Live && r.artifact.is_some() {
            format!(
                "<button class=\"small\" data-rollback=\"v{v}\" data-app=\"{n}\">Roll back to v{v}</button>",
                v = r.version
            )
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr data-version=\"v{v}\"><td>v{v}</td><td>{status}</td><td>{desc}{error}</td><td>{sha}</td>\
             <td class=\"nowrap\">{at}</td><td class=\"nowrap\">{action}</td></tr>",
            v = r.version,
            status = badge(r.status.as_str()),
            desc = esc(&r.description),
            error = r
                .error
                .as_deref()
                .filter(|_| r.status == Status::Failed)
                .map(|e| format!("<div class=\"error\">{}</div>", esc(e)))
                .unwrap_or_default(),
            sha = esc(r.sha.as_deref().map(|s| &s[..s.len().min(8)]).unwrap_or("")),
            at = time(r.created_at),
        );
    }
    let _ = write!(
        body,
        "<h2>Releases</h2><section class=\"card\" id=\"releases\" data-live>{}</section>",
        if releases.is_empty() {
            "<p class=\"empty\">No releases yet: <code>git push</code> to deploy.</p>".to_owned()
        } else {
            format!(
                "<table><thead><tr><th>Release</th><th>Status</th><th>Description</th><th>Commit</th>\
                 <th>Created</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
            )
        }
    );

    // Instances.
    let live_version = live.map(|r| r.version);
    let now = SystemTime::now();
    let mut ps = String::new();
    for i in &instances {
        let state = if Some(i.release) == live_version {
            i.state.as_str()
        } else {
            "draining"
        };
        let up = now
            .duration_since(i.started_at)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let _ = write!(
            ps,
            "<tr><td>{p}.{idx}</td><td>{state}</td><td>v{rel}</td><td>{up}</td><td>{restarts}</td></tr>",
            p = esc(i.process.as_str()),
            idx = i.index,
            state = badge(state),
            rel = i.release,
            up = age(up),
            restarts = i.restarts,
        );
    }
    let _ = write!(
        body,
        "<h2>Instances</h2><section class=\"card\" id=\"ps\" data-live>{}</section>",
        if instances.is_empty() {
            "<p class=\"empty\">Nothing runs.</p>".to_owned()
        } else {
            format!(
                "<table><thead><tr><th>Instance</th><th>State</th><th>Release</th><th>Up</th>\
                 <th>Restarts</th></tr></thead><tbody>{ps}</tbody></table>"
            )
        }
    );

    // Config: names only; values stay masked on the page.
    let mut vars = String::new();
    for k in config.keys() {
        let unset = if change {
            format!(
                "<button class=\"small danger\" data-unset=\"{k}\" data-app=\"{n}\">Unset</button>",
                k = esc(k)
            )
        } else {
            String::new()
        };
        let _ = write!(
            vars,
            "<tr><td><code>{}</code></td><td class=\"masked\">••••••••</td><td>{unset}</td></tr>",
            esc(k)
        );
    }
    let form = if change {
        format!(
            "<form class=\"inline\" data-config-set data-app=\"{n}\">\
             <input name=\"key\" placeholder=\"KEY\" required pattern=\"[A-Za-z_][A-Za-z0-9_]*\" autocomplete=\"off\">\
             <input name=\"value\" placeholder=\"value\" autocomplete=\"off\">\
             <button type=\"submit\">Set</button></form>"
        )
    } else {
        String::new()
    };
    let _ = write!(
        body,
        "<h2>Config <span class=\"hint\">values are masked</span></h2><section class=\"card\">\
         <div id=\"config\" data-live>{}</div>{form}</section>",
        if config.is_empty() {
            "<p class=\"empty\">No config vars.</p>".to_owned()
        } else {
            format!("<table><tbody>{vars}</tbody></table>")
        }
    );

    // Certificates.
    let mut cert_rows = String::new();
    let now_s = crate::state::now();
    for c in &certs {
        let state = match c.not_after {
            Some(t) if t > now_s => "valid",
            Some(_) => "expired",
            None => "pending",
        };
        let _ = write!(
            cert_rows,
            "<tr><td>{host}</td><td>{state}</td><td>{issuer}</td><td>{until}</td><td>{error}</td></tr>",
            host = esc(&c.host),
            state = badge(state),
            issuer = esc(c.issuer.as_deref().unwrap_or("—")),
            until = c.not_after.map(time).unwrap_or_else(|| "—".into()),
            error = c
                .last_error
                .as_deref()
                .map(|e| format!("<span class=\"error\">{}</span>", esc(e)))
                .unwrap_or_default(),
        );
    }
    let _ = write!(
        body,
        "<h2>Certificates</h2><section class=\"card\" id=\"certs\">{}</section>",
        if certs.is_empty() {
            "<p class=\"empty\">No certificates (local names are served over plain HTTP).</p>"
                .to_owned()
        } else {
            format!(
                "<table><thead><tr><th>Host</th><th>State</th><th>Issuer</th><th>Valid until</th>\
                 <th></th></tr></thead><tbody>{cert_rows}</tbody></table>"
            )
        }
    );

    let _ = write!(
        body,
        "<h2>Logs <span class=\"hint\" id=\"log-state\">connecting…</span></h2>\
         <section class=\"card\"><pre id=\"log\" class=\"log\" data-app=\"{n}\"></pre></section>"
    );
    Ok(body)
}

/// The sign-in page: a token form, or a one-time code to confirm.
pub(super) fn login(login_csrf: &str, code: Option<&str>, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let csrf = esc(login_csrf);
    match code {
        Some(code) => format!(
            "<section class=\"card login\"><h1>Sign in</h1>{error}\
             <form method=\"post\" action=\"/login\" data-autosubmit>\
             <input type=\"hidden\" name=\"login_csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"code\" value=\"{code}\">\
             <p>This one-time link from <code>dashboard:login</code> signs you in.</p>\
             <button type=\"submit\">Continue</button></form></section>",
            code = esc(code),
        ),
        None => format!(
            "<section class=\"card login\"><h1>Sign in</h1>{error}\
             <form method=\"post\" action=\"/login\">\
             <input type=\"hidden\" name=\"login_csrf\" value=\"{csrf}\">\
             <label for=\"token\">API token</label>\
             <input id=\"token\" name=\"token\" type=\"password\" placeholder=\"cyg_…\" autocomplete=\"off\" required>\
             <button type=\"submit\">Sign in</button></form>\
             <p class=\"hint\">Or run <code>ssh -p 2222 cygni@HOST dashboard:login</code> for a one-time link.</p>\
             </section>"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_page_escapes_what_it_echoes() {
        let html = login(
            "tok",
            Some("\"><script>x</script>"),
            Some("<img src=x onerror=alert(1)>"),
        );
        assert!(!html.contains("<script>x") && !html.contains("<img src=x"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("value=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""));
    }
}
