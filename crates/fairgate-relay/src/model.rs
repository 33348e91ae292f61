//! [`read_model`]: the one way the gateway reads which model a request is for, on paths whose
//! bodies it does not otherwise parse (`/v1/audio/*`, `/v1/rerank`, `/v1/score`, `/tokenize`,
//! ...). The key-scope check, routing and the body sent upstream all use its answer, so the
//! gateway checks exactly the model the backend will run.
//!
//! How the backend (vLLM, a FastAPI app) reads a body decides how we read it:
//!
//! | `Content-Type`                                   | body read as                              |
//! |--------------------------------------------------|-------------------------------------------|
//! | none, `application/json`, `application/*+json`   | JSON: the top-level `model` member        |
//! | `multipart/form-data; boundary=...`              | form: the part named `model`              |
//! | `application/x-www-form-urlencoded`              | form: the field named `model`             |
//! | anything else                                    | not read by the backend as JSON or a form |
//!
//! For "anything else" the backend does not parse the body as JSON (FastAPI hands such a body
//! to validation as raw bytes, which fails), so a body there cannot choose a model. But a body
//! that *is* a JSON object naming a model, sent with another content type, is a request whose
//! meaning depends on who reads it: it is refused as ambiguous rather than guessed at.
//!
//! Refused with code `ambiguous_model` (HTTP 400):
//! - more than one top-level `model` member in a JSON body (serde_json and Python's `json` keep
//!   the last; we do not pick one),
//! - more than one `model` part in a form, more than one `model` query parameter,
//! - a query `model` that disagrees with the body's,
//! - a JSON object naming a model sent with a content type the backend does not read as JSON.
//!
//! A UTF-8 byte-order mark before a JSON body is refused (`invalid_json`), as Python's
//! `json.loads` refuses it; leading whitespace is accepted, as both parsers accept it. A JSON
//! `"model": null` reads as absent (vLLM's `model: Optional[str] = None`).

use crate::json::{Handler, KeySeed, Seed, Shape};
use crate::request::{ambiguous, RequestError};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess};

/// How the backend will read the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// Empty body (a `GET`, or a `POST` without content).
    Empty,
    /// A JSON object.
    Json,
    /// `multipart/form-data`.
    Form,
    /// Anything else: the backend does not read a model from it.
    Opaque,
}

/// Where the model was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Body,
    Query,
    /// Neither names one.
    None,
}

/// The model of a request, as the backend will read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRead {
    pub model: Option<String>,
    pub source: ModelSource,
    pub body: BodyKind,
}

impl ModelRead {
    /// The body must be told the model explicitly before it goes upstream: a JSON body that did
    /// not name one (the model came from the query), so the backend cannot fall back to its
    /// default model, which may be another one than the key was checked for.
    pub fn needs_model_in_body(&self) -> bool {
        self.body == BodyKind::Json && self.source == ModelSource::Query
    }
}

/// Reads the model of a request from its `Content-Type` (`""` when absent), query string and
/// body; see the module docs for the rules and refusals.
pub fn read_model(
    content_type: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<ModelRead, RequestError> {
    let from_query = query_model(query.unwrap_or(""))?;
    let (kind, from_body) = body_model(content_type, body)?;
    let (model, source) = match (from_body, from_query) {
        (Some(b), Some(q)) if b != q => {
            return Err(ambiguous(format!(
            "the `model` query parameter ({q:?}) and the body's `model` ({b:?}) disagree; send one"
        )))
        }
        (Some(b), _) => (Some(b), ModelSource::Body),
        (None, Some(q)) => {
            if kind == BodyKind::Form {
                // A form without a `model` part makes the backend use its default model, which
                // need not be the one the query names: put it in the form.
                return Err(ambiguous(
                    "the model is named only in the query string; put `model` in the form",
                ));
            }
            (Some(q), ModelSource::Query)
        }
        (None, None) => (None, ModelSource::None),
    };
    Ok(ModelRead {
        model,
        source,
        body: kind,
    })
}

/// The `model` query parameter, percent- and `+`-decoded (`None` when absent or empty);
/// refused when repeated.
pub fn query_model(query: &str) -> Result<Option<String>, RequestError> {
    let mut found: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(k)? != "model" {
            continue;
        }
        if found.is_some() {
            return Err(ambiguous(
                "the `model` query parameter is given more than once",
            ));
        }
        found = Some(form_decode(v)?);
    }
    Ok(found.filter(|m| !m.is_empty()))
}

