//! `/api/v1/`: every SSH command as a resource, in the shape of Heroku's
//! Platform API where it has the same resource. Handlers parse, call the
//! service, and render; the rules (who may, what is valid) are the
//! service's, so SSH and the API give the same answers.

use std::collections::BTreeMap;
use std::time::SystemTime;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, json as reply};
use super::{Api, ApiError, Call};
use crate::deploy::Progress;
use crate::names::{AppName, Hostname, KeyName, ProcessType};
use crate::proxy::ControlBody;
use crate::service::{config as cfg, Access, Actor, Source};
use crate::state::{self, keys::Role};

/// The largest JSON body a request may carry.
const MAX_JSON: usize = 1024 * 1024;

type Reply = Result<Response<ControlBody>, ApiError>;

pub(super) async fn route(api: &Api, call: Call, path: &str) -> Reply {
    let result = dispatch(api, call, path).await;
    match result {
        Err(e) if e.status == StatusCode::METHOD_NOT_ALLOWED && e.allow.is_none() => {
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            Err(e.with_allow(allow_for(&segments)))
        }
        other => other,
    }
}

/// The methods each resource takes, for 405's `Allow`.
fn allow_for(segments: &[&str]) -> &'static str {
    match segments {
        ["apps"] | ["keys"] | ["tokens"] => "GET, POST",
        ["apps", _] => "GET, DELETE",
        ["apps", _, "config-vars" | "formation" | "certs"] => "GET, PATCH",
        ["apps", _, "domains"] | ["apps", _, "releases"] => "GET, POST",
        ["apps", _, "dynos"] => "GET, DELETE",
        ["apps", _, "domains" | "dynos" | "previews", _] | ["keys", _] | ["tokens", _] => "DELETE",
        ["apps", _, "actions", _]
        | ["apps", _, "certs", "renew"]
        | ["apps", _, "builds"]
        | ["apps", _, "sync"] => "POST",
        ["keys", _, "apps", _] => "PUT, DELETE",
        _ => "GET",
    }
}

