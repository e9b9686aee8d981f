//! Per-app log store: instance output, platform messages and build logs.
//!
//! One [`LogStore`] per daemon, rooted at `DATA/logs`:
//!
//! ```text
//! DATA/logs/APP/app.log       one line per entry: "TIME SOURCE: TEXT"
//! DATA/logs/APP/app.log.1     the previous app.log, after rotation
//! DATA/logs/APP/build-vN.log  raw build output of release N
//! ```
//!
//! Writers (the runtime's output pumps, the deploy pipeline) call
//! [`LogStore::append`]; readers get the recent past from [`LogStore::tail`]
//! and the live stream from [`LogStore::follow`] (`logs -f`).
//!
//! Why a `std::sync::Mutex<File>` per app and not a writer task: an append
//! is one `write(2)` of a short line into the page cache, a few
//! microseconds, so holding a per-app lock for it on an async worker is
//! cheaper than a channel hop, and it keeps three properties for free: a
//! line is on disk (in the page cache) before `append` returns, the file and
//! the live stream see lines in the same order, and nothing is buffered that
//! a crash could lose. Apps never contend with each other.
//!
//! Disk use is bounded: `app.log` is renamed to `app.log.1` when it reaches
//! the rotation size (10 MiB by default), so an app holds at most about
//! twice that in instance logs. Build logs are one file per release; pruning
//! old releases removes them (see [`LogStore::remove_build_log`]).
//!
//! `tail`, `build_log` and `read_build_log` do blocking file I/O (bounded
//! by the rotation size); async callers run them in `spawn_blocking`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::broadcast;

use crate::names::AppName;

/// `app.log` is rotated to `app.log.1` once it reaches this size.
pub const DEFAULT_ROTATE_BYTES: u64 = 10 * 1024 * 1024;

/// How many live lines a slow `logs -f` reader may fall behind before it
/// gets [`broadcast::error::RecvError::Lagged`] instead of blocking writers.
const FOLLOW_CAPACITY: usize = 1024;

/// `tail` reads the log backwards in blocks of this size, so `logs -n 100`
/// costs a few reads, not the whole file.
const TAIL_BLOCK: u64 = 64 * 1024;

const APP_LOG: &str = "app.log";
const APP_LOG_ROTATED: &str = "app.log.1";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("could not create log directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not read log {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not open build log {path}: {source}")]
    OpenBuildLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no build log for {app} v{release}")]
    BuildLogNotFound { app: AppName, release: u32 },
    #[error("could not remove logs at {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One entry of an app's log.
///
/// Displayed (and stored) as `2026-11-22T12:00:00.123Z web.1: text`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    #[serde(serialize_with = "serialize_time")]
    pub time: DateTime<Utc>,
    /// Who wrote it: an instance (`web.1`), `cygni`, `release`, ...
    pub source: String,
    pub text: String,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.time.to_rfc3339_opts(SecondsFormat::Millis, true),
            self.source,
            self.text
        )
    }
}

impl LogLine {
    /// Parses a stored line; None for a line that is not one of ours (a torn
    /// write after a full disk, say), which readers skip.
    fn parse(raw: &[u8]) -> Option<LogLine> {
        let raw = String::from_utf8_lossy(raw);
        let (time, rest) = raw.split_once(' ')?;
        let (source, text) = rest.split_once(": ")?;
        let time = DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc);
        Some(LogLine {
            time,
            source: source.to_owned(),
            text: text.to_owned(),
        })
    }

    /// `web` selects `web.1`, `web.2`, ... (not `webhook.1`); `web.1`
    /// selects exactly `web.1` (not `web.10`).
    pub fn is_from(&self, prefix: &str) -> bool {
        match self.source.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('.'),
            None => false,
        }
    }
}

