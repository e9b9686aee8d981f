//! Deploys from a repository URL: `apps:create --from`, `git:sync`, the
//! `--every` schedule and the API, against a smart-HTTP git server on
//! loopback (`git http-backend` behind tests/common/git_server.rs), and
//! the URL policy's refusals (SSRF, schemes, credentials).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::git_server::GitServer;
use common::*;

/// A daemon whose syncs may reach the loopback git server (http, private
/// addresses, a 1s minimum interval): what an admin sets in cygni.toml.
fn permissive_daemon(cfg_dir: &Path) -> TestDaemon {
    permissive_daemon_with(cfg_dir, "")
}

fn permissive_daemon_with(cfg_dir: &Path, extra: &str) -> TestDaemon {
    let cfg = cfg_dir.join("cygni.toml");
    std::fs::write(
        &cfg,
        format!("sync_allow_schemes = [\"http\", \"file\"]\nsync_allow_private = true\nsync_min_interval_secs = 1\n{extra}"),
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

/// A daemon with the default policy for addresses (http allowed, so the
/// refusals below are about addresses, not the scheme).
fn strict_daemon(cfg_dir: &Path) -> TestDaemon {
    let cfg = cfg_dir.join("cygni.toml");
    std::fs::write(&cfg, "sync_allow_schemes = [\"http\"]\n").expect("write cygni.toml");
    TestDaemon::start_with(&["--config", cfg.to_str().expect("utf-8 path")])
}

/// SSRF: loopback, a name resolving to loopback, link-local metadata,
/// RFC 1918, IPv6 loopback and its IPv4-mapped form, and schemes the
/// admin did not allow are each refused with one clear line; no app is
/// created and an existing app's source stays unset. Credentials in a
/// refused URL appear nowhere.
#[test]
fn ssrf_and_scheme_refusals_are_one_line_and_change_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    served_repo(&server, work.path(), "procfile-app", "site");
    let d = strict_daemon(work.path());
    d.ssh(&d.admin, "apps:create plain").ok();
    let cases = [
        (server.url("site.git"), "127.0.0.1 is a loopback address"),
        (
            format!("http://localhost:{}/site.git", server.port),
            "is a loopback address",
        ),
        (
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "169.254.169.254 is a link-local address",
        ),
        (
            "https://10.20.30.40/r.git".to_owned(),
            "10.20.30.40 is a private (RFC 1918) address",
        ),
        (
            "https://[::1]/r.git".to_owned(),
            "::1 is a loopback address",
        ),
        (
            "https://[::ffff:127.0.0.1]/r.git".to_owned(),
            "is a loopback address",
        ),
        (
            "https://100.64.1.1/r.git".to_owned(),
            "is a shared (CGNAT) address",
        ),
        (
            "https://bob:hunter2@192.168.1.5/r.git".to_owned(),
            "192.168.1.5 is a private (RFC 1918) address",
        ),
        (
            format!("file://{}", server.root.join("site.git").display()),
            "the file:// scheme is not allowed here",
        ),
        (
            "ssh://git@example.org/r.git".to_owned(),
            "the ssh:// scheme is not allowed here",
        ),
        ("ftp://example.org/r.git".to_owned(), "only https, http"),
    ];
    for (i, (url, reason)) in cases.iter().enumerate() {
        let app = format!("refused{i}");
        let out = d.ssh(&d.admin, &format!("apps:create {app} --from {url}"));
        let out = out.fails_with(reason);
        assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {out:#?}");
        assert!(out.stderr.contains("refused"), "{out:#?}");
        assert!(!out.stderr.contains("hunter2"), "{out:#?}");
        d.ssh(&d.admin, &format!("apps:info {app}"))
            .fails_with("app not found");
        let out = d.ssh(&d.admin, &format!("git:sync plain {url}"));
        out.fails_with(reason);
    }
    let info = info_json(&d, "plain");
    assert!(info["source"].is_null(), "{info}");
    assert!(info["last_sync"].is_null(), "{info}");
    let apps = d.ssh(&d.admin, "apps").ok().stdout;
    assert!(!apps.contains("refused"), "{apps}");
    let audit = d.ssh(&d.admin, "audit -n 200").ok().stdout;
    assert!(audit.contains("apps:create --from"), "{audit}");
    assert!(!audit.contains("hunter2"), "{audit}");
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the git server"
    );
}

/// Credentials in an allowed URL are used (the server wants them) but
/// never shown: apps:info, the output, releases and the audit log say
/// `***`; without them the sync fails.
#[test]
fn credentials_in_a_url_are_masked_in_output_audit_and_info() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    std::fs::create_dir_all(server.root.join("private")).expect("mkdir");
    served_repo(&server, work.path(), "procfile-app", "private/site");
    let d = permissive_daemon(work.path());
    d.ssh(
        &d.admin,
        &format!(
            "apps:create nocreds --from http://127.0.0.1:{}/private/site.git",
            server.port
        ),
    )
    .fails_with("failed");
    let url = format!(
        "http://deploy:s3cr3tpw@127.0.0.1:{}/private/site.git",
        server.port
    );
    let out = d
        .ssh(&d.admin, &format!("apps:create masked --from {url}"))
        .ok();
    let masked = format!("http://***@127.0.0.1:{}/private/site.git", server.port);
    assert!(out.stderr.contains(&masked), "{out:#?}");
    let info = d.ssh(&d.admin, "apps:info masked --json").ok().stdout;
    let releases = d.ssh(&d.admin, "releases masked").ok().stdout;
    let audit = d.ssh(&d.admin, "audit masked -n 100").ok().stdout;
    for text in [&out.stdout, &out.stderr, &info, &releases, &audit] {
        assert!(!text.contains("s3cr3tpw"), "{text}");
    }
    assert!(info.contains(&masked), "{info}");
    let (_, body) = d.curl(&host("masked"), "/");
    assert!(body.contains("hello from procfile-app"), "{body}");
    let log = d.log();
    assert!(!log.contains("s3cr3tpw"), "the daemon log has the password");
}