async fn dispatch(api: &Api, call: Call, path: &str) -> Reply {
    let actor = api
        .actor(
            call.req.headers(),
            call.req.method(),
            call.peer,
            Source::Api,
        )
        .await?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = call.req.method().clone();
    let query = Query::parse(call.req.uri().query());
    let req = call.req;
    let m = &method;
    match segments.as_slice() {
        ["status"] => only(m, Method::GET, status(api, &actor)).await,
        ["apps"] => match *m {
            Method::GET => list_apps(api, &actor).await,
            Method::POST => create_app(api, &actor, req).await,
            _ => Err(ApiError::method_not_allowed()),
        },
        ["apps", app, rest @ ..] => {
            let app = app_name(app)?;
            app_route(api, &actor, m, &app, rest, &query, req).await
        }
        ["certs"] => only(m, Method::GET, certs(api, &actor, None)).await,
        ["keys"] => match *m {
            Method::GET => {
                let keys = api.service.keys(&actor).await?;
                Ok(reply(StatusCode::OK, &keys))
            }
            Method::POST => add_key(api, &actor, req).await,
            _ => Err(ApiError::method_not_allowed()),
        },
        ["keys", key] => match *m {
            Method::DELETE => {
                let removed = api.service.remove_key(&actor, key).await?;
                Ok(reply(StatusCode::OK, &removed))
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        ["keys", key, "apps", app] => {
            let app = app_name(app)?;
            let grant = match *m {
                Method::PUT => true,
                Method::DELETE => false,
                _ => return Err(ApiError::method_not_allowed()),
            };
            api.service.set_grant(&actor, key, &app, grant).await?;
            Ok(reply(
                StatusCode::OK,
                &json!({"key": key, "app": app, "granted": grant}),
            ))
        }
        ["tokens"] => match *m {
            Method::GET => {
                let tokens = api.service.tokens(&actor).await?;
                Ok(reply(StatusCode::OK, &tokens))
            }
            Method::POST => create_token(api, &actor, req).await,
            _ => Err(ApiError::method_not_allowed()),
        },
        ["tokens", name] => match *m {
            Method::DELETE => {
                api.service.revoke_token(&actor, name).await?;
                Ok(reply(
                    StatusCode::OK,
                    &json!({"name": name, "revoked": true}),
                ))
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        ["audit"] => {
            if *m != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            let app = query.get("app").map(app_name).transpose()?;
            let limit = query.number("limit", 50)?;
            let entries = api.service.audit_log(&actor, app.as_ref(), limit).await?;
            Ok(reply(StatusCode::OK, &entries))
        }
        _ => Err(ApiError::not_found(format!(
            "no such endpoint: /api/v1/{path}"
        ))),
    }
}

async fn only(m: &Method, want: Method, f: impl std::future::Future<Output = Reply>) -> Reply {
    if *m == want {
        f.await
    } else {
        Err(ApiError::method_not_allowed())
    }
}

#[allow(clippy::too_many_arguments)]
async fn app_route(
    api: &Api,
    actor: &Actor,
    m: &Method,
    app: &AppName,
    rest: &[&str],
    query: &Query,
    req: Request<Incoming>,
) -> Reply {
    let svc = &api.service;
    match (rest, m.clone()) {
        ([], Method::GET) => app_info(api, actor, app).await,
        ([], Method::DELETE) => {
            svc.destroy_app(actor, app, query.get("confirm")).await?;
            Ok(reply(
                StatusCode::OK,
                &json!({"name": app, "destroyed": true}),
            ))
        }
        (["config-vars"], Method::GET) => {
            let vars = svc.config_vars(actor, app).await?;
            Ok(reply(StatusCode::OK, &masked(actor, vars)))
        }
        (["config-vars"], Method::PATCH) => patch_config(api, actor, app, query, req).await,
        (["domains"], Method::GET) => {
            let d = svc.domains(actor, app).await?;
            Ok(reply(StatusCode::OK, &d))
        }
        (["domains"], Method::POST) => {
            #[derive(Deserialize)]
            struct Body {
                hostname: String,
            }
            let b: Body = read_json(req).await?;
            let host =
                Hostname::parse(&b.hostname).map_err(|e| ApiError::invalid(e.to_string()))?;
            svc.add_domain(actor, app, &host).await?;
            Ok(reply(StatusCode::CREATED, &json!({"hostname": host})))
        }
        (["domains", host], Method::DELETE) => {
            let host = Hostname::parse(host).map_err(|e| ApiError::invalid(e.to_string()))?;
            svc.remove_domain(actor, app, &host).await?;
            Ok(reply(
                StatusCode::OK,
                &json!({"hostname": host, "removed": true}),
            ))
        }
        (["previews"], Method::GET) => {
            let view = svc.previews(actor, app).await?;
            Ok(reply(StatusCode::OK, &view.previews))
        }
        (["previews", name], Method::DELETE) => {
            svc.destroy_preview(actor, app, name).await?;
            Ok(reply(
                StatusCode::OK,
                &json!({"app": app, "name": name, "destroyed": true}),
            ))
        }
        (["formation"], Method::GET) => formation(api, actor, app).await,
        (["formation"], Method::PATCH) => patch_formation(api, actor, app, req).await,
        (["dynos"], Method::GET) => dynos(api, actor, app).await,
        (["dynos"], Method::DELETE) => restart(api, actor, app, None).await,
        (["dynos", process], Method::DELETE) => {
            let p = ProcessType::parse(process).map_err(|e| ApiError::invalid(e.to_string()))?;
            restart(api, actor, app, Some(p)).await
        }
        (["actions", action @ ("stop" | "start")], Method::POST) => {
            let stop = *action == "stop";
            let mut c = Collect::new();
            let r = svc.set_stopped(actor, app, stop, &mut c.progress).await;
            let output = c.finish().await;
            r?;
            Ok(reply(
                StatusCode::OK,
                &json!({"name": app, "stopped": stop, "output": output}),
            ))
        }
        (["releases"], Method::GET) => {
            let limit = query.number("limit", 20)?;
            let list = svc.releases(actor, app, limit).await?;
            Ok(reply(StatusCode::OK, &list))
        }
        (["releases"], Method::POST) => rollback(api, actor, app, req).await,
        (["releases", v], Method::GET) => {
            let version = version(v)?;
            let r = svc.release(actor, app, version).await?;
            Ok(reply(StatusCode::OK, &r))
        }
        (["releases", v, "build-log"], Method::GET) => {
            let version = version(v)?;
            svc.app(actor, app, Access::Read).await?;
            let logs = svc.platform.logs.clone();
            let a = app.clone();
            let bytes = tokio::task::spawn_blocking(move || logs.read_build_log(&a, version))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|_| ApiError::not_found(format!("no build log for {app} v{version}")))?;
            let mut resp = Response::new(body::full(bytes));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Ok(resp)
        }
        (["logs"], Method::GET) => logs(api, actor, app, query).await,
        (["certs"], Method::GET) => certs(api, actor, Some(app)).await,
        (["certs"], Method::PATCH) => {
            #[derive(Deserialize)]
            struct Body {
                redirect: bool,
            }
            let b: Body = read_json(req).await?;
            svc.set_https_redirect(actor, app, b.redirect).await?;
            Ok(reply(StatusCode::OK, &json!({"redirect": b.redirect})))
        }
        (["certs", "renew"], Method::POST) => {
            let hosts = svc.renew_certs(actor, app).await?;
            Ok(reply(StatusCode::ACCEPTED, &json!({"hosts": hosts})))
        }
        (["builds"], Method::POST) => super::builds::create(api, actor, app, req).await,
        (["builds", id], Method::GET) => super::builds::get(api, actor, app, id).await,
        (["sync"], Method::POST) => start_sync(api, actor, app, req).await,
        (["syncs", id], Method::GET) => {
            let id: i64 = id
                .parse()
                .map_err(|_| ApiError::not_found(format!("no sync {id:?} of {app}")))?;
            let run = svc.sync_run(actor, app, id).await?;
            Ok(reply(StatusCode::OK, &run))
        }
        (
            []
            | ["config-vars" | "domains" | "formation" | "dynos" | "releases" | "logs" | "certs"
            | "builds" | "sync"]
            | ["domains" | "dynos" | "releases" | "builds" | "syncs", _]
            | ["certs", "renew"]
            | ["releases", _, "build-log"]
            | ["actions", "stop" | "start"],
            _,
        ) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found("no such endpoint under this app")),
    }
}

fn app_name(s: &str) -> Result<AppName, ApiError> {
    AppName::parse(s).map_err(|e| ApiError::invalid(e.to_string()))
}

fn version(v: &str) -> Result<u32, ApiError> {
    v.strip_prefix('v')
        .unwrap_or(v)
        .parse()
        .map_err(|_| ApiError::invalid(format!("{v:?} is not a release like v3")))
}

/// Query parameters, decoded.
pub(super) struct Query(BTreeMap<String, String>);

impl Query {
    pub(super) fn parse(q: Option<&str>) -> Query {
        let mut map = BTreeMap::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(percent_decode(k), percent_decode(v));
        }
        Query(map)
    }

    pub(super) fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn number(&self, k: &str, default: u32) -> Result<u32, ApiError> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| ApiError::invalid(format!("{k} must be a whole number, got {v:?}"))),
        }
    }

    fn flag(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some("true" | "1" | "") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(format!(
                "{k} must be true or false, got {v:?}"
            ))),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let bytes = http_body_util::Limited::new(req.into_body(), MAX_JSON)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the body is over {} KiB", MAX_JSON / 1024),
                )
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not the JSON expected: {e}")))
}

