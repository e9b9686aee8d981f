//! Bare git repositories, one per app, under `DATA/repos/APP.git`.
//!
//! This module owns the repositories on disk and the git configuration
//! every `git receive-pack` / `upload-pack` Cygni spawns runs with. It knows
//! nothing of deploys: the push hook hands pushes to `deploy`.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::names::AppName;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("repository for {app}: {source}")]
    Repo {
        app: AppName,
        #[source]
        source: git2::Error,
    },
    #[error("{0}")]
    Tree(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The pinned git configuration and the one pre-receive hook, as files Cygni owns.
///
/// `GIT_CONFIG_GLOBAL` points at `config`, `GIT_CONFIG_SYSTEM` at an empty
/// file, so neither the host's `/etc/gitconfig` nor root's `~/.gitconfig` can
/// change how pushes are received.
#[derive(Debug, Clone)]
pub struct GitEnv {
    pub global_config: PathBuf,
    pub system_config: PathBuf,
    pub hooks_dir: PathBuf,
}

/// The PATH git and its hook run with.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl GitEnv {
    /// `git SUBCOMMAND` as every front door (SSH, smart HTTP) runs it: an
    /// environment built from nothing, Cygni's own config files, `home`
    /// as HOME, piped stdio, killed when dropped. The caller adds the
    /// arguments (the repo's absolute path last).
    pub fn command(&self, subcommand: &str, home: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg(subcommand)
            .env_clear()
            .env("PATH", SAFE_PATH)
            .env("HOME", home)
            .env("LANG", "C.UTF-8")
            .env("GIT_CONFIG_GLOBAL", &self.global_config)
            .env("GIT_CONFIG_SYSTEM", &self.system_config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

/// The largest pack a push may send.
const MAX_INPUT_SIZE: &str = "2g";

/// The pre-receive hook: it calls back into the daemon, which decides.
/// `CYGNI_BIN`, the socket and the push token come from the daemon through
/// git's environment, so a push that did not come through Cygni's SSH server
/// is refused rather than deployed.
const PRE_RECEIVE: &str = r#"#!/bin/sh
# Written by Cygni at every start; edits are overwritten.
if [ -z "$CYGNI_BIN" ]; then
    echo "cygni: pushes must go through Cygni's SSH server" >&2
    exit 1
fi
exec "$CYGNI_BIN" hook pre-receive
"#;

impl GitEnv {
    /// Write the config and hook under `DATA/git`, replacing old versions so
    /// an upgraded daemon's hook is always the one that runs.
    pub fn install(data_dir: &Path) -> Result<GitEnv, GitError> {
        let dir = data_dir.join("git");
        let hooks_dir = dir.join("hooks");
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| GitError::Io { what, path, source }
        };
        std::fs::create_dir_all(&hooks_dir).map_err(io("cannot create", &hooks_dir))?;
        let global_config = dir.join("config");
        let system_config = dir.join("system-config");
        // Deletions are the pre-receive hook's to refuse (every branch but
        // a preview's, see deploy/previews.rs): git's own denyDeletes would
        // refuse after the hook had already removed the preview.
        let config = format!(
            "[core]\n\thooksPath = {hooks}\n\
             [receive]\n\tfsckObjects = true\n\tdenyDeletes = false\n\tmaxInputSize = {MAX_INPUT_SIZE}\n\
             [transfer]\n\tfsckObjects = true\n\
             [uploadpack]\n\tallowFilter = true\n",
            hooks = hooks_dir.display()
        );
        write_atomic(&global_config, config.as_bytes(), 0o644)?;
        write_atomic(&system_config, b"", 0o644)?;
        write_atomic(
            &hooks_dir.join("pre-receive"),
            PRE_RECEIVE.as_bytes(),
            0o755,
        )?;
        Ok(GitEnv {
            global_config,
            system_config,
            hooks_dir,
        })
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), GitError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    let io = |what, p: &Path| {
        let path = p.to_owned();
        move |source| GitError::Io { what, path, source }
    };
    std::fs::write(&tmp, bytes).map_err(io("cannot write", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io("cannot chmod", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot replace", path))
}

/// The repositories directory.
#[derive(Debug, Clone)]
pub struct Repos {
    root: PathBuf,
}

impl Repos {
    pub fn new(data_dir: &Path) -> Result<Repos, GitError> {
        let root = data_dir.join("repos");
        std::fs::create_dir_all(&root).map_err(|source| GitError::Io {
            what: "cannot create",
            path: root.clone(),
            source,
        })?;
        Ok(Repos { root })
    }

    /// The absolute path of an app's repository. `AppName` cannot contain
    /// `/` or `.`, so this always stays inside the repos directory.
    pub fn path(&self, app: &AppName) -> PathBuf {
        self.root.join(format!("{app}.git"))
    }

    pub fn exists(&self, app: &AppName) -> bool {
        self.path(app).join("HEAD").is_file()
    }

    /// Create the bare repository (idempotent).
    pub fn create(&self, app: &AppName) -> Result<PathBuf, GitError> {
        let path = self.path(app);
        if !self.exists(app) {
            let mut opts = git2::RepositoryInitOptions::new();
            opts.bare(true).initial_head("main").mkdir(true);
            git2::Repository::init_opts(&path, &opts).map_err(|source| GitError::Repo {
                app: app.clone(),
                source,
            })?;
        }
        Ok(path)
    }

    /// Remove the repository and everything in it. A missing repo is fine.
    pub fn remove(&self, app: &AppName) -> Result<(), GitError> {
        let path = self.path(app);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(GitError::Io {
                what: "cannot remove",
                path,
                source,
            }),
        }
    }

    /// Bytes used on disk by the repository.
    pub fn size(&self, app: &AppName) -> u64 {
        dir_size(&self.path(app))
    }

    /// The branches and their commit ids, for `apps:info`.
    pub fn branches(&self, app: &AppName) -> Result<Vec<(String, String)>, GitError> {
        let err = |source| GitError::Repo {
            app: app.clone(),
            source,
        };
        let repo = git2::Repository::open_bare(self.path(app)).map_err(err)?;
        let mut out = Vec::new();
        for b in repo.branches(Some(git2::BranchType::Local)).map_err(err)? {
            let (b, _) = b.map_err(err)?;
            if let (Ok(Some(name)), Some(oid)) = (b.name(), b.get().target()) {
                out.push((name.to_owned(), oid.to_string()));
            }
        }
        Ok(out)
    }
}

/// Open an app's repository so that it also sees a push's quarantined
/// objects: while pre-receive runs, the pushed objects are not yet in the
/// repository proper, only in the directories git names in the hook's env.
pub fn open_pushed(
    repo_path: &Path,
    object_dirs: &[PathBuf],
) -> Result<git2::Repository, git2::Error> {
    let repo = git2::Repository::open_bare(repo_path)?;
    {
        let odb = repo.odb()?;
        for dir in object_dirs {
            if dir.is_dir() {
                odb.add_disk_alternate(&dir.to_string_lossy())?;
            }
        }
    }
    Ok(repo)
}

/// A regular file's bytes at `path` in commit `sha`, read from git objects,
/// never from a checkout: a symlinked `Procfile` is not followed (None).
pub fn read_file(
    repo: &git2::Repository,
    sha: &str,
    path: &str,
) -> Result<Option<Vec<u8>>, GitError> {
    let err = |e: git2::Error| GitError::Tree(format!("reading {path} at {sha}: {}", e.message()));
    let oid = git2::Oid::from_str(sha).map_err(err)?;
    let tree = repo.find_commit(oid).map_err(err)?.tree().map_err(err)?;
    let entry = match tree.get_path(Path::new(path)) {
        Ok(e) => e,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    if entry.kind() != Some(git2::ObjectType::Blob) || entry.filemode() == 0o120000 {
        return Ok(None);
    }
    let blob = repo.find_blob(entry.id()).map_err(err)?;
    Ok(Some(blob.content().to_vec()))
}

/// Write commit `sha`'s tree into `dest`, which must not exist yet.
///
/// Every path is created fresh (`create_new`), directories before their
/// contents, and symlinks are recreated as links without ever being
/// followed, so a tree cannot make the export write outside `dest`.
/// Submodules are skipped (their commits are not in this repository).
pub fn export(repo: &git2::Repository, sha: &str, dest: &Path) -> Result<u64, GitError> {
    let err = |e: git2::Error| GitError::Tree(format!("exporting {sha}: {}", e.message()));
    let oid = git2::Oid::from_str(sha).map_err(err)?;
    let tree = repo.find_commit(oid).map_err(err)?.tree().map_err(err)?;
    let io = |what, p: &Path| {
        let path = p.to_owned();
        move |source| GitError::Io { what, path, source }
    };
    std::fs::create_dir(dest).map_err(io("cannot create", dest))?;
    let mut files = 0;
    export_tree(repo, &tree, dest, &mut files, 0)?;
    Ok(files)
}

/// Levels of submodules exported inside each other (a sync fetches at
/// most `sync::submodules::MAX_DEPTH`).
const MAX_SUBMODULE_LEVELS: usize = 4;

/// The commit a gitlink records, when a sync fetched it as a submodule
/// (`refs/cygni/submodules/SHA`, see `sync::submodules`). A pushed
/// gitlink's commit is not there, so its directory stays empty.
fn fetched_submodule(repo: &git2::Repository, id: git2::Oid) -> Option<git2::Tree<'_>> {
    repo.find_reference(&format!("refs/cygni/submodules/{id}"))
        .ok()?;
    repo.find_commit(id).ok()?.tree().ok()
}

fn export_tree(
    repo: &git2::Repository,
    tree: &git2::Tree<'_>,
    dir: &Path,
    files: &mut u64,
    level: usize,
) -> Result<(), GitError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    for entry in tree.iter() {
        let name = std::str::from_utf8(entry.name_bytes())
            .map_err(|_| GitError::Tree("a path in the tree is not UTF-8".into()))?;
        // fsck refuses these on receive; checking again costs nothing.
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
            || name.eq_ignore_ascii_case(".git")
        {
            return Err(GitError::Tree(format!("refusing tree entry {name:?}")));
        }
        let path = dir.join(name);
        let io = |what, p: &Path| {
            let path = p.to_owned();
            move |source| GitError::Io { what, path, source }
        };
        let gerr = |e: git2::Error| GitError::Tree(format!("{}: {}", path.display(), e.message()));
        match entry.filemode() {
            0o040000 => {
                std::fs::create_dir(&path).map_err(io("cannot create", &path))?;
                let sub = repo.find_tree(entry.id()).map_err(gerr)?;
                export_tree(repo, &sub, &path, files, level)?;
            }
            0o120000 => {
                let blob = repo.find_blob(entry.id()).map_err(gerr)?;
                let target = std::ffi::OsStr::from_bytes(blob.content());
                std::os::unix::fs::symlink(target, &path).map_err(io("cannot link", &path))?;
            }
            // A submodule: its tree, under the same rules, when a sync
            // fetched its commit; otherwise nothing, as git leaves it.
            0o160000 => {
                if level < MAX_SUBMODULE_LEVELS {
                    if let Some(sub) = fetched_submodule(repo, entry.id()) {
                        std::fs::create_dir(&path).map_err(io("cannot create", &path))?;
                        export_tree(repo, &sub, &path, files, level + 1)?;
                    }
                }
            }
            mode => {
                let blob = repo.find_blob(entry.id()).map_err(gerr)?;
                let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(perm)
                    .open(&path)
                    .map_err(io("cannot create", &path))?;
                f.write_all(blob.content())
                    .map_err(io("cannot write", &path))?;
                *files += 1;
            }
        }
    }
    Ok(())
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_is_idempotent_and_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::new(dir.path()).unwrap();
        let app = AppName::parse("shop").unwrap();
        let p = repos.create(&app).unwrap();
        assert!(p.starts_with(dir.path().join("repos")));
        assert!(repos.exists(&app));
        repos.create(&app).unwrap();
        assert!(repos.size(&app) > 0);
        repos.remove(&app).unwrap();
        assert!(!repos.exists(&app));
        repos.remove(&app).unwrap();
    }

    fn commit(dir: &Path, files: &[(&str, &[u8], i32)], link: Option<(&str, &str)>) -> String {
        let repo = git2::Repository::init_bare(dir).unwrap();
        let mut tb = repo.treebuilder(None).unwrap();
        for (name, content, mode) in files {
            let oid = repo.blob(content).unwrap();
            tb.insert(name, oid, *mode).unwrap();
        }
        if let Some((name, target)) = link {
            let oid = repo.blob(target.as_bytes()).unwrap();
            tb.insert(name, oid, 0o120000).unwrap();
        }
        let tree = repo.find_tree(tb.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@t").unwrap();
        repo.commit(None, &sig, &sig, "m", &tree, &[])
            .unwrap()
            .to_string()
    }

    /// A gitlink's tree is exported only when a sync fetched its commit
    /// (refs/cygni/submodules/SHA), under the same rules: links stay links.
    #[test]
    fn submodules_are_exported_only_when_fetched_and_links_stay_links() {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("r.git");
        let sub_sha = commit(
            &repo_dir,
            &[("lib.txt", b"from the submodule", 0o100644)],
            Some(("escape", "../../../etc/passwd")),
        );
        let repo = git2::Repository::open_bare(&repo_dir).unwrap();
        let sub_oid = git2::Oid::from_str(&sub_sha).unwrap();
        let mut tb = repo.treebuilder(None).unwrap();
        tb.insert("app.txt", repo.blob(b"top").unwrap(), 0o100644)
            .unwrap();
        tb.insert("lib", sub_oid, 0o160000).unwrap();
        let tree = repo.find_tree(tb.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@t").unwrap();
        let sha = repo
            .commit(None, &sig, &sig, "super", &tree, &[])
            .unwrap()
            .to_string();

        // The commit is in the repository but was not fetched as a submodule.
        let plain = dir.path().join("plain");
        assert_eq!(export(&repo, &sha, &plain).unwrap(), 1);
        assert!(!plain.join("lib").exists());

        repo.reference(
            &format!("refs/cygni/submodules/{sub_sha}"),
            sub_oid,
            true,
            "t",
        )
        .unwrap();
        let out = dir.path().join("out");
        assert_eq!(export(&repo, &sha, &out).unwrap(), 2);
        assert_eq!(
            std::fs::read(out.join("lib/lib.txt")).unwrap(),
            b"from the submodule"
        );
        assert!(std::fs::symlink_metadata(out.join("lib/escape"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn export_writes_files_and_never_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("r.git");
        let sha = commit(
            &repo_dir,
            &[
                ("run.sh", b"#!/bin/sh\n", 0o100755),
                ("README", b"hi", 0o100644),
            ],
            Some(("Procfile", "/etc/passwd")),
        );
        let repo = open_pushed(&repo_dir, &[]).unwrap();
        let dest = dir.path().join("out");
        assert_eq!(export(&repo, &sha, &dest).unwrap(), 2);
        assert_eq!(std::fs::read(dest.join("README")).unwrap(), b"hi");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dest.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        // The symlink is a link, and reading Procfile from objects does not follow it.
        assert!(std::fs::symlink_metadata(dest.join("Procfile"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(read_file(&repo, &sha, "Procfile").unwrap(), None);
        assert_eq!(read_file(&repo, &sha, "README").unwrap().unwrap(), b"hi");
        assert_eq!(read_file(&repo, &sha, "missing").unwrap(), None);
        // The destination must be fresh.
        assert!(export(&repo, &sha, &dest).is_err());
    }

    #[test]
    fn env_files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let env = GitEnv::install(dir.path()).unwrap();
        let cfg = std::fs::read_to_string(&env.global_config).unwrap();
        assert!(cfg.contains("fsckObjects = true"));
        assert!(cfg.contains("denyDeletes = false"));
        assert!(env.hooks_dir.join("pre-receive").is_file());
    }
}
