//! The stack on the docker runtime, end to end: the README's Procfile and
//! Python apps deploy on a fresh engine with the stack's images built on
//! first use from a local Debian 12 base (no registry, no network), the
//! buildpack compile runs in a container (never as a host process), a
//! missing base says what to do, and config vars reach an image build only
//! when cygni.toml asks.
//!
//! Nothing is downloaded: scripts/docker-test-setup.sh imports the booted-
//! machine test's debootstrap rootfs as `cygni-stack-base:test`, and the
//! stack is built from it with `stack_offline = true`. Without an engine or
//! that image each test says SKIPPED (and fails under CI=true).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;

const BASE: &str = "cygni-stack-base:test";

/// An engine, with the local images made (once per run), including the
/// Debian base.
fn stack_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/docker-test-setup.sh");
        let out = Command::new(&script)
            .output()
            .expect("run scripts/docker-test-setup.sh");
        match out.status.code() {
            Some(0) if !docker(&["images", "-q", BASE]).is_empty() => Ok(()),
            Some(0) => Err(format!(
                "no {BASE} (no Debian 12 rootfs): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Some(3) => Err("docker engine not available".into()),
            _ => panic!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    });
    match ready {
        Ok(()) => true,
        Err(reason) => {
            skip_or_fail(reason);
            false
        }
    }
}

/// A copy of the shipped buildpacks with a marker of this run, so the
/// stack's key is new and its images are built here, on first use.
fn fresh_buildpacks(dir: &Path) -> PathBuf {
    let bp = dir.join("buildpacks");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("buildpacks"),
        &bp,
    );
    for entry in std::fs::read_dir(&bp).unwrap().flatten() {
        for script in ["detect", "compile", "release"] {
            let path = entry.path().join("bin").join(script);
            if path.exists() {
                set_mode(&path, 0o755);
            }
        }
    }
    // A probe buildpack: what its compile sees (ENV_DIR, uid, host name).
    let probe = bp.join("zprobe/bin");
    std::fs::create_dir_all(&probe).unwrap();
    for (name, text) in [
        ("detect", "#!/bin/sh\n[ -f \"$1/PROBE\" ] || exit 1\necho Probe\n"),
        (
            "compile",
            "#!/bin/sh\necho \"-----> probe saw [$(cat \"$3/GREETING\" 2>/dev/null)] [$(ls \"$3\" 2>/dev/null | tr '\\n' ' ')] as $(id -u) on $(hostname)\"\n",
        ),
        (
            "release",
            "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: python3 -m http.server $PORT\\n'\n",
        ),
    ] {
        std::fs::write(probe.join(name), text).unwrap();
        set_mode(&probe.join(name), 0o755);
    }
    let nonce = format!("{:?}", std::time::SystemTime::now());
    std::fs::write(bp.join(".test-run"), nonce).unwrap();
    set_mode(dir, 0o755);
    bp
}

fn stack_daemon(dir: &Path, extra: &str) -> TestDaemon {
    let bp = fresh_buildpacks(dir);
    let config = dir.join("cygni.toml");
    std::fs::write(
        &config,
        format!(
            "stack_base_image = \"{BASE}\"\nstack_offline = true\nbuildpacks_dir = {:?}\n{extra}",
            bp.display().to_string()
        ),
    )
    .unwrap();
    TestDaemon::start_with(&["--runtime", "docker", "--config", config.to_str().unwrap()])
}

