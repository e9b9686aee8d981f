//! Submodules of a synced commit (`--submodules`): which ones a commit
//! names, where they live, and fetching exactly the commits it records.
//!
//! ```text
//! commit ── tree: gitlinks (mode 160000, path → commit)
//!    └───── .gitmodules blob (read from git objects, never a checkout): path → url
//!              │  relative (./x, ../x) → against the superproject's URL
//!              ▼
//!        https only (http only when the app's own URL is http), the same
//!        address check and pin as the app's URL
//!              ▼
//!        git fetch URL <commit>:refs/cygni/submodules/<commit>   (kept, reachable)
//!              └── nested: the same again, up to MAX_DEPTH levels
//! ```
//!
//! Bounds: at most [`MAX_SUBMODULES`] fetched per sync, [`MAX_DEPTH`]
//! levels of nesting (deeper ones stay empty, as on a push), and all of
//! them together within one fetch's time limit and size bound
//! (`sync_timeout_secs`, `sync_max_mb`). A gitlink without a
//! `.gitmodules` entry is left empty, as git itself would.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use super::fetch::Fetcher;
use super::url::{Policy, Scheme, SourceUrl};

/// Submodules fetched per sync, nested ones included.
pub const MAX_SUBMODULES: usize = 16;
/// Levels of nesting fetched: 1 is the superproject's own submodules.
pub const MAX_DEPTH: usize = 3;
/// The largest `.gitmodules` read.
const MAX_GITMODULES: usize = 64 * 1024;
/// Where a fetched submodule commit is kept (so gc keeps it and the
/// build's export knows it was fetched as a submodule).
pub const REF_PREFIX: &str = "refs/cygni/submodules/";

/// One `[submodule "NAME"]` section of `.gitmodules`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub name: String,
    pub path: Option<String>,
    pub url: Option<String>,
}

/// Parse `.gitmodules` (git's config format) from its bytes: the
/// `submodule` sections with their `path` and `url`. Other sections and
/// keys are ignored; a section named twice is merged, the last value
/// winning, as git does.
pub fn parse_gitmodules(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    if bytes.len() > MAX_GITMODULES {
        return Err(format!(".gitmodules is over {} KiB", MAX_GITMODULES / 1024));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ".gitmodules is not UTF-8".to_owned())?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut current: Option<usize> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let bad = || format!(".gitmodules line {}: cannot parse {:?}", n + 1, cut(line));
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            current = None;
            let (section, sub) = section_header(rest).ok_or_else(bad)?;
            if section.eq_ignore_ascii_case("submodule") {
                if let Some(name) = sub {
                    let i = match entries.iter().position(|e| e.name == name) {
                        Some(i) => i,
                        None => {
                            entries.push(Entry {
                                name,
                                ..Entry::default()
                            });
                            entries.len() - 1
                        }
                    };
                    current = Some(i);
                }
            }
            continue;
        }
        let Some(i) = current else { continue };
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(config_value(v).ok_or_else(bad)?)),
            None => (line, None),
        };
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad());
        }
        match (key.to_ascii_lowercase().as_str(), value) {
            ("path", Some(v)) => entries[i].path = Some(v),
            ("url", Some(v)) => entries[i].url = Some(v),
            _ => {}
        }
    }
    Ok(entries)
}

fn cut(s: &str) -> String {
    s.chars().take(60).collect()
}

/// `submodule "name"]` → ("submodule", Some("name")).
fn section_header(rest: &str) -> Option<(String, Option<String>)> {
    let rest = rest.trim_start();
    let end = rest.find(|c: char| c.is_whitespace() || c == ']')?;
    let section = rest[..end].to_owned();
    let after = rest[end..].trim_start();
    if let Some(tail) = after.strip_prefix(']') {
        let tail = tail.trim();
        return (tail.is_empty() || tail.starts_with('#') || tail.starts_with(';'))
            .then_some((section, None));
    }
    let quoted = after.strip_prefix('"')?;
    let mut name = String::new();
    let mut chars = quoted.chars();
    loop {
        match chars.next()? {
            '\\' => name.push(chars.next()?),
            '"' => break,
            c => name.push(c),
        }
    }
    let tail = chars.as_str().trim_start().strip_prefix(']')?.trim();
    (tail.is_empty() || tail.starts_with('#') || tail.starts_with(';'))
        .then_some((section, Some(name)))
}

