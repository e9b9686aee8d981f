//! HTTPS end to end: certificates issued by a real ACME CA (Debian's
//! `pebble`, with `pebble-challtestsrv` as its DNS, everything resolving to
//! 127.0.0.1), served over real TLS to curl, openssl and a rustls client.
//!
//! ```text
//! test ──► cygni serve (--domain apps.example.com, --acme-directory pebble)
//!      ──► pebble (httpPort = cygni HTTP, tlsPort = cygni HTTPS) ──► challtestsrv DNS
//! ```
//!
//! Nothing is downloaded. Without pebble the tests say SKIPPED (and fail
//! under CI=true).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{make_repo, skip_or_fail, wait_for, TestDaemon};

const DOMAIN: &str = "apps.example.com";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr").port()
}

fn have_pebble() -> bool {
    let found = ["pebble", "pebble-challtestsrv"].iter().all(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        skip_or_fail("pebble and pebble-challtestsrv are not installed (apt-get install pebble)");
    }
    found
}

/// A Pebble CA and its DNS, on free loopback ports.
struct Pebble {
    dir: PathBuf,
    listen: u16,
    mgmt: u16,
    /// The CA for Pebble's own HTTPS listener (`--acme-ca`).
    listener_ca: PathBuf,
    children: Vec<Child>,
}

impl Pebble {
    /// Prepare ports and Pebble's listener certificate; `start` runs it once
    /// Cygni's ports are known.
    fn prepare(dir: &Path) -> Pebble {
        std::fs::create_dir_all(dir).expect("pebble dir");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cygni test pebble listener CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("params");
        let cert = params.signed_by(&key, &issuer).expect("listener cert");
        std::fs::write(dir.join("listener.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("listener.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("listener-ca.pem"), ca_cert.pem()).unwrap();
        Pebble {
            dir: dir.to_owned(),
            listen: free_port(),
            mgmt: free_port(),
            listener_ca: dir.join("listener-ca.pem"),
            children: Vec::new(),
        }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen)
    }

    fn start(&mut self, http_port: u16, tls_port: u16) {
        let dns = free_port();
        let dns_mgmt = free_port();
        let log = |name: &str| std::fs::File::create(self.dir.join(name)).expect("log file");
        let challtest = Command::new("pebble-challtestsrv")
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        self.children.push(challtest);
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", self.listen),
                "managementListenAddress": format!("127.0.0.1:{}", self.mgmt),
                "certificate": self.dir.join("listener.pem"),
                "privateKey": self.dir.join("listener.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        std::fs::write(self.dir.join("pebble.json"), config.to_string()).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble");
        self.children.push(pebble);
        wait_for("pebble's directory", Duration::from_secs(30), || {
            self.get(self.listen, "/dir").map(|_| ())
        });
        let root = wait_for("pebble's root", Duration::from_secs(10), || {
            self.get(self.mgmt, "/roots/0")
        });
        std::fs::write(self.root(), root).unwrap();
    }

    /// The root that issued Cygni's certificates.
    fn root(&self) -> PathBuf {
        self.dir.join("root.pem")
    }

