//! Request budgets: a token bucket per client address and one per token,
//! so one client cannot starve the others. Past the budget: 429 with
//! `Retry-After`.
//!
//! Buckets live in memory (a restart refills them) in maps bounded by
//! evicting full buckets, which carry no information.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Requests a bucket holds, and how many come back per second.
const ADDRESS_BURST: f64 = 240.0;
const ADDRESS_RATE: f64 = 40.0;
const ACTOR_BURST: f64 = 120.0;
const ACTOR_RATE: f64 = 20.0;
/// A refused credential costs this many requests of the address's budget.
const FAILED_AUTH_COST: f64 = 20.0;
/// Past this many tracked keys, full buckets are forgotten.
const MAX_TRACKED: usize = 10_000;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Buckets<K> {
    burst: f64,
    rate: f64,
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K: std::hash::Hash + Eq> Buckets<K> {
    fn new(burst: f64, rate: f64) -> Self {
        Buckets {
            burst,
            rate,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Take `cost`; `Err(seconds to wait)` when the bucket is short.
    fn take(&self, key: K, cost: f64) -> Result<(), u64> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            let (burst, rate) = (self.burst, self.rate);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            Ok(())
        } else {
            Err(((cost - b.tokens) / self.rate).ceil() as u64)
        }
    }
}

pub struct Limits {
    addresses: Buckets<IpAddr>,
    actors: Buckets<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            addresses: Buckets::new(ADDRESS_BURST, ADDRESS_RATE),
            actors: Buckets::new(ACTOR_BURST, ACTOR_RATE),
        }
    }
}

impl Limits {
    pub fn by_address(&self, ip: IpAddr) -> Result<(), u64> {
        self.addresses.take(ip.to_canonical(), 1.0)
    }

    pub fn failed_auth(&self, ip: IpAddr) {
        let _ = self.addresses.take(ip.to_canonical(), FAILED_AUTH_COST);
    }

    pub fn by_actor(&self, name: &str) -> Result<(), u64> {
        self.actors.take(name.to_owned(), 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_runs_dry_then_says_how_long_to_wait() {
        let b = Buckets::new(3.0, 1.0);
        for _ in 0..3 {
            assert!(b.take("a", 1.0).is_ok());
        }
        let wait = b.take("a", 1.0).unwrap_err();
        assert!((1..=2).contains(&wait), "{wait}");
        // Another key has its own budget.
        assert!(b.take("b", 1.0).is_ok());
    }
}
