//! ACME HTTP-01 challenge responses (token → key authorization).
//!
//! ```text
//! acme (order) ──► Challenges::insert(token, key_auth) ──► ArcSwap snapshot
//! CA ──► GET /.well-known/acme-challenge/TOKEN ──► proxy, before any routing
//! ```
//!
//! Writes are rare (a few per certificate order), reads happen on every
//! challenge request, so writes copy the map and swap it in; reads are a
//! lock-free load.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;

/// Path prefix the ACME CA requests (RFC 8555, section 8.3).
pub(crate) const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The pending HTTP-01 challenges. Share it through an `Arc`.
#[derive(Debug, Default)]
pub struct Challenges {
    tokens: ArcSwap<HashMap<Box<str>, Bytes>>,
}

impl Challenges {
    pub fn new() -> Challenges {
        Challenges::default()
    }

    /// Answer `GET /.well-known/acme-challenge/{token}` with `key_auth`.
    pub fn insert(&self, token: impl Into<String>, key_auth: impl Into<String>) {
        let token: Box<str> = token.into().into_boxed_str();
        let key_auth = Bytes::from(key_auth.into());
        self.tokens.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(token.clone(), key_auth.clone());
            next
        });
    }

    /// Stop answering for `token` (the order is done or abandoned).
    pub fn remove(&self, token: &str) {
        self.tokens.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(token);
            next
        });
    }

    /// The key authorization for `token`, if a challenge is pending.
    pub fn get(&self, token: &str) -> Option<Bytes> {
        self.tokens.load().get(token).cloned()
    }
}

impl Challenges {
    /// Convenience for callers that keep the store in an `Arc` from the start.
    pub fn shared() -> Arc<Challenges> {
        Arc::new(Challenges::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let c = Challenges::new();
        assert!(c.get("t").is_none());
        c.insert("t", "t.key");
        assert_eq!(c.get("t").as_deref(), Some(&b"t.key"[..]));
        c.remove("t");
        assert!(c.get("t").is_none());
    }
}
