//! The admin commands, end to end over real ssh, against deployed fixture
//! apps: each test checks what a user would see change.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Push fixture `name` as `app`; returns the repo.
fn deploy(d: &TestDaemon, name: &str, app: &str) -> PathBuf {
    let repo = fixture_repo(d, name, app);
    d.git(&d.admin, &repo, &["push", &d.remote(app), "main"])
        .ok();
    repo
}

fn json(out: &Out) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:#?}"))
}

#[test]
fn config_set_releases_and_the_app_serves_the_new_value() {
    let d = TestDaemon::start();
    deploy(&d, "python-app", "py");
    let (_, body) = d.curl(&host("py"), "/");
    assert!(!body.contains("hola mundo"), "{body}");

    let out = d.ssh(&d.admin, "config:set py 'GREETING=hola mundo'").ok();
    assert!(out.stdout.contains("released v2"), "{out:#?}");
    let (code, body) = d.curl(&host("py"), "/");
    assert_eq!(code, 200);
    assert!(body.contains("hola mundo"), "{body}");
    let rel = json(&d.ssh(&d.admin, "releases py --json").ok());
    assert_eq!(rel[0]["description"], "Set GREETING");
    assert_eq!(rel[0]["status"], "live");

    // Values are masked unless asked for.
    let shown = d.ssh(&d.admin, "config py").ok();
    assert!(!shown.stdout.contains("hola"), "{shown:#?}");
    assert!(shown.stdout.contains("GREETING=********"));
    let revealed = d.ssh(&d.admin, "config py --reveal").ok();
    assert!(revealed.stdout.contains("GREETING=hola mundo"));

    // --no-restart only stores.
    let out = d
        .ssh(&d.admin, "config:set py GREETING=later --no-restart")
        .ok();
    assert!(out.stdout.contains("next release"), "{out:#?}");
    assert!(d.curl(&host("py"), "/").1.contains("hola mundo"));
    assert_eq!(
        d.ssh(&d.admin, "config:get py GREETING").ok().stdout,
        "later\n"
    );

    // Unset releases again, and the value is gone from the app.
    d.ssh(&d.admin, "config:unset py GREETING").ok();
    let (_, body) = d.curl(&host("py"), "/");
    assert!(!body.contains("later") && !body.contains("hola"), "{body}");
}

#[test]
fn config_round_trips_hostile_values_and_refuses_bad_names() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create vault").ok();
    let big: String = (0..30_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let values: Vec<(&str, String)> = vec![
        ("SUBST", "$(id)".into()),
        ("TICKS", "`id`".into()),
        ("META", "a;b|c&d".into()),
        ("LINES", "line one\nline two\n".into()),
        ("QUOTES", "it's \"quoted\"".into()),
        ("BIG", big.clone()),
    ];
    for (k, v) in &values {
        let cmd = shell_words::join(["config:set", "vault", &format!("{k}={v}")]);
        d.ssh(&d.admin, &cmd).ok();
    }
    let all = json(&d.ssh(&d.admin, "config vault --json --reveal").ok());
    for (k, v) in &values {
        assert_eq!(all[k].as_str(), Some(v.as_str()), "{k} changed");
    }
    let got = json(&d.ssh(&d.admin, "config:get vault LINES --json").ok());
    assert_eq!(got, "line one\nline two\n");

    // Binary-safe paths: stdin and base64.
    d.ssh_stdin(
        &d.admin,
        "config:set vault --stdin PEM",
        b"-----BEGIN X-----\n\tabc\n",
    )
    .ok();
    d.ssh(&d.admin, "config:set vault --encoded B64=aGVsbG8gd29ybGQ=")
        .ok();
    let all = json(&d.ssh(&d.admin, "config vault --json --reveal").ok());
    assert_eq!(all["PEM"], "-----BEGIN X-----\n\tabc\n");
    assert_eq!(all["B64"], "hello world");

    // Bad names: a clear error each, and nothing stored changes.
    let before = d.ssh(&d.admin, "config vault --json --reveal").ok().stdout;
    for (arg, why) in [
        ("1A=x", "invalid config var name \"1A\""),
        ("A-B=x", "invalid config var name \"A-B\""),
        ("PORT=1", "PORT is set by Cygni"),
        ("=x", "invalid config var name \"\""),
        ("CYGNI_X=1", "reserved"),
    ] {
        let out = d
            .ssh(&d.admin, &format!("config:set vault OK=1 {arg}"))
            .fails_with(why);
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    }
    // A value never shows up in an error.
    d.ssh(&d.admin, "config:set vault --encoded 'K=not base64!'")
        .fails_with("not base64");
    let after = d.ssh(&d.admin, "config vault --json --reveal").ok().stdout;
    assert_eq!(before, after, "a refused change altered the config");
}

