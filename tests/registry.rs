//! Cygni's own image registry, end to end: a real daemon on the docker
//! runtime with `--registry-listen 127.0.0.1:0`, a real push, and real
//! clients (skopeo, docker, curl) pulling what it published.
//!
//! Nothing is downloaded: the app is `FROM cygni-base:test`, a local image
//! made by scripts/docker-test-setup.sh. Without an engine or skopeo each
//! test says SKIPPED (and fails under CI=true). Docker and skopeo get a
//! private config dir, so no credential lands in the host's.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// An engine with the test images (see `common::engine_ready`), and skopeo.
fn engine_and_skopeo() -> bool {
    if !common::engine_ready() {
        return false;
    }
    let skopeo = Command::new("skopeo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !skopeo {
        skip_or_fail("skopeo is not installed (apt-get install skopeo)");
    }
    skopeo
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A daemon on the docker runtime with the registry on, and `config` as
/// its config file (in the dir returned, to keep while the daemon runs).
fn registry_daemon_with(config: &str) -> (TestDaemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cygni.toml");
    std::fs::write(&file, config).unwrap();
    let d = TestDaemon::start_with(&[
        "--runtime",
        "docker",
        "--registry-listen",
        "127.0.0.1:0",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert_ne!(d.registry_port, 0, "no registry line printed:\n{}", d.log());
    (d, dir)
}

/// How many blobs the store holds.
fn blob_count(d: &TestDaemon) -> usize {
    std::fs::read_dir(d.data_dir.join("registry/blobs/sha256"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// `cygni:PASSWORD`, as the operator reads it from the data dir.
fn credential(d: &TestDaemon) -> String {
    std::fs::read_to_string(d.data_dir.join("registry-credential"))
        .expect("the registry credential file")
        .trim()
        .to_owned()
}

/// A status, the response headers (lowercased names) and the body.
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first OCI error code of the body.
    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// `curl -i` against the registry; `args` go before the URL.
fn reg_curl(d: &TestDaemon, args: &[&str], path: &str) -> Reply {
    let out = Command::new("curl")
        .args(["-s", "-i", "-m", "20"])
        .args(args)
        .arg(format!("http://127.0.0.1:{}{path}", d.registry_port))
        .output()
        .expect("run curl");
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body,
    }
}

/// skopeo with no auth file of the host's in play.
fn skopeo(d: &TestDaemon, args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .env("REGISTRY_AUTH_FILE", d.dir.path().join("skopeo-auth.json"))
        .env("DOCKER_CONFIG", d.dir.path().join("skopeo-docker"))
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo")
}

/// docker with a private config dir (its logins land there).
fn docker_as(config: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    use std::io::Write;
    let mut child = Command::new("docker")
        .env("DOCKER_CONFIG", config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run docker");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    let o = child.wait_with_output().expect("docker output");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// `releases APP --json`: version → image_digest.
fn release_digests(d: &TestDaemon, app: &str) -> BTreeMap<u64, Option<String>> {
    let out = d.ssh(&d.admin, &format!("releases {app} --json")).ok();
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("releases JSON");
    list.as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["version"].as_u64().expect("version"),
                r["image_digest"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every file under `dir` with its size, and index.json's bytes: what a
/// refused push must leave as it was.
fn snapshot(dir: &Path) -> (BTreeMap<PathBuf, u64>, Vec<u8>) {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        for e in std::fs::read_dir(dir).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p, e.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, &mut files);
    (
        files,
        std::fs::read(dir.join("index.json")).expect("index.json"),
    )
}

const ZERO: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn published_images_are_pulled_by_real_clients_with_the_credential_only() {
    if !engine_and_skopeo() {
        return;
    }
    let app = "regweb";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = registry_daemon_with("");
    let port = d.registry_port;
    let cred = credential(&d);
    let repo = fixture_repo(&d, "dockerfile-app", app);

    let out = push(&d, &repo, app).ok();
    assert!(
        out.stderr
            .contains("Publishing cygni/regweb:v1 to the registry as regweb:v1"),
        "{out:#?}"
    );
    let digests = release_digests(&d, app);
    let v1 = digests[&1].clone().expect("v1 has an image digest");
    assert!(v1.starts_with("sha256:") && v1.len() == 71, "{v1}");
    let (code, body) = d.curl(&host(app), "/");
    assert_eq!(code, 200, "{body}");
    // apps:info shows the reference a cluster pulls.
    let info = d.ssh(&d.admin, &format!("apps:info {app}")).ok();
    assert!(
        info.stdout
            .contains(&format!("127.0.0.1:{port}/{app}@{v1}")),
        "{info:#?}"
    );

    // skopeo inspect, by tag: the digest releases --json reports.
    let image = format!("docker://127.0.0.1:{port}/{app}:v1");
    let o = skopeo(
        &d,
        &["inspect", "--creds", &cred, "--tls-verify=false", &image],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let inspected: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect JSON");
    assert_eq!(inspected["Digest"], v1.as_str(), "{inspected}");

    // skopeo copy into a directory: the manifest hashes to that digest,
    // and every blob to its name.
    let copy = d.dir.path().join("copied");
    let o = skopeo(
        &d,
        &[
            "copy",
            "--src-creds",
            &cred,
            "--src-tls-verify=false",
            &format!("docker://127.0.0.1:{port}/{app}@{v1}"),
            &format!("dir:{}", copy.display()),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&copy.join("manifest.json"))),
        v1
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("manifest.json")).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().expect("layers");
    assert!(!layers.is_empty(), "{manifest}");
    for blob in layers.iter().chain([&manifest["config"]]) {
        let digest = blob["digest"].as_str().expect("digest");
        let hex = digest.trim_start_matches("sha256:");
        assert_eq!(sha256_hex(&copy.join(hex)), hex, "{digest}");
    }

    // docker pull by digest, after docker login: the image the engine built.
    let docker_config = d.dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let registry = format!("127.0.0.1:{port}");
    let password = cred.split_once(':').unwrap().1;
    let by_digest = format!("{registry}/{app}@{v1}");
    // Without the login, the pull is refused.
    let refused = docker_as(&docker_config, &["pull", &by_digest], None);
    assert_ne!(refused.code, 0, "{refused:#?}");
    docker_as(
        &docker_config,
        &[
            "login",
            &registry,
            "--username",
            "cygni",
            "--password-stdin",
        ],
        Some(password),
    )
    .ok();
    docker_as(&docker_config, &["pull", &by_digest], None).ok();
    let pulled_id = docker(&["image", "inspect", "--format", "{{.Id}}", &by_digest]);
    let built_id = docker(&["image", "inspect", "--format", "{{.Id}}", "cygni/regweb:v1"]);
    assert!(
        !pulled_id.is_empty() && pulled_id == built_id,
        "{pulled_id} vs {built_id}"
    );
    let repo_digests = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &by_digest,
    ]);
    assert!(repo_digests.contains(&by_digest), "{repo_digests}");
    docker(&["rmi", &by_digest]);

    // The endpoint itself: /v2/, HEAD and GET, digests and lengths.
    let v2 = reg_curl(&d, &["-u", &cred], "/v2/");
    assert_eq!(v2.status, 200, "{}", v2.text());
    assert_eq!(
        v2.headers["docker-distribution-api-version"],
        "registry/2.0"
    );
    let m = reg_curl(&d, &["-u", &cred], &format!("/v2/{app}/manifests/v1"));
    assert_eq!(m.status, 200);
    assert_eq!(m.headers["docker-content-digest"], v1);
    assert_eq!(
        m.headers["content-type"],
        manifest["mediaType"].as_str().unwrap()
    );
    assert_eq!(m.headers["content-length"], m.body.len().to_string());
    let head = reg_curl(
        &d,
        &["-u", &cred, "-I"],
        &format!("/v2/{app}/manifests/{v1}"),
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], m.body.len().to_string());
    assert!(head.body.is_empty());

    // Range on a blob: 206 with the right bytes; past the end, 416.
    let layer = &layers[0];
    let (ldigest, lsize) = (
        layer["digest"].as_str().unwrap(),
        layer["size"].as_u64().unwrap(),
    );
    let on_disk = std::fs::read(copy.join(ldigest.trim_start_matches("sha256:"))).unwrap();
    let part = reg_curl(
        &d,
        &["-u", &cred, "-r", "10-29"],
        &format!("/v2/{app}/blobs/{ldigest}"),
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, on_disk[10..30]);
    assert_eq!(
        part.headers["content-range"],
        format!("bytes 10-29/{lsize}")
    );
    let whole = reg_curl(
        &d,
        &["-u", &cred, "-I"],
        &format!("/v2/{app}/blobs/{ldigest}"),
    );
    assert_eq!(whole.status, 200);
    assert_eq!(whole.headers["content-length"], lsize.to_string());
    assert_eq!(whole.headers["docker-content-digest"], ldigest);
    let past = reg_curl(
        &d,
        &["-u", &cred, "-r", &format!("{lsize}-")],
        &format!("/v2/{app}/blobs/{ldigest}"),
    );
    assert_eq!(past.status, 416);
    assert_eq!(past.headers["content-range"], format!("bytes */{lsize}"));

    // Unknown digests, tags and names: 404 with the OCI code.
    for (path, code) in [
        (format!("/v2/{app}/manifests/{ZERO}"), "MANIFEST_UNKNOWN"),
        (format!("/v2/{app}/manifests/v99"), "MANIFEST_UNKNOWN"),
        (format!("/v2/{app}/blobs/{ZERO}"), "BLOB_UNKNOWN"),
        (
            format!("/v2/{app}/blobs/sha256:..%2F..%2Findex.json"),
            "BLOB_UNKNOWN",
        ),
        ("/v2/nosuchapp/manifests/v1".to_owned(), "NAME_UNKNOWN"),
        (format!("/v2/cygni/{app}/manifests/v1"), "NAME_UNKNOWN"),
        ("/v2/Bad_Name/manifests/v1".to_owned(), "NAME_UNKNOWN"),
    ] {
        let r = reg_curl(&d, &["-u", &cred], &path);
        assert_eq!(
            (r.status, r.code()),
            (404, code.to_owned()),
            "{path}: {}",
            r.text()
        );
    }
    let o = skopeo(
        &d,
        &[
            "inspect",
            "--creds",
            &cred,
            "--tls-verify=false",
            &format!("docker://127.0.0.1:{port}/{app}@{ZERO}"),
        ],
    );
    assert!(!o.status.success());

    // Without the credential (or with a wrong one), nothing is served.
    for args in [
        vec![],
        vec!["-u", "cygni:wrong-password"],
        vec!["-u", "admin:x"],
    ] {
        for path in [
            "/v2/".to_owned(),
            format!("/v2/{app}/manifests/v1"),
            format!("/v2/{app}/blobs/{ldigest}"),
        ] {
            let r = reg_curl(&d, &args, &path);
            assert_eq!(r.status, 401, "{args:?} {path}");
            assert_eq!(r.headers["www-authenticate"], "Basic realm=\"cygni\"");
            assert_eq!(r.code(), "UNAUTHORIZED");
        }
    }
    let o = skopeo(&d, &["inspect", "--no-creds", "--tls-verify=false", &image]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(err.contains("401") || err.contains("unauthorized"), "{err}");

    // Pushes are refused, and nothing is written.
    let store = d.data_dir.join("registry");
    let before = snapshot(&store);
    for target in [
        format!("{app}:pushed"),
        "newapp:v1".to_owned(),
        format!("{app}:v1"),
    ] {
        let o = skopeo(
            &d,
            &[
                "copy",
                "--dest-creds",
                &cred,
                "--dest-tls-verify=false",
                &format!("dir:{}", copy.display()),
                &format!("docker://127.0.0.1:{port}/{target}"),
            ],
        );
        assert!(!o.status.success(), "a push to {target} succeeded");
    }
    for (method, path) in [
        ("POST", format!("/v2/{app}/blobs/uploads/")),
        ("PUT", format!("/v2/{app}/manifests/v1")),
        ("PATCH", format!("/v2/{app}/blobs/uploads/x")),
        ("DELETE", format!("/v2/{app}/manifests/{v1}")),
        ("DELETE", format!("/v2/{app}/blobs/{ldigest}")),
    ] {
        let r = reg_curl(
            &d,
            &["-u", &cred, "-X", method, "--data-binary", "{}"],
            &path,
        );
        assert_eq!(
            (r.status, r.code()),
            (405, "UNSUPPORTED".to_owned()),
            "{method} {path}"
        );
    }
    assert_eq!(snapshot(&store), before, "a refused push changed the store");
    let again = skopeo(
        &d,
        &["inspect", "--creds", &cred, "--tls-verify=false", &image],
    );
    assert!(again.status.success());

    // A second deploy is a second image; v1 stays pullable by its digest.
    edit(
        &repo.join("index.html"),
        "hello from dockerfile-app",
        "hello from v2",
    );
    commit_all(&repo, "v2");
    push(&d, &repo, app).ok();
    let digests = release_digests(&d, app);
    let v2 = digests[&2].clone().expect("v2 has an image digest");
    assert_ne!(v1, v2);
    let tags = reg_curl(&d, &["-u", &cred], &format!("/v2/{app}/tags/list"));
    let tags: serde_json::Value = serde_json::from_slice(&tags.body).unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1", "v2"]));
    let m1 = reg_curl(
        &d,
        &["-u", &cred, "-I"],
        &format!("/v2/{app}/manifests/{v1}"),
    );
    assert_eq!(m1.status, 200);
    // A config release runs v2's image: same digest, no new tag.
    d.ssh(&d.admin, &format!("config:set {app} GREETING=hi"))
        .ok();
    let digests = release_digests(&d, app);
    assert_eq!(digests[&3].as_deref(), Some(v2.as_str()));
}

#[test]
fn a_publish_failure_fails_the_deploy_and_the_running_release_keeps_serving() {
    if !engine_and_skopeo() {
        return;
    }
    let app = "regfail";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = registry_daemon_with("");
    let repo = fixture_repo(&d, "dockerfile-app", app);
    push(&d, &repo, app).ok();
    let good = head_sha(&repo);
    let v1 = release_digests(&d, app)[&1].clone().expect("v1 published");

    // The store's staging dir becomes a file: the next publish cannot write.
    let tmp = d.data_dir.join("registry/tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, "in the way").unwrap();
    edit(
        &repo.join("index.html"),
        "hello from dockerfile-app",
        "hello from v2",
    );
    commit_all(&repo, "v2");
    let out = assert_push_refused(
        &d,
        &repo,
        app,
        &good,
        "publish failed: cannot store the image in Cygni's registry",
        "hello from dockerfile-app",
    );
    assert!(
        !out.stderr.contains(&d.data_dir.display().to_string()),
        "{out:#?}"
    );
    let list = d.ssh(&d.admin, &format!("releases {app} --json")).ok();
    let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list[0]["status"], "failed", "{list}");
    assert_eq!(list[0]["failed_stage"], "publish", "{list}");
    assert_eq!(list[0]["image_digest"], serde_json::Value::Null);
    assert_eq!(list[1]["status"], "live");
    assert_eq!(list[1]["image_digest"], v1.as_str());

    // Fixed, the same push goes through and is published.
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    push(&d, &repo, app).ok();
    let digests = release_digests(&d, app);
    let v3 = digests[&3].clone().expect("v3 published");
    assert_ne!(v3, v1);
    let (code, body) = d.curl(&host(app), "/");
    assert_eq!(code, 200);
    assert!(body.contains("hello from v2"), "{body}");

    // A crash leaves a half-written file in tmp/: the next start removes
    // it, keeps the credential and serves the same digests.
    let cred = credential(&d);
    std::fs::write(d.data_dir.join("registry/tmp/w-half"), "half a blob").unwrap();
    let mut d = d;
    d.crash_and_restart();
    assert_eq!(credential(&d), cred);
    assert!(!d.data_dir.join("registry/tmp/w-half").exists());
    for (tag, digest) in [("v1", &v1), ("v3", &v3)] {
        let r = reg_curl(
            &d,
            &["-u", &cred, "-I"],
            &format!("/v2/{app}/manifests/{tag}"),
        );
        assert_eq!(r.status, 200, "{tag}");
        assert_eq!(&r.headers["docker-content-digest"], digest);
    }
    // The failed v2 never got a tag.
    let r = reg_curl(&d, &["-u", &cred], &format!("/v2/{app}/manifests/v2"));
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
}

#[test]
fn images_of_pruned_releases_and_destroyed_apps_are_collected() {
    if !engine_and_skopeo() {
        return;
    }
    let app = "reggc";
    let _cleanup = DockerCleanup::new(&[app]);
    let (d, _config) = registry_daemon_with("keep_releases = 1\n");
    let cred = credential(&d);
    let repo = fixture_repo(&d, "dockerfile-app", app);
    push(&d, &repo, app).ok();
    let v1 = release_digests(&d, app)[&1].clone().expect("v1 published");
    let after_v1 = blob_count(&d);
    edit(
        &repo.join("index.html"),
        "hello from dockerfile-app",
        "hello again",
    );
    commit_all(&repo, "v2");
    push(&d, &repo, app).ok();
    let v2 = release_digests(&d, app)[&2].clone().expect("v2 published");

    // keep_releases = 1: v1's image goes, but the base layer v2 shares stays.
    let gone = reg_curl(&d, &["-u", &cred], &format!("/v2/{app}/manifests/{v1}"));
    assert_eq!(
        (gone.status, gone.code()),
        (404, "MANIFEST_UNKNOWN".to_owned())
    );
    let kept = reg_curl(&d, &["-u", &cred], &format!("/v2/{app}/manifests/v2"));
    assert_eq!(kept.headers["docker-content-digest"], v2);
    let manifest: serde_json::Value = serde_json::from_slice(&kept.body).unwrap();
    for blob in manifest["layers"].as_array().unwrap() {
        let digest = blob["digest"].as_str().unwrap();
        let r = reg_curl(
            &d,
            &["-u", &cred, "-I"],
            &format!("/v2/{app}/blobs/{digest}"),
        );
        assert_eq!(r.status, 200, "{digest}");
    }
    assert_eq!(
        blob_count(&d),
        after_v1,
        "v1's manifest, config and layer went; v2's came"
    );

    d.ssh(&d.admin, &format!("apps:destroy {app} --confirm {app}"))
        .ok();
    let r = reg_curl(&d, &["-u", &cred], &format!("/v2/{app}/manifests/v2"));
    assert_eq!((r.status, r.code()), (404, "NAME_UNKNOWN".to_owned()));
    assert_eq!(blob_count(&d), 0);
}

#[test]
fn without_the_flag_nothing_is_published_and_turning_it_on_publishes_the_next_release() {
    if !engine_and_skopeo() {
        return;
    }
    let app = "regoff";
    let _cleanup = DockerCleanup::new(&[app]);
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("cygni.toml");
    std::fs::write(&file, "").unwrap();
    let mut d =
        TestDaemon::start_with(&["--runtime", "docker", "--config", file.to_str().unwrap()]);
    assert_eq!(d.registry_port, 0);
    let repo = fixture_repo(&d, "dockerfile-app", app);
    let out = push(&d, &repo, app).ok();
    assert!(!out.stderr.contains("Publishing"), "{out:#?}");
    assert_eq!(release_digests(&d, app)[&1], None);
    assert!(!d.data_dir.join("registry").exists());
    assert!(!d.data_dir.join("registry-credential").exists());

    // On through the config file: a config release publishes v1's build,
    // since a cluster could not pull v1 by digest.
    std::fs::write(&file, "registry_listen = \"127.0.0.1:0\"\n").unwrap();
    d.restart();
    assert_ne!(d.registry_port, 0, "{}", d.log());
    let out = d
        .ssh(&d.admin, &format!("config:set {app} GREETING=hi"))
        .ok();
    assert!(
        out.stderr.contains("Publishing cygni/regoff:v1")
            || out.stdout.contains("Publishing cygni/regoff:v1"),
        "{out:#?}"
    );
    let v2 = release_digests(&d, app)[&2].clone().expect("v2 published");
    let cred = credential(&d);
    let r = reg_curl(&d, &["-u", &cred, "-I"], &format!("/v2/{app}/manifests/v2"));
    assert_eq!(
        (r.status, r.headers["docker-content-digest"].as_str()),
        (200, v2.as_str())
    );
    let (code, _) = d.curl(&host(app), "/");
    assert_eq!(code, 200);
}