/// file:// where the admin allowed it: an admin may sync from a path on
/// the server; a developer, even on its own app, may not (a path can
/// name another app's repository).
#[test]
fn file_urls_when_allowed_are_for_admins_only() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    served_repo(&server, work.path(), "procfile-app", "site");
    let d = permissive_daemon(work.path());
    let path = format!("file://{}", server.root.join("site.git").display());
    d.ssh(&d.admin, &format!("apps:create local --from {path}"))
        .ok();
    let (_, body) = d.curl(&host("local"), "/");
    assert!(body.contains("hello from procfile-app"), "{body}");
    let dev = d.add_key("dev", "deployer");
    d.ssh(&d.admin, "keys:grant dev local").ok();
    d.ssh(&dev, &format!("git:sync local {path}"))
        .fails_with("only admins can sync from file:// URLs");
    // The stored source, chosen by an admin, the developer may sync.
    d.ssh(&dev, "git:sync local").ok();
}

/// Failed syncs (a ref that is not there, a host that does not answer, a
/// build that fails) each say why, and leave the app serving v1 with its
/// branch where it was and its source unchanged.
#[test]
fn failed_syncs_leave_the_live_release_branch_and_source_alone() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    let d = permissive_daemon(work.path());
    let repo = served_repo(&server, work.path(), "procfile-app", "site");
    let url = server.url("site.git");
    d.ssh(&d.admin, &format!("apps:create keep --from {url}"))
        .ok();
    let v1_sha = head_sha(&repo);
    let unchanged = |d: &TestDaemon| {
        let (code, body) = d.curl(&host("keep"), "/");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("hello from procfile-app"), "{body}");
        let info = info_json(d, "keep");
        assert_eq!(info["live_release"], 1, "{info}");
        assert_eq!(info["branches"][0]["sha"], v1_sha.as_str(), "{info}");
        assert_eq!(info["source"]["url"], url.as_str(), "{info}");
        assert_eq!(info["last_sync"]["state"], "failed", "{info}");
        info
    };

    // A ref the remote does not have.
    d.ssh(&d.admin, "git:sync keep --ref nope")
        .fails_with("cannot fetch nope");
    let info = unchanged(&d);
    assert!(
        info["last_sync"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("nope")),
        "{info}"
    );

    // A host that does not answer (a port nobody listens on).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = closed.local_addr().expect("addr").port();
    drop(closed);
    d.ssh(
        &d.admin,
        &format!("git:sync keep http://127.0.0.1:{dead_port}/site.git"),
    )
    .fails_with("cannot fetch main");
    unchanged(&d);

    // A build that fails.
    replace_with_fixture(&repo, "fail-build");
    publish(&server, &repo, "site", "breaks the build");
    let out = d.ssh(&d.admin, "git:sync keep");
    let out = out.fails_with("failed");
    assert!(out.stderr.contains("sync state: building"), "{out:#?}");
    assert!(out.stderr.contains("sync state: failed"), "{out:#?}");
    assert!(
        out.stderr.contains("keeps serving its live release"),
        "{out:#?}"
    );
    let info = unchanged(&d);
    let states = info["last_sync"]["states"].to_string();
    assert!(
        states.contains("building") && states.ends_with("\"failed\"]"),
        "{states}"
    );
    let releases = d.ssh(&d.admin, "releases keep").ok().stdout;
    assert!(releases.contains("failed (build)"), "{releases}");
    assert!(releases.contains("(sync #"), "{releases}");
    let log = d.ssh(&d.admin, "logs keep --build v2").ok().stdout;
    assert!(log.contains("-----> Fetching"), "{log}");
    assert!(log.contains("sync state: failed"), "{log}");
}

