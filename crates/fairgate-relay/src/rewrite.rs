//! [`with_include_usage`] and [`with_stream_usage`]: turn on `stream_options` flags with a
//! byte-level splice.
//!
//! The gateway needs the upstream's usage to bill streams exactly, so it asks for it even when
//! the client did not (and strips it again, see [`crate::StreamRelay`]). With
//! [`with_stream_usage`] it also asks vLLM for `continuous_usage_stats`, the cumulative usage
//! on every chunk, so a stream that ends early (client gone, backend broken) is still billed
//! from the upstream's own count rather than from the one-token-per-chunk fallback.
//!
//! The client's body is otherwise forwarded byte for byte: numbers keep their spelling, key
//! order and whitespace are untouched, and nothing is re-serialized. We find the spans to edit
//! by parsing with `&RawValue` (whose text is a sub-slice of the body, so its offset is a
//! pointer difference) and splice. For each flag (`include_usage`, then
//! `continuous_usage_stats` when asked for):
//!
//! | body has                                 | edit                                                 |
//! |------------------------------------------|------------------------------------------------------|
//! | no `stream_options`                      | insert `"stream_options":{FLAGS},` after the top `{` (no comma for `{}`) |
//! | `"stream_options":null`                  | replace `null` with `{FLAGS}`                         |
//! | `stream_options` object without the flag | insert `"flag":true,` after its `{` (no comma if empty), one insert for all missing flags |
//! | the flag `false` / `null`                | replace that value with `true`                        |
//! | the flag `true`                          | nothing                                              |
//!
//! where `FLAGS` is `"include_usage":true` or `"include_usage":true,"continuous_usage_stats":true`.
//! With duplicate keys the last occurrence is the one edited, matching the last-wins rule of
//! [`crate::parse_request`] and of the upstream's parser.

use crate::json::{Handler, KeySeed, Seed, Shape};
use crate::request::RequestError;
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess};
use serde_json::value::RawValue;

const INCLUDE_USAGE: &str = "include_usage";
const CONTINUOUS_USAGE_STATS: &str = "continuous_usage_stats";

/// The client's body with `stream_options.include_usage` set to `true`, everything else
/// byte-identical where possible (see the module docs). Errors like
/// [`crate::parse_request`] for bodies that are not a JSON object, and with `invalid_type`
/// when `stream_options` is neither an object nor null or `include_usage` is not a boolean.
pub fn with_include_usage(body: &[u8]) -> Result<Bytes, RequestError> {
    enable_stream_options(body, [INCLUDE_USAGE])
}

/// The client's body with both `stream_options.include_usage` and
/// `stream_options.continuous_usage_stats` set to `true` (vLLM then reports cumulative usage
/// on every chunk, and still sends the usage-only chunk before `[DONE]`), everything else
/// byte-identical where possible (see the module docs). Errors like [`with_include_usage`],
/// and also with `invalid_type` when `continuous_usage_stats` is not a boolean or null; when
/// both flags are bad, `include_usage` is reported, as [`crate::parse_request`] does.
pub fn with_stream_usage(body: &[u8]) -> Result<Bytes, RequestError> {
    enable_stream_options(body, [INCLUDE_USAGE, CONTINUOUS_USAGE_STATS])
}

/// The client's body with the top-level `model` replaced by `model` (an alias or a fallback
/// resolved to the model that serves it), everything else byte-identical. Errors like
/// [`crate::parse_request`] for bodies that are not a JSON object or have no `model`.
pub fn with_model(body: &[u8], model: &str) -> Result<Bytes, RequestError> {
    let text = std::str::from_utf8(body).map_err(RequestError::invalid_utf8)?;
    let top = parse_object(text, ["model"])?.map_err(RequestError::not_an_object)?;
    let [Some(old)] = top.targets else {
        return Err(RequestError::missing("model".into()));
    };
    let at = offset_in(text, old.get()).ok_or_else(internal)?;
    let value = serde_json::to_vec(model).map_err(|_| internal())?;
    splice(body, &mut [(at, at + old.get().len(), &value)])
}

