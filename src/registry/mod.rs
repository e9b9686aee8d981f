//! The images Cygni builds, served by Cygni itself: an OCI image layout in
//! the data dir and a pull-only OCI distribution endpoint over it, so a
//! cluster needs no external registry.
//!
//! ```text
//! deploy: build ──► cygni/APP:vN in the engine
//!           └─► Registry::publish: engine export (docker save tar stream)
//!                 ──► import (staged, digests verified) ──► layout: blobs + index.json tag APP:vN
//!                 ──► manifest digest ──► the release (image_digest)
//! kube:   Registry::reference(app, digest) = HOST:PORT/APP@sha256:…
//! nodes:  GET /v2/APP/manifests/…, /v2/APP/blobs/… ──► server (Basic credential, GET/HEAD only)
//! ```
//!
//! Submodules: `layout` (the store on disk: atomic writes, the index
//! snapshot, garbage collection), `import` (an exported archive, legacy or
//! OCI form, into the layout), `server` (the HTTP endpoint).
//!
//! The credential is one user (`cygni`) and a random password generated at
//! the first start, in `DATA/registry-credential` (0600) as `cygni:PASSWORD`,
//! the form `skopeo --creds` and `docker login` take.

pub mod import;
pub mod layout;
pub mod server;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::sync::mpsc;

pub use layout::{Descriptor, Digest, Layout};

use crate::names::AppName;

/// The user name of the registry credential.
pub const USER: &str = "cygni";
/// Where the credential is kept, in the data dir.
pub const CREDENTIAL_FILE: &str = "registry-credential";
/// How long exporting and importing one image may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the registry store is damaged: {what}")]
    Corrupt { what: String },
    #[error("the exported image is unusable: {reason}")]
    Archive { reason: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("the Docker engine could not {action}: {source}")]
    Engine {
        action: &'static str,
        #[source]
        source: Box<bollard::errors::Error>,
    },
    #[error("publishing {image} took longer than {after:?}")]
    Timeout { image: String, after: Duration },
    #[error("credential file {path}: {reason}")]
    Credential { path: PathBuf, reason: String },
}

/// The store, the credential and the address the endpoint is reached at.
pub struct Registry {
    layout: Layout,
    /// `cygni:PASSWORD`, as a Basic credential decodes.
    credential: String,
    /// `HOST:PORT` in image references.
    address: String,
}

impl Registry {
    /// Opens the layout at `DATA/registry` and loads (or, at the first
    /// start, generates) the credential. `address` is what image
    /// references name (`HOST:PORT`).
    pub fn open(data_dir: &Path, address: String) -> Result<Registry, RegistryError> {
        let layout = Layout::open(&data_dir.join("registry"))?;
        let credential = load_or_create_credential(&data_dir.join(CREDENTIAL_FILE))?;
        Ok(Registry {
            layout,
            credential,
            address,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether a decoded Basic credential (`user:password`) is ours, in
    /// time that does not depend on where it differs: both sides are hashed
    /// first, so lengths leak nothing either.
    pub fn credential_matches(&self, presented: &[u8]) -> bool {
        let a = Digest::of(presented);
        let b = Digest::of(self.credential.as_bytes());
        a.as_str()
            .bytes()
            .zip(b.as_str().bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }

    /// The pull reference of an app's image: `HOST:PORT/APP@sha256:…`.
    pub fn reference(&self, app: &AppName, digest: &Digest) -> String {
        format!("{}/{app}@{digest}", self.address)
    }

    /// The pull reference of a release's image, if it was published.
    pub fn release_reference(&self, release: &crate::state::releases::Release) -> Option<String> {
        let digest = Digest::parse(release.image_digest.as_deref()?)?;
        Some(self.reference(&release.app, &digest))
    }

    /// Exports `image` from the engine and stores it tagged `APP:vN`.
    /// Returns the manifest's digest. Nothing is tagged unless every blob
    /// arrived whole and matched its digest.
    pub async fn publish(
        self: &Arc<Self>,
        app: &AppName,
        version: u32,
        image: &str,
    ) -> Result<Digest, RegistryError> {
        let engine = |action| {
            move |source| RegistryError::Engine {
                action,
                source: Box::new(source),
            }
        };
        let docker = bollard::Docker::connect_with_local_defaults()
            .map_err(engine("be reached"))?
            .negotiate_version()
            .await
            .map_err(engine("be reached"))?;
        // The export streams into the import on the blocking pool through
        // a small bounded channel: the archive is never held whole.
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
        let name = image.to_owned();
        let pump = tokio::spawn(async move {
            let mut stream = std::pin::pin!(docker.export_image(&name));
            let deadline = tokio::time::Instant::now() + PUBLISH_TIMEOUT;
            loop {
                let item = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(chunk))) if chunk.is_empty() => continue,
                    Ok(Some(Ok(chunk))) => Ok(chunk),
                    Ok(Some(Err(e))) => Err(std::io::Error::other(e)),
                    // The end: an empty chunk says so (a channel that just
                    // closes is a cut stream).
                    Ok(None) => Ok(Bytes::new()),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the export took too long",
                    )),
                };
                let last = !matches!(&item, Ok(c) if !c.is_empty());
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        let registry = self.clone();
        let (app, image) = (app.clone(), image.to_owned());
        let tag = format!("v{version}");
        let imported = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                chunk: Bytes::new(),
                ended: false,
            };
            import::import_archive(&registry.layout, reader, &image, &app, &tag)
        })
        .await;
        pump.abort();
        let descriptor = imported.map_err(|e| RegistryError::Archive {
            reason: format!("the import stopped: {e}"),
        })?;
        Ok(descriptor.map_err(engine_error)?.digest)
    }

    /// Keeps only the tags of `app` that point at a manifest in `keep`,
    /// and removes blobs no tag reaches any more.
    pub async fn retain(
        self: &Arc<Self>,
        app: &AppName,
        keep: Vec<Digest>,
    ) -> Result<usize, RegistryError> {
        let (registry, app) = (self.clone(), app.clone());
        tokio::task::spawn_blocking(move || registry.layout.retain(&app, &keep))
            .await
            .map_err(|e| RegistryError::Corrupt {
                what: format!("garbage collection stopped: {e}"),
            })?
    }
}