    fn get(&self, port: u16, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", "-m", "5", "--cacert"])
            .arg(&self.listener_ca)
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn stop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Cygni pointed at a Pebble that starts once Cygni's ports are known.
fn start_with_pebble(pebble_http_port: Option<u16>) -> (TestDaemon, Pebble) {
    let scratch = tempfile::tempdir().expect("tempdir").keep();
    let mut pebble = Pebble::prepare(&scratch.join("pebble"));
    let directory = pebble.directory();
    let ca = pebble.listener_ca.to_string_lossy().into_owned();
    let d = TestDaemon::start_with(&[
        "--domain",
        DOMAIN,
        "--acme-directory",
        &directory,
        "--acme-ca",
        &ca,
        "--acme-email",
        "ops@example.com",
    ]);
    pebble.start(pebble_http_port.unwrap_or(d.http_port), d.https_port);
    (d, pebble)
}

fn certs_json(d: &TestDaemon, app: &str) -> Vec<serde_json::Value> {
    let out = d.ssh(&d.admin, &format!("certs {app} --json")).ok();
    serde_json::from_str(&out.stdout).expect("certs --json is JSON")
}

fn cert_of(d: &TestDaemon, app: &str, host: &str) -> Option<serde_json::Value> {
    certs_json(d, app).into_iter().find(|c| c["host"] == host)
}

/// `curl https://HOST:PORT/` trusting `root`: (exit code, status, body, http version).
fn curl_https(port: u16, host: &str, root: &Path, extra: &[&str]) -> (i32, u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .arg("--cacert")
        .arg(root)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(extra)
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", "0 0"));
    let mut tail = tail.split_whitespace();
    let code = tail.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let version = tail.next().unwrap_or("").to_owned();
    (
        out.status.code().unwrap_or(-1),
        code,
        body.to_owned(),
        version,
    )
}

fn client_config(root: &Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(root).expect("root pem") {
        roots.add(c.expect("root cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A verified TLS connection to Cygni's HTTPS port for `host`.
fn tls_connect(config: &Arc<rustls::ClientConfig>, port: u16, host: &str) -> Tls {
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).expect("server name");
    let conn = rustls::ClientConnection::new(Arc::clone(config), name).expect("client");
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("TLS handshake with a valid chain");
    }
    tls
}

/// The serial (hex) of the certificate the server presented.
fn serial(tls: &Tls) -> String {
    let leaf = &tls.conn.peer_certificates().expect("peer certs")[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).expect("x509");
    cert.raw_serial_as_string().replace(':', "")
}

/// One keep-alive HTTP/1.1 request on `tls`: (status, body).
fn request(tls: &mut Tls, host: &str) -> (u16, String) {
    write!(tls, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("write request");
    tls.flush().expect("flush");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).expect("read response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).expect("read body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn deploy_fixture(d: &TestDaemon, app: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/procfile-app");
    let files: Vec<(String, String)> = std::fs::read_dir(&src)
        .expect("fixture")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).expect("fixture file"),
            )
        })
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let repo = make_repo(&d.dir.path().join(format!("repo-{app}")), &files);
    d.git(&d.admin, &repo, &["push", &d.remote(app), "main"])
        .ok();
}

/// A preview (`x--web`) gets its own certificate for `x--web.DOMAIN`
/// through the same ACME path as apps, and is served over HTTPS with it;
/// the app's certificate stays the one it had.
#[test]
fn a_preview_gets_its_own_certificate() {
    if !have_pebble() {
        return;
    }
    let (d, pebble) = start_with_pebble(None);
    let host = format!("web.{DOMAIN}");
    deploy_fixture(&d, "web");
    let first = wait_for("a certificate for web", Duration::from_secs(60), || {
        cert_of(&d, "web", &host).filter(|c| c["serial"].is_string())
    });
    d.ssh(&d.admin, "previews:enable web").ok();
    let repo = d.dir.path().join("repo-web");
    common::run_ok(common::git_cmd(&repo).args(["checkout", "-q", "-b", "preview/x"]));
    std::fs::write(repo.join("index.html"), "hello from preview x\n").unwrap();
    common::commit_all(&repo, "preview x");
    d.git(&d.admin, &repo, &["push", &d.remote("web"), "preview/x"])
        .ok();

    let preview = format!("x--web.{DOMAIN}");
    let cert = wait_for(
        "a certificate for the preview",
        Duration::from_secs(60),
        || cert_of(&d, "x--web", &preview).filter(|c| c["serial"].is_string()),
    );
    assert_ne!(cert["serial"], first["serial"], "{cert}");
    let (exit, code, body, _) = curl_https(d.https_port, &preview, &pebble.root(), &[]);
    assert_eq!((exit, code), (0, 200), "{body}\n{}", d.log());
    assert!(body.contains("hello from preview x"), "{body}");
    let (_, code, body, _) = curl_https(d.https_port, &host, &pebble.root(), &[]);
    assert_eq!(code, 200);
    assert!(body.contains("hello from procfile-app"), "{body}");
    assert_eq!(
        cert_of(&d, "web", &host).unwrap()["serial"],
        first["serial"]
    );

    // Removing the preview takes its certificate out of the handshake.
    d.git(&d.admin, &repo, &["push", &d.remote("web"), ":preview/x"])
        .ok();
    wait_for(
        "the preview's host refused",
        Duration::from_secs(20),
        || (curl_https(d.https_port, &preview, &pebble.root(), &[]).0 != 0).then_some(()),
    );
}

/// HTTP-01 issuance with no restart, the app over HTTPS (h2) with a valid
/// chain, the HTTP redirect, a forced renewal that swaps the certificate
/// under a live keep-alive connection, and renewal failing with the CA
/// down while the old certificate keeps serving and retries back off.
#[test]
fn http01_issue_serve_redirect_renew_and_ca_down() {
    if !have_pebble() {
        return;
    }
    let (d, mut pebble) = start_with_pebble(None);
    let host = format!("web.{DOMAIN}");
    deploy_fixture(&d, "web");

    let first = wait_for("a certificate for web", Duration::from_secs(60), || {
        cert_of(&d, "web", &host).filter(|c| c["serial"].is_string())
    });
    assert_eq!(first["challenge"], "http-01", "{first}");
    assert!(first["last_error"].is_null(), "{first}");

    // curl verifies the chain against Pebble's root; h2 through ALPN.
    let (exit, code, body, version) = curl_https(d.https_port, &host, &pebble.root(), &[]);
    assert_eq!((exit, code), (0, 200), "{body}\n{}", d.log());
    assert!(body.contains("hello from procfile-app"), "{body}");
    assert_eq!(version, "2", "HTTP/2 negotiated through ALPN");
    let (exit, code, _, version) = curl_https(d.https_port, &host, &pebble.root(), &["--http1.1"]);
    assert_eq!((exit, code, version.as_str()), (0, 200, "1.1"));

    // The control host (the API, git over HTTPS) gets its own certificate;
    // its plain HTTP redirects, since the domain is not local.
    let control = format!("cygni.{DOMAIN}");
    wait_for(
        "a certificate for the control host",
        Duration::from_secs(60),
        || {
            // `/` is the dashboard: without a session, it sends the
            // browser to sign in.
            let (exit, code, _, _) = curl_https(d.https_port, &control, &pebble.root(), &[]);
            (exit == 0 && code == 303).then_some(())
        },
    );
    let (code, _) = d.curl(&control, "/api/v1/openapi.json");
    assert_eq!(code, 301, "plain HTTP on a public control host redirects");
    // Over HTTPS the dashboard's cookies are Secure (and only then).
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-o", "/dev/null", "-D", "-"])
        .arg("--cacert")
        .arg(pebble.root())
        .arg("--resolve")
        .arg(format!("{control}:{}:127.0.0.1", d.https_port))
        .arg(format!("https://{control}:{}/login", d.https_port))
        .output()
        .expect("run curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie: cygni_login="))
        .unwrap_or_else(|| panic!("no sign-in cookie: {head}"));
    assert!(
        cookie.contains("; secure") && cookie.contains("httponly"),
        "{cookie}"
    );

    // Plain HTTP now redirects; ACME challenges never do.
    wait_for("the HTTPS redirect", Duration::from_secs(20), || {
        (d.curl(&host, "/x?y=1").0 == 308).then_some(())
    });
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{redirect_url}", "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://127.0.0.1:{}/x?y=1", d.http_port))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("https://{host}/x?y=1")
    );
    assert_eq!(d.curl(&host, "/.well-known/acme-challenge/nope").0, 404);

