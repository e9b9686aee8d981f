//! A cgroup (v2) per local instance, so that stopping it stops everything
//! it started, including what left its process group (`setsid`, a double
//! fork), and a daemon killed with `kill -9` finds all of it at the next
//! start.
//!
//! ```text
//! CGROUP2/<the daemon's own cgroup>/cygni-<data dir hash>/   (one per daemon)
//!     shop.web.1-7/      cgroup.procs ◄── the child writes "0" before exec
//!     shop.worker.1-8/   cgroup.kill  ◄── "1" at stop: every process, at once
//! ```
//!
//! The child joins its cgroup itself, between fork and exec and before it
//! drops privileges (moving a process needs write access to the common
//! ancestor's `cgroup.procs`, which only the daemon's user has), so nothing
//! it forks can start outside. The daemon's tree is named after its data
//! dir: two daemons on one host (tests) never sweep each other's.
//!
//! Best effort by design: without a writable cgroup2 hierarchy (cgroup v1
//! only, a container without delegation, not root) instances run as before,
//! in a process group only, and the start logs why once. Under systemd the
//! unit has `Delegate=yes`, which makes the service's subtree the daemon's
//! to manage.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a killed cgroup may take to empty before it is left for the
/// next sweep.
const EMPTY_WAIT: Duration = Duration::from_secs(2);

/// This daemon's tree of instance cgroups.
#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
    next: AtomicU64,
}

impl Cgroups {
    /// Find the cgroup2 hierarchy and make this daemon's tree in it.
    /// `Err` says why instances will run without cgroups.
    pub fn open(data_dir: &Path) -> Result<Cgroups, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 hierarchy is mounted")?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let own = own_cgroup(&own).ok_or("this process has no cgroup2 path")?;
        let name = format!("cygni-{}", short_hash(data_dir));
        let base = mount.join(own.trim_start_matches('/')).join(name);
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", base.display())),
        }
        if !base.join("cgroup.kill").exists() {
            let _ = fs::remove_dir(&base);
            return Err("the kernel has no cgroup.kill (Linux 5.14 or later)".into());
        }
        Ok(Cgroups {
            base,
            next: AtomicU64::new(1),
        })
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// A new, empty cgroup for one process of `instance` (a name of
    /// app, process and index characters).
    pub fn create(&self, instance: &str) -> io::Result<Cgroup> {
        let safe: String = instance
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .base
            .join(format!("{safe}-{}-{seq}", std::process::id()));
        fs::create_dir(&dir)?;
        let procs = match open_write(&dir.join("cgroup.procs")) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                return Err(e);
            }
        };
        Ok(Cgroup { dir, procs })
    }

    /// Kill and remove every cgroup left in this daemon's tree (by a
    /// daemon that was killed). Returns how many processes were in them.
    pub fn sweep(&self) -> usize {
        let Ok(entries) = fs::read_dir(&self.base) else {
            return 0;
        };
        let mut killed = 0;
        for entry in entries.flatten() {
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            killed += count_procs(&dir);
            kill_and_remove(&dir);
        }
        killed
    }
}

/// One process's cgroup: the child joins it through [`Cgroup::procs_fd`];
/// [`Cgroup::kill`] and [`Cgroup::remove`] end it.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    procs: OwnedFd,
}

impl Cgroup {
    /// `cgroup.procs`, open for writing, for the child to write "0" into.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// SIGKILL every process in the cgroup.
    pub fn kill(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), b"1");
    }

    /// Kill what is left, wait (bounded) for it to go, and remove the
    /// cgroup. Blocking; a leftover is swept at the next start.
    pub fn remove(self) {
        kill_and_remove(&self.dir);
    }

    /// Processes in the cgroup now.
    pub fn len(&self) -> usize {
        count_procs(&self.dir)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The child's side, between fork and exec: join the cgroup. Only a
/// `write(2)`: async-signal-safe, no allocation.
pub fn join_in_child(procs_fd: RawFd) -> io::Result<()> {
    // SAFETY: writes one byte from a static buffer to an fd the parent
    // opened and keeps open across the fork.
    let n = unsafe { libc::write(procs_fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn kill_and_remove(dir: &Path) {
    let _ = fs::write(dir.join("cgroup.kill"), b"1");
    let deadline = Instant::now() + EMPTY_WAIT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            // EBUSY: processes are still dying.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "a killed cgroup did not empty; the next start sweeps it");
                return;
            }
        }
    }
}

fn count_procs(dir: &Path) -> usize {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

fn open_write(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a cgroup path"))?;
    // SAFETY: open(2) with a NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The mount point of the cgroup2 hierarchy, from `/proc/self/mountinfo`
/// (the fifth field is the mount point; the filesystem type follows the
/// ` - ` separator).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// This process's path in the cgroup2 hierarchy (`0::/PATH`).
fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_owned())
        .filter(|p| p.starts_with('/'))
}

/// Twelve hex digits naming a data dir.
fn short_hash(path: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(path.as_os_str().as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_others() {
        let info = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
41 33 0:36 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
44 33 0:39 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("25 30 0:23 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn reads_the_unified_line_of_proc_cgroup() {
        let hybrid = "4:memory:/x\n1:cpu:/\n0::/system.slice/cygni.service\n";
        assert_eq!(
            own_cgroup(hybrid).as_deref(),
            Some("/system.slice/cygni.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn daemons_with_other_data_dirs_get_other_trees() {
        let a = short_hash(Path::new("/var/lib/cygni"));
        let b = short_hash(Path::new("/tmp/x/data"));
        assert_eq!(a.len(), 12);
        assert_ne!(a, b);
        assert_eq!(a, short_hash(Path::new("/var/lib/cygni")));
    }
}
