//! The HTTP front door against the real daemon: tokens, the API with
//! curl, the role matrix over SSH and the API, the audit log, and git
//! clone/push over HTTP with a token.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// `curl` against the API's loopback listener: (status, body, headers).
fn api(
    d: &TestDaemon,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "60", "-D", "-", "-X", method]);
    if let Some(t) = token {
        c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    c.arg(format!("http://127.0.0.1:{}/api/v1{path}", d.api_port));
    let (status, head, body) = curl_response(c);
    (status, body, head)
}

fn api_json(
    d: &TestDaemon,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let (status, text, _) = api(d, Some(token), method, path, body);
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"));
    (status, v)
}

/// `tokens:create` as the admin; returns the token text.
fn token(d: &TestDaemon, args: &str) -> String {
    let out = d.ssh(&d.admin, &format!("tokens:create {args}")).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "the token alone on stdout: {out:#?}");
    assert!(lines[0].starts_with("cyg_"), "{out:#?}");
    assert!(out.stderr.contains("shown only once"), "{out:#?}");
    lines[0].to_owned()
}

fn sqlite(d: &TestDaemon, sql: &str) {
    let script =
        "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nc.execute(sys.argv[2])\nc.commit()\n";
    let st = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(d.data_dir.join("cygni.db"))
        .arg(sql)
        .status()
        .expect("python3");
    assert!(st.success());
}

#[test]
fn tokens_are_shown_once_stored_hashed_and_refused_once_revoked_or_expired() {
    let d = TestDaemon::start();
    let t = token(&d, "ci --role admin");
    let (status, apps) = api_json(&d, &t, "GET", "/apps", None);
    assert_eq!(status, 200, "{apps}");
    assert!(apps.is_array());

    // Only a hash is stored: the secret is in no listing and not on disk.
    let listing = d.ssh(&d.admin, "tokens --json").ok();
    let secret = t.rsplit('_').next().unwrap();
    assert!(!listing.stdout.contains(secret));
    let tokens: Value = serde_json::from_str(&listing.stdout).unwrap();
    assert_eq!(tokens[0]["name"], "ci");
    assert!(
        tokens[0]["last_used_at"].is_i64(),
        "a use is recorded: {tokens}"
    );
    for f in ["cygni.db", "cygni.db-wal"] {
        if let Ok(bytes) = std::fs::read(d.data_dir.join(f)) {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{f} holds the token's secret"
            );
        }
    }

    // A wrong secret with the right lookup id, garbage, and no token.
    let forged = format!("{}{}", &t[..t.len() - 4], "AAAA");
    for bad in [
        Some(forged.as_str()),
        Some("cyg_nope"),
        Some("Bearer"),
        None,
    ] {
        let (status, body, head) = api(&d, bad, "GET", "/apps", None);
        assert_eq!(status, 401, "{bad:?}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["id"], "unauthorized");
        assert!(
            head.to_ascii_lowercase().contains("www-authenticate"),
            "{head}"
        );
    }

    // Revoked: refused at the next request.
    d.ssh(&d.admin, "tokens:revoke ci").ok();
    assert_eq!(api(&d, Some(&t), "GET", "/apps", None).0, 401);
    d.ssh(&d.admin, "tokens:revoke ci")
        .fails_with("token \"ci\" not found");

    // Expired: refused, with the reason.
    let t2 = token(&d, "short --role viewer --expires 90m");
    assert_eq!(api(&d, Some(&t2), "GET", "/apps", None).0, 200);
    sqlite(
        &d,
        "UPDATE tokens SET expires_at = strftime('%s','now') - 1 WHERE name = 'short'",
    );
    let (status, body, _) = api(&d, Some(&t2), "GET", "/apps", None);
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
    let listing = d.ssh(&d.admin, "tokens").ok();
    assert!(listing.stdout.contains("expired"), "{listing:#?}");

    // Bad input: one line, nothing created.
    for (args, needle) in [
        ("x --role root", "is not a role"),
        ("x --role viewer --expires 10y", "is not a duration"),
        ("'bad name' --role viewer", "invalid"),
        ("y --role admin --app nope", "admin tokens reach every app"),
        ("z --role viewer --app nope", "app nope not found"),
    ] {
        let out = d.ssh(&d.admin, &format!("tokens:create {args}"));
        let out = out.fails_with(needle);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out:#?}");
    }
    let listing = d.ssh(&d.admin, "tokens --json").ok();
    let tokens: Value = serde_json::from_str(&listing.stdout).unwrap();
    assert_eq!(tokens.as_array().unwrap().len(), 1, "{tokens}");
}

