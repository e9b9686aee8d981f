//! Persistent storage (`storage`, `storage:mount`, `storage:unmount`), end
//! to end: a file an app writes under its storage is still there after a
//! redeploy, a restart and a rollback, on the local runtime (through
//! `$CYGNI_STORAGE_DATA`) and on the docker runtime (a bind mount, owned by
//! the image's user); bad input is refused with one line and changes
//! nothing; `apps:destroy` takes the storage only with the confirmation.
//!
//! The docker test needs an engine and the local images of
//! scripts/docker-test-setup.sh (nothing is pulled); without an engine it
//! says SKIPPED (and fails under CI=true).

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;

/// The boot lines the app served, in order.
fn boots(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| l.starts_with("boot "))
        .map(str::to_owned)
        .collect()
}

/// The boot lines the app serves once it shows at least `n` of them, the
/// last one `last`. (A restart may boot a surge instance as well.)
fn serves_boots(d: &TestDaemon, app: &str, n: usize, last: &str) -> Vec<String> {
    wait_for(
        &format!("{app} to show {n} boots, the last {last:?}"),
        Duration::from_secs(30),
        || {
            let (code, body) = d.curl(&host(app), "/");
            let seen = boots(&body);
            (code == 200 && seen.len() >= n && seen.last().map(String::as_str) == Some(last))
                .then_some(seen)
        },
    )
}

fn storage_json(d: &TestDaemon, app: &str) -> String {
    d.ssh(&d.admin, &format!("storage {app} --json"))
        .ok()
        .stdout
}

#[test]
fn bad_storage_commands_are_refused_and_change_nothing() {
    let d = TestDaemon::start();
    let repo = fixture_repo(&d, "procfile-app", "shop");
    push(&d, &repo, "shop").ok();
    let releases = d.ssh(&d.admin, "releases shop --json").ok().stdout;
    let out = d.ssh(&d.admin, "storage:mount shop data:/data").ok();
    assert!(
        out.stdout.contains("$CYGNI_STORAGE_DATA") && out.stdout.contains("next deploy or restart"),
        "{out:#?}"
    );
    let dir = d.data_dir.join("storage/shop/data");
    assert!(dir.is_dir(), "the storage directory is made at mount");
    std::fs::write(dir.join("keep.txt"), "precious").unwrap();
    let before = storage_json(&d, "shop");
    let listed: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(listed[0]["name"], "data");
    assert_eq!(listed[0]["path"], "/data");
    assert_eq!(listed[0]["env"], "CYGNI_STORAGE_DATA");
    assert_eq!(listed[0]["source"], "managed");

    let viewer = d.add_key("watcher", "viewer");
    d.ssh(&d.admin, "keys:grant watcher shop").ok();
    let stranger = d.add_key("stranger", "developer");
    let cases: &[(&Key, &str, &str)] = &[
        (&d.admin, "storage:mount shop data", "is not NAME:/path"),
        (
            &d.admin,
            "storage:mount shop Data:/x",
            "invalid storage name",
        ),
        (
            &d.admin,
            "storage:mount shop ../x:/x",
            "invalid storage name",
        ),
        (
            &d.admin,
            "storage:mount shop logs:relative",
            "must be absolute",
        ),
        (&d.admin, "storage:mount shop logs:/", "container's root"),
        (&d.admin, "storage:mount shop logs:/etc", "system directory"),
        (
            &d.admin,
            "storage:mount shop logs:/proc/self",
            "system directory",
        ),
        (
            &d.admin,
            "storage:mount shop logs:/usr/lib/x",
            "system directory",
        ),
        (&d.admin, "storage:mount shop logs:/app", "system directory"),
        (
            &d.admin,
            "storage:mount shop logs:/srv/../etc",
            "normalized",
        ),
        (&d.admin, "storage:mount shop logs:/srv//x", "normalized"),
        (&d.admin, "storage:mount shop 'logs:/srv/a b'", "A-Z, a-z"),
        (&d.admin, "storage:mount shop data:/other", "storage data"),
        (
            &d.admin,
            "storage:mount shop other:/data",
            "a mount at /data",
        ),
        (&d.admin, "storage:mount nope data:/data", "app not found"),
        (
            &d.admin,
            "storage:mount shop logs:/logs --host-path /tmp",
            "storage_host_paths",
        ),
        (
            &viewer,
            "storage:mount shop logs:/logs",
            "viewers can only read",
        ),
        (
            &viewer,
            "storage:unmount shop data:/data",
            "viewers can only read",
        ),
        (&stranger, "storage:mount shop logs:/logs", "app not found"),
        (&stranger, "storage shop", "app not found"),
        (
            &d.admin,
            "storage:unmount shop data:/elsewhere",
            "not found",
        ),
        (&d.admin, "storage:unmount shop other:/data", "not found"),
        (&d.admin, "storage:unmount shop data", "is not NAME:/path"),
        (&d.admin, "apps:destroy shop", "persistent storage (data)"),
        (
            &d.admin,
            "apps:destroy shop --confirm shoop",
            "persistent storage (data)",
        ),
    ];
    for (key, line, needle) in cases {
        let out = d.ssh(key, line).fails_with(needle);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{line}: {out:#?}");
        assert_eq!(
            storage_json(&d, "shop"),
            before,
            "{line} changed the mounts"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
            "precious",
            "{line} touched the files"
        );
    }
    // The running release, the repo and the app's state are as they were.
    let (code, body) = d.curl(&host("shop"), "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from procfile-app"), "{body}");
    assert_eq!(
        d.ssh(&d.admin, "releases shop --json").ok().stdout,
        releases
    );
    let ls = d
        .git(&d.admin, &repo, &["ls-remote", &d.remote("shop")])
        .ok();
    assert!(ls.stdout.contains(&head_sha(&repo)), "{ls:#?}");
    // A viewer reads; host paths are for admins' eyes only.
    d.ssh(&viewer, "storage shop").ok();

    // Unmounting keeps the files; mounting again finds them.
    let out = d.ssh(&d.admin, "storage:unmount shop data:/data").ok();
    assert!(out.stdout.contains("files are kept"), "{out:#?}");
    assert_eq!(storage_json(&d, "shop").trim(), "[]");
    assert!(dir.join("keep.txt").is_file());
    d.ssh(&d.admin, "storage:mount shop data:/data").ok();
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
        "precious"
    );

    // With the confirmation, the storage goes with the app, and it says so.
    let out = d.ssh(&d.admin, "apps:destroy shop --confirm shop").ok();
    assert!(
        out.stdout.contains("and its persistent storage (data)"),
        "{out:#?}"
    );
    assert!(!d.data_dir.join("storage/shop").exists());
}

