//! The OCI image layout in `DATA/registry`: what is stored, and how it is
//! written so that a crash never leaves a lie on disk.
//!
//! ```text
//! DATA/registry/
//!   oci-layout               {"imageLayoutVersion":"1.0.0"}
//!   index.json               one manifest descriptor per tag, named by the
//!                            annotation org.opencontainers.image.ref.name = "APP:vN"
//!   blobs/sha256/<hex>       manifests, configs and layers, named by their digest
//!   tmp/                     staging: every write starts here (emptied at open)
//! ```
//!
//! Every file is written in `tmp/`, synced, then renamed into place: a blob
//! appears under its digest name whole and verified, or not at all, and
//! `index.json` is the old one or the new one. Readers (the HTTP endpoint)
//! see an immutable snapshot of the index behind an `ArcSwap` and never
//! take a lock; writers take `writer`. Blob removal (garbage collection)
//! takes `gate` exclusively, imports take it shared while they stage, so a
//! blob staged by an import is never collected before its tag lands.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::RegistryError;
use crate::names::AppName;

/// The annotation that names a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Layers as the engine exports them: uncompressed tars.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Manifests, configs and index files are JSON and small; anything larger
/// is refused rather than read into memory.
pub const MAX_JSON: u64 = 4 << 20;

/// A content digest, `sha256:` and 64 lowercase hex digits: safe as a
/// file name once parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Digest(s.to_owned()))
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hash(Sha256::digest(bytes).as_slice())
    }

    fn from_hash(hash: &[u8]) -> Digest {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in hash {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hex(&self) -> &str {
        &self.0[7..]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("bad digest {s:?}")))
    }
}

/// An OCI content descriptor (the fields Cygni reads and writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// `index.json` (and an image index inside an exported archive).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexFile {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema 2: the same shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// One app's images, as the endpoint looks them up.
#[derive(Debug, Default)]
pub struct AppImages {
    /// Tag (`v3`) → manifest descriptor.
    pub tags: BTreeMap<String, Descriptor>,
    /// Every manifest tagged for the app, by digest.
    pub manifests: HashMap<Digest, Descriptor>,
    /// Config and layer blobs those manifests name.
    pub blobs: HashSet<Digest>,
}

/// What `index.json` says, with the lookups derived from it.
#[derive(Debug, Default)]
pub struct Index {
    pub file: Vec<Descriptor>,
    pub apps: HashMap<AppName, AppImages>,
}

impl Index {
    pub fn app(&self, app: &AppName) -> Option<&AppImages> {
        self.apps.get(app)
    }
}

