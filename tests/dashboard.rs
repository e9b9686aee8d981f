//! The web dashboard against the real daemon: sign-in with a one-time
//! `dashboard:login` link and with a token, the session cookie on pages
//! and on the API, CSRF refusals, viewers, sign-out; then Chromium
//! (playwright-core, tests/browser/dashboard.mjs) on a pushed app: live
//! logs, rollback without a reload, a viewer without buttons.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// One HTTP exchange with curl and a cookie jar: (status, head, body).
struct Web {
    jar: PathBuf,
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

impl Web {
    fn new(dir: &Path, name: &str) -> Web {
        Web {
            jar: dir.join(format!("{name}.cookies")),
        }
    }

    fn call(&self, method: &str, url: &str, data: Option<&str>, headers: &[&str]) -> Reply {
        let mut c = Command::new("curl");
        c.args(["-s", "-m", "60", "-D", "-", "-X", method])
            .arg("-b")
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar);
        for h in headers {
            c.args(["-H", h]);
        }
        if let Some(d) = data {
            c.args(["--data-binary", d]);
        }
        c.arg(url);
        let (status, head, body) = curl_response(c);
        Reply { status, head, body }
    }

    fn get(&self, url: &str) -> Reply {
        self.call("GET", url, None, &[])
    }

    fn form(&self, url: &str, data: &str) -> Reply {
        self.call(
            "POST",
            url,
            Some(data),
            &["Content-Type: application/x-www-form-urlencoded"],
        )
    }
}

/// `value="..."` of the input named `name` in a page.
fn input_value(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').expect("closing quote")].to_owned()
}

fn csrf_meta(html: &str) -> String {
    let at = html
        .find("name=\"csrf-token\" content=\"")
        .unwrap_or_else(|| panic!("no csrf meta in {html}"));
    let rest = &html[at + 27..];
    rest[..rest.find('"').expect("closing quote")].to_owned()
}

/// `dashboard:login` as `key`: the links it prints, one per line.
fn login_links(d: &TestDaemon, key: &Key) -> Vec<String> {
    let out = d.ssh(key, "dashboard:login").ok();
    assert!(out.stderr.contains("within 5 minutes"), "{out:#?}");
    let links: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    assert_eq!(links.len(), 2, "control host and loopback: {out:#?}");
    links
}

fn token(d: &TestDaemon, args: &str) -> String {
    let out = d.ssh(&d.admin, &format!("tokens:create {args}")).ok();
    out.stdout.trim().to_owned()
}

/// Sign in on `base` with a one-time link; returns the session's CSRF token.
fn sign_in_link(web: &Web, link: &str) -> Reply {
    let page = web.get(link);
    assert_eq!(page.status, 200, "{}", page.body);
    let code = link.rsplit('/').next().unwrap();
    let login_csrf = input_value(&page.body, "login_csrf");
    let base = link.split("/login/").next().unwrap();
    web.form(
        &format!("{base}/login"),
        &format!("code={code}&login_csrf={login_csrf}"),
    )
}

fn sign_in_token(web: &Web, base: &str, token: &str) -> Reply {
    let page = web.get(&format!("{base}/login"));
    assert_eq!(page.status, 200);
    let login_csrf = input_value(&page.body, "login_csrf");
    web.form(
        &format!("{base}/login"),
        &format!("token={token}&login_csrf={login_csrf}"),
    )
}

