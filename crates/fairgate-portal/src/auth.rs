//! Portal authentication primitives: browser session secrets and cookies, CSRF comparison,
//! and PKCE/state/nonce values for the OIDC authorization-code flow. Password hashing and
//! policy are the control plane's ([`fairgate_control::passwords`], re-exported here); the
//! (slow) argon2 calls run through [`super::hashing::HashPool`], never on an async worker.
//!
//! Everything here is pure; storage and HTTP handlers live elsewhere. Session cookies carry 32 random bytes (hex); only their SHA-256 is stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cookie::{Cookie, SameSite};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use fairgate_control::passwords::{
    dummy_verify, hash_password, password_problem, verify_password, AuthError, MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
};

/// Name of the portal session cookie.
pub const SESSION_COOKIE: &str = "fg_session";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    OsRng.fill_bytes(&mut buf);
    buf
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// A new session: (cookie value: 64 hex chars, its SHA-256 hex for storage, CSRF token:
/// 64 hex chars).
pub fn new_session_secret() -> (String, String, String) {
    let cookie = to_hex(&random_bytes::<32>());
    let stored = hash_session_id(&cookie);
    let csrf = to_hex(&random_bytes::<32>());
    (cookie, stored, csrf)
}

/// Hex SHA-256 of a session cookie value: the form stored server-side.
pub fn hash_session_id(cookie_value: &str) -> String {
    to_hex(&Sha256::digest(cookie_value.as_bytes()))
}

/// Constant-time compare of a submitted CSRF token with the session's; an empty expected
/// token never matches.
pub fn csrf_ok(submitted: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(submitted.as_bytes().ct_eq(expected.as_bytes()))
}

/// RFC 6265 cookie-octet (no whitespace, `"`, `,`, `;`, `\`, controls).
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// `Set-Cookie` value of an HttpOnly, SameSite=Lax cookie scoped to `path`, `Secure` when
/// `secure`. `None` for a value that is not an RFC 6265 cookie value (it would let a caller
/// inject attributes).
pub(crate) fn set_cookie(
    name: &'static str,
    value: &str,
    path: &'static str,
    max_age_s: u64,
    secure: bool,
) -> Option<HeaderValue> {
    if !value.bytes().all(is_cookie_octet) {
        return None;
    }
    let c = Cookie::build((name, value))
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(max_age_s).unwrap_or(i64::MAX),
        ))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path(path)
        .secure(secure)
        .build();
    HeaderValue::from_str(&c.to_string()).ok()
}

/// The first non-empty value of cookie `name` in the request's `Cookie` header(s).
pub(crate) fn cookie_from_headers(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|c| c.name() == name)
        .map(|c| c.value_trimmed().to_owned())
        .find(|value| !value.is_empty())
}

/// `Set-Cookie` value for the session cookie. A value that is not a valid cookie value
/// (never the case for [`new_session_secret`] output) yields the clearing cookie instead.
pub fn session_cookie(value: &str, max_age_s: u64, secure: bool) -> HeaderValue {
    if value.is_empty() {
        return clear_session_cookie(secure);
    }
    set_cookie(SESSION_COOKIE, value, "/", max_age_s, secure)
        .unwrap_or_else(|| clear_session_cookie(secure))
}

/// `Set-Cookie` value that removes the session cookie.
pub fn clear_session_cookie(secure: bool) -> HeaderValue {
    set_cookie(SESSION_COOKIE, "", "/", 0, secure)
        .unwrap_or_else(|| HeaderValue::from_static("fg_session=; Max-Age=0; Path=/"))
}

/// The session cookie value from the request's `Cookie` header(s), if present and
/// non-empty. Handles several cookies per header, several headers, and stray whitespace.
pub fn session_from_headers(headers: &HeaderMap) -> Option<String> {
    cookie_from_headers(headers, SESSION_COOKIE)
}

