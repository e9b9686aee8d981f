//! An image exported by the engine (`docker save`, a tar stream) into the
//! layout: one pass over the stream, then a verified commit.
//!
//! ```text
//! tar stream ──► every regular entry staged to tmp/import-*/N, hashed as it is written
//!             └─ symlinks and hard links recorded as aliases (resolved inside the archive only)
//!    │
//!    ├─ index.json present (Docker 25+: an OCI layout inside the tar)
//!    │     index ─► (image index ─► the first runnable platform) ─► manifest
//!    │     manifest, config and layers: staged digest == the digest they are named by
//!    │     stored as they are: the manifest digest is the engine's own
//!    │
//!    └─ manifest.json only (the legacy form)
//!          [{Config: "<hex>.json", RepoTags, Layers: ["<id>/layer.tar", ...]}]
//!          config digest == its name; layer i's digest == the config's rootfs.diff_ids[i]
//!          an OCI manifest is written for them (layers uncompressed, as exported)
//!    │
//!    ▼
//! staged files renamed into blobs/sha256/<hex> (same filesystem) ─► tag APP:vN
//! ```
//!
//! Nothing from the archive names a file on disk: staged files are numbered,
//! and archive paths are only keys (normalized; `..` and absolute paths
//! refused). What the archive holds beyond the chosen image is dropped with
//! the staging directory.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::layout::{
    read_json_file, Descriptor, Digest, Hashing, ImageManifest, IndexFile, Layout, DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST, MAX_JSON, OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR, OCI_MANIFEST,
};
use super::RegistryError;
use crate::names::AppName;

/// Entries an archive may hold: an image has a few dozen.
const MAX_ENTRIES: usize = 100_000;
/// How many links are followed to reach one file.
const MAX_LINK_HOPS: usize = 16;

fn bad(reason: impl Into<String>) -> RegistryError {
    RegistryError::Archive {
        reason: reason.into(),
    }
}

/// A regular file of the archive, staged on disk.
struct Staged {
    path: PathBuf,
    digest: Digest,
    size: u64,
}

/// The archive's files by their (normalized) path.
struct Staging {
    files: HashMap<String, Staged>,
    links: HashMap<String, String>,
    // Kept for its Drop: removes whatever was not committed.
    _dir: tempfile::TempDir,
}

impl Staging {
    fn get(&self, name: &str) -> Option<&Staged> {
        let mut name = normalize(name)?;
        for _ in 0..MAX_LINK_HOPS {
            if let Some(f) = self.files.get(&name) {
                return Some(f);
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }

    fn need(&self, name: &str) -> Result<&Staged, RegistryError> {
        self.get(name)
            .ok_or_else(|| bad(format!("the archive lacks {name}")))
    }

    fn json<T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
    ) -> Result<(T, &Staged), RegistryError> {
        let staged = self.need(name)?;
        if staged.size > MAX_JSON {
            return Err(bad(format!("{name} is larger than {MAX_JSON} bytes")));
        }
        let bytes = read_json_file(&staged.path)?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("{name} is not what it should be: {e}")))?;
        Ok((value, staged))
    }

    fn blob(&self, digest: &Digest) -> Result<&Staged, RegistryError> {
        self.need(&format!("blobs/sha256/{}", digest.hex()))
    }
}