    // domains:add gets its own certificate through HTTP-01, with no
    // restart, and the custom domain is then served over HTTPS.
    let custom = "shop.example.org";
    d.ssh(&d.admin, &format!("domains:add web {custom}")).ok();
    let issued = wait_for(
        "a certificate for the custom domain",
        Duration::from_secs(60),
        || cert_of(&d, "web", custom).filter(|c| c["serial"].is_string()),
    );
    assert_eq!(issued["challenge"], "http-01", "{issued}");
    let (exit, code, body, _) = curl_https(d.https_port, custom, &pebble.root(), &[]);
    assert_eq!((exit, code), (0, 200), "{body}");
    assert!(body.contains("hello from procfile-app"), "{body}");
    wait_for(
        "the custom domain's redirect",
        Duration::from_secs(20),
        || (d.curl(custom, "/").0 == 308).then_some(()),
    );

    let info = d.ssh(&d.admin, "apps:info web").ok().stdout;
    assert!(
        info.contains(&format!("certificate:   {host}: valid until")),
        "{info}"
    );

    // A keep-alive connection made before the renewal ...
    let config = client_config(&pebble.root());
    let mut old = tls_connect(&config, d.https_port, &host);
    let old_serial = serial(&old);
    assert_eq!(old_serial, first["serial"].as_str().unwrap());
    assert_eq!(request(&mut old, &host).0, 200);