/// A server that never answers: the fetch gives up at sync_timeout_secs
/// with a line that says so, and the app keeps serving.
#[test]
fn a_hanging_server_times_out_and_changes_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    served_repo(&server, work.path(), "procfile-app", "site");
    let d = permissive_daemon_with(work.path(), "sync_timeout_secs = 2\n");
    d.ssh(
        &d.admin,
        &format!("apps:create patient --from {}", server.url("site.git")),
    )
    .ok();
    let started = Instant::now();
    d.ssh(
        &d.admin,
        &format!("git:sync patient {}", server.url("hang/site.git")),
    )
    .fails_with("git gave up after 2s");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let (_, body) = d.curl(&host("patient"), "/");
    assert!(body.contains("hello from procfile-app"), "{body}");
    let info = info_json(&d, "patient");
    assert_eq!(info["live_release"], 1, "{info}");
    assert_eq!(
        info["source"]["url"],
        server.url("site.git").as_str(),
        "{info}"
    );
}

/// `--every`: a new commit upstream is picked up without anyone asking;
/// `--every off` stops that; intervals below the minimum are refused.
#[test]
fn every_picks_up_a_new_commit_and_off_stops() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    let d = permissive_daemon(work.path());
    let repo = served_repo(&server, work.path(), "procfile-app", "site");
    d.ssh(&d.admin, "git:sync nosuch --every 1m")
        .fails_with("app not found");
    d.ssh(&d.admin, "apps:create bare").ok();
    d.ssh(&d.admin, "git:sync bare --every 2s")
        .fails_with("has no source URL");
    d.ssh(
        &d.admin,
        &format!("apps:create timed --from {}", server.url("site.git")),
    )
    .ok();
    d.ssh(&d.admin, "git:sync timed --every 0s")
        .fails_with("too often");
    d.ssh(&d.admin, "git:sync timed --every 5x")
        .fails_with("is not an interval");
    let out = d.ssh(&d.admin, "git:sync timed --every 2s").ok();
    assert!(out.stdout.contains("syncs every 2s"), "{out:#?}");
    assert_eq!(info_json(&d, "timed")["source"]["every_secs"], 2);

    edit(
        &repo.join("index.html"),
        "hello from",
        "scheduled hello from",
    );
    publish(&server, &repo, "site", "picked up by the schedule");
    wait_for(
        "the scheduled sync to deploy",
        Duration::from_secs(90),
        || {
            let (_, body) = d.curl(&host("timed"), "/");
            body.contains("scheduled hello from").then_some(())
        },
    );
    let info = info_json(&d, "timed");
    assert_eq!(info["last_sync"]["trigger"], "schedule", "{info}");
    assert_eq!(info["last_sync"]["state"], "live", "{info}");
    assert_eq!(info["live_release"], 2, "{info}");

    // Unchanged upstream: checks run, nothing deploys.
    let before = server.requests.load(std::sync::atomic::Ordering::SeqCst);
    wait_for("a scheduled check", Duration::from_secs(30), || {
        (server.requests.load(std::sync::atomic::Ordering::SeqCst) > before).then_some(())
    });
    assert_eq!(info_json(&d, "timed")["live_release"], 2);

    d.ssh(&d.admin, "git:sync timed --every off")
        .ok()
        .stdout
        .contains("no longer syncs");
    edit(
        &repo.join("index.html"),
        "scheduled hello",
        "unscheduled hello",
    );
    publish(&server, &repo, "site", "not picked up");
    std::thread::sleep(Duration::from_secs(5));
    let (_, body) = d.curl(&host("timed"), "/");
    assert!(body.contains("scheduled hello from"), "{body}");
    assert!(info_json(&d, "timed")["source"]["every_secs"].is_null());
}

/// One API request with a bearer token: (status, JSON body or Null).
fn api_request(
    d: &TestDaemon,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-m", "30", "-w", "\n%{http_code}", "-X", method])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("-H")
        .arg("Content-Type: application/json");
    if let Some(b) = body {
        c.arg("--data-binary").arg(b.to_string());
    }
    c.arg(format!("http://127.0.0.1:{}/api/v1{path}", d.api_port));
    let out = c.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (code.trim().parse::<u16>().unwrap_or(0), v)
}

