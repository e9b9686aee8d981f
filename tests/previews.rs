//! Preview environments end to end, on the local runtime: real git over
//! SSH, the real proxy, curl. A push to `preview/NAME` deploys `NAME--APP`
//! beside the app, never touching it; deleting the branch, `previews:destroy`
//! or the idle sweep removes it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A static app that also serves `/env.txt`, written at start from
/// `$GREETING`, so a test can see the config a release runs with.
fn env_app(d: &TestDaemon, dir: &str, marker: &str) -> PathBuf {
    let repo = d.dir.path().join(dir);
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("index.html"), format!("<p>{marker}</p>\n")).unwrap();
    std::fs::write(
        repo.join("Procfile"),
        "web: printf 'greeting=%s\\n' \"$GREETING\" > env.txt && exec python3 -m http.server $PORT\n",
    )
    .unwrap();
    make_repo(&repo, &[])
}

fn json(out: Out) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"))
}

/// What a user sees of an app: its live release, its page, its config and
/// its instances. Equal before and after means untouched.
#[derive(Debug, PartialEq)]
struct Seen {
    live: serde_json::Value,
    page: (u16, String),
    env: (u16, String),
    config: serde_json::Value,
    instances: Vec<String>,
}

fn seen(d: &TestDaemon, app: &str) -> Seen {
    let rel = json(d.ssh(&d.admin, &format!("releases {app} --json")).ok());
    let live = rel
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "live")
        .cloned()
        .unwrap_or_default();
    let ps = json(d.ssh(&d.admin, &format!("ps {app} --json")).ok());
    // An instance is the same one while its endpoint and start time are.
    let mut instances: Vec<String> = ps["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    format!(
                        "{} {} {} {}",
                        i["name"], i["release"], i["endpoint"], i["started_at"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    instances.sort();
    Seen {
        live,
        page: d.curl(&host(app), "/"),
        env: d.curl(&host(app), "/env.txt"),
        config: json(
            d.ssh(&d.admin, &format!("config {app} --json --reveal"))
                .ok(),
        ),
        instances,
    }
}

fn git_push(d: &TestDaemon, repo: &Path, app: &str, refspec: &str) -> Out {
    d.git(&d.admin, repo, &["push", &d.remote(app), refspec])
}

fn branch(repo: &Path, name: &str) {
    run_ok(git_cmd(repo).args(["checkout", "-q", "-B", name]));
}

fn ls_remote(d: &TestDaemon, repo: &Path, app: &str) -> String {
    d.git(&d.admin, repo, &["ls-remote", &d.remote(app)])
        .ok()
        .stdout
}

#[test]
fn preview_lifecycle_leaves_the_app_alone() {
    let d = TestDaemon::start();
    let app = "shop";
    let preview = "x--shop";
    let repo = env_app(&d, app, "hello from main");
    d.ssh(&d.admin, &format!("apps:create {app}")).ok();
    d.ssh(&d.admin, &format!("config:set {app} GREETING=main-hi"))
        .ok();
    let out = d.ssh(&d.admin, &format!("previews:enable {app}")).ok();
    assert!(out.stdout.contains("preview/*"), "{out:#?}");
    push(&d, &repo, app).ok();

    let before = seen(&d, app);
    assert_eq!(before.page.0, 200, "{before:?}\n{}", d.log());
    assert!(before.page.1.contains("hello from main"), "{before:?}");
    assert_eq!(before.env.1, "greeting=main-hi\n");
    assert!(!before.instances.is_empty());

    // preview/x: its own app, its own content, the app's config copied.
    branch(&repo, "preview/x");
    edit(
        &repo.join("index.html"),
        "hello from main",
        "hello from preview x",
    );
    commit_all(&repo, "preview x");
    let out = git_push(&d, &repo, app, "preview/x").ok();
    assert!(out.stderr.contains("Creating preview x--shop"), "{out:#?}");
    let url = format!("http://{preview}.localhost:{} deployed", d.http_port);
    assert!(out.stderr.contains(&url), "{out:#?}");
    let (code, body) = d.curl(&host(preview), "/");
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert!(body.contains("hello from preview x"), "{body}");
    assert_eq!(d.curl(&host(preview), "/env.txt").1, "greeting=main-hi\n");
    assert_eq!(
        seen(&d, app),
        before,
        "the app is untouched by a preview push"
    );

    // A config override on the preview only.
    d.ssh(
        &d.admin,
        &format!("config:set {preview} GREETING=preview-hi"),
    )
    .ok();
    assert_eq!(
        d.curl(&host(preview), "/env.txt").1,
        "greeting=preview-hi\n"
    );

    // Redeploy the preview with a change: the override stays.
    edit(&repo.join("index.html"), "preview x", "preview x again");
    commit_all(&repo, "preview x again");
    let out = git_push(&d, &repo, app, "preview/x").ok();
    assert!(out.stderr.contains("Released v3"), "{out:#?}");
    assert!(!out.stderr.contains("Creating preview"), "{out:#?}");
    let (code, body) = d.curl(&host(preview), "/");
    assert_eq!(code, 200);
    assert!(body.contains("hello from preview x again"), "{body}");
    assert_eq!(
        d.curl(&host(preview), "/env.txt").1,
        "greeting=preview-hi\n"
    );

    let list = json(d.ssh(&d.admin, &format!("previews {app} --json")).ok());
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "x");
    assert_eq!(list[0]["app"], preview);
    assert_eq!(list[0]["branch"], "preview/x");
    assert_eq!(
        list[0]["url"],
        format!("http://{preview}.localhost:{}", d.http_port)
    );
    assert_eq!(list[0]["release"], "v3");
    assert_eq!(list[0]["state"], "live");
    assert!(list[0]["last_deploy"].as_i64().is_some());
    let text = d.ssh(&d.admin, &format!("previews {app}")).ok();
    assert!(
        text.stdout.contains("preview/x") && text.stdout.contains("v3"),
        "{text:#?}"
    );
    let ps = json(d.ssh(&d.admin, &format!("ps {preview} --json")).ok());
    assert_eq!(ps["instances"][0]["state"], "running", "{ps}");
    let endpoint: std::net::SocketAddr = ps["instances"][0]["endpoint"]
        .as_str()
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("an endpoint: {ps}"));
    assert_eq!(
        seen(&d, app),
        before,
        "the app is untouched by preview changes"
    );

    // Deleting the branch removes the preview, and only it.
    let out = git_push(&d, &repo, app, ":preview/x").ok();
    assert!(out.stderr.contains("removing preview x--shop"), "{out:#?}");
    assert_eq!(d.curl(&host(preview), "/").0, 404);
    d.ssh(&d.admin, &format!("ps {preview}"))
        .fails_with("app not found: x--shop");
    let list = json(d.ssh(&d.admin, &format!("previews {app} --json")).ok());
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    assert!(!ls_remote(&d, &repo, app).contains("preview/x"));
    // Its instances are gone from the host too (the local runtime's slugs).
    // Its process is gone: nothing listens on its endpoint any more.
    wait_for(
        "the preview's instance to stop",
        Duration::from_secs(10),
        || {
            std::net::TcpStream::connect_timeout(&endpoint, Duration::from_millis(200))
                .is_err()
                .then_some(())
        },
    );
    let slugs = d.data_dir.join("slugs").join(preview);
    assert!(
        !slugs.exists(),
        "{:?}\n{}",
        std::fs::read_dir(&slugs).map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>()),
        d.log()
    );
    assert_eq!(seen(&d, app), before, "the app is untouched by the removal");

    // A main push still deploys the app as before.
    run_ok(git_cmd(&repo).args(["checkout", "-q", "main"]));
    edit(
        &repo.join("index.html"),
        "hello from main",
        "hello from main v2",
    );
    commit_all(&repo, "main v2");
    let out = push(&d, &repo, app).ok();
    assert!(out.stderr.contains("Released v2"), "{out:#?}");
    assert!(d.curl(&host(app), "/").1.contains("hello from main v2"));
}