/// The store. Cheap to share behind an `Arc`.
pub struct Layout {
    root: PathBuf,
    index: ArcSwap<Index>,
    writer: Mutex<()>,
    gate: RwLock<()>,
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

impl Layout {
    /// Opens (creating if needed) the layout at `root`, empties `tmp/`
    /// (what a crash left half-written) and loads the index.
    pub fn open(root: &Path) -> Result<Layout, RegistryError> {
        let blobs = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io("create", &blobs))?;
        // Images hold the apps' code: as private as the engine keeps them.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .map_err(io("restrict", root))?;
        }
        let tmp = root.join("tmp");
        let cleared = match std::fs::symlink_metadata(&tmp) {
            Ok(m) if !m.is_dir() => std::fs::remove_file(&tmp),
            _ => std::fs::remove_dir_all(&tmp),
        };
        match cleared {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("empty", &tmp)(e));
            }
            _ => {}
        }
        std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
        let layout = Layout {
            root: root.to_owned(),
            index: ArcSwap::from_pointee(Index::default()),
            writer: Mutex::new(()),
            gate: RwLock::new(()),
        };
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            layout.write_file(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index_path = root.join("index.json");
        let file = if index_path.is_file() {
            let bytes = read_json_file(&index_path)?;
            let parsed: IndexFile =
                serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                    what: format!("{}: {e}", index_path.display()),
                })?;
            parsed.manifests
        } else {
            layout.write_index(&[])?;
            Vec::new()
        };
        layout.index.store(Arc::new(layout.derive(file)?));
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The current index snapshot (never blocks).
    pub fn index(&self) -> Arc<Index> {
        self.index.load_full()
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A stored manifest's bytes (bounded: manifests are small).
    pub fn read_manifest(&self, digest: &Digest) -> Result<Vec<u8>, RegistryError> {
        read_json_file(&self.blob_path(digest))
    }

    /// A new file in `tmp/` for a write that ends in a rename.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile, RegistryError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("w-")
            .tempfile_in(&tmp)
            .map_err(io("create a file in", &tmp))
    }

    /// A private directory in `tmp/` (removed when dropped).
    pub fn temp_dir(&self) -> Result<tempfile::TempDir, RegistryError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&tmp)
            .map_err(io("create a directory in", &tmp))
    }

    /// Held while an import stages blobs: garbage collection waits.
    pub fn import_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `bytes` at `path` through a synced temp file and a rename.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
        let mut tmp = self.temp_file()?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io("write", tmp.path()))?;
        tmp.persist(path).map_err(|e| RegistryError::Io {
            action: "rename into",
            path: path.to_owned(),
            source: e.error,
        })?;
        sync_parent(path)
    }

    /// Stores `bytes` as a blob and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, RegistryError> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if !path.is_file() {
            self.write_file(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Moves a staged file (under `tmp/`) into place as blob `expected`,
    /// after checking its digest and size. `actual` is what hashing it
    /// while it was written found.
    pub fn commit_staged(
        &self,
        staged: &Path,
        actual: &Digest,
        size: u64,
        expected: &Descriptor,
    ) -> Result<(), RegistryError> {
        if actual != &expected.digest || size != expected.size {
            return Err(RegistryError::DigestMismatch {
                what: "a blob of the exported image".into(),
                expected: format!("{} ({} bytes)", expected.digest, expected.size),
                actual: format!("{actual} ({size} bytes)"),
            });
        }
        let target = self.blob_path(actual);
        if target.is_file() {
            return Ok(());
        }
        File::open(staged)
            .and_then(|f| f.sync_all())
            .map_err(io("sync", staged))?;
        std::fs::rename(staged, &target).map_err(io("rename into", &target))?;
        sync_parent(&target)
    }

    /// Points tag `app:tag` at `manifest` (which must be stored), replacing
    /// what it pointed at.
    pub fn tag(&self, app: &AppName, tag: &str, manifest: Descriptor) -> Result<(), RegistryError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let name = format!("{app}:{tag}");
        let mut file: Vec<Descriptor> = self
            .index()
            .file
            .iter()
            .filter(|d| d.annotations.get(REF_NAME) != Some(&name))
            .cloned()
            .collect();
        let mut d = manifest;
        d.platform = None;
        d.annotations = BTreeMap::from([(REF_NAME.to_owned(), name)]);
        file.push(d);
        self.replace_index(file)
    }

    /// Keeps only those of `app`'s tags that point at a manifest in
    /// `keep`, then removes every blob no tag still reaches. Returns how
    /// many blobs went.
    pub fn retain(&self, app: &AppName, keep: &[Digest]) -> Result<usize, RegistryError> {
        let _gc = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = format!("{app}:");
        let file: Vec<Descriptor> = self
            .index()
            .file
            .iter()
            .filter(|d| match d.annotations.get(REF_NAME) {
                Some(name) if name.starts_with(&prefix) => keep.contains(&d.digest),
                _ => true,
            })
            .cloned()
            .collect();
        if file.len() != self.index().file.len() {
            self.replace_index(file)?;
        }
        let index = self.index();
        let mut live: HashSet<&Digest> = HashSet::new();
        for images in index.apps.values() {
            live.extend(images.manifests.keys());
            live.extend(images.blobs.iter());
        }
        let dir = self.root.join("blobs").join("sha256");
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let entry = entry.map_err(io("list", &dir))?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|h| Digest::parse(&format!("sha256:{h}")))
            else {
                continue;
            };
            if !live.contains(&digest) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn write_index(&self, file: &[Descriptor]) -> Result<(), RegistryError> {
        let index = IndexFile {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_owned()),
            manifests: file.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&index).map_err(|e| RegistryError::Corrupt {
            what: format!("index: {e}"),
        })?;
        self.write_file(&self.root.join("index.json"), &bytes)
    }

    /// Writes `file` as `index.json` and swaps in its derived snapshot.
    /// Called with `writer` held.
    fn replace_index(&self, file: Vec<Descriptor>) -> Result<(), RegistryError> {
        let derived = self.derive(file)?;
        self.write_index(&derived.file)?;
        self.index.store(Arc::new(derived));
        Ok(())
    }

    /// The lookups for `file`: tags per app, and the blobs each app's
    /// manifests reach (read from the stored manifests). An entry that
    /// names no `APP:TAG`, or whose manifest is gone or unreadable (a
    /// store damaged by hand), is dropped with a warning: one bad image
    /// never stops the daemon or hides the others.
    fn derive(&self, file: Vec<Descriptor>) -> Result<Index, RegistryError> {
        let mut apps: HashMap<AppName, AppImages> = HashMap::new();
        let mut kept = Vec::with_capacity(file.len());
        for d in file {
            let Some((app, tag)) = d
                .annotations
                .get(REF_NAME)
                .and_then(|n| n.split_once(':'))
                .and_then(|(a, t)| Some((AppName::parse(a).ok()?, t.to_owned())))
            else {
                tracing::warn!(digest = %d.digest, "registry: an index entry without APP:TAG is dropped");
                continue;
            };
            let images = apps.entry(app).or_default();
            if !images.manifests.contains_key(&d.digest) {
                let manifest = self.read_manifest(&d.digest).and_then(|bytes| {
                    serde_json::from_slice::<ImageManifest>(&bytes).map_err(|e| {
                        RegistryError::Corrupt {
                            what: format!("manifest {}: {e}", d.digest),
                        }
                    })
                });
                let manifest = match manifest {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(%tag, error = %e, "registry: a tag whose manifest is unusable is dropped");
                        continue;
                    }
                };
                images.blobs.insert(manifest.config.digest.clone());
                images
                    .blobs
                    .extend(manifest.layers.iter().map(|l| l.digest.clone()));
                images.manifests.insert(d.digest.clone(), d.clone());
            }
            images.tags.insert(tag, d.clone());
            kept.push(d);
        }
        apps.retain(|_, images| !images.tags.is_empty());
        Ok(Index { file: kept, apps })
    }
}