/// Like [`with_model`], but a body without a top-level `model` gets one, inserted right after
/// the opening brace: the model then travels in the body the backend reads, not only in a query
/// string it ignores.
pub fn with_model_set(body: &[u8], model: &str) -> Result<Bytes, RequestError> {
    let text = std::str::from_utf8(body).map_err(RequestError::invalid_utf8)?;
    let top = parse_object(text, ["model"])?.map_err(RequestError::not_an_object)?;
    if top.targets[0].is_some() {
        return with_model(body, model);
    }
    let open = brace_offset(text, text).ok_or_else(internal)?;
    let mut insert = br#""model":"#.to_vec();
    insert.extend_from_slice(&serde_json::to_vec(model).map_err(|_| internal())?);
    if top.entries > 0 {
        insert.push(b',');
    }
    splice(body, &mut [(open + 1, open + 1, &insert)])
}

/// The body's top-level `priority` member as the client sent it (the last occurrence):
/// `None` when there is none, `Some(None)` for `null`, `Some(Some(n))` for an integer. Anything
/// else is `Err` (vLLM's field is an integer).
pub fn client_priority(body: &[u8]) -> Result<Option<Option<i64>>, RequestError> {
    if !mentions_priority(body) {
        return Ok(None);
    }
    let text = std::str::from_utf8(body).map_err(RequestError::invalid_utf8)?;
    let top = parse_object(text, [PRIORITY])?.map_err(RequestError::not_an_object)?;
    let [value] = top.targets;
    match value.map(RawValue::get) {
        None => Ok(None),
        Some("null") => Ok(Some(None)),
        Some(raw) => raw.parse::<i64>().map(|n| Some(Some(n))).map_err(|_| {
            RequestError::invalid_type(PRIORITY.into(), "an integer", shape_of_raw(raw))
        }),
    }
}

