//! Handing a build's directories (and a slug or storage directory) to the
//! app's user.
//!
//! When the daemon is root, build steps run as the app's own uid/gid, so
//! the tree they build in place, the app's cache and the build's `HOME` must
//! belong to that user, and every directory above them must let it through.
//! Checking the latter up front turns a confusing "no builder detected"
//! (a `bin/detect` that cannot see the tree) into an error naming the
//! directory to fix.
//!
//! What is handed over is made 0700: another app's uid gets EACCES.
//!
//! Root walking a tree an app can write is how a symlink swapped in
//! mid-walk gives the app a host file. So [`hand_over`] walks only a tree
//! the app does not own yet (a fresh export is root's; one from before
//! per-app users is `cygni-app`'s, whose processes are gone), and changes
//! the owner bottom-up: a directory becomes the app's only once everything
//! below it is done, so the app can change nothing the walk has still to
//! visit. A tree the app owns already is left as it is.

use std::fs;
use std::os::unix::fs::{lchown, MetadataExt};
use std::path::{Path, PathBuf};

use super::BuildError;

/// `HOME` of the build steps, inside the cache dir: writable, kept between
/// builds (tools put their caches there), and outside the slug.
const HOME_DIR: &str = ".home";

/// Creates the cache dir and the build's `HOME` if missing and, with
/// `run_as`, gives the build dir and the cache dir to that user: `private`
/// (an app's own uid) makes both 0700; else (an image build's container
/// user) their modes stay as they are. Returns the build's `HOME`.
pub(crate) fn prepare(
    source_dir: &Path,
    cache_dir: &Path,
    run_as: Option<(u32, u32)>,
    private: bool,
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
        give(source_dir, uid, gid, private)?;
        // The cache is the app's from its last build: only the `HOME`
        // just made (root's) needs handing over. The app may have swapped
        // it for a symlink: lchown changes the link, not where it points.
        give(cache_dir, uid, gid, private)?;
        let meta = fs::symlink_metadata(&home).map_err(|source| BuildError::Io {
            action: "read",
            path: home.clone(),
            source,
        })?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            lchown(&home, Some(uid), Some(gid)).map_err(|source| BuildError::Io {
                action: "change the owner of",
                path: home.clone(),
                source,
            })?;
        }
        for dir in [source_dir, cache_dir] {
            check_reachable(dir, uid, gid)?;
        }
    }
    Ok(home)
}

/// Gives the directory `root` to uid:gid, mode 0700: with everything below
/// it, bottom-up, when it is not theirs yet (see the module docs); as it
/// is when it is. Symlinks are never followed (one in a pushed tree must
/// not give away a host file).
pub fn hand_over(root: &Path, uid: u32, gid: u32) -> Result<(), BuildError> {
    give(root, uid, gid, true)
}

/// [`hand_over`], 0700 only when `private`.
fn give(root: &Path, uid: u32, gid: u32, private: bool) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(root).map_err(|source| BuildError::Io {
        action: "read",
        path: root.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(BuildError::Io {
            action: "hand over",
            path: root.to_owned(),
            source: std::io::Error::other("not a directory"),
        });
    }
    if (meta.uid(), meta.gid()) != (uid, gid) {
        chown_tree(root, uid, gid)?;
    }
    if private && meta.mode() & 0o7777 != 0o700 {
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(|source| {
            BuildError::Io {
                action: "restrict",
                path: root.to_owned(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Changes the owner of `root` and everything below it, children before
/// their directory, without following symlinks.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), BuildError> {
    // Iterative: a deep tree (node_modules) must not exhaust the stack.
    // `true`: the directory's entries are done; change the directory now.
    let mut pending = vec![(root.to_owned(), false)];
    while let Some((path, listed)) = pending.pop() {
        let meta = fs::symlink_metadata(&path).map_err(|source| BuildError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() && !listed {
            let entries = fs::read_dir(&path).map_err(|source| BuildError::Io {
                action: "list",
                path: path.clone(),
                source,
            })?;
            pending.push((path.clone(), true));
            for entry in entries {
                let entry = entry.map_err(|source| BuildError::Io {
                    action: "list",
                    path: path.clone(),
                    source,
                })?;
                pending.push((entry.path(), false));
            }
            continue;
        }
        if meta.uid() != uid || meta.gid() != gid {
            lchown(&path, Some(uid), Some(gid)).map_err(|source| BuildError::Io {
                action: "change the owner of",
                path: path.clone(),
                source,
            })?;
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

    /// The tree becomes the app's, 0700; a symlink's target never does;
    /// a tree that is the app's already is not walked again.
    #[test]
    fn hand_over_gives_the_tree_but_never_what_a_symlink_names() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "needs root");
            eprintln!("SKIPPED: needs root (chown)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, "host file").unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/file"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("sub/link")).unwrap();
        let (uid, gid) = (54_321, 54_322);
        hand_over(&tree, uid, gid).unwrap();
        for p in ["", "sub", "sub/file", "sub/link"] {
            let meta = fs::symlink_metadata(tree.join(p)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{p:?}");
        }
        assert_eq!(fs::metadata(&tree).unwrap().mode() & 0o777, 0o700);
        let host = fs::metadata(&outside).unwrap();
        assert_eq!((host.uid(), host.gid()), (0, 0), "the symlink's target");

        fs::write(tree.join("later"), "root's").unwrap();
        hand_over(&tree, uid, gid).unwrap();
        assert_eq!(fs::metadata(tree.join("later")).unwrap().uid(), 0);
    }

    #[test]
    fn prepare_refuses_a_missing_build_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let err = prepare(
            &tmp.path().join("nope"),
            &tmp.path().join("cache"),
            None,
            true,
        )
        .unwrap_err();
        assert!(matches!(err, BuildError::Io { .. }), "{err:?}");
    }
}
