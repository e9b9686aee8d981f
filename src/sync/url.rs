//! Source URLs: which schemes may be fetched, which addresses may be
//! dialled, and how a URL is shown (credentials masked).
//!
//! ```text
//! "https://u:p@host/r.git" ──parse──► SourceUrl { scheme, host, port, secret }
//!        │                                   │ masked(): https://***@host/r.git
//!        ▼                                   ▼
//!  Policy::check ── scheme allowed? ── resolve host ── every address public? ──► Target (pinned IP)
//! ```
//!
//! The address check is done here, on what the resolver returned, and
//! git is then pinned to the checked address (`http.curloptResolve`, or
//! the IP written into the URL for ssh/git), so a name that resolves to
//! something else on git's own lookup (DNS rebinding) cannot bypass it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("{0:?} is not a URL (expected https://HOST/PATH)")]
    Parse(String),
    #[error("{url}: the {scheme}:// scheme is not allowed here (https:// is; an admin can allow {scheme} with sync_allow_schemes)")]
    Scheme { url: String, scheme: String },
    #[error("{url}: only https, http, ssh, git and file URLs can be fetched")]
    UnknownScheme { url: String },
    #[error("{url}: the URL has no host")]
    NoHost { url: String },
    #[error("{url}: a file:// URL names a path on this server, not a host")]
    FileHost { url: String },
    #[error("{url}: cannot resolve {host}: {reason}")]
    Resolve {
        url: String,
        host: String,
        reason: String,
    },
    #[error("{url}: {ip} is {class} address, which is refused (an admin can allow private addresses with sync_allow_private = true)")]
    Address {
        url: String,
        ip: IpAddr,
        class: &'static str,
    },
    #[error("{url}: a URL with a query or a fragment is not a repository")]
    Extra { url: String },
}

/// How a repository is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
    Ssh,
    Git,
    File,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
            Scheme::Ssh => "ssh",
            Scheme::Git => "git",
            Scheme::File => "file",
        }
    }

    pub fn parse(s: &str) -> Option<Scheme> {
        Some(match s {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            "ssh" => Scheme::Ssh,
            "git" => Scheme::Git,
            "file" => Scheme::File,
            _ => return None,
        })
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => 80,
            Scheme::Ssh => 22,
            Scheme::Git => 9418,
            Scheme::File => 0,
        }
    }
}

/// A parsed source URL. The credentials (userinfo), when there are any,
/// are kept apart: [`SourceUrl::masked`] is what is shown and stored as
/// the URL; [`SourceUrl::secret`] only goes to git and to its own column.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceUrl {
    /// The URL without userinfo.
    bare: url::Url,
    scheme: Scheme,
    /// `user` or `user:password`, percent-encoded as given.
    secret: Option<String>,
}

