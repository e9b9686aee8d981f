//! Which web pods may take traffic: the ready endpoints of each app's `web`
//! Service, from its EndpointSlices.
//!
//! ```text
//! kube-runtime watcher (EndpointSlices labelled cygni.app, all namespaces)
//!    │ Init / InitApply / InitDone / Apply / Delete
//!    ▼
//! EndpointStore::apply(event) ─► slices by namespace/name ─► ready endpoints per app
//!    │ the difference since the last event
//!    ▼
//! Changes { gone: [pod], apps: [app] } ─► InstanceEvent::Exited(pod) (out of the routes now)
//!                                      └► InstanceEvent::ReadyChanged(app) (routes take what is ready)
//! ```
//!
//! An endpoint is routed only when its slice says `ready: true` and not
//! `terminating`; an endpoint with no conditions, or any other, is not.
//! During a relist (`Init` … `InitDone`) nothing changes: the store swaps
//! in the new view at `InitDone`, so a reconnect never empties the routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use super::manifest::{LABEL_APP, WEB_PORT, WEB_SERVICE};
use crate::names::AppName;

/// The ready endpoints of one app: pod name → address.
pub type Ready = BTreeMap<String, SocketAddr>;

/// What an event changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Pods that were ready and are not any more (or are gone).
    pub gone: Vec<(AppName, String)>,
    /// Apps whose set of ready endpoints changed.
    pub apps: Vec<AppName>,
}

#[derive(Default)]
pub struct EndpointStore {
    slices: BTreeMap<(String, String), EndpointSlice>,
    /// Slices seen since `Init`, swapped in at `InitDone`.
    relist: Option<BTreeMap<(String, String), EndpointSlice>>,
    ready: BTreeMap<AppName, Ready>,
    synced: bool,
}

fn key(s: &EndpointSlice) -> (String, String) {
    (
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

impl EndpointStore {
    /// Ready endpoints of `app` now.
    pub fn ready(&self, app: &AppName) -> Ready {
        self.ready.get(app).cloned().unwrap_or_default()
    }

    /// Has the first full list arrived?
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Take one watcher event; returns what changed.
    pub fn apply(&mut self, event: Event<EndpointSlice>) -> Changes {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                return Changes::default();
            }
            Event::InitApply(s) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&s), s);
                return Changes::default();
            }
            Event::InitDone => {
                self.slices = self.relist.take().unwrap_or_default();
                self.synced = true;
            }
            Event::Apply(s) => {
                self.slices.insert(key(&s), s);
            }
            Event::Delete(s) => {
                self.slices.remove(&key(&s));
            }
        }
        let now = ready_endpoints(self.slices.values());
        let changes = diff(&self.ready, &now);
        self.ready = now;
        changes
    }
}

/// The ready endpoints of every app's web Service in `slices`. Pure.
pub fn ready_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeMap<AppName, Ready> {
    let mut out: BTreeMap<AppName, Ready> = BTreeMap::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let Some(app) = labels
            .and_then(|l| l.get(LABEL_APP))
            .and_then(|a| AppName::parse(a).ok())
        else {
            continue;
        };
        let service = labels.and_then(|l| l.get("kubernetes.io/service-name"));
        if service.map(String::as_str) != Some(WEB_SERVICE) {
            continue;
        }
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("http"))
            .or_else(|| slice.ports.iter().flatten().next())
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(WEB_PORT);
        let ready = out.entry(app).or_default();
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            let routable = c.and_then(|c| c.ready) == Some(true)
                && c.and_then(|c| c.terminating) != Some(true);
            if !routable {
                continue;
            }
            let Some(pod) = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
            else {
                continue;
            };
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            ready.insert(pod, SocketAddr::new(ip, port));
        }
    }
    out
}

