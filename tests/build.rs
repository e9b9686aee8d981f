//! The build subsystem end to end: the fixture apps under `tests/fixtures/`
//! copied into temp dirs, detected and built by the shipped buildpacks with
//! the host's real npm, pip and go, then run from the slug.
//!
//! Tests that need something the host may lack say so loudly when they skip.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cygni::build::{
    build, build_with, detect, Artifact, BuildError, BuildLimits, BuildOutput, BuildRequest,
    Builder, Target,
};
use cygni::names::{AppName, ProcessType};
use cygni::procfile::Procfile;

/// uid and gid of `nobody`, the build user in the root tests.
const NOBODY: (u32, u32) = (65534, 65534);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn shipped_buildpacks() -> PathBuf {
    repo_path("buildpacks")
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A temp dir holding one app's tree (`src`) and cache (`cache`). Its root
/// is 0755 so that a build user other than root can reach the tree.
struct Sandbox {
    tmp: tempfile::TempDir,
    src: PathBuf,
    cache: PathBuf,
}

impl Sandbox {
    fn empty() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let cache = tmp.path().join("cache");
        Sandbox { tmp, src, cache }
    }

    fn fixture(name: &str) -> Sandbox {
        let sandbox = Sandbox::empty();
        copy_tree(&repo_path(&format!("tests/fixtures/{name}")), &sandbox.src);
        sandbox
    }

    fn with_file(self, name: &str, content: &str) -> Sandbox {
        fs::write(self.src.join(name), content).unwrap();
        self
    }

    fn detect(&self, pinned: Option<&str>) -> Result<Builder, BuildError> {
        detect(&self.src, &shipped_buildpacks(), pinned)
    }
}

/// A buildpacks dir of test-made buildpacks.
struct Buildpacks(tempfile::TempDir);

impl Buildpacks {
    fn new() -> Buildpacks {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Buildpacks(tmp)
    }

