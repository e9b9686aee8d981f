//! Dashboard sign-in: one-time login codes (`dashboard:login`) and the
//! browser sessions they, or a token, open.
//!
//! ```text
//!  ssh dashboard:login ─► login_code(actor) ─► code (5 min, once) ─┐
//!  browser POST /login  code ─► redeem ────────────────────────────┼─► Session (12 h)
//!                       token ─► authenticate ─────────────────────┘       │
//!  every request: cookie ─► session_actor ─► re-read key/token grants ─► Actor (source dashboard)
//! ```
//!
//! Both live in memory: a restart signs every browser out, which is what
//! a restart of the only process that could check them should do. A
//! session carries the principal it was made from, never a role: the role
//! and grants are read again on every request, so removing the key or
//! revoking the token ends its sessions at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use subtle::ConstantTimeEq;

use super::{current_grants, Actor, Principal, Service, ServiceError, Source};
use crate::state;

/// How long a `dashboard:login` code can be redeemed.
pub const CODE_TTL_SECS: i64 = 5 * 60;
/// How long a session lasts from sign-in, however busy it is.
pub const SESSION_TTL_SECS: i64 = 12 * 3600;
/// Codes and sessions kept at most; past this, expired ones go first,
/// then the oldest.
const MAX_ENTRIES: usize = 10_000;
/// Random characters in codes, session ids and CSRF tokens (base62: about
/// 190 bits).
const SECRET_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignInError {
    /// Unknown, used or expired: the same answer for all three.
    #[error("this sign-in link is not valid (unknown, already used or expired): run `dashboard:login` again")]
    BadCode,
    #[error(transparent)]
    Token(#[from] super::tokens::AuthError),
    /// The key or token that made the code is gone.
    #[error("the credential behind this link was removed or revoked")]
    Revoked,
}

/// Who a code or a session acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Who {
    name: String,
    principal: Principal,
}

struct Code {
    who: Who,
    expires_at: i64,
}

/// A signed-in browser, as the front door sees it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The cookie's value.
    pub id: String,
    /// What every state-changing request must carry.
    pub csrf: String,
    pub expires_at: i64,
    who: Who,
}

/// The in-memory store. Times are Unix seconds passed in, so the rules
/// (expiry, single use) are tested without waiting.
#[derive(Default)]
pub struct Sessions {
    codes: Mutex<HashMap<String, Code>>,
    sessions: Mutex<HashMap<String, Session>>,
}

