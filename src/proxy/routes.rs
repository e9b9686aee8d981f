//! The routing table: which app (and which of its `web` endpoints) serves
//! a given Host.
//!
//! ```text
//! deploy / reconcile ──► Routes::builder().app(..).build() ──► RouteTable::replace
//!                                                                   │ (atomic swap)
//! request ──► normalize Host ──► RouteTable::load().lookup(host) ◄──┘
//! ```
//!
//! A `Routes` value is immutable once built; changes are made by building a
//! whole new table elsewhere and swapping it in. The request path therefore
//! only does an `ArcSwap` load and a hash lookup: no lock, no SQLite, no
//! await.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::logs::LogStore;
use crate::metrics::{AppHandles, Metrics};
use crate::names::{AppName, Hostname};

/// Longest Host we try to route. DNS names are at most 253 bytes; a port
/// and a trailing dot add a few. Anything longer cannot match a route.
pub(crate) const MAX_HOST_LEN: usize = 262;

/// How long an app has to start its response (status and headers) before
/// the client gets a 504, when the route does not say: nginx's
/// `proxy_read_timeout` default.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// One app's route: where its healthy `web` instances listen, and the
/// app's proxy settings.
#[derive(Debug)]
pub struct Route {
    pub app: AppName,
    pub endpoints: Vec<SocketAddr>,
    /// Set when every host of the app redirects (the [`RoutesBuilder::app`]
    /// form); per-host flags live in the table, see [`AppRoute::host`].
    pub redirect_https: bool,
    /// The app must start its response within this long, else 504.
    pub response_timeout: Duration,
    /// Each request gets a `router` line in the app's log (`logs:set APP
    /// access-log on`).
    pub access_log: bool,
    /// Round-robin cursor. Shared by every host of the app so that custom
    /// domains and `APP.DOMAIN` spread load over the same rotation.
    next: AtomicUsize,
    /// One in-flight counter per endpoint (same order), attached by
    /// [`RouteTable::replace`] from the table's registry so that counts
    /// survive snapshot swaps. Unset in a table that was never published.
    in_flight: OnceLock<Box<[Arc<AtomicUsize>]>>,
    /// The app's metric handles, attached with the counters when the
    /// table records metrics: the request path only adds to atomics.
    metrics: OnceLock<Arc<AppHandles>>,
}

impl Route {
    pub fn new(app: AppName, endpoints: Vec<SocketAddr>, redirect_https: bool) -> Route {
        Route {
            app,
            endpoints,
            redirect_https,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            access_log: false,
            next: AtomicUsize::new(0),
            in_flight: OnceLock::new(),
            metrics: OnceLock::new(),
        }
    }

    /// The endpoint to try first and, when there is another one, the
    /// endpoint to fall back to if connecting to the first fails.
    ///
    /// `Relaxed` is enough: the cursor only spreads load, it orders nothing.
    pub fn pick(&self) -> Option<(SocketAddr, Option<SocketAddr>)> {
        let n = self.endpoints.len();
        let i = self.start()?;
        Some((
            self.endpoints[i],
            (n > 1).then(|| self.endpoints[(i + 1) % n]),
        ))
    }

    /// Index of the endpoint to try first (round robin); the others follow
    /// in order when connecting fails.
    pub(crate) fn start(&self) -> Option<usize> {
        match self.endpoints.len() {
            0 => None,
            1 => Some(0),
            n => Some(self.next.fetch_add(1, Ordering::Relaxed) % n),
        }
    }

    /// The app's metric handles, if the table records metrics.
    #[inline]
    pub(crate) fn metrics(&self) -> Option<&Arc<AppHandles>> {
        self.metrics.get()
    }

    /// The in-flight counter of endpoint `i`, if the route was published.
    pub(crate) fn counter(&self, i: usize) -> Option<&Arc<AtomicUsize>> {
        self.in_flight.get().and_then(|c| c.get(i))
    }
}

/// A host's entry in the table: its app's route and whether plain HTTP
/// to this host redirects to HTTPS.
#[derive(Debug, Clone)]
pub(crate) struct HostEntry {
    pub(crate) route: Arc<Route>,
    pub(crate) redirect_https: bool,
}

/// An immutable host → route table.
#[derive(Debug, Default)]
pub struct Routes {
    hosts: HashMap<Box<str>, HostEntry>,
}

