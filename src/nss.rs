//! The buffer protocol of the host's user and group lookups (`getpwnam_r`,
//! `getpwuid_r`, `getgrgid_r`, through NSS: passwd, LDAP, sssd, ...),
//! written once for every caller.

/// What a lookup says.
pub enum Found<T> {
    /// The entry, as `call` read it out of the buffer.
    Entry(T),
    /// No such entry.
    None,
    /// The lookup failed with this error code.
    Error(libc::c_int),
}

/// Run a `get*_r` call with a buffer that doubles on `ERANGE` (up to
/// 1 MiB). `call` makes the call into the buffer it is given and returns
/// its result code, with the entry read out while the buffer lives (`None`
/// when the call found nothing). Some libcs report "no such entry" as
/// `ENOENT` or `ESRCH`; both count as none.
pub fn lookup<T>(
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> Found<T> {
    // SAFETY: sysconf has no preconditions.
    let hint = unsafe { libc::sysconf(libc::_SC_GETPW_R_SIZE_MAX) };
    let mut len = usize::try_from(hint)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(1024);
    loop {
        let mut buf: Vec<libc::c_char> = vec![0; len];
        match call(&mut buf) {
            (0, Some(entry)) => return Found::Entry(entry),
            (0, None) | (libc::ENOENT | libc::ESRCH, _) => return Found::None,
            (libc::ERANGE, _) if len < 1 << 20 => len *= 2,
            (rc, _) => return Found::Error(rc),
        }
    }
}
