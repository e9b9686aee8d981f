//! Regressions from the hardening pass (issue 16) that are the deploy
//! core's and the service layer's: each drives the real daemon as an
//! unlucky user would, and checks that nothing was lost.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Regression: with SQLite held by another writer, `config:set` waited
/// and then said "release failed: internal error; see the server log".
/// The user should learn that the database was busy and that nothing
/// changed.
#[test]
fn locked_database_regression_says_busy_and_changes_nothing() {
    let d = TestDaemon::start();
    let repo = fixture_repo(&d, "procfile-app", "locked");
    push(&d, &repo, "locked").ok();
    d.ssh(&d.admin, "config:set locked GREETING=before").ok();
    let releases_before = d.ssh(&d.admin, "releases locked --json").ok().stdout;

    // Another writer holds the database (an exclusive transaction) for
    // longer than the daemon's 5 s busy timeout.
    let db = d.data_dir.join("cygni.db");
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys,time\n\
             c=sqlite3.connect(sys.argv[1],isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked',flush=True)\n\
             time.sleep(12)\n",
        )
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "locked");

    let out = d.ssh(&d.admin, "config:set locked GREETING=after");
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("the database is busy; nothing was changed; try again"),
        "{out:#?}"
    );
    let errors = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .count();
    assert_eq!(errors, 1, "one error line: {out:#?}");
    let _ = holder.kill();
    let _ = holder.wait();

    // Nothing changed: the old value, the same releases, still serving.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        d.ssh(&d.admin, "config:get locked GREETING").ok().stdout,
        "before\n"
    );
    assert_eq!(
        d.ssh(&d.admin, "releases locked --json").ok().stdout,
        releases_before
    );
    let (code, body) = d.curl(&host("locked"), "/");
    assert_eq!(code, 200, "{body}");
}

/// Regression: a Procfile with only a worker deployed, and its host
/// answered 503 with no word in the push output.
#[test]
fn worker_only_procfile_regression_says_nothing_is_served() {
    let d = TestDaemon::start();
    let repo = fixture_repo(&d, "worker-only-app", "workers");
    let out = push(&d, &repo, "workers").ok();
    assert!(
        out.stderr
            .contains("no web process type: nothing is served over HTTP"),
        "{out:#?}"
    );
    let (code, _) = d.curl(&host("workers"), "/");
    assert_eq!(code, 503);
    // Workers start at 0, as on Heroku; scaling runs one.
    d.ssh(&d.admin, "ps:scale workers worker=1").ok();
    let ps = d.ssh(&d.admin, "ps workers").ok();
    assert!(ps.stdout.contains("worker.1"), "{ps:#?}");
}

/// Limits are typed when they are set: a bad one is refused by
/// `config:set` with one line, and nothing is stored or released.
#[test]
fn bad_limits_are_refused_when_set() {
    let d = TestDaemon::start();
    let repo = fixture_repo(&d, "procfile-app", "limited");
    push(&d, &repo, "limited").ok();
    let before = d.ssh(&d.admin, "releases limited --json").ok().stdout;
    for (pair, needle) in [
        (
            "CYGNI_MEMORY=lots",
            "CYGNI_MEMORY=\"lots\" is not a valid limit",
        ),
        ("CYGNI_MEMORY=1m", "the minimum is 6m"),
        ("CYGNI_CPUS=0", "CYGNI_CPUS=\"0\" is not a valid limit"),
    ] {
        let out = d.ssh(&d.admin, &format!("config:set limited {pair}"));
        out.fails_with(needle);
    }
    assert_eq!(
        d.ssh(&d.admin, "releases limited --json").ok().stdout,
        before
    );
    let cfg = d.ssh(&d.admin, "config limited --json").ok().stdout;
    assert!(!cfg.contains("CYGNI_"), "{cfg}");
    // A good one is stored and released.
    d.ssh(&d.admin, "config:set limited CYGNI_MEMORY=256m").ok();
    let (code, _) = d.curl(&host("limited"), "/");
    assert_eq!(code, 200);
}

