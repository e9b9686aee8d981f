//! Records of the process groups the local runtime started, so that a
//! daemon killed with `kill -9` finds them again at its next start.
//!
//! ```text
//! spawn ──► RUN_DIR/INSTANCE_ID: "PGID START_TICKS"   (written before the process is reported)
//! stop / supervisor end ──► file removed
//! daemon start ──► reap(): every file left = a daemon that died; kill what is left of
//!                  each group (members born after its leader), remove the file
//! ```
//!
//! `PR_SET_PDEATHSIG` kills an instance's leader when the daemon dies, but
//! not what the leader started: those become orphans of pid 1 and kept
//! running beside the instances the next daemon started. The start time
//! (clock ticks since boot, `/proc/PID/stat` field 22) keeps a reused pid
//! from being mistaken for ours.

use std::path::{Path, PathBuf};

use crate::runtime::InstanceId;

/// Where the records live, one file per instance.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(dir: PathBuf) -> Records {
        Records { dir }
    }

    fn path(&self, id: &InstanceId) -> PathBuf {
        self.dir.join(&id.0)
    }

    /// Remember that `pgid` (a group leader's pid) runs `id`.
    pub fn write(&self, id: &InstanceId, pgid: u32) {
        let Some(start) = start_ticks(pgid) else {
            return;
        };
        if let Err(e) = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(self.path(id), format!("{pgid} {start}\n")))
        {
            tracing::warn!(instance = %id, error = %e, "cannot record an instance's process group");
        }
    }

    pub fn remove(&self, id: &InstanceId) {
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Kill whatever is left of every recorded group, and forget them.
    /// Returns how many processes were killed.
    pub fn reap(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut killed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if let Some((pgid, start)) = read_record(&path) {
                killed += kill_group_members(pgid, start);
            }
            let _ = std::fs::remove_file(&path);
        }
        killed
    }
}

fn read_record(path: &Path) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// `/proc/PID/stat`: (pgrp, start time in ticks).
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: skip past it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): pgrp is field 5, starttime field 22.
    let pgrp = fields.get(2)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((pgrp, start))
}

fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// SIGKILL every process in group `pgid` that started no earlier than the
/// recorded leader did.
fn kill_group_members(pgid: u32, leader_start: u64) -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        match stat(pid) {
            Some((pgrp, start)) if pgrp == pgid && start >= leader_start => {
                let Ok(pid) = i32::try_from(pid) else {
                    continue;
                };
                // SAFETY: kill(2) with a pid we just read; no memory is
                // involved. A process that is already gone gives ESRCH.
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
            _ => {}
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_reads_this_process() {
        let me = std::process::id();
        let (pgrp, start) = stat(me).expect("our own stat");
        assert!(pgrp > 0 && start > 0);
    }

    #[test]
    fn a_record_of_a_pid_that_is_gone_kills_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path().to_owned());
        std::fs::write(dir.path().join("x-v1-web-1"), "999999999 1\n").unwrap();
        assert_eq!(records.reap(), 0);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
