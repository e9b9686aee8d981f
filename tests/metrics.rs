//! Metrics, health and logs, end to end against the real daemon: scrape
//! `/metrics` and read it with Python's `prometheus_client` text parser
//! (the reference implementation, installed by .ci/run into
//! target/test-venv), push apps, send requests through the proxy, log in
//! with an unknown key, and read the daemon's JSON log lines.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A Python that has `prometheus_client`, or None (the caller skips).
fn python() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("CYGNI_TEST_PYTHON") {
        candidates.push(p.into());
    }
    candidates.push(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python3"),
    );
    candidates.push("python3".into());
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client.parser"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Reads the exposition on stdin with the reference parser and prints
/// every sample as a JSON line: [name, labels, value, family type].
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps([s.name, s.labels, s.value, family.type]))
"#;

/// One scrape, parsed: sample name + sorted labels → value.
#[derive(Debug)]
struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64, String)>,
}

impl Scrape {
    /// The value of the one sample `name` whose labels include `labels`;
    /// 0 when there is none (a counter not created yet).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v, _)| *v)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, ..)| n == name)
    }

    fn family_type(&self, name: &str) -> Option<&str> {
        self.samples
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(.., t)| t.as_str())
    }
}

/// `curl` the metrics listener: (status, content type, body).
fn get(port: u16, path: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{content_type}",
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", "0 "));
    let (code, kind) = tail.split_once(' ').unwrap_or((tail, ""));
    (code.parse().unwrap_or(0), kind.to_owned(), body.to_owned())
}