/// Regression: 10,000 config keys in one `config:set` were accepted.
#[test]
fn config_key_flood_regression_is_refused_with_nothing_stored() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create many").ok();
    let pairs: Vec<String> = (0..1001).map(|i| format!("K{i}=v")).collect();
    let out = d.ssh(
        &d.admin,
        &format!("config:set many --no-restart {}", pairs.join(" ")),
    );
    out.fails_with("the most is 1000");
    let cfg = d.ssh(&d.admin, "config many").ok();
    assert!(cfg.stdout.contains("has no config vars"), "{cfg:#?}");
}

/// Regression: `kill -9` of the daemon left every app process it started
/// running as an orphan (parent 1), and the restarted daemon started new
/// instances beside them: 13, 26, then 65 after three kills. Now each
/// instance's process group is recorded, and a start kills what is left
/// before reconcile starts anything.
#[test]
fn daemon_kill_orphans_regression_are_reaped_never_duplicated() {
    let mut d = TestDaemon::start();
    // A web whose real server is a grandchild of the runtime's process:
    // the shell stays, so PR_SET_PDEATHSIG alone does not reach it.
    let repo = make_repo(
        &d.dir.path().join("orphans"),
        &[(
            "Procfile",
            "web: python3 -m http.server \"$PORT\" --bind 127.0.0.1; echo done\n",
        )],
    );
    push(&d, &repo, "orphans").ok();
    let before = app_processes(&d);
    assert!(!before.is_empty(), "no app process found");
    let mut prev = before.clone();
    for round in 1..=3 {
        d.crash_and_restart();
        wait_for("the app to serve again", Duration::from_secs(30), || {
            (d.curl(&host("orphans"), "/").0 == 200).then_some(())
        });
        // Give a would-be duplicate time to show up.
        std::thread::sleep(Duration::from_millis(500));
        let now = app_processes(&d);
        assert_eq!(
            now.len(),
            before.len(),
            "round {round}: {now:?} app processes (one instance was {before:?})"
        );
        assert!(
            now.iter().all(|p| !prev.contains(p)),
            "round {round}: an orphan of the killed daemon still runs: {now:?} vs {prev:?}"
        );
        prev = now;
    }
    // The repo, the releases and the app are intact.
    let releases = d.ssh(&d.admin, "releases orphans --json").ok().stdout;
    assert!(releases.contains("\"live\""), "{releases}");
}

/// Regression: a daemon killed mid-build left the release `building` and
/// its half-built directory behind. At the next start the release is
/// failed, its directory is gone, the previous release serves and a new
/// push deploys.
#[test]
fn kill_mid_build_regression_leaves_no_build_dir_and_the_app_serving() {
    let mut d = TestDaemon::start();
    let dir = d.dir.path().join("midbuild");
    let plan = |build: &str| {
        format!(
            "providers = []\n[phases.build]\ncmds = [\"{build}\"]\n[start]\ncmd = \"python3 -m http.server $PORT\"\n"
        )
    };
    let repo = make_repo(
        &dir,
        &[
            ("nixpacks.toml", plan("true").as_str()),
            ("index.html", "hello from v1\n"),
        ],
    );
    push(&d, &repo, "midbuild").ok();
    std::fs::write(repo.join("nixpacks.toml"), plan("sleep 60")).expect("write");
    std::fs::write(repo.join("index.html"), "hello from v2\n").expect("write");
    commit_all(&repo, "slow build");
    let slow = push_in_background(&d, &repo, "midbuild");
    let v2 = d.data_dir.join("slugs/midbuild/v2");
    wait_for("the v2 build to start", Duration::from_secs(30), || {
        v2.is_dir().then_some(())
    });
    d.crash_and_restart();
    let mut slow = slow;
    let _ = slow.kill();
    let _ = slow.wait();

    assert!(
        !v2.exists(),
        "the interrupted build's directory is still there"
    );
    let releases = d.ssh(&d.admin, "releases midbuild --json").ok().stdout;
    let json: serde_json::Value = serde_json::from_str(&releases).expect("json");
    let v2 = json
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["version"] == 2)
        .expect("v2 recorded");
    assert_eq!(v2["status"], "failed", "{v2}");
    wait_for("v1 to serve again", Duration::from_secs(30), || {
        let (code, body) = d.curl(&host("midbuild"), "/");
        (code == 200 && body.contains("hello from v1")).then_some(())
    });
    let ls = d
        .git(&d.admin, &repo, &["ls-remote", &d.remote("midbuild")])
        .ok();
    assert!(
        !ls.stdout.contains(&head_sha(&repo)),
        "the branch moved: {ls:#?}"
    );
}