/// A progress sink whose lines are kept: what SSH streams to stderr, the
/// API returns as `output`.
pub(super) struct Collect {
    pub progress: Progress,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Collect {
    pub(super) fn new() -> Collect {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(256);
        let task = tokio::spawn(async move {
            let mut lines = Vec::new();
            while let Some(l) = rx.recv().await {
                lines.extend(l.lines().map(str::to_owned));
            }
            lines
        });
        Collect {
            progress: Progress::new(Some(tx)),
            task,
        }
    }

    pub(super) async fn finish(self) -> Vec<String> {
        // Dropping the progress closes the channel; the task then ends.
        drop(self.progress);
        self.task.await.unwrap_or_default()
    }
}

fn masked(actor: &Actor, vars: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if actor.sees_secrets() {
        vars
    } else {
        vars.into_keys()
            .map(|k| (k, "********".to_owned()))
            .collect()
    }
}

async fn status(api: &Api, actor: &Actor) -> Reply {
    let apps = api.service.visible_apps(actor).await?;
    let platform = &api.service.platform;
    Ok(reply(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "runtime": platform.runtime.name(),
            "domain": api.service.domain,
            "apps": apps.iter().map(|a| json!({"name": a.name, "url": platform.app_url(&a.name)})).collect::<Vec<_>>(),
        }),
    ))
}