/// A path inside the archive, as a key: no `.`, no leading `/`, no `..`.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Reads the whole archive once, staging every regular file.
fn stage(layout: &Layout, archive: impl Read) -> Result<Staging, RegistryError> {
    let dir = layout.temp_dir()?;
    let mut files = HashMap::new();
    let mut links = HashMap::new();
    let mut tar = tar::Archive::new(archive);
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a tar stream: {e}")))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(format!("unreadable tar entry: {e}")))?;
        let raw = entry.path_bytes();
        let Some(name) = std::str::from_utf8(&raw).ok().and_then(normalize) else {
            continue;
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let path = dir.path().join(n.to_string());
                let file = std::fs::File::create(&path).map_err(|source| RegistryError::Io {
                    action: "stage",
                    path: path.clone(),
                    source,
                })?;
                let mut out = Hashing::new(std::io::BufWriter::with_capacity(256 << 10, file));
                std::io::copy(&mut entry, &mut out)
                    .map_err(|e| bad(format!("reading {name}: {e}")))?;
                let (writer, digest, size) = out.finish();
                writer.into_inner().map_err(|e| RegistryError::Io {
                    action: "stage",
                    path: path.clone(),
                    source: e.into_error(),
                })?;
                files.insert(name, Staged { path, digest, size });
            }
            tar::EntryType::Symlink => {
                let Some(target) = entry.link_name().ok().flatten() else {
                    continue;
                };
                // Relative to the link's own directory, within the archive.
                let base = Path::new(&name).parent().unwrap_or(Path::new(""));
                if let Some(t) = base.join(target).to_str().and_then(normalize) {
                    links.insert(name, t);
                }
            }
            tar::EntryType::Link => {
                // Hard links name their target from the archive's root.
                if let Some(t) = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .and_then(|t| t.to_str().and_then(normalize))
                {
                    links.insert(name, t);
                }
            }
            _ => {}
        }
    }
    Ok(Staging {
        files,
        links,
        _dir: dir,
    })
}

/// Imports the image `reference` (as the engine names it) from `archive`
/// and tags it `app:tag`. Returns the stored manifest's descriptor.
pub fn import_archive(
    layout: &Layout,
    archive: impl Read,
    reference: &str,
    app: &AppName,
    tag: &str,
) -> Result<Descriptor, RegistryError> {
    let _gate = layout.import_gate();
    let staging = stage(layout, archive)?;
    let manifest = if staging.get("index.json").is_some() {
        from_oci(layout, &staging, reference)?
    } else if staging.get("manifest.json").is_some() {
        from_legacy(layout, &staging, reference)?
    } else {
        return Err(bad(
            "neither index.json nor manifest.json: not an image archive",
        ));
    };
    layout.tag(app, tag, manifest.clone())?;
    Ok(manifest)
}

/// Docker 25+: the archive is an OCI layout; its blobs are stored as they
/// are, each checked against the digest it is named by.
fn from_oci(
    layout: &Layout,
    staging: &Staging,
    reference: &str,
) -> Result<Descriptor, RegistryError> {
    let (index, _) = staging.json::<IndexFile>("index.json")?;
    let named = |d: &&Descriptor| {
        d.annotations
            .get("io.containerd.image.name")
            .is_some_and(|n| n == reference || n.ends_with(&format!("/{reference}")))
    };
    let top = index
        .manifests
        .iter()
        .find(named)
        .or_else(|| (index.manifests.len() == 1).then(|| &index.manifests[0]))
        .ok_or_else(|| bad(format!("index.json does not name {reference}")))?
        .clone();
    let mut chosen = top;
    // An image index (several platforms, attestations): the first runnable
    // manifest whose blobs the archive holds.
    for _ in 0..4 {
        if chosen.media_type != OCI_INDEX && chosen.media_type != DOCKER_MANIFEST_LIST {
            break;
        }
        let staged = staging.blob(&chosen.digest)?;
        layout.commit_check(staged, &chosen)?;
        let (inner, _) =
            staging.json::<IndexFile>(&format!("blobs/sha256/{}", chosen.digest.hex()))?;
        chosen = inner
            .manifests
            .into_iter()
            .find(|d| {
                let runnable = d
                    .platform
                    .as_ref()
                    .is_none_or(|p| p.os != "unknown" && !p.os.is_empty());
                runnable && staging.blob(&d.digest).is_ok()
            })
            .ok_or_else(|| bad("the image index names no runnable manifest in the archive"))?;
    }
    if chosen.media_type != OCI_MANIFEST && chosen.media_type != DOCKER_MANIFEST {
        return Err(bad(format!(
            "unsupported manifest type {:?}",
            chosen.media_type
        )));
    }
    let name = format!("blobs/sha256/{}", chosen.digest.hex());
    let (manifest, staged_manifest) = staging.json::<ImageManifest>(&name)?;
    layout.commit_check(staged_manifest, &chosen)?;
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        let staged = staging.blob(&blob.digest)?;
        layout.commit_staged(&staged.path, &staged.digest, staged.size, blob)?;
    }
    // The manifest last: it is what makes the others reachable.
    layout.commit_staged(
        &staged_manifest.path,
        &staged_manifest.digest,
        staged_manifest.size,
        &chosen,
    )?;
    Ok(Descriptor {
        media_type: chosen.media_type,
        digest: chosen.digest,
        size: chosen.size,
        platform: None,
        annotations: BTreeMap::new(),
    })
}