/// A config value: quotes removed, escapes read, a comment after it cut.
fn config_value(v: &str) -> Option<String> {
    let mut out = String::new();
    let mut quoted = false;
    // Whitespace outside quotes is kept only between words.
    let mut pending_space = String::new();
    let mut chars = v.trim_start().chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push_str(&pending_space);
                pending_space.clear();
                quoted = !quoted;
            }
            '\\' => {
                out.push_str(&pending_space);
                pending_space.clear();
                out.push(match chars.next()? {
                    'n' => '\n',
                    't' => '\t',
                    'b' => '\u{8}',
                    c @ ('"' | '\\') => c,
                    _ => return None,
                });
            }
            '#' | ';' if !quoted => break,
            c if c.is_whitespace() && !quoted => pending_space.push(c),
            c => {
                out.push_str(&pending_space);
                pending_space.clear();
                out.push(c);
            }
        }
    }
    (!quoted).then_some(out)
}

/// A submodule's URL as `.gitmodules` gives it: absolute, or relative
/// (`./x`, `../x`) to the superproject's URL, as git resolves them
/// (`https://h/org/app.git` + `../lib.git` → `https://h/org/lib.git`).
/// On the superproject's scheme, host and port it carries the
/// superproject's credentials; elsewhere none.
pub fn resolve_url(base: &SourceUrl, raw: &str) -> Result<SourceUrl, String> {
    let raw = raw.trim();
    if !(raw.starts_with("./") || raw.starts_with("../")) {
        return SourceUrl::parse(raw)
            .map(|u| u.with_secret_of(base))
            .map_err(|e| e.to_string());
    }
    let bare = base.bare();
    let mut segments: Vec<&str> = bare
        .path()
        .trim_end_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let mut rest = raw;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            segments
                .pop()
                .ok_or_else(|| format!("{raw:?} climbs above the host of {}", base.masked()))?;
            rest = r;
        } else {
            break;
        }
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("{raw:?} is not a repository path"));
    }
    if rest.contains(['?', '#', '\\']) {
        return Err(format!("{raw:?} is not a repository path"));
    }
    let mut joined = bare.clone();
    joined.set_path(&format!(
        "/{}",
        segments
            .iter()
            .chain([&rest])
            .copied()
            .collect::<Vec<_>>()
            .join("/")
    ));
    SourceUrl::parse(joined.as_str())
        .map(|u| u.with_secret_of(base))
        .map_err(|e| e.to_string())
}

/// The scheme rule for submodules: https; http only when the app's own
/// URL is http (an admin allowed it for that); never ssh, git or file.
pub fn check_scheme(main: &SourceUrl, sub: &SourceUrl) -> Result<(), String> {
    match (sub.scheme(), main.scheme()) {
        (Scheme::Https, _) | (Scheme::Http, Scheme::Http) => Ok(()),
        (Scheme::Http, _) => Err(format!(
            "{}: http:// submodules are fetched only for an http:// app URL; use https://",
            sub.masked()
        )),
        (s, _) => Err(format!(
            "{}: {}:// submodules are never fetched, only https://",
            sub.masked(),
            s.as_str()
        )),
    }
}

/// A gitlink of a commit that `.gitmodules` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gitlink {
    /// Its path in the commit's tree.
    pub path: String,
    pub commit: String,
    /// As `.gitmodules` has it.
    pub url: String,
}

/// The gitlinks of `commit` that have a `.gitmodules` entry with a URL,
/// read from the repository's objects.
pub fn gitlinks(repo: &git2::Repository, commit: &str) -> Result<Vec<Gitlink>, String> {
    let oid = git2::Oid::from_str(commit).map_err(|e| e.message().to_owned())?;
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(|_| format!("commit {} is not in the repository", short(commit)))?;
    let mut links = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        if entry.filemode() == 0o160000 {
            if let Ok(name) = std::str::from_utf8(entry.name_bytes()) {
                links.push((format!("{root}{name}"), entry.id().to_string()));
            }
        }
        git2::TreeWalkResult::Ok
    })
    .map_err(|e| e.message().to_owned())?;
    if links.is_empty() {
        return Ok(Vec::new());
    }
    let Ok(entry) = tree.get_path(Path::new(".gitmodules")) else {
        return Ok(Vec::new());
    };
    if entry.filemode() & 0o170000 != 0o100000 {
        return Err(".gitmodules is not a file".into());
    }
    let blob = repo
        .find_blob(entry.id())
        .map_err(|e| e.message().to_owned())?;
    let modules = parse_gitmodules(blob.content())?;
    let mut out = Vec::new();
    for (path, sha) in links {
        let Some(m) = modules
            .iter()
            .find(|m| m.path.as_deref() == Some(path.as_str()))
        else {
            continue;
        };
        let url = m
            .url
            .clone()
            .ok_or_else(|| format!("submodule {path}: no url in .gitmodules"))?;
        out.push(Gitlink {
            path,
            commit: sha,
            url,
        });
    }
    Ok(out)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// Bytes in `objects/pack` (what fetches have written).
