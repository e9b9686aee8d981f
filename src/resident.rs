//! The daemon's resident set: keeping the binary's code pages to what runs.
//!
//! Most of an idle daemon's RSS is not data but its own machine code:
//! measured on a release build, 2.4 MB anonymous against 16 MB of the
//! executable's pages. The binary carries 36 MB of text (nixpacks, kube,
//! bollard, aws-lc), and on every page fault in it the kernel maps up to
//! 64 KiB around the faulting page (fault-around), so start-up code spread
//! over the text leaves many mostly unused windows mapped for good.
//!
//! [`map_code_on_demand`] asks for `MADV_RANDOM` on the executable's text
//! mapping, which turns fault-around off for it, and then drops what is
//! mapped: pages come back one by one, only when they run again. Text is
//! a private file mapping that nothing writes, so dropping its page-table
//! entries loses nothing; the pages stay in the page cache, and the cost
//! is a minor fault per page of code that runs again. Read-only data is
//! left alone: after relocation part of it is the process's own copy.
//!
//! The allocator's side (arenas glibc keeps after a load) is
//! `malloc_trim` in the proxy's quiet sweeps (`proxy::server`).

use std::io;

/// Advise the running executable's text mapping as described in the
/// module docs. Returns the bytes advised (0 where there is no such
/// mapping, for example when the binary was replaced on disk).
pub fn map_code_on_demand() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for line in maps.lines() {
        let Some((start, end)) = text_mapping(line, &exe) else {
            continue;
        };
        let len = end - start;
        // SAFETY: [start, end) is a mapping of this process, read from
        // /proc/self/maps: an executable, private, file-backed mapping of
        // our own binary. MADV_RANDOM only changes how faults on it are
        // served. MADV_DONTNEED on a private file mapping that was never
        // written (text is not) only drops page-table entries; the next
        // access maps the same page from the file again.
        unsafe {
            let addr = start as *mut libc::c_void;
            if libc::madvise(addr, len, libc::MADV_RANDOM) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::madvise(addr, len, libc::MADV_DONTNEED) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        advised += len;
    }
    Ok(advised)
}

/// The address range of a `/proc/self/maps` line if it is an executable,
/// private mapping of `exe`.
fn text_mapping(line: &str, exe: &std::path::Path) -> Option<(usize, usize)> {
    // 55d0c8a00000-55d0cad00000 r-xp 00200000 fd:01 1234   /usr/local/bin/cygni
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let path = fields.nth(3)?;
    // A path with spaces or " (deleted)" has more fields: not ours to touch.
    if perms != "r-xp" || fields.next().is_some() || std::path::Path::new(path) != exe {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (end > start).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn finds_only_the_executables_text() {
        let exe = Path::new("/usr/local/bin/cygni");
        let line = "55d0c8a00000-55d0cad00000 r-xp 00200000 fd:01 1234   /usr/local/bin/cygni";
        assert_eq!(
            text_mapping(line, exe),
            Some((0x55d0c8a00000, 0x55d0cad00000))
        );
        for other in [
            "55d0c8800000-55d0c8a00000 r--p 00000000 fd:01 1234   /usr/local/bin/cygni",
            "55d0cad00000-55d0cad10000 rw-p 00500000 fd:01 1234   /usr/local/bin/cygni",
            "7f0000000000-7f0000100000 r-xp 00000000 fd:01 99   /usr/lib/libc.so.6",
            "55d0c8a00000-55d0cad00000 r-xp 00200000 fd:01 1234   /usr/local/bin/cygni (deleted)",
            "7ffd1000-7ffd2000 r-xp 00000000 00:00 0   [vdso]",
            "garbage",
        ] {
            assert_eq!(text_mapping(other, exe), None, "{other}");
        }
    }

    #[test]
    fn advising_our_own_text_keeps_the_process_running() {
        // The test binary's own text: after the advice every function
        // still runs (its pages fault back in).
        let advised = map_code_on_demand().expect("madvise on our own text");
        assert!(advised > 0, "the test binary has a text mapping");
        let v: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        assert_eq!(v.iter().sum::<u64>(), 1_498_500);
        assert!(format!("{:?}", std::time::Duration::from_millis(1500)).contains("1.5"));
    }
}