fn vm_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn sign_in_sessions_csrf_and_viewers_over_http() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create shop").ok();
    let base = format!("http://127.0.0.1:{}", d.api_port);
    let dir = d.dir.path();

    // Without a session, pages send the browser to sign in.
    let anon = Web::new(dir, "anon");
    let r = anon.get(&format!("{base}/"));
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), ["/login"]);

    // A one-time link, on the control host through the proxy: it works once.
    let links = login_links(&d, &d.admin);
    assert!(
        links[0].starts_with(&format!("http://cygni.localhost:{}/login/", d.http_port)),
        "{links:?}"
    );
    assert!(links[1].starts_with(&format!("{base}/login/")), "{links:?}");
    let admin = Web::new(dir, "admin");
    let r = sign_in_link(&admin, &links[0]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), ["/"]);
    let cookie = r
        .header("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("cygni_session="))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP gets no Secure: {cookie}"
    );
    let again = sign_in_link(&Web::new(dir, "again"), &links[0]);
    assert_eq!(again.status, 403, "a used code is refused: {}", again.body);
    assert!(
        again.body.contains("already used or expired"),
        "{}",
        again.body
    );
    // The other link of the same code is the same code: used too.
    let other = sign_in_link(&Web::new(dir, "other"), &links[1]);
    assert_eq!(other.status, 403);

    // A sign-in form that this site did not show is refused.
    let code = login_links(&d, &d.admin)[1]
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let forged = Web::new(dir, "forged").form(&format!("{base}/login"), &format!("code={code}"));
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("came from elsewhere"));

    // The session on the control host, and the same cookie on its API.
    let page = admin.call(
        "GET",
        &format!("http://cygni.localhost:{}/", d.http_port),
        None,
        &[],
    );
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("href=\"/apps/shop\""), "{}", page.body);
    assert!(page.header("content-security-policy")[0].contains("script-src 'self'"));
    let csrf = csrf_meta(&page.body);
    let control = format!("http://cygni.localhost:{}", d.http_port);
    let apps = admin.get(&format!("{control}/api/v1/apps"));
    assert_eq!(apps.status, 200, "{}", apps.body);
    assert!(apps.body.contains("\"shop\""));

    // A change without the CSRF token, or with a wrong one, is refused and
    // changes nothing; with it, it goes through.
    let create = |headers: &[&str]| {
        let mut h = vec!["Content-Type: application/json"];
        h.extend_from_slice(headers);
        admin.call(
            "POST",
            &format!("{control}/api/v1/apps"),
            Some(r#"{"name":"other"}"#),
            &h,
        )
    };
    let r = create(&[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("CSRF"), "{}", r.body);
    let wrong = format!("X-CSRF-Token: {}x", &csrf);
    assert_eq!(create(&[&wrong]).status, 403);
    assert!(!d.ssh(&d.admin, "apps").ok().stdout.contains("other"));
    let right = format!("X-CSRF-Token: {csrf}");
    let r = create(&[&right]);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(d.ssh(&d.admin, "apps").ok().stdout.contains("other"));
    let audit = d.ssh(&d.admin, "audit --json").ok().stdout;
    assert!(
        audit.contains("\"source\": \"dashboard\""),
        "the change is audited as the dashboard's: {audit}"
    );

    // A developer key's link: the session has the key's role, and ends
    // when the key is removed.
    let dev_key = d.add_key("dev", "developer");
    d.ssh(&d.admin, "keys:grant dev shop").ok();
    let dev = Web::new(dir, "dev");
    let r = sign_in_link(&dev, &login_links(&d, &dev_key)[1]);
    assert_eq!(r.status, 303, "{}", r.body);
    let page = dev.get(&format!("{base}/apps/shop"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("developer") && page.body.contains("data-config-set"));
    assert_eq!(dev.get(&format!("{base}/apps/other")).status, 404);
    d.ssh(&d.admin, "keys:remove dev").ok();
    assert_eq!(dev.get(&format!("{base}/apps/shop")).status, 303);

    // A viewer token: sees the app, gets no buttons, and is refused anyway.
    let viewer_token = token(&d, "watcher --role viewer --app shop");
    let viewer = Web::new(dir, "viewer");
    let bad = sign_in_token(&viewer, &base, "cyg_nope");
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("not valid"), "{}", bad.body);
    let r = sign_in_token(&viewer, &base, &viewer_token);
    assert_eq!(r.status, 303, "{}", r.body);
    let page = viewer.get(&format!("{base}/apps/shop"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<h1>shop</h1>"));
    assert!(page.body.contains("viewer"));
    assert!(!page.body.contains("data-rollback") && !page.body.contains("data-config-set"));
    let vcsrf = format!("X-CSRF-Token: {}", csrf_meta(&page.body));
    let r = viewer.call(
        "PATCH",
        &format!("{base}/api/v1/apps/shop/config-vars"),
        Some(r#"{"GREETING":"hi"}"#),
        &["Content-Type: application/json", &vcsrf],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("viewers can only read"), "{}", r.body);
    assert!(!d
        .ssh(&d.admin, "config shop")
        .ok()
        .stdout
        .contains("GREETING"));
    // An app it was not granted is not found, as over SSH.
    assert_eq!(viewer.get(&format!("{base}/apps/other")).status, 404);
    // Revoking the token ends its sessions at once.
    d.ssh(&d.admin, "tokens:revoke watcher").ok();
    assert_eq!(viewer.get(&format!("{base}/apps/shop")).status, 303);

    // Sign-out needs the CSRF token too; then the session is gone.
    let r = admin.form(&format!("{control}/logout"), "csrf=wrong");
    assert_eq!(r.status, 403);
    assert_eq!(admin.get(&format!("{control}/")).status, 200);
    let r = admin.form(&format!("{control}/logout"), &format!("csrf={csrf}"));
    assert_eq!(r.status, 303);
    assert_eq!(admin.get(&format!("{control}/")).status, 303);
    assert_eq!(admin.get(&format!("{control}/api/v1/apps")).status, 401);
    // State changes only by POST.
    assert_eq!(
        admin
            .call("GET", &format!("{control}/logout"), None, &[])
            .status,
        405
    );
}

/// The daemon's idle memory with no page served, then after page loads:
/// serving the dashboard keeps nothing per request.
#[test]
fn idle_memory_before_and_after_dashboard_page_loads() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create shop").ok();
    let t = token(&d, "ops --role admin");
    let pid = d.pid().expect("daemon pid");
    let settle = || std::thread::sleep(Duration::from_secs(3));
    settle();
    let before = vm_rss_kb(pid);

    let base = format!("http://127.0.0.1:{}", d.api_port);
    let web = Web::new(d.dir.path(), "rss");
    assert_eq!(sign_in_token(&web, &base, &t).status, 303);
    let load = |n: usize| {
        for _ in 0..n {
            for path in [
                "/",
                "/apps/shop",
                "/assets/dashboard.css",
                "/assets/dashboard.js",
            ] {
                let r = web.get(&format!("{base}{path}"));
                assert_eq!(r.status, 200, "{path}: {}", r.body);
            }
        }
    };
    load(5);
    settle();
    let after_few = vm_rss_kb(pid);
    load(50);
    settle();
    let after_many = vm_rss_kb(pid);
    println!(
        "daemon VmRSS (debug build, idle): {before} KiB before any page load, \
         {after_few} KiB after 20 dashboard requests, {after_many} KiB after 220"
    );
    assert!(
        before > 0 && after_few > 0,
        "VmRSS read from /proc/{pid}/status"
    );
    // 200 more requests may not grow the daemon by more than a few MiB.
    assert!(
        after_many < after_few + 4 * 1024,
        "RSS grew from {after_few} to {after_many} KiB over 200 page loads"
    );
}

/// What the browser test needs, or why it cannot run.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let node = Command::new("node")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !node {
        return Err("node is not installed".into());
    }
    let pw = root.join("tests/browser/node_modules/playwright-core");
    if !pw.is_dir() {
        return Err("tests/browser/node_modules/playwright-core is missing: run `npm ci --prefix tests/browser`".into());
    }
    let chromium = PathBuf::from("/usr/bin/chromium");
    if !chromium.exists() {
        return Err("/usr/bin/chromium is missing: apt-get install chromium".into());
    }
    Ok((
        root.join("tests/browser/dashboard.mjs"),
        root.join("target/dashboard-screenshots"),
    ))
}

#[test]
fn chromium_signs_in_streams_logs_and_rolls_back() {
    let (script, shots) = match browser_tools() {
        Ok(t) => t,
        Err(why) => return skip_or_fail(&why),
    };
    let d = TestDaemon::start();
    let repo = fixture_repo(&d, "procfile-app", "shop-src");
    push(&d, &repo, "shop").ok();
    // v2: a config release, so there is something to roll back from.
    d.ssh(&d.admin, "config:set shop GREETING=hello").ok();
    let viewer_token = token(&d, "watcher --role viewer --app shop");
    let link = login_links(&d, &d.admin).remove(0);
    let probe = format!("/dashboard-probe-{}", std::process::id());

    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let profile = tempfile::tempdir().expect("profile dir");
    let mut node = Command::new("node")
        .arg(&script)
        .env("LOGIN_URL", &link)
        .env("BASE", format!("http://127.0.0.1:{}", d.api_port))
        .env("APP", "shop")
        .env("PROBE", &probe)
        .env("VIEWER_TOKEN", &viewer_token)
        .env("SHOTS", &shots)
        .env("PROFILE", profile.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let stdout = node.stdout.take().expect("node stdout");
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut said = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("browser: {line}");
        if line.trim() == "READY-FOR-LOG" {
            // The page is open and its log stream connected: make the app
            // print a line (http.server logs each request).
            let (status, _) = curl(d.http_port, &host("shop"), &probe);
            assert_eq!(status, 404, "the probe reaches the app");
        }
        if line.trim() == "READY-FOR-DEPLOY" {
            replace_with_fixture(&repo, "fail-build");
            // pip echoes the line: build output with markup in it.
            edit(
                &repo.join("requirements.txt"),
                "./does-not-exist",
                "./does-not-exist-<i>cygni</i>",
            );
            commit_all(&repo, "a build that fails");
            let out = push(&d, &repo, "shop");
            assert_ne!(out.code, 0, "the failing build is refused: {out:#?}");
        }
        said.push(line);
        assert!(Instant::now() < deadline, "the browser script ran too long");
    }
    let status = node.wait().expect("wait for node");
    assert!(
        status.success(),
        "the browser script failed ({status}); it said:\n{}\ndaemon log:\n{}",
        said.join("\n"),
        d.log()
    );
    assert!(said.iter().any(|l| l == "OK"), "{said:?}");

    // What the browser did is what SSH sees: v3 is a rollback to v1, live,
    // and the failed v4 left it serving.
    let releases = d.ssh(&d.admin, "releases shop --json").ok().stdout;
    let list: serde_json::Value = serde_json::from_str(&releases).unwrap();
    assert_eq!(list[0]["version"], 4, "{releases}");
    assert_eq!(list[0]["status"], "failed", "{releases}");
    assert_eq!(list[1]["version"], 3, "{releases}");
    assert_eq!(list[1]["status"], "live", "{releases}");
    assert_eq!(list[1]["description"], "Rollback to v1", "{releases}");
    let (code, body) = d.curl(&host("shop"), "/");
    assert_eq!(code, 200);
    assert!(body.contains("hello from procfile-app"), "{body}");
    let audit = d.ssh(&d.admin, "audit shop --json").ok().stdout;
    assert!(audit.contains("\"action\": \"rollback\""), "{audit}");
    assert!(audit.contains("\"source\": \"dashboard\""), "{audit}");
    for name in [
        "login-link",
        "apps",
        "app-live-log",
        "app-rolled-back",
        "deploy-failed",
        "login-form",
        "token-login",
        "viewer",
    ] {
        let p = shots.join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&p)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "screenshot {} missing",
            p.display()
        );
    }
}
