//! Deploys from a repository URL: `apps:create --from`, `git:sync`, the
//! `--every` schedule and the API, against a smart-HTTP git server on
//! loopback (`git http-backend` behind tests/common/git_server.rs), and
//! the URL policy's refusals (SSRF, schemes, credentials).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::git_server::GitServer;
use common::*;

/// A daemon whose syncs may reach the loopback git server (http, private
/// addresses, a 1s minimum interval): what an admin sets in cygni.toml.
fn permissive_daemon(cfg_dir: &Path) -> TestDaemon {
    let cfg = cfg_dir.join("cygni.toml");
    std::fs::write(
        &cfg,
        "sync_allow_schemes = [\"http\"]\nsync_allow_private = true\nsync_min_interval_secs = 1\n",
    )
    .expect("write cygni.toml");
    TestDaemon::start_with(&["--config", cfg.to_str().expect("utf-8 path")])
}

/// A work repo with fixture `name`, and its bare copy served as `NAME.git`.
fn served_repo(server: &GitServer, work: &Path, fixture_name: &str, name: &str) -> PathBuf {
    let repo = work.join(name);
    copy_dir(&fixture(fixture_name), &repo);
    make_repo(&repo, &[]);
    let bare = server.root.join(format!("{name}.git"));
    run_ok(
        git_cmd(work)
            .args(["clone", "-q", "--bare"])
            .arg(&repo)
            .arg(&bare),
    );
    repo
}

/// Commit what changed in `repo` and publish it to the served bare copy.
fn publish(server: &GitServer, repo: &Path, name: &str, message: &str) {
    commit_all(repo, message);
    let bare = server.root.join(format!("{name}.git"));
    run_ok(git_cmd(repo).arg("push").arg("-q").arg(&bare).arg("main"));
}

fn info_json(d: &TestDaemon, app: &str) -> serde_json::Value {
    let out = d.ssh(&d.admin, &format!("apps:info {app} --json")).ok();
    serde_json::from_str(&out.stdout).expect("apps:info --json")
}

const ALL_STATES: [&str; 7] = [
    "queued",
    "fetching",
    "analysing",
    "building",
    "deploying",
    "healthy",
    "live",
];

/// `apps:create --from URL` over smart HTTP: every state in order on the
/// client's stderr and on the record, the app serves, `apps:info`,
/// `releases` and `logs --build` tell where it came from; then a sync to
/// a new commit changes what is served, and a sync with nothing new is a
/// no-op.
#[test]
fn create_from_a_url_deploys_through_every_state_and_syncs_new_commits() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    let d = permissive_daemon(work.path());
    let repo = served_repo(&server, work.path(), "procfile-app", "site");
    let url = server.url("site.git");

    let started = Instant::now();
    let out = d
        .ssh(&d.admin, &format!("apps:create synced --from {url}"))
        .ok();
    let first = started.elapsed();
    assert!(out.stdout.contains("created synced"), "{out:#?}");
    assert!(out.stdout.contains("synced synced v1"), "{out:#?}");
    // Every state, in order, as the client saw them.
    let mut at = 0;
    for state in ALL_STATES {
        let needle = format!("sync state: {state}");
        let pos = out.stderr[at..]
            .find(&needle)
            .unwrap_or_else(|| panic!("{needle:?} missing or out of order: {out:#?}"));
        at += pos;
    }
    assert!(out.stderr.contains("-----> Fetching"), "{out:#?}");
    assert!(out.stderr.contains("-----> Analysing"), "{out:#?}");
    assert!(out.stderr.contains("Procfile"), "{out:#?}");
    assert!(out.stderr.contains("-----> Released v1"), "{out:#?}");
    let (code, body) = d.curl(&host("synced"), "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from procfile-app"), "{body}");

    let info = info_json(&d, "synced");
    assert_eq!(info["source"]["url"], url.as_str());
    assert_eq!(info["source"]["ref"], "refs/heads/main");
    assert_eq!(info["last_sync"]["state"], "live");
    assert_eq!(info["last_sync"]["release"], 1);
    assert_eq!(info["last_sync"]["sha"], head_sha(&repo).as_str());
    let states: Vec<&str> = info["last_sync"]["states"]
        .as_array()
        .expect("states")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(states, ALL_STATES);
    let text = d.ssh(&d.admin, "apps:info synced").ok().stdout;
    assert!(text.contains(&format!("source:        {url}")), "{text}");
    assert!(text.contains("last sync:     #1 live"), "{text}");
    let releases = d.ssh(&d.admin, "releases synced").ok().stdout;
    assert!(releases.contains("live"), "{releases}");
    assert!(releases.contains("(sync #1 from "), "{releases}");
    let log = d.ssh(&d.admin, "logs synced --build v1").ok().stdout;
    assert!(log.contains("-----> Fetching"), "{log}");
    assert!(log.contains("-----> Analysing"), "{log}");
    assert!(log.contains("-----> Released v1"), "{log}");

    // A new commit upstream: git:sync deploys it.
    edit(
        &repo.join("index.html"),
        "hello from procfile-app",
        "hello again from procfile-app",
    );
    publish(&server, &repo, "site", "second");
    let started = Instant::now();
    let out = d.ssh(&d.admin, "git:sync synced").ok();
    let second = started.elapsed();
    assert!(out.stdout.contains("synced synced v2"), "{out:#?}");
    let (_, body) = d.curl(&host("synced"), "/");
    assert!(body.contains("hello again from procfile-app"), "{body}");
    let branches = info_json(&d, "synced")["branches"].clone();
    assert_eq!(branches[0]["sha"], head_sha(&repo).as_str(), "{branches}");

    // Nothing new: no release, still v2.
    let out = d.ssh(&d.admin, "git:sync synced").ok();
    assert!(out.stderr.contains("nothing to deploy"), "{out:#?}");
    assert_eq!(info_json(&d, "synced")["live_release"], 2);

    // The same app pushed by git over SSH, for comparison.
    let pushed = fixture_repo(&d, "procfile-app", "pushed");
    let started = Instant::now();
    push(&d, &pushed, "pushed").ok();
    let by_push = started.elapsed();
    println!(
        "TIMING create --from: {first:?}, sync to a new commit: {second:?}, git push: {by_push:?}"
    );
}
