//! Cygni's own HTTP front door: the REST API under `/api/v1/` and git
//! over HTTPS at `/APP.git`, served on the control host of the proxy
//! (`cygni.DOMAIN`) and on a loopback listener (`--api-listen`).
//!
//! ```text
//!  proxy (unknown-host path) ─┐
//!  loopback listener ─────────┼─► Api::handle ─► rate limit (address) ─► credentials
//!                             │      ├─ /api/v1/openapi.json (no token)
//!                             │      ├─ /api/v1/...  ─► v1 ─► Service (the same rules as SSH)
//!                             │      ├─ /APP.git/... ─► git_http ─► git *-pack --stateless-rpc
//!                             │      └─ /, /login, /apps/... ─► dashboard (pages, sessions)
//! ```
//!
//! A request to `/api/v1/` shows a token, or a dashboard session cookie;
//! a session changes anything (any method but GET and HEAD) only with its
//! CSRF token in `X-CSRF-Token`.
//!
//! Every handler runs on the daemon's main runtime, never on a proxy
//! worker's: deploys it starts outlive the request's connection.

mod body;
mod builds;
mod error;
mod git_http;
mod limit;
mod v1;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{header, HeaderMap, Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

pub use body::{empty, full};
pub use error::ApiError;

use crate::proxy::{Control, ControlBody, ControlRequest};
use crate::service::{tokens::AuthError, Actor, Service, Source};

/// The OpenAPI document, kept in the repo beside the code it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What git over HTTPS needs to run git as the SSH bridge does (the same
/// as the daemon's own pushes need).
pub use crate::local_push::PushEnv as GitHttpEnv;

pub struct Api {
    service: Arc<Service>,
    /// `cygni.DOMAIN`, normalized.
    host: String,
    /// The domain is local (`localhost`, ...): plain HTTP is fine on the
    /// control host. Otherwise plain HTTP redirects to HTTPS.
    plain_http_ok: bool,
    git: GitHttpEnv,
    limits: limit::Limits,
    builds: builds::Builds,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    /// The `Arc` this lives in, for tasks that outlive a request.
    me: std::sync::Weak<Api>,
    /// The web dashboard's pages, at `/` on the same listeners.
    dashboard: crate::dashboard::Dashboard,
    /// `/metrics`, `/healthz`, `/readyz`, as on the metrics listener.
    observability: std::sync::OnceLock<(Arc<crate::metrics::Metrics>, Arc<crate::metrics::Health>)>,
}

/// One request as the handlers see it.
pub(crate) struct Call {
    pub req: Request<Incoming>,
    pub peer: SocketAddr,
}

impl Api {
    pub fn new(
        service: Arc<Service>,
        host: String,
        plain_http_ok: bool,
        git: GitHttpEnv,
        shutdown: CancellationToken,
    ) -> Arc<Api> {
        Arc::new_cyclic(|me| Api {
            me: me.clone(),
            observability: std::sync::OnceLock::new(),
            dashboard: crate::dashboard::Dashboard::new(service.clone()),
            service,
            host,
            plain_http_ok,
            git,
            limits: limit::Limits::default(),
            builds: builds::Builds::default(),
            runtime: tokio::runtime::Handle::current(),
            shutdown,
        })
    }

    /// Requests are served only through the `Arc` made in `new`, so this
    /// fails only while the daemon is going away.
    pub(crate) fn self_arc(&self) -> Result<Arc<Api>, ApiError> {
        self.me
            .upgrade()
            .ok_or_else(|| ApiError::internal("the daemon is stopping"))
    }

    /// Serve `/metrics` (admin and viewer tokens), `/healthz` and
    /// `/readyz` (no token: they say only whether Cygni works).
    pub fn observe(
        &self,
        metrics: Arc<crate::metrics::Metrics>,
        health: Arc<crate::metrics::Health>,
    ) {
        let _ = self.observability.set((metrics, health));
    }

    async fn observability_answer(&self, call: &Call, path: &str) -> Response<ControlBody> {
        let Some((metrics, health)) = self.observability.get() else {
            return ApiError::not_found("metrics are not served here").into_response();
        };
        if path == "/metrics" {
            let actor = match self
                .actor(
                    call.req.headers(),
                    call.req.method(),
                    call.peer,
                    Source::Api,
                )
                .await
            {
                Ok(a) => a,
                Err(e) => return e.into_response(),
            };
            if !matches!(
                actor.role,
                crate::state::keys::Role::Admin | crate::state::keys::Role::Viewer
            ) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "metrics need an admin or viewer token",
                )
                .into_response();
            }
        }
        let (status, content_type, text) =
            crate::metrics::http::respond(metrics, health, call.req.method(), path).await;
        let mut resp = Response::new(body::full(text));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        resp
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn dashboard(&self) -> &crate::dashboard::Dashboard {
        &self.dashboard
    }