/// The API: POST /apps with `from`, POST /apps/{app}/sync, and the
/// pollable record at /apps/{app}/syncs/{id}.
#[test]
fn the_api_creates_from_a_url_and_syncs_with_a_record_to_poll() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    let d = permissive_daemon(work.path());
    let repo = served_repo(&server, work.path(), "procfile-app", "site");
    let out = d.ssh(&d.admin, "tokens:create robot --role admin").ok();
    let token = out.stdout.trim().to_owned();
    let api = |method: &str, path: &str, body: Option<serde_json::Value>| {
        api_request(&d, &token, method, path, body)
    };
    let poll = |app: &str, id: i64| -> serde_json::Value {
        wait_for("the sync to end", Duration::from_secs(120), || {
            let (code, v) = api("GET", &format!("/apps/{app}/syncs/{id}"), None);
            assert_eq!(code, 200, "{v}");
            matches!(v["state"].as_str(), Some("live" | "failed")).then_some(v)
        })
    };

    let (code, v) = api(
        "POST",
        "/apps",
        Some(serde_json::json!({"name": "viaapi", "from": server.url("site.git")})),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["sync"]["state"], "queued", "{v}");
    let id = v["sync"]["id"].as_i64().expect("sync id");
    let done = poll("viaapi", id);
    assert_eq!(done["state"], "live", "{done}");
    assert_eq!(
        done["states"].as_array().map(|a| a.len()),
        Some(7),
        "{done}"
    );
    let (_, body) = d.curl(&host("viaapi"), "/");
    assert!(body.contains("hello from procfile-app"), "{body}");

    edit(&repo.join("index.html"), "hello from", "api hello from");
    publish(&server, &repo, "site", "second");
    let (code, v) = api("POST", "/apps/viaapi/sync", Some(serde_json::json!({})));
    assert_eq!(code, 202, "{v}");
    let done = poll("viaapi", v["id"].as_i64().expect("id"));
    assert_eq!(done["release"], 2, "{done}");
    let (_, body) = d.curl(&host("viaapi"), "/");
    assert!(body.contains("api hello from"), "{body}");

    let (code, v) = api(
        "POST",
        "/apps/viaapi/sync",
        Some(serde_json::json!({"url": "ssh://git@example.org/x.git"})),
    );
    assert_eq!(code, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("ssh:// scheme is not allowed")),
        "{v}"
    );
    let (code, v) = api("GET", "/apps/viaapi", None);
    assert_eq!(code, 200);
    assert_eq!(v["source"]["url"], server.url("site.git").as_str(), "{v}");
    let (code, _) = api("GET", "/apps/viaapi/syncs/999", None);
    assert_eq!(code, 404);
}

/// Figures, not a check: the median of three sync-deploys of a new
/// commit against three `git push` deploys of a new commit, same fixture.
#[test]
#[ignore = "timing: run by hand with --ignored --nocapture"]
fn timing_sync_deploy_against_push() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    let d = permissive_daemon(work.path());
    let repo = served_repo(&server, work.path(), "procfile-app", "site");
    d.ssh(
        &d.admin,
        &format!("apps:create bysync --from {}", server.url("site.git")),
    )
    .ok();
    let pushed = fixture_repo(&d, "procfile-app", "bypush");
    push(&d, &pushed, "bypush").ok();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut syncs, mut pushes) = (Vec::new(), Vec::new());
    for i in 0..3 {
        std::fs::write(repo.join("n.txt"), format!("{i}")).expect("write");
        publish(&server, &repo, "site", &format!("sync {i}"));
        let t = Instant::now();
        d.ssh(&d.admin, "git:sync bysync").ok();
        syncs.push(t.elapsed());
        std::fs::write(pushed.join("n.txt"), format!("{i}")).expect("write");
        commit_all(&pushed, &format!("push {i}"));
        let t = Instant::now();
        push(&d, &pushed, "bypush").ok();
        pushes.push(t.elapsed());
    }
    println!(
        "TIMING sync-deploy median {:?} {syncs:?}; git push median {:?} {pushes:?}",
        median(syncs.clone()),
        median(pushes.clone())
    );
}

