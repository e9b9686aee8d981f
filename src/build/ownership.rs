//! Handing a build's directories to the build user.
//!
//! When the daemon is root, build steps run as an unprivileged uid/gid, so
//! the tree they build in place, the app's cache and the build's `HOME` must
//! belong to that user, and every directory above them must let it through.
//! Checking the latter up front turns a confusing "no builder detected"
//! (a `bin/detect` that cannot see the tree) into an error naming the
//! directory to fix.

use std::fs;
use std::os::unix::fs::{lchown, MetadataExt};
use std::path::{Path, PathBuf};

use super::BuildError;

/// `HOME` of the build steps, inside the cache dir: writable, kept between
/// builds (tools put their caches there), and outside the slug.
const HOME_DIR: &str = ".home";

/// Creates the cache dir and the build's `HOME` if missing and, with
/// `run_as`, gives the build dir and the cache dir to that user. Returns the
/// build's `HOME`.
pub(crate) fn prepare(
    source_dir: &Path,
    cache_dir: &Path,
    run_as: Option<(u32, u32)>,
) -> Result<PathBuf, BuildError> {
    let meta = fs::metadata(source_dir).map_err(|source| BuildError::Io {
        action: "read the build dir",
        path: source_dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(BuildError::Io {
            action: "use the build dir",
            path: source_dir.to_owned(),
            source: std::io::Error::other("not a directory"),
        });
    }
    let home = cache_dir.join(HOME_DIR);
    fs::create_dir_all(&home).map_err(|source| BuildError::Io {
        action: "create",
        path: home.clone(),
        source,
    })?;
    if let Some((uid, gid)) = run_as {
        for dir in [source_dir, cache_dir] {
            chown_tree(dir, uid, gid)?;
            check_reachable(dir, uid, gid)?;
        }
    }
    Ok(home)
}

/// Changes the owner of `root` and everything below it, without following
/// symlinks (a symlink in a pushed tree must not give away a host file).
pub(crate) fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), BuildError> {
    // Iterative: a deep tree (node_modules) must not exhaust the stack.
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path).map_err(|source| BuildError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        if meta.uid() != uid || meta.gid() != gid {
            lchown(&path, Some(uid), Some(gid)).map_err(|source| BuildError::Io {
                action: "change the owner of",
                path: path.clone(),
                source,
            })?;
        }
        if meta.is_dir() {
            let entries = fs::read_dir(&path).map_err(|source| BuildError::Io {
                action: "list",
                path: path.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| BuildError::Io {
                    action: "list",
                    path: path.clone(),
                    source,
                })?;
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Checks that the user `uid`/`gid` (and no supplementary group: build
/// steps drop them) may traverse every directory above `path`.
pub(crate) fn check_reachable(path: &Path, uid: u32, gid: u32) -> Result<(), BuildError> {
    let absolute = fs::canonicalize(path).map_err(|source| BuildError::Io {
        action: "resolve",
        path: path.to_owned(),
        source,
    })?;
    for dir in absolute.ancestors().skip(1) {
        let meta = fs::metadata(dir).map_err(|source| BuildError::Io {
            action: "read",
            path: dir.to_owned(),
            source,
        })?;
        let mode = meta.mode();
        let exec_bit = if meta.uid() == uid {
            0o100
        } else if meta.gid() == gid {
            0o010
        } else {
            0o001
        };
        if mode & exec_bit == 0 {
            return Err(BuildError::Unreachable {
                uid,
                path: path.to_owned(),
                blocker: dir.to_owned(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reachable_follows_the_mode_bits() {
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("a/b");
        fs::create_dir_all(&inner).unwrap();
        let a = tmp.path().join("a");
        // Some uid that owns nothing here.
        let (uid, gid) = (54_321, 54_321);
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&a, fs::Permissions::from_mode(0o750)).unwrap();
        match check_reachable(&inner, uid, gid) {
            Err(BuildError::Unreachable { blocker, mode, .. }) => {
                assert_eq!(blocker, fs::canonicalize(&a).unwrap());
                assert_eq!(mode, 0o750);
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        fs::set_permissions(&a, fs::Permissions::from_mode(0o751)).unwrap();
        check_reachable(&inner, uid, gid).unwrap();
    }

    #[test]
    fn prepare_refuses_a_missing_build_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let err = prepare(&tmp.path().join("nope"), &tmp.path().join("cache"), None).unwrap_err();
        assert!(matches!(err, BuildError::Io { .. }), "{err:?}");
    }
}