    d.ssh(&d.admin, "certs:renew web").ok();
    let renewed = wait_for("a renewed certificate", Duration::from_secs(60), || {
        cert_of(&d, "web", &host).filter(|c| c["serial"] != first["serial"])
    });
    // ... new handshakes get the new certificate (a new client config: a
    // resumed session would carry the old one) ...
    let fresh = tls_connect(&client_config(&pebble.root()), d.https_port, &host);
    assert_eq!(serial(&fresh), renewed["serial"].as_str().unwrap());
    assert_ne!(serial(&fresh), old_serial);
    // ... and the old connection was not dropped.
    let (code, body) = request(&mut old, &host);
    assert_eq!(code, 200);
    assert!(body.contains("hello from procfile-app"));

    // CA down: the renewal fails visibly, the certificate keeps serving,
    // and the retry is scheduled a backoff later, not in a loop.
    pebble.stop();
    let asked = common_now();
    d.ssh(&d.admin, "certs:renew web").ok();
    let failed = wait_for("a failed renewal", Duration::from_secs(30), || {
        cert_of(&d, "web", &host).filter(|c| c["last_error"].is_string())
    });
    assert_eq!(failed["attempts"], 1, "{failed}");
    assert_eq!(
        failed["serial"], renewed["serial"],
        "the old certificate stays"
    );
    let next = failed["next_attempt_at"]
        .as_i64()
        .expect("next attempt stored");
    assert!(next >= asked + 55, "backoff of about a minute: {failed}");
    let text = d.ssh(&d.admin, "certs web").ok().stdout;
    assert!(text.contains("last error:"), "{text}");
    let (exit, code, _, _) = curl_https(d.https_port, &host, &pebble.root(), &[]);
    assert_eq!((exit, code), (0, 200), "still served with the CA down");
    std::thread::sleep(Duration::from_secs(4));
    let later = cert_of(&d, "web", &host).unwrap();
    assert_eq!(later["attempts"], 1, "no tight retry loop: {later}");
}