/// `application/x-www-form-urlencoded` decoding (as Starlette decodes a query string).
fn form_decode(s: &str) -> Result<String, RequestError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| RequestError {
        message: "the query string is not valid UTF-8 once decoded".into(),
        param: Some("model".into()),
        code: "invalid_value",
    })
}

/// The essence of a media type (`application/json` of `Application/JSON; charset=utf-8`).
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn reads_as_json(media: &str) -> bool {
    media.is_empty()
        || media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"))
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

fn body_model(content_type: &str, body: &[u8]) -> Result<(BodyKind, Option<String>), RequestError> {
    let media = media_type(content_type);
    if media == "multipart/form-data" {
        return form_model(content_type, body).map(|m| (BodyKind::Form, m));
    }
    if media == "application/x-www-form-urlencoded" {
        // FastAPI's `Form()` parameters (vLLM's audio endpoints) accept this too.
        let text = std::str::from_utf8(body).map_err(RequestError::invalid_utf8)?;
        return query_model(text)
            .map_err(|_| ambiguous("the form has more than one `model` field"))
            .map(|m| (BodyKind::Form, m));
    }
    if body.trim_ascii().is_empty() {
        return Ok((BodyKind::Empty, None));
    }
    if reads_as_json(&media) {
        if body.starts_with(BOM) {
            return Err(RequestError {
                message: "request body is not valid JSON: it starts with a byte-order mark".into(),
                param: None,
                code: "invalid_json",
            });
        }
        return json_model(body).map(|m| (BodyKind::Json, m));
    }
    // Another content type: the backend does not read a model from this body. Refuse one that
    // would read as a JSON object naming a model to anyone who ignored the content type.
    let stripped = body.strip_prefix(BOM).unwrap_or(body);
    if let Ok(Some(m)) = json_model(stripped) {
        return Err(ambiguous(format!(
            "the body is a JSON object naming model {m:?} but is sent as `{media}`; send it as `application/json`"
        )));
    }
    Ok((BodyKind::Opaque, None))
}

/// The top-level `model` of a JSON object body; refused when the key repeats.
pub(crate) fn json_model(body: &[u8]) -> Result<Option<String>, RequestError> {
    let text = std::str::from_utf8(body).map_err(RequestError::invalid_utf8)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let top = Seed(TopModelH)
        .deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|e| RequestError::invalid_json(&e))?;
    let (count, value) = top.map_err(RequestError::not_an_object)?;
    if count > 1 {
        return Err(ambiguous(format!(
            "the body has {count} `model` members; send exactly one"
        )));
    }
    match value {
        None | Some(Err(Shape::Null)) => Ok(None),
        Some(Err(got)) => Err(RequestError::invalid_type("model".into(), "a string", got)),
        Some(Ok(m)) if m.is_empty() => Ok(None),
        Some(Ok(m)) => Ok(Some(m)),
    }
}

/// Counts top-level `model` keys and keeps the (last) value.
struct TopModelH;

type TopModel = (usize, Option<Result<String, Shape>>);

impl<'de> Handler<'de> for TopModelH {
    type Out = Result<TopModel, Shape>;

    fn scalar(self, shape: Shape) -> Self::Out {
        Err(shape)
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let mut count = 0usize;
        let mut value = None;
        while let Some(is_model) = map.next_key_seed(KeySeed(|k: &str| k == "model"))? {
            if is_model {
                count = count.saturating_add(1);
                value = Some(map.next_value_seed(Seed(StrH))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Ok((count, value)))
    }
}

struct StrH;

impl Handler<'_> for StrH {
    type Out = Result<String, Shape>;

    fn scalar(self, shape: Shape) -> Self::Out {
        Err(shape)
    }

    fn string(self, s: &str) -> Self::Out {
        Ok(s.to_owned())
    }
}

fn bad_form(message: &str) -> RequestError {
    RequestError {
        message: format!("the multipart body cannot be read: {message}"),
        param: None,
        code: "invalid_value",
    }
}

/// A parameter of a header value (`boundary` of a content type, `name` of a disposition),
/// quoted or not, matched case-insensitively; `None` when absent.
fn header_param(value: &str, param: &str) -> Option<String> {
    let mut rest = value.split_once(';')?.1;
    loop {
        let trimmed = rest.trim_start();
        let (name, after) = trimmed.split_once('=')?;
        let after = after.trim_start();
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            // Quoted string: backslash escapes one character.
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            out.push(e);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    _ => out.push(c),
                }
            }
            let end = end?;
            let next = q.get(end..).unwrap_or("");
            (out, next.split_once(';').map_or("", |(_, n)| n))
        } else {
            match after.split_once(';') {
                Some((v, n)) => (v.trim().to_owned(), n),
                None => (after.trim().to_owned(), ""),
            }
        };
        if name.trim().eq_ignore_ascii_case(param) {
            return Some(val);
        }
        if next.is_empty() {
            return None;
        }
        rest = next;
    }
}