impl Routes {
    pub fn builder() -> RoutesBuilder {
        RoutesBuilder::default()
    }

    /// An empty table: every Host is unknown.
    pub fn empty() -> Routes {
        Routes::default()
    }

    /// The route for a raw Host header value (`App.Example.com.:8080` and
    /// `app.example.com` find the same route).
    pub fn lookup(&self, host: &str) -> Option<&Arc<Route>> {
        self.lookup_bytes(host.as_bytes())
            .ok()
            .flatten()
            .map(|e| &e.route)
    }

    /// Whether plain HTTP to `host` redirects to HTTPS (`None`: unknown host).
    pub fn redirects(&self, host: &str) -> Option<bool> {
        self.lookup_bytes(host.as_bytes())
            .ok()
            .flatten()
            .map(|e| e.redirect_https)
    }

    /// The entry for a Host given as raw header bytes: `Err` for a
    /// malformed Host, `Ok(None)` for a well-formed one no app serves.
    pub(crate) fn lookup_bytes(&self, host: &[u8]) -> Result<Option<&HostEntry>, MalformedHost> {
        let mut buf = [0u8; MAX_HOST_LEN];
        Ok(match normalize_host(host, &mut buf)? {
            Normal::Ascii(h) => self.hosts.get(h),
            Normal::Mapped(h) => self.hosts.get(h.as_str()),
        })
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Every distinct route, once each.
    fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        let mut seen = std::collections::HashSet::new();
        self.hosts
            .values()
            .map(|e| &e.route)
            .filter(move |r| seen.insert(Arc::as_ptr(r)))
    }
}

/// One app's route as the deploy side describes it: its hosts (each with
/// its own HTTPS redirect), its endpoints and its settings.
///
/// ```text
/// AppRoute::new(app, endpoints)
///     .host("shop.localhost", false)          // no certificate: plain HTTP
///     .host("shop.example.com", true)         // valid certificate: redirect
///     .response_timeout(Some(Duration::from_secs(120)))   // None: 60 s
/// ```
#[derive(Debug)]
pub struct AppRoute {
    app: AppName,
    hosts: Vec<(String, bool)>,
    endpoints: Vec<SocketAddr>,
    response_timeout: Duration,
    access_log: bool,
}

impl AppRoute {
    pub fn new(app: AppName, endpoints: Vec<SocketAddr>) -> AppRoute {
        AppRoute {
            app,
            hosts: Vec::new(),
            endpoints,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            access_log: false,
        }
    }

    /// Write a `router` line per request into the app's log.
    pub fn access_log(mut self, on: bool) -> AppRoute {
        self.access_log = on;
        self
    }

    /// Serve `host` (normalized: lowercase, no port, no trailing dot);
    /// `redirect_https` sends plain HTTP requests for it to HTTPS.
    pub fn host(mut self, host: impl Into<String>, redirect_https: bool) -> AppRoute {
        self.hosts.push((host.into(), redirect_https));
        self
    }

    /// The app's response deadline; `None` keeps the default (60 s).
    pub fn response_timeout(mut self, timeout: Option<Duration>) -> AppRoute {
        if let Some(t) = timeout {
            self.response_timeout = t;
        }
        self
    }
}

/// Builds a [`Routes`] table. Hosts must already be normalized (lowercase,
/// no port, no trailing dot); the deploy side does that once, at the edge.
#[derive(Debug, Default)]
pub struct RoutesBuilder {
    hosts: HashMap<Box<str>, HostEntry>,
}

impl RoutesBuilder {
    /// Route every host in `hosts` to `app`'s endpoints, all with the same
    /// HTTPS redirect. A host given twice (by two apps) goes to the app
    /// added last; the caller owns uniqueness of domains.
    pub fn app(
        self,
        app: AppName,
        hosts: Vec<String>,
        endpoints: Vec<SocketAddr>,
        redirect_https: bool,
    ) -> Self {
        let mut route = AppRoute::new(app, endpoints);
        for host in hosts {
            route = route.host(host, redirect_https);
        }
        let all = redirect_https;
        self.route_with(route, all)
    }

    /// Add one app's route, with per-host redirects and its settings.
    pub fn route(self, route: AppRoute) -> Self {
        let all = !route.hosts.is_empty() && route.hosts.iter().all(|(_, r)| *r);
        self.route_with(route, all)
    }