#[test]
fn domains_route_as_soon_as_added() {
    let d = TestDaemon::start();
    deploy(&d, "procfile-app", "site");
    d.ssh(&d.admin, "apps:create other").ok();
    assert_eq!(d.curl("www.example.com", "/").0, 404);

    d.ssh(&d.admin, "domains:add site WWW.Example.COM.").ok();
    let (code, body) = d.curl("www.example.com", "/");
    assert_eq!(code, 200);
    assert!(body.contains("hello from procfile-app"));
    let list = json(&d.ssh(&d.admin, "domains site --json").ok());
    assert_eq!(list["custom"][0], "www.example.com", "normalized once");

    d.ssh(&d.admin, "domains:add site bücher.example").ok();
    assert!(d
        .ssh(&d.admin, "domains site")
        .ok()
        .stdout
        .contains("xn--bcher-kva.example"));

    d.ssh(&d.admin, "domains:add other www.example.com")
        .fails_with("another app");
    d.ssh(&d.admin, "domains:add site 'bad host'")
        .fails_with("invalid domain");
    d.ssh(&d.admin, "domains:add site 127.0.0.1")
        .fails_with("IP address");
    d.ssh(&d.admin, "domains:add site other.localhost")
        .fails_with("reserved for the app");

    d.ssh(&d.admin, "domains:remove site www.example.com").ok();
    assert_eq!(d.curl("www.example.com", "/").0, 404);
}

#[test]
fn scale_runs_two_web_instances_that_both_serve() {
    let d = TestDaemon::start();
    deploy(&d, "procfile-app", "wide");
    let out = d.ssh(&d.admin, "ps:scale wide web=2").ok();
    assert!(out.stdout.contains("web=2"), "{out:#?}");

    let ps = json(&d.ssh(&d.admin, "ps wide --json").ok());
    let instances = ps["instances"].as_array().unwrap();
    let names: Vec<&str> = instances
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["web.1", "web.2"]);
    for i in instances {
        assert_eq!(i["state"], "running");
        let ep = i["endpoint"].as_str().unwrap();
        let port: u16 = ep.rsplit(':').next().unwrap().parse().unwrap();
        let (code, body) = curl(port, "x", "/");
        assert_eq!(code, 200, "{ep} does not serve");
        assert!(body.contains("hello from procfile-app"));
    }
    let text = d.ssh(&d.admin, "ps wide").ok();
    assert!(text.stdout.contains("web.2") && text.stdout.contains("formation: web=2"));

    // The scale survives a new release.
    d.ssh(&d.admin, "config:set wide A=1").ok();
    let ps = json(&d.ssh(&d.admin, "ps wide --json").ok());
    assert_eq!(ps["instances"].as_array().unwrap().len(), 2);

    d.ssh(&d.admin, "ps:scale wide web=1").ok();
    let ps = json(&d.ssh(&d.admin, "ps wide --json").ok());
    assert_eq!(ps["instances"].as_array().unwrap().len(), 1);
    d.ssh(&d.admin, "ps:scale wide worker=1")
        .fails_with("no process type worker");
    d.ssh(&d.admin, "ps:scale wide web=1000")
        .fails_with("from 0 to 100");
}