/// One change per role, over SSH and over the API: both allow or both
/// refuse, and as the role says.
#[test]
fn role_matrix_is_the_same_over_ssh_and_the_api() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create shared").ok();
    d.ssh(&d.admin, "apps:create other").ok();
    let admin_t = token(&d, "admin-t --role admin");
    let dev_key = d.add_key("dev", "developer");
    d.ssh(&d.admin, "keys:grant dev shared").ok();
    let viewer_key = d.add_key("view", "viewer");
    d.ssh(&d.admin, "keys:grant view shared").ok();
    let dev_t = token(&d, "dev-t --role developer --app shared");
    let viewer_t = token(&d, "view-t --role viewer --app shared");

    struct Case {
        ssh: &'static str,
        method: &'static str,
        path: &'static str,
        body: Option<Value>,
        /// admin, developer, viewer
        allowed: [bool; 3],
    }
    let cases = [
        Case {
            ssh: "apps",
            method: "GET",
            path: "/apps",
            body: None,
            allowed: [true, true, true],
        },
        Case {
            ssh: "apps:info shared",
            method: "GET",
            path: "/apps/shared",
            body: None,
            allowed: [true, true, true],
        },
        Case {
            ssh: "apps:info other",
            method: "GET",
            path: "/apps/other",
            body: None,
            allowed: [true, false, false],
        },
        Case {
            ssh: "config shared",
            method: "GET",
            path: "/apps/shared/config-vars",
            body: None,
            allowed: [true, true, true],
        },
        Case {
            ssh: "config:set shared --no-restart A=1",
            method: "PATCH",
            path: "/apps/shared/config-vars?restart=false",
            body: Some(json!({"A": "1"})),
            allowed: [true, true, false],
        },
        Case {
            ssh: "config:set other --no-restart A=1",
            method: "PATCH",
            path: "/apps/other/config-vars?restart=false",
            body: Some(json!({"A": "1"})),
            allowed: [true, false, false],
        },
        Case {
            ssh: "domains shared",
            method: "GET",
            path: "/apps/shared/domains",
            body: None,
            allowed: [true, true, true],
        },
        Case {
            ssh: "releases shared",
            method: "GET",
            path: "/apps/shared/releases",
            body: None,
            allowed: [true, true, true],
        },
        Case {
            ssh: "ps shared",
            method: "GET",
            path: "/apps/shared/dynos",
            body: None,
            allowed: [true, true, true],
        },
        Case {
            ssh: "certs shared",
            method: "GET",
            path: "/apps/shared/certs",
            body: None,
            allowed: [true, true, true],
        },
        Case {
            ssh: "certs:redirect shared off",
            method: "PATCH",
            path: "/apps/shared/certs",
            body: Some(json!({"redirect": false})),
            allowed: [true, true, false],
        },
        Case {
            ssh: "keys",
            method: "GET",
            path: "/keys",
            body: None,
            allowed: [true, false, false],
        },
        Case {
            ssh: "tokens",
            method: "GET",
            path: "/tokens",
            body: None,
            allowed: [true, false, false],
        },
        Case {
            ssh: "audit shared",
            method: "GET",
            path: "/audit?app=shared",
            body: None,
            allowed: [true, true, true],
        },
        Case {
            ssh: "status",
            method: "GET",
            path: "/status",
            body: None,
            allowed: [true, true, true],
        },
    ];
    let keys = [&d.admin, &dev_key, &viewer_key];
    let tokens = [&admin_t, &dev_t, &viewer_t];
    for case in &cases {
        for role in 0..3 {
            let out = d.ssh(keys[role], case.ssh);
            let (status, body, _) = api(
                &d,
                Some(tokens[role]),
                case.method,
                case.path,
                case.body.as_ref(),
            );
            let ssh_ok = out.code == 0;
            let api_ok = (200..300).contains(&status);
            assert_eq!(
                ssh_ok, case.allowed[role],
                "ssh {:?} as role {role}: {out:#?}",
                case.ssh
            );
            assert_eq!(
                api_ok, case.allowed[role],
                "{} {} as role {role}: {status} {body}",
                case.method, case.path
            );
            if !api_ok {
                // The same one-line reason on both doors.
                let v: Value = serde_json::from_str(&body).unwrap();
                let msg = v["message"].as_str().unwrap();
                assert!(
                    out.stderr.contains(msg),
                    "ssh said {:?}, api said {msg:?}",
                    out.stderr
                );
                assert!([403, 404].contains(&status), "{status}");
            }
        }
    }
    // Admin-only app creation, on both doors.
    for role in 1..3 {
        let out = d.ssh(keys[role], "apps:create nope");
        assert_ne!(out.code, 0);
        let (status, body, _) = api(
            &d,
            Some(tokens[role]),
            "POST",
            "/apps",
            Some(&json!({"name": "nope"})),
        );
        assert_eq!(status, 403, "{body}");
        assert!(
            out.stderr.contains("only admins can create apps"),
            "{out:#?}"
        );
        assert!(body.contains("only admins can create apps"), "{body}");
    }
    // Viewers see values masked on both doors.
    let (_, vars) = api_json(&d, &viewer_t, "GET", "/apps/shared/config-vars", None);
    assert_eq!(vars["A"], "********");
    let (_, vars) = api_json(&d, &dev_t, "GET", "/apps/shared/config-vars", None);
    assert_eq!(vars["A"], "1");
    d.ssh(&viewer_key, "config shared --reveal")
        .fails_with("masked");
    d.ssh(&viewer_key, "config:get shared A")
        .fails_with("masked");
}