fn random_secret() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    (0..SECRET_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Make room for one more: drop what expired, then the soonest to expire.
fn bound<V>(map: &mut HashMap<String, V>, now: i64, expires: impl Fn(&V) -> i64) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    map.retain(|_, v| expires(v) > now);
    while map.len() >= MAX_ENTRIES {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| expires(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Sessions {
    fn issue_code(&self, who: Who, now: i64) -> (String, i64) {
        let code = random_secret();
        let expires_at = now + CODE_TTL_SECS;
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        bound(&mut codes, now, |c| c.expires_at);
        codes.insert(code.clone(), Code { who, expires_at });
        (code, expires_at)
    }

    /// Take a code: it is gone afterwards, whether it was still good or not.
    fn redeem_code(&self, code: &str, now: i64) -> Result<Who, SignInError> {
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        match codes.remove(code) {
            Some(c) if c.expires_at > now => Ok(c.who),
            _ => Err(SignInError::BadCode),
        }
    }

    fn open(&self, who: Who, now: i64) -> Session {
        let s = Session {
            id: random_secret(),
            csrf: random_secret(),
            expires_at: now + SESSION_TTL_SECS,
            who,
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        bound(&mut sessions, now, |s| s.expires_at);
        sessions.insert(s.id.clone(), s.clone());
        s
    }

    /// The live session with this id; an expired one is dropped.
    fn get(&self, id: &str, now: i64) -> Option<Session> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(id) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    fn close(&self, id: &str) -> Option<Session> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }
}

impl Session {
    /// `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(self.csrf.as_bytes())))
    }

    pub fn name(&self) -> &str {
        &self.who.name
    }
}

impl Service {
    /// A one-time code that signs a browser in as `actor` (its key or
    /// token, with the role it has when the browser uses it).
    pub async fn dashboard_login_code(&self, actor: &Actor) -> Result<(String, i64), ServiceError> {
        self.audited(actor, "dashboard:login", None, String::new(), async {
            Ok(self.sessions.issue_code(
                Who {
                    name: actor.name.clone(),
                    principal: actor.principal.clone(),
                },
                state::now(),
            ))
        })
        .await
    }

    /// Redeem a `dashboard:login` code into a session.
    pub async fn dashboard_sign_in_code(
        &self,
        code: &str,
        address: Option<IpAddr>,
    ) -> Result<(Session, Actor), SignInError> {
        let who = self.sessions.redeem_code(code, state::now())?;
        self.sign_in(who, address).await
    }

    /// Sign in with an API token.
    pub async fn dashboard_sign_in_token(
        &self,
        token: &str,
        address: Option<IpAddr>,
    ) -> Result<(Session, Actor), SignInError> {
        let actor = self
            .authenticate(Some(token), Source::Dashboard, address)
            .await?;
        let who = Who {
            name: actor.name,
            principal: actor.principal,
        };
        self.sign_in(who, address).await
    }

    async fn sign_in(
        &self,
        who: Who,
        address: Option<IpAddr>,
    ) -> Result<(Session, Actor), SignInError> {
        let session = self.sessions.open(who, state::now());
        let actor = self
            .session_actor(&session, address)
            .await
            .ok_or(SignInError::Revoked)?;
        self.record(
            &actor,
            "dashboard:sign-in",
            None,
            String::new(),
            "ok",
            String::new(),
        )
        .await;
        Ok((session, actor))
    }

    /// The session a cookie names, with the actor it acts as now; `None`
    /// when the session expired or its key or token is gone.
    pub async fn dashboard_session(
        &self,
        id: &str,
        address: Option<IpAddr>,
    ) -> Option<(Session, Actor)> {
        let session = self.sessions.get(id, state::now())?;
        match self.session_actor(&session, address).await {
            Some(actor) => Some((session, actor)),
            None => {
                self.sessions.close(id);
                None
            }
        }
    }

    pub async fn dashboard_sign_out(&self, actor: &Actor, id: &str) {
        if self.sessions.close(id).is_some() {
            self.record(
                actor,
                "dashboard:sign-out",
                None,
                String::new(),
                "ok",
                String::new(),
            )
            .await;
        }
    }

    async fn session_actor(&self, session: &Session, address: Option<IpAddr>) -> Option<Actor> {
        let principal = session.who.principal.clone();
        let grants = self
            .db
            .call(move |c| current_grants(c, &principal))
            .await
            .map_err(|e| tracing::error!(error = %e, "session grants lookup failed"))
            .ok()??;
        Some(Actor {
            name: session.who.name.clone(),
            principal: session.who.principal.clone(),
            role: grants.0,
            source: Source::Dashboard,
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Who {
        Who {
            name: "alice".into(),
            principal: Principal::Token { id: 7 },
        }
    }

    #[test]
    fn a_code_works_once() {
        let s = Sessions::default();
        let (code, expires) = s.issue_code(who(), 1000);
        assert_eq!(expires, 1000 + CODE_TTL_SECS);
        assert_eq!(s.redeem_code(&code, 1001).unwrap().name, "alice");
        assert_eq!(s.redeem_code(&code, 1002), Err(SignInError::BadCode));
        assert_eq!(s.redeem_code("nope", 1002), Err(SignInError::BadCode));
    }

    #[test]
    fn a_code_expires_after_five_minutes_and_is_then_gone() {
        let s = Sessions::default();
        let (code, _) = s.issue_code(who(), 1000);
        assert_eq!(
            s.redeem_code(&code, 1000 + CODE_TTL_SECS),
            Err(SignInError::BadCode)
        );
        let (code, _) = s.issue_code(who(), 1000);
        assert!(s.redeem_code(&code, 1000 + CODE_TTL_SECS - 1).is_ok());
        // Two codes are never the same.
        assert_ne!(s.issue_code(who(), 1).0, s.issue_code(who(), 1).0);
    }

    #[test]
    fn a_session_expires_and_signs_out() {
        let s = Sessions::default();
        let open = s.open(who(), 1000);
        assert_ne!(open.id, open.csrf);
        assert!(s.get(&open.id, 1000 + SESSION_TTL_SECS - 1).is_some());
        assert!(s.get(&open.id, 1000 + SESSION_TTL_SECS).is_none());
        // Expired is removed, not just hidden.
        assert!(s.get(&open.id, 0).is_none());
        let other = s.open(who(), 1000);
        assert!(s.close(&other.id).is_some());
        assert!(s.get(&other.id, 1001).is_none());
        assert!(s.get("made-up", 1001).is_none());
    }

    #[test]
    fn csrf_must_be_this_sessions_token() {
        let s = Sessions::default();
        let a = s.open(who(), 1000);
        let b = s.open(who(), 1000);
        assert!(a.csrf_matches(Some(&a.csrf)));
        assert!(!a.csrf_matches(Some(&b.csrf)));
        assert!(!a.csrf_matches(Some("")));
        assert!(!a.csrf_matches(None));
    }

    #[test]
    fn the_store_stays_bounded() {
        let s = Sessions::default();
        for i in 0..(MAX_ENTRIES as i64 + 5) {
            s.issue_code(who(), i);
        }
        assert!(s.codes.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