fn serialize_time<S: serde::Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The log store of one daemon. Cheap to share behind an `Arc`.
pub struct LogStore {
    dir: PathBuf,
    rotate_bytes: u64,
    apps: Mutex<HashMap<AppName, Arc<AppLog>>>,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// One app's open log: the file (opened on first write) and its live stream.
struct AppLog {
    dir: PathBuf,
    file: Mutex<LogFile>,
    live: broadcast::Sender<LogLine>,
}

#[derive(Default)]
struct LogFile {
    file: Option<File>,
    len: u64,
    /// Set after a failed write so a full disk gives one warning, not one
    /// per line; cleared by the next write that succeeds.
    failing: bool,
}

impl LogStore {
    /// Opens (creating it if needed) the store rooted at `dir` (`DATA/logs`).
    pub fn open(dir: &Path) -> Result<LogStore, LogError> {
        LogStore::open_with_limit(dir, DEFAULT_ROTATE_BYTES)
    }

    /// Like [`LogStore::open`], rotating `app.log` at `rotate_bytes`.
    pub fn open_with_limit(dir: &Path, rotate_bytes: u64) -> Result<LogStore, LogError> {
        fs::create_dir_all(dir).map_err(|source| LogError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(LogStore {
            dir: dir.to_owned(),
            rotate_bytes: rotate_bytes.max(1),
            apps: Mutex::new(HashMap::new()),
        })
    }

    /// Appends one line from `source` (`web.1`, `cygni`, `release`) to the
    /// app's log and to its live stream.
    ///
    /// Never fails and never panics: a log write must not take an app or a
    /// deploy down. Trailing `\n`/`\r\n` is stripped, invalid UTF-8 is
    /// replaced, and a line with embedded newlines becomes several entries so
    /// the file stays one entry per line. Failures are reported through
    /// `tracing`, once until writes succeed again.
    pub fn append(&self, app: &AppName, source: &str, line: &[u8]) {
        let log = self.app(app);
        let source = clean_source(source);
        let text = String::from_utf8_lossy(strip_newline(line));

        let mut file = lock(&log.file);
        // The time is taken under the lock so the file is in time order.
        let time = Utc::now();
        let entries: Vec<LogLine> = text
            .split('\n')
            .map(|part| LogLine {
                time,
                source: source.clone(),
                text: part.strip_suffix('\r').unwrap_or(part).to_owned(),
            })
            .collect();
        let mut bytes = String::new();
        for entry in &entries {
            // Writing into a String cannot fail.
            let _ = fmt::Write::write_fmt(&mut bytes, format_args!("{entry}\n"));
        }
        file.write(&log.dir, bytes.as_bytes(), self.rotate_bytes, app);
        for entry in entries {
            // No receiver is the normal case: nobody runs `logs -f`.
            let _ = log.live.send(entry);
        }
    }

    /// The last `n` entries of the app's log, oldest first, optionally only
    /// those from `source_prefix` (`web` for all web instances, `web.1` for
    /// one). An app without logs has an empty tail.
    pub fn tail(
        &self,
        app: &AppName,
        n: usize,
        source_prefix: Option<&str>,
    ) -> Result<Vec<LogLine>, LogError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let log = self.app(app);
        let current_path = log.dir.join(APP_LOG);
        let rotated_path = log.dir.join(APP_LOG_ROTATED);
        // Open both files under the write lock: rotation renames under that
        // lock, so the two descriptors are a consistent pair however long
        // the reading below takes.
        let (current, rotated) = {
            let _file = lock(&log.file);
            (
                open_if_exists(&current_path)?,
                open_if_exists(&rotated_path)?,
            )
        };

        let mut newest_first = Vec::new();
        for (file, path) in [(current, current_path), (rotated, rotated_path)] {
            let Some(file) = file else { continue };
            scan_backwards(&file, |raw| {
                if let Some(line) = LogLine::parse(raw) {
                    if source_prefix.is_none_or(|p| line.is_from(p)) {
                        newest_first.push(line);
                    }
                }
                newest_first.len() < n
            })
            .map_err(|source| LogError::Read { path, source })?;
            if newest_first.len() >= n {
                break;
            }
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// Live entries of the app's log from now on. A reader that falls more
    /// than 1024 lines behind gets `RecvError::Lagged` and carries on; the
    /// stream ends (`RecvError::Closed`) when the app's logs are removed.
    pub fn follow(&self, app: &AppName) -> broadcast::Receiver<LogLine> {
        self.app(app).live.subscribe()
    }

    /// A writer for release `release`'s build log (`build-vN.log`); it
    /// appends raw bytes, as the builder emits them.
    pub fn build_log(&self, app: &AppName, release: u32) -> Result<BuildLogWriter, LogError> {
        let dir = self.dir.join(app.as_str());
        fs::create_dir_all(&dir).map_err(|source| LogError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let path = build_log_path(&dir, release);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| LogError::OpenBuildLog {
                path: path.clone(),
                source,
            })?;
        Ok(BuildLogWriter { file, path })
    }

    /// The whole build log of release `release`.
    pub fn read_build_log(&self, app: &AppName, release: u32) -> Result<Vec<u8>, LogError> {
        let path = build_log_path(&self.dir.join(app.as_str()), release);
        fs::read(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => LogError::BuildLogNotFound {
                app: app.clone(),
                release,
            },
            _ => LogError::Read { path, source },
        })
    }

    /// Removes one release's build log (when old releases are pruned); a
    /// missing log is fine.
    pub fn remove_build_log(&self, app: &AppName, release: u32) -> Result<(), LogError> {
        let path = build_log_path(&self.dir.join(app.as_str()), release);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(LogError::Remove { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Removes every log of the app (on `apps:destroy`) and ends its live
    /// streams. Stop the app's instances first, or their next line starts a
    /// new log.
    pub fn remove_app(&self, app: &AppName) -> Result<(), LogError> {
        let removed = lock(&self.apps).remove(app);
        // Close the file before removing it; dropping the sender also ends
        // every `follow` stream once its last reference goes.
        if let Some(log) = &removed {
            lock(&log.file).file = None;
        }
        drop(removed);
        let path = self.dir.join(app.as_str());
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(LogError::Remove { path, source: e })
            }
            _ => Ok(()),
        }
    }

    fn app(&self, app: &AppName) -> Arc<AppLog> {
        let mut apps = lock(&self.apps);
        apps.entry(app.clone())
            .or_insert_with(|| {
                Arc::new(AppLog {
                    dir: self.dir.join(app.as_str()),
                    file: Mutex::new(LogFile::default()),
                    live: broadcast::channel(FOLLOW_CAPACITY).0,
                })
            })
            .clone()
    }
}

impl LogFile {
    fn write(&mut self, dir: &Path, bytes: &[u8], rotate_bytes: u64, app: &AppName) {
        match self.try_write(dir, bytes, rotate_bytes) {
            Ok(()) => self.failing = false,
            Err(error) => {
                if !self.failing {
                    tracing::warn!(%app, dir = %dir.display(), %error, "could not write app log; dropping lines until it works again");
                }
                self.failing = true;
                // Reopen next time: the directory may have been removed or
                // the disk freed.
                self.file = None;
            }
        }
    }

    fn try_write(&mut self, dir: &Path, bytes: &[u8], rotate_bytes: u64) -> io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                fs::create_dir_all(dir)?;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(APP_LOG))?;
                self.len = file.metadata()?.len();
                self.file.insert(file)
            }
        };
        file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        if self.len >= rotate_bytes {
            self.file = None;
            fs::rename(dir.join(APP_LOG), dir.join(APP_LOG_ROTATED))?;
        }
        Ok(())
    }
}