/// 32 random bytes, base64url without padding (43 characters): OIDC `state` and `nonce`.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// PKCE S256 challenge (RFC 7636 §4.2): base64url(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A fresh PKCE (verifier, S256 challenge) pair.
pub fn pkce_pair() -> (String, String) {
    let verifier = random_token();
    let challenge = pkce_challenge(&verifier);
    (verifier, challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_secret_shapes() {
        let (cookie, stored, csrf) = new_session_secret();
        for s in [&cookie, &stored, &csrf] {
            assert_eq!(s.len(), 64);
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
        assert_eq!(stored, hash_session_id(&cookie));
        assert_ne!(cookie, csrf);
        assert_ne!(new_session_secret().0, cookie);
        assert_eq!(
            hash_session_id("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn csrf_compare() {
        let (_, _, token) = new_session_secret();
        assert!(csrf_ok(&token, &token));
        assert!(!csrf_ok(&token[..63], &token));
        assert!(!csrf_ok(&format!("{token}0"), &token));
        assert!(!csrf_ok("", &token));
        assert!(!csrf_ok("", ""));
        let mut other = token.clone().into_bytes();
        other[0] = if other[0] == b'0' { b'1' } else { b'0' };
        assert!(!csrf_ok(std::str::from_utf8(&other).unwrap(), &token));
    }

    #[test]
    fn cookie_attributes() {
        // The `cookie` crate's attribute order; the attributes are the same as ever.
        assert_eq!(
            session_cookie("abc123", 3600, false),
            "fg_session=abc123; HttpOnly; SameSite=Lax; Path=/; Max-Age=3600"
        );
        assert_eq!(
            session_cookie("abc123", 3600, true),
            "fg_session=abc123; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=3600"
        );
        assert_eq!(
            clear_session_cookie(false),
            "fg_session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
        );
        assert_eq!(
            clear_session_cookie(true),
            "fg_session=; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=0"
        );
        // Exactly these attributes, whatever their order.
        let attrs = |v: HeaderValue| {
            let mut a: Vec<String> = v
                .to_str()
                .unwrap()
                .split(';')
                .map(|p| p.trim().to_owned())
                .collect();
            a.sort();
            a
        };
        let mut want: Vec<String> =
            "fg_session=abc123; Max-Age=3600; HttpOnly; SameSite=Lax; Path=/; Secure"
                .split("; ")
                .map(str::to_owned)
                .collect();
        want.sort();
        assert_eq!(attrs(session_cookie("abc123", 3600, true)), want);
        // Attribute injection is refused.
        assert_eq!(
            session_cookie("x; Domain=evil", 60, true),
            clear_session_cookie(true)
        );
        assert_eq!(session_cookie("", 60, false), clear_session_cookie(false));
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(session_from_headers(&h), None);
        h.insert(
            COOKIE,
            HeaderValue::from_static("theme=dark;  fg_session = abc ; other=1"),
        );
        assert_eq!(session_from_headers(&h).as_deref(), Some("abc"));

        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; fg_session_old=zzz"));
        h.append(COOKIE, HeaderValue::from_static("b=2;fg_session=def"));
        assert_eq!(session_from_headers(&h).as_deref(), Some("def"));

        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("fg_session=; x=fg_session=no"),
        );
        assert_eq!(session_from_headers(&h), None);

        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("fg_session=\"q\""));
        assert_eq!(session_from_headers(&h).as_deref(), Some("q"));
    }

    #[test]
    fn base64url_vectors() {
        // RFC 4648 §10, padding removed.
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(URL_SAFE_NO_PAD.encode(input), want);
            assert_eq!(URL_SAFE_NO_PAD.decode(want).unwrap(), input.as_bytes());
        }
        // URL-safe alphabet: standard "+/8=" becomes "-_8".
        assert_eq!(URL_SAFE_NO_PAD.encode([0xfb, 0xff]), "-_8");
        assert_eq!(URL_SAFE_NO_PAD.encode([0xff; 3]), "____");
    }

    #[test]
    fn pkce_rfc7636_appendix_b() {
        // RFC 7636 Appendix B: the verifier's 32 octets, the verifier, and its S256 challenge.
        let octets: [u8; 32] = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(URL_SAFE_NO_PAD.encode(octets), verifier);
        assert_eq!(URL_SAFE_NO_PAD.decode(verifier).unwrap(), octets);
        assert_eq!(
            pkce_challenge(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn random_tokens_and_pairs() {
        let (v, c) = pkce_pair();
        assert_eq!(v.len(), 43);
        assert_eq!(c.len(), 43);
        assert_eq!(c, pkce_challenge(&v));
        let t = random_token();
        assert_eq!(t.len(), 43);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(random_token(), t);
    }
}