#[test]
fn rollback_serves_the_old_content_again() {
    let d = TestDaemon::start();
    let repo = deploy(&d, "procfile-app", "undo");
    let page = repo.join("index.html");
    let text = std::fs::read_to_string(&page).unwrap();
    std::fs::write(
        &page,
        text.replace("hello from procfile-app", "second version"),
    )
    .unwrap();
    commit_all(&repo, "v2");
    d.git(&d.admin, &repo, &["push", &d.remote("undo"), "main"])
        .ok();
    assert!(d.curl(&host("undo"), "/").1.contains("second version"));

    let out = d.ssh(&d.admin, "rollback undo").ok();
    assert!(out.stdout.contains("released v3"), "{out:#?}");
    assert!(
        !out.stderr.contains("Building"),
        "a rollback must not build"
    );
    let (code, body) = d.curl(&host("undo"), "/");
    assert_eq!(code, 200);
    assert!(body.contains("hello from procfile-app"), "{body}");
    let rel = d.ssh(&d.admin, "releases undo").ok().stdout;
    assert!(
        rel.contains("* v3") && rel.contains("Rollback to v1"),
        "{rel}"
    );

    d.ssh(&d.admin, "rollback undo v2").ok();
    assert!(d.curl(&host("undo"), "/").1.contains("second version"));
    d.ssh(&d.admin, "rollback undo v99")
        .fails_with("no release v99");
}

#[test]
fn destroy_turns_the_host_into_a_404_and_removes_everything() {
    let d = TestDaemon::start();
    deploy(&d, "procfile-app", "gone");
    d.ssh(&d.admin, "config:set gone A=1").ok();
    d.ssh(&d.admin, "domains:add gone gone.example.com").ok();
    assert_eq!(d.curl(&host("gone"), "/").0, 200);

    d.ssh(&d.admin, "apps:destroy gone --confirm gone").ok();
    assert_eq!(d.curl(&host("gone"), "/").0, 404);
    assert_eq!(d.curl("gone.example.com", "/").0, 404);
    for dir in ["repos/gone.git", "slugs/gone", "cache/gone", "logs/gone"] {
        assert!(!d.data_dir.join(dir).exists(), "{dir} survived");
    }
    // The name is free again, with nothing left over.
    d.ssh(&d.admin, "apps:create gone").ok();
    let cfg = json(&d.ssh(&d.admin, "config gone --json").ok());
    assert_eq!(cfg, serde_json::json!({}));
    assert!(d
        .ssh(&d.admin, "releases gone")
        .ok()
        .stdout
        .contains("no releases"));
}

#[test]
fn run_returns_output_and_exit_code() {
    let d = TestDaemon::start();
    deploy(&d, "procfile-app", "oneoff");
    d.ssh(&d.admin, "config:set oneoff GREETING=hey").ok();
    let out = d.ssh(
        &d.admin,
        "run oneoff -- sh -c 'echo \"$GREETING from $(pwd)\"; exit 3'",
    );
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(out.stdout.starts_with("hey from "), "{out:#?}");
    assert!(
        out.stdout.contains("slugs/oneoff"),
        "runs in the release: {out:#?}"
    );
    let ok = d.ssh(&d.admin, "run oneoff ls index.html").ok();
    assert_eq!(ok.stdout, "index.html\n");
    d.ssh(&d.admin, "run oneoff -- no-such-program")
        .fails_with("no-such-program: command not found");

    // stdin reaches the command.
    let piped = d
        .ssh_stdin(&d.admin, "run oneoff -- cat", b"from stdin\n")
        .ok();
    assert_eq!(piped.stdout, "from stdin\n");

    // `ssh -t` gives it a terminal.
    let out = d
        .ssh_command(&d.admin, &["-tt"])
        .arg("run oneoff -- sh -c 'tty; echo \"TERM=$TERM\"'")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("/dev/pts/"), "no pty: {stdout:?}");
    assert!(!stdout.contains("TERM=\r"), "TERM is set: {stdout:?}");
    let plain = d.ssh(&d.admin, "run oneoff -- tty");
    assert!(plain.stdout.contains("not a tty"), "{plain:#?}");
}

