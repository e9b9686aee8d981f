//! The core, end to end: a real daemon, the real OpenSSH client and git.

mod common;

use std::process::Command;

use common::*;

/// The smallest deployable app: a Procfile and a page.
const APP: &[(&str, &str)] = &[
    ("Procfile", "web: python3 -m http.server $PORT\n"),
    ("index.html", "hello\n"),
];

#[test]
fn create_push_and_list_apps() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create shop").ok();

    let repo = make_repo(&d.dir.path().join("src"), APP);
    let sha = head_sha(&repo);
    let push = d
        .git(&d.admin, &repo, &["push", &d.remote("shop"), "main"])
        .ok();
    assert!(
        push.stderr.contains(&format!(
            "remote: -----> Received shop (main {})",
            &sha[..7]
        )),
        "hook line missing: {push:#?}"
    );

    let ls = d
        .git(&d.admin, &repo, &["ls-remote", &d.remote("shop.git")])
        .ok();
    assert!(
        ls.stdout.contains(&format!("{sha}\trefs/heads/main")),
        "{ls:#?}"
    );

    // The '/APP.git' form works too, and protocol v2 clones.
    let clone_dir = d.dir.path().join("clone");
    let remote = format!("ssh://cygni@127.0.0.1:{}/shop.git", d.ssh_port);
    d.git(
        &d.admin,
        d.dir.path(),
        &[
            "-c",
            "protocol.version=2",
            "clone",
            "-q",
            &remote,
            clone_dir.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(clone_dir.join("index.html")).unwrap(),
        "hello\n"
    );

    let text = d.ssh(&d.admin, "apps").ok();
    assert!(text.stdout.contains("shop"), "{text:#?}");
    let json = d.ssh(&d.admin, "apps --json").ok();
    let apps: serde_json::Value = serde_json::from_str(&json.stdout).expect("valid JSON");
    assert!(
        apps.as_array().unwrap().iter().any(|a| a["name"] == "shop"),
        "{apps}"
    );
}

#[test]
fn admin_first_push_creates_the_app_and_other_branches_are_stored() {
    let d = TestDaemon::start();
    let repo = make_repo(&d.dir.path().join("src"), APP);
    let push = d
        .git(&d.admin, &repo, &["push", &d.remote("fresh"), "main"])
        .ok();
    assert!(push.stderr.contains("Created app fresh"), "{push:#?}");
    d.ssh(&d.admin, "apps:info fresh").ok();

    // Deleting a branch is refused (by the pre-receive hook).
    let del = d.git(&d.admin, &repo, &["push", &d.remote("fresh"), ":main"]);
    assert_ne!(del.code, 0, "{del:#?}");
    let ls = d
        .git(&d.admin, &repo, &["ls-remote", &d.remote("fresh")])
        .ok();
    assert!(ls.stdout.contains("refs/heads/main"), "branch survived");
}

#[test]
fn refusals_are_clear_and_write_nothing() {
    let d = TestDaemon::start();
    let stranger = d.new_key("stranger");
    let deployer = d.add_key("ci", "deployer");
    let repos = d.data_dir.join("repos");
    let repos_before = list_dir(&repos);

    // An unknown key.
    d.ssh(&stranger, "apps")
        .fails_with("Permission denied (publickey)");

    // A path-like app name.
    d.ssh(&d.admin, "apps:create ../x")
        .fails_with("invalid app name \"../x\"");

    // A push to a path outside the repos dir.
    let repo = make_repo(&d.dir.path().join("src"), APP);
    let evil = format!("ssh://cygni@127.0.0.1:{}/../../etc", d.ssh_port);
    d.git(&d.admin, &repo, &["push", &evil, "main"])
        .fails_with("invalid repository");

    // Option injection through the repository argument.
    let out = d
        .ssh_command(&d.admin, &[])
        .arg("git-receive-pack '--upload-pack=touch x'")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("invalid repository"), "{stderr}");
    assert!(!d.dir.path().join("x").exists());
    assert!(!d.data_dir.join("x").exists());

    // git-upload-archive is refused.
    d.ssh(&d.admin, "git-upload-archive 'shop'")
        .fails_with("not supported");

    // Deployers cannot create apps, and cannot see ungranted ones.
    d.ssh(&deployer, "apps:create mine")
        .fails_with("only admins can create apps");
    d.ssh(&d.admin, "apps:create secret").ok();
    d.ssh(&deployer, "apps:info secret")
        .fails_with("app not found");
    d.ssh(&deployer, "apps:info nosuchapp")
        .fails_with("app not found");
    d.git(&deployer, &repo, &["push", &d.remote("secret"), "main"])
        .fails_with("app not found");
    d.git(&deployer, &repo, &["push", &d.remote("newone"), "main"])
        .fails_with("app not found");

    // A private key is not a public key.
    let priv_text = std::fs::read(&stranger.private).unwrap();
    d.ssh_stdin(&d.admin, "keys:add leaked", &priv_text)
        .fails_with("that is a private key");
    // Keys with options, and weak keys.
    let with_opts = format!("command=\"id\" {}", stranger.public_text());
    d.ssh_stdin(&d.admin, "keys:add opts", with_opts.as_bytes())
        .fails_with("key options");
    let weak = Key::generate_typed(d.dir.path(), "weak", &["-t", "rsa", "-b", "1024"]);
    d.ssh_stdin(&d.admin, "keys:add weak", weak.public_text().as_bytes())
        .fails_with("1024-bit RSA keys are too weak");

    // Nothing was written: only the one app made on purpose exists.
    let keys = d.ssh(&d.admin, "keys --json").ok();
    let keys: serde_json::Value = serde_json::from_str(&keys.stdout).unwrap();
    let names: Vec<_> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["admin", "ci"], "no key was added");
    let mut after = list_dir(&repos);
    after.retain(|n| n != "secret.git");
    assert_eq!(after, repos_before, "no repo was created by a refusal");
    let apps = d.ssh(&d.admin, "apps --json").ok();
    let apps: serde_json::Value = serde_json::from_str(&apps.stdout).unwrap();
    assert_eq!(apps.as_array().unwrap().len(), 1, "{apps}");
}

