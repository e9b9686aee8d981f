//! The main job, end to end: `git push` → build → live app behind the
//! proxy, on the local runtime. Real git, ssh and curl; fixture apps from
//! tests/fixtures.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Push, check the page, push a change, check the new page and `releases`.
fn push_and_redeploy(fixture_name: &str, app: &str, marker: &str, file: &str) {
    let d = TestDaemon::start();
    let repo = fixture_repo(&d, fixture_name, app);

    let out = push(&d, &repo, app).ok();
    assert!(
        out.stderr.contains("remote: -----> Released v1"),
        "{out:#?}"
    );
    // The URL printed is the one that works, port included.
    let url = format!("http://{app}.localhost:{} deployed", d.http_port);
    assert!(out.stderr.contains(&url), "{out:#?}");
    let (code, body) = d.curl(&host(app), "/");
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert!(body.contains(marker), "{body}");

    edit(&repo.join(file), marker, &format!("{marker} v2"));
    commit_all(&repo, "change");
    let out = push(&d, &repo, app).ok();
    assert!(
        out.stderr.contains("remote: -----> Released v2"),
        "{out:#?}"
    );
    let (code, body) = d.curl(&host(app), "/");
    assert_eq!(code, 200);
    assert!(body.contains(&format!("{marker} v2")), "{body}");

    let rel = d.ssh(&d.admin, &format!("releases {app} --json")).ok();
    let rel: serde_json::Value = serde_json::from_str(&rel.stdout).unwrap();
    assert_eq!(rel[0]["version"], 2);
    assert_eq!(rel[0]["status"], "live");
    assert_eq!(rel[1]["version"], 1);
    assert_eq!(rel[1]["status"], "superseded");
    let text = d.ssh(&d.admin, &format!("releases {app}")).ok();
    assert!(text.stdout.contains("* v2"), "{}", text.stdout);

    // The build log of each deploy is kept and readable over SSH.
    let log = d.ssh(&d.admin, &format!("logs {app} --build v2")).ok();
    assert!(log.stdout.contains("-----> "), "{log:#?}");
}

#[test]
fn python_app_push_and_redeploy() {
    push_and_redeploy("python-app", "py", "hello from python-app", "app.py");
}

#[test]
fn node_app_push_and_redeploy() {
    push_and_redeploy("node-app", "nodeapp", "hello from node-app", "server.js");
}

#[test]
fn procfile_app_push_and_redeploy() {
    push_and_redeploy(
        "procfile-app",
        "static",
        "hello from procfile-app",
        "index.html",
    );
}

/// A failing push: non-zero exit, reason as `remote:` lines, the branch
/// does not move, the previous release keeps answering.
fn failing_push(bad_fixture: &str, reason: &str) {
    let d = TestDaemon::start();
    let app = "steady";
    let repo = fixture_repo(&d, "procfile-app", app);
    push(&d, &repo, app).ok();
    let good_sha = head_sha(&repo);

    replace_with_fixture(&repo, bad_fixture);
    // Keep a failing health check short.
    std::fs::write(repo.join("cygni.toml"), "[healthcheck]\ntimeout = 5\n").unwrap();
    commit_all(&repo, "break it");
    assert_push_refused(&d, &repo, app, &good_sha, reason, "hello from procfile-app");
    let rel = d.ssh(&d.admin, &format!("releases {app} --json")).ok();
    let rel: serde_json::Value = serde_json::from_str(&rel.stdout).unwrap();
    assert_eq!(rel[0]["status"], "failed");
    assert_eq!(rel[1]["status"], "live");
}

#[test]
fn failing_push_start_command_exits() {
    failing_push("fail-exits", "exited during boot");
}

#[test]
fn failing_push_never_listens() {
    failing_push("fail-noport", "did not pass its health check within 5s");
}

#[test]
fn failing_push_build_fails() {
    failing_push("fail-build", "build failed");
}