/// A failed read of the export that the engine caused says so.
fn engine_error(e: RegistryError) -> RegistryError {
    if let RegistryError::Archive { reason } = &e {
        if reason.contains("No such image") {
            return RegistryError::Archive {
                reason: "the engine does not have the image".into(),
            };
        }
    }
    e
}

/// The export stream as a blocking `Read`, for the tar reader.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    chunk: Bytes,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) if chunk.is_empty() => self.ended = true,
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the export stream was cut",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// Reads `cygni:PASSWORD` from `path`, or writes a new random one (0600,
/// never replacing a file that appeared meanwhile).
fn load_or_create_credential(path: &Path) -> Result<String, RegistryError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |reason: String| RegistryError::Credential {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let line = text.trim_end();
            let valid = line
                .strip_prefix(USER)
                .and_then(|r| r.strip_prefix(':'))
                .is_some_and(|p| p.len() >= 16 && !p.contains(char::is_whitespace));
            if !valid {
                return Err(err(format!(
                    "expected one line {USER}:PASSWORD (16 characters or more); remove the file to get a new one"
                )));
            }
            // Whoever made it, it stays private.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| err(e.to_string()))?;
            Ok(line.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use base64::Engine;
            use rand::RngCore;
            let mut secret = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
            let credential = format!("{USER}:{password}");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            file.write_all(format!("{credential}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| err(e.to_string()))?;
            Ok(credential)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_made_once_private_and_compared_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path(), "127.0.0.1:5000".into()).unwrap();
        let path = dir.path().join(CREDENTIAL_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let stored = std::fs::read_to_string(&path).unwrap();
        let stored = stored.trim_end();
        assert!(
            stored.starts_with("cygni:") && stored.len() > 40,
            "{stored}"
        );
        assert!(r.credential_matches(stored.as_bytes()));
        assert!(!r.credential_matches(&stored.as_bytes()[..stored.len() - 1]));
        assert!(!r.credential_matches(format!("{stored}x").as_bytes()));
        assert!(!r.credential_matches(b""));
        // The same one at the next start.
        drop(r);
        let again = Registry::open(dir.path(), "127.0.0.1:5000".into()).unwrap();
        assert!(again.credential_matches(stored.as_bytes()));
        // A damaged file stops the start with a line naming it.
        std::fs::write(&path, "admin\n").unwrap();
        let err = Registry::open(dir.path(), "x:1".into())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(CREDENTIAL_FILE) && err.contains("cygni:PASSWORD"),
            "{err}"
        );
    }

    #[test]
    fn references_name_the_address_the_app_and_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path(), "10.0.0.5:5000".into()).unwrap();
        let app = AppName::parse("shop").unwrap();
        let d = Digest::of(b"m");
        assert_eq!(r.reference(&app, &d), format!("10.0.0.5:5000/shop@{d}"));
    }

    #[test]
    fn a_cut_export_stream_is_an_error_not_an_end() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"abc"))).unwrap();
        drop(tx);
        let mut reader = ChannelReader {
            rx,
            chunk: Bytes::new(),
            ended: false,
        };
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(out, b"abc");
    }
}