#[test]
fn other_branches_bad_names_and_previews_off() {
    let d = TestDaemon::start();
    let app = "blog";
    let repo = env_app(&d, app, "hello from blog");
    push(&d, &repo, app).ok();
    let before = seen(&d, app);

    // Previews off: a preview branch is just stored.
    branch(&repo, "preview/x");
    commit_all_allow_empty(&repo, "x");
    let out = git_push(&d, &repo, app, "preview/x").ok();
    assert!(out.stderr.contains("stored, not deployed"), "{out:#?}");
    assert_eq!(d.curl(&host("x--blog"), "/").0, 404);
    git_push(&d, &repo, app, ":preview/x").fails_with("deleting branch preview/x is not allowed");

    d.ssh(&d.admin, &format!("previews:enable {app} --idle 2d"))
        .ok();
    // Other branches: stored, and deleting them is still refused.
    branch(&repo, "feature");
    let out = git_push(&d, &repo, app, "feature").ok();
    assert!(out.stderr.contains("stored, not deployed"), "{out:#?}");
    git_push(&d, &repo, app, ":feature").fails_with("deleting branch feature is not allowed");
    assert!(ls_remote(&d, &repo, app).contains("refs/heads/feature"));
    // Deleting a preview branch that never had a preview is allowed.
    let out = git_push(&d, &repo, app, ":preview/x").ok();
    assert!(out.stderr.contains("it had no preview"), "{out:#?}");

    // Bad preview names: one line, nothing pushed.
    branch(&repo, "preview/Bad_Name");
    let out = git_push(&d, &repo, app, "preview/Bad_Name")
        .fails_with("invalid preview name \"Bad_Name\"");
    assert!(out.stderr.contains("nothing was pushed"), "{out:#?}");
    let long = format!("preview/{}", "a".repeat(60));
    branch(&repo, &long);
    git_push(&d, &repo, app, &long).fails_with("longer than the 63 an app name may have");
    let heads = ls_remote(&d, &repo, app);
    assert!(
        !heads.contains("Bad_Name") && !heads.contains("aaaa"),
        "{heads}"
    );

    // Bad commands: one line each, nothing changed.
    for (cmd, needle) in [
        (
            format!("previews:destroy {app} nosuch"),
            "blog has no preview named \"nosuch\"",
        ),
        (
            format!("previews:enable {app} --pattern 'ma*'"),
            "matches the deploy branch main",
        ),
        (
            format!("previews:enable {app} --pattern preview/"),
            "must end with '*'",
        ),
        (
            format!("previews:enable {app} --idle 7y"),
            "is not an idle limit",
        ),
        (
            "apps:create a--b".to_owned(),
            "'--' is reserved for previews",
        ),
        ("previews:enable nosuch".to_owned(), "app not found: nosuch"),
    ] {
        let out = d.ssh(&d.admin, &cmd).fails_with(needle);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out:#?}");
    }
    d.ssh(&d.admin, "apps:info a--b")
        .fails_with("app not found");
    let list = json(d.ssh(&d.admin, &format!("previews {app} --json")).ok());
    assert_eq!(list.as_array().unwrap().len(), 0);
    let text = d.ssh(&d.admin, &format!("previews {app}")).ok();
    assert!(
        text.stdout.contains("branches preview/*") && text.stdout.contains("2d"),
        "{text:#?}"
    );
    assert_eq!(seen(&d, app), before);
}