fn scrape(d: &TestDaemon, py: &PathBuf) -> Scrape {
    let (code, kind, body) = get(d.metrics_port, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    let mut child = Command::new(py)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write exposition");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the reference parser refused the exposition: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("parser's JSON line"))
        .collect();
    Scrape { samples }
}

fn python_or_skip() -> Option<PathBuf> {
    let py = python();
    if py.is_none() {
        skip_or_fail(
            "no python3 with prometheus_client (run .ci/run, or: python3 -m venv target/test-venv && target/test-venv/bin/pip install prometheus_client)",
        );
    }
    py
}

#[test]
fn requests_deploys_and_refused_logins_are_counted() {
    let Some(py) = python_or_skip() else { return };
    let d = TestDaemon::start();
    assert_ne!(d.metrics_port, 0, "the metrics listener is on by default");
    let before = scrape(&d, &py);
    assert_eq!(
        before.family_type("cygni_proxy_request_duration_seconds_count"),
        Some("histogram")
    );
    assert!(before.value("cygni_host_memory_total_bytes", &[]) > 0.0);
    assert!(before.value("cygni_host_data_disk_total_bytes", &[]) > 0.0);
    assert!(before.value("cygni_process_resident_memory_bytes", &[]) > 0.0);

    // A push: one live deploy, with its durations.
    let app = "counted";
    let repo = fixture_repo(&d, "procfile-app", app);
    push(&d, &repo, app).ok();
    let live = [("app", app), ("result", "live")];
    let after_push = scrape(&d, &py);
    assert_eq!(after_push.value("cygni_deploys_total", &live), 1.0);
    assert_eq!(
        after_push.value("cygni_deploy_duration_seconds_count", &[("app", app)]),
        1.0
    );
    assert!(after_push.value("cygni_deploy_duration_seconds_sum", &[("app", app)]) > 0.0);
    assert_eq!(
        after_push.value("cygni_build_duration_seconds_count", &[("app", app)]),
        1.0
    );
    assert_eq!(
        after_push.value("cygni_instances", &[("app", app), ("state", "running")]),
        1.0
    );

    // Requests through the proxy move the app's counters and histogram.
    let ok = [("app", app), ("class", "2xx"), ("protocol", "http")];
    let n0 = after_push.value("cygni_proxy_requests_total", &ok);
    let c0 = after_push.value(
        "cygni_proxy_request_duration_seconds_count",
        &[("app", app)],
    );
    for _ in 0..5 {
        let (code, body) = d.curl(&host(app), "/");
        assert_eq!(code, 200, "{body}");
    }
    let (code, _) = d.curl(&host(app), "/nothing-here");
    assert_eq!(code, 404);
    let (code, _) = d.curl("nobody.localhost", "/");
    assert_eq!(code, 404);
    let s = scrape(&d, &py);
    assert_eq!(s.value("cygni_proxy_requests_total", &ok) - n0, 5.0);
    assert_eq!(
        s.value(
            "cygni_proxy_requests_total",
            &[("app", app), ("class", "4xx"), ("protocol", "http")]
        ),
        1.0,
        "the app's own 404"
    );
    assert_eq!(
        s.value(
            "cygni_proxy_requests_total",
            &[("app", "-"), ("class", "4xx"), ("protocol", "http")]
        ),
        1.0,
        "a Host no app serves"
    );
    assert_eq!(
        s.value(
            "cygni_proxy_request_duration_seconds_count",
            &[("app", app)]
        ) - c0,
        6.0
    );
    assert_eq!(
        s.value(
            "cygni_proxy_request_duration_seconds_bucket",
            &[("app", app), ("le", "+Inf")]
        ),
        s.value(
            "cygni_proxy_request_duration_seconds_count",
            &[("app", app)]
        )
    );
    assert!(s.value("cygni_proxy_request_duration_seconds_sum", &[("app", app)]) > 0.0);

    // An idle client connection is open until it goes.
    let open = [("listener", "http")];
    let idle = std::net::TcpStream::connect(("127.0.0.1", d.http_port)).expect("connect");
    wait_for("the open connection", Duration::from_secs(10), || {
        (scrape(&d, &py).value("cygni_proxy_open_connections", &open) >= 1.0).then_some(())
    });
    drop(idle);
    wait_for("the closed connection", Duration::from_secs(10), || {
        (scrape(&d, &py).value("cygni_proxy_open_connections", &open) == 0.0).then_some(())
    });

    // A failing build: one failed deploy; the live count stays.
    let bad = fixture_repo(&d, "fail-build", "bad");
    let out = push(&d, &bad, "bad");
    assert_ne!(out.code, 0, "{out:#?}");
    let s = scrape(&d, &py);
    assert_eq!(
        s.value(
            "cygni_deploys_total",
            &[("app", "bad"), ("result", "failed")]
        ),
        1.0
    );
    assert_eq!(s.value("cygni_deploys_total", &live), 1.0);

    // A key nobody added is refused, and counted; a good login is too.
    let refused = [("reason", "unknown_key")];
    let r0 = s.value("cygni_ssh_refused_logins_total", &refused);
    let l0 = s.value("cygni_ssh_logins_total", &[]);
    let stranger = d.new_key("stranger");
    let out = d.ssh(&stranger, "apps");
    assert_ne!(out.code, 0, "{out:#?}");
    d.ssh(&d.admin, "apps").ok();
    let s = scrape(&d, &py);
    assert_eq!(
        s.value("cygni_ssh_refused_logins_total", &refused) - r0,
        1.0
    );
    assert!(s.value("cygni_ssh_logins_total", &[]) > l0);
    assert!(s.has("cygni_ssh_sessions"));
}

/// Passes its TCP health check (accepting for 3 s from the first
/// connection), then closes its listener and stays up: an admitted
/// endpoint that refuses connections.
const CLOSING_APP: &str = r#"import os, socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(16)
s.settimeout(0.1)
first = None
held = []  # the check wants silence, not a close, from a listener
while first is None or time.time() - first < 3:
    try:
        held.append(s.accept()[0])
        first = first or time.time()
    except socket.timeout:
        pass
s.close()
for c in held:
    c.close()
print("listener closed", flush=True)
time.sleep(3600)
"#;

#[test]
fn upstream_connect_errors_are_counted() {
    let Some(py) = python_or_skip() else { return };
    let d = TestDaemon::start();
    let app = "closing";
    let repo = make_repo(
        &d.dir.path().join(app),
        &[
            ("Procfile", "web: python3 closing.py\n"),
            ("closing.py", CLOSING_APP),
        ],
    );
    push(&d, &repo, app).ok();
    wait_for(
        "the app to close its listener",
        Duration::from_secs(20),
        || {
            let out = d.ssh(&d.admin, &format!("logs {app}")).ok();
            out.stdout.contains("listener closed").then_some(())
        },
    );
    let connect = [("app", app), ("kind", "connect")];
    let before = scrape(&d, &py).value("cygni_proxy_upstream_errors_total", &connect);
    for _ in 0..3 {
        let (code, body) = d.curl(&host(app), "/");
        assert_eq!(code, 502, "{body}");
    }
    let s = scrape(&d, &py);
    assert_eq!(
        s.value("cygni_proxy_upstream_errors_total", &connect) - before,
        3.0
    );
    assert_eq!(
        s.value(
            "cygni_proxy_requests_total",
            &[("app", app), ("class", "5xx"), ("protocol", "http")]
        ),
        3.0
    );
    assert_eq!(
        s.value(
            "cygni_proxy_upstream_errors_total",
            &[("app", app), ("kind", "response_timeout")]
        ),
        0.0
    );
}

#[test]
fn health_and_readiness() {
    let d = TestDaemon::start();
    let (code, kind, body) = get(d.metrics_port, "/healthz");
    assert_eq!((code, body.trim()), (200, "ok"), "{kind}");
    let (code, _, body) = get(d.metrics_port, "/readyz");
    assert_eq!(code, 200, "{body}");
    for part in ["sqlite: ok", "listeners: ok", "runtime: ok"] {
        assert!(body.contains(part), "{part} missing: {body}");
    }
    let (code, _, body) = get(d.metrics_port, "/nope");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("/metrics"), "{body}");

    // Another process holds the database's write lock: SQLite does not
    // answer for writes, so the daemon is not ready, and says why.
    let db = d.data_dir.join("cygni.db");
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n",
        ])
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 holds the lock");
    {
        use std::io::BufRead;
        let mut line = String::new();
        let stdout = holder.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "locked");
    }
    let (code, _, body) = get(d.metrics_port, "/readyz");
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("sqlite: failed"), "{body}");
    assert!(body.contains("runtime: ok"), "{body}");
    // Alive all along, and ready again once the lock is gone.
    assert_eq!(get(d.metrics_port, "/healthz").0, 200);
    let body = wait_for("ready again", Duration::from_secs(20), || {
        let (code, _, body) = get(d.metrics_port, "/readyz");
        (code == 200).then_some(body)
    });
    assert!(body.contains("sqlite: ok"), "{body}");
}

