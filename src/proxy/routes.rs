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
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::names::AppName;

/// Longest Host we try to route. DNS names are at most 253 bytes; a port
/// and a trailing dot add a few. Anything longer cannot match a route.
const MAX_HOST_LEN: usize = 262;

/// One app's route: where its healthy `web` instances listen.
#[derive(Debug)]
pub struct Route {
    pub app: AppName,
    pub endpoints: Vec<SocketAddr>,
    pub redirect_https: bool,
    /// Round-robin cursor. Shared by every host of the app so that custom
    /// domains and `APP.DOMAIN` spread load over the same rotation.
    next: AtomicUsize,
}

impl Route {
    pub fn new(app: AppName, endpoints: Vec<SocketAddr>, redirect_https: bool) -> Route {
        Route {
            app,
            endpoints,
            redirect_https,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoint to try first and, when there is another one, the
    /// endpoint to fall back to if connecting to the first fails.
    ///
    /// `Relaxed` is enough: the cursor only spreads load, it orders nothing.
    pub fn pick(&self) -> Option<(SocketAddr, Option<SocketAddr>)> {
        let n = self.endpoints.len();
        match n {
            0 => None,
            1 => Some((self.endpoints[0], None)),
            _ => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
                Some((self.endpoints[i], Some(self.endpoints[(i + 1) % n])))
            }
        }
    }
}

/// An immutable host → route table.
#[derive(Debug, Default)]
pub struct Routes {
    hosts: HashMap<Box<str>, Arc<Route>>,
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
        let mut buf = [0u8; MAX_HOST_LEN];
        let host = normalize_host(host.as_bytes(), &mut buf)?;
        self.hosts.get(host)
    }

    /// Same as [`Routes::lookup`] for a Host given as raw header bytes.
    pub(crate) fn lookup_bytes(&self, host: &[u8]) -> Option<&Arc<Route>> {
        let mut buf = [0u8; MAX_HOST_LEN];
        let host = normalize_host(host, &mut buf)?;
        self.hosts.get(host)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// Builds a [`Routes`] table. Hosts must already be normalized (lowercase,
/// no port, no trailing dot); the deploy side does that once, at the edge.
#[derive(Debug, Default)]
pub struct RoutesBuilder {
    hosts: HashMap<Box<str>, Arc<Route>>,
}

impl RoutesBuilder {
    /// Route every host in `hosts` to `app`'s endpoints. A host given twice
    /// (by two apps) goes to the app added last; the caller owns uniqueness
    /// of domains.
    pub fn app(
        mut self,
        app: AppName,
        hosts: Vec<String>,
        endpoints: Vec<SocketAddr>,
        redirect_https: bool,
    ) -> Self {
        let route = Arc::new(Route::new(app, endpoints, redirect_https));
        for host in hosts {
            self.hosts.insert(host.into_boxed_str(), Arc::clone(&route));
        }
        self
    }

    pub fn build(self) -> Routes {
        Routes { hosts: self.hosts }
    }
}

/// The live routes: an atomically swapped snapshot.
#[derive(Debug)]
pub struct RouteTable {
    current: ArcSwap<Routes>,
}

impl RouteTable {
    pub fn new(routes: Routes) -> RouteTable {
        RouteTable {
            current: ArcSwap::from_pointee(routes),
        }
    }

    /// Swap in a new table. Requests already routed keep the old one;
    /// the next request sees the new one.
    pub fn replace(&self, routes: Routes) {
        self.current.store(Arc::new(routes));
    }

    /// The current table. The guard is cheap (no refcount traffic in the
    /// common case); don't hold it across an await.
    pub fn load(&self) -> arc_swap::Guard<Arc<Routes>> {
        self.current.load()
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable::new(Routes::empty())
    }
}

/// Normalize a Host for lookup: strip the port, strip one trailing dot,
/// lowercase. Returns `None` for hosts that can't be in the table (empty,
/// too long, not ASCII).
///
/// Allocation-free: hosts that are already lowercase (nearly all of them)
/// are borrowed; others are lowercased into `buf`.
pub(crate) fn normalize_host<'a>(
    raw: &'a [u8],
    buf: &'a mut [u8; MAX_HOST_LEN],
) -> Option<&'a str> {
    let mut host = raw;
    if host.first() == Some(&b'[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        let end = host.iter().position(|&b| b == b']')?;
        host = &host[..=end];
    } else if let Some(colon) = host.iter().rposition(|&b| b == b':') {
        let port = &host[colon + 1..];
        if !port.iter().all(u8::is_ascii_digit) {
            return None;
        }
        host = &host[..colon];
    }
    if let Some(stripped) = host.strip_suffix(b".") {
        host = stripped;
    }
    if host.is_empty() || host.len() > MAX_HOST_LEN || !host.is_ascii() {
        return None;
    }
    let host = if host.iter().any(u8::is_ascii_uppercase) {
        let out = &mut buf[..host.len()];
        out.copy_from_slice(host);
        out.make_ascii_lowercase();
        &*out
    } else {
        host
    };
    // ASCII was checked above, so this cannot fail; stay panic-free anyway.
    std::str::from_utf8(host).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Option<String> {
        let mut buf = [0u8; MAX_HOST_LEN];
        normalize_host(s.as_bytes(), &mut buf).map(str::to_owned)
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
        assert_eq!(norm("é.example"), None);
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
}