    fn route_with(mut self, route: AppRoute, all_redirect: bool) -> Self {
        let AppRoute {
            app,
            hosts,
            endpoints,
            response_timeout,
            access_log,
        } = route;
        let mut r = Route::new(app, endpoints, all_redirect);
        r.response_timeout = response_timeout;
        r.access_log = access_log;
        let r = Arc::new(r);
        for (host, redirect_https) in hosts {
            self.hosts.insert(
                host.into_boxed_str(),
                HostEntry {
                    route: Arc::clone(&r),
                    redirect_https,
                },
            );
        }
        self
    }

    pub fn build(self) -> Routes {
        Routes { hosts: self.hosts }
    }
}

/// The live routes: an atomically swapped snapshot, and the in-flight
/// counters of every endpoint, which outlive the snapshots.
///
/// ```text
/// request ──► load() ──► route ──► counter[endpoint] += 1 ... -= 1 when the response
///                                  (or the upgraded tunnel) ends
/// deploy  ──► replace(new) (endpoint gone) ──► poll in_flight(addr) until 0 ──► stop
/// ```
#[derive(Debug)]
pub struct RouteTable {
    current: ArcSwap<Routes>,
    in_flight: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    /// Set when the proxy records metrics: each published route gets its
    /// app's handles from it.
    metrics: OnceLock<Arc<Metrics>>,
    /// Where routes with their access log on write their `router` lines.
    access_logs: OnceLock<Arc<LogStore>>,
}

impl RouteTable {
    pub fn new(routes: Routes) -> RouteTable {
        let table = RouteTable {
            current: ArcSwap::from_pointee(Routes::empty()),
            in_flight: Mutex::new(HashMap::new()),
            metrics: OnceLock::new(),
            access_logs: OnceLock::new(),
        };
        table.replace(routes);
        table
    }

    /// Record per-request metrics into `metrics` from the next
    /// [`RouteTable::replace`] on, unless its proxy recording is off. Call
    /// before serving. The listeners take their connection gauges from it.
    pub fn record_into(&self, metrics: Arc<Metrics>) {
        if metrics.proxy_enabled() {
            let _ = self.metrics.set(metrics);
        }
    }

    /// Routes whose access log is on write to `logs`. Call before serving.
    pub fn log_access_into(&self, logs: Arc<LogStore>) {
        let _ = self.access_logs.set(logs);
    }

    pub(crate) fn access_logs(&self) -> Option<&Arc<LogStore>> {
        self.access_logs.get()
    }

    /// The metrics this table records into, if any.
    pub(crate) fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.get()
    }

    /// Swap in a new table. Requests already routed keep the old one;
    /// the next request sees the new one.
    pub fn replace(&self, routes: Routes) {
        {
            let mut counters = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for route in routes.routes() {
                let list: Box<[Arc<AtomicUsize>]> = route
                    .endpoints
                    .iter()
                    .map(|addr| Arc::clone(counters.entry(*addr).or_default()))
                    .collect();
                // A route published twice keeps its first counters: they
                // are the same ones, from the same registry.
                let _ = route.in_flight.set(list);
                if let Some(m) = self.metrics.get() {
                    let _ = route.metrics.set(m.proxy.app(route.app.as_str()));
                }
            }
            // Forget counters no route holds and nothing is counted on.
            counters.retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Acquire) > 0);
        }
        self.current.store(Arc::new(routes));
    }

    /// The current table. The guard is cheap (no refcount traffic in the
    /// common case); don't hold it across an await.
    pub fn load(&self) -> arc_swap::Guard<Arc<Routes>> {
        self.current.load()
    }

    /// How many requests (and upgraded connections, such as WebSockets)
    /// are in flight to `addr` right now, whatever snapshot routed them.
    /// A request counts from the moment it is routed to `addr` until its
    /// response body has been sent (or its tunnel closed). 0 for an
    /// address never routed to.
    ///
    /// For draining: `replace` a table without `addr`, then poll this
    /// until it reads 0 (or a maximum drain passes) before stopping the
    /// instance. A request routed an instant before the swap is counted
    /// within nanoseconds of its route lookup, so start polling no sooner
    /// than a millisecond after the swap.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        let counters = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        counters.get(&addr).map_or(0, |c| c.load(Ordering::Acquire))
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable::new(Routes::empty())
    }
}

