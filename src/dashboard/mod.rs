//! The web dashboard: server-rendered pages on the control host
//! (`cygni.DOMAIN/`) and on the API's loopback listener, with a little
//! vanilla JavaScript. Its assets (`assets/`) are compiled into the
//! binary; there is no second service and no build step.
//!
//! ```text
//!  GET  /login, /login/CODE ─► sign-in form (token, or a dashboard:login code)
//!  POST /login ─► Service::dashboard_sign_in_* ─► session cookie (HttpOnly, SameSite=Strict, 12 h)
//!  GET  /, /apps/APP ─► cookie ─► Service::dashboard_session ─► Actor ─► Service reads ─► HTML
//!  page script ─► GET  the page again (data-live sections), EventSource /api/v1/apps/APP/logs?tail=true
//!              ─► POST/PATCH /api/v1/... with X-CSRF-Token (rollback, config) ─► the API's rules
//!  POST /logout (csrf field) ─► session closed
//! ```
//!
//! The dashboard owns pages, cookies and forms; who may see or change what
//! is the service's, as for SSH and the API. Every change a page offers
//! goes through `/api/v1` with the session cookie, which the API accepts
//! only with the session's CSRF token for anything but GET. A viewer gets
//! no buttons, and the service refuses it anyway.

mod html;
mod pages;
pub mod session;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::metrics::history::HostHistory;
use crate::names::AppName;
use crate::service::sessions::{SignInError, SESSION_TTL_SECS};
use crate::service::{Actor, Service, ServiceError};
use crate::state::keys::Role;

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");
/// A sign-in form is a few hundred bytes.
const MAX_FORM: usize = 16 * 1024;
/// Pages may load only what they come with: no inline script, nothing
/// from elsewhere, and no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub type Body = Full<Bytes>;

/// What the dashboard answered, and whether it was a refused sign-in (the
/// caller charges the address's request budget for those).
pub struct Answer {
    pub response: Response<Body>,
    pub failed_sign_in: bool,
}

impl From<Response<Body>> for Answer {
    fn from(response: Response<Body>) -> Self {
        Answer {
            response,
            failed_sign_in: false,
        }
    }
}

pub struct Dashboard {
    service: Arc<Service>,
    history: OnceLock<Arc<HostHistory>>,
}

impl Dashboard {
    pub fn new(service: Arc<Service>) -> Dashboard {
        Dashboard {
            service,
            history: OnceLock::new(),
        }
    }

    /// Show the host chart from this history (the daemon's sampler).
    pub fn show_history(&self, history: Arc<HostHistory>) {
        let _ = self.history.set(history);
    }

    /// The paths the dashboard answers; everything else is the API's.
    pub fn serves(path: &str) -> bool {
        path == "/"
            || path == "/login"
            || path == "/logout"
            || path.starts_with("/login/")
            || path.starts_with("/apps/")
            || path.starts_with("/assets/")
    }

    /// Serve one request. `tls`: it came over HTTPS, so cookies are `Secure`.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr, tls: bool) -> Answer {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let read = matches!(method, Method::GET | Method::HEAD);
        match path.as_str() {
            "/assets/dashboard.css" if read => asset(CSS, "text/css; charset=utf-8").into(),
            "/assets/dashboard.js" if read => asset(JS, "text/javascript; charset=utf-8").into(),
            "/login" if read => login_form(None, None, tls, StatusCode::OK).into(),
            "/login" if method == Method::POST => self.sign_in(req, peer, tls).await,
            "/logout" if method == Method::POST => self.sign_out(req, peer, tls).await.into(),
            p if read && p.starts_with("/login/") => {
                let code = &p["/login/".len()..];
                login_form(Some(code), None, tls, StatusCode::OK).into()
            }
            "/" if read => self.signed_in(&req, peer, |a| self.apps(a)).await.into(),
            p if read && p.starts_with("/apps/") => {
                let name = p["/apps/".len()..].trim_end_matches('/');
                match AppName::parse(name) {
                    Ok(app) => self
                        .signed_in(&req, peer, |a| self.app(a, app))
                        .await
                        .into(),
                    Err(_) => {
                        message(StatusCode::NOT_FOUND, "No such page", "app not found").into()
                    }
                }
            }
            "/" | "/login" | "/logout" => {
                let mut r = message(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Not allowed",
                    "that method is not allowed here",
                );
                let allow = if path == "/logout" {
                    "POST"
                } else {
                    "GET, POST"
                };
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r.into()
            }
            p if p.starts_with("/apps/") || p.starts_with("/login/") => {
                let mut r = message(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Not allowed",
                    "pages change nothing: their buttons call /api/v1 with a CSRF token",
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET"));
                r.into()
            }
            _ => message(StatusCode::NOT_FOUND, "No such page", "nothing here").into(),
        }
    }