/// Makes a rename into `path`'s directory durable (a power cut after it
/// would otherwise be free to forget it).
fn sync_parent(path: &Path) -> Result<(), RegistryError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Reads a JSON file of at most [`MAX_JSON`] bytes.
pub fn read_json_file(path: &Path) -> Result<Vec<u8>, RegistryError> {
    let file = File::open(path).map_err(io("read", path))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(io("read", path))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(RegistryError::Archive {
            reason: format!("{} is larger than {MAX_JSON} bytes", path.display()),
        });
    }
    Ok(bytes)
}

/// A writer that hashes what goes through it.
pub struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hash: Sha256::new(),
            size: 0,
        }
    }

    pub fn finish(self) -> (W, Digest, u64) {
        let digest = Digest::from_hash(self.hash.finalize().as_slice());
        (self.inner, digest, self.size)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
/// Stores a one-layer image whose layer is `layer`; returns the
/// manifest's descriptor.
pub(crate) fn store_test_image(layout: &Layout, layer: &[u8]) -> Descriptor {
    let layer_d = layout.put_blob(layer).unwrap();
    let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{layer_d}"]}}}}"#);
    let config_d = layout.put_blob(config.as_bytes()).unwrap();
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: config_d,
            size: config.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        },
        layers: vec![Descriptor {
            media_type: OCI_LAYER_TAR.into(),
            digest: layer_d,
            size: layer.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        }],
    };
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = layout.put_blob(&bytes).unwrap();
    Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest,
        size: bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> AppName {
        AppName::parse(name).unwrap()
    }

    fn store_image(layout: &Layout, layer: &[u8]) -> Descriptor {
        store_test_image(layout, layer)
    }

    #[test]
    fn digests_parse_strictly() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(d.as_str()), Some(d.clone()));
        for bad in [
            "",
            "sha256:",
            "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98240",
        ] {
            assert_eq!(Digest::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_layout_on_disk_is_what_the_oci_spec_says_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("registry");
        let layout = Layout::open(&root).unwrap();
        let m = store_image(&layout, b"layer one");
        layout.tag(&app("shop"), "v1", m.clone()).unwrap();

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let marker: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("oci-layout")).unwrap()).unwrap();
        assert_eq!(marker["imageLayoutVersion"], "1.0.0");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"][0]["digest"], m.digest.as_str());
        assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "shop:v1");
        // Every blob is named by the digest of its bytes.
        for entry in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let bytes = std::fs::read(entry.path()).unwrap();
            assert_eq!(
                Digest::of(&bytes).hex(),
                entry.file_name().to_str().unwrap()
            );
        }
        // A half-written file from a crash is gone at the next open.
        std::fs::write(root.join("tmp/w-left-over"), b"half").unwrap();
        drop(layout);
        let layout = Layout::open(&root).unwrap();
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        let index = layout.index();
        let shop = index.app(&app("shop")).unwrap();
        assert_eq!(shop.tags["v1"].digest, m.digest);
        assert_eq!(shop.blobs.len(), 2);
    }

    #[test]
    fn a_tag_whose_manifest_is_gone_is_dropped_and_the_others_still_serve() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let (a, b) = (store_image(&layout, b"a"), store_image(&layout, b"b"));
        layout.tag(&app("shop"), "v1", a.clone()).unwrap();
        layout.tag(&app("blog"), "v1", b.clone()).unwrap();
        std::fs::remove_file(layout.blob_path(&a.digest)).unwrap();
        drop(layout);
        let layout = Layout::open(dir.path()).unwrap();
        assert!(layout.index().app(&app("shop")).is_none());
        assert_eq!(
            layout.index().app(&app("blog")).unwrap().tags["v1"].digest,
            b.digest
        );
    }

    #[test]
    fn retagging_replaces_and_retain_collects_what_no_tag_reaches() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let (shop, blog) = (app("shop"), app("blog"));
        let shared = store_image(&layout, b"shared layer");
        let own = store_image(&layout, b"shop v2 layer");
        layout.tag(&shop, "v1", shared.clone()).unwrap();
        layout.tag(&blog, "v1", shared.clone()).unwrap();
        layout.tag(&shop, "v2", own.clone()).unwrap();
        // Retagging v2 moves it.
        layout.tag(&shop, "v2", shared.clone()).unwrap();
        assert_eq!(
            layout.index().app(&shop).unwrap().tags["v2"].digest,
            shared.digest
        );
        assert_eq!(layout.index().file.len(), 3);

        // v2's old image (3 blobs) is no longer reachable: it goes; what
        // blog still uses stays.
        assert_eq!(
            layout
                .retain(&shop, std::slice::from_ref(&shared.digest))
                .unwrap(),
            3
        );
        assert_eq!(layout.index().app(&shop).unwrap().tags.len(), 2);
        assert!(!layout.has_blob(&own.digest));
        assert!(layout.has_blob(&shared.digest));
        // Destroying shop keeps blog's image whole.
        assert_eq!(layout.retain(&shop, &[]).unwrap(), 0);
        assert!(layout.index().app(&shop).is_none());
        assert!(layout.has_blob(&shared.digest));
        assert_eq!(layout.retain(&blog, &[]).unwrap(), 3);
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_staged_blob_with_the_wrong_digest_never_lands() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let mut staged = layout.temp_file().unwrap();
        staged.write_all(b"tampered").unwrap();
        let claimed = Descriptor {
            media_type: OCI_LAYER_TAR.into(),
            digest: Digest::of(b"original"),
            size: 8,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let err = layout
            .commit_staged(staged.path(), &Digest::of(b"tampered"), 8, &claimed)
            .unwrap_err();
        assert!(err.to_string().contains("digest"), "{err}");
        assert!(!layout.has_blob(&claimed.digest));
        assert!(!layout.has_blob(&Digest::of(b"tampered")));
    }
}