/// Counts one request (or tunnel) in flight to an endpoint until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Option<Arc<AtomicUsize>>);

impl InFlight {
    pub(crate) fn start(counter: Option<&Arc<AtomicUsize>>) -> InFlight {
        InFlight(counter.map(|c| {
            c.fetch_add(1, Ordering::AcqRel);
            Arc::clone(c)
        }))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A Host header that is not a host: bad characters, a bad port, empty, or
/// a Unicode name IDNA refuses. The client gets 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MalformedHost;

/// A normalized Host: borrowed (or lowercased into the caller's buffer)
/// for ASCII names, owned for Unicode names mapped through IDNA.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Normal<'a> {
    Ascii(&'a str),
    Mapped(Hostname),
}

impl Normal<'_> {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Normal::Ascii(h) => h,
            Normal::Mapped(h) => h.as_str(),
        }
    }
}

/// Normalize a Host for lookup: strip the port, strip one trailing dot,
/// lowercase, and map a Unicode name through IDNA exactly as
/// `domains:add` does ([`Hostname::parse`]), so `Bücher.example` finds the
/// route of `xn--bcher-kva.example`.
///
/// Malformed: empty, a port that is not digits up to 65535, an unbracketed `:`,
/// longer than a DNS name, a byte outside letters, digits, `-`, `.` and
/// `_` (or hex, `:` and `.` inside `[...]`), or a Unicode name IDNA
/// refuses.
///
/// Allocation-free for ASCII hosts: those already lowercase (nearly all of
/// them) are borrowed; others are lowercased into `buf`.
pub(crate) fn normalize_host<'a>(
    raw: &'a [u8],
    buf: &'a mut [u8; MAX_HOST_LEN],
) -> Result<Normal<'a>, MalformedHost> {
    let mut host = raw;
    if host.first() == Some(&b'[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        let end = host.iter().position(|&b| b == b']').ok_or(MalformedHost)?;
        let inside = &host[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
        {
            return Err(MalformedHost);
        }
        let rest = &host[end + 1..];
        if !rest.is_empty() {
            port_ok(rest.strip_prefix(b":").ok_or(MalformedHost)?)?;
        }
        host = &host[..=end];
    } else if let Some(colon) = host.iter().rposition(|&b| b == b':') {
        port_ok(&host[colon + 1..])?;
        host = &host[..colon];
    }
    if let Some(stripped) = host.strip_suffix(b".") {
        host = stripped;
    }
    if host.is_empty() || host.len() > 253 {
        return Err(MalformedHost);
    }
    if host[0] == b'[' {
        return Ok(Normal::Ascii(
            std::str::from_utf8(host).map_err(|_| MalformedHost)?,
        ));
    }
    let mut upper = false;
    for &b in host {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {}
            b'A'..=b'Z' => upper = true,
            0x80.. => return idna_map(host),
            _ => return Err(MalformedHost),
        }
    }
    let host = if upper {
        let out = &mut buf[..host.len()];
        out.copy_from_slice(host);
        out.make_ascii_lowercase();
        &*out
    } else {
        host
    };
    // Only ASCII got here, so this cannot fail; stay panic-free anyway.
    std::str::from_utf8(host)
        .map(Normal::Ascii)
        .map_err(|_| MalformedHost)
}

/// `port = *DIGIT` (RFC 3986; empty is allowed), at most 65535.
fn port_ok(port: &[u8]) -> Result<(), MalformedHost> {
    if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        return Err(MalformedHost);
    }
    let n = port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    if n > 65535 {
        return Err(MalformedHost);
    }
    Ok(())
}

