//! Deploys from a repository URL (`apps:create --from`, `git:sync`): the
//! URL policy, fetching, and the pieces of the sync's state machine that
//! need no database. The service layer (`service/sync.rs`) sequences them.
//!
//! ```text
//! queued ─► fetching ─► analysing ─► building ─► deploying ─► healthy ─► live
//!    └──────────┴───────────┴────────────┴────────────┴───────────┴──► failed
//!   (URL policy)  (git fetch      (commit,     (local push: the release pipeline,
//!                  into the app's   tree)        states read from its step lines)
//!                  repo, bounded)
//! ```
//!
//! A sync fetches into the app's own repository under `refs/cygni/sync/N`
//! (with `--submodules`, the commits its https submodules record under
//! `refs/cygni/submodules/SHA`, see [`submodules`]) and then pushes that commit to the deploy branch from the daemon
//! itself ([`crate::local_push`]), so it runs the pipeline, the hook and
//! the output of a push. A failed sync leaves the branch, the live release
//! and the database as they were (the sync's own record aside).

pub mod fetch;
pub mod submodules;
pub mod url;

use std::time::Duration;

/// A sync's states, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncState {
    Queued,
    Fetching,
    Analysing,
    Building,
    Deploying,
    Healthy,
    Live,
    Failed,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Queued => "queued",
            SyncState::Fetching => "fetching",
            SyncState::Analysing => "analysing",
            SyncState::Building => "building",
            SyncState::Deploying => "deploying",
            SyncState::Healthy => "healthy",
            SyncState::Live => "live",
            SyncState::Failed => "failed",
        }
    }
}

/// What a line of the pipeline's output says about where the deploy is:
/// its step lines (`-----> Deploying APP vN`, `-----> Starting web=1`,
/// `-----> Released vN`) mark the stages. Returns the state and, for the
/// first, the release number.
pub fn state_of_line(line: &str) -> Option<(SyncState, Option<u32>)> {
    let step = line.strip_prefix("-----> ")?;
    if let Some(rest) = step.strip_prefix("Deploying ") {
        let version = rest
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.strip_prefix('v'))
            .and_then(|v| v.parse().ok());
        return Some((SyncState::Building, version));
    }
    if step.starts_with("Starting ") || step.starts_with("Rolling out ") {
        return Some((SyncState::Deploying, None));
    }
    if let Some(rest) = step.strip_prefix("Released v") {
        let version = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        return Some((SyncState::Healthy, version));
    }
    None
}

/// `main` → `refs/heads/main`; `refs/heads/x` and `refs/tags/x` as they
/// are. Refused: anything git would not take as a ref name, and anything
/// that looks like an option.
pub fn parse_ref(input: &str) -> Result<String, String> {
    let full = if input.starts_with("refs/") {
        input.to_owned()
    } else {
        format!("refs/heads/{input}")
    };
    let bad = || format!("{input:?} is not a branch or tag (e.g. main, refs/tags/v1.2)");
    let name = full.strip_prefix("refs/").ok_or_else(bad)?;
    let ok_prefix = name.starts_with("heads/") || name.starts_with("tags/");
    let ok_chars = full
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    let ok_shape = !input.is_empty()
        && !input.starts_with('-')
        && !full.contains("..")
        && !full.contains("//")
        && !full.ends_with('/')
        && !full.ends_with(".lock")
        && !full.ends_with('.')
        && !full.split('/').any(|c| c.starts_with('.') || c.is_empty())
        && full.len() <= 255;
    if ok_prefix && ok_chars && ok_shape && name.split('/').count() >= 2 {
        Ok(full)
    } else {
        Err(bad())
    }
}

/// The short name of a ref for messages: `main`, `tags/v1`.
pub fn short_ref(full: &str) -> &str {
    full.strip_prefix("refs/heads/")
        .or_else(|| full.strip_prefix("refs/"))
        .unwrap_or(full)
}

/// `--every` values: `30s`, `10m`, `2h`, `1d`; `off` is None.
pub fn parse_every(s: &str, min: Duration) -> Result<Option<Duration>, String> {
    if s == "off" {
        return Ok(None);
    }
    let secs = crate::span::parse_secs(s)
        .ok_or_else(|| format!("{s:?} is not an interval: use e.g. 10m, 1h, 1d, or off"))?;
    let every = Duration::from_secs(secs);
    if every < min {
        return Err(format!(
            "{s} is too often: syncs run at most every {}s (sync_min_interval_secs)",
            min.as_secs()
        ));
    }
    if secs > 30 * 86_400 {
        return Err(format!("{s} is too long: at most 30d"));
    }
    Ok(Some(every))
}

/// Is a scheduled check due? Never checked: yes.
pub fn due(last_checked_at: Option<i64>, every_secs: i64, now: i64) -> bool {
    match last_checked_at {
        None => true,
        Some(t) => now.saturating_sub(t) >= every_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_lines_mark_the_states() {
        assert_eq!(
            state_of_line("-----> Deploying shop v3 (main 1a2b3c4)"),
            Some((SyncState::Building, Some(3)))
        );
        assert_eq!(
            state_of_line("-----> Starting web=1"),
            Some((SyncState::Deploying, None))
        );
        assert_eq!(
            state_of_line("-----> Released v3 in 2.1s"),
            Some((SyncState::Healthy, Some(3)))
        );
        assert_eq!(state_of_line("       Procfile declares web"), None);
        assert_eq!(state_of_line("Deploying shop v3"), None);
    }

    #[test]
    fn refs_are_branches_or_tags() {
        assert_eq!(parse_ref("main").unwrap(), "refs/heads/main");
        assert_eq!(parse_ref("feature/x-1").unwrap(), "refs/heads/feature/x-1");
        assert_eq!(parse_ref("refs/tags/v1.2").unwrap(), "refs/tags/v1.2");
        for bad in [
            "",
            "-x",
            "--upload-pack=sh",
            "a..b",
            "a b",
            "refs/remotes/x",
            "x.lock",
            "a//b",
            "refs/heads/",
            ".hidden",
            "a/.b",
            "x;rm",
            "HEAD~1",
        ] {
            assert!(parse_ref(bad).is_err(), "{bad:?}");
        }
        assert_eq!(short_ref("refs/heads/main"), "main");
        assert_eq!(short_ref("refs/tags/v1"), "tags/v1");
    }

    #[test]
    fn intervals_and_the_minimum() {
        let min = Duration::from_secs(60);
        assert_eq!(
            parse_every("10m", min).unwrap(),
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse_every("off", min).unwrap(), None);
        assert!(parse_every("2s", min).unwrap_err().contains("too often"));
        assert_eq!(
            parse_every("2s", Duration::from_secs(1)).unwrap(),
            Some(Duration::from_secs(2))
        );
        for bad in ["", "m", "10", "10x", "-1m", "31d"] {
            assert!(parse_every(bad, min).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn schedule_is_due_after_its_interval() {
        assert!(due(None, 600, 1000));
        assert!(!due(Some(1000), 600, 1599));
        assert!(due(Some(1000), 600, 1600));
        // A clock that went back does not fire at once.
        assert!(!due(Some(2000), 600, 1000));
    }
}
