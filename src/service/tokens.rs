//! API tokens: created and revoked by admins, shown once, stored as
//! hashes, and turned back into an [`Actor`] on every request.
//!
//! A token reads `cyg_LOOKUP_SECRET`. `LOOKUP` finds the row (it is not a
//! secret); only SHA-256(`SECRET`) is stored, and it is compared in
//! constant time. An expired token is refused like an unknown one.

use std::net::IpAddr;

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Actor, Principal, Service, ServiceError, Source};
use crate::names::{AppName, KeyName};
use crate::state::{self, keys::Role};

const PREFIX: &str = "cyg_";
const LOOKUP_LEN: usize = 12;
/// 40 base62 characters: about 238 bits.
const SECRET_LEN: usize = 40;
/// The longest `--expires` accepted: ten years.
const MAX_EXPIRY_SECS: i64 = 3650 * 86_400;

/// Why a credential was refused. Callers show one line and never say
/// which part was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("the token is not valid (unknown, revoked or malformed)")]
    Invalid,
    #[error("the token has expired")]
    Expired,
}

/// A token as `tokens:create` returns it: the text, shown once.
pub struct Created {
    pub token: state::tokens::Token,
    pub secret: String,
}

fn random_base62(n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    (0..n)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Split `cyg_LOOKUP_SECRET`; `None` for anything else.
fn split(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(PREFIX)?;
    let (lookup, secret) = rest.split_once('_')?;
    let base62 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    (lookup.len() == LOOKUP_LEN && secret.len() == SECRET_LEN && base62(lookup) && base62(secret))
        .then_some((lookup, secret))
}

/// `30d`, `12h`, `90m`, `2w` → seconds.
pub fn parse_expiry(s: &str) -> Result<i64, ServiceError> {
    crate::span::parse_secs(s)
        .and_then(|n| i64::try_from(n).ok())
        .filter(|&n| n > 0 && n <= MAX_EXPIRY_SECS)
        .ok_or_else(|| {
            ServiceError::Invalid(format!(
                "{s:?} is not a duration: use e.g. 90m, 12h, 30d or 2w (at most 3650d)"
            ))
        })
}

impl Service {
    /// Create a token. Admin tokens need no grants; others get `apps`.
    pub async fn create_token(
        &self,
        actor: &Actor,
        name: &str,
        role: Role,
        apps: Vec<AppName>,
        expires_in: Option<i64>,
    ) -> Result<Created, ServiceError> {
        let detail = format!(
            "name={name} role={} apps={}",
            role.as_str(),
            apps.iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        self.audited(actor, "tokens:create", None, detail, async {
            self.require_admin(actor, "create tokens")?;
            let name = KeyName::parse(name)?;
            if role == Role::Admin && !apps.is_empty() {
                return Err(ServiceError::Invalid(
                    "admin tokens reach every app: drop --app, or use --role developer".into(),
                ));
            }
            let lookup = random_base62(LOOKUP_LEN);
            let secret = random_base62(SECRET_LEN);
            let text = format!("{PREFIX}{lookup}_{secret}");
            let secret_hash = hash(&secret);
            let expires_at = expires_in.map(|s| state::now() + s);
            let by = actor.name.clone();
            let token = self
                .db
                .call(move |c| {
                    state::tokens::add(
                        c,
                        state::tokens::NewToken {
                            name: name.as_str(),
                            lookup: &lookup,
                            secret_hash: &secret_hash,
                            role,
                            created_by: &by,
                            expires_at,
                            apps: &apps,
                        },
                    )
                })
                .await?;
            Ok(Created {
                token,
                secret: text,
            })
        })
        .await
    }

    pub async fn tokens(&self, actor: &Actor) -> Result<Vec<state::tokens::Token>, ServiceError> {
        self.require_admin(actor, "list tokens")?;
        Ok(self.db.call(|c| state::tokens::list(c)).await?)
    }

    pub async fn revoke_token(&self, actor: &Actor, name: &str) -> Result<(), ServiceError> {
        self.audited(
            actor,
            "tokens:revoke",
            None,
            format!("name={name}"),
            async {
                self.require_admin(actor, "revoke tokens")?;
                let n = name.to_owned();
                self.db.call(move |c| state::tokens::remove(c, &n)).await?;
                Ok(())
            },
        )
        .await
    }

    /// Turn a presented token into an actor, or refuse it. A refusal
    /// writes nothing; a success records the use (at most once a minute).
    pub async fn authenticate(
        &self,
        text: Option<&str>,
        source: Source,
        address: Option<IpAddr>,
    ) -> Result<Actor, AuthError> {
        let text = text.ok_or(AuthError::Missing)?;
        let (lookup, secret) = split(text.trim()).ok_or(AuthError::Invalid)?;
        let l = lookup.to_owned();
        let found = self
            .db
            .call(move |c| state::tokens::by_lookup(c, &l))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "token lookup failed");
                AuthError::Invalid
            })?;
        let Some(token) = found else {
            return Err(AuthError::Invalid);
        };
        if !bool::from(hash(secret).ct_eq(&token.secret_hash)) {
            return Err(AuthError::Invalid);
        }
        let now = state::now();
        if token.expired(now) {
            return Err(AuthError::Expired);
        }
        let id = token.id;
        if let Err(e) = self
            .db
            .call(move |c| state::tokens::touch(c, id, now))
            .await
        {
            tracing::warn!(error = %e, "cannot record a token's last use");
        }
        Ok(Actor {
            name: token.name,
            principal: Principal::Token { id: token.id },
            role: token.role,
            source,
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text_shape() {
        let text = format!(
            "{PREFIX}{}_{}",
            random_base62(LOOKUP_LEN),
            random_base62(SECRET_LEN)
        );
        assert!(split(&text).is_some());
        for bad in [
            "",
            "cyg_",
            "cyg_abc_def",
            "xyz_AAAAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "cyg_AAAAAAAAAAA!_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "cyg_AAAAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(split(bad).is_none(), "{bad:?}");
        }
        // Two tokens never share their secret.
        assert_ne!(random_base62(SECRET_LEN), random_base62(SECRET_LEN));
    }

    #[test]
    fn expiry() {
        assert_eq!(parse_expiry("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_expiry("90m").unwrap(), 5400);
        assert_eq!(parse_expiry("2w").unwrap(), 14 * 86_400);
        for bad in [
            "",
            "d",
            "0d",
            "-1d",
            "30",
            "30y",
            "3651d",
            "99999999999999999w",
        ] {
            let e = parse_expiry(bad).unwrap_err().to_string();
            assert!(!e.contains('\n') && e.contains("duration"), "{bad:?}: {e}");
        }
    }
}