    /// Run `page` for the request's session, or send the browser to sign in.
    async fn signed_in<F, Fut>(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
        page: F,
    ) -> Response<Body>
    where
        F: FnOnce(Actor) -> Fut,
        Fut: std::future::Future<Output = Result<(String, String, Option<u32>), ServiceError>>,
    {
        let found = match session::session_cookie(req.headers()) {
            Some(id) => self.service.dashboard_session(&id, Some(peer.ip())).await,
            None => None,
        };
        let Some((s, actor)) = found else {
            return redirect("/login");
        };
        let (name, role) = pages::who(&actor);
        let (name, role) = (name.to_owned(), role);
        match page(actor).await {
            Ok((title, body, poll_ms)) => html_response(
                StatusCode::OK,
                &html::page(
                    &html::Frame {
                        title: &title,
                        who: Some((&name, role)),
                        csrf: Some(&s.csrf),
                        poll_ms,
                    },
                    &body,
                ),
            ),
            Err(e) => {
                let status = match &e {
                    ServiceError::AppNotFound(_) | ServiceError::NotFound(_) => {
                        StatusCode::NOT_FOUND
                    }
                    ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
                    ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::BAD_REQUEST,
                };
                let body = format!(
                    "<section class=\"card\"><h1>Not available</h1><p class=\"error\">{}</p>\
                     <p><a href=\"/\">Back to the apps</a></p></section>",
                    html::esc(&e.to_string())
                );
                html_response(
                    status,
                    &html::page(
                        &html::Frame {
                            title: "Not available",
                            who: Some((&name, role)),
                            csrf: Some(&s.csrf),
                            poll_ms: None,
                        },
                        &body,
                    ),
                )
            }
        }
    }

    async fn apps(&self, actor: Actor) -> Result<(String, String, Option<u32>), ServiceError> {
        // The host's figures: for the roles /metrics serves.
        let points = matches!(actor.role, Role::Admin | Role::Viewer)
            .then(|| self.history.get().map(|h| h.points()))
            .flatten();
        let body = pages::apps(&self.service, &actor, points).await?;
        Ok(("Apps".to_owned(), body, Some(5000)))
    }

    async fn app(
        &self,
        actor: Actor,
        app: AppName,
    ) -> Result<(String, String, Option<u32>), ServiceError> {
        let body = pages::app(&self.service, &actor, &app).await?;
        Ok((app.to_string(), body, Some(1500)))
    }