#[test]
fn admin_host_paths_only_under_the_allowed_directories() {
    let shared = tempfile::tempdir().unwrap();
    let allowed = shared.path().join("allowed");
    std::fs::create_dir_all(allowed.join("media")).unwrap();
    let config = shared.path().join("cygni.toml");
    std::fs::write(
        &config,
        format!(
            "storage_host_paths = [{:?}]\n",
            allowed.display().to_string()
        ),
    )
    .unwrap();
    let d = TestDaemon::start_with(&["--config", config.to_str().unwrap()]);
    d.ssh(&d.admin, "apps:create shop").ok();
    let dev = d.add_key("dev", "developer");
    d.ssh(&d.admin, "keys:grant dev shop").ok();
    let media = allowed.join("media").display().to_string();
    d.ssh(
        &dev,
        &format!("storage:mount shop media:/media --host-path {media}"),
    )
    .fails_with("only admins can mount host directories");
    let outside = shared.path().display().to_string();
    d.ssh(
        &d.admin,
        &format!("storage:mount shop media:/media --host-path {outside}"),
    )
    .fails_with("not under a directory in storage_host_paths");
    d.ssh(
        &d.admin,
        &format!("storage:mount shop media:/media --host-path {media}/../.."),
    )
    .fails_with("not under a directory in storage_host_paths");
    assert_eq!(storage_json(&d, "shop").trim(), "[]");
    d.ssh(
        &d.admin,
        &format!("storage:mount shop media:/media --host-path {media}"),
    )
    .ok();
    let listed: serde_json::Value = serde_json::from_str(&storage_json(&d, "shop")).unwrap();
    assert_eq!(listed[0]["source"], "host");
    assert_eq!(listed[0]["host_path"], media.as_str());
    // A developer sees the mount, not where it is on the host.
    let seen = d.ssh(&dev, "storage shop --json").ok().stdout;
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen[0]["source"], "host");
    assert!(seen[0].get("host_path").is_none(), "{seen}");
    // Destroying the app unmounts an admin's directory; it never removes it.
    d.ssh(&d.admin, "apps:destroy shop --confirm shop").ok();
    assert!(allowed.join("media").is_dir());
}