/// With Pebble's HTTP-01 port pointing nowhere, the order falls back to
/// TLS-ALPN-01 through the resolver. Old TLS versions and unknown SNI are
/// refused in the handshake, and never lead to an order.
#[test]
fn tls_alpn01_and_handshake_refusals() {
    if !have_pebble() {
        return;
    }
    let closed = free_port();
    let (d, pebble) = start_with_pebble(Some(closed));
    let host = format!("alpn.{DOMAIN}");
    d.ssh(&d.admin, "apps:create alpn").ok();
    // One failed order on a loaded machine (the CA slow to validate) is
    // retried after the first backoff (60 s): allow for that one retry,
    // and say what the record held if it never came.
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let cert = loop {
        let seen = cert_of(&d, "alpn", &host);
        if let Some(c) = seen.as_ref().filter(|c| c["serial"].is_string()) {
            break c.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate through TLS-ALPN-01 in 150 s; the record: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(cert["challenge"], "tls-alpn-01", "{cert}");
    // The app has no instances yet: 503, but over a verified TLS session.
    let (exit, code, _, _) = curl_https(d.https_port, &host, &pebble.root(), &[]);
    assert_eq!((exit, code), (0, 503));

    // TLS 1.2 works; TLS 1.1 is refused by the server (protocol version alert).
    let s_client = |version: &str| {
        let out = Command::new("openssl")
            .args(["s_client", version, "-cipher", "DEFAULT:@SECLEVEL=0"])
            .args(["-connect", &format!("127.0.0.1:{}", d.https_port)])
            .args(["-servername", &host])
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = s_client("-tls1_2");
    assert!(ok && text.contains("TLSv1.2"), "{text}");
    let (ok, text) = s_client("-tls1_1");
    assert!(!ok, "TLS 1.1 must fail: {text}");
    assert!(
        text.contains("protocol version") || text.contains("alert"),
        "{text}"
    );
    let (exit, _, _, _) = curl_https(
        d.https_port,
        &host,
        &pebble.root(),
        &["--tlsv1.0", "--tls-max", "1.1"],
    );
    assert_ne!(exit, 0, "curl with TLS <= 1.1 must fail");

    // Unknown SNI: refused even to a client that accepts any certificate.
    let unknown = format!("unknown.{DOMAIN}");
    let (exit, _, _, _) = curl_https(d.https_port, &unknown, &pebble.root(), &["-k"]);
    assert_ne!(exit, 0, "unknown SNI must fail the handshake");
    let out = Command::new("curl")
        .args([
            "-sk",
            "-m",
            "5",
            &format!("https://127.0.0.1:{}/", d.https_port),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no SNI must fail the handshake");
    // ... and ordered nothing.
    std::thread::sleep(Duration::from_secs(3));
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&d.ssh(&d.admin, "certs --json").ok().stdout).unwrap();
    let hosts: Vec<&str> = all.iter().filter_map(|c| c["host"].as_str()).collect();
    let control = format!("cygni.{DOMAIN}");
    assert_eq!(
        hosts,
        vec![host.as_str(), control.as_str()],
        "only the app's own host, and the control host"
    );
    assert!(!d.log().contains(&format!("host={unknown}")), "{}", d.log());
}

/// Without a CA at all: local names get no certificate, and the HTTPS
/// listener refuses their handshakes instead of serving something else.
#[test]
fn local_names_get_no_certificates() {
    let d = TestDaemon::start();
    d.ssh(&d.admin, "apps:create shop").ok();
    d.ssh(&d.admin, "certs:renew shop")
        .fails_with("only served at local names");
    let text = d.ssh(&d.admin, "certs shop").ok().stdout;
    assert!(text.contains("no certificates for shop"), "{text}");
    let info = d.ssh(&d.admin, "apps:info shop").ok().stdout;
    assert!(
        info.contains("certificate:   none (local names only)"),
        "{info}"
    );
    let out = Command::new("curl")
        .args(["-sk", "-m", "5", "--resolve"])
        .arg(format!("shop.localhost:{}:127.0.0.1", d.https_port))
        .arg(format!("https://shop.localhost:{}/", d.https_port))
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Plain HTTP is not redirected without a certificate.
    assert_eq!(d.curl("shop.localhost", "/").0, 503);
    d.ssh(&d.admin, "certs:redirect shop off").ok();
    d.ssh(&d.admin, "certs:redirect shop sideways")
        .fails_with("invalid value");
}

fn common_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