/// A library repository served as `lib.git`, with `hello.txt` saying `text`.
fn served_lib(server: &GitServer, work: &Path, text: &str) -> (PathBuf, String) {
    let lib = work.join("lib-work");
    if !lib.exists() {
        make_repo(&lib, &[]);
    }
    std::fs::write(lib.join("hello.txt"), text).expect("write hello.txt");
    commit_all(&lib, text);
    server.publish(&lib, "lib");
    let sha = head_sha(&lib);
    (lib, sha)
}

/// Point the superproject's gitlink `lib` at `sha`, with `url` in
/// `.gitmodules`, commit (without a checkout of the submodule) and
/// publish it as `site.git`.
fn point_submodule(server: &GitServer, repo: &Path, sha: &str, url: &str) {
    std::fs::write(
        repo.join(".gitmodules"),
        format!("[submodule \"lib\"]\n\tpath = lib\n\turl = {url}\n"),
    )
    .expect("write .gitmodules");
    // An empty directory is a submodule not checked out (so `add -A`
    // later keeps the gitlink).
    std::fs::create_dir_all(repo.join("lib")).expect("mkdir lib");
    run_ok(git_cmd(repo).args([
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{sha},lib"),
    ]));
    run_ok(git_cmd(repo).args(["add", ".gitmodules"]));
    run_ok(git_cmd(repo).args(["commit", "-q", "--allow-empty", "-m", "submodule"]));
    server.publish(repo, "site");
}

/// The procfile app (a static file server: it serves whatever the build
/// exported) with a submodule `lib` → `../lib.git` on the same server.
fn superproject(server: &GitServer, work: &Path) -> (PathBuf, PathBuf, String) {
    let (lib, sha) = served_lib(server, work, "hello from the submodule");
    let repo = served_repo(server, work, "procfile-app", "site");
    point_submodule(server, &repo, &sha, "../lib.git");
    (repo, lib, sha)
}

/// `--submodules`: the sync fetches the recorded commit of `lib` (a
/// relative URL) from the same server and the app serves the
/// submodule's file; the setting is stored, so a later `git:sync` and
/// the `--every` schedule fetch the submodule's new commit too.
#[test]
fn submodules_on_request_are_fetched_served_and_kept_for_later_syncs() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    let d = permissive_daemon(work.path());
    let (repo, _lib, lib_sha) = superproject(&server, work.path());
    let url = server.url("site.git");

    let out = d
        .ssh(
            &d.admin,
            &format!("apps:create subs --from {url} --submodules"),
        )
        .ok();
    assert!(out.stdout.contains("synced subs v1"), "{out:#?}");
    assert!(
        out.stderr.contains(&format!(
            "-----> Fetching submodule lib {} from {}",
            &lib_sha[..7],
            server.url("lib.git")
        )),
        "{out:#?}"
    );
    assert!(out.stderr.contains("submodules: 1 ready"), "{out:#?}");
    let (code, body) = d.curl(&host("subs"), "/lib/hello.txt");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "hello from the submodule");
    let (code, body) = d.curl(&host("subs"), "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from procfile-app"), "{body}");
    let info = info_json(&d, "subs");
    assert_eq!(info["source"]["submodules"], true, "{info}");
    let text = d.ssh(&d.admin, "apps:info subs").ok().stdout;
    assert!(
        text.contains("submodules:    fetched (https only)"),
        "{text}"
    );

    // The submodule moves on; a plain git:sync keeps --submodules.
    let (_, lib_sha2) = served_lib(&server, work.path(), "hello again from the submodule");
    point_submodule(&server, &repo, &lib_sha2, "../lib.git");
    let out = d.ssh(&d.admin, "git:sync subs").ok();
    assert!(out.stdout.contains("synced subs v2"), "{out:#?}");
    let (_, body) = d.curl(&host("subs"), "/lib/hello.txt");
    assert_eq!(body, "hello again from the submodule");

    // And so does the schedule.
    d.ssh(&d.admin, "git:sync subs --every 1s").ok();
    let (_, lib_sha3) = served_lib(&server, work.path(), "scheduled submodule");
    point_submodule(&server, &repo, &lib_sha3, "../lib.git");
    wait_for(
        "the scheduled sync to deploy the submodule",
        Duration::from_secs(90),
        || {
            let (_, body) = d.curl(&host("subs"), "/lib/hello.txt");
            (body == "scheduled submodule").then_some(())
        },
    );
    let info = info_json(&d, "subs");
    assert_eq!(info["last_sync"]["trigger"], "schedule", "{info}");
    assert_eq!(info["source"]["submodules"], true, "{info}");
    d.ssh(&d.admin, "git:sync subs --every off").ok();

    // A second submodule that cannot be fetched fails the sync, naming
    // it; lib, ready before, keeps its ref, and v3 keeps serving.
    std::fs::write(
        repo.join(".gitmodules"),
        "[submodule \"lib\"]\n\tpath = lib\n\turl = ../lib.git\n\
         [submodule \"zbad\"]\n\tpath = zbad\n\turl = ssh://git@127.0.0.1/lib.git\n",
    )
    .expect("write .gitmodules");
    std::fs::create_dir_all(repo.join("zbad")).expect("mkdir zbad");
    run_ok(git_cmd(&repo).args([
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{lib_sha3},zbad"),
    ]));
    commit_all(&repo, "a second submodule");
    server.publish(&repo, "site");
    let out = d.ssh(&d.admin, "git:sync subs");
    out.fails_with(
        "submodule zbad: ssh://git@127.0.0.1/lib.git: ssh:// submodules are never fetched",
    );
    let (_, body) = d.curl(&host("subs"), "/lib/hello.txt");
    assert_eq!(body, "scheduled submodule");
    assert_eq!(info_json(&d, "subs")["live_release"], 3);
    let app_repo = d.data_dir.join("repos").join("subs.git");
    let refs = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&app_repo)
        .args(["for-each-ref", "--format=%(refname)", "refs/cygni/"])
        .output()
        .expect("git for-each-ref");
    let refs = String::from_utf8_lossy(&refs.stdout);
    assert!(
        refs.contains(&format!("refs/cygni/submodules/{lib_sha3}")),
        "{refs}"
    );
    assert!(!refs.contains("refs/cygni/sync/"), "{refs}");
}