/// Regression: the drain was a fixed 2 s, so a request longer than that
/// which spanned a deploy was cut (502, "upstream failed during the
/// request"). Now the old instance is stopped only once what is in flight
/// to it has finished (up to 30 s), and the push still returns at live.
#[test]
fn long_request_cut_by_deploy_regression_finishes() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create longreq").ok();
    d.ssh(&d.admin, "config:set longreq --no-restart VERSION=v1")
        .ok();
    let repo = fixture_repo(&d, "slow-boot-app", "longreq");
    push(&d, &repo, "longreq").ok();

    let port = d.http_port;
    let slow = std::thread::spawn(move || curl(port, &host("longreq"), "/slow/8"));
    std::thread::sleep(Duration::from_millis(500));
    // A new release while the request is in flight on the old instance.
    let started = std::time::Instant::now();
    d.ssh(&d.admin, "config:set longreq VERSION=v2").ok();
    let released_after = started.elapsed();
    let (code, body) = slow.join().expect("slow request");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("slow done by web.1 of v1"), "{body}");
    assert!(
        released_after < Duration::from_secs(6),
        "the release waited for the old instance's drain: {released_after:?}"
    );
    let (code, body) = d.curl(&host("longreq"), "/slow/0");
    assert_eq!(code, 200);
    assert!(body.contains("of v2"), "{body}");
}

/// Regression: no push was refused for lack of free disk. With a reserve
/// larger than the disk, a push is refused with one line, and the app,
/// its branch and its releases are as they were.
#[test]
fn disk_full_regression_push_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cygni.toml");
    // 1 PiB: more than any test machine has free.
    std::fs::write(&cfg, "min_free_mb = 1073741824\n").expect("config");
    let d = TestDaemon::start_with(&["--config", cfg.to_str().expect("utf-8")]);
    let repo = fixture_repo(&d, "procfile-app", "full");
    let out = push(&d, &repo, "full");
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr.contains("MiB free for apps") && out.stderr.contains("nothing was changed"),
        "{out:#?}"
    );
    let ls = d
        .git(&d.admin, &repo, &["ls-remote", &d.remote("full")])
        .ok();
    assert!(
        !ls.stdout.contains("refs/heads/main"),
        "the branch was stored: {ls:#?}"
    );
    let releases = d.ssh(&d.admin, "releases full --json").ok().stdout;
    assert!(!releases.contains("\"live\""), "{releases}");
    assert!(!d.data_dir.join("slugs/full/v1").exists());
}

/// Regression: an operator's setup fault (here a stray file where the
/// next release's directory goes) reached an admin's push as "internal
/// error; see the server log", though only the admin can fix it and the
/// log had the actionable line. Now an admin's push names the cause; a
/// developer's still gets the generic line (the cause names server paths).
/// Either way the push is refused and v1 serves.
#[test]
fn operator_fault_regression_admin_push_names_the_cause() {
    let d = TestDaemon::start();
    let repo = fixture_repo(&d, "procfile-app", "setup");
    push(&d, &repo, "setup").ok();
    let dev = d.add_key("dev", "developer");
    d.ssh(&d.admin, "keys:grant dev setup").ok();
    let good = head_sha(&repo);
    edit(&repo.join("index.html"), "hello from", "changed in");
    commit_all(&repo, "change");

    let stray = d.data_dir.join("slugs/setup/v2");
    std::fs::write(&stray, "not a directory").expect("stray file");
    let dev_out = d.git(&dev, &repo, &["push", &d.remote("setup"), "main"]);
    assert_ne!(dev_out.code, 0, "{dev_out:#?}");
    assert!(
        dev_out
            .stderr
            .contains("internal error; see the server log"),
        "{dev_out:#?}"
    );
    assert!(!dev_out.stderr.contains("slugs/setup"), "{dev_out:#?}");

    // The developer's failed push was v2; the admin's is v3.
    let stray = d.data_dir.join("slugs/setup/v3");
    std::fs::write(&stray, "not a directory").expect("stray file");
    let admin_out = assert_push_refused(
        &d,
        &repo,
        "setup",
        &good,
        "internal error:",
        "hello from procfile-app",
    );
    let line = admin_out
        .stderr
        .lines()
        .find(|l| l.contains("export failed: internal error:"))
        .unwrap_or_else(|| panic!("no cause line: {admin_out:#?}"));
    assert!(!line.contains("see the server log"), "{line}");
    assert!(
        line.contains("slugs/setup/v3") || line.contains("exists"),
        "{line}"
    );
}

