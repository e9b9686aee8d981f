//! The converger as a user meets it: routes go only to instances that
//! passed their release's own health check, whatever else happens at the
//! same time, and every command's access rule is the service layer's.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A daemon whose reconcile timer fires every second, so a test sees many
/// ticks while an instance boots.
fn daemon() -> TestDaemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cygni.toml");
    std::fs::write(&cfg, "reconcile_interval_secs = 1\n").expect("config");
    let d = TestDaemon::start_with(&["--config", cfg.to_str().expect("utf-8 path")]);
    // The config file is read at start only.
    drop(dir);
    d
}

/// A world-writable folder the app (an unprivileged user when the tests
/// run as root) writes its pids into and reads its flags from.
fn flags_dir(d: &TestDaemon) -> std::path::PathBuf {
    let flags = d.dir.path().join("flags");
    std::fs::create_dir_all(&flags).expect("flags dir");
    set_mode(&flags, 0o777);
    flags
}

/// Regression: the routes used to list every live-release `web` instance
/// the runtime called "running" (and the local runtime says so as soon as
/// it has spawned the process). A `ps:scale` instance still booting, or an
/// instance restarted after a crash, then got requests from any route
/// update: a concurrent `domains:add`, the reconcile timer. Those requests
/// failed. On this app, "booting" answers are 503 and count as failures.
#[test]
fn routing_race_regression_booting_instances_get_no_requests() {
    let d = daemon();
    let flags = flags_dir(&d);
    d.ssh(&d.admin, "apps:create race").ok();
    d.ssh(
        &d.admin,
        &format!(
            "config:set race --no-restart SLOW_FLAG={} PID_DIR={} SLOW_SECS=6",
            flags.join("slow").display(),
            flags.display()
        ),
    )
    .ok();
    let repo = fixture_repo(&d, "slow-boot-app", "race");
    push(&d, &repo, "race").ok();
    let (code, body) = d.curl(&host("race"), "/");
    assert_eq!((code, body.trim()), (200, "ready web.1"));

    let traffic = Traffic::start(d.http_port, &host("race"), "ready web.1", "ready web.2", 2);

    // From now on every new process boots slowly.
    std::fs::write(flags.join("slow"), "").expect("flag");
    let started = Instant::now();
    let scale = {
        let (port, key, dir) = (d.ssh_port, d.admin.clone(), d.dir.path().to_owned());
        std::thread::spawn(move || {
            let mut cmd = std::process::Command::new("ssh");
            cmd.args(ssh_opts())
                .args(["-i", key.private.to_str().expect("utf-8")])
                .args([
                    "-p",
                    &port.to_string(),
                    "cygni@127.0.0.1",
                    "ps:scale race web=2",
                ])
                .current_dir(dir);
            cmd.output().expect("ssh")
        })
    };
    // While web.2 boots: an unrelated route update, and several timer ticks.
    std::thread::sleep(Duration::from_millis(800));
    d.ssh(&d.admin, "domains:add race race.example.org").ok();
    std::thread::sleep(Duration::from_secs(3));
    let out = scale.join().expect("scale thread");
    assert!(out.status.success(), "{out:?}");
    // ps:scale waited for the release's HTTP check, not just for TCP.
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "ps:scale returned after {:?}: it did not wait for GET /health",
        started.elapsed()
    );
    assert!(
        traffic.wait_new(5, Duration::from_secs(10)),
        "web.2 is never served after it passed its check"
    );

    // A crash: web.1 exits on its own and the runtime restarts it; the new
    // process boots slowly again and must not be routed until it passes.
    std::fs::write(flags.join("crash-web.1"), "").expect("crash marker");
    wait_for("web.1 to be restarted", Duration::from_secs(20), || {
        d.ssh(&d.admin, "ps race --json")
            .stdout
            .contains("\"restarts\": 1")
            .then_some(())
    });
    // Timer ticks and a route update while it boots.
    std::thread::sleep(Duration::from_secs(2));
    d.ssh(&d.admin, "domains:add race race2.example.org").ok();
    std::thread::sleep(Duration::from_secs(3));
    // Once it passes its check, it is routed again.
    wait_for("web.1 back in the routes", Duration::from_secs(20), || {
        let (code, body) = d.curl(&host("race"), "/");
        (code == 200 && body.contains("ready web.1")).then_some(())
    });
    let report = traffic.finish();
    let (booting, other): (Vec<&String>, Vec<&String>) =
        report.failures.iter().partition(|f| f.contains("booting"));
    assert!(
        booting.is_empty(),
        "{} requests reached an instance that had not passed its check: {:?}",
        booting.len(),
        &booting[..booting.len().min(5)]
    );
    // Requests the crashed process had already accepted die with it (a
    // crash is a crash: nginx answers 502 for those too). Nothing else
    // may fail.
    assert!(
        other.len() <= 3 && other.iter().all(|f| f.starts_with("502")),
        "{other:?}"
    );
    assert!(report.old > 0 && report.new > 0, "{report:?}");
}