    async fn sign_in(&self, req: Request<Incoming>, peer: SocketAddr, tls: bool) -> Answer {
        let cookie = session::cookie(req.headers(), session::LOGIN_COOKIE);
        let Some(form) = read_form(req).await else {
            return login_form(
                None,
                Some("the form could not be read"),
                tls,
                StatusCode::BAD_REQUEST,
            )
            .into();
        };
        let code = session::field(&form, "code").map(str::to_owned);
        // The form must come from a page this site showed this browser.
        let fresh = match (cookie.as_deref(), session::field(&form, "login_csrf")) {
            (Some(c), Some(f)) => session::same(c, f),
            _ => false,
        };
        if !fresh {
            return Answer {
                response: login_form(
                    code.as_deref(),
                    Some("this sign-in form expired or came from elsewhere: try again"),
                    tls,
                    StatusCode::FORBIDDEN,
                ),
                failed_sign_in: true,
            };
        }
        let ip = Some(peer.ip());
        let result = match (&code, session::field(&form, "token")) {
            (Some(c), _) => self.service.dashboard_sign_in_code(c, ip).await,
            (None, Some(t)) => self.service.dashboard_sign_in_token(t, ip).await,
            (None, None) => {
                return login_form(None, Some("give a token"), tls, StatusCode::BAD_REQUEST).into();
            }
        };
        match result {
            Ok((s, _actor)) => {
                let mut r = redirect("/");
                let h = r.headers_mut();
                h.append(
                    header::SET_COOKIE,
                    session::set_cookie(session::SESSION_COOKIE, &s.id, SESSION_TTL_SECS, tls),
                );
                h.append(
                    header::SET_COOKIE,
                    session::set_cookie(session::LOGIN_COOKIE, "", 0, tls),
                );
                r.into()
            }
            Err(e) => {
                tracing::info!(%peer, reason = %e, "dashboard sign-in refused");
                let status = match e {
                    SignInError::BadCode | SignInError::Revoked => StatusCode::FORBIDDEN,
                    SignInError::Token(_) => StatusCode::UNAUTHORIZED,
                };
                // A used code is gone: offer the token form, not the code again.
                Answer {
                    response: login_form(None, Some(&e.to_string()), tls, status),
                    failed_sign_in: true,
                }
            }
        }
    }

    async fn sign_out(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<Body> {
        let id = session::session_cookie(req.headers());
        let found = match &id {
            Some(id) => self.service.dashboard_session(id, Some(peer.ip())).await,
            None => None,
        };
        let form = read_form(req).await.unwrap_or_default();
        // No session (or an expired one): signed out already.
        if let Some((s, actor)) = found {
            if !s.csrf_matches(session::field(&form, session::CSRF_FIELD)) {
                return message(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    "this request did not carry the page's CSRF token",
                );
            }
            self.service.dashboard_sign_out(&actor, &s.id).await;
        }
        let mut r = redirect("/login");
        r.headers_mut().append(
            header::SET_COOKIE,
            session::set_cookie(session::SESSION_COOKIE, "", 0, tls),
        );
        r
    }
}

async fn read_form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let bytes = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(session::form(&bytes))
}

fn secure_headers(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A one-time link must not leak to the sites an app page links to.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn html_response(status: StatusCode, html: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(html.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure_headers(&mut r);
    r
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Pages name assets with the version, so a new binary is a new URL.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    secure_headers(&mut r);
    r
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A page with one message, for errors.
fn message(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let body = format!(
        "<section class=\"card\"><h1>{}</h1><p>{}</p><p><a href=\"/\">Go to the dashboard</a></p></section>",
        html::esc(title),
        html::esc(text)
    );
    html_response(
        status,
        &html::page(
            &html::Frame {
                title,
                who: None,
                csrf: None,
                poll_ms: None,
            },
            &body,
        ),
    )
}

/// The sign-in page, with a fresh double-submit value in a cookie and in
/// the form.
fn login_form(
    code: Option<&str>,
    error: Option<&str>,
    tls: bool,
    status: StatusCode,
) -> Response<Body> {
    let value = session::random_value();
    let body = pages::login(&value, code, error);
    let mut r = html_response(
        status,
        &html::page(
            &html::Frame {
                title: "Sign in",
                who: None,
                csrf: None,
                poll_ms: None,
            },
            &body,
        ),
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(session::LOGIN_COOKIE, &value, 15 * 60, tls),
    );
    r
}