async fn list_apps(api: &Api, actor: &Actor) -> Reply {
    let apps = api.service.visible_apps(actor).await?;
    let platform = &api.service.platform;
    let rows: Vec<Value> = apps
        .iter()
        .map(|a| {
            json!({
                "name": a.name,
                "url": platform.app_url(&a.name),
                "created_at": a.created_at,
                "stopped": a.stopped,
            })
        })
        .collect();
    Ok(reply(StatusCode::OK, &rows))
}

async fn create_app(api: &Api, actor: &Actor, req: Request<Incoming>) -> Reply {
    #[derive(Deserialize)]
    struct Body {
        name: String,
        /// Deploy from this repository URL (see `apps:create --from`).
        from: Option<String>,
        branch: Option<String>,
        /// Fetch the commit's submodules too (https only).
        submodules: Option<bool>,
    }
    let b: Body = read_json(req).await?;
    let app = app_name(&b.name)?;
    if let Some(url) = &b.from {
        let prep = api
            .service
            .create_app_from(
                actor,
                &app,
                url,
                b.branch.as_deref(),
                b.submodules.unwrap_or(false),
            )
            .await?;
        let run = prep.run.clone();
        spawn_sync(api, actor, prep);
        return Ok(reply(
            StatusCode::CREATED,
            &json!({"name": app, "url": api.service.platform.app_url(&app), "sync": run}),
        ));
    }
    if b.branch.is_some() {
        return Err(ApiError::invalid("branch goes with from"));
    }
    if b.submodules.is_some() {
        return Err(ApiError::invalid("submodules goes with from"));
    }
    api.service.create_app(actor, &app).await?;
    Ok(reply(
        StatusCode::CREATED,
        &json!({"name": app, "url": api.service.platform.app_url(&app)}),
    ))
}

/// Run a sync after the request has its answer; the record says how it went.
fn spawn_sync(api: &Api, actor: &Actor, prep: crate::service::sync::PreparedSync) {
    let (service, actor) = (api.service.clone(), actor.clone());
    tokio::spawn(async move {
        if let Err(e) = service.run_sync(&actor, prep, None).await {
            tracing::info!(error = %e, "sync over the API failed");
        }
    });
}