#[test]
fn every_endpoint_answers_and_changes_are_audited() {
    let d = TestDaemon::start();
    let t = token(&d, "ops --role admin");
    let repo = fixture_repo(&d, "procfile-app", "src");
    push(&d, &repo, "web1").ok();

    let get = |path: &str| {
        let (status, v) = api_json(&d, &t, "GET", path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    };
    let apps = get("/apps");
    assert!(
        apps.as_array().unwrap().iter().any(|a| a["name"] == "web1"),
        "{apps}"
    );
    let info = get("/apps/web1");
    assert_eq!(info["live_release"], 1, "{info}");
    assert_eq!(info["formation"]["web"], 1, "{info}");

    // Config: set, then unset with null; a release each.
    let (status, v) = api_json(
        &d,
        &t,
        "PATCH",
        "/apps/web1/config-vars",
        Some(&json!({"GREETING": "hi", "OTHER": "x"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["config_vars"]["GREETING"], "hi");
    assert_eq!(v["release"], 2, "{v}");
    let (status, v) = api_json(
        &d,
        &t,
        "PATCH",
        "/apps/web1/config-vars",
        Some(&json!({"OTHER": null})),
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["config_vars"].get("OTHER").is_none(), "{v}");
    // A bad name and a bad value are refused with nothing changed.
    let (status, v) = api_json(
        &d,
        &t,
        "PATCH",
        "/apps/web1/config-vars",
        Some(&json!({"1BAD": "x"})),
    );
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["id"], "invalid_params");
    let (status, _, _) = api(
        &d,
        Some(&t),
        "PATCH",
        "/apps/web1/config-vars",
        Some(&json!(["not", "an", "object"])),
    );
    assert_eq!(status, 400);
    assert_eq!(get("/apps/web1/releases").as_array().unwrap().len(), 3);

    // Domains.
    let (status, _) = api_json(
        &d,
        &t,
        "POST",
        "/apps/web1/domains",
        Some(&json!({"hostname": "www.example.org"})),
    );
    assert_eq!(status, 201);
    assert_eq!(get("/apps/web1/domains")["custom"][0], "www.example.org");
    let (status, _) = api_json(&d, &t, "DELETE", "/apps/web1/domains/www.example.org", None);
    assert_eq!(status, 200);
    assert!(get("/apps/web1/domains")["custom"]
        .as_array()
        .unwrap()
        .is_empty());

    // Formation and dynos.
    let f = get("/apps/web1/formation");
    assert_eq!(f[0]["type"], "web");
    let (status, v) = api_json(
        &d,
        &t,
        "PATCH",
        "/apps/web1/formation",
        Some(&json!({"updates": [{"type": "web", "quantity": 2}]})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["formation"][0]["quantity"], 2, "{v}");
    let dynos = get("/apps/web1/dynos");
    let running = dynos
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "running")
        .count();
    assert_eq!(running, 2, "{dynos}");
    let (status, v) = api_json(&d, &t, "DELETE", "/apps/web1/dynos", None);
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["restarted"], 2);

    // Releases, one release, its build log, and a rollback to v1.
    assert_eq!(get("/apps/web1/releases/v1")["version"], 1);
    let (status, log, _) = api(&d, Some(&t), "GET", "/apps/web1/releases/1/build-log", None);
    assert_eq!(status, 200);
    assert!(!log.is_empty());
    let (status, v) = api_json(
        &d,
        &t,
        "POST",
        "/apps/web1/releases",
        Some(&json!({"release": "v1"})),
    );
    assert_eq!(status, 201, "{v}");
    let rolled = v["version"].as_u64().unwrap();
    let info = get("/apps/web1");
    assert_eq!(info["live_release"], rolled);
    let (status, v) = api_json(
        &d,
        &t,
        "POST",
        "/apps/web1/releases",
        Some(&json!({"release": "v99"})),
    );
    assert_eq!(status, 422, "{v}");
    assert_eq!(
        get("/apps/web1")["live_release"],
        rolled,
        "a bad rollback changes nothing"
    );

    // Logs: a tail, and a live stream (Server-Sent Events).
    let lines = get("/apps/web1/logs?lines=50");
    assert!(lines.is_array());
    let out = Command::new("curl")
        .args(["-s", "-N", "-m", "3", "-H"])
        .arg(format!("Authorization: Bearer {t}"))
        .arg(format!(
            "http://127.0.0.1:{}/api/v1/apps/web1/logs?tail=true&lines=5",
            d.api_port
        ))
        .output()
        .unwrap();
    let sse = String::from_utf8_lossy(&out.stdout);
    assert!(sse.starts_with("data: {"), "{sse:?}");

    // Stop and start.
    let (status, v) = api_json(&d, &t, "POST", "/apps/web1/actions/stop", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(get("/apps/web1")["stopped"], true);
    let (status, _) = api_json(&d, &t, "POST", "/apps/web1/actions/start", None);
    assert_eq!(status, 200);

    // Certs, keys, tokens, status, audit.
    assert!(get("/apps/web1/certs").is_array());
    assert!(get("/certs").is_array());
    let key = d.new_key("laptop");
    let (status, v) = api_json(
        &d,
        &t,
        "POST",
        "/keys",
        Some(&json!({"name": "laptop", "public_key": key.public_text(), "role": "viewer"})),
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = api_json(&d, &t, "PUT", "/keys/laptop/apps/web1", None);
    assert_eq!(status, 200, "{v}");
    assert!(d.ssh(&key, "apps").ok().stdout.contains("web1"));
    let (status, v) = api_json(
        &d,
        &t,
        "POST",
        "/keys",
        Some(&json!({"name": "junk", "public_key": "ssh-rsa nope"})),
    );
    assert_eq!(status, 422, "{v}");
    let (status, v) = api_json(
        &d,
        &t,
        "POST",
        "/tokens",
        Some(&json!({"name": "made", "role": "viewer", "apps": ["web1"], "expires": "1d"})),
    );
    assert_eq!(status, 201, "{v}");
    let made = v["token"].as_str().unwrap().to_owned();
    assert_eq!(api_json(&d, &made, "GET", "/apps", None).0, 200);
    let (status, _) = api_json(&d, &t, "DELETE", "/tokens/made", None);
    assert_eq!(status, 200);
    assert_eq!(api(&d, Some(&made), "GET", "/apps", None).0, 401);
    assert_eq!(get("/status")["apps"][0]["name"], "web1");

    // Unknown endpoint, bad method, bad app name: JSON errors.
    let (status, v) = api_json(&d, &t, "GET", "/nope", None);
    assert_eq!((status, v["id"].as_str()), (404, Some("not_found")));
    let (status, v) = api_json(&d, &t, "PUT", "/apps", None);
    assert_eq!(
        (status, v["id"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, v) = api_json(&d, &t, "GET", "/apps/Bad..Name", None);
    assert_eq!((status, v["id"].as_str()), (422, Some("invalid_params")));
    // The OpenAPI document needs no token.
    let (status, doc, _) = api(&d, None, "GET", "/openapi.json", None);
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    // The audit log has every kind of change, with who and from where,
    // and never a value.
    let audit = d.ssh(&d.admin, "audit web1 -n 200 --json").ok();
    let entries: Value = serde_json::from_str(&audit.stdout).unwrap();
    let actions: Vec<(String, String, String)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["source"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (action, source, result) in [
        ("apps:create", "git-ssh", "ok"),
        ("push", "git-ssh", "ok"),
        ("config:set", "api", "ok"),
        ("config:unset", "api", "ok"),
        ("domains:add", "api", "ok"),
        ("domains:remove", "api", "ok"),
        ("ps:scale", "api", "ok"),
        ("ps:restart", "api", "ok"),
        ("rollback", "api", "ok"),
        ("rollback", "api", "failed"),
        ("ps:stop", "api", "ok"),
        ("ps:start", "api", "ok"),
        ("keys:grant", "api", "ok"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, s, r)| a == action && s == source && r == result),
            "no {action} via {source} ({result}) in {actions:?}"
        );
    }
    assert!(
        !audit.stdout.contains("\"hi\""),
        "a config value reached the audit log"
    );
    let e = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "config:set")
        .unwrap();
    assert_eq!(e["actor"], "ops");
    assert_eq!(e["actor_kind"], "token");
    assert_eq!(e["address"], "127.0.0.1");
    assert!(e["detail"].as_str().unwrap().contains("GREETING"));
    let (status, all) = api_json(&d, &t, "GET", "/audit?limit=500", None);
    assert_eq!(status, 200);
    for action in ["tokens:create", "tokens:revoke", "keys:add"] {
        assert!(
            all.as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action),
            "{action}"
        );
    }
}

#[test]
fn refused_changes_are_audited_and_others_see_only_their_apps() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create mine").ok();
    d.ssh(&d.admin, "apps:create theirs").ok();
    let viewer = token(&d, "v --role viewer --app mine");
    let (status, _) = api_json(
        &d,
        &viewer,
        "PATCH",
        "/apps/mine/config-vars",
        Some(&json!({"K": "secret-value"})),
    );
    assert_eq!(status, 403);
    d.ssh(&d.admin, "config:set theirs --no-restart X=1").ok();
    let (_, entries) = api_json(&d, &viewer, "GET", "/audit", None);
    let entries = entries.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "config:set" && e["result"] == "denied" && e["app"] == "mine"),
        "{entries:?}"
    );
    assert!(
        entries.iter().all(|e| e["app"] == "mine"),
        "a viewer sees only its apps: {entries:?}"
    );
    let text = d.ssh(&d.admin, "audit mine").ok();
    assert!(
        text.stdout.contains("denied") && text.stdout.contains("config:set"),
        "{text:#?}"
    );
    assert!(!text.stdout.contains("secret-value"));
    let (status, _) = api_json(&d, &viewer, "GET", "/audit?app=theirs", None);
    assert_eq!(status, 404);
}