/// The body with the top-level `priority` set to `value` (vLLM's `--scheduling-policy
/// priority`: lower runs first), or with every top-level `priority` member removed when
/// `value` is `None` (for an engine that does not take one); everything else byte-identical.
/// A body that does not mention `priority` and gets none comes back as is, without a parse.
pub fn with_priority(body: &Bytes, value: Option<i64>) -> Result<Bytes, RequestError> {
    if !mentions_priority(body) {
        return match value {
            None => Ok(body.clone()),
            // Nothing to find: insert after the opening brace without parsing the body.
            Some(v) => insert_first(body, &format!(r#""{PRIORITY}":{v}"#))
                .map_or_else(|| with_priority_parsed(body.clone(), value), Ok),
        };
    }
    with_priority_parsed(body.clone(), value)
}

/// `body` with `member` inserted as its first member, when it plainly starts an object
/// (`None` otherwise: the caller parses, and reports what is wrong).
fn insert_first(body: &[u8], member: &str) -> Option<Bytes> {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let open = body.iter().position(|b| !is_ws(b))?;
    if body[open] != b'{' {
        return None;
    }
    let empty = body[open + 1..].iter().find(|b| !is_ws(b)) == Some(&b'}');
    let mut insert = member.as_bytes().to_vec();
    if !empty {
        insert.push(b',');
    }
    splice(body, &mut [(open + 1, open + 1, &insert)]).ok()
}

/// [`with_priority`] on a body that may hold `priority` members (parsed to find them).
fn with_priority_parsed(body: Bytes, value: Option<i64>) -> Result<Bytes, RequestError> {
    let mut out = body;
    // Duplicate keys: the last one wins upstream, so each pass edits the last occurrence;
    // removal repeats until none is left (one pass for any body a client library sends).
    loop {
        let text = std::str::from_utf8(&out).map_err(RequestError::invalid_utf8)?;
        let top = parse_object(text, [PRIORITY])?.map_err(RequestError::not_an_object)?;
        let [old] = top.targets;
        let next = match (old, value) {
            (None, None) => return Ok(out),
            (Some(old), Some(v)) => {
                let at = offset_in(text, old.get()).ok_or_else(internal)?;
                let v = v.to_string();
                return splice(&out, &mut [(at, at + old.get().len(), v.as_bytes())]);
            }
            (None, Some(v)) => {
                let open = brace_offset(text, text).ok_or_else(internal)?;
                let mut insert = format!(r#""{PRIORITY}":{v}"#).into_bytes();
                if top.entries > 0 {
                    insert.push(b',');
                }
                return splice(&out, &mut [(open + 1, open + 1, &insert)]);
            }
            (Some(old), None) => {
                let (from, to) = member_span(text, old.get()).ok_or_else(internal)?;
                splice(&out, &mut [(from, to, &b""[..])])?
            }
        };
        out = next;
    }
}

const PRIORITY: &str = "priority";

/// Cheap pre-check before a parse: a top-level `priority` member needs the bytes `priority`
/// in the body, or a `\u` escape that spells some of them.
fn mentions_priority(body: &[u8]) -> bool {
    body.windows(PRIORITY.len())
        .any(|w| w == PRIORITY.as_bytes())
        || body.windows(2).any(|w| w == b"\\u")
}

/// The span of the object member whose value is `value` (a sub-slice of `text`), with one
/// separating comma: the one after it, or the one before it when it is the last member.
fn member_span(text: &str, value: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let at = offset_in(text, value)?;
    let is_ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    // Back over `  :  ` to the key's closing quote, then to its opening quote: the key is
    // `priority` (possibly with \u escapes), which holds no quote of its own.
    let mut i = at;
    while i > 0 && is_ws(bytes[i - 1]) {
        i -= 1;
    }
    if i == 0 || bytes[i - 1] != b':' {
        return None;
    }
    i -= 1;
    while i > 0 && is_ws(bytes[i - 1]) {
        i -= 1;
    }
    if i == 0 || bytes[i - 1] != b'"' {
        return None;
    }
    i -= 1;
    let key_start = text[..i].rfind('"')?;
    let mut end = at + value.len();
    let mut j = end;
    while j < bytes.len() && is_ws(bytes[j]) {
        j += 1;
    }
    if bytes.get(j) == Some(&b',') {
        end = j + 1;
        return Some((key_start, end));
    }
    // The last member: take the comma before it, if any.
    let mut k = key_start;
    while k > 0 && is_ws(bytes[k - 1]) {
        k -= 1;
    }
    if k > 0 && bytes[k - 1] == b',' {
        return Some((k - 1, end));
    }
    Some((key_start, end))
}

/// Sets every flag in `flags` to `true` inside the top-level `stream_options`.
fn enable_stream_options<const N: usize>(
    body: &[u8],
    flags: [&'static str; N],
) -> Result<Bytes, RequestError> {
    let text = std::str::from_utf8(body).map_err(RequestError::invalid_utf8)?;
    let top = parse_object(text, ["stream_options"])?.map_err(RequestError::not_an_object)?;
    let [opts] = top.targets;
    let Some(opts) = opts else {
        // No stream_options: insert right after the opening brace.
        let open = brace_offset(text, text).ok_or_else(internal)?;
        let mut insert = br#""stream_options":{"#.to_vec();
        push_true_members(&mut insert, flags.iter().copied());
        insert.push(b'}');
        if top.entries > 0 {
            insert.push(b',');
        }
        return splice(body, &mut [(open + 1, open + 1, &insert)]);
    };
    let opts_text = opts.get();
    let opts_at = offset_in(text, opts_text).ok_or_else(internal)?;
    match opts_text.as_bytes().first() {
        Some(b'n') => {
            let mut object = vec![b'{'];
            push_true_members(&mut object, flags.iter().copied());
            object.push(b'}');
            splice(body, &mut [(opts_at, opts_at + opts_text.len(), &object)])
        }
        Some(b'{') => {
            let inner = parse_object(opts_text, flags)?.map_err(|got| {
                RequestError::invalid_type("stream_options".into(), "an object or null", got)
            })?;
            // Check every flag (in order, for the error precedence) before editing anything.
            let mut replace = Vec::with_capacity(N);
            let mut missing = Vec::with_capacity(N);
            for (flag, target) in flags.iter().zip(inner.targets) {
                match target.map(RawValue::get) {
                    None => missing.push(*flag),
                    Some("true") => {}
                    Some(value @ ("false" | "null")) => {
                        let at = offset_in(text, value).ok_or_else(internal)?;
                        replace.push((at, at + value.len()));
                    }
                    Some(value) => {
                        return Err(RequestError::invalid_type(
                            format!("stream_options.{flag}"),
                            "a boolean",
                            shape_of_raw(value),
                        ))
                    }
                }
            }
            let mut insert = Vec::new();
            push_true_members(&mut insert, missing.iter().copied());
            if !insert.is_empty() && inner.entries > 0 {
                insert.push(b',');
            }
            let mut edits: Vec<(usize, usize, &[u8])> = Vec::with_capacity(N + 1);
            if !insert.is_empty() {
                edits.push((opts_at + 1, opts_at + 1, &insert));
            }
            edits.extend(replace.iter().map(|&(from, to)| (from, to, &b"true"[..])));
            splice(body, &mut edits)
        }
        _ => Err(RequestError::invalid_type(
            "stream_options".into(),
            "an object or null",
            shape_of_raw(opts_text),
        )),
    }
}

/// Appends `"a":true,"b":true` for the given keys (nothing for none).
fn push_true_members<'k>(out: &mut Vec<u8>, keys: impl Iterator<Item = &'k str>) {
    for (i, key) in keys.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(br#"":true"#);
    }
}

/// An object's entry count and the raw value of the last occurrence of each looked-for key.
struct ObjectInfo<'a, const N: usize> {
    entries: usize,
    targets: [Option<&'a RawValue>; N],
}

/// Parses `text` (a whole JSON document) as an object looking for `keys`; `Ok(Err(shape))`
/// when it is valid JSON but not an object.
fn parse_object<'a, const N: usize>(
    text: &'a str,
    keys: [&'static str; N],
) -> Result<Result<ObjectInfo<'a, N>, Shape>, RequestError> {
    let mut de = serde_json::Deserializer::from_str(text);
    Seed(FindKeysH { keys })
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| RequestError::invalid_json(&e))
}

struct FindKeysH<const N: usize> {
    keys: [&'static str; N],
}

impl<'de, const N: usize> Handler<'de> for FindKeysH<N> {
    type Out = Result<ObjectInfo<'de, N>, Shape>;

    fn scalar(self, shape: Shape) -> Self::Out {
        Err(shape)
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let keys = self.keys;
        let mut info = ObjectInfo {
            entries: 0,
            targets: [None; N],
        };
        while let Some(hit) =
            map.next_key_seed(KeySeed(|k: &str| keys.iter().position(|&w| w == k)))?
        {
            match hit.and_then(|i| info.targets.get_mut(i)) {
                Some(slot) => *slot = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            info.entries += 1;
        }
        Ok(Ok(info))
    }
}

/// Byte offset of `inner` within `outer`, if it is a sub-slice of it.
fn offset_in(outer: &str, inner: &str) -> Option<usize> {
    let at = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = at.checked_add(inner.len())?;
    // Bounds and identity check, so a RawValue that was copied rather than borrowed (which
    // serde_json does not do for `from_str`, but nothing guarantees it) cannot mislead us.
    let same = outer.as_bytes().get(at..end)?.as_ptr() == inner.as_ptr();
    same.then_some(at)
}

/// Offset of the first `{` of the object that `inner` (a sub-slice of `outer`) starts with,
/// skipping JSON whitespace.
fn brace_offset(outer: &str, inner: &str) -> Option<usize> {
    let start = offset_in(outer, inner)?;
    let skip = inner
        .bytes()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    let at = start + skip;
    (outer.as_bytes().get(at) == Some(&b'{')).then_some(at)
}

/// `body` with each `(from, to, insert)` edit applied (`body[from..to]` replaced by `insert`),
/// as one buffer; no edits gives a plain copy. Edits are sorted here; overlapping or
/// out-of-bounds ones cannot come from the callers above and are refused, not guessed at.
fn splice(body: &[u8], edits: &mut [(usize, usize, &[u8])]) -> Result<Bytes, RequestError> {
    edits.sort_unstable_by_key(|&(from, to, _)| (from, to));
    let added: usize = edits.iter().map(|e| e.2.len()).sum();
    let mut out = BytesMut::with_capacity(body.len().saturating_add(added));
    let mut at = 0;
    for &(from, to, insert) in edits.iter() {
        let kept = body
            .get(at..from)
            .filter(|_| from <= to)
            .ok_or_else(internal)?;
        out.put_slice(kept);
        out.put_slice(insert);
        at = to;
    }
    out.put_slice(body.get(at..).ok_or_else(internal)?);
    Ok(out.freeze())
}

/// The shape of a raw JSON value, for error messages (only the type matters).
fn shape_of_raw(raw: &str) -> Shape {
    match raw.as_bytes().first() {
        Some(b'"') => Shape::Str { len: raw.len() },
        Some(b'{') => Shape::Object,
        Some(b'[') => Shape::Array,
        Some(b't') => Shape::Bool(true),
        Some(b'f') => Shape::Bool(false),
        Some(b'n') => Shape::Null,
        _ => Shape::Float(0.0),
    }
}

/// Unreachable in practice: a span serde_json borrowed from the body is not inside it, or
/// two edits overlap.
fn internal() -> RequestError {
    RequestError {
        message: "request body could not be rewritten".into(),
        param: None,
        code: "invalid_json",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prio(body: &str, v: Option<i64>) -> String {
        let b = Bytes::copy_from_slice(body.as_bytes());
        String::from_utf8(with_priority(&b, v).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn priority_is_set_replaced_or_removed() {
        assert_eq!(
            prio(r#"{"model":"m"}"#, Some(3)),
            r#"{"priority":3,"model":"m"}"#
        );
        assert_eq!(prio(r#"{}"#, Some(0)), r#"{"priority":0}"#);
        assert_eq!(prio(" { } ", Some(4)), r#" {"priority":4 } "#);
        assert_eq!(
            prio("\n{\"model\":\"m\"}", Some(1)),
            "\n{\"priority\":1,\"model\":\"m\"}"
        );
        assert_eq!(
            prio(r#"{"model":"m", "priority" : -5 }"#, Some(2)),
            r#"{"model":"m", "priority" : 2 }"#
        );
        assert_eq!(
            prio(r#"{"priority":1,"model":"m"}"#, None),
            r#"{"model":"m"}"#
        );
        assert_eq!(
            prio(r#"{"model":"m", "priority": 1}"#, None),
            r#"{"model":"m"}"#
        );
        assert_eq!(prio(r#"{ "priority": 1 }"#, None), r#"{  }"#);
        assert_eq!(
            prio(r#"{"priority":1,"model":"m","priority":2}"#, None),
            r#"{"model":"m"}"#
        );
        assert_eq!(
            prio(r#"{"\u0070riority":7,"model":"m"}"#, None),
            r#"{"model":"m"}"#
        );
        // Nested `priority` members are the client's business, not the engine's.
        assert_eq!(
            prio(r#"{"model":"m","metadata":{"priority":1}}"#, None),
            r#"{"model":"m","metadata":{"priority":1}}"#
        );
        let body = r#"{"model":"m","messages":[]}"#;
        assert_eq!(prio(body, None), body);
    }

    #[test]
    fn client_priority_reads_integers_only() {
        assert_eq!(
            client_priority(br#"{"priority":-2}"#).unwrap(),
            Some(Some(-2))
        );
        assert_eq!(client_priority(br#"{"model":"m"}"#).unwrap(), None);
        assert_eq!(
            client_priority(br#"{"priority":null}"#).unwrap(),
            Some(None)
        );
        let e = client_priority(br#"{"priority":"high"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("priority"));
        assert!(client_priority(br#"{"priority":1.5}"#).is_err());
    }

    fn rewrite(body: &str) -> String {
        String::from_utf8(with_include_usage(body.as_bytes()).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn inserts_when_absent() {
        assert_eq!(
            rewrite(r#"{"model":"m","stream":true,"max_tokens":1.0e2}"#),
            r#"{"stream_options":{"include_usage":true},"model":"m","stream":true,"max_tokens":1.0e2}"#
        );
    }

    #[test]
    fn empty_object_gets_no_trailing_comma() {
        assert_eq!(
            rewrite("{}"),
            r#"{"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            rewrite("{ \n }"),
            "{\"stream_options\":{\"include_usage\":true} \n }"
        );
    }

    #[test]
    fn leading_and_trailing_whitespace_is_kept() {
        assert_eq!(
            rewrite(" \r\n\t{ \"model\" : \"m\" }\n"),
            " \r\n\t{\"stream_options\":{\"include_usage\":true}, \"model\" : \"m\" }\n"
        );
    }

    #[test]
    fn existing_object_with_other_fields() {
        assert_eq!(
            rewrite(
                r#"{"model":"m","stream_options":{"continuous_usage_stats":false},"stream":true}"#
            ),
            r#"{"model":"m","stream_options":{"include_usage":true,"continuous_usage_stats":false},"stream":true}"#
        );
        assert_eq!(
            rewrite(r#"{"stream_options": { } ,"model":"m"}"#),
            r#"{"stream_options": {"include_usage":true } ,"model":"m"}"#
        );
    }

    #[test]
    fn null_stream_options_is_replaced() {
        assert_eq!(
            rewrite(r#"{"model":"m","stream_options":null,"stream":true}"#),
            r#"{"model":"m","stream_options":{"include_usage":true},"stream":true}"#
        );
    }

    #[test]
    fn include_usage_false_or_null_becomes_true() {
        assert_eq!(
            rewrite(r#"{"model":"m","stream_options":{"x":1, "include_usage" : false ,"y":[2]}}"#),
            r#"{"model":"m","stream_options":{"x":1, "include_usage" : true ,"y":[2]}}"#
        );
        assert_eq!(
            rewrite(r#"{"stream_options":{"include_usage":null}}"#),
            r#"{"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn already_true_is_unchanged() {
        let body = r#"{"model":"m","stream_options":{"include_usage":true}}"#;
        assert_eq!(rewrite(body), body);
    }

    #[test]
    fn duplicate_keys_edit_the_last_occurrence() {
        assert_eq!(
            rewrite(
                r#"{"stream_options":null,"stream_options":{"include_usage":true,"include_usage":false}}"#
            ),
            r#"{"stream_options":null,"stream_options":{"include_usage":true,"include_usage":true}}"#
        );
    }

    #[test]
    fn escaped_key_is_found() {
        assert_eq!(
            rewrite(r#"{"stream\u005foptions":{"include\u005fusage":false}}"#),
            r#"{"stream\u005foptions":{"include\u005fusage":true}}"#
        );
    }

    #[test]
    fn nested_stream_options_are_not_top_level() {
        assert_eq!(
            rewrite(r#"{"metadata":{"stream_options":null}}"#),
            r#"{"stream_options":{"include_usage":true},"metadata":{"stream_options":null}}"#
        );
    }

    fn rewrite_both(body: &str) -> String {
        String::from_utf8(with_stream_usage(body.as_bytes()).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn stream_usage_inserts_when_absent_or_null() {
        assert_eq!(
            rewrite_both(r#"{"model":"m","stream":true,"max_tokens":1.0e2}"#),
            r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":true},"model":"m","stream":true,"max_tokens":1.0e2}"#
        );
        assert_eq!(
            rewrite_both(" { }\n"),
            " {\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true} }\n"
        );
        assert_eq!(
            rewrite_both(r#"{"model":"m", "stream_options" : null ,"stream":true}"#),
            r#"{"model":"m", "stream_options" : {"include_usage":true,"continuous_usage_stats":true} ,"stream":true}"#
        );
    }

    #[test]
    fn stream_usage_object_without_either_flag() {
        assert_eq!(
            rewrite_both(r#"{"stream_options":{"x":[1,{"include_usage":false}]},"model":"m"}"#),
            r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":true,"x":[1,{"include_usage":false}]},"model":"m"}"#
        );
        assert_eq!(
            rewrite_both(r#"{"stream_options":{ }}"#),
            r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":true }}"#
        );
    }

    #[test]
    fn stream_usage_object_with_one_flag() {
        assert_eq!(
            rewrite_both(r#"{"stream_options":{"include_usage":true}}"#),
            r#"{"stream_options":{"continuous_usage_stats":true,"include_usage":true}}"#
        );
        assert_eq!(
            rewrite_both(r#"{"stream_options":{"include_usage":false,"x":1}}"#),
            r#"{"stream_options":{"continuous_usage_stats":true,"include_usage":true,"x":1}}"#
        );
        assert_eq!(
            rewrite_both(r#"{"stream_options":{"continuous_usage_stats":null}}"#),
            r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#
        );
        assert_eq!(
            rewrite_both(r#"{"stream_options":{"continuous_usage_stats":true}}"#),
            r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#
        );
    }

    #[test]
    fn stream_usage_object_with_both_flags() {
        // Values are replaced where they lie, whatever the key order and spacing.
        assert_eq!(
            rewrite_both(
                r#"{"stream_options":{ "continuous_usage_stats" : null, "x":[1], "include_usage":false },"n":2}"#
            ),
            r#"{"stream_options":{ "continuous_usage_stats" : true, "x":[1], "include_usage":true },"n":2}"#
        );
        assert_eq!(
            rewrite_both(
                r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":false}}"#
            ),
            r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#
        );
        let body = r#"{"stream_options":{"continuous_usage_stats":true,"include_usage":true}}"#;
        assert_eq!(rewrite_both(body), body);
    }

    #[test]
    fn stream_usage_duplicates_and_escapes() {
        assert_eq!(
            rewrite_both(
                r#"{"stream_options":{"continuous_usage_stats":false,"include_usage":true,"continuous_usage_stats":null,"include_usage":false}}"#
            ),
            r#"{"stream_options":{"continuous_usage_stats":false,"include_usage":true,"continuous_usage_stats":true,"include_usage":true}}"#
        );
        assert_eq!(
            rewrite_both(r#"{"stream_options":{"continuous\u005fusage_stats":false}}"#),
            r#"{"stream_options":{"include_usage":true,"continuous\u005fusage_stats":true}}"#
        );
        assert_eq!(
            rewrite_both(r#"{"stream_options":{"x":1},"stream_options":{"include_usage":null}}"#),
            r#"{"stream_options":{"x":1},"stream_options":{"continuous_usage_stats":true,"include_usage":true}}"#
        );
    }

    #[test]
    fn stream_usage_errors() {
        let e = with_stream_usage(br#"{"stream_options":{"continuous_usage_stats":"yes"}}"#)
            .unwrap_err();
        assert_eq!(
            (e.code, e.param.as_deref(), e.message.as_str()),
            (
                "invalid_type",
                Some("stream_options.continuous_usage_stats"),
                "'stream_options.continuous_usage_stats' must be a boolean, got string"
            )
        );
        // include_usage is checked first, as in parse_request.
        let e = with_stream_usage(
            br#"{"stream_options":{"continuous_usage_stats":1,"include_usage":[]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream_options.include_usage"));
        let e = with_stream_usage(br#"{"stream_options":0}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream_options"));
        assert_eq!(with_stream_usage(b"[]").unwrap_err().code, "invalid_json");
        assert_eq!(with_stream_usage(b"{").unwrap_err().code, "invalid_json");
        assert_eq!(with_stream_usage(b"\xff").unwrap_err().code, "invalid_utf8");
        // The single-flag rewrite does not look at continuous_usage_stats.
        assert_eq!(
            rewrite(r#"{"stream_options":{"continuous_usage_stats":"yes"}}"#),
            r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":"yes"}}"#
        );
    }

    #[test]
    fn splice_refuses_overlaps_and_out_of_bounds() {
        assert_eq!(&splice(b"abcdef", &mut []).unwrap()[..], b"abcdef");
        assert_eq!(
            &splice(b"abcdef", &mut [(4, 5, b"X"), (0, 0, b"<")]).unwrap()[..],
            b"<abcdXf"
        );
        assert!(splice(b"abcdef", &mut [(1, 3, b""), (2, 4, b"")]).is_err());
        assert!(splice(b"abc", &mut [(2, 9, b"")]).is_err());
        assert!(splice(b"abc", &mut [(2, 1, b"")]).is_err());
    }

    #[test]
    fn with_model_replaces_only_the_top_level_model() {
        let body =
            br#"{ "model" : "alias", "messages":[{"role":"user","content":"model"}],"x":1.50}"#;
        let out = with_model(body, "real \"m\"").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "model" : "real \"m\"", "messages":[{"role":"user","content":"model"}],"x":1.50}"#
        );
        // The last occurrence wins, as in parse_request.
        let out = with_model(br#"{"model":"a","model":"b"}"#, "c").unwrap();
        assert_eq!(&out[..], br#"{"model":"a","model":"c"}"#);
        assert_eq!(with_model(b"{}", "c").unwrap_err().code, "missing_field");
        assert_eq!(with_model(b"[]", "c").unwrap_err().code, "invalid_json");
        assert_eq!(
            &with_model_set(b" {}", "c").unwrap()[..],
            br#" {"model":"c"}"#
        );
        assert_eq!(
            &with_model_set(br#"{"x":1}"#, "c").unwrap()[..],
            br#"{"model":"c","x":1}"#
        );
        assert_eq!(
            &with_model_set(br#"{"model":"a"}"#, "c").unwrap()[..],
            br#"{"model":"c"}"#
        );
    }

    #[test]
    fn errors() {
        let e = with_include_usage(b"[1]").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        assert_eq!(e.message, "request body must be a JSON object, got array");
        let e = with_include_usage(b"{\"a\":").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = with_include_usage(b"{\"a\":\"\xc3\"}").unwrap_err();
        assert_eq!(e.code, "invalid_utf8");
        let e = with_include_usage(br#"{"stream_options":"yes"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.param.as_deref(), e.message.as_str()),
            (
                "invalid_type",
                Some("stream_options"),
                "'stream_options' must be an object or null, got string"
            )
        );
        let e = with_include_usage(br#"{"stream_options":{"include_usage":"1"}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream_options.include_usage"));
    }
}