/// The boundary of a `multipart/form-data` content type; `None` for any other type.
pub fn form_boundary(content_type: &str) -> Option<String> {
    (media_type(content_type) == "multipart/form-data")
        .then(|| header_param(content_type, "boundary"))
        .flatten()
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

/// One part of a `multipart/form-data` body: its `name` and raw value.
pub(crate) struct FormPart<'a> {
    pub name: Option<String>,
    pub value: &'a [u8],
}

/// Calls `each` for every part of a `multipart/form-data` body, in order; stops at the first
/// `Err` it returns. Malformed framing is refused.
pub(crate) fn for_each_part<'a>(
    content_type: &str,
    body: &'a [u8],
    mut each: impl FnMut(FormPart<'a>) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    let boundary = header_param(content_type, "boundary")
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or_else(|| bad_form("the content type has no boundary"))?;
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    // The first delimiter may be preceded by a preamble; every later one by CRLF.
    let Some(start) = memchr::memmem::find(body, delim) else {
        return Err(bad_form("no part starts with the boundary"));
    };
    let mut rest = body.get(start + delim.len()..).unwrap_or_default();
    let mut sep = b"\r\n".to_vec();
    sep.extend_from_slice(delim);
    loop {
        if rest.starts_with(b"--") {
            return Ok(());
        }
        let Some(r) = rest.strip_prefix(b"\r\n") else {
            return Err(bad_form("a boundary is not followed by a line break"));
        };
        let Some(end) = memchr::memmem::find(r, &sep) else {
            return Err(bad_form("the body ends without a closing boundary"));
        };
        let part = r.get(..end).unwrap_or_default();
        rest = r.get(end + sep.len()..).unwrap_or_default();
        let Some(head_end) = memchr::memmem::find(part, b"\r\n\r\n") else {
            // A part without a blank line has only headers (or nothing): no value.
            continue;
        };
        let head = std::str::from_utf8(part.get(..head_end).unwrap_or_default())
            .map_err(|_| bad_form("a part's headers are not UTF-8"))?;
        let value = part.get(head_end + 4..).unwrap_or_default();
        let disposition = head.split("\r\n").find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-disposition")
                .then_some(v)
        });
        // RFC 5987's `name*=` may be read by some parsers and not others: refuse it.
        if disposition.is_some_and(|v| header_param(v, "name*").is_some()) {
            return Err(ambiguous(
                "a form field is named with `name*=`; use `name=`",
            ));
        }
        let name = disposition.and_then(|v| header_param(v, "name"));
        each(FormPart { name, value })?;
    }
}

