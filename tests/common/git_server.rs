//! A smart-HTTP git server on loopback for sync tests: a small HTTP/1.1
//! server (std TcpListener, a thread per connection) that runs `git
//! http-backend` as a CGI program for each request.
//!
//! ```ignore
//! let server = GitServer::start(&root);        // serves root/NAME.git
//! let url = server.url("app.git");             // http://127.0.0.1:PORT/app.git
//! server.publish(&work_repo, "lib");           // (re)publish root/lib.git
//! ```
//!
//! It serves every bare repository under its root, so a superproject and
//! its submodules come from the same server; [`GitServer::paths`] records
//! which repository each request was for.
//!
//! Paths under `/hang/` never answer (the connection stays open 20s).
//! Paths under `/private/` answer 401 unless the request carries
//! [`PRIVATE_AUTH`] (HTTP Basic `deploy:s3cr3tpw`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The Basic credentials `/private/` repositories want (`deploy:s3cr3tpw`).
pub const PRIVATE_AUTH: &str = "Basic ZGVwbG95OnMzY3IzdHB3";

pub struct GitServer {
    pub port: u16,
    pub root: PathBuf,
    stop: Arc<AtomicBool>,
    /// Requests answered so far (a scheduled check shows up here).
    pub requests: Arc<AtomicUsize>,
    /// The path of every request, in order.
    pub paths: Arc<Mutex<Vec<String>>>,
}

impl GitServer {
    pub fn start(root: &Path) -> GitServer {
        std::fs::create_dir_all(root).expect("git server root");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the git server");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (s, r, dir, log) = (
            stop.clone(),
            requests.clone(),
            root.to_owned(),
            paths.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (dir, r, log) = (dir.clone(), r.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(30)));
                    if serve(conn, &dir, &log).is_ok() {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        GitServer {
            port,
            root: root.to_owned(),
            stop,
            requests,
            paths,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Push `repo`'s main to `root/NAME.git`, creating it the first time.
    pub fn publish(&self, repo: &Path, name: &str) {
        let bare = self.root.join(format!("{name}.git"));
        if !bare.exists() {
            let out = Command::new("git")
                .args(["init", "-q", "--bare", "-b", "main"])
                .arg(&bare)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .expect("git init --bare");
            assert!(out.status.success(), "{out:?}");
        }
        let out = Command::new("git")
            .current_dir(repo)
            .args(["push", "-q", "-f"])
            .arg(&bare)
            .arg("HEAD:refs/heads/main")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git push");
        assert!(out.status.success(), "{out:?}");
    }

    /// Requests so far whose path starts with `prefix` (`/lib.git`).
    pub fn requests_for(&self, prefix: &str) -> usize {
        self.paths
            .lock()
            .expect("paths lock")
            .iter()
            .filter(|p| p.starts_with(prefix))
            .count()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One request, one CGI run, then the connection closes.
fn serve(conn: TcpStream, root: &Path, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("GET").to_owned(),
        parts.next().unwrap_or("/").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        if headers.len() > 100 {
            break;
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length").and_then(|v| v.parse::<u64>().ok()) {
        (&mut reader).take(len).read_to_end(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if n == 0 {
                let mut end = String::new();
                reader.read_line(&mut end)?;
                break;
            }
            let mut chunk = vec![0u8; n];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if let Ok(mut paths) = log.lock() {
        paths.push(path.to_owned());
    }
    if path.starts_with("/hang/") {
        std::thread::sleep(std::time::Duration::from_secs(20));
        return Ok(());
    }
    if path.starts_with("/private/") && header("authorization").as_deref() != Some(PRIVATE_AUTH) {
        let mut conn = conn;
        write!(
            conn,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return conn.flush();
    }
    let mut cgi = Command::new("git");
    cgi.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(v) = header("content-type") {
        cgi.env("CONTENT_TYPE", v);
    }
    if let Some(v) = header("content-encoding") {
        cgi.env("HTTP_CONTENT_ENCODING", v);
    }
    if let Some(v) = header("git-protocol") {
        cgi.env("GIT_PROTOCOL", v);
    }
    let mut child = cgi.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut output = Vec::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut output)?;
    let _ = writer.join();
    let _ = child.wait();

    // CGI output: headers, a blank line, the body.
    let split = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| output.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let (head, rest) = match split {
        Some((p, n)) => (
            String::from_utf8_lossy(&output[..p]).into_owned(),
            &output[p + n..],
        ),
        None => (String::new(), &output[..]),
    };
    let mut status = "200 OK".to_owned();
    let mut out_headers = String::new();
    for line in head.lines() {
        if let Some(s) = line.strip_prefix("Status:") {
            status = s.trim().to_owned();
        } else if !line.trim().is_empty() {
            out_headers.push_str(line.trim_end());
            out_headers.push_str("\r\n");
        }
    }
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\n{out_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        rest.len()
    )?;
    conn.write_all(rest)?;
    conn.flush()
}
