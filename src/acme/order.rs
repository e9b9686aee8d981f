//! One ACME order for one host, through one challenge type.
//!
//! ```text
//! new order ──► each pending authorization:
//!                 HTTP-01     ──► Challenges::insert(token, key auth)   (proxy answers on :80)
//!                 TLS-ALPN-01 ──► CertStore::insert_challenge(host, cert) (resolver, acme-tls/1)
//!               ──► set ready ──► poll until ready or invalid
//!           ──► finalize with a fresh P-256 key (rcgen CSR) ──► poll the chain
//! challenge answers are removed on every exit path
//! ```

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::AcmeError;
use crate::proxy::tls;
use crate::proxy::{CertStore, Challenges};

/// How long the CA may take to validate, and then to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(90);

/// The challenge types Cygni answers, in the order an attempt tries them.
pub const CHALLENGES: [ChallengeType; 2] = [ChallengeType::Http01, ChallengeType::TlsAlpn01];

pub fn challenge_name(kind: &ChallengeType) -> &'static str {
    match kind {
        ChallengeType::Http01 => "http-01",
        ChallengeType::TlsAlpn01 => "tls-alpn-01",
        ChallengeType::Dns01 => "dns-01",
        _ => "other",
    }
}

/// What is answering for the CA right now; removed on drop so that no exit
/// path (error, timeout, cancelled task) leaves a challenge behind.
struct Answers<'a> {
    challenges: &'a Challenges,
    store: &'a CertStore,
    tokens: Vec<String>,
    alpn_hosts: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.remove(t);
        }
        for h in &self.alpn_hosts {
            self.store.remove_challenge(h);
        }
    }
}

/// Order a certificate for `host`, validated through `kind`. Returns the
/// PEM chain and the PEM private key.
pub async fn order(
    account: &Account,
    host: &str,
    kind: ChallengeType,
    challenges: &Challenges,
    store: &CertStore,
) -> Result<(String, String), AcmeError> {
    let ca = |source| AcmeError::Ca {
        host: host.to_owned(),
        source,
    };
    let ids = [Identifier::Dns(host.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.map_err(ca)?;
    let mut answers = Answers {
        challenges,
        store,
        tokens: Vec::new(),
        alpn_hosts: Vec::new(),
    };
    {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(ca)?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                // Validated recently (the CA reuses authorizations).
                AuthorizationStatus::Valid => continue,
                status => {
                    return Err(AcmeError::Validation {
                        host: host.to_owned(),
                        challenge: challenge_name(&kind),
                        detail: format!("authorization is {status:?}"),
                    })
                }
            }
            let mut challenge =
                authz
                    .challenge(kind.clone())
                    .ok_or_else(|| AcmeError::Validation {
                        host: host.to_owned(),
                        challenge: challenge_name(&kind),
                        detail: "the CA does not offer this challenge".to_owned(),
                    })?;
            let key_auth = challenge.key_authorization();
            match kind {
                ChallengeType::TlsAlpn01 => {
                    let cert = tls::challenge_cert(host, key_auth.digest().as_ref())?;
                    store.insert_challenge(host, cert);
                    answers.alpn_hosts.push(host.to_owned());
                }
                _ => {
                    challenges.insert(challenge.token.clone(), key_auth.as_str());
                    answers.tokens.push(challenge.token.clone());
                }
            }
            challenge.set_ready().await.map_err(ca)?;
        }
    }

    let retry = RetryPolicy::new().timeout(VALIDATION_TIMEOUT);
    let invalid = |detail: String| AcmeError::Validation {
        host: host.to_owned(),
        challenge: challenge_name(&kind),
        detail,
    };
    match order.poll_ready(&retry).await {
        Ok(OrderStatus::Ready) => {}
        Ok(_) => {
            // Say why: the failed challenge carries the CA's reason.
            let mut why = Vec::new();
            let mut authzs = order.authorizations();
            while let Some(Ok(mut authz)) = authzs.next().await {
                if let Ok(state) = authz.refresh().await {
                    why.extend(
                        state
                            .challenges
                            .iter()
                            .filter_map(|c| c.error.as_ref().map(|p| p.to_string())),
                    );
                }
            }
            return Err(invalid(if why.is_empty() {
                "the CA marked the order invalid".to_owned()
            } else {
                why.join("; ")
            }));
        }
        Err(instant_acme::Error::Api(problem)) => return Err(invalid(problem.to_string())),
        Err(e) => return Err(ca(e)),
    }
    drop(answers);

    // instant-acme makes the CSR with rcgen: a fresh ECDSA P-256 key per
    // certificate (cheap handshakes, see PERFORMANCE.md).
    let key_pem = order.finalize().await.map_err(ca)?;
    let chain_pem = order.poll_certificate(&retry).await.map_err(ca)?;
    Ok((chain_pem, key_pem))
}