    /// Serve one request. `secure`: it came over TLS or on the loopback
    /// listener, where a token may travel. `tls`: it came over TLS (the
    /// dashboard's cookies are `Secure` then).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        secure: bool,
        tls: bool,
    ) -> Response<ControlBody> {
        if !secure && !self.plain_http_ok {
            return redirect_to_https(&self.host, &req);
        }
        if let Err(wait) = self.limits.by_address(peer.ip()) {
            return ApiError::rate_limited(wait).into_response();
        }
        let path = req.uri().path().to_owned();
        let call = Call { req, peer };
        if matches!(path.as_str(), "/metrics" | "/healthz" | "/readyz") {
            return self.observability_answer(&call, &path).await;
        }
        if path == "/api/v1/openapi.json" {
            return body::json_text(StatusCode::OK, OPENAPI);
        }
        if let Some(rest) = path.strip_prefix("/api/v1/") {
            let rest = rest.to_owned();
            return match v1::route(&self, call, &rest).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(),
            };
        }
        if path == "/api/v1" || path == "/api" {
            return ApiError::not_found("see /api/v1/openapi.json for the endpoints")
                .into_response();
        }
        if git_http::is_git_path(&path) {
            return git_http::serve(&self, call, &path).await;
        }
        if crate::dashboard::Dashboard::serves(&path) {
            use http_body_util::BodyExt;
            let answer = self.dashboard.handle(call.req, call.peer, tls).await;
            if answer.failed_sign_in {
                // As for a refused token on the API.
                self.limits.failed_auth(call.peer.ip());
            }
            return answer
                .response
                .map(|b| b.map_err(|never| match never {}).boxed());
        }
        ApiError::not_found(
            "nothing here: the API is under /api/v1/ and git repositories at /APP.git",
        )
        .into_response()
    }

    /// The credential of a request, as an actor: `Authorization: Bearer
    /// TOKEN`, or Basic with the token as the password (what git sends).
    /// On the API (not git), a request without one may show a dashboard
    /// session cookie instead; it changes things only with the session's
    /// CSRF token.
    pub(crate) async fn actor(
        &self,
        headers: &HeaderMap,
        method: &Method,
        peer: SocketAddr,
        source: Source,
    ) -> Result<Actor, ApiError> {
        let presented = credential(headers);
        if presented.is_none() && source == Source::Api {
            if let Some(id) = crate::dashboard::session::session_cookie(headers) {
                return self.session_actor(headers, method, peer, &id).await;
            }
        }
        let actor = self
            .service
            .authenticate(presented.as_deref(), source, Some(peer.ip()))
            .await
            .map_err(|e| {
                tracing::info!(%peer, source = source.as_str(), reason = %e, "api credential refused");
                // Failed attempts spend the address's budget faster.
                self.limits.failed_auth(peer.ip());
                ApiError::unauthorized(e)
            })?;
        if let Err(wait) = self.limits.by_actor(&actor.name) {
            return Err(ApiError::rate_limited(wait));
        }
        Ok(actor)
    }
}

impl Api {
    async fn session_actor(
        &self,
        headers: &HeaderMap,
        method: &Method,
        peer: SocketAddr,
        id: &str,
    ) -> Result<Actor, ApiError> {
        let Some((session, actor)) = self.service.dashboard_session(id, Some(peer.ip())).await
        else {
            tracing::info!(%peer, "api session cookie refused");
            self.limits.failed_auth(peer.ip());
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the dashboard session has expired or was signed out: sign in again",
            ));
        };
        let reads = matches!(*method, Method::GET | Method::HEAD);
        if !reads && !session.csrf_matches(crate::dashboard::session::csrf_header(headers)) {
            tracing::info!(%peer, actor = %actor.name, %method, "api request without the session's CSRF token");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "a dashboard session changes things only with its CSRF token (X-CSRF-Token)",
            ));
        }
        if let Err(wait) = self.limits.by_actor(&actor.name) {
            return Err(ApiError::rate_limited(wait));
        }
        Ok(actor)
    }
}

fn credential(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

fn redirect_to_https(host: &str, req: &Request<Incoming>) -> Response<ControlBody> {
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    // GET and HEAD may follow a 301; anything else must not be replayed
    // silently over another scheme with its body: 308 keeps the method.
    let status = if matches!(*req.method(), Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(&format!("https://{host}{path}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::unauthorized(e)
    }
}

/// The proxy's view: requests for the control host, moved onto the main
/// runtime.
pub struct ControlHost(pub Arc<Api>);

impl Control for ControlHost {
    fn host(&self) -> &str {
        &self.0.host
    }

    fn serve(&self, r: ControlRequest) -> crate::proxy::control::ControlFuture {
        let api = Arc::clone(&self.0);
        let runtime = api.runtime.clone();
        Box::pin(async move {
            let task = runtime.spawn(api.handle(r.req, r.peer, r.https, r.https));
            match task.await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::error!(error = %e, "api handler panicked");
                    ApiError::internal("the request failed; see the server log").into_response()
                }
            }
        })
    }
}

/// The loopback listener: the same service, for local tools and tests.
pub async fn serve_loopback(
    listener: tokio::net::TcpListener,
    api: Arc<Api>,
    shutdown: CancellationToken,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let api = Arc::clone(&api);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| {
                let api = Arc::clone(&api);
                async move {
                    Ok::<_, std::convert::Infallible>(api.handle(req, peer, true, false).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
}