/// Without `--submodules` nothing about submodules is fetched: the
/// server never hears of lib.git, the directory is not there, and the
/// sync deploys the rest. Asking later with `git:sync --submodules`
/// fetches it.
#[test]
fn without_the_flag_no_submodule_is_fetched_and_the_directory_is_empty() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    let d = permissive_daemon(work.path());
    let (repo, _, _) = superproject(&server, work.path());
    let url = server.url("site.git");

    let out = d
        .ssh(&d.admin, &format!("apps:create plain --from {url}"))
        .ok();
    assert!(out.stdout.contains("synced plain v1"), "{out:#?}");
    assert!(!out.stderr.contains("Fetching submodule"), "{out:#?}");
    assert!(!out.stderr.contains("submodules:"), "{out:#?}");
    assert!(server.requests_for("/site.git") > 0);
    assert_eq!(
        server.requests_for("/lib.git"),
        0,
        "lib.git was not asked for"
    );
    let (code, body) = d.curl(&host("plain"), "/");
    assert_eq!(code, 200, "{body}");
    // The app serves the exported files: no lib/ (a gitlink stays empty).
    let (code, _) = d.curl(&host("plain"), "/lib/");
    assert_eq!(code, 404);
    let (code, _) = d.curl(&host("plain"), "/lib/hello.txt");
    assert_eq!(code, 404);
    assert_eq!(info_json(&d, "plain")["source"]["submodules"], false);

    // The same commit again: a push of it runs no build, so the setting
    // is kept and applies from the next commit.
    let out = d.ssh(&d.admin, "git:sync plain --submodules").ok();
    assert!(out.stdout.contains("synced plain v1"), "{out:#?}");
    assert!(
        out.stderr
            .contains("--submodules is kept: it applies from the next commit main gets"),
        "{out:#?}"
    );
    assert_eq!(info_json(&d, "plain")["source"]["submodules"], true);
    edit(
        &repo.join("index.html"),
        "hello from",
        "hello, with lib, from",
    );
    publish(&server, &repo, "site", "next commit");
    let out = d.ssh(&d.admin, "git:sync plain").ok();
    assert!(out.stdout.contains("synced plain v2"), "{out:#?}");
    assert!(server.requests_for("/lib.git") > 0);
    let (_, body) = d.curl(&host("plain"), "/lib/hello.txt");
    assert_eq!(body, "hello from the submodule", "{out:#?}");
    let (code, listing) = d.curl(&host("plain"), "/lib/");
    assert_eq!(code, 200, "{listing}");
    assert!(listing.contains("hello.txt"), "{listing}");
    assert_eq!(info_json(&d, "plain")["source"]["submodules"], true);
}

