//! `/healthz` and `/readyz`, as values: what a listener (the metrics one,
//! or the control host) sends back.
//!
//! - `/healthz`: the process is alive and its async workers answer; it
//!   checks nothing else, so a supervisor restarts only a stuck daemon.
//! - `/readyz`: every named part answers within [`CHECK_TIMEOUT`]
//!   (SQLite, the listeners, the runtime); 503 names the failing parts.

use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};

/// A part that does not answer within this long is not ready.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

type CheckFn = Box<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The readiness checks, by part name.
#[derive(Default)]
pub struct Health {
    checks: Vec<(&'static str, CheckFn)>,
}

/// An answer: status code and a short text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Add a part: `check` says `Err(why)` when it is not ready.
    pub fn check<F>(mut self, part: &'static str, check: F) -> Health
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.checks.push((part, Box::new(check)));
        self
    }

    /// `/healthz`: answering at all is the proof.
    pub fn healthz(&self) -> Answer {
        Answer {
            status: 200,
            body: "ok\n".into(),
        }
    }

    /// `/readyz`: every part, checked at once; one line per part.
    pub async fn readyz(&self) -> Answer {
        let results = join_all(self.checks.iter().map(|(part, check)| async move {
            let r = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
            };
            (*part, r)
        }))
        .await;
        let mut body = String::new();
        let mut ready = true;
        for (part, r) in results {
            match r {
                Ok(()) => body.push_str(&format!("{part}: ok\n")),
                Err(why) => {
                    ready = false;
                    let why = why.replace('\n', " ");
                    body.push_str(&format!("{part}: failed: {why}\n"));
                }
            }
        }
        Answer {
            status: if ready { 200 } else { 503 },
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_part_is_named() {
        let h = Health::new()
            .check("sqlite", || Box::pin(async { Ok(()) }))
            .check("runtime", || {
                Box::pin(async { Err("docker: connection refused".to_owned()) })
            });
        let a = h.readyz().await;
        assert_eq!(a.status, 503);
        assert!(a.body.contains("sqlite: ok"), "{}", a.body);
        assert!(
            a.body
                .contains("runtime: failed: docker: connection refused"),
            "{}",
            a.body
        );
        let ok = Health::new().check("sqlite", || Box::pin(async { Ok(()) }));
        assert_eq!(ok.readyz().await.status, 200);
    }
}