/// The `model` part of a `multipart/form-data` body; refused when repeated.
fn form_model(content_type: &str, body: &[u8]) -> Result<Option<String>, RequestError> {
    let mut found: Option<String> = None;
    for_each_part(content_type, body, |part| {
        if part.name.as_deref() != Some("model") {
            return Ok(());
        }
        if found.is_some() {
            return Err(ambiguous("the form has more than one `model` field"));
        }
        let v = std::str::from_utf8(part.value).map_err(|_| bad_form("`model` is not UTF-8"))?;
        found = Some(v.to_owned());
        Ok(())
    })?;
    Ok(found.filter(|m| !m.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ct: &str, q: Option<&str>, body: &[u8]) -> Result<Option<String>, &'static str> {
        read_model(ct, q, body).map(|r| r.model).map_err(|e| e.code)
    }

    const JSON: &str = "application/json";

    #[test]
    fn json_body_model() {
        assert_eq!(
            read(JSON, None, br#"{"model":"a","x":1}"#),
            Ok(Some("a".into()))
        );
        assert_eq!(read("", None, br#"  {"model":"a"}"#), Ok(Some("a".into())));
        assert_eq!(
            read(
                "application/vnd.x+json; charset=utf-8",
                None,
                br#"{"mod\u0065l":"a"}"#
            ),
            Ok(Some("a".into()))
        );
        assert_eq!(read(JSON, None, br#"{"model":null}"#), Ok(None));
        assert_eq!(read(JSON, None, br#"{"model":5}"#), Err("invalid_type"));
        assert_eq!(read(JSON, None, br#"{"x":{"model":"b"}}"#), Ok(None));
        assert_eq!(
            read(JSON, None, b"\xEF\xBB\xBF{\"model\":\"a\"}"),
            Err("invalid_json")
        );
        assert_eq!(read(JSON, None, b"[1]"), Err("invalid_json"));
    }

    #[test]
    fn duplicates_and_disagreements_are_ambiguous() {
        let amb = Err("ambiguous_model");
        assert_eq!(read(JSON, None, br#"{"model":"a","model":"b"}"#), amb);
        assert_eq!(read(JSON, None, br#"{"model":"a","mo\u0064el":"a"}"#), amb);
        assert_eq!(read(JSON, Some("model=a"), br#"{"model":"b"}"#), amb);
        assert_eq!(read(JSON, Some("model=a&model=a"), b""), amb);
        assert_eq!(read(JSON, Some("mod%65l=a"), br#"{"model":"b"}"#), amb);
        assert_eq!(
            read("text/plain", Some("model=a"), br#"{"model":"b"}"#),
            amb
        );
        assert_eq!(
            read("text/plain", None, b"\xEF\xBB\xBF{\"model\":\"b\"}"),
            amb
        );
        // Agreeing query and body are fine.
        assert_eq!(
            read(JSON, Some("model=a"), br#"{"model":"a"}"#),
            Ok(Some("a".into()))
        );
    }

    #[test]
    fn query_only() {
        let r = read_model(JSON, Some("x=1&model=a%20b"), br#"{"input":"x"}"#).unwrap();
        assert_eq!(r.model.as_deref(), Some("a b"));
        assert!(r.needs_model_in_body());
        let r = read_model("", Some("model=a+b"), b"").unwrap();
        assert_eq!(r.model.as_deref(), Some("a b"));
        assert!(!r.needs_model_in_body());
        assert_eq!(read("text/plain", None, b"hello"), Ok(None));
    }

    fn form(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, v) in parts {
            b.extend_from_slice(
                format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{v}\r\n")
                    .as_bytes(),
            );
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    #[test]
    fn multipart_model() {
        let ct = "multipart/form-data; boundary=XyZ";
        assert_eq!(
            read(ct, None, &form(&[("file", "..."), ("model", "w")])),
            Ok(Some("w".into()))
        );
        assert_eq!(
            read(ct, None, &form(&[("model", "a"), ("model", "b")])),
            Err("ambiguous_model")
        );
        assert_eq!(
            read(ct, Some("model=a"), &form(&[("model", "b")])),
            Err("ambiguous_model")
        );
        assert_eq!(
            read(ct, Some("model=a"), &form(&[("x", "b")])),
            Err("ambiguous_model")
        );
        // `filename=` is not `name=`.
        let body = b"--XyZ\r\nContent-Disposition: form-data; filename=\"model\"; name=\"f\"\r\n\r\nx\r\n--XyZ--";
        assert_eq!(read(ct, None, body), Ok(None));
        assert_eq!(
            read("multipart/form-data", None, body),
            Err("invalid_value")
        );
        assert_eq!(read(ct, None, b"--XyZ\r\nno end"), Err("invalid_value"));
        let star =
            b"--XyZ\r\nContent-Disposition: form-data; name*=UTF-8''model\r\n\r\nb\r\n--XyZ--";
        assert_eq!(read(ct, None, star), Err("ambiguous_model"));
        let url = "application/x-www-form-urlencoded";
        assert_eq!(read(url, None, b"file=x&model=w"), Ok(Some("w".into())));
        assert_eq!(read(url, None, b"model=a&model=b"), Err("ambiguous_model"));
        assert_eq!(
            read(url, Some("model=a"), b"model=b"),
            Err("ambiguous_model")
        );
        assert_eq!(read(url, Some("model=a"), b"x=1"), Err("ambiguous_model"));
    }
}