/// Submodule URLs outside the rules (ssh://, git://, file:// even where
/// the admin allows file for the app's URL; a private address when
/// private addresses are not allowed; more levels up than the URL has)
/// fail the sync with one line naming the submodule; the app keeps
/// serving its release and its branch, and nothing reached the server.
#[test]
fn submodule_urls_outside_the_rules_fail_in_one_line_and_change_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    // file:// for the app's URL (no address to check), private
    // addresses refused.
    let cfg = work.path().join("cygni.toml");
    std::fs::write(&cfg, "sync_allow_schemes = [\"file\"]\n").expect("write cygni.toml");
    let d = TestDaemon::start_with(&["--config", cfg.to_str().expect("utf-8 path")]);
    let (_, lib_sha) = served_lib(&server, work.path(), "hello from the submodule");
    let repo = served_repo(&server, work.path(), "procfile-app", "site");
    let url = format!("file://{}", server.root.join("site.git").display());
    d.ssh(&d.admin, &format!("apps:create keep --from {url}"))
        .ok();
    let v1_sha = head_sha(&repo);
    let lib_file = format!("file://{}", server.root.join("lib.git").display());
    let cases = [
        (
            "ssh://git@127.0.0.1/lib.git".to_owned(),
            "ssh:// submodules are never fetched, only https://",
        ),
        (
            "git://127.0.0.1/lib.git".to_owned(),
            "git:// submodules are never fetched, only https://",
        ),
        (
            lib_file,
            "file:// submodules are never fetched, only https://",
        ),
        // Relative to a file:// app URL is file:// too.
        (
            "../lib.git".to_owned(),
            "file:// submodules are never fetched",
        ),
        (
            "https://10.1.2.3/lib.git".to_owned(),
            "10.1.2.3 is a private (RFC 1918) address",
        ),
        (
            "https://127.0.0.1/lib.git".to_owned(),
            "127.0.0.1 is a loopback address",
        ),
        ("git@127.0.0.1:lib.git".to_owned(), "is not a URL"),
    ];
    for (sub_url, reason) in &cases {
        point_submodule(&server, &repo, &lib_sha, sub_url);
        let out = d.ssh(&d.admin, "git:sync keep --submodules");
        let out = out.fails_with(reason);
        let failed: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains("failed: submodule lib: "))
            .collect();
        assert!(!failed.is_empty(), "{sub_url}: {out:#?}");
        assert!(failed.iter().all(|l| l.contains(reason)), "{failed:?}");
        assert!(
            out.stderr.contains("keeps serving its live release"),
            "{out:#?}"
        );
        let info = info_json(&d, "keep");
        let error = info["last_sync"]["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("submodule lib: ") && error.contains(reason) && !error.contains('\n'),
            "{info}"
        );
        assert_eq!(info["live_release"], 1, "{info}");
        assert_eq!(info["branches"][0]["sha"], v1_sha.as_str(), "{info}");
        // The failed sync did not store --submodules.
        assert_eq!(info["source"]["submodules"], false, "{info}");
        let (code, body) = d.curl(&host("keep"), "/");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("hello from procfile-app"), "{body}");
        let (code, _) = d.curl(&host("keep"), "/.gitmodules");
        assert_eq!(code, 404, "v1 is still what is served");
    }
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The API takes `submodules`: with `from` the app serves the
/// submodule's file and the source keeps the setting; without `from`
/// it is refused and nothing is created.
#[test]
fn the_api_takes_submodules_with_from() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    let d = permissive_daemon(work.path());
    superproject(&server, work.path());
    let token = d
        .ssh(&d.admin, "tokens:create robot --role admin")
        .ok()
        .stdout
        .trim()
        .to_owned();
    let (code, v) = api_request(
        &d,
        &token,
        "POST",
        "/apps",
        Some(serde_json::json!({"name": "nofrom", "submodules": true})),
    );
    assert!((400..500).contains(&code), "{code} {v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("submodules goes with from")),
        "{v}"
    );
    d.ssh(&d.admin, "apps:info nofrom")
        .fails_with("app not found");

    let (code, v) = api_request(
        &d,
        &token,
        "POST",
        "/apps",
        Some(
            serde_json::json!({"name": "apisubs", "from": server.url("site.git"), "submodules": true}),
        ),
    );
    assert_eq!(code, 201, "{v}");
    let id = v["sync"]["id"].as_i64().expect("sync id");
    let done = wait_for("the sync to end", Duration::from_secs(120), || {
        let (_, v) = api_request(
            &d,
            &token,
            "GET",
            &format!("/apps/apisubs/syncs/{id}"),
            None,
        );
        matches!(v["state"].as_str(), Some("live" | "failed")).then_some(v)
    });
    assert_eq!(done["state"], "live", "{done}");
    let (_, body) = d.curl(&host("apisubs"), "/lib/hello.txt");
    assert_eq!(body, "hello from the submodule");
    let (_, v) = api_request(&d, &token, "GET", "/apps/apisubs", None);
    assert_eq!(v["source"]["submodules"], true, "{v}");
}