impl std::fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl std::fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl SourceUrl {
    /// Parse a URL as a user typed it. Errors never repeat credentials.
    pub fn parse(input: &str) -> Result<SourceUrl, UrlError> {
        let input = input.trim();
        let parsed = url::Url::parse(input).map_err(|_| UrlError::Parse(mask_text(input)))?;
        let scheme = Scheme::parse(parsed.scheme()).ok_or_else(|| UrlError::UnknownScheme {
            url: mask_url(&parsed),
        })?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(UrlError::Extra {
                url: mask_url(&parsed),
            });
        }
        // An ssh user name alone (`git@`) says who logs in, not a secret.
        let ssh_user_only = scheme == Scheme::Ssh && parsed.password().is_none();
        let secret = match (parsed.username(), parsed.password()) {
            _ if ssh_user_only => None,
            ("", None) => None,
            (user, None) => Some(user.to_owned()),
            (user, Some(pw)) => Some(format!("{user}:{pw}")),
        };
        let mut bare = parsed.clone();
        if !ssh_user_only {
            // Infallible for URLs with a host; file: URLs have no userinfo.
            let _ = bare.set_username("");
            let _ = bare.set_password(None);
        }
        let url = SourceUrl {
            bare,
            scheme,
            secret,
        };
        match scheme {
            Scheme::File if url.host().is_some_and(|h| h != "localhost") => {
                return Err(UrlError::FileHost { url: url.masked() });
            }
            Scheme::File => {}
            _ if url.host().is_none() => return Err(UrlError::NoHost { url: url.masked() }),
            _ => {}
        }
        Ok(url)
    }

    /// Rebuild from the two stored columns.
    pub fn from_stored(masked: &str, secret: Option<&str>) -> Result<SourceUrl, UrlError> {
        let mut url = SourceUrl::parse(&unmask_placeholder(masked))?;
        url.secret = secret.map(str::to_owned);
        Ok(url)
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The URL without its userinfo (for resolving relative submodule
    /// URLs against it).
    pub fn bare(&self) -> &url::Url {
        &self.bare
    }

    /// The same URL carrying `other`'s credentials: a submodule on the
    /// superproject's own scheme, host and port is reached as it is.
    pub fn with_secret_of(mut self, other: &SourceUrl) -> SourceUrl {
        let same_origin = self.scheme == other.scheme
            && self.host() == other.host()
            && self.port() == other.port();
        if same_origin && self.secret.is_none() {
            self.secret = other.secret.clone();
        }
        self
    }

    /// The host, unbracketed for IPv6.
    pub fn host(&self) -> Option<String> {
        match self.bare.host()? {
            url::Host::Domain("") => None,
            url::Host::Domain(d) => Some(d.to_owned()),
            url::Host::Ipv4(ip) => Some(ip.to_string()),
            url::Host::Ipv6(ip) => Some(ip.to_string()),
        }
    }

    pub fn port(&self) -> u16 {
        self.bare
            .port()
            .unwrap_or_else(|| self.scheme.default_port())
    }

    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// What users, the audit log and `apps:info` see: userinfo as `***`.
    pub fn masked(&self) -> String {
        let s = self.bare.to_string();
        match &self.secret {
            Some(_) => {
                let prefix = format!("{}://", self.scheme.as_str());
                match s.strip_prefix(&prefix) {
                    Some(rest) => format!("{prefix}***@{rest}"),
                    None => s,
                }
            }
            None => s,
        }
    }

    /// The URL git is given: with the credentials, and for ssh and git
    /// with the checked address in place of the name (https keeps the
    /// name for TLS and pins the address with `http.curloptResolve`).
    pub fn for_git(&self, pinned: Option<IpAddr>) -> String {
        let mut u = self.bare.clone();
        if let (Some(ip), Scheme::Ssh | Scheme::Git) = (pinned, self.scheme) {
            let _ = u.set_ip_host(ip);
        }
        if let Some(secret) = &self.secret {
            let (user, pw) = match secret.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (secret.as_str(), None),
            };
            let _ = u.set_username(user);
            let _ = u.set_password(pw);
        }
        u.to_string()
    }

    /// For http(s): the URL without credentials and an `Authorization`
    /// header carrying them, so they reach git through its environment
    /// (readable only by the daemon's user) and not its command line
    /// (which every user on the host can read in `ps`).
    pub fn http_auth(&self) -> Option<(String, String)> {
        use base64::Engine;
        if !matches!(self.scheme, Scheme::Https | Scheme::Http) {
            return None;
        }
        let secret = self.secret.as_deref()?;
        let (user, pw) = secret.split_once(':').unwrap_or((secret, ""));
        let plain = format!("{}:{}", percent_decode(user), percent_decode(pw));
        let header = format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(plain)
        );
        Some((self.bare.to_string(), header))
    }

    /// Remove the credentials from text git printed about this URL.
    pub fn scrub(&self, text: &str) -> String {
        let Some(secret) = &self.secret else {
            return text.to_owned();
        };
        let mut out = text.replace(secret.as_str(), "***");
        if let Some((_, pw)) = secret.split_once(':') {
            if !pw.is_empty() {
                out = out.replace(pw, "***");
            }
        }
        out
    }
}

/// `%41` → `A`, as userinfo is percent-encoded in a URL.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `***@` in a stored URL stands for credentials kept elsewhere.
fn unmask_placeholder(masked: &str) -> String {
    masked.replacen("://***@", "://", 1)
}