#[test]
fn unknown_host_is_404_and_app_without_instances_is_503() {
    let d = TestDaemon::start();
    let (code, body) = d.curl("nosuch.localhost", "/");
    assert_eq!(code, 404, "{body}");
    d.ssh(&d.admin, "apps:create empty").ok();
    let (code, _) = d.curl(&host("empty"), "/");
    assert_eq!(code, 503);
}

#[test]
fn other_branches_are_stored_not_deployed() {
    let d = TestDaemon::start();
    let repo = fixture_repo(&d, "procfile-app", "br");
    run_ok(git_cmd(&repo).args(["checkout", "-q", "-b", "feature"]));
    let out = d
        .git(&d.admin, &repo, &["push", &d.remote("br"), "feature"])
        .ok();
    assert!(out.stderr.contains("stored, not deployed"), "{out:#?}");
    let (code, _) = d.curl(&host("br"), "/");
    assert_eq!(code, 503, "nothing is deployed yet");
}

/// Zero downtime: 4 clients keep requesting while the app redeploys; no
/// request fails, and the answers switch from old to new.
#[test]
fn redeploy_has_zero_downtime() {
    let d = TestDaemon::start();
    let app = "zdt";
    let repo = fixture_repo(&d, "procfile-app", app);
    push(&d, &repo, app).ok();

    let traffic = Traffic::start(
        d.http_port,
        &host(app),
        "hello from procfile-app",
        "hello from procfile-app v2",
        4,
    );
    edit(
        &repo.join("index.html"),
        "hello from procfile-app",
        "hello from procfile-app v2",
    );
    commit_all(&repo, "v2");
    push(&d, &repo, app).ok();
    // Let the clients see the new release for a moment.
    let seen = traffic.wait_new(10, Duration::from_secs(10));
    let report = traffic.finish();
    assert!(seen, "the clients never saw v2 ten times: {report:?}");
    assert!(report.failures.is_empty(), "failed requests: {report:?}");
    assert!(report.old > 0, "never saw v1");
}

/// Processes whose working directory is inside `dir`.
fn pids_in(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            if cwd.starts_with(dir) {
                pids.push(pid);
            }
        }
    }
    pids
}