/// One image of a legacy `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LegacyImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The part of an image config the import checks layers against.
#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: Rootfs,
}

#[derive(Deserialize)]
struct Rootfs {
    diff_ids: Vec<Digest>,
}

/// The legacy form: config and layer tars by path. Each layer must hash
/// to the config's diff_id for it, and the config to its file name.
fn from_legacy(
    layout: &Layout,
    staging: &Staging,
    reference: &str,
) -> Result<Descriptor, RegistryError> {
    let (images, _) = staging.json::<Vec<LegacyImage>>("manifest.json")?;
    let image = images
        .iter()
        .find(|i| {
            i.repo_tags
                .as_ref()
                .is_some_and(|t| t.iter().any(|t| t == reference))
        })
        .or_else(|| (images.len() == 1).then(|| &images[0]))
        .ok_or_else(|| bad(format!("manifest.json does not name {reference}")))?;
    let (config, staged_config) = staging.json::<ConfigRootfs>(&image.config)?;
    let named = Path::new(&image.config)
        .file_name()
        .and_then(|f| f.to_str())
        .map(|f| f.trim_end_matches(".json"))
        .and_then(|hex| Digest::parse(&format!("sha256:{hex}")));
    if let Some(named) = named {
        if named != staged_config.digest {
            return Err(RegistryError::DigestMismatch {
                what: format!("the image config {}", image.config),
                expected: named.to_string(),
                actual: staged_config.digest.to_string(),
            });
        }
    }
    if config.rootfs.diff_ids.len() != image.layers.len() {
        return Err(bad(format!(
            "the config lists {} layers, manifest.json {}",
            config.rootfs.diff_ids.len(),
            image.layers.len()
        )));
    }
    let config_d = descriptor(OCI_CONFIG, staged_config);
    let mut layers = Vec::new();
    for (path, diff_id) in image.layers.iter().zip(&config.rootfs.diff_ids) {
        let staged = staging.need(path)?;
        let wanted = Descriptor {
            media_type: OCI_LAYER_TAR.into(),
            digest: diff_id.clone(),
            size: staged.size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        layout.commit_staged(&staged.path, &staged.digest, staged.size, &wanted)?;
        layers.push(wanted);
    }
    layout.commit_staged(
        &staged_config.path,
        &staged_config.digest,
        staged_config.size,
        &config_d,
    )?;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: config_d,
        layers,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
    let digest = layout.put_blob(&bytes)?;
    Ok(Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest,
        size: bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    })
}

fn descriptor(media_type: &str, staged: &Staged) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: staged.digest.clone(),
        size: staged.size,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

