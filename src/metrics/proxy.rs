//! The proxy's families and the per-app handles its request path records
//! into.
//!
//! ```text
//! RouteTable::replace ──► ProxyMetrics::app(name) ──► Arc<AppHandles> (cached per app)
//!                                                       │ stored in the route entry
//! request ──► route.metrics ──► requests[protocol][class].inc() ─┐ atomic adds only:
//!                               duration.observe(elapsed)       ─┤ no label hashing,
//!                               upstream[kind].inc()            ─┘ no lock, no allocation
//! ```
//!
//! Label sets are resolved once per app (when a routes snapshot is
//! published), never per request: a handle is a clone of the family's own
//! counter, so what the request path adds is what the scrape reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::histogram::{AtomicHistogram, REQUEST_BUCKETS};

/// The app label of requests no app answered (unknown or malformed Host,
/// ACME challenges). Not a valid app name, so it cannot collide with one.
pub const NO_APP: &str = "-";

/// How the client spoke to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.x over plain TCP.
    Http,
    /// HTTP/1.x over TLS.
    Https,
    /// HTTP/2 (always over TLS).
    H2,
}

impl Protocol {
    const ALL: [Protocol; 3] = [Protocol::Http, Protocol::Https, Protocol::H2];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::H2 => "h2",
        }
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// A status code's class, `1xx` to `5xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Class(u8);

impl Class {
    fn index(status: u16) -> usize {
        (usize::from(status / 100)).clamp(1, 5) - 1
    }
}

impl EncodeLabelValue for Class {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let text = ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(self.0).min(4)];
        std::fmt::Write::write_str(encoder, text)
    }
}

/// What went wrong between the proxy and an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamError {
    /// The connection was refused or failed (or its HTTP handshake).
    Connect,
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// The app did not start its response within the route's deadline.
    ResponseTimeout,
}

impl UpstreamError {
    const ALL: [UpstreamError; 3] = [
        UpstreamError::Connect,
        UpstreamError::ConnectTimeout,
        UpstreamError::ResponseTimeout,
    ];

    fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::ResponseTimeout => "response_timeout",
        }
    }
}

impl EncodeLabelValue for UpstreamError {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    app: String,
    class: Class,
    protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    app: String,
    kind: UpstreamError,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabel {
    listener: Protocol,
}

/// One app's ready-made handles. Everything here is an `Arc` to an atomic
/// that the family also holds.
#[derive(Debug)]
pub struct AppHandles {
    requests: [[Counter; 5]; 3],
    duration: AtomicHistogram,
    upstream: [Counter; 3],
}

impl AppHandles {
    /// One request answered with `status`, after `elapsed` (to the
    /// response head).
    #[inline]
    pub fn request(&self, protocol: Protocol, status: u16, elapsed: Duration) {
        self.requests[protocol as usize][Class::index(status)].inc();
        self.duration.observe(elapsed);
    }

    #[inline]
    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream[kind as usize].inc();
    }

    /// Requests answered so far, every protocol and class (read by the
    /// preview idle sweep, not on the request path).
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().flatten().map(|c| c.get()).sum()
    }
}

type HistogramFamily = Family<AppLabel, AtomicHistogram, fn() -> AtomicHistogram>;

fn request_histogram() -> AtomicHistogram {
    AtomicHistogram::new(REQUEST_BUCKETS)
}

/// The proxy's families, and a cache of per-app handles.
#[derive(Debug)]
pub struct ProxyMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    upstream: Family<UpstreamLabels, Counter>,
    connections: Family<ListenerLabel, Gauge>,
    apps: Mutex<HashMap<String, Arc<AppHandles>>>,
}

impl ProxyMetrics {
    pub(super) fn register(registry: &mut Registry) -> ProxyMetrics {
        let m = ProxyMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(request_histogram),
            upstream: Family::default(),
            connections: Family::default(),
            apps: Mutex::default(),
        };
        registry.register(
            "cygni_proxy_requests",
            "Requests answered by the proxy, by app, status class and client protocol",
            m.requests.clone(),
        );
        registry.register(
            "cygni_proxy_request_duration_seconds",
            "Time from a request's arrival to its response head, by app",
            m.duration.clone(),
        );
        registry.register(
            "cygni_proxy_upstream_errors",
            "Failed connections to apps and app timeouts, by app and kind",
            m.upstream.clone(),
        );
        registry.register(
            "cygni_proxy_open_connections",
            "Client connections open now, by listener (http, https)",
            m.connections.clone(),
        );
        m
    }

    /// The handles of `app` (or [`NO_APP`]), made on first use and shared
    /// by every snapshot after. Takes a lock: call it when building routes,
    /// not per request.
    pub fn app(&self, app: &str) -> Arc<AppHandles> {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = apps.get(app) {
            return Arc::clone(h);
        }
        let name = app.to_owned();
        let requests = Protocol::ALL.map(|protocol| {
            [0u8, 1, 2, 3, 4].map(|class| {
                self.requests.get_or_create_owned(&RequestLabels {
                    app: name.clone(),
                    class: Class(class),
                    protocol,
                })
            })
        });
        let duration = self
            .duration
            .get_or_create_owned(&AppLabel { app: name.clone() });
        let upstream = UpstreamError::ALL.map(|kind| {
            self.upstream.get_or_create_owned(&UpstreamLabels {
                app: name.clone(),
                kind,
            })
        });
        let handles = Arc::new(AppHandles {
            requests,
            duration,
            upstream,
        });
        apps.insert(name, Arc::clone(&handles));
        handles
    }

    /// Requests answered for `app` since its handles were made, or `None`
    /// when no routes snapshot has named it yet.
    pub fn requests_of(&self, app: &str) -> Option<u64> {
        let apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        apps.get(app).map(|h| h.requests_total())
    }

    /// The open-connections gauge of one listener (`Http` or `Https`).
    pub fn connections(&self, listener: Protocol) -> Gauge {
        self.connections
            .get_or_create_owned(&ListenerLabel { listener })
    }

    /// Drop an app's series (it was destroyed).
    pub fn forget_app(&self, app: &str) {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        apps.remove(app);
        let name = app.to_owned();
        for protocol in Protocol::ALL {
            for class in 0..5 {
                self.requests.remove(&RequestLabels {
                    app: name.clone(),
                    class: Class(class),
                    protocol,
                });
            }
        }
        self.duration.remove(&AppLabel { app: name.clone() });
        for kind in UpstreamError::ALL {
            self.upstream.remove(&UpstreamLabels {
                app: name.clone(),
                kind,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_the_families_counters() {
        let mut registry = Registry::default();
        let m = ProxyMetrics::register(&mut registry);
        let shop = m.app("shop");
        assert!(Arc::ptr_eq(&shop, &m.app("shop")), "cached per app");
        shop.request(Protocol::Https, 204, Duration::from_millis(3));
        shop.request(Protocol::Https, 503, Duration::from_millis(3));
        shop.upstream_error(UpstreamError::ConnectTimeout);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "cygni_proxy_requests_total{app=\"shop\",class=\"2xx\",protocol=\"https\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("class=\"5xx\",protocol=\"https\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "cygni_proxy_upstream_errors_total{app=\"shop\",kind=\"connect_timeout\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("cygni_proxy_request_duration_seconds_count{app=\"shop\"} 2"),
            "{text}"
        );
        m.forget_app("shop");
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("shop"), "{text}");
    }
}
