//! The floor account of the local runtime: who a process runs as when the
//! daemon is root and its spec names no uid/gid.
//!
//! The daemon's specs always name one when it is root: each app's own
//! (`state::app_users`, no passwd entry). This is what a spec without one
//! gets instead of root (`nobody`), for the runtime used on its own (the
//! runtime tests). The shared `cygni-app` account of older releases is no
//! longer looked up.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// An account a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// The account's home from passwd, for information: apps get
    /// `HOME` = their slug directory, as on Heroku (`HOME=/app`).
    pub home: Option<PathBuf>,
}

/// The overflow id most systems give `nobody`.
const NOBODY_ID: u32 = 65534;

impl RunAs {
    /// The floor account: none when the daemon is not root (processes
    /// then run as the daemon's own user); otherwise `nobody`.
    pub fn resolve_default() -> Option<RunAs> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        match RunAs::lookup("nobody") {
            // An account mapped to root would defeat the point.
            Ok(Some(run_as)) if run_as.uid != 0 && run_as.gid != 0 => return Some(run_as),
            Ok(Some(_)) => {
                tracing::warn!("refusing to run apps as nobody: it has uid or gid 0")
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "could not look up nobody"),
        }
        // Never fall back to running apps as root.
        tracing::warn!("no nobody account; running apps as uid/gid {NOBODY_ID}");
        Some(RunAs {
            uid: NOBODY_ID,
            gid: NOBODY_ID,
            home: None,
        })
    }

    /// Looks `name` up in the user database (passwd, LDAP, ... through NSS).
    pub fn lookup(name: &str) -> io::Result<Option<RunAs>> {
        let name = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
        let found = crate::nss::lookup(|buf| {
            // SAFETY: zeroed passwd is a valid out-parameter.
            let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call and `buf.len()`
            // is the buffer's real size.
            let rc = unsafe {
                libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut found,
                )
            };
            let entry = (rc == 0 && !found.is_null()).then(|| {
                let home = (!pwd.pw_dir.is_null()).then(|| {
                    // SAFETY: getpwnam_r succeeded, so pw_dir points to a
                    // NUL-terminated string inside `buf`, still alive here.
                    let dir = unsafe { CStr::from_ptr(pwd.pw_dir) };
                    PathBuf::from(OsStr::from_bytes(dir.to_bytes()))
                });
                RunAs {
                    uid: pwd.pw_uid,
                    gid: pwd.pw_gid,
                    home,
                }
            });
            (rc, entry)
        });
        match found {
            crate::nss::Found::Entry(run_as) => Ok(Some(run_as)),
            crate::nss::Found::None => Ok(None),
            crate::nss::Found::Error(rc) => Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_root_and_misses_unknown_users() {
        let root = RunAs::lookup("root").unwrap().expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(RunAs::lookup("no-such-user-cygni").unwrap(), None);
        assert!(RunAs::lookup("a\0b").is_err());
    }

    #[test]
    fn default_is_unprivileged_when_root() {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        match RunAs::resolve_default() {
            Some(run_as) => {
                assert!(root, "run_as is only set when the daemon is root");
                assert_ne!(run_as.uid, 0);
                assert_ne!(run_as.gid, 0);
            }
            None => assert!(!root, "a root daemon must not run apps as root"),
        }
    }
}