fn pack_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Fetch the submodules of `commit` (already in `repo`) and theirs, up
/// to the bounds. Returns how many are ready (fetched now or before); on
/// an error, the refs this call added are removed again (those earlier
/// syncs wrote stay) and the reason names the submodule.
pub async fn fetch_all(
    fetcher: &Fetcher,
    policy: &Policy,
    repo: &Path,
    main: &SourceUrl,
    commit: &str,
    mut on_line: impl FnMut(String),
) -> Result<usize, String> {
    let mut written = Vec::new();
    let mut ready = 0;
    let result = fetch_inner(
        fetcher,
        policy,
        repo,
        main,
        commit,
        &mut written,
        &mut ready,
        &mut on_line,
    )
    .await;
    if let Err(e) = result {
        let repo = repo.to_owned();
        let _ = tokio::task::spawn_blocking(move || drop_refs(&repo, &written)).await;
        return Err(e);
    }
    Ok(ready)
}

fn drop_refs(repo: &Path, refs: &[String]) {
    let Ok(r) = git2::Repository::open_bare(repo) else {
        return;
    };
    for name in refs {
        if let Ok(mut reference) = r.find_reference(name) {
            let _ = reference.delete();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn fetch_inner(
    fetcher: &Fetcher,
    policy: &Policy,
    repo: &Path,
    main: &SourceUrl,
    commit: &str,
    written: &mut Vec<String>,
    ready: &mut usize,
    on_line: &mut impl FnMut(String),
) -> Result<(), String> {
    let started = Instant::now();
    let packs = repo.join("objects").join("pack");
    let bytes_before = pack_bytes(&packs);
    // (commit, the URL its relative submodule URLs resolve against, its
    // path in the superproject, its level)
    let mut queue: VecDeque<(String, SourceUrl, String, usize)> = VecDeque::new();
    queue.push_back((commit.to_owned(), main.clone(), String::new(), 0));
    let mut fetched = 0usize;
    while let Some((sha, base, prefix, level)) = queue.pop_front() {
        if level >= MAX_DEPTH {
            continue;
        }
        let (r, s) = (repo.to_owned(), sha.clone());
        let links = tokio::task::spawn_blocking(move || {
            let repo = git2::Repository::open_bare(&r)
                .map_err(|_| "cannot open the app's repository".to_owned())?;
            gitlinks(&repo, &s)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            if prefix.is_empty() {
                e
            } else {
                format!("submodule {prefix}: {e}")
            }
        })?;
        for link in links {
            let path = format!("{prefix}{}", link.path);
            let fail = |reason: String| format!("submodule {path}: {reason}");
            fetched += 1;
            if fetched > MAX_SUBMODULES {
                return Err(fail(format!(
                    "more than {MAX_SUBMODULES} submodules (nested ones included)"
                )));
            }
            let url = resolve_url(&base, &link.url).map_err(fail)?;
            check_scheme(main, &url).map_err(fail)?;
            // The same address rule as the app's URL, and no scheme wider
            // than check_scheme allowed.
            let sub_policy = Policy {
                allow_schemes: if url.scheme() == Scheme::Http {
                    vec![Scheme::Http]
                } else {
                    Vec::new()
                },
                allow_private: policy.allow_private,
            };
            let target = sub_policy
                .check(&url)
                .await
                .map_err(|e| fail(format!("refused: {e}")))?;
            let dest = format!("{REF_PREFIX}{}", link.commit);
            // Some(had_ref) when the commit is here already (an earlier
            // sync fetched it, or it is the app's own).
            let present = {
                let (r, c, d) = (repo.to_owned(), link.commit.clone(), dest.clone());
                tokio::task::spawn_blocking(move || {
                    let repo = git2::Repository::open_bare(&r).ok()?;
                    let oid = git2::Oid::from_str(&c).ok()?;
                    repo.find_commit(oid).ok()?;
                    let had_ref = repo.find_reference(&d).is_ok();
                    repo.reference(&d, oid, true, "cygni: submodule").ok()?;
                    Some(had_ref)
                })
                .await
                .ok()
                .flatten()
            };
            if let Some(had_ref) = present {
                if !had_ref {
                    written.push(dest.clone());
                }
                on_line(format!(
                    "submodule {path}: {} already here",
                    short(&link.commit)
                ));
            } else {
                let used = pack_bytes(&packs).saturating_sub(bytes_before);
                let left = fetcher.timeout.saturating_sub(started.elapsed());
                if left < Duration::from_secs(1) {
                    return Err(fail(format!(
                        "the submodules took over {}s together",
                        fetcher.timeout.as_secs()
                    )));
                }
                if used >= fetcher.max_bytes {
                    return Err(fail(format!(
                        "the submodules are over {} MiB together",
                        fetcher.max_bytes >> 20
                    )));
                }
                let bounded = Fetcher {
                    home: fetcher.home.clone(),
                    timeout: left,
                    max_bytes: fetcher.max_bytes - used,
                };
                on_line(format!(
                    "-----> Fetching submodule {path} {} from {}",
                    short(&link.commit),
                    url.masked()
                ));
                bounded
                    .fetch(
                        &url,
                        target.pinned,
                        repo,
                        &link.commit,
                        &dest,
                        &mut *on_line,
                    )
                    .await
                    .map_err(|e| {
                        fail(format!(
                            "cannot fetch {} from {}: {e}",
                            short(&link.commit),
                            url.masked()
                        ))
                    })?;
                written.push(dest);
            }
            *ready += 1;
            queue.push_back((link.commit, url, format!("{path}/"), level + 1));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitmodules_parse_from_bytes() {
        let text = br#"
# a comment
[submodule "lib"]
	path = vendor/lib
	url = ../lib.git
[core]
	path = ignored
[submodule "quoted \"name\""]
	PATH = "with space/dir" ; a comment
	url = https://example.org/x.git # another
	update = none
[submodule "lib"]
	url = https://example.org/lib2.git
"#;
        let got = parse_gitmodules(text).unwrap();
        assert_eq!(
            got,
            vec![
                Entry {
                    name: "lib".into(),
                    path: Some("vendor/lib".into()),
                    url: Some("https://example.org/lib2.git".into()),
                },
                Entry {
                    name: "quoted \"name\"".into(),
                    path: Some("with space/dir".into()),
                    url: Some("https://example.org/x.git".into()),
                },
            ]
        );
        assert!(parse_gitmodules(b"[submodule \"x\"]\n\tpath = \"open\n")
            .unwrap_err()
            .contains("line 2"));
        assert!(parse_gitmodules(b"[submodule \"x\n").is_err());
        assert!(parse_gitmodules(&[0xff, 0xfe]).is_err());
        assert!(parse_gitmodules(&vec![b'#'; MAX_GITMODULES + 1]).is_err());
        assert_eq!(parse_gitmodules(b"").unwrap(), vec![]);
    }

    #[test]
    fn relative_urls_resolve_against_the_superproject() {
        let base = SourceUrl::parse("https://u:pw@git.example.org/org/app.git").unwrap();
        let r = |s: &str| resolve_url(&base, s);
        assert_eq!(
            r("../lib.git").unwrap().masked(),
            "https://***@git.example.org/org/lib.git"
        );
        assert_eq!(
            r("./sub.git").unwrap().masked(),
            "https://***@git.example.org/org/app.git/sub.git"
        );
        assert_eq!(
            r("../../other/lib").unwrap().masked(),
            "https://***@git.example.org/other/lib"
        );
        assert_eq!(r("../lib.git").unwrap().secret(), Some("u:pw"));
        // Credentials go only to the superproject's own host.
        let elsewhere = r("https://elsewhere.example/lib.git").unwrap();
        assert_eq!(elsewhere.secret(), None);
        assert_eq!(
            r("https://git.example.org/x.git").unwrap().secret(),
            Some("u:pw")
        );
        // A trailing slash on the superproject is not a path component.
        let slash = SourceUrl::parse("https://h.example/org/app/").unwrap();
        assert_eq!(
            resolve_url(&slash, "../lib").unwrap().masked(),
            "https://h.example/org/lib"
        );
        for bad in ["../../../x.git", "../a/../b", "../", "./", "../x?y"] {
            assert!(r(bad).is_err(), "{bad:?}");
        }
        assert!(r("git@github.com:org/lib.git").is_err());
    }

    #[test]
    fn submodules_are_https_or_the_apps_own_http_never_ssh_git_file() {
        let https = SourceUrl::parse("https://h.example/app.git").unwrap();
        let http = SourceUrl::parse("http://h.example/app.git").unwrap();
        let sub = |s: &str| SourceUrl::parse(s).unwrap();
        assert!(check_scheme(&https, &sub("https://x.example/l.git")).is_ok());
        assert!(check_scheme(&http, &sub("https://x.example/l.git")).is_ok());
        assert!(check_scheme(&http, &sub("http://x.example/l.git")).is_ok());
        assert!(check_scheme(&https, &sub("http://x.example/l.git"))
            .unwrap_err()
            .contains("only for an http:// app URL"));
        for bad in [
            "ssh://git@x.example/l.git",
            "git://x.example/l.git",
            "file:///srv/l.git",
        ] {
            for main in [&https, &http] {
                let e = check_scheme(main, &sub(bad)).unwrap_err();
                assert!(e.contains("never fetched, only https://"), "{e}");
            }
        }
    }
}
