//! The browser side of a session: cookies, forms and CSRF tokens. The
//! sessions themselves (who, until when) are the service's
//! ([`crate::service::sessions`]).

use hyper::header::{self, HeaderMap, HeaderValue};

/// The session cookie. HttpOnly: scripts never see it; SameSite=Strict:
/// no other site's page sends it.
pub const SESSION_COOKIE: &str = "cygni_session";
/// A sign-in form's double-submit value: set when the form is shown, and
/// checked against the form's field when it comes back, so another site
/// cannot sign a browser in as someone else.
pub const LOGIN_COOKIE: &str = "cygni_login";
/// The header the dashboard's script sends its CSRF token in, on every
/// state-changing API request.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field that carries it in a plain form (sign-out).
pub const CSRF_FIELD: &str = "csrf";

/// A cookie's value from `Cookie:` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The session cookie of a request, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE)
}

/// The CSRF token a request carries in [`CSRF_HEADER`].
pub fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok())
}

/// `Set-Cookie` for `name=value`; `max_age` 0 clears it. `Secure` when
/// the page came over HTTPS (on plain HTTP a browser would drop it).
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text =
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    // Names are constants and values base62: always a valid header.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// A random base62 value for the sign-in form's double submit.
pub fn random_value() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    (0..32)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `a=1&b=2` as pairs, percent-decoded.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Two strings are equal, in constant time.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    !a.is_empty() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("other=1; cygni_session_x=no; cygni_session=abc"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
        let mut empty = HeaderMap::new();
        empty.append(header::COOKIE, HeaderValue::from_static("cygni_session="));
        assert_eq!(session_cookie(&empty), None);
    }

    #[test]
    fn cookie_attributes() {
        let plain = set_cookie(SESSION_COOKIE, "abc", 60, false);
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(plain.contains("Max-Age=60") && !plain.contains("Secure"));
        let tls = set_cookie(SESSION_COOKIE, "abc", 60, true);
        assert!(tls.to_str().unwrap().ends_with("; Secure"));
    }

    #[test]
    fn forms_decode() {
        let f = form(b"token=cyg_a%2Bb&csrf=x+y&empty=");
        assert_eq!(field(&f, "token"), Some("cyg_a+b"));
        assert_eq!(field(&f, "csrf"), Some("x y"));
        assert_eq!(field(&f, "empty"), None);
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("", ""));
    }
}