#[test]
fn logs_show_app_output_and_follow_new_lines() {
    let d = TestDaemon::start();
    deploy(&d, "procfile-app", "chatty");
    d.curl(&host("chatty"), "/first-request");
    let out = wait_for("the request in the log", Duration::from_secs(10), || {
        let o = d.ssh(&d.admin, "logs chatty -n 50");
        o.stdout.contains("first-request").then_some(o)
    });
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("first-request"))
        .unwrap();
    assert!(line.contains(" web.1: "), "instance name: {line}");
    assert!(line.starts_with("20"), "timestamp: {line}");
    let only_web = d.ssh(&d.admin, "logs chatty -p web").ok();
    assert!(only_web.stdout.contains("first-request"));

    // -f follows until the client disconnects.
    let mut child = d
        .ssh_command(&d.admin, &[])
        .arg("logs chatty -n 0 -f")
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                seen.lock().unwrap().push_str(&line);
                seen.lock().unwrap().push('\n');
            }
        })
    };
    wait_for("a followed line", Duration::from_secs(15), || {
        d.curl(&host("chatty"), "/followed-request");
        seen.lock()
            .unwrap()
            .contains("followed-request")
            .then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    assert!(
        !seen.lock().unwrap().contains("first-request"),
        "-n 0 shows no history"
    );
}

#[test]
fn restart_stop_and_start() {
    let d = TestDaemon::start();
    deploy(&d, "procfile-app", "cycle");
    let before = json(&d.ssh(&d.admin, "ps cycle --json").ok());
    let ep_before = before["instances"][0]["endpoint"].clone();

    // A restart keeps answering throughout.
    let traffic = Traffic::start(
        d.http_port,
        &host("cycle"),
        "hello from procfile-app",
        "(no new content in a restart)",
        1,
    );
    let out = d.ssh(&d.admin, "ps:restart cycle").ok();
    let report = traffic.finish();
    assert!(out.stdout.contains("restarted 1"), "{out:#?}");
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.old > 0, "no request was made: {report:?}");
    let after = json(&d.ssh(&d.admin, "ps cycle --json").ok());
    assert_ne!(
        after["instances"][0]["endpoint"], ep_before,
        "a new process"
    );

    d.ssh(&d.admin, "ps:stop cycle").ok();
    assert_eq!(d.curl(&host("cycle"), "/").0, 503);
    assert!(d.ssh(&d.admin, "ps cycle").ok().stdout.contains("stopped"));
    d.ssh(&d.admin, "ps:start cycle").ok();
    assert_eq!(d.curl(&host("cycle"), "/").0, 200);
}