/// `POST /apps/{app}/sync`: 202 with the sync's record to poll.
async fn start_sync(api: &Api, actor: &Actor, app: &AppName, req: Request<Incoming>) -> Reply {
    #[derive(Deserialize)]
    struct Body {
        url: Option<String>,
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// Fetch submodules (default: the source's setting); kept.
        submodules: Option<bool>,
    }
    let b: Body = read_json(req).await?;
    let prep = api
        .service
        .prepare_sync(
            actor,
            app,
            b.url.as_deref(),
            b.reference.as_deref(),
            b.submodules,
        )
        .await?;
    let run = prep.run.clone();
    spawn_sync(api, actor, prep);
    Ok(reply(StatusCode::ACCEPTED, &run))
}

async fn app_info(api: &Api, actor: &Actor, app: &AppName) -> Reply {
    let svc = &api.service;
    let record = svc.app(actor, app, Access::Read).await?;
    let a = app.clone();
    let (live, domains, stored) = svc
        .db
        .call(move |c| {
            Ok((
                state::releases::live(c, &a)?,
                state::domains::list(c, &a)?,
                state::formation::get(c, &a)?,
            ))
        })
        .await
        .map_err(crate::service::ServiceError::from)?;
    let formation = live
        .as_ref()
        .map(|r| state::formation::desired(&stored, &r.processes))
        .unwrap_or_default();
    let (source, last_sync) = svc.sync_info(actor, app).await?;
    Ok(reply(
        StatusCode::OK,
        &json!({
            "name": record.name,
            "url": svc.platform.app_url(app),
            "source": source,
            "last_sync": last_sync,
            "domains": domains,
            "created_at": record.created_at,
            "deploy_branch": record.deploy_branch.as_deref().unwrap_or("main"),
            "live_release": live.as_ref().map(|r| r.version),
            "live_sha": live.as_ref().and_then(|r| r.sha.clone()),
            "builder": live.as_ref().and_then(|r| r.builder.clone()),
            "runtime": svc.platform.runtime.name(),
            "formation": formation,
            "stopped": record.stopped,
        }),
    ))
}

async fn patch_config(
    api: &Api,
    actor: &Actor,
    app: &AppName,
    query: &Query,
    req: Request<Incoming>,
) -> Reply {
    let body: BTreeMap<String, Option<String>> = read_json(req).await?;
    let restart = query.flag("restart")?.unwrap_or(true);
    let mut set = BTreeMap::new();
    let mut unset = Vec::new();
    for (k, v) in body {
        cfg::check_name(&k)?;
        match v {
            Some(v) => {
                let v = cfg::check_value(&k, v.as_bytes())?;
                set.insert(k, v);
            }
            None => unset.push(k),
        }
    }
    if set.is_empty() && unset.is_empty() {
        return Err(ApiError::invalid(
            "give at least one KEY: value (or KEY: null to unset)",
        ));
    }
    let svc = &api.service;
    let mut c = Collect::new();
    let r = svc
        .change_config(actor, app, set, unset, restart, &mut c.progress)
        .await;
    let output = c.finish().await;
    let outcome = r?;
    let vars = svc.config_vars(actor, app).await?;
    let release = match outcome {
        crate::deploy::ops::Outcome::Released(v) => Some(v),
        crate::deploy::ops::Outcome::Stored => None,
    };
    Ok(reply(
        StatusCode::OK,
        &json!({"config_vars": masked(actor, vars), "release": release, "output": output}),
    ))
}

async fn formation(api: &Api, actor: &Actor, app: &AppName) -> Reply {
    let svc = &api.service;
    svc.app(actor, app, Access::Read).await?;
    let a = app.clone();
    let (live, stored) = svc
        .db
        .call(move |c| Ok((state::releases::live(c, &a)?, state::formation::get(c, &a)?)))
        .await
        .map_err(crate::service::ServiceError::from)?;
    let rows: Vec<Value> = match &live {
        Some(r) => state::formation::desired(&stored, &r.processes)
            .iter()
            .map(|(p, n)| json!({"type": p, "quantity": n, "command": r.processes.get(p)}))
            .collect(),
        None => Vec::new(),
    };
    Ok(reply(StatusCode::OK, &rows))
}