/// Nested submodules are fetched to three levels (relative URLs resolve
/// against their own superproject's URL); a fourth level stays empty.
#[test]
fn nested_submodules_are_fetched_three_levels_deep() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    let d = permissive_daemon(work.path());
    // c4 ← c3 ← c2 ← c1 ← site: each has f.txt and the next as `sub`.
    let mut below: Option<String> = None;
    for name in ["c4", "c3", "c2", "c1"] {
        let dir = work.path().join(name);
        make_repo(&dir, &[]);
        std::fs::write(dir.join("f.txt"), format!("level {name}")).expect("write f.txt");
        if let Some(sha) = &below {
            std::fs::write(
                dir.join(".gitmodules"),
                format!(
                    "[submodule \"sub\"]\n\tpath = sub\n\turl = ../{}.git\n",
                    next_of(name)
                ),
            )
            .expect("write .gitmodules");
            run_ok(git_cmd(&dir).args([
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{sha},sub"),
            ]));
            std::fs::create_dir_all(dir.join("sub")).expect("mkdir sub");
        }
        commit_all(&dir, name);
        server.publish(&dir, name);
        below = Some(head_sha(&dir));
    }
    let repo = served_repo(&server, work.path(), "procfile-app", "site");
    std::fs::write(
        repo.join(".gitmodules"),
        "[submodule \"c1\"]\n\tpath = sub\n\turl = ../c1.git\n",
    )
    .expect("write .gitmodules");
    run_ok(git_cmd(&repo).args([
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{},sub", below.expect("c1")),
    ]));
    std::fs::create_dir_all(repo.join("sub")).expect("mkdir sub");
    commit_all(&repo, "nested");
    server.publish(&repo, "site");

    let out = d
        .ssh(
            &d.admin,
            &format!(
                "apps:create nested --from {} --submodules",
                server.url("site.git")
            ),
        )
        .ok();
    assert!(out.stderr.contains("submodules: 3 ready"), "{out:#?}");
    assert!(
        out.stderr.contains("Fetching submodule sub/sub/sub "),
        "{out:#?}"
    );
    for (path, text) in [
        ("/sub/f.txt", "level c1"),
        ("/sub/sub/f.txt", "level c2"),
        ("/sub/sub/sub/f.txt", "level c3"),
    ] {
        let (code, body) = d.curl(&host("nested"), path);
        assert_eq!((code, body.as_str()), (200, text), "{path}");
    }
    let (code, _) = d.curl(&host("nested"), "/sub/sub/sub/sub/f.txt");
    assert_eq!(code, 404, "the fourth level stays empty");
    assert_eq!(server.requests_for("/c4.git"), 0);
}

/// c1's submodule is c2, and so on.
fn next_of(name: &str) -> &'static str {
    match name {
        "c1" => "c2",
        "c2" => "c3",
        _ => "c4",
    }
}

/// More than 16 submodules fail the sync with one line; the app keeps
/// serving what it served.
#[test]
fn more_than_sixteen_submodules_fail_the_sync() {
    let work = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&work.path().join("served"));
    let d = permissive_daemon(work.path());
    let (_, lib_sha) = served_lib(&server, work.path(), "hello from the submodule");
    let repo = served_repo(&server, work.path(), "procfile-app", "site");
    d.ssh(
        &d.admin,
        &format!(
            "apps:create many --from {} --submodules",
            server.url("site.git")
        ),
    )
    .ok();
    let mut modules = String::new();
    for i in 1..=17 {
        let path = format!("l{i:02}");
        modules.push_str(&format!(
            "[submodule \"{path}\"]\n\tpath = {path}\n\turl = ../lib.git\n"
        ));
        std::fs::create_dir_all(repo.join(&path)).expect("mkdir");
        run_ok(git_cmd(&repo).args([
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{lib_sha},{path}"),
        ]));
    }
    std::fs::write(repo.join(".gitmodules"), modules).expect("write .gitmodules");
    commit_all(&repo, "seventeen");
    server.publish(&repo, "site");
    let out = d.ssh(&d.admin, "git:sync many");
    out.fails_with("submodule l17: more than 16 submodules (nested ones included)");
    let info = info_json(&d, "many");
    assert_eq!(info["live_release"], 1, "{info}");
    let (code, _) = d.curl(&host("many"), "/l01/hello.txt");
    assert_eq!(code, 404, "v1 is still what is served");
    // lib was fetched once, not seventeen times.
    assert!(server.requests_for("/lib.git") <= 4, "{:?}", server.paths);
}