/// `ps:restart` checks each replacement with the release's own HTTP path:
/// a replacement that listens but is not ready is not routed, so no
/// request sees "booting".
#[test]
fn restart_uses_the_release_http_health_check() {
    let d = daemon();
    let flags = flags_dir(&d);
    d.ssh(&d.admin, "apps:create rs").ok();
    d.ssh(
        &d.admin,
        &format!(
            "config:set rs --no-restart SLOW_FLAG={} SLOW_SECS=4",
            flags.join("slow").display()
        ),
    )
    .ok();
    let repo = fixture_repo(&d, "slow-boot-app", "rs");
    push(&d, &repo, "rs").ok();
    let traffic = Traffic::start(d.http_port, &host("rs"), "ready web.1", "ready web.2", 2);
    std::fs::write(flags.join("slow"), "").expect("flag");
    let started = Instant::now();
    let out = d.ssh(&d.admin, "ps:restart rs").ok();
    assert!(out.stdout.contains("restarted 1"), "{out:#?}");
    // The surge and the replacement each waited for GET /health.
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "restart took {:?}",
        started.elapsed()
    );
    let report = traffic.finish();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.old > 0, "{report:?}");
}

/// Every command that names an app, taken from the command parser itself,
/// answers "app not found" to a deployer without a grant, and changes
/// nothing.
#[test]
fn a_deployer_without_a_grant_gets_app_not_found_from_every_command() {
    let d = TestDaemon::start();
    let repo = fixture_repo(&d, "procfile-app", "secret");
    push(&d, &repo, "secret").ok();
    d.ssh(&d.admin, "config:set secret GREETING=kept").ok();
    let before_releases = d.ssh(&d.admin, "releases secret --json").ok().stdout;
    let stranger = d.add_key("stranger", "deployer");

    let lines = cygni::ssh::commands::lines_naming_an_app("secret");
    assert!(lines.len() >= 20, "too few commands: {lines:?}");
    for line in &lines {
        let command = line.join(" ");
        let out = d.ssh(&stranger, &command);
        assert_ne!(out.code, 0, "{command}: {out:#?}");
        // Creating is the one command about an app that does not exist
        // yet: it is for admins, whatever the name.
        let expected = if line[0] == "apps:create" {
            "error: only admins can create apps"
        } else {
            "error: app not found: secret"
        };
        assert_eq!(out.stderr.trim(), expected, "{command}");
    }
    // Nothing changed.
    assert_eq!(
        d.ssh(&d.admin, "releases secret --json").ok().stdout,
        before_releases
    );
    let v = d.ssh(&d.admin, "config:get secret GREETING").ok();
    assert_eq!(v.stdout, "kept\n");
    let domains = d.ssh(&d.admin, "domains secret").ok();
    assert!(!domains.stdout.contains("example.org"), "{domains:#?}");
    let (code, body) = d.curl(&host("secret"), "/");
    assert_eq!(code, 200, "{body}");
}

/// The three roles over SSH, each against reads, secrets and changes of a
/// granted app: admins do anything, developers (`deployer`) manage, viewers
/// read with config values masked and change nothing.
#[test]
fn roles_admin_developer_viewer_over_ssh() {
    let d = TestDaemon::start();
    let repo = fixture_repo(&d, "procfile-app", "shared");
    push(&d, &repo, "shared").ok();
    d.ssh(&d.admin, "config:set shared TOKEN=s3cret").ok();
    let dev = d.add_key("dev", "developer");
    let viewer = d.add_key("viewer", "viewer");
    for k in ["dev", "viewer"] {
        d.ssh(&d.admin, &format!("keys:grant {k} shared")).ok();
    }
    let keys = d.ssh(&d.admin, "keys").ok().stdout;
    assert!(
        keys.contains("deployer") && keys.contains("viewer"),
        "{keys}"
    );

    // (command, developer may, viewer may)
    let table = [
        ("ps shared", true, true),
        ("releases shared", true, true),
        ("logs shared -n 5", true, true),
        ("apps:info shared", true, true),
        ("domains shared", true, true),
        ("config shared", true, true),
        ("config shared --reveal", true, false),
        ("config:get shared TOKEN", true, false),
        ("config:set shared --no-restart OTHER=1", true, false),
        ("domains:add shared roles.example.org", true, false),
        ("ps:scale shared web=1", true, false),
        ("apps:destroy shared --confirm shared", false, false),
    ];
    for (command, dev_may, viewer_may) in table {
        for (who, key, may) in [
            ("developer", &dev, dev_may),
            ("viewer", &viewer, viewer_may),
        ] {
            let out = d.ssh(key, command);
            if may {
                assert_eq!(out.code, 0, "{who}: {command}: {out:#?}");
            } else {
                assert_ne!(out.code, 0, "{who} may not: {command}: {out:#?}");
                assert!(
                    out.stderr.starts_with("error: ")
                        && out.stderr.trim().lines().count() == 1
                        && !out.stderr.contains("app not found"),
                    "{who}: {command}: {out:#?}"
                );
            }
        }
    }
    // A viewer sees masked values only.
    let masked = d.ssh(&viewer, "config shared --json").ok().stdout;
    assert!(
        !masked.contains("s3cret") && masked.contains("TOKEN"),
        "{masked}"
    );
    // A viewer cannot push; the branch stays where it was.
    let before = d
        .git(&d.admin, &repo, &["ls-remote", &d.remote("shared")])
        .ok()
        .stdout;
    edit(&repo.join("index.html"), "hello", "viewer was here");
    commit_all(&repo, "from a viewer");
    let out = d.git(&viewer, &repo, &["push", &d.remote("shared"), "main"]);
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr.contains("viewers can only read shared"),
        "{out:#?}"
    );
    let after = d
        .git(&d.admin, &repo, &["ls-remote", &d.remote("shared")])
        .ok()
        .stdout;
    assert_eq!(before, after);
    // The app is untouched.
    let (code, body) = d.curl(&host("shared"), "/");
    assert_eq!(code, 200);
    assert!(!body.contains("viewer was here"));
}