async fn patch_formation(api: &Api, actor: &Actor, app: &AppName, req: Request<Incoming>) -> Reply {
    #[derive(Deserialize)]
    struct Update {
        #[serde(rename = "type")]
        process: String,
        quantity: u32,
    }
    #[derive(Deserialize)]
    struct Body {
        updates: Vec<Update>,
    }
    let b: Body = read_json(req).await?;
    let mut changes = BTreeMap::new();
    for u in b.updates {
        let p = ProcessType::parse(&u.process).map_err(|e| ApiError::invalid(e.to_string()))?;
        changes.insert(p, u.quantity);
    }
    let svc = &api.service;
    let mut c = Collect::new();
    let r = svc.scale(actor, app, changes, &mut c.progress).await;
    let output = c.finish().await;
    r?;
    let mut resp = formation(api, actor, app).await?;
    // The formation as it is now, with what scaling printed.
    let bytes = resp
        .body_mut()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let rows: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(reply(
        StatusCode::OK,
        &json!({"formation": rows, "output": output}),
    ))
}

async fn dynos(api: &Api, actor: &Actor, app: &AppName) -> Reply {
    let svc = &api.service;
    svc.app(actor, app, Access::Read).await?;
    let a = app.clone();
    let live = svc
        .db
        .call(move |c| state::releases::live(c, &a))
        .await
        .map_err(crate::service::ServiceError::from)?;
    let mut instances = svc
        .platform
        .runtime
        .list(Some(app))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    instances.sort_by(|a, b| (&a.process, a.index).cmp(&(&b.process, b.index)));
    let live_version = live.map(|r| r.version);
    let rows: Vec<Value> = instances
        .iter()
        .map(|i| {
            let state = if Some(i.release) == live_version {
                i.state.as_str()
            } else {
                "draining"
            };
            json!({
                "name": format!("{}.{}", i.process, i.index),
                "type": i.process,
                "release": i.release,
                "state": state,
                "started_at": i.started_at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "restarts": i.restarts,
            })
        })
        .collect();
    Ok(reply(StatusCode::OK, &rows))
}

async fn restart(api: &Api, actor: &Actor, app: &AppName, only: Option<ProcessType>) -> Reply {
    let svc = &api.service;
    let mut c = Collect::new();
    let r = svc
        .restart(actor, app, only.as_ref(), &mut c.progress)
        .await;
    let output = c.finish().await;
    let n = r?;
    Ok(reply(
        StatusCode::ACCEPTED,
        &json!({"restarted": n, "output": output}),
    ))
}

async fn rollback(api: &Api, actor: &Actor, app: &AppName, req: Request<Incoming>) -> Reply {
    #[derive(Deserialize)]
    struct Body {
        /// `v3`, `3` or absent (the previous release).
        #[serde(default)]
        release: Option<Value>,
    }
    let b: Body = read_json(req).await?;
    let target = match b.release {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ApiError::invalid("release must be a version like v3"))?,
        ),
        Some(Value::String(s)) => Some(version(&s)?),
        Some(_) => return Err(ApiError::invalid("release must be a version like v3")),
    };
    let svc = &api.service;
    let mut c = Collect::new();
    let r = svc.rollback(actor, app, target, &mut c.progress).await;
    let output = c.finish().await;
    let v = r?;
    Ok(reply(
        StatusCode::CREATED,
        &json!({"version": v, "output": output}),
    ))
}