/// git over HTTP with a token as the password, on the loopback listener
/// and through the proxy's control host.
#[test]
fn git_clone_and_push_over_http_with_a_token() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create web2").ok();
    let dev = token(&d, "laptop --role developer --app web2");
    let admin = token(&d, "admin-http --role admin");
    let viewer = token(&d, "viewer-http --role viewer --app web2");
    let repo = fixture_repo(&d, "procfile-app", "src");
    let url = |tok: &str| format!("http://x:{tok}@127.0.0.1:{}/web2.git", d.api_port);

    // No token, a wrong one, a viewer's: refused, nothing written.
    let no_auth = git_cmd(&repo)
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "push",
            &format!("http://127.0.0.1:{}/web2.git", d.api_port),
            "main",
        ])
        .output()
        .unwrap();
    assert!(!no_auth.status.success());
    let wrong = git_cmd(&repo)
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "push",
            &url("cyg_AAAAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            "main",
        ])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401")
            || String::from_utf8_lossy(&wrong.stderr).contains("Authentication failed"),
        "{wrong:?}"
    );
    let as_viewer = git_cmd(&repo)
        .args(["push", &url(&viewer), "main"])
        .output()
        .unwrap();
    assert!(!as_viewer.status.success());
    assert!(
        String::from_utf8_lossy(&as_viewer.stderr).contains("viewers can only read web2"),
        "{as_viewer:?}"
    );
    let releases = d.ssh(&d.admin, "releases web2 --json").ok();
    assert_eq!(releases.stdout.trim(), "[]", "nothing was deployed");
    assert!(d
        .ssh(&d.admin, "apps:info web2 --json")
        .ok()
        .stdout
        .contains("\"branches\": []"));

    // The developer's push deploys, with the same remote: lines as SSH.
    let out = git_cmd(&repo)
        .args(["push", &url(&dev), "main"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sha = head_sha(&repo);
    assert!(
        stderr.contains(&format!(
            "remote: -----> Received web2 (main {})",
            &sha[..7]
        )),
        "{stderr}"
    );
    assert!(stderr.contains("remote: -----> Released v1"), "{stderr}");
    let (status, body) = d.curl("web2.localhost", "/Procfile");
    assert_eq!(status, 200, "{body}");

    // Clone back, as a viewer (read is allowed), through the proxy's
    // control host this time.
    let clone = d.dir.path().join("clone");
    let via_proxy = format!("http://x:{viewer}@cygni.localhost:{}/web2.git", d.http_port);
    let out = git_cmd(d.dir.path())
        .args(["clone", "-q", &via_proxy, clone.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(head_sha(&clone), sha);

    // A second push over HTTP through the proxy, as the admin; branch
    // deletion stays refused.
    edit(
        &repo.join("Procfile"),
        "http.server",
        "http.server --bind 127.0.0.1",
    );
    commit_all(&repo, "bind");
    let via_proxy_admin = format!("http://x:{admin}@cygni.localhost:{}/web2.git", d.http_port);
    let out = git_cmd(&repo)
        .args(["push", &via_proxy_admin, "main"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("remote: -----> Released v2"));
    let out = git_cmd(&repo)
        .args(["push", &via_proxy_admin, ":main"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Audited as git over HTTP.
    let audit = d.ssh(&d.admin, "audit web2 --json").ok();
    let entries: Value = serde_json::from_str(&audit.stdout).unwrap();
    let pushes: Vec<&Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "push")
        .collect();
    assert!(
        pushes
            .iter()
            .any(|e| e["source"] == "git-http" && e["result"] == "ok" && e["actor"] == "laptop"),
        "{pushes:?}"
    );
    assert!(
        pushes
            .iter()
            .any(|e| e["result"] == "denied" && e["actor"] == "viewer-http"),
        "{pushes:?}"
    );
}

#[test]
fn a_flood_from_one_token_gets_429_with_retry_after() {
    let d = TestDaemon::start();
    let t = token(&d, "busy --role admin");
    let url = format!("http://127.0.0.1:{}/api/v1/status", d.api_port);
    let mut c = Command::new("curl");
    c.args(["-s", "-w", "%{http_code}\n", "-H"])
        .arg(format!("Authorization: Bearer {t}"));
    for _ in 0..200 {
        c.args(["-o", "/dev/null"]).arg(&url);
    }
    let out = c.output().unwrap();
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(codes.len(), 200);
    assert!(
        codes.iter().filter(|c| *c == "200").count() >= 100,
        "{codes:?}"
    );
    assert!(codes.iter().any(|c| c == "429"), "{codes:?}");
    let (status, _, head) = api(&d, Some(&t), "GET", "/status", None);
    if status == 429 {
        assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        api(&d, Some(&t), "GET", "/status", None).0,
        200,
        "the budget refills"
    );
}

/// A source tarball deploys through the same pipeline as a push; a bad
/// one fails the build and leaves the app serving.
#[test]
fn a_source_tarball_deploys_like_a_push() {
    let d = TestDaemon::start();
    let t = token(&d, "ci --role admin");
    d.ssh(&d.admin, "apps:create web3").ok();
    // A GitHub-style archive: one top-level directory.
    let parent = d.dir.path().join("tarball");
    copy_dir(&fixture("procfile-app"), &parent.join("web3-main"));
    let tgz = d.dir.path().join("source.tar.gz");
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(&tgz)
            .arg("-C")
            .arg(&parent)
            .arg("web3-main"),
    );
    let upload = |file: &std::path::Path| {
        let out = Command::new("curl")
            .args(["-s", "-m", "60", "-X", "POST", "-H"])
            .arg(format!("Authorization: Bearer {t}"))
            .args(["-H", "Content-Type: application/gzip", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!(
                "http://127.0.0.1:{}/api/v1/apps/web3/builds",
                d.api_port
            ))
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"], "pending", "{v}");
        v["id"].as_str().unwrap().to_owned()
    };
    let finished = |id: &str| {
        wait_for("the build to finish", Duration::from_secs(180), || {
            let (_, b) = api_json(&d, &t, "GET", &format!("/apps/web3/builds/{id}"), None);
            (b["status"] != "pending").then_some(b)
        })
    };
    let b = finished(&upload(&tgz));
    assert_eq!(b["status"], "succeeded", "{b}");
    assert_eq!(b["release"], 1, "{b}");
    let output: Vec<&str> = b["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        output
            .iter()
            .any(|l| l.starts_with("-----> Received web3 (main ")),
        "{output:?}"
    );
    assert!(
        output.iter().any(|l| l.contains("Released v1")),
        "{output:?}"
    );
    let (status, body) = d.curl("web3.localhost", "/Procfile");
    assert_eq!(status, 200, "{body}");
    // The upload is a commit on main, like a push.
    let info = d.ssh(&d.admin, "apps:info web3 --json").ok();
    let info: Value = serde_json::from_str(&info.stdout).unwrap();
    assert_eq!(info["branches"][0]["name"], "main", "{info}");

    // Not a tarball: the build fails with the reason; v1 still serves.
    let junk = d.dir.path().join("junk.tar.gz");
    std::fs::write(&junk, b"this is not gzip").unwrap();
    let b = finished(&upload(&junk));
    assert_eq!(b["status"], "failed", "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("not a readable .tar.gz"),
        "{b}"
    );
    assert_eq!(d.curl("web3.localhost", "/Procfile").0, 200);
    let (_, releases) = api_json(&d, &t, "GET", "/apps/web3/releases", None);
    assert_eq!(releases.as_array().unwrap().len(), 1);
    // An empty body, and a viewer, are refused before anything runs.
    let (status, _, _) = api(&d, Some(&t), "POST", "/apps/web3/builds", None);
    assert_eq!(status, 422);
    let viewer = token(&d, "v --role viewer --app web3");
    let (status, _, _) = api(
        &d,
        Some(&viewer),
        "POST",
        "/apps/web3/builds",
        Some(&json!("x")),
    );
    assert_eq!(status, 403);
}

/// The OpenAPI document against the running daemon: schemathesis finds
/// no 5xx and no response outside the schema.
#[test]
fn schemathesis_finds_no_server_error_and_no_schema_break() {
    let st = Command::new("schemathesis").arg("--version").output();
    if !st.is_ok_and(|o| o.status.success()) {
        skip_or_fail("schemathesis is not installed (pip install schemathesis)");
        return;
    }
    let d = TestDaemon::start();
    let t = token(&d, "fuzz --role admin");
    d.ssh(&d.admin, "apps:create demo").ok();
    let base = format!("http://127.0.0.1:{}/api/v1", d.api_port);
    let out = Command::new("timeout")
        .arg("600")
        .arg("schemathesis")
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["-u", &base, "-H"])
        .arg(format!("Authorization: Bearer {t}"))
        .args(["--rate-limit", "15/s", "-n", "5", "--generation-deterministic"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        ])
        // Revoking the run's own token or key would end the run early;
        // uploads are binary bodies schemathesis cannot generate.
        .args(["--exclude-operation-id", "revokeToken"])
        .args(["--exclude-operation-id", "removeKey"])
        .args(["--exclude-operation-id", "createBuild"])
        .current_dir(d.dir.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    assert!(
        !d.log().contains("panicked"),
        "the daemon panicked:\n{}",
        d.log()
    );
}

/// The control host serves /metrics to admin and viewer tokens, and the
/// health endpoints to anyone, as the metrics listener does.
#[test]
fn metrics_and_health_on_the_control_host() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create obs").ok();
    let viewer = token(&d, "prom --role viewer --app obs");
    let dev = token(&d, "dev --role developer --app obs");
    let get = |tok: Option<&str>, path: &str| {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-m",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            "Host: cygni.localhost",
        ]);
        if let Some(t) = tok {
            c.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        let out = c
            .arg(format!("http://127.0.0.1:{}{path}", d.http_port))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap(), body.to_owned())
    };
    let (code, body) = get(Some(&viewer), "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("# TYPE cygni_proxy_requests"), "{body}");
    assert_eq!(get(Some(&dev), "/metrics").0, 403);
    assert_eq!(get(None, "/metrics").0, 401);
    let (code, body) = get(None, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("sqlite"), "{body}");
    assert_eq!(get(None, "/healthz").0, 200);
}