#[test]
fn local_app_keeps_its_storage_across_deploys_restarts_and_rollbacks() {
    let d = TestDaemon::start();
    let app = "keeper";
    d.ssh(&d.admin, &format!("apps:create {app}")).ok();
    d.ssh(&d.admin, &format!("storage:mount {app} data:/data"))
        .ok();
    let repo = fixture_repo(&d, "storage-app", app);
    push(&d, &repo, app).ok();
    assert_eq!(serves_boots(&d, app, 1, "boot v1"), ["boot v1"]);
    // On the local runtime the variable names the directory itself.
    let dir = d.data_dir.join("storage").join(app).join("data");
    let (_, body) = d.curl(&host(app), "/");
    assert!(
        body.contains(&format!("storage: {}", dir.display())),
        "{body}"
    );

    edit(&repo.join("app.py"), "boot v1", "boot v2");
    commit_all(&repo, "v2");
    push(&d, &repo, app).ok();
    assert_eq!(serves_boots(&d, app, 2, "boot v2"), ["boot v1", "boot v2"]);

    d.ssh(&d.admin, &format!("ps:restart {app}")).ok();
    let seen = serves_boots(&d, app, 3, "boot v2");
    assert_eq!(seen[..2], ["boot v1", "boot v2"]);

    d.ssh(&d.admin, &format!("rollback {app} v1")).ok();
    let after = serves_boots(&d, app, seen.len() + 1, "boot v1");
    assert_eq!(
        after[..seen.len()],
        seen[..],
        "nothing written before is lost"
    );
    let on_disk = std::fs::read_to_string(dir.join("boots.txt")).unwrap();
    assert_eq!(on_disk.lines().count(), after.len(), "{on_disk}");
    // One-off commands get the variable too.
    let out = d
        .ssh(
            &d.admin,
            &format!("run {app} -- sh -c 'cat \"$CYGNI_STORAGE_DATA/boots.txt\"'"),
        )
        .ok();
    assert_eq!(out.stdout, on_disk, "{out:#?}");
}

// ---- docker ------------------------------------------------------------

#[test]
fn docker_app_keeps_its_storage_across_redeploys_and_rollbacks() {
    if !engine_ready() {
        return;
    }
    let app = "dkkeeper";
    let _cleanup = DockerCleanup::new(&[app]);
    let d = TestDaemon::start_with(&["--runtime", "docker"]);
    d.ssh(&d.admin, &format!("apps:create {app}")).ok();
    d.ssh(&d.admin, &format!("storage:mount {app} data:/data"))
        .ok();
    let repo = fixture_repo(&d, "storage-docker-app", app);
    push(&d, &repo, app).ok();
    assert_eq!(serves_boots(&d, app, 1, "boot v1"), ["boot v1"]);
    // In a container the variable names the mount path.
    let (_, body) = d.curl(&host(app), "/");
    assert!(body.contains("storage: /data"), "{body}");
    let dir = d.data_dir.join("storage").join(app).join("data");
    // Given to the image's user (10002), who wrote the file.
    let meta = std::fs::metadata(dir.join("boots.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (10002, 10002));

    edit(&repo.join("Dockerfile"), "boot v1", "boot v2");
    commit_all(&repo, "v2");
    push(&d, &repo, app).ok();
    assert_eq!(serves_boots(&d, app, 2, "boot v2"), ["boot v1", "boot v2"]);

    d.ssh(&d.admin, &format!("rollback {app} v1")).ok();
    assert_eq!(
        serves_boots(&d, app, 3, "boot v1"),
        ["boot v1", "boot v2", "boot v1"]
    );
    let on_disk = std::fs::read_to_string(dir.join("boots.txt")).unwrap();
    assert_eq!(on_disk, "boot v1\nboot v2\nboot v1\n");
    // One-off commands see the storage too.
    let out = d
        .ssh(&d.admin, &format!("run {app} -- cat /data/boots.txt"))
        .ok();
    assert_eq!(out.stdout, on_disk, "{out:#?}");
    drop(d);
}