/// The slow path, for the rare Host with non-ASCII bytes: the same
/// normalization as a custom domain gets when it is added.
fn idna_map(host: &[u8]) -> Result<Normal<'static>, MalformedHost> {
    let text = std::str::from_utf8(host).map_err(|_| MalformedHost)?;
    Hostname::parse(text)
        .map(Normal::Mapped)
        .map_err(|_| MalformedHost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Option<String> {
        let mut buf = [0u8; MAX_HOST_LEN];
        normalize_host(s.as_bytes(), &mut buf)
            .ok()
            .map(|n| n.as_str().to_owned())
    }

    #[test]
    fn host_normalization() {
        assert_eq!(norm("app.localhost").as_deref(), Some("app.localhost"));
        assert_eq!(norm("App.LocalHost:8080").as_deref(), Some("app.localhost"));
        assert_eq!(norm("app.example.com.").as_deref(), Some("app.example.com"));
        assert_eq!(
            norm("app.example.com.:80").as_deref(),
            Some("app.example.com")
        );
        assert_eq!(norm("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(norm(""), None);
        assert_eq!(norm(":80"), None);
        assert_eq!(norm("a:b"), None);
        assert_eq!(norm("é.example").as_deref(), Some("xn--9ca.example"));
        assert_eq!(norm("bücher"), None, "IDNA path: one label is not a domain");
        assert_eq!(
            norm("Bücher.example.com").as_deref(),
            Some("xn--bcher-kva.example.com")
        );
        assert_eq!(
            norm("bücher.example.com:8080").as_deref(),
            Some("xn--bcher-kva.example.com")
        );
        for bad in [
            "a b.example",
            "a/b",
            "user@host",
            "host:port",
            "host:123456",
            "host:65536",
            "a:b:c",
            "[zz]",
            "[::1]x",
            "%41.example",
            "a\u{1}b",
        ] {
            assert_eq!(norm(bad), None, "{bad:?} is malformed");
        }
        assert_eq!(
            norm("under_score.example").as_deref(),
            Some("under_score.example")
        );
        assert_eq!(norm(&"a".repeat(300)), None);
    }

    #[test]
    fn lookup_and_round_robin() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let routes = Routes::builder()
            .app(
                AppName::parse("web").unwrap(),
                vec!["web.localhost".into(), "www.example.com".into()],
                vec![a, b],
                false,
            )
            .build();
        let route = routes
            .lookup("WWW.example.com.:443")
            .expect("custom domain routes");
        assert_eq!(route.app.as_str(), "web");
        assert!(routes.lookup("other.localhost").is_none());
        let picks: Vec<_> = (0..4).map(|_| route.pick().unwrap()).collect();
        assert_eq!(
            picks,
            vec![(a, Some(b)), (b, Some(a)), (a, Some(b)), (b, Some(a))]
        );
        // Both hosts share one rotation.
        let other = routes.lookup("web.localhost").unwrap();
        assert_eq!(other.pick().unwrap().0, a);
    }

    #[test]
    fn swap_is_visible_to_next_load() {
        let table = RouteTable::default();
        assert!(table.load().lookup("web.localhost").is_none());
        table.replace(
            Routes::builder()
                .app(
                    AppName::parse("web").unwrap(),
                    vec!["web.localhost".into()],
                    vec![],
                    false,
                )
                .build(),
        );
        assert!(table.load().lookup("web.localhost").is_some());
    }

    #[test]
    fn per_host_redirects() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let routes = Routes::builder()
            .route(
                AppRoute::new(AppName::parse("shop").unwrap(), vec![a])
                    .host("shop.localhost", false)
                    .host("shop.example.com", true),
            )
            .build();
        assert_eq!(routes.redirects("shop.localhost"), Some(false));
        assert_eq!(routes.redirects("Shop.Example.com:80"), Some(true));
        assert_eq!(routes.redirects("other.example.com"), None);
        let route = routes.lookup("shop.example.com").unwrap();
        assert_eq!(route.response_timeout, DEFAULT_RESPONSE_TIMEOUT);
    }

    #[test]
    fn in_flight_counts_survive_swaps() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let app = || AppName::parse("web").unwrap();
        let table = RouteTable::new(
            Routes::builder()
                .app(app(), vec!["web.localhost".into()], vec![a, b], false)
                .build(),
        );
        let guard = {
            let routes = table.load();
            let route = routes.lookup("web.localhost").unwrap();
            InFlight::start(route.counter(0))
        };
        assert_eq!(table.in_flight(a), 1);
        assert_eq!(table.in_flight(b), 0);
        // `a` leaves the routes: its count stays until the request ends.
        table.replace(
            Routes::builder()
                .app(app(), vec!["web.localhost".into()], vec![b], false)
                .build(),
        );
        table.replace(Routes::empty());
        assert_eq!(table.in_flight(a), 1);
        drop(guard);
        assert_eq!(table.in_flight(a), 0);
        assert_eq!(table.in_flight("127.0.0.1:3".parse().unwrap()), 0);
    }
}