/// `curl` the API's loopback listener with a token: (status, JSON body).
fn api(d: &TestDaemon, token: &str, method: &str, path: &str) -> (u16, serde_json::Value) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "60", "-w", "\n%{http_code}", "-X", method, "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://127.0.0.1:{}/api/v1{path}", d.api_port))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text:?}"));
    (code.parse().unwrap_or(0), v)
}

fn commit_all_allow_empty(repo: &Path, message: &str) {
    run_ok(git_cmd(repo).args(["commit", "-q", "--allow-empty", "-m", message]));
}

/// A developer granted the app pushes previews and manages them; one
/// without the grant sees neither. `previews:destroy` and destroying the
/// app take previews away.
#[test]
fn grants_reach_previews_and_destroy_takes_them() {
    let d = TestDaemon::start();
    let app = "web";
    let repo = env_app(&d, app, "hello from web");
    d.ssh(&d.admin, &format!("apps:create {app}")).ok();
    d.ssh(&d.admin, &format!("previews:enable {app}")).ok();
    let dev = d.add_key("dev", "developer");
    let other = d.add_key("other", "developer");
    d.ssh(&d.admin, &format!("keys:grant dev {app}")).ok();
    d.git(&dev, &repo, &["push", &d.remote(app), "main"]).ok();

    for name in ["a", "b"] {
        branch(&repo, &format!("preview/{name}"));
        edit(
            &repo.join("index.html"),
            "hello from",
            &format!("{name} says hello from"),
        );
        commit_all(&repo, name);
        d.git(
            &dev,
            &repo,
            &["push", &d.remote(app), &format!("preview/{name}")],
        )
        .ok();
    }
    let (code, body) = d.curl(&host("a--web"), "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("a says hello"), "{body}");
    d.ssh(&dev, "config:set b--web GREETING=dev").ok();
    assert_eq!(d.curl(&host("b--web"), "/env.txt").1, "greeting=dev\n");
    let apps = d.ssh(&dev, "apps").ok();
    assert!(apps.stdout.contains("a--web"), "{apps:#?}");
    d.ssh(&other, &format!("previews {app}"))
        .fails_with("app not found: web");
    d.ssh(&other, "ps a--web")
        .fails_with("app not found: a--web");
    assert!(!d.ssh(&other, "apps").ok().stdout.contains("a--web"));

    // The API: a developer token granted the app lists and destroys.
    let token = d
        .ssh(
            &d.admin,
            &format!("tokens:create ci --role developer --app {app}"),
        )
        .ok()
        .stdout
        .trim()
        .to_owned();
    let (code, list) = api(&d, &token, "GET", &format!("/apps/{app}/previews"));
    assert_eq!(code, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        list[0]["url"],
        format!("http://a--web.localhost:{}", d.http_port)
    );
    let (code, body) = api(&d, &token, "DELETE", &format!("/apps/{app}/previews/a"));
    assert_eq!(
        (code, &body["destroyed"]),
        (200, &serde_json::json!(true)),
        "{body}"
    );
    assert_eq!(d.curl(&host("a--web"), "/").0, 404);
    let (code, body) = api(&d, &token, "DELETE", &format!("/apps/{app}/previews/a"));
    assert_eq!(code, 404, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no preview named \"a\""),
        "{body}"
    );
    d.ssh(&d.admin, "apps:create elsewhere").ok();
    let stranger = d
        .ssh(
            &d.admin,
            "tokens:create nope --role developer --app elsewhere",
        )
        .ok()
        .stdout
        .trim()
        .to_owned();
    let (code, body) = api(&d, &stranger, "GET", &format!("/apps/{app}/previews"));
    assert_eq!(code, 404, "{body}");
    // Its branch stays: pushing it again makes it again.
    assert!(ls_remote(&d, &repo, app).contains("refs/heads/preview/a"));
    assert_eq!(d.curl(&host("b--web"), "/").0, 200);

    // A preview is not pushed to, nor given previews, by itself.
    d.git(&dev, &repo, &["push", &d.remote("b--web"), "HEAD:main"])
        .fails_with("b--web is a preview of web: push the branch preview/b to web instead");
    d.ssh(&dev, "previews:enable b--web")
        .fails_with("b--web is a preview of web");

    // SSH: previews:destroy, then a new push of the branch brings it back.
    d.ssh(&dev, &format!("previews:destroy {app} b")).ok();
    assert_eq!(d.curl(&host("b--web"), "/").0, 404);
    commit_all_allow_empty(&repo, "b again");
    let out = d
        .git(&dev, &repo, &["push", &d.remote(app), "preview/b"])
        .ok();
    assert!(out.stderr.contains("Creating preview b--web"), "{out:#?}");
    assert_eq!(d.curl(&host("b--web"), "/").0, 200);
    d.ssh(&d.admin, &format!("apps:destroy {app} --confirm {app}"))
        .ok();
    assert_eq!(d.curl(&host("b--web"), "/").0, 404);
    d.ssh(&d.admin, "apps:info b--web")
        .fails_with("app not found");
    let ps = d.ssh(&d.admin, "status --json").ok();
    assert!(!ps.stdout.contains("b--web"), "{ps:#?}");
}