/// The pids whose command line is exactly `sleep SECONDS`.
fn sleepers(seconds: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(c) = std::fs::read(entry.path().join("cmdline")) {
            if c == format!("sleep\0{seconds}\0").as_bytes() {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Regression: a process an app started that left its process group
/// (`setsid`, as daemonizing tools do) outlived `ps:stop`, and outlived a
/// `kill -9` of the daemon, running on beside the instances the next start
/// made. Now every local process runs in a cgroup of its own: stop kills
/// the whole cgroup, and a start sweeps what a killed daemon left.
#[test]
fn escaped_process_regression_stop_and_restart_kill_what_left_the_group() {
    let mut d = TestDaemon::start();
    if !d.log().contains("runs in a cgroup of its own") {
        skip_or_fail("no writable cgroup2 hierarchy here (the daemon said why in its log)");
        return;
    }
    // A marker no other test's process has.
    let seconds = format!("8{}{}", std::process::id(), d.ssh_port);
    let repo = make_repo(
        &d.dir.path().join("escape"),
        &[(
            "Procfile",
            format!(
                "web: setsid sleep {seconds} & exec python3 -m http.server \"$PORT\" --bind 127.0.0.1\n"
            )
            .as_str(),
        )],
    );
    push(&d, &repo, "escape").ok();
    let first = wait_for("the escaped sleeper", Duration::from_secs(10), || {
        let s = sleepers(&seconds);
        (s.len() == 1).then_some(s)
    });
    // It really left the instance's process group.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", first[0])).expect("stat");
    let web = app_processes(&d);
    assert!(
        web.iter().all(|p| !stat.contains(&format!(") S {p} {p} "))),
        "{stat}"
    );

    d.ssh(&d.admin, "ps:stop escape").ok();
    wait_for(
        "ps:stop to kill the escaped sleeper",
        Duration::from_secs(15),
        || sleepers(&seconds).is_empty().then_some(()),
    );

    d.ssh(&d.admin, "ps:start escape").ok();
    let second = wait_for("a new sleeper", Duration::from_secs(20), || {
        let s = sleepers(&seconds);
        (s.len() == 1).then_some(s)
    });
    d.crash_and_restart();
    wait_for("the app to serve again", Duration::from_secs(30), || {
        (d.curl(&host("escape"), "/").0 == 200).then_some(())
    });
    let now = wait_for(
        "exactly one sleeper after the restart",
        Duration::from_secs(15),
        || {
            let s = sleepers(&seconds);
            (s.len() == 1 && s != second).then_some(s)
        },
    );
    assert!(
        !now.contains(&second[0]),
        "the killed daemon's sleeper survived: {now:?}"
    );
    d.ssh(&d.admin, "apps:destroy escape --confirm escape").ok();
    wait_for(
        "apps:destroy to kill the sleeper",
        Duration::from_secs(15),
        || sleepers(&seconds).is_empty().then_some(()),
    );
}

/// The real uid of a process, from `/proc/PID/status` (`Uid:` real,
/// effective, saved, filesystem: all four must agree).
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let ids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    (ids.len() == 4 && ids.iter().all(|&i| i == ids[0])).then(|| ids[0])
}

/// The uids the processes of `app` (cwd under its slugs) run as.
fn app_uids(d: &TestDaemon, app: &str) -> Vec<u32> {
    let slugs = d.data_dir.join("slugs").join(app);
    let mut uids: Vec<u32> = app_processes(d)
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&slugs))
        })
        .filter_map(process_uid)
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// `SELECT` through python3's sqlite3 (the daemon keeps the file; WAL
/// lets a reader in): one line per row, columns joined by `|`.
fn query(d: &TestDaemon, sql: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys\n\
             c=sqlite3.connect(sys.argv[1])\n\
             for r in c.execute(sys.argv[2]): print('|'.join(map(str,r)))\n",
        )
        .arg(d.data_dir.join("cygni.db"))
        .arg(sql)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `sql` (a write) through python3's sqlite3, with the daemon stopped.