#[test]
fn status_shows_the_host_and_every_app() {
    let d = TestDaemon::start();
    deploy(&d, "procfile-app", "alive");
    d.ssh(&d.admin, "apps:create idle").ok();
    let st = json(&d.ssh(&d.admin, "status --json").ok());
    assert!(st["host"]["cpus"].as_u64().unwrap() >= 1);
    assert!(st["host"]["memory_total_bytes"].as_u64().unwrap() > 0);
    assert!(st["host"]["disk_total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(st["host"]["version"], env!("CARGO_PKG_VERSION"));
    let apps = st["apps"].as_array().unwrap();
    let state = |n: &str| {
        apps.iter()
            .find(|a| a["name"] == n)
            .map(|a| a["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state("alive").as_deref(), Some("running"));
    assert_eq!(state("idle").as_deref(), Some("not deployed"));
    let text = d.ssh(&d.admin, "status").ok().stdout;
    assert!(text.contains("cpu:") && text.contains("alive"), "{text}");

    let info = json(&d.ssh(&d.admin, "apps:info alive --json").ok());
    assert_eq!(info["live_release"], 1);
    assert_eq!(info["runtime"], "local");
    assert_eq!(info["builder"], "buildpack procfile");
    assert_eq!(info["formation"]["web"], 1);
}

#[test]
fn help_lists_every_command() {
    let d = TestDaemon::start();
    let help = d.ssh(&d.admin, "help").ok().stdout;
    for cmd in [
        "apps",
        "apps:create",
        "apps:destroy",
        "apps:info",
        "config",
        "config:get",
        "config:set",
        "config:unset",
        "domains",
        "domains:add",
        "domains:remove",
        "ps",
        "ps:scale",
        "ps:restart",
        "ps:stop",
        "ps:start",
        "logs",
        "releases",
        "rollback",
        "run",
        "keys",
        "keys:add",
        "keys:remove",
        "keys:grant",
        "status",
        "help",
        "version",
    ] {
        assert!(
            help.lines()
                .any(|l| l.split_whitespace().next() == Some(cmd)),
            "{cmd} is not listed:\n{help}"
        );
    }
    let usage = d.ssh(&d.admin, "help config:set").ok().stdout;
    assert!(
        usage.contains("--no-restart") && usage.contains("KEY=VALUE"),
        "{usage}"
    );
}

/// A deployer without a grant learns nothing about an app: every app
/// command answers exactly as for an app that does not exist.
#[test]
fn ungranted_deployer_gets_app_not_found_everywhere() {
    let d = TestDaemon::start();
    deploy(&d, "procfile-app", "private");
    let deployer = d.add_key("ci", "deployer");
    for cmd in [
        "apps:info private",
        "config private",
        "config:get private A",
        "config:set private A=1",
        "config:unset private A",
        "domains private",
        "domains:add private x.example.com",
        "domains:remove private x.example.com",
        "ps private",
        "ps:scale private web=2",
        "ps:restart private",
        "ps:stop private",
        "ps:start private",
        "logs private",
        "logs private --build v1",
        "releases private",
        "rollback private",
        "run private -- true",
    ] {
        let out = d.ssh(&deployer, cmd);
        assert_ne!(out.code, 0, "{cmd}: {out:#?}");
        assert_eq!(out.stderr.trim(), "error: app not found: private", "{cmd}");
    }
    // Nothing changed for the app.
    assert_eq!(d.curl(&host("private"), "/").0, 200);
    let ps = json(&d.ssh(&d.admin, "ps private --json").ok());
    assert_eq!(ps["instances"].as_array().unwrap().len(), 1);
    assert_eq!(
        d.ssh(&d.admin, "releases private --json")
            .ok()
            .stdout
            .matches("\"version\"")
            .count(),
        1
    );
}

/// A russh client that accepts any host key: the test pins nothing.
struct TrustingClient;

impl russh::client::Handler for TrustingClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// `run` under a pty follows the client's terminal size: the size asked
/// for at the start, then a window change while the command runs. (OpenSSH
/// sends window changes only from a real terminal, so a russh client plays
/// the part here, over the same protocol.)
#[test]
fn run_pty_follows_window_changes() {
    let d = TestDaemon::start();
    deploy(&d, "procfile-app", "sized");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let output = rt.block_on(async {
        let key = russh::keys::load_secret_key(&d.admin.private, None).unwrap();
        let config = std::sync::Arc::new(russh::client::Config::default());
        let mut session = russh::client::connect(config, ("127.0.0.1", d.ssh_port), TrustingClient)
            .await
            .unwrap();
        let auth = session
            .authenticate_publickey(
                "cygni",
                russh::keys::PrivateKeyWithHashAlg::new(std::sync::Arc::new(key), None),
            )
            .await
            .unwrap();
        assert!(auth.success());
        let mut channel = session.channel_open_session().await.unwrap();
        channel
            .request_pty(true, "xterm", 80, 24, 0, 0, &[])
            .await
            .unwrap();
        channel
            .exec(
                true,
                "run sized -- sh -c 'stty size; echo ready; read line; stty size'",
            )
            .await
            .unwrap();
        let mut out = String::new();
        let mut resized = false;
        let mut status = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, channel.wait()).await {
            match msg {
                russh::ChannelMsg::Data { data } => {
                    out.push_str(&String::from_utf8_lossy(&data));
                    if !resized && out.contains("ready") {
                        resized = true;
                        channel.window_change(100, 40, 0, 0).await.unwrap();
                        // Let the resize land before the command reads on.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        channel.data(&b"go\n"[..]).await.unwrap();
                    }
                }
                russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                russh::ChannelMsg::Eof | russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
        assert_eq!(status, Some(0), "{out}");
        out
    });
    let sizes: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.split_whitespace().count() == 2 && l.chars().all(|c| c.is_ascii_digit() || c == ' ')
        })
        .collect();
    assert_eq!(sizes, vec!["24 80", "40 100"], "{output:?}");
}