fn mask_url(u: &url::Url) -> String {
    let mut bare = u.clone();
    let had = !u.username().is_empty() || u.password().is_some();
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    let s = bare.to_string();
    if had {
        s.replacen("://", "://***@", 1)
    } else {
        s
    }
}

/// Mask anything between `://` and an `@` in text that did not parse.
pub fn mask_text(s: &str) -> String {
    match s.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://***{}", &rest[at..]),
                None => s.to_owned(),
            }
        }
        None => s.to_owned(),
    }
}

/// What an admin allows beyond https to public addresses.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Schemes allowed besides https (config `sync_allow_schemes`).
    pub allow_schemes: Vec<Scheme>,
    /// Loopback, private, link-local ... addresses too (`sync_allow_private`).
    pub allow_private: bool,
}

/// Where git may go for a checked URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The checked address, for hosts (none for file://).
    pub pinned: Option<IpAddr>,
}

impl Policy {
    /// Is the scheme allowed? https always is.
    pub fn check_scheme(&self, url: &SourceUrl) -> Result<(), UrlError> {
        let s = url.scheme();
        if s == Scheme::Https || self.allow_schemes.contains(&s) {
            Ok(())
        } else {
            Err(UrlError::Scheme {
                url: url.masked(),
                scheme: s.as_str().to_owned(),
            })
        }
    }

    /// Every address `addrs` holds must be public (unless allowed).
    pub fn check_addresses(&self, url: &SourceUrl, addrs: &[IpAddr]) -> Result<IpAddr, UrlError> {
        let first = *addrs.first().ok_or_else(|| UrlError::Resolve {
            url: url.masked(),
            host: url.host().unwrap_or_default(),
            reason: "no addresses".into(),
        })?;
        if !self.allow_private {
            for ip in addrs {
                if let Some(class) = classify(*ip).refused() {
                    return Err(UrlError::Address {
                        url: url.masked(),
                        ip: *ip,
                        class,
                    });
                }
            }
        }
        Ok(first)
    }

    /// The scheme, then the host's addresses, resolved here.
    pub async fn check(&self, url: &SourceUrl) -> Result<Target, UrlError> {
        self.check_scheme(url)?;
        let Some(host) = url.host() else {
            return Ok(Target { pinned: None });
        };
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let lookup = tokio::net::lookup_host((host.clone(), url.port()));
                match tokio::time::timeout(std::time::Duration::from_secs(10), lookup).await {
                    Ok(Ok(it)) => it.map(|a| a.ip()).collect(),
                    Ok(Err(e)) => {
                        return Err(UrlError::Resolve {
                            url: url.masked(),
                            host,
                            reason: e.to_string(),
                        })
                    }
                    Err(_) => {
                        return Err(UrlError::Resolve {
                            url: url.masked(),
                            host,
                            reason: "timed out".into(),
                        })
                    }
                }
            }
        };
        let pinned = self.check_addresses(url, &addrs)?;
        Ok(Target {
            pinned: Some(pinned),
        })
    }
}

/// What kind of address an IP is, for the SSRF rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    Public,
    Unspecified,
    Loopback,
    Private,
    UniqueLocal,
    LinkLocal,
    Cgnat,
    Multicast,
    Reserved,
}

impl AddrClass {
    /// The reason a refused class is refused, as in "127.0.0.1 is a
    /// loopback address"; None for public addresses.
    pub fn refused(self) -> Option<&'static str> {
        Some(match self {
            AddrClass::Public => return None,
            AddrClass::Unspecified => "an unspecified",
            AddrClass::Loopback => "a loopback",
            AddrClass::Private => "a private (RFC 1918)",
            AddrClass::UniqueLocal => "a unique local (ULA)",
            AddrClass::LinkLocal => "a link-local",
            AddrClass::Cgnat => "a shared (CGNAT)",
            AddrClass::Multicast => "a multicast",
            AddrClass::Reserved => "a reserved",
        })
    }
}

pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => AddrClass::Unspecified,
        (127, _, _) => AddrClass::Loopback,
        (10, _, _) | (192, 168, _) => AddrClass::Private,
        (172, b, _) if (16..32).contains(&b) => AddrClass::Private,
        (169, 254, _) => AddrClass::LinkLocal,
        (100, b, _) if (64..128).contains(&b) => AddrClass::Cgnat,
        (224..=239, _, _) => AddrClass::Multicast,
        // 240/4 (with the broadcast address), IETF assignments, benchmarking
        // and documentation ranges: nothing a repository lives on.
        (240..=255, _, _) | (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => {
            AddrClass::Reserved
        }
        (198, 18 | 19, _) => AddrClass::Reserved,
        _ => AddrClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddrClass::Loopback;
    }
    // IPv4 inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d),
    // NAT64 (64:ff9b::/96) and 6to4 (2002:AABB:CCDD::/48) reach the IPv4
    // address they carry, so they are what it is.
    let low_v4 = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    if seg[..5] == [0, 0, 0, 0, 0] && (seg[5] == 0xffff || seg[5] == 0) {
        return classify_v4(low_v4);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(low_v4);
    }
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return classify_v4(v4);
    }
    match seg[0] {
        s if s & 0xfe00 == 0xfc00 => AddrClass::UniqueLocal,
        s if s & 0xffc0 == 0xfe80 => AddrClass::LinkLocal,
        // Site-local (deprecated) is private in all but name.
        s if s & 0xffc0 == 0xfec0 => AddrClass::Private,
        s if s & 0xff00 == 0xff00 => AddrClass::Multicast,
        0x2001 if seg[1] == 0x0db8 => AddrClass::Reserved,
        _ => AddrClass::Public,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_classes() {
        let cases = [
            ("8.8.8.8", AddrClass::Public),
            ("140.82.112.3", AddrClass::Public),
            ("0.0.0.0", AddrClass::Unspecified),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.8.9.10", AddrClass::Loopback),
            ("10.1.2.3", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("100.64.0.1", AddrClass::Cgnat),
            ("100.127.255.255", AddrClass::Cgnat),
            ("100.128.0.1", AddrClass::Public),
            ("224.0.0.1", AddrClass::Multicast),
            ("255.255.255.255", AddrClass::Reserved),
            ("::", AddrClass::Unspecified),
            ("::1", AddrClass::Loopback),
            ("fd00::1", AddrClass::UniqueLocal),
            ("fc12::1", AddrClass::UniqueLocal),
            ("fe80::1", AddrClass::LinkLocal),
            ("ff02::1", AddrClass::Multicast),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:10.0.0.1", AddrClass::Private),
            ("::ffff:169.254.169.254", AddrClass::LinkLocal),
            ("::ffff:8.8.8.8", AddrClass::Public),
            ("::127.0.0.1", AddrClass::Loopback),
            ("64:ff9b::a9fe:a9fe", AddrClass::LinkLocal),
            ("2002:7f00:1::", AddrClass::Loopback),
            ("2606:4700::1111", AddrClass::Public),
            ("2001:db8::1", AddrClass::Reserved),
        ];
        for (addr, class) in cases {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn userinfo_is_masked_everywhere_it_is_shown() {
        let u = SourceUrl::parse("https://bob:s3cret@example.org/r.git").unwrap();
        assert_eq!(u.masked(), "https://***@example.org/r.git");
        assert_eq!(format!("{u}"), "https://***@example.org/r.git");
        assert_eq!(format!("{u:?}"), "https://***@example.org/r.git");
        assert_eq!(u.secret(), Some("bob:s3cret"));
        assert_eq!(u.for_git(None), "https://bob:s3cret@example.org/r.git");
        assert_eq!(
            u.scrub("fatal: unable to access 'https://bob:s3cret@example.org/'"),
            "fatal: unable to access 'https://***@example.org/'"
        );
        let again = SourceUrl::from_stored(&u.masked(), u.secret()).unwrap();
        assert_eq!(again.for_git(None), u.for_git(None));
        // Errors about a credentialed URL do not repeat the credentials.
        let e = SourceUrl::parse("ftp://bob:s3cret@example.org/r").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = SourceUrl::parse("https://bob:s3cret@exa mple.org/r").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let plain = SourceUrl::parse("https://example.org/r.git").unwrap();
        assert_eq!(plain.masked(), "https://example.org/r.git");
        assert_eq!(plain.secret(), None);
    }

    #[test]
    fn schemes_https_by_default_others_when_allowed() {
        let strict = Policy::default();
        let url = |s: &str| SourceUrl::parse(s).unwrap();
        assert!(strict.check_scheme(&url("https://example.org/r")).is_ok());
        for s in [
            "http://example.org/r",
            "ssh://git@example.org/r",
            "git://example.org/r",
            "file:///srv/r.git",
        ] {
            let e = strict.check_scheme(&url(s)).unwrap_err().to_string();
            assert!(e.contains("scheme is not allowed"), "{s}: {e}");
        }
        let open = Policy {
            allow_schemes: vec![Scheme::File, Scheme::Ssh],
            allow_private: false,
        };
        assert!(open.check_scheme(&url("file:///srv/r.git")).is_ok());
        assert!(open.check_scheme(&url("ssh://git@example.org/r")).is_ok());
        assert!(open.check_scheme(&url("http://example.org/r")).is_err());
        assert!(matches!(
            SourceUrl::parse("ftp://example.org/r"),
            Err(UrlError::UnknownScheme { .. })
        ));
        assert!(matches!(
            SourceUrl::parse("file://evil.example/r"),
            Err(UrlError::FileHost { .. })
        ));
        assert!(matches!(
            SourceUrl::parse("https://example.org/r?x=1"),
            Err(UrlError::Extra { .. })
        ));
        assert!(matches!(
            SourceUrl::parse("not a url"),
            Err(UrlError::Parse(_))
        ));
    }

    #[test]
    fn refused_addresses_name_the_reason_and_any_bad_address_refuses() {
        let strict = Policy::default();
        let u = SourceUrl::parse("https://example.org/r").unwrap();
        let e = strict
            .check_addresses(&u, &[ip("8.8.8.8"), ip("10.0.0.1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.0.0.1 is a private (RFC 1918) address"),
            "{e}"
        );
        assert_eq!(
            strict.check_addresses(&u, &[ip("8.8.8.8")]).unwrap(),
            ip("8.8.8.8")
        );
        let open = Policy {
            allow_private: true,
            ..Policy::default()
        };
        assert_eq!(
            open.check_addresses(&u, &[ip("127.0.0.1")]).unwrap(),
            ip("127.0.0.1")
        );
    }

    #[tokio::test]
    async fn literal_and_resolved_hosts_are_checked() {
        let strict = Policy::default();
        for (s, needle) in [
            ("https://127.0.0.1/r", "loopback"),
            ("https://localhost/r", "loopback"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://10.2.3.4/r", "private"),
            ("https://[::1]/r", "loopback"),
            ("https://[::ffff:127.0.0.1]/r", "loopback"),
            ("https://0x7f.1/r", "loopback"),
            ("https://2130706433/r", "loopback"),
        ] {
            let e = strict
                .check(&SourceUrl::parse(s).unwrap())
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{s}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn http_credentials_go_in_a_header_not_the_url() {
        let u = SourceUrl::parse("https://bob:p%40ss@example.org/r.git").unwrap();
        let (url, header) = u.http_auth().unwrap();
        assert_eq!(url, "https://example.org/r.git");
        // base64("bob:p@ss")
        assert_eq!(header, "Authorization: Basic Ym9iOnBAc3M=");
        assert_eq!(
            SourceUrl::parse("https://example.org/r")
                .unwrap()
                .http_auth(),
            None
        );
    }

    #[test]
    fn ssh_and_git_are_pinned_in_the_url() {
        let u = SourceUrl::parse("ssh://git@example.org:2222/r.git").unwrap();
        assert_eq!(
            u.for_git(Some(ip("203.0.113.9"))),
            "ssh://git@203.0.113.9:2222/r.git"
        );
        let h = SourceUrl::parse("https://example.org/r.git").unwrap();
        assert_eq!(
            h.for_git(Some(ip("203.0.113.9"))),
            "https://example.org/r.git"
        );
    }
}