async fn logs(api: &Api, actor: &Actor, app: &AppName, query: &Query) -> Reply {
    let svc = &api.service;
    svc.app(actor, app, Access::Read).await?;
    let lines = query.number("lines", 100)? as usize;
    let process = query.get("process").map(str::to_owned);
    let follow = query.flag("tail")?.unwrap_or(false);
    let logs = svc.platform.logs.clone();
    // Subscribe before reading the tail, so no line falls between the two.
    let live = follow.then(|| logs.follow(app));
    let (a, p) = (app.clone(), process.clone());
    let tail = tokio::task::spawn_blocking(move || logs.tail(&a, lines.min(100_000), p.as_deref()))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let Some(mut rx) = live else {
        return Ok(reply(StatusCode::OK, &tail));
    };
    let (resp, tx) = body::stream(StatusCode::OK, "text/event-stream");
    let shutdown = api.shutdown.clone();
    tokio::spawn(async move {
        let event = |l: &crate::logs::LogLine| {
            bytes::Bytes::from(format!(
                "data: {}\n\n",
                serde_json::to_string(l).unwrap_or_default()
            ))
        };
        for l in &tail {
            if tx.send(event(l)).await.is_err() {
                return;
            }
        }
        let mut keepalive = tokio::time::interval(std::time::Duration::from_secs(15));
        loop {
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = keepalive.tick() => bytes::Bytes::from_static(b": keep-alive\n\n"),
                line = rx.recv() => match line {
                    Ok(l) if process.as_deref().is_none_or(|p| l.is_from(p)) => event(&l),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        bytes::Bytes::from(format!("event: lagged\ndata: {n}\n\n"))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    Ok(resp)
}

async fn certs(api: &Api, actor: &Actor, app: Option<&AppName>) -> Reply {
    let rows = api.service.certs(actor, app).await?;
    Ok(reply(StatusCode::OK, &rows))
}

async fn add_key(api: &Api, actor: &Actor, req: Request<Incoming>) -> Reply {
    #[derive(Deserialize)]
    struct Body {
        name: String,
        public_key: String,
        #[serde(default)]
        role: Option<String>,
    }
    let b: Body = read_json(req).await?;
    // Who may add keys is checked before the key is even parsed.
    api.service.require_admin(actor, "add keys")?;
    let name = KeyName::parse(&b.name).map_err(|e| ApiError::invalid(e.to_string()))?;
    let role = match b.role.as_deref() {
        None => Role::Deployer,
        Some(r) => Role::from_arg(r).map_err(ApiError::invalid)?,
    };
    let key = crate::ssh::keys::parse_user_key(&b.public_key)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let fingerprint = crate::ssh::keys::fingerprint(&key);
    let public = key
        .to_openssh()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    api.service
        .add_key(actor, &name, role, &fingerprint, &public)
        .await?;
    Ok(reply(
        StatusCode::CREATED,
        &json!({"name": name, "role": role, "fingerprint": fingerprint}),
    ))
}

async fn create_token(api: &Api, actor: &Actor, req: Request<Incoming>) -> Reply {
    #[derive(Deserialize)]
    struct Body {
        name: String,
        role: String,
        #[serde(default)]
        apps: Vec<String>,
        #[serde(default)]
        expires: Option<String>,
    }
    let b: Body = read_json(req).await?;
    let role = Role::from_arg(&b.role).map_err(ApiError::invalid)?;
    let apps = b
        .apps
        .iter()
        .map(|a| app_name(a))
        .collect::<Result<Vec<_>, _>>()?;
    let expires_in = b
        .expires
        .as_deref()
        .map(crate::service::tokens::parse_expiry)
        .transpose()?;
    let created = api
        .service
        .create_token(actor, &b.name, role, apps, expires_in)
        .await?;
    Ok(reply(
        StatusCode::CREATED,
        &json!({
            "name": created.token.name,
            "role": created.token.role,
            "apps": created.token.apps,
            "expires_at": created.token.expires_at,
            "token": created.secret,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let q = Query::parse(Some("app=shop&limit=5&x=a%20b+c&bad=%zz&flag"));
        assert_eq!(q.get("app"), Some("shop"));
        assert_eq!(q.number("limit", 1).unwrap(), 5);
        assert_eq!(q.get("x"), Some("a b c"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.flag("flag").unwrap(), Some(true));
        assert!(Query::parse(Some("limit=-1")).number("limit", 1).is_err());
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%4"), "a%4");
    }
}