impl Layout {
    /// Checks a staged file against its descriptor without moving it.
    fn commit_check(&self, staged: &Staged, d: &Descriptor) -> Result<(), RegistryError> {
        if staged.digest != d.digest || staged.size != d.size {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest {}", d.digest),
                expected: format!("{} ({} bytes)", d.digest, d.size),
                actual: format!("{} ({} bytes)", staged.digest, staged.size),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppName {
        AppName::parse("shop").unwrap()
    }

    /// A tar of (path, bytes) regular files and (path, target) symlinks.
    fn tar_of(files: &[(&str, &[u8])], symlinks: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *bytes).unwrap();
        }
        for (path, target) in symlinks {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, target).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A layer: itself a tar holding one file.
    fn layer(text: &str) -> Vec<u8> {
        tar_of(&[("hello.txt", text.as_bytes())], &[])
    }

    fn config_for(layers: &[&[u8]]) -> Vec<u8> {
        let ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": ids},
        }))
        .unwrap()
    }

    /// What `docker save` wrote before Docker 25; the second layer is
    /// shared with the first through a symlink, as the engine does.
    fn legacy_archive(l1: &[u8], l2: &[u8]) -> Vec<u8> {
        let config = config_for(&[l1, l2]);
        let config_name = format!("{}.json", Digest::of(&config).hex());
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_name,
            "RepoTags": ["cygni/shop:v1"],
            "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
        }]))
        .unwrap();
        tar_of(
            &[
                ("aaa/layer.tar", l1),
                ("ccc/layer.tar", l2),
                (&config_name, &config),
                ("manifest.json", &manifest),
                ("repositories", b"{}"),
            ],
            &[("bbb/layer.tar", "../ccc/layer.tar")],
        )
    }

    /// What Docker 25+ writes: an OCI layout, plus the legacy manifest.json.
    fn oci_archive(l1: &[u8], through_index: bool) -> (Vec<u8>, Digest) {
        let config = config_for(&[l1]);
        let (cd, ld) = (Digest::of(&config), Digest::of(l1));
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER_TAR, "digest": ld, "size": l1.len()}],
        }))
        .unwrap();
        let md = Digest::of(&manifest);
        let mut blobs: Vec<(String, Vec<u8>)> = vec![
            (format!("blobs/sha256/{}", cd.hex()), config.clone()),
            (format!("blobs/sha256/{}", ld.hex()), l1.to_vec()),
            (format!("blobs/sha256/{}", md.hex()), manifest.clone()),
        ];
        let manifest_d = serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": md, "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        });
        let top = if through_index {
            // An attestation manifest first: it must be skipped.
            let attestation = serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": cd, "size": config.len(),
                "platform": {"architecture": "unknown", "os": "unknown"},
            });
            let inner = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": [attestation, manifest_d],
            }))
            .unwrap();
            let id = Digest::of(&inner);
            blobs.push((format!("blobs/sha256/{}", id.hex()), inner.clone()));
            serde_json::json!({"mediaType": OCI_INDEX, "digest": id, "size": inner.len(),
                "annotations": {"io.containerd.image.name": "docker.io/cygni/shop:v1"}})
        } else {
            let mut d = manifest_d;
            d["annotations"] = serde_json::json!({"io.containerd.image.name": "docker.io/cygni/shop:v1",
                "org.opencontainers.image.ref.name": "v1"});
            d
        };
        let index = serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}),
        )
        .unwrap();
        let legacy = serde_json::to_vec(&serde_json::json!([{
            "Config": format!("blobs/sha256/{}", cd.hex()),
            "RepoTags": ["cygni/shop:v1"],
            "Layers": [format!("blobs/sha256/{}", ld.hex())],
        }]))
        .unwrap();
        let mut files: Vec<(&str, &[u8])> = vec![
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", &index),
            ("manifest.json", &legacy),
        ];
        files.extend(blobs.iter().map(|(p, b)| (p.as_str(), b.as_slice())));
        (tar_of(&files, &[]), md)
    }

    fn stored_manifest(layout: &Layout, d: &Descriptor) -> ImageManifest {
        let bytes = layout.read_manifest(&d.digest).unwrap();
        assert_eq!(Digest::of(&bytes), d.digest);
        assert_eq!(bytes.len() as u64, d.size);
        serde_json::from_slice(&bytes).unwrap()
    }

    fn tmp_is_empty(layout: &Layout) -> bool {
        std::fs::read_dir(layout.root().join("tmp"))
            .unwrap()
            .count()
            == 0
    }

    #[test]
    fn the_legacy_form_becomes_an_oci_manifest_with_verified_layers() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let (l1, l2) = (layer("one"), layer("two"));
        let archive = legacy_archive(&l1, &l2);
        let d = import_archive(&layout, archive.as_slice(), "cygni/shop:v1", &app(), "v1").unwrap();
        assert_eq!(d.media_type, OCI_MANIFEST);
        let m = stored_manifest(&layout, &d);
        assert_eq!(m.config.media_type, OCI_CONFIG);
        let layer_digests: Vec<_> = m.layers.iter().map(|l| l.digest.clone()).collect();
        assert_eq!(layer_digests, vec![Digest::of(&l1), Digest::of(&l2)]);
        // The symlinked layer is stored with the bytes it points at.
        assert_eq!(
            std::fs::read(layout.blob_path(&Digest::of(&l2))).unwrap(),
            l2
        );
        assert_eq!(
            layout.index().app(&app()).unwrap().tags["v1"].digest,
            d.digest
        );
        assert!(tmp_is_empty(&layout));
    }

    #[test]
    fn the_oci_form_is_stored_as_the_engine_wrote_it() {
        for through_index in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let layout = Layout::open(dir.path()).unwrap();
            let l1 = layer("oci");
            let (archive, manifest_digest) = oci_archive(&l1, through_index);
            let d =
                import_archive(&layout, archive.as_slice(), "cygni/shop:v1", &app(), "v3").unwrap();
            assert_eq!(d.digest, manifest_digest, "through_index={through_index}");
            let m = stored_manifest(&layout, &d);
            assert_eq!(m.layers[0].digest, Digest::of(&l1));
            assert!(layout.has_blob(&m.config.digest));
            assert!(tmp_is_empty(&layout));
        }
    }

    #[test]
    fn a_layer_that_does_not_match_its_diff_id_is_refused_and_nothing_is_tagged() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let (l1, l2) = (layer("one"), layer("two"));
        // The config is made for l1 and l2, the archive carries l1 twice.
        let config = config_for(&[&l1, &l2]);
        let name = format!("{}.json", Digest::of(&config).hex());
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": name, "RepoTags": ["cygni/shop:v1"], "Layers": ["a/layer.tar", "b/layer.tar"],
        }]))
        .unwrap();
        let archive = tar_of(
            &[
                ("a/layer.tar", &l1),
                ("b/layer.tar", &l1),
                (&name, &config),
                ("manifest.json", &manifest),
            ],
            &[],
        );
        let err =
            import_archive(&layout, archive.as_slice(), "cygni/shop:v1", &app(), "v1").unwrap_err();
        assert!(err.to_string().contains("digest"), "{err}");
        assert!(layout.index().app(&app()).is_none());
        assert!(!layout.has_blob(&Digest::of(&l2)));
        assert!(tmp_is_empty(&layout));
    }

    #[test]
    fn a_tampered_oci_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let l1 = layer("tamper-me");
        let (archive, _) = oci_archive(&l1, false);
        // Same length, other bytes: the layer no longer matches its name.
        let mut tampered = archive.clone();
        let at = tampered
            .windows(9)
            .position(|w| w == b"tamper-me")
            .expect("the layer's text is in the archive");
        tampered[at] = b'x';
        let err = import_archive(&layout, tampered.as_slice(), "cygni/shop:v1", &app(), "v1")
            .unwrap_err();
        assert!(err.to_string().contains("digest"), "{err}");
        assert!(layout.index().app(&app()).is_none());
    }

    #[test]
    fn archives_that_are_not_images_get_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                tar_of(&[("etc/passwd", b"root")], &[]),
                "not an image archive",
            ),
            (tar_of(&[("manifest.json", b"[]")], &[]), "does not name"),
            (tar_of(&[("manifest.json", b"{oops")], &[]), "manifest.json"),
            (
                tar_of(
                    &[(
                        "manifest.json",
                        br#"[{"Config":"../../c.json","Layers":[]}]"#,
                    )],
                    &[],
                ),
                "lacks",
            ),
        ];
        for (archive, needle) in cases {
            let err = import_archive(&layout, archive.as_slice(), "cygni/shop:v1", &app(), "v1")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        assert!(tmp_is_empty(&layout));
    }

    #[test]
    fn archive_paths_never_leave_the_archive() {
        assert_eq!(normalize("./a/b"), Some("a/b".into()));
        assert_eq!(normalize("a/../b"), Some("b".into()));
        assert_eq!(normalize("../etc/passwd"), None);
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(normalize("."), None);
    }
}