/// The idle sweep, end to end: with a 3 s limit and the sweep every
/// second, requests keep a preview alive; once they stop it is destroyed.
#[test]
fn idle_previews_are_swept() {
    let cfg = tempfile::tempdir().unwrap();
    let file = cfg.path().join("cygni.toml");
    std::fs::write(&file, "reconcile_interval_secs = 1\n").unwrap();
    let d = TestDaemon::start_with(&["--config", file.to_str().unwrap()]);
    let app = "idle";
    let repo = env_app(&d, app, "hello from idle");
    push(&d, &repo, app).ok();
    d.ssh(&d.admin, &format!("previews:enable {app} --idle 3s"))
        .ok();
    branch(&repo, "preview/x");
    let pushed = Instant::now();
    git_push(&d, &repo, app, "preview/x").ok();
    // Requests every half second for 6 s (twice the limit) keep it.
    while pushed.elapsed() < Duration::from_secs(6) {
        assert_eq!(d.curl(&host("x--idle"), "/").0, 200, "{}", d.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    let gone = Instant::now();
    // Watched over SSH: a request through the proxy would keep it alive.
    wait_for("the idle preview to go", Duration::from_secs(20), || {
        let list = json(d.ssh(&d.admin, &format!("previews {app} --json")).ok());
        list.as_array().unwrap().is_empty().then_some(())
    });
    assert_eq!(d.curl(&host("x--idle"), "/").0, 404);
    eprintln!(
        "idle preview gone {:.1}s after its last request (limit 3s, sweep 1s)",
        gone.elapsed().as_secs_f64()
    );
    let audit = d.ssh(&d.admin, &format!("audit {app}")).ok();
    assert!(audit.stdout.contains("previews:expire"), "{audit:#?}");
    assert_eq!(d.curl(&host(app), "/").0, 200);
}

/// Figures: time from `git push` to the first 200 of a preview push
/// against a main push (medians of three, printed).
#[test]
fn time_to_first_serve_preview_vs_main() {
    let d = TestDaemon::start();
    let app = "fast";
    let repo = env_app(&d, app, "hello from fast");
    d.ssh(&d.admin, &format!("apps:create {app}")).ok();
    d.ssh(&d.admin, &format!("previews:enable {app}")).ok();
    let serve = |host: &str, marker: &str, refspec: &str| {
        let t = Instant::now();
        git_push(&d, &repo, app, refspec).ok();
        wait_for("first serve", Duration::from_secs(30), || {
            let (code, body) = d.curl(host, "/");
            (code == 200 && body.contains(marker)).then_some(())
        });
        t.elapsed().as_secs_f64()
    };
    let (mut main, mut preview) = (Vec::new(), Vec::new());
    for i in 0..3 {
        branch(&repo, "main");
        std::fs::write(repo.join("index.html"), format!("main {i}\n")).unwrap();
        commit_all(&repo, "main");
        main.push(serve(&host(app), &format!("main {i}"), "main"));
        let b = format!("preview/p{i}");
        branch(&repo, &b);
        std::fs::write(repo.join("index.html"), format!("preview {i}\n")).unwrap();
        commit_all(&repo, "preview");
        preview.push(serve(
            &host(&format!("p{i}--{app}")),
            &format!("preview {i}"),
            &b,
        ));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[1]
    };
    eprintln!(
        "time to first serve: main push {:.2}s, new preview push {:.2}s (medians of 3; all main {main:?}, preview {preview:?})",
        median(&mut main),
        median(&mut preview)
    );
}