/// The image named on the push's line that starts with `prefix`.
fn image_after(out: &Out, prefix: &str) -> String {
    out.stderr
        .lines()
        .find_map(|l| l.split(prefix).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {prefix:?} in {out:#?}"))
        .to_owned()
}

/// Processes running a buildpack's bin/compile, seen while `during` runs:
/// for each, whether it was in the host's own pid namespace.
fn compiles_seen_during<T>(during: impl FnOnce() -> T) -> (T, Vec<(u32, bool)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let host_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let watcher = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            // Bounded: a push that hangs is ended by its own timeouts.
            for _ in 0..30_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    if !cmdline.contains("/bin/compile") {
                        continue;
                    }
                    if let Ok(ns) = std::fs::read_link(entry.path().join("ns/pid")) {
                        seen.lock().unwrap().insert((pid, ns == host_ns));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let result = during();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap().iter().copied().collect();
    (result, seen)
}

#[test]
fn readme_apps_deploy_on_the_stack_built_from_a_local_base_and_compile_in_a_container() {
    if !stack_ready() {
        return;
    }
    let cleanup = DockerCleanup::new(&["myapp", "pyapp"]);
    let dir = tempfile::tempdir().unwrap();
    let d = stack_daemon(dir.path(), "");

    // The README's walk-through app, exactly.
    let repo = d.dir.path().join("myapp");
    std::fs::create_dir_all(&repo).unwrap();
    make_repo(
        &repo,
        &[
            ("Procfile", "web: python3 -m http.server $PORT\n"),
            ("index.html", "<h1>hello from myapp</h1>\n"),
        ],
    );
    let started = std::time::Instant::now();
    let out = push(&d, &repo, "myapp").ok();
    let first_push = started.elapsed();
    let build = image_after(&out, "Building the stack's build image ");
    let run = image_after(&out, "Building the stack's run image ");
    cleanup.also_image(&build);
    cleanup.also_image(&run);
    assert!(build.starts_with("cygni/stack-build:"), "{out:#?}");
    assert!(
        out.stderr.contains(&format!("from {BASE} (first use)")),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains(&format!(
            "Building with buildpack Procfile in the stack's build image {build}"
        )),
        "{out:#?}"
    );
    assert!(
        out.stderr
            .contains(&format!("Putting the slug on run image {run}")),
        "{out:#?}"
    );
    let (code, body) = d.curl(&host("myapp"), "/");
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert!(body.contains("hello from myapp"), "{body}");

    // A Python app: the stack is there now; its compile (a venv and pip)
    // runs in a container of the build image, and the venv runs on the run
    // image.
    let repo = fixture_repo(&d, "python-app", "pyapp");
    let started = std::time::Instant::now();
    let (out, compiles) = compiles_seen_during(|| push(&d, &repo, "pyapp"));
    let second_push = started.elapsed();
    let out = out.ok();
    assert!(
        !out.stderr.contains("Building the stack's"),
        "the stack is built once: {out:#?}"
    );
    assert!(
        out.stderr.contains(&format!(
            "Building with buildpack Python in the stack's build image {build}"
        )),
        "{out:#?}"
    );
    assert!(out.stderr.contains("Python app built"), "{out:#?}");
    assert!(
        !compiles.is_empty(),
        "the compile was never seen running: {out:#?}"
    );
    assert!(
        compiles.iter().all(|(_, on_host)| !on_host),
        "bin/compile ran in the host's pid namespace: {compiles:?}"
    );
    let (code, body) = d.curl(&host("pyapp"), "/");
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert!(body.contains("hello from python-app"), "{body}");
    assert!(body.contains("venv: yes"), "{body}");
    // Build containers are gone.
    wait_for("build containers to go", Duration::from_secs(10), || {
        docker(&["ps", "-aq", "--filter", "label=cygni.build"])
            .is_empty()
            .then_some(())
    });

    // A compile that fails in the container rejects the push and leaves
    // the running release serving.
    let good = head_sha(&repo);
    replace_with_fixture(&repo, "fail-build");
    commit_all(&repo, "broken requirements");
    assert_push_refused(
        &d,
        &repo,
        "pyapp",
        &good,
        "buildpack python failed in the build container: bin/compile exited with code 1",
        "hello from python-app",
    );
    eprintln!(
        "stack figures: first push (stack built) {:.1}s, second push (python, stack cached) {:.1}s",
        first_push.as_secs_f64(),
        second_push.as_secs_f64()
    );
}

#[test]
fn a_base_image_that_is_not_there_is_refused_with_what_to_do() {
    if !stack_ready() {
        return;
    }
    let _cleanup = DockerCleanup::new(&["nobase"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cygni.toml");
    std::fs::write(
        &config,
        "stack_base_image = \"cygni-no-such-base:test\"\nstack_offline = true\n",
    )
    .unwrap();
    let d = TestDaemon::start_with(&["--runtime", "docker", "--config", config.to_str().unwrap()]);
    let repo = fixture_repo(&d, "procfile-app", "nobase");
    let out = push(&d, &repo, "nobase");
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("the stack's base image cygni-no-such-base:test is not on this host")
            && out.stderr.contains("set stack_base_image in cygni.toml"),
        "{out:#?}"
    );
    let releases = d.ssh(&d.admin, "releases nobase --json").ok();
    assert!(releases.stdout.contains("\"failed\""), "{releases:#?}");
}

#[test]
fn config_vars_reach_an_image_build_only_when_cygni_toml_asks() {
    if !stack_ready() {
        return;
    }
    let _cleanup = DockerCleanup::new(&["argsapp"]);
    let dir = tempfile::tempdir().unwrap();
    let d = stack_daemon(dir.path(), "");
    d.ssh(&d.admin, "apps:create argsapp").ok();
    d.ssh(&d.admin, "config:set argsapp GREETING=psst OTHER=nope")
        .ok();
    let repo = d.dir.path().join("argsapp");
    std::fs::create_dir_all(&repo).unwrap();
    let dockerfile = "FROM cygni-base:test\nARG GREETING\nARG OTHER\nRUN echo \"build saw [$GREETING] [$OTHER]\"\nCOPY index.html /www/index.html\nCMD [\"/bin/sh\", \"-c\", \"exec httpd -f -p \\\"$PORT\\\" -h /www\"]\n";
    make_repo(
        &repo,
        &[
            ("Dockerfile", dockerfile),
            ("index.html", "hello from argsapp\n"),
        ],
    );
    let out = push(&d, &repo, "argsapp").ok();
    assert!(out.stderr.contains("build saw [] []"), "{out:#?}");
    assert!(!out.stderr.contains("psst"), "{out:#?}");

    std::fs::write(
        repo.join("cygni.toml"),
        "[build]\nconfig_vars = [\"GREETING\"]\n",
    )
    .unwrap();
    commit_all(&repo, "ask for GREETING");
    let out = push(&d, &repo, "argsapp").ok();
    assert!(
        out.stderr
            .contains("Passing config vars GREETING to the image build"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("build saw [psst] []"), "{out:#?}");

    // A buildpack compile in the build container: ENV_DIR holds only the
    // vars cygni.toml lists, and it runs as uid 10001 on the container's
    // host name.
    let more = DockerCleanup::new(&["probeapp"]);
    d.ssh(&d.admin, "apps:create probeapp").ok();
    d.ssh(&d.admin, "config:set probeapp GREETING=psst OTHER=nope")
        .ok();
    let repo = d.dir.path().join("probeapp");
    std::fs::create_dir_all(&repo).unwrap();
    make_repo(&repo, &[("PROBE", "x\n"), ("index.html", "probed\n")]);
    let out = push(&d, &repo, "probeapp").ok();
    let build = image_after(&out, "Building the stack's build image ");
    more.also_image(&build);
    more.also_image(&image_after(&out, "Building the stack's run image "));
    assert!(
        out.stderr
            .contains("probe saw [] [] as 10001 on cygni-build"),
        "{out:#?}"
    );
    std::fs::write(
        repo.join("cygni.toml"),
        "[build]\nconfig_vars = [\"GREETING\"]\n",
    )
    .unwrap();
    commit_all(&repo, "ask for GREETING");
    let out = push(&d, &repo, "probeapp").ok();
    assert!(
        out.stderr
            .contains("probe saw [psst] [GREETING ] as 10001 on cygni-build"),
        "{out:#?}"
    );
    let (code, body) = d.curl(&host("probeapp"), "/");
    assert_eq!(code, 200, "{body}");
}