fn execute(d: &TestDaemon, sql: &str) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys\n\
             c=sqlite3.connect(sys.argv[1])\n\
             c.execute(sys.argv[2]); c.commit()\n",
        )
        .arg(d.data_dir.join("cygni.db"))
        .arg(sql)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
}

/// `cat PATH` as uid:gid (no supplementary groups: std drops them when
/// root sets the ids): its exit code and stderr.
fn cat_as(uid: u32, path: &std::path::Path) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new("cat")
        .arg(path)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("cat");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Regression (issue 16, local runtime isolation): with a root daemon,
/// every app's processes and builds ran as the one `cygni-app` account, so
/// any app could read any other's slug (its code, what its build wrote)
/// and cache. Now each app has its own uid/gid, allocated by Cygni and
/// kept in SQLite, and owns its slug and cache, 0700.
#[test]
fn isolation_regression_one_app_cannot_read_anothers_slug() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("needs root: apps get their own uid only under a root daemon");
        return;
    }
    let d = TestDaemon::start();
    for app in ["alpha", "beta"] {
        let repo = fixture_repo(&d, "procfile-app", app);
        push(&d, &repo, app).ok();
        let (code, body) = d.curl(&host(app), "/");
        assert_eq!(code, 200, "{app}: {body}");
    }

    // Their web processes run as two different uids, neither root, each
    // the one SQLite gave the app.
    let (a, b) = (app_uids(&d, "alpha"), app_uids(&d, "beta"));
    assert_eq!(a.len(), 1, "alpha's processes run as one uid: {a:?}");
    assert_eq!(b.len(), 1, "beta's processes run as one uid: {b:?}");
    let (ua, ub) = (a[0], b[0]);
    assert_ne!(ua, ub, "two apps, one uid");
    assert!(ua != 0 && ub != 0);
    let stored = query(
        &d,
        "SELECT a.name, u.uid FROM app_users u JOIN apps a ON a.id = u.app_id ORDER BY a.name",
    );
    assert_eq!(stored, format!("alpha|{ua}\nbeta|{ub}\n"));

    // alpha's slug and cache are alpha's, 0700.
    use std::os::unix::fs::MetadataExt;
    let slug = d.data_dir.join("slugs/alpha/v1");
    let secret = slug.join("index.html");
    for dir in [slug.clone(), d.data_dir.join("cache/alpha")] {
        let meta = std::fs::metadata(&dir).expect("dir");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (ua, ua, 0o700),
            "{}",
            dir.display()
        );
    }

    // beta's own one-off cannot read alpha's slug; alpha's can.
    let path = secret.display().to_string();
    let out = d.ssh(&d.admin, &format!("run beta cat {path}"));
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stdout.contains("Permission denied") || out.stderr.contains("Permission denied"),
        "{out:#?}"
    );
    let own = d.ssh(&d.admin, &format!("run alpha cat {path}")).ok();
    assert!(!own.stdout.is_empty(), "{own:#?}");
    // The same with the bare uids: EACCES for beta's, alpha's reads it.
    let (code, err) = cat_as(ub, &secret);
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(cat_as(ua, &secret).0, 0);

    // Destroying alpha takes its id's row with it; a new app gets an id
    // that is neither beta's nor (not yet: the range has not wrapped)
    // alpha's freed one.
    d.ssh(&d.admin, "apps:destroy alpha --confirm alpha").ok();
    assert_eq!(query(&d, "SELECT uid FROM app_users"), format!("{ub}\n"));
    assert!(!d.data_dir.join("slugs/alpha").exists());
    let repo = fixture_repo(&d, "procfile-app", "gamma");
    push(&d, &repo, "gamma").ok();
    let g = app_uids(&d, "gamma");
    assert_eq!(g.len(), 1, "{g:?}");
    assert!(
        g[0] != ub && g[0] != ua,
        "gamma {g:?}, beta {ub}, alpha {ua}"
    );
    assert_eq!(
        query(&d, "SELECT COUNT(*), COUNT(DISTINCT uid) FROM app_users"),
        "2|2\n"
    );
    // beta still serves, as its own uid.
    assert_eq!(d.curl(&host("beta"), "/").0, 200);
    assert_eq!(app_uids(&d, "beta"), vec![ub]);
}