#[test]
fn deployer_with_a_grant_can_push_only_there() {
    let d = TestDaemon::start();
    let deployer = d.add_key("ci", "deployer");
    d.ssh(&d.admin, "apps:create shop").ok();
    d.ssh(&d.admin, "apps:create blog").ok();
    d.ssh(&d.admin, "keys:grant ci shop").ok();

    let repo = make_repo(&d.dir.path().join("src"), APP);
    d.git(&deployer, &repo, &["push", &d.remote("shop"), "main"])
        .ok();
    d.git(&deployer, &repo, &["push", &d.remote("blog"), "main"])
        .fails_with("app not found");
    let apps = d.ssh(&deployer, "apps").ok();
    assert!(apps.stdout.contains("shop") && !apps.stdout.contains("blog"));

    d.ssh(&d.admin, "keys:revoke ci shop").ok();
    d.ssh(&deployer, "apps:info shop")
        .fails_with("app not found");
}

/// Regression: identity must come from the key that signed, not from a key
/// that was merely offered. The client offers the admin's public key (it
/// has no private half), the server accepts the offer, and the client then
/// signs with the deployer key: the session must have deployer rights only.
#[test]
fn auth_bypass_regression_offered_key_grants_nothing() {
    let d = TestDaemon::start();
    let deployer = d.add_key("ci", "deployer");
    let victim_dir = d.dir.path().join("victim");
    std::fs::create_dir(&victim_dir).unwrap();
    let offered = victim_dir.join("admin-offered.pub");
    std::fs::copy(&d.admin.public, &offered).unwrap();

    let out = Command::new("ssh")
        .arg("-v")
        .arg("-p")
        .arg(d.ssh_port.to_string())
        .arg("-i")
        .arg(&offered)
        .arg("-i")
        .arg(&deployer.private)
        .args(ssh_opts())
        .args(["-o", "LogLevel=DEBUG1"])
        .arg("cygni@127.0.0.1")
        .arg("apps:create stolen")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The scenario really happened: the admin key was offered and accepted
    // for signing, and then the deployer key authenticated.
    assert!(
        stderr.contains("Server accepts key: ") && stderr.contains("admin-offered.pub"),
        "the admin key was not offered: {stderr}"
    );
    assert!(
        stderr.contains("Authenticated to"),
        "did not log in: {stderr}"
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("only admins can create apps"), "{stderr}");
    d.ssh(&d.admin, "apps:info stolen")
        .fails_with("app not found");
}

#[test]
fn restart_keeps_apps_keys_repos_and_host_key() {
    let mut d = TestDaemon::start();
    let deployer = d.add_key("ci", "deployer");
    d.ssh(&d.admin, "apps:create shop").ok();
    d.ssh(&d.admin, "keys:grant ci shop").ok();
    let repo = make_repo(&d.dir.path().join("src"), APP);
    d.git(&d.admin, &repo, &["push", &d.remote("shop"), "main"])
        .ok();
    let sha = head_sha(&repo);
    let fingerprint = d.host_fingerprint.clone();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");

    d.restart();

    assert_eq!(d.host_fingerprint, fingerprint, "host key changed");
    assert!(d.ssh(&d.admin, "apps").ok().stdout.contains("shop"));
    let keys = d.ssh(&d.admin, "keys").ok();
    assert!(keys.stdout.contains("ci") && keys.stdout.contains("shop"));
    let ls = d
        .git(&deployer, &repo, &["ls-remote", &d.remote("shop")])
        .ok();
    assert!(ls.stdout.contains(&sha), "{ls:#?}");
}

#[test]
fn commands_help_version_and_usage_errors() {
    let d = TestDaemon::start();
    let help = d.ssh(&d.admin, "help").ok();
    for cmd in ["apps:create", "apps:destroy", "keys:add", "keys:grant"] {
        assert!(help.stdout.contains(cmd), "{cmd} missing: {}", help.stdout);
    }
    let usage = d.ssh(&d.admin, "help apps:destroy").ok();
    assert!(usage.stdout.contains("--confirm"), "{usage:#?}");
    let v = d.ssh(&d.admin, "version").ok();
    assert!(v.stdout.starts_with("cygni "), "{v:#?}");

    let bad = d.ssh(&d.admin, "frobnicate");
    assert_eq!(bad.code, 2);
    assert_eq!(bad.stderr.lines().count(), 1, "one line: {bad:#?}");

    // An interactive shell is refused with a hint.
    let out = d
        .ssh_command(&d.admin, &["-T"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no shell"));
}

#[test]
fn destroy_needs_confirmation() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create shop").ok();
    d.ssh(&d.admin, "apps:destroy shop")
        .fails_with("--confirm shop");
    d.ssh(&d.admin, "apps:destroy shop --confirm blog")
        .fails_with("--confirm shop");
    assert!(d.data_dir.join("repos/shop.git").exists());
    d.ssh(&d.admin, "apps:destroy shop --confirm shop").ok();
    assert!(!d.data_dir.join("repos/shop.git").exists());
    d.ssh(&d.admin, "apps:info shop")
        .fails_with("app not found");
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_cygni"))
        .args(["serve", "--data-dir", "/tmp/unused", "--runtime", "podman"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("runtime"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

fn list_dir(p: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