#[test]
fn metrics_listen_off_and_bad_values() {
    let d = TestDaemon::start_with(&["--metrics-listen", "off"]);
    assert_eq!(d.metrics_port, 0, "off prints `metrics: off`");
    let out = Command::new(env!("CARGO_BIN_EXE_cygni"))
        .args(["serve", "--metrics-listen", "nowhere", "--data-dir"])
        .arg(d.dir.path().join("other"))
        .output()
        .expect("run cygni");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("metrics_listen"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_cygni"))
        .args(["serve", "--log-format", "yaml", "--data-dir"])
        .arg(d.dir.path().join("other"))
        .output()
        .expect("run cygni");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("log_format") && err.contains("text, json"),
        "{err}"
    );
}

/// The daemon's stderr, one JSON object per line.
fn json_lines(d: &TestDaemon) -> Vec<serde_json::Value> {
    d.log()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

#[test]
fn json_logs_end_every_deploy_in_one_line() {
    let d = TestDaemon::start_with(&["--log-format", "json"]);
    let app = "jsonlog";
    let repo = fixture_repo(&d, "procfile-app", app);
    push(&d, &repo, app).ok();
    replace_with_fixture(&repo, "fail-build");
    commit_all(&repo, "break the build");
    let out = push(&d, &repo, app);
    assert_ne!(out.code, 0, "{out:#?}");

    let lines = json_lines(&d);
    assert!(lines.len() > 3, "{lines:?}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
    let ends: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["app"] == app
                && matches!(l["message"].as_str(), Some("deploy live" | "deploy failed"))
        })
        .collect();
    assert_eq!(ends.len(), 2, "one end line per deploy: {ends:#?}");
    let live = ends[0];
    assert_eq!(live["message"], "deploy live", "{live}");
    assert_eq!(live["release"], 1, "{live}");
    assert!(
        live["duration_s"].as_f64().is_some_and(|s| s > 0.0),
        "{live}"
    );
    let failed = ends[1];
    assert_eq!(failed["message"], "deploy failed", "{failed}");
    assert_eq!(failed["level"], "WARN", "{failed}");
    assert_eq!(failed["release"], 2, "{failed}");
    assert_eq!(failed["stage"], "build", "{failed}");
    assert!(
        failed["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{failed}"
    );
}

/// An app that prints the request id it got, and answers with it.
const ECHO_APP: &str = r#"import http.server, os, sys

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        rid = self.headers.get("X-Request-Id", "none")
        print("handled request_id=" + rid, flush=True)
        body = ("id=" + rid + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn curl_with_id(d: &TestDaemon, app: &str, id: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-H"])
        .arg(format!("Host: {}", host(app)))
        .arg("-H")
        .arg(format!("X-Request-Id: {id}"))
        .arg(format!("http://127.0.0.1:{}/hello?x=1", d.http_port))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn request_ids_link_the_router_line_to_the_app_log() {
    let d = TestDaemon::start();
    let app = "echo";
    let repo = make_repo(
        &d.dir.path().join(app),
        &[
            ("Procfile", "web: python3 echo.py\n"),
            ("echo.py", ECHO_APP),
        ],
    );
    push(&d, &repo, app).ok();

    // Off by default: requests leave no router line.
    let sane = "client-chosen-id-0123456789";
    assert_eq!(curl_with_id(&d, app, sane), format!("id={sane}"));
    let logs = d.ssh(&d.admin, &format!("logs {app} -p router")).ok();
    assert!(logs.stdout.trim().is_empty(), "{logs:#?}");

    d.ssh(&d.admin, &format!("logs:set {app} access-log on"))
        .ok();
    // A sane client id is kept and reaches the app.
    assert_eq!(curl_with_id(&d, app, sane), format!("id={sane}"));
    // One that is too short (or has other characters) is replaced by ours.
    let body = curl_with_id(&d, app, "short");
    let ours = body.strip_prefix("id=").expect("echoed").to_owned();
    assert_ne!(ours, "short");
    assert!(ours.len() >= 20, "{ours}");
    let body = curl_with_id(&d, app, "has spaces and \"quotes\" in it, long enough");
    assert!(!body.contains("quotes"), "{body}");

    let router = wait_for("router lines", Duration::from_secs(10), || {
        let out = d.ssh(&d.admin, &format!("logs {app} -p router")).ok();
        (out.stdout.lines().count() >= 3).then_some(out.stdout)
    });
    let line = router
        .lines()
        .find(|l| l.contains(&format!("request_id={sane}")))
        .unwrap_or_else(|| panic!("no router line with the client's id: {router}"));
    for part in [
        "router: at=info",
        "method=GET",
        "path=\"/hello?x=1\"",
        "host=\"echo.localhost",
        "status=200",
        "protocol=http",
    ] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
    assert!(router.contains(&format!("request_id={ours}")), "{router}");
    // The app's own line carries the same ids.
    let web = d.ssh(&d.admin, &format!("logs {app} -p web")).ok();
    assert!(
        web.stdout.contains(&format!("handled request_id={sane}")),
        "{web:#?}"
    );
    assert!(web.stdout.contains(&format!("handled request_id={ours}")));

    // Off again: no new lines; bad values are one-line errors.
    d.ssh(&d.admin, &format!("logs:set {app} access-log off"))
        .ok();
    curl_with_id(&d, app, sane);
    let after = d.ssh(&d.admin, &format!("logs {app} -p router")).ok();
    assert_eq!(after.stdout.lines().count(), router.lines().count());
    d.ssh(&d.admin, &format!("logs:set {app} access-log maybe"))
        .fails_with("on or off");
    d.ssh(&d.admin, &format!("logs:set {app} colour on"))
        .fails_with("access-log");
    d.ssh(&d.admin, "logs:set nosuchapp access-log on")
        .fails_with("app not found");
}