/// Appends raw bytes to one release's build log. Dropping it closes the file.
#[derive(Debug)]
pub struct BuildLogWriter {
    file: File,
    path: PathBuf,
}

impl BuildLogWriter {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Write for BuildLogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn build_log_path(app_dir: &Path, release: u32) -> PathBuf {
    app_dir.join(format!("build-v{release}.log"))
}

/// A poisoned lock only means another thread panicked mid-append; the file
/// state is still usable, and logging must not spread the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Sources are ours (`web.1`, `cygni`), but the stored format relies on a
/// source having no space or colon, so anything else is replaced.
fn clean_source(source: &str) -> String {
    let cleaned: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '[' | ']') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".to_owned()
    } else {
        cleaned
    }
}

fn open_if_exists(path: &Path) -> Result<Option<File>, LogError> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LogError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Calls `visit` on each line of `file`, last line first, until it returns
/// false. Reads from the length the file had when called, in blocks.
fn scan_backwards(file: &File, mut visit: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
    let mut pos = file.metadata()?.len();
    // Bytes from `pos` to the end of the lines not yet visited.
    let mut pending: Vec<u8> = Vec::new();
    while pos > 0 {
        let start = pos.saturating_sub(TAIL_BLOCK);
        let mut block = vec![0; (pos - start) as usize];
        file.read_exact_at(&mut block, start)?;
        block.extend_from_slice(&pending);
        pending = block;
        pos = start;
        // Everything after a newline is a whole line; the part before the
        // first newline may continue in the previous block.
        while let Some(i) = pending.iter().rposition(|&b| b == b'\n') {
            let line = &pending[i + 1..];
            if !line.is_empty() && !visit(line) {
                return Ok(());
            }
            pending.truncate(i);
        }
    }
    if !pending.is_empty() {
        visit(&pending);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn app(name: &str) -> AppName {
        AppName::parse(name).expect("test app names are valid")
    }

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn tail_returns_last_lines_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let shop = app("shop");
        for i in 0..10 {
            store.append(&shop, "web.1", format!("line {i}\n").as_bytes());
        }
        let tail = store.tail(&shop, 3, None).unwrap();
        assert_eq!(texts(&tail), ["line 7", "line 8", "line 9"]);
        assert!(tail.iter().all(|l| l.source == "web.1"));
        assert_eq!(store.tail(&shop, 100, None).unwrap().len(), 10);
        assert!(store.tail(&shop, 0, None).unwrap().is_empty());
        assert!(store.tail(&app("other"), 5, None).unwrap().is_empty());
    }

    #[test]
    fn tail_filters_by_source_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let shop = app("shop");
        for source in ["web.1", "webhook.1", "web.10", "web.2", "cygni", "worker.1"] {
            store.append(&shop, source, source.as_bytes());
        }
        let web = store.tail(&shop, 10, Some("web")).unwrap();
        assert_eq!(texts(&web), ["web.1", "web.10", "web.2"]);
        let web1 = store.tail(&shop, 10, Some("web.1")).unwrap();
        assert_eq!(texts(&web1), ["web.1"]);
        // The filter applies before counting: the last 1 web line, not the
        // last line if it is from web.
        let last_web = store.tail(&shop, 1, Some("web")).unwrap();
        assert_eq!(texts(&last_web), ["web.2"]);
    }

    #[test]
    fn lines_are_cleaned_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let shop = app("shop");
        store.append(&shop, "web.1", b"crlf\r\n");
        store.append(&shop, "web.1", b"bad \xff utf8");
        store.append(&shop, "web.1", b"two\nlines");
        store.append(&shop, "odd source: x", b"colon: in text");
        store.append(&shop, "web.1", b"");
        let tail = store.tail(&shop, 10, None).unwrap();
        assert_eq!(
            texts(&tail),
            [
                "crlf",
                "bad \u{fffd} utf8",
                "two",
                "lines",
                "colon: in text",
                ""
            ]
        );
        assert_eq!(tail[4].source, "odd_source__x");
    }

    #[test]
    fn display_and_parse_agree() {
        let line = LogLine {
            time: DateTime::parse_from_rfc3339("2026-11-22T12:00:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
            source: "web.1".into(),
            text: "GET / 200".into(),
        };
        let shown = line.to_string();
        assert_eq!(shown, "2026-11-22T12:00:00.123Z web.1: GET / 200");
        assert_eq!(LogLine::parse(shown.as_bytes()), Some(line.clone()));
        let json = serde_json::to_string(&line).unwrap();
        assert!(
            json.contains(r#""time":"2026-11-22T12:00:00.123Z""#),
            "{json}"
        );
        assert_eq!(LogLine::parse(b"not a log line"), None);
    }

    #[test]
    fn rotation_bounds_disk_use_and_tail_spans_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 2000;
        let store = LogStore::open_with_limit(dir.path(), cap).unwrap();
        let shop = app("shop");
        for i in 0..500 {
            store.append(&shop, "web.1", format!("entry {i:04}").as_bytes());
        }
        let app_dir = dir.path().join("shop");
        let current = fs::metadata(app_dir.join(APP_LOG)).unwrap().len();
        let rotated = fs::metadata(app_dir.join(APP_LOG_ROTATED)).unwrap().len();
        let mut files: Vec<_> = fs::read_dir(&app_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, [APP_LOG, APP_LOG_ROTATED]);
        assert!(current < cap, "app.log is {current} bytes");
        // A file is rotated by the write that crosses the cap.
        assert!(
            rotated >= cap && rotated < cap + 100,
            "app.log.1 is {rotated} bytes"
        );

        // The newest entries, in order, straddling the rotation.
        let in_current = fs::read_to_string(app_dir.join(APP_LOG))
            .unwrap()
            .lines()
            .count();
        let n = in_current + 5;
        let tail = store.tail(&shop, n, None).unwrap();
        let expected: Vec<String> = (500 - n..500).map(|i| format!("entry {i:04}")).collect();
        assert_eq!(texts(&tail), expected);
    }

    #[test]
    fn tail_reads_lines_longer_than_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let shop = app("shop");
        let long = "x".repeat(3 * TAIL_BLOCK as usize);
        store.append(&shop, "web.1", b"first");
        store.append(&shop, "web.1", long.as_bytes());
        store.append(&shop, "web.1", b"last");
        let tail = store.tail(&shop, 3, None).unwrap();
        assert_eq!(tail.len(), 3);
        assert_eq!(tail[0].text, "first");
        assert_eq!(tail[1].text, long);
        assert_eq!(tail[2].text, "last");
    }

    #[tokio::test]
    async fn follow_sees_new_lines_and_ends_on_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let shop = app("shop");
        store.append(&shop, "web.1", b"before");
        let mut live = store.follow(&shop);
        store.append(&shop, "web.1", b"after");
        store.append(&app("other"), "web.1", b"not ours");
        let line = tokio::time::timeout(Duration::from_secs(5), live.recv())
            .await
            .expect("a line within the deadline")
            .unwrap();
        assert_eq!(
            (line.source.as_str(), line.text.as_str()),
            ("web.1", "after")
        );

        store.remove_app(&shop).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), live.recv())
            .await
            .expect("the stream ends within the deadline");
        assert!(
            matches!(end, Err(broadcast::error::RecvError::Closed)),
            "{end:?}"
        );
        assert!(!dir.path().join("shop").exists());
        assert!(store.tail(&shop, 10, None).unwrap().is_empty());
        // Removing twice is fine.
        store.remove_app(&shop).unwrap();
    }

    #[test]
    fn build_logs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let shop = app("shop");
        {
            let mut w = store.build_log(&shop, 3).unwrap();
            w.write_all(b"-----> Building\n").unwrap();
            w.write_all(b"partial").unwrap();
            w.write_all(b" \x1b[32mdone\x1b[0m\n").unwrap();
            assert!(w.path().ends_with("shop/build-v3.log"));
        }
        assert_eq!(
            store.read_build_log(&shop, 3).unwrap(),
            b"-----> Building\npartial \x1b[32mdone\x1b[0m\n"
        );
        let missing = store.read_build_log(&shop, 4).unwrap_err();
        assert!(matches!(
            missing,
            LogError::BuildLogNotFound { release: 4, .. }
        ));
        assert_eq!(missing.to_string(), "no build log for shop v4");
        store.remove_build_log(&shop, 3).unwrap();
        store.remove_build_log(&shop, 3).unwrap();
        assert!(store.read_build_log(&shop, 3).is_err());
    }

    #[test]
    fn appends_survive_a_removed_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let shop = app("shop");
        store.append(&shop, "web.1", b"one");
        fs::remove_dir_all(dir.path().join("shop")).unwrap();
        // The open file now points at a deleted inode; this write is lost
        // silently, which is the price of not failing the app.
        store.append(&shop, "web.1", b"lost");
        // Making the path a file makes the next reopen fail without panicking.
        store.remove_app(&shop).unwrap();
        fs::write(dir.path().join("shop"), b"").unwrap();
        store.append(&shop, "web.1", b"cannot be written");
        fs::remove_file(dir.path().join("shop")).unwrap();
        store.append(&shop, "web.1", b"two");
        assert_eq!(texts(&store.tail(&shop, 10, None).unwrap()), ["two"]);
    }
}