/// The same threat across an upgrade: an app deployed before per-app users
/// has no id, and its slug and cache are the shared account's, open to
/// every app (0755). At the next start it gets an id of its own, its slug
/// and cache are handed to it (0700), and it serves as before.
#[test]
fn isolation_regression_an_app_from_before_per_app_users_is_handed_its_files() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("needs root: apps get their own uid only under a root daemon");
        return;
    }
    let mut d = TestDaemon::start();
    let repo = fixture_repo(&d, "procfile-app", "legacy");
    push(&d, &repo, "legacy").ok();
    let old = app_uids(&d, "legacy");
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(d.stop(), Some(0), "{}", d.log());

    // What an older Cygni left: no id, and the files the shared account's
    // (here `nobody`), world-readable.
    execute(&d, "DELETE FROM app_users");
    let (slug, cache) = (
        d.data_dir.join("slugs/legacy/v1"),
        d.data_dir.join("cache/legacy"),
    );
    for dir in [&slug, &cache] {
        run_ok(Command::new("chown").args(["-R", "65534:65534"]).arg(dir));
        run_ok(Command::new("chmod").arg("0755").arg(dir));
    }
    set_mode(&d.data_dir.join("slugs/legacy"), 0o755);

    d.start_again();
    wait_for("legacy to serve again", Duration::from_secs(30), || {
        (d.curl(&host("legacy"), "/").0 == 200).then_some(())
    });
    let now = app_uids(&d, "legacy");
    assert_eq!(now.len(), 1, "{now:?}");
    let uid = now[0];
    assert_ne!(uid, 65534, "it no longer runs as the shared account");
    assert_eq!(query(&d, "SELECT uid FROM app_users"), format!("{uid}\n"));
    use std::os::unix::fs::MetadataExt;
    let slug_meta = std::fs::metadata(&slug).expect("slug");
    assert_eq!(
        (slug_meta.uid(), slug_meta.gid(), slug_meta.mode() & 0o777),
        (uid, uid, 0o700)
    );
    let file = std::fs::metadata(slug.join("index.html")).expect("file");
    assert_eq!(file.uid(), uid, "what is inside is handed over too");
    // The cache is closed at start; it becomes the app's at its next build.
    assert_eq!(
        std::fs::metadata(&cache).expect("cache").mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(d.data_dir.join("slugs/legacy"))
            .expect("slugs/legacy")
            .mode()
            & 0o777,
        0o711
    );
    // The shared account reads nothing of it any more.
    let (code, err) = cat_as(65534, &slug.join("index.html"));
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    // The next deploy builds as the app's uid, with its cache.
    edit(&repo.join("index.html"), "hello from", "v2 hello from");
    commit_all(&repo, "v2");
    push(&d, &repo, "legacy").ok();
    let cache_meta = std::fs::metadata(&cache).expect("cache");
    assert_eq!((cache_meta.uid(), cache_meta.mode() & 0o777), (uid, 0o700));
    assert_eq!(app_uids(&d, "legacy"), vec![uid]);
}