    /// A buildpack that accepts every app and runs `compile` (sh).
    fn add(self, name: &str, compile: &str) -> Buildpacks {
        let bin = self.0.path().join(name).join("bin");
        fs::create_dir_all(&bin).unwrap();
        let scripts = [
            ("detect", format!("#!/bin/sh\necho {name}\n")),
            ("compile", format!("#!/bin/sh\n{compile}\n")),
            (
                "release",
                "#!/bin/sh\necho 'default_process_types: {}'\n".into(),
            ),
        ];
        for (script, body) in scripts {
            let path = bin.join(script);
            fs::write(&path, body).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        self
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// One build, set up like a sentence: `BuildCase::new(&sandbox).env("A", "b").run()`.
struct BuildCase<'a> {
    sandbox: &'a Sandbox,
    buildpacks: PathBuf,
    env: BTreeMap<String, String>,
    pinned: Option<&'a str>,
    target: Target,
    run_as: Option<(u32, u32)>,
    limits: BuildLimits,
}

/// What a build returned and everything it printed.
struct Built {
    result: Result<BuildOutput, BuildError>,
    log: String,
}

impl Built {
    fn ok(self) -> (BuildOutput, String) {
        match self.result {
            Ok(output) => (output, self.log),
            Err(err) => panic!("build failed: {err}\n--- build output ---\n{}", self.log),
        }
    }

    fn err(self) -> (BuildError, String) {
        match self.result {
            Ok(output) => panic!("build succeeded: {output:?}\n{}", self.log),
            Err(err) => (err, self.log),
        }
    }
}

impl<'a> BuildCase<'a> {
    fn new(sandbox: &'a Sandbox) -> BuildCase<'a> {
        BuildCase {
            sandbox,
            buildpacks: shipped_buildpacks(),
            env: BTreeMap::new(),
            pinned: None,
            target: Target::Slug,
            run_as: None,
            limits: BuildLimits::default(),
        }
    }

    fn buildpacks(mut self, dir: &Path) -> Self {
        self.buildpacks = dir.to_owned();
        self
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    fn pinned(mut self, pinned: &'a str) -> Self {
        self.pinned = Some(pinned);
        self
    }

    fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    fn run_as(mut self, ids: (u32, u32)) -> Self {
        self.run_as = Some(ids);
        self
    }

    fn compile_timeout(mut self, timeout: Duration) -> Self {
        self.limits.compile_timeout = timeout;
        self
    }

    fn request<'r>(
        &'r self,
        app: &'r AppName,
        output: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> BuildRequest<'r> {
        BuildRequest {
            app,
            release: 1,
            source_dir: &self.sandbox.src,
            cache_dir: &self.sandbox.cache,
            env: &self.env,
            buildpacks_dir: &self.buildpacks,
            pinned: self.pinned,
            target: self.target,
            run_as: self.run_as,
            output,
        }
    }

    async fn run(self) -> Built {
        let app = AppName::parse("test-app").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let collect = async {
            let mut log = Vec::new();
            while let Some(line) = rx.recv().await {
                log.extend_from_slice(&line);
            }
            String::from_utf8_lossy(&log).into_owned()
        };
        let request = self.request(&app, tx);
        let (result, log) = tokio::join!(build_with(request, &self.limits), collect);
        Built { result, log }
    }
}

fn slug_dir(output: &BuildOutput) -> &Path {
    match &output.artifact {
        Artifact::Slug { dir } => dir,
        other => panic!("expected a slug, got {other:?}"),
    }
}

/// A free loopback port from below the ephemeral range, as the local
/// runtime picks them: port 0 hands out ports outgoing connections also
/// take, and one of those took the port before the app bound it.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 12_000 + (std::process::id() % 8_000) as u16;
    for _ in 0..2_000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 8_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process started from a slug, as a runtime would: the `.profile.d`
/// scripts sourced, then the command, with `$PORT`. Its output goes to a
/// log file shown when it does not answer; its whole process group is
/// killed on drop (`npm start` runs node as a child).
struct Running {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Running {
    fn start(slug: &Path, command: &str, env: &[(&str, &str)]) -> Running {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("for f in .profile.d/*.sh; do [ -f \"$f\" ] && . \"./$f\"; done; eval \"exec $1\"")
            .arg("sh")
            .arg(command)
            .current_dir(slug)
            .env("PORT", port.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .process_group(0);
        let child = cmd.spawn().unwrap();
        Running { child, port, log }
    }

    /// GETs `/` until the app answers, within 20 s.
    fn get(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                stream
                    .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    .unwrap();
                let mut response = String::new();
                if stream.read_to_string(&mut response).is_ok() && !response.is_empty() {
                    return response;
                }
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(self.log.path()).unwrap_or_default();
                panic!(
                    "nothing answered on port {}; the app said:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: killpg only sends a signal.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn has_program(program: &str) -> bool {
    Command::new(program)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn buildpack(name: &str) -> Builder {
    Builder::Buildpack {
        name: name.into(),
        dir: fs::canonicalize(shipped_buildpacks()).unwrap().join(name),
    }
}

fn web() -> ProcessType {
    ProcessType::web()
}

// ---------------------------------------------------------------- detection

#[test]
fn dockerfile_wins_over_every_buildpack() {
    let app = Sandbox::fixture("dockerfile-app")
        .with_file("package.json", "{}")
        .with_file("requirements.txt", "")
        .with_file("Procfile", "web: ./run");
    assert_eq!(app.detect(None).unwrap(), Builder::Dockerfile);
}

#[test]
fn each_fixture_is_detected_by_its_buildpack() {
    for (fixture, expected) in [
        ("python-app", "python"),
        ("node-app", "nodejs"),
        ("go-app", "go"),
        ("procfile-app", "procfile"),
        ("fail-build", "python"),
        ("fail-exits", "procfile"),
        ("fail-noport", "procfile"),
    ] {
        assert_eq!(
            Sandbox::fixture(fixture).detect(None).unwrap(),
            buildpack(expected),
            "{fixture}"
        );
    }
}

#[test]
fn procfile_buildpack_comes_last() {
    // python-app has a Procfile too: it still needs the Python build.
    let python = Sandbox::fixture("python-app");
    assert!(python.src.join("Procfile").exists());
    assert_eq!(python.detect(None).unwrap(), buildpack("python"));

    let node = Sandbox::fixture("node-app").with_file("Procfile", "web: node server.js");
    assert_eq!(node.detect(None).unwrap(), buildpack("nodejs"));
}

#[test]
fn nothing_detected_names_everything_tried() {
    let app = Sandbox::empty().with_file("README.txt", "just words");
    let err = app.detect(None).unwrap_err();
    assert!(matches!(err, BuildError::NoBuilder { .. }), "{err:?}");
    let nixpacks = if cfg!(feature = "nixpacks") {
        "found no plan"
    } else {
        "is not built in"
    };
    assert_eq!(
        err.to_string(),
        format!("no builder detected: no Dockerfile; buildpacks go, nodejs, python, procfile did not detect; nixpacks {nixpacks}")
    );
}

#[test]
fn pinned_builder_overrides_detection() {
    let python = Sandbox::fixture("python-app");
    assert_eq!(
        python.detect(Some("procfile")).unwrap(),
        buildpack("procfile")
    );
    assert_eq!(
        python.detect(Some("buildpack:procfile")).unwrap(),
        buildpack("procfile")
    );

    let docker = Sandbox::fixture("dockerfile-app").with_file("Procfile", "web: ./run");
    assert_eq!(
        docker.detect(Some("procfile")).unwrap(),
        buildpack("procfile"),
        "a pinned buildpack wins over the Dockerfile"
    );
    assert_eq!(
        docker.detect(Some("dockerfile")).unwrap(),
        Builder::Dockerfile
    );
}

#[test]
fn pinned_builder_that_does_not_apply_says_why() {
    let python = Sandbox::fixture("python-app");
    let err = python.detect(Some("buildpack:nodejs")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the builder is set to buildpack:nodejs, but buildpack nodejs does not recognise this app (its bin/detect refused it)"
    );
    let err = python.detect(Some("dockerfile")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the builder is set to dockerfile, but the app has no Dockerfile"
    );
}

#[test]
fn unknown_pinned_builder_lists_the_valid_values() {
    let python = Sandbox::fixture("python-app");
    for value in ["heroku/ruby", "buildpack:../../bin", "docker"] {
        let err = python.detect(Some(value)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("unknown builder {value:?}: use dockerfile, nixpacks, or buildpack:NAME with NAME one of go, nodejs, python, procfile")
        );
    }
}

// ---------------------------------------------------------------- building

#[tokio::test]
async fn python_app_builds_a_venv_and_runs_from_the_slug() {
    let app = Sandbox::fixture("python-app");
    let (output, log) = BuildCase::new(&app)
        .env("GREETING", "ahoy")
        .run()
        .await
        .ok();

    assert_eq!(output.builder, "buildpack python");
    assert!(
        output.default_processes.is_empty(),
        "{:?}",
        output.default_processes
    );
    assert!(
        log.contains("-----> Building with buildpack Python\n"),
        "{log}"
    );
    assert!(
        log.contains("-----> Installing dependencies with pip\n"),
        "{log}"
    );

    let slug = slug_dir(&output);
    assert_eq!(slug, fs::canonicalize(&app.src).unwrap(), "built in place");
    assert!(slug.join(".venv/bin/python").exists());
    let profile = fs::read_to_string(slug.join(".profile.d/python.sh")).unwrap();
    assert!(
        profile.contains(&format!("{}/.venv/bin", slug.display())),
        "{profile}"
    );

    // Run the Procfile's web command from the slug, as the runtime will.
    let procfile = Procfile::parse(&fs::read_to_string(slug.join("Procfile")).unwrap()).unwrap();
    let command = procfile.get(&web()).unwrap();
    let page = Running::start(slug, command, &[("GREETING", "hello there")]).get();
    assert!(page.contains("hello from python-app"), "{page}");
    assert!(page.contains("greeting: hello there"), "{page}");
    assert!(
        page.contains("venv: yes"),
        "the venv's python must run: {page}"
    );
}

#[tokio::test]
async fn node_app_gets_npm_start_as_its_web_process() {
    if !has_program("npm") {
        assert!(!on_ci(), "npm is required on CI");
        eprintln!("skipped: npm not installed");
        return;
    }
    let app = Sandbox::fixture("node-app");
    let (output, log) = BuildCase::new(&app).run().await.ok();

    assert_eq!(output.builder, "buildpack nodejs");
    assert_eq!(
        output.default_processes,
        BTreeMap::from([(web(), "npm start".to_owned())])
    );
    assert!(
        log.contains("-----> Building with buildpack Node.js\n"),
        "{log}"
    );
    assert!(
        log.contains("-----> Installing dependencies with npm install\n"),
        "{log}"
    );
    assert!(
        log.contains("Default types for buildpack Node.js -> web"),
        "{log}"
    );

    let slug = slug_dir(&output);
    let page = Running::start(slug, "npm start", &[]).get();
    assert!(page.contains("hello from node-app"), "{page}");
}

#[tokio::test]
async fn procfile_app_builds_nothing() {
    let app = Sandbox::fixture("procfile-app");
    let before: Vec<_> = fs::read_dir(&app.src)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let (output, log) = BuildCase::new(&app).run().await.ok();

    assert_eq!(output.builder, "buildpack procfile");
    assert!(output.default_processes.is_empty());
    assert!(
        log.contains("-----> Building with buildpack Procfile\n"),
        "{log}"
    );
    let after: Vec<_> = fs::read_dir(slug_dir(&output))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        before.len(),
        after.len(),
        "the procfile buildpack adds nothing"
    );

    let procfile = Procfile::parse(&fs::read_to_string(app.src.join("Procfile")).unwrap()).unwrap();
    let page = Running::start(slug_dir(&output), procfile.get(&web()).unwrap(), &[]).get();
    assert!(page.contains("hello from procfile-app"), "{page}");
}

#[tokio::test]
async fn pinned_buildpack_is_the_one_that_builds() {
    let app = Sandbox::fixture("python-app");
    let (output, log) = BuildCase::new(&app)
        .pinned("buildpack:procfile")
        .run()
        .await
        .ok();
    assert_eq!(output.builder, "buildpack procfile");
    assert!(!log.contains("pip"), "{log}");
    assert!(
        !app.src.join(".venv").exists(),
        "the python buildpack must not have run"
    );
}

#[tokio::test]
async fn failing_build_names_the_buildpack_and_shows_its_output() {
    let app = Sandbox::fixture("fail-build");
    let started = Instant::now();
    let (err, log) = BuildCase::new(&app).run().await.err();

    match &err {
        BuildError::BuildpackFailed {
            buildpack, step, ..
        } => {
            assert_eq!(buildpack, "python");
            assert_eq!(*step, "compile");
        }
        other => panic!("expected BuildpackFailed, got {other:?}"),
    }
    assert!(err.is_app_fault());
    assert!(
        err.to_string()
            .starts_with("buildpack python failed: bin/compile exited with code"),
        "{err}"
    );
    assert!(
        log.contains("does-not-exist"),
        "pip's complaint reaches the pusher: {log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "fails offline, quickly"
    );
}

#[tokio::test]
async fn progress_arrives_while_compile_is_still_running() {
    // The compile prints a line, then waits until the test has seen it: if
    // output came only at the end, neither side would move.
    let buildpacks = Buildpacks::new().add(
        "slow",
        r#"echo "-----> first step"
i=0
while [ ! -e "$2/go-on" ]; do
  i=$((i + 1)); [ "$i" -gt 400 ] && { echo "nobody saw the first step"; exit 1; }
  sleep 0.05
done
echo "-----> second step""#,
    );
    let app = Sandbox::empty();
    let case = BuildCase::new(&app).buildpacks(buildpacks.path());
    let app_name = AppName::parse("test-app").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let watch = async {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            let line = String::from_utf8(line).unwrap();
            if line == "-----> first step\n" {
                fs::write(app.cache.join("go-on"), "").unwrap();
            }
            lines.push(line);
        }
        lines
    };
    let (result, lines) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(build(case.request(&app_name, tx)), watch)
    })
    .await
    .expect("the build hung");
    let output = result.unwrap_or_else(|err| panic!("{err}: {lines:?}"));
    assert_eq!(output.builder, "buildpack slow");
    let first = lines.iter().position(|l| l == "-----> first step\n");
    let second = lines.iter().position(|l| l == "-----> second step\n");
    assert!(first.is_some() && first < second, "{lines:?}");
}

#[tokio::test]
async fn compile_timeout_stops_the_build() {
    let buildpacks = Buildpacks::new().add("stuck", "echo starting; sleep 600");
    let app = Sandbox::empty();
    let started = Instant::now();
    let (err, log) = BuildCase::new(&app)
        .buildpacks(buildpacks.path())
        .compile_timeout(Duration::from_millis(500))
        .run()
        .await
        .err();
    assert_eq!(
        err.to_string(),
        "buildpack stuck: bin/compile timed out after 500ms"
    );
    assert!(log.contains("starting"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn config_vars_reach_compile_only_through_env_dir() {
    let buildpacks = Buildpacks::new().add(
        "envcheck",
        r#"echo "env dir: $(cat "$3/GREETING")"
echo "in environment: ${GREETING:-unset}"
echo "stack: $STACK""#,
    );
    let app = Sandbox::empty();
    let (_, log) = BuildCase::new(&app)
        .buildpacks(buildpacks.path())
        .env("GREETING", "hello; rm -rf / $(x)")
        .run()
        .await
        .ok();
    assert!(log.contains("env dir: hello; rm -rf / $(x)\n"), "{log}");
    assert!(log.contains("in environment: unset\n"), "{log}");
    assert!(log.contains("stack: cygni\n"), "{log}");
}

#[tokio::test]
async fn config_var_names_that_are_not_file_names_are_refused() {
    let app = Sandbox::fixture("procfile-app");
    for name in ["../escape", "A/B", "1X", ""] {
        let (err, _) = BuildCase::new(&app).env(name, "x").run().await.err();
        assert!(
            matches!(err, BuildError::InvalidEnvName { .. }),
            "{name:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn dockerfile_on_the_local_runtime_says_how_to_enable_docker() {
    let app = Sandbox::fixture("dockerfile-app");
    let (err, _) = BuildCase::new(&app).run().await.err();
    assert_eq!(
        err.to_string(),
        "this app has a Dockerfile, which needs the docker runtime: start cygni with --runtime docker (or remove the Dockerfile to use a buildpack)"
    );
}

/// Image builds need an engine (tests/docker.rs); a bad run image is
/// refused before one is asked, since it is written into a Dockerfile.
#[tokio::test]
async fn image_target_refuses_a_run_image_that_is_not_a_reference() {
    let app = Sandbox::fixture("procfile-app");
    let mut case = BuildCase::new(&app).target(Target::Image);
    case.limits.run_image = Some("x\nRUN rm -rf /".into());
    let (err, _) = case.run().await.err();
    assert!(matches!(err, BuildError::InvalidRunImage { .. }), "{err:?}");
}

#[tokio::test]
async fn builds_as_an_unprivileged_user_when_root() {
    if !is_root() {
        assert!(
            !on_ci(),
            "CI runs the tests as root: this one must not skip there"
        );
        eprintln!("skipped: builds_as_an_unprivileged_user_when_root needs root");
        return;
    }
    let app = Sandbox::fixture("python-app");
    // The build user must read the buildpacks too: a copy (modes kept)
    // under the sandbox, since the checkout may sit under a private home.
    let buildpacks = app.tmp.path().join("buildpacks");
    copy_tree(&shipped_buildpacks(), &buildpacks);

    let (output, log) = BuildCase::new(&app)
        .buildpacks(&buildpacks)
        .env("GREETING", "x")
        .run_as(NOBODY)
        .run()
        .await
        .ok();
    assert_eq!(output.builder, "buildpack python");
    let slug = slug_dir(&output);
    for path in [
        slug.to_owned(),
        slug.join(".venv/bin/python"),
        slug.join(".profile.d/python.sh"),
    ] {
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            NOBODY,
            "{} ({log})",
            path.display()
        );
    }
    assert_eq!(fs::metadata(&app.cache).unwrap().uid(), NOBODY.0);
    assert!(
        app.cache.join("pip").exists() || log.contains("pip"),
        "{log}"
    );
}

#[tokio::test]
async fn unreachable_build_dir_is_reported_before_detection() {
    if !is_root() {
        eprintln!("skipped: unreachable_build_dir_is_reported_before_detection needs root");
        return;
    }
    let app = Sandbox::fixture("procfile-app");
    fs::set_permissions(app.tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let (err, _) = BuildCase::new(&app).run_as(NOBODY).run().await.err();
    assert!(matches!(err, BuildError::Unreachable { .. }), "{err:?}");
    assert!(!err.is_app_fault());
}

#[tokio::test]
async fn go_app_builds_a_binary_or_says_go_is_missing() {
    let app = Sandbox::fixture("go-app");
    let built = BuildCase::new(&app).run().await;
    if has_program("go") {
        let (output, _) = built.ok();
        assert_eq!(output.builder, "buildpack go");
        assert_eq!(
            output.default_processes,
            BTreeMap::from([(web(), "./bin/app".to_owned())])
        );
        let page = Running::start(slug_dir(&output), "./bin/app", &[]).get();
        assert!(page.contains("hello from go-app"), "{page}");
    } else {
        // .ci/run installs golang-go, so under CI this is a failure.
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true and go is not installed: the go buildpack cannot be tested"
        );
        let (err, log) = built.err();
        assert!(matches!(err, BuildError::BuildpackFailed { .. }), "{err:?}");
        assert!(log.contains("go is not installed on this host"), "{log}");
        eprintln!("SKIPPED: go not installed (checked only that the go buildpack says so)");
    }
}

#[cfg(feature = "nixpacks")]
#[tokio::test]
async fn nixpacks_plan_builds_what_no_buildpack_detects() {
    let app = Sandbox::fixture("nixpacks-app");
    assert_eq!(app.detect(None).unwrap(), Builder::Nixpacks);
    let (output, log) = BuildCase::new(&app).run().await.ok();
    assert_eq!(output.builder, "nixpacks");
    let start = "python3 -m http.server $PORT --directory public";
    assert_eq!(
        output.default_processes,
        BTreeMap::from([(web(), start.to_owned())])
    );
    assert!(
        log.contains("-----> build: cp index.html public/index.html\n"),
        "{log}"
    );
    let slug = slug_dir(&output);
    assert!(slug.join("public/index.html").exists(), "{log}");

    let page = Running::start(slug, start, &[]).get();
    assert!(page.contains("hello from nixpacks-app"), "{page}");
}

#[cfg(feature = "nixpacks")]
#[tokio::test]
async fn nixpacks_phase_failure_names_the_command() {
    let app = Sandbox::empty().with_file(
        "nixpacks.toml",
        "[phases.build]\ncmds = [\"echo about to fail\", \"exit 3\"]\n\n[start]\ncmd = \"true\"\n",
    );
    let (err, log) = BuildCase::new(&app).run().await.err();
    assert_eq!(
        err.to_string(),
        "nixpacks build phase failed: `exit 3` exited with code 3"
    );
    assert!(log.contains("       about to fail\n"), "{log}");
}

#[cfg(not(feature = "nixpacks"))]
#[test]
fn nixpacks_disabled_is_a_clear_error() {
    let app = Sandbox::fixture("nixpacks-app");
    let err = app.detect(Some("nixpacks")).unwrap_err();
    assert!(matches!(err, BuildError::NixpacksDisabled), "{err:?}");
}