fn diff(before: &BTreeMap<AppName, Ready>, after: &BTreeMap<AppName, Ready>) -> Changes {
    let empty = Ready::new();
    let apps: BTreeSet<&AppName> = before.keys().chain(after.keys()).collect();
    let mut changes = Changes::default();
    for app in apps {
        let b = before.get(app).unwrap_or(&empty);
        let a = after.get(app).unwrap_or(&empty);
        if a == b {
            continue;
        }
        for (pod, addr) in b {
            if a.get(pod) != Some(addr) {
                changes.gone.push((app.clone(), pod.clone()));
            }
        }
        changes.apps.push(app.clone());
    }
    changes
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// An EndpointSlice of shop's web Service: (pod, ip, ready, terminating).
    pub(crate) fn slice(name: &str, eps: &[(&str, &str, Option<bool>, bool)]) -> EndpointSlice {
        let endpoints: Vec<serde_json::Value> = eps
            .iter()
            .map(|(pod, ip, ready, terminating)| {
                let mut conditions = json!({"terminating": terminating});
                if let Some(r) = ready {
                    conditions["ready"] = json!(r);
                }
                json!({"addresses": [ip], "conditions": conditions,
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": "cygni-shop"}})
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "cygni-shop",
                         "labels": {"cygni.app": "shop", "kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 5000, "protocol": "TCP"}],
        }))
        .expect("slice")
    }

    fn shop() -> AppName {
        AppName::parse("shop").unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_ready_endpoints_that_are_not_terminating_are_routed() {
        let s = slice(
            "web-abc",
            &[
                ("web-1", "10.42.0.5", Some(true), false),
                ("web-2", "10.42.0.6", Some(false), false),
                ("web-3", "10.42.0.7", None, false),
                ("web-4", "10.42.0.8", Some(true), true),
            ],
        );
        let r = ready_endpoints([&s]);
        assert_eq!(
            r.get(&shop()).unwrap(),
            &Ready::from([("web-1".into(), addr("10.42.0.5:5000"))])
        );
    }

    #[test]
    fn slices_of_other_services_or_without_an_app_are_ignored() {
        let mut other = slice("db-x", &[("db-1", "10.42.0.9", Some(true), false)]);
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("kubernetes.io/service-name".into(), "db".into());
        let mut stray = slice("web-y", &[("web-9", "10.42.0.10", Some(true), false)]);
        stray.metadata.labels.as_mut().unwrap().remove("cygni.app");
        assert!(ready_endpoints([&other, &stray])
            .values()
            .all(|r| r.is_empty()));
    }

    #[test]
    fn events_say_which_pods_left_and_which_apps_changed() {
        let mut store = EndpointStore::default();
        assert_eq!(store.apply(Event::Init), Changes::default());
        let s1 = slice("web-abc", &[("web-1", "10.42.0.5", Some(true), false)]);
        assert_eq!(store.apply(Event::InitApply(s1)), Changes::default());
        assert!(store.ready(&shop()).is_empty(), "nothing before InitDone");
        let c = store.apply(Event::InitDone);
        assert_eq!(c.apps, vec![shop()]);
        assert!(store.synced());
        assert_eq!(store.ready(&shop()).len(), 1);

        // A new pod turns ready beside it: nothing gone, the app changed.
        let s2 = slice(
            "web-abc",
            &[
                ("web-1", "10.42.0.5", Some(true), false),
                ("web-2", "10.42.0.6", Some(true), false),
            ],
        );
        let c = store.apply(Event::Apply(s2));
        assert_eq!(
            c,
            Changes {
                gone: vec![],
                apps: vec![shop()]
            }
        );

        // The old one starts terminating: gone at once.
        let s3 = slice(
            "web-abc",
            &[
                ("web-1", "10.42.0.5", Some(false), true),
                ("web-2", "10.42.0.6", Some(true), false),
            ],
        );
        let c = store.apply(Event::Apply(s3.clone()));
        assert_eq!(c.gone, vec![(shop(), "web-1".to_owned())]);
        assert_eq!(
            store.ready(&shop()),
            Ready::from([("web-2".into(), addr("10.42.0.6:5000"))])
        );

        // The same slice again changes nothing.
        assert_eq!(store.apply(Event::Apply(s3.clone())), Changes::default());

        // The slice is deleted (the Service went): everything gone.
        let c = store.apply(Event::Delete(s3));
        assert_eq!(c.gone, vec![(shop(), "web-2".to_owned())]);
        assert!(store.ready(&shop()).is_empty());
    }

    #[test]
    fn a_relist_keeps_the_old_view_until_it_is_done() {
        let mut store = EndpointStore::default();
        store.apply(Event::Apply(slice(
            "web-abc",
            &[("web-1", "10.42.0.5", Some(true), false)],
        )));
        store.apply(Event::Init);
        assert_eq!(store.ready(&shop()).len(), 1, "kept during the relist");
        let c = store.apply(Event::InitDone);
        assert_eq!(c.gone, vec![(shop(), "web-1".to_owned())]);
    }
}