#[test]
fn app_comes_back_after_kill_9_and_after_a_daemon_restart() {
    let mut d = TestDaemon::start();
    let app = "phoenix";
    let repo = fixture_repo(&d, "procfile-app", app);
    push(&d, &repo, app).ok();
    assert_eq!(d.curl(&host(app), "/").0, 200);

    let slugs = d.data_dir.join("slugs").join(app);
    let pids = pids_in(&slugs);
    assert!(!pids.is_empty(), "no app process found under {slugs:?}");
    for pid in &pids {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    wait_for(
        "the app to answer after kill -9",
        Duration::from_secs(30),
        || {
            let (code, body) = d.curl(&host(app), "/");
            (code == 200 && body.contains("hello from procfile-app")).then_some(())
        },
    );
    let new_pids = pids_in(&slugs);
    assert!(
        new_pids.iter().all(|p| !pids.contains(p)),
        "the same process answered"
    );

    d.restart();
    wait_for(
        "the app to answer after a restart",
        Duration::from_secs(30),
        || {
            let (code, body) = d.curl(&host(app), "/");
            (code == 200 && body.contains("hello from procfile-app")).then_some(())
        },
    );
    let rel = d.ssh(&d.admin, &format!("releases {app} --json")).ok();
    let rel: serde_json::Value = serde_json::from_str(&rel.stdout).unwrap();
    assert_eq!(rel.as_array().unwrap().len(), 1, "no new release was made");
}

/// Two pushes at once: the second says it waits, and once the first has
/// landed it is refused (its branch moved), as git refuses a stale push.
/// Nothing it carried goes live.
#[test]
fn concurrent_push_waits_then_is_refused_as_stale() {
    let d = TestDaemon::start();
    let app = "busy";
    let repo = fixture_repo(&d, "procfile-app", app);
    push(&d, &repo, app).ok();

    // First push: a slow release phase keeps the deploy lock for a while.
    std::fs::write(
        repo.join("Procfile"),
        "web: python3 -m http.server $PORT\nrelease: sleep 4\n",
    )
    .unwrap();
    edit(
        &repo.join("index.html"),
        "hello from procfile-app",
        "hello from A",
    );
    commit_all(&repo, "A");

    // Second push: another clone, another commit on the same parent.
    let other = d.dir.path().join("other");
    d.git(
        &d.admin,
        d.dir.path(),
        &["clone", "-q", &d.remote(app), other.to_str().unwrap()],
    )
    .ok();
    edit(
        &other.join("index.html"),
        "hello from procfile-app",
        "hello from B",
    );
    commit_all(&other, "B");

    let first = {
        let remote = d.remote(app);
        let key = d.admin.clone();
        let repo = repo.clone();
        let port = d.ssh_port;
        std::thread::spawn(move || {
            let ssh = format!("ssh -i {} {}", key.private.display(), ssh_opts().join(" "));
            let _ = port;
            git_cmd(&repo)
                .env("GIT_SSH_COMMAND", ssh)
                .args(["push", &remote, "main"])
                .output()
                .unwrap()
        })
    };
    // Wait until the first deploy is in its release phase.
    wait_for("the first deploy to start", Duration::from_secs(30), || {
        let r = d.ssh(&d.admin, &format!("releases {app} --json"));
        r.stdout.contains("\"releasing\"").then_some(())
    });
    let second = d.git(&d.admin, &other, &["push", &d.remote(app), "main"]);
    let first = first.join().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_ne!(second.code, 0, "{second:#?}");
    assert!(
        second.stderr.contains("waiting for it to finish"),
        "{second:#?}"
    );
    assert!(
        second.stderr.contains("moved while this push waited"),
        "{second:#?}"
    );
    let (code, body) = d.curl(&host(app), "/");
    assert_eq!(code, 200);
    assert!(body.contains("hello from A"), "{body}");
}

#[test]
fn http_health_check_path_from_cygni_toml() {
    let d = TestDaemon::start();
    let app = "checked";
    let repo = fixture_repo(&d, "procfile-app", app);
    std::fs::write(
        repo.join("cygni.toml"),
        "[healthcheck]\npath = \"/nope\"\ntimeout = 5\n",
    )
    .unwrap();
    commit_all(&repo, "bad check path");
    push(&d, &repo, app).fails_with("GET /nope answered 404");

    std::fs::write(
        repo.join("cygni.toml"),
        "[healthcheck]\npath = \"/index.html\"\n",
    )
    .unwrap();
    commit_all(&repo, "good check path");
    let out = push(&d, &repo, app).ok();
    assert!(out.stderr.contains("answering GET /index.html"), "{out:#?}");
    assert_eq!(d.curl(&host(app), "/").0, 200);
}

/// Regression: an app runs as the unprivileged app user, which can
/// traverse the data dir to reach its slug. It must not read the state
/// database (every app's config vars, the TLS keys), the git repos or the
/// logs of any app.
#[test]
fn app_cannot_read_the_state_database_repos_or_logs() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("apps run as another user only when cygni runs as root");
        return;
    }
    let d = TestDaemon::start();
    let victim = fixture_repo(&d, "procfile-app", "victim");
    push(&d, &victim, "victim").ok();
    d.ssh(&d.admin, "config:set victim SECRET=hunter2").ok();
    let snoop = fixture_repo(&d, "procfile-app", "snoop");
    push(&d, &snoop, "snoop").ok();

    let data = d.data_dir.display().to_string();
    for target in [
        format!("{data}/cygni.db"),
        format!("{data}/cygni.db-wal"),
        format!("{data}/logs/victim/app.log"),
        format!("{data}/repos/victim.git/config"),
        format!("{data}/git/config"),
    ] {
        let out = d.ssh(&d.admin, &format!("run snoop -- cat {target}"));
        assert_ne!(out.code, 0, "{target} was readable: {out:#?}");
        assert!(
            out.stdout.contains("Permission denied"),
            "{target}: {out:#?}"
        );
        assert!(!out.stdout.contains("hunter2"));
    }
}
