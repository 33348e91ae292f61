//! Property tests on the public API: no panics on arbitrary bytes, `with_include_usage` and
//! `with_stream_usage` keep everything but the flags they set, and the stream relay's output
//! and accounting, in every option combination, do not depend on how the upstream bytes are
//! split (checked against an independent oracle).

use bytes::Bytes;
use fairgate_relay::{
    parse_request, with_include_usage, with_stream_usage, Endpoint, ParsedRequest, StreamRelay,
};
use fairgate_types::Usage;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const ENDPOINTS: [Endpoint; 3] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Embeddings,
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("model".to_string()),
        Just("stream".to_string()),
        Just("stream_options".to_string()),
        Just("include_usage".to_string()),
        Just("continuous_usage_stats".to_string()),
        Just("usage".to_string()),
        Just("choices".to_string()),
        Just("messages".to_string()),
        Just("role".to_string()),
        Just("content".to_string()),
        Just("type".to_string()),
        Just("text".to_string()),
        Just("prompt".to_string()),
        Just("input".to_string()),
        Just("max_tokens".to_string()),
        "[a-z_]{0,6}",
        "\\PC{0,3}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::String),
        Just(Value::String("text".into())),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Compact or pretty, with optional surrounding whitespace.
fn render(v: &Value, pretty: bool, pad: &str) -> String {
    let body = if pretty {
        serde_json::to_string_pretty(v).unwrap()
    } else {
        serde_json::to_string(v).unwrap()
    };
    format!("{pad}{body}{pad}")
}

fn pad() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[ \t\r\n]{1,3}"]
}

const INCLUDE_USAGE: &str = "include_usage";
const CONTINUOUS: &str = "continuous_usage_stats";
const BOTH_FLAGS: [&str; 2] = [INCLUDE_USAGE, CONTINUOUS];

/// `stream_options` in every form the rewrites must handle: absent, null, or an object where
/// each flag is absent, null, false or true.
fn stream_options() -> impl Strategy<Value = Option<Value>> {
    let flag = || {
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            any::<bool>().prop_map(|b| Some(Value::Bool(b))),
        ]
    };
    let others = prop::collection::vec(("[a-z_]{1,6}", json_value()), 0..3);
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        (flag(), flag(), others).prop_map(|(iu, cus, others)| {
            let mut m: Map<String, Value> = others.into_iter().collect();
            for (key, value) in [(INCLUDE_USAGE, iu), (CONTINUOUS, cus)] {
                m.remove(key);
                if let Some(v) = value {
                    m.insert(key.into(), v);
                }
            }
            Some(Value::Object(m))
        }),
    ]
}

fn valid_chat_body() -> impl Strategy<Value = Value> {
    let message = ("(user|system|assistant)", "\\PC{0,20}")
        .prop_map(|(role, content)| json!({"role": role, "content": content}));
    (
        prop::collection::vec(message, 1..4),
        any::<bool>(),
        prop::option::of(0u64..5000),
        stream_options(),
        prop::collection::vec(("[a-z]{1,5}", json_value()), 0..3),
    )
        .prop_map(|(messages, stream, max_tokens, opts, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("model".into(), json!("llama"));
            m.insert("messages".into(), Value::Array(messages));
            m.insert("stream".into(), json!(stream));
            if let Some(n) = max_tokens {
                m.insert("max_tokens".into(), json!(n));
            }
            if let Some(o) = opts {
                m.insert("stream_options".into(), o);
            }
            Value::Object(m)
        })
}

/// Checks the rewrite of a JSON object body: valid JSON, every flag in `flags` true, and every
/// other top-level key and every other stream_options key unchanged.
fn check_rewrite(input: &str, out: &Bytes, flags: &[&str]) -> Result<(), TestCaseError> {
    // Compare with the input as parsed (not as generated): float printing does not round-trip.
    let input: Value = serde_json::from_str(input).unwrap();
    let got: Value = serde_json::from_slice(out)
        .map_err(|e| TestCaseError::fail(format!("output is not JSON: {e}")))?;
    let (Value::Object(before), Value::Object(after)) = (&input, &got) else {
        return Err(TestCaseError::fail("not objects"));
    };
    for flag in flags {
        prop_assert_eq!(&after["stream_options"][flag], &Value::Bool(true));
    }
    for (k, v) in before {
        if k != "stream_options" {
            prop_assert_eq!(after.get(k), Some(v));
        }
    }
    for k in after.keys() {
        prop_assert!(k == "stream_options" || before.contains_key(k));
    }
    let old_opts = match before.get("stream_options") {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    let Some(Value::Object(new_opts)) = after.get("stream_options") else {
        return Err(TestCaseError::fail("stream_options is not an object"));
    };
    for (k, v) in &old_opts {
        if !flags.contains(&k.as_str()) {
            prop_assert_eq!(new_opts.get(k), Some(v));
        }
    }
    let added = flags.iter().filter(|f| !old_opts.contains_key(**f)).count();
    prop_assert_eq!(new_opts.len(), old_opts.len() + added);
    Ok(())
}

/// Whether a rewrite setting `flags` may refuse `input`: `stream_options` neither object nor
/// null, or one of the flags neither boolean nor null.
fn may_refuse(input: &Value, flags: &[&str]) -> bool {
    let opts = &input["stream_options"];
    let bad_flag = opts.is_object()
        && flags
            .iter()
            .any(|f| !matches!(opts.get(*f), None | Some(Value::Null | Value::Bool(_))));
    bad_flag || !(opts.is_object() || opts.is_null())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parse_request_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..200)) {
        for e in ENDPOINTS {
            let _ = parse_request(e, &body);
        }
    }

    #[test]
    fn parse_request_never_panics_on_json(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        for e in ENDPOINTS {
            if let Err(err) = parse_request(e, &body) {
                prop_assert!(["invalid_json", "missing_field", "invalid_type", "invalid_value"].contains(&err.code));
                prop_assert!(err.code == "invalid_json" || err.param.is_some());
            }
        }
    }

    #[test]
    fn with_include_usage_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = with_include_usage(&body);
    }

    #[test]
    fn with_include_usage_on_arbitrary_objects(
        fields in prop::collection::vec((key(), json_value()), 0..6),
        pretty in any::<bool>(),
        pad in pad(),
    ) {
        let input = Value::Object(fields.into_iter().collect());
        let text = render(&input, pretty, &pad);
        match with_include_usage(text.as_bytes()) {
            Ok(out) => check_rewrite(&text, &out, &[INCLUDE_USAGE])?,
            Err(e) => {
                prop_assert_eq!(e.code, "invalid_type");
                prop_assert!(may_refuse(&input, &[INCLUDE_USAGE]));
            }
        }
    }

    #[test]
    fn with_include_usage_on_valid_requests(body in valid_chat_body(), pretty in any::<bool>(), pad in pad()) {
        let text = render(&body, pretty, &pad);
        let out = with_include_usage(text.as_bytes()).unwrap();
        check_rewrite(&text, &out, &[INCLUDE_USAGE])?;
        let already = matches!(&body["stream_options"], Value::Object(o) if o.get("include_usage") == Some(&Value::Bool(true)));
        prop_assert_eq!(already, &out[..] == text.as_bytes());
        let before = parse_request(Endpoint::ChatCompletions, text.as_bytes()).unwrap();
        let after = parse_request(Endpoint::ChatCompletions, &out).unwrap();
        prop_assert_eq!(after, ParsedRequest { client_wants_usage: true, ..before });
    }

    #[test]
    fn with_stream_usage_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = with_stream_usage(&body);
    }

    #[test]
    fn with_stream_usage_on_arbitrary_objects(
        fields in prop::collection::vec((key(), json_value()), 0..6),
        pretty in any::<bool>(),
        pad in pad(),
    ) {
        let input = Value::Object(fields.into_iter().collect());
        let text = render(&input, pretty, &pad);
        match with_stream_usage(text.as_bytes()) {
            Ok(out) => check_rewrite(&text, &out, &BOTH_FLAGS)?,
            Err(e) => {
                prop_assert_eq!(e.code, "invalid_type");
                prop_assert!(may_refuse(&input, &BOTH_FLAGS));
            }
        }
    }

    #[test]
    fn with_stream_usage_on_valid_requests(body in valid_chat_body(), pretty in any::<bool>(), pad in pad()) {
        let text = render(&body, pretty, &pad);
        let out = with_stream_usage(text.as_bytes()).unwrap();
        check_rewrite(&text, &out, &BOTH_FLAGS)?;
        let already = matches!(&body["stream_options"], Value::Object(o)
            if BOTH_FLAGS.iter().all(|f| o.get(*f) == Some(&Value::Bool(true))));
        prop_assert_eq!(already, &out[..] == text.as_bytes());
        let before = parse_request(Endpoint::ChatCompletions, text.as_bytes()).unwrap();
        let after = parse_request(Endpoint::ChatCompletions, &out).unwrap();
        prop_assert_eq!(after, ParsedRequest {
            client_wants_usage: true,
            client_wants_continuous_usage: true,
            ..before
        });
        // Setting both flags then include_usage again is a no-op.
        prop_assert_eq!(with_include_usage(&out).unwrap(), out.clone());
        prop_assert_eq!(with_stream_usage(&out).unwrap(), out);
    }

    #[test]
    fn stream_relay_never_panics_on_bytes(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
        opts in any::<(bool, bool)>(),
    ) {
        let mut r = StreamRelay::with_options(opts.0, opts.1);
        let mut out = Vec::new();
        for c in &chunks {
            out.extend_from_slice(&r.push(c).forward);
        }
        out.extend_from_slice(&r.finish());
        if opts == (false, false) {
            prop_assert_eq!(out, chunks.concat());
        }
        let _ = (r.usage(), r.completion_tokens_counted(), r.saw_done(), r.error_event());
    }
}

/// One generated upstream event: its bytes, what a rewriting relay must forward of it, and
/// its accounting.
#[derive(Clone, Debug)]
struct Ev {
    raw: String,
    /// Forwarded with `"usage":null` members removed (either option set). `None` for the
    /// usage-only chunk, which is forwarded whole or dropped.
    without_null: Option<String>,
    /// Forwarded with per-chunk usage objects cut as well (`strip_chunk_usage`).
    without_usage: Option<String>,
    bearing: bool,
    usage: Option<Usage>,
    done: bool,
    error: bool,
}

impl Ev {
    /// What the client gets of this event with the given `(strip_usage_chunk,
    /// strip_chunk_usage)`.
    fn expected(&self, opts: (bool, bool)) -> Option<&str> {
        match (opts, &self.without_null, &self.without_usage) {
            ((false, false), _, _) => Some(&self.raw),
            ((true, _), None, _) => None,
            ((false, true), None, _) => Some(&self.raw),
            ((_, false), Some(n), _) => Some(n),
            ((_, true), _, Some(u)) => Some(u),
            ((_, true), Some(n), None) => Some(n),
        }
    }
}

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
}

fn event() -> impl Strategy<Value = Ev> {
    let text = prop_oneof![
        Just(String::new()),
        "\\PC{1,6}",
        Just("\"usage\":null,\n".to_string()),
        Just(",\"usage\":{\"a\":1}}".to_string()),
    ];
    let kind = prop_oneof![
        (0u8..4, text).prop_map(|(field, t)| (field, t)),
        Just((4u8, String::new())),
        Just((5u8, String::new())),
        Just((6u8, String::new())),
        Just((7u8, String::new())),
    ];
    (
        kind,
        (any::<u32>(), any::<u32>(), any::<u32>()),
        // where per-chunk usage goes: none, null first, null last, object first, object last
        0u8..5,
        any::<bool>(), // space after "data:"
        prop::option::of("(id|event): [a-z0-9]{1,4}"),
        any::<bool>(), // leading comment line
        eol(),
    )
        .prop_map(|((kind, t), (p, c, cached), usage_at, space, field, comment, eol)| {
            let choice = |body: Value| serde_json::to_string(&json!([body])).unwrap();
            let u = Usage { prompt_tokens: p.into(), completion_tokens: c.into(), cached_tokens: cached.into() };
            let details = if cached % 2 == 0 {
                format!(r#","prompt_tokens_details":{{"cached_tokens":{cached}}}"#)
            } else {
                String::new()
            };
            let usage_json = format!(
                r#"{{"prompt_tokens":{p},"total_tokens":{},"completion_tokens":{c}{details}}}"#,
                u64::from(p) + u64::from(c)
            );
            let odd_cached = Usage { cached_tokens: if cached % 2 == 0 { u.cached_tokens } else { 0 }, ..u };
            let (members, bearing, usage, done, error) = match kind {
                0 => (format!(r#""object":"chat.completion.chunk","choices":{}"#, choice(json!({"index":0,"delta":{"content":t},"finish_reason":null}))), !t.is_empty(), None, false, false),
                1 => (format!(r#""choices":{}"#, choice(json!({"index":0,"delta":{"reasoning_content":t}}))), !t.is_empty(), None, false, false),
                2 => (format!(r#""choices":{}"#, choice(json!({"index":0,"text":t,"logprobs":null}))), !t.is_empty(), None, false, false),
                3 => (format!(r#""choices":{}"#, choice(json!({"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":t}}]}}))), true, None, false, false),
                4 => (format!(r#""choices":[],"usage":{usage_json}"#), false, Some(odd_cached), false, false),
                5 => (r#""error":{"message":"boom","code":500}"#.to_string(), false, None, false, true),
                _ => (String::new(), false, None, kind == 6, false),
            };
            let is_usage_chunk = kind == 4;
            let plain = format!("{{{members}}}");
            let (payload, without_null, without_usage, usage) = if kind >= 6 {
                let p = if done { "[DONE]".to_string() } else { "{}".to_string() };
                (p.clone(), Some(p.clone()), Some(p), usage)
            } else if is_usage_chunk {
                (plain, None, None, usage)
            } else if kind == 5 {
                (plain.clone(), Some(plain.clone()), Some(plain), usage)
            } else {
                match usage_at {
                    1 => (format!(r#"{{"usage":null,{members}}}"#), Some(plain.clone()), Some(plain), None),
                    2 => (format!(r#"{{{members},"usage":null}}"#), Some(plain.clone()), Some(plain), None),
                    3 => {
                        let p = format!(r#"{{"usage":{usage_json},{members}}}"#);
                        (p.clone(), Some(p), Some(plain), Some(odd_cached))
                    }
                    4 => {
                        let p = format!(r#"{{{members},"usage":{usage_json}}}"#);
                        (p.clone(), Some(p), Some(plain), Some(odd_cached))
                    }
                    _ => (plain.clone(), Some(plain.clone()), Some(plain), None),
                }
            };
            let mut head = String::new();
            if comment {
                head.push_str(": ping");
                head.push_str(eol);
            }
            if let Some(f) = field {
                head.push_str(&f);
                head.push_str(eol);
            }
            let sep = if space { "data: " } else { "data:" };
            let frame = |payload: &str| format!("{head}{sep}{payload}{eol}{eol}");
            Ev {
                raw: frame(&payload),
                without_null: without_null.as_deref().map(frame),
                without_usage: without_usage.as_deref().map(frame),
                bearing,
                usage,
                done,
                error,
            }
        })
}

fn split(input: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut last = 0;
    for p in points {
        pieces.push(input[last..p].to_vec());
        last = p;
    }
    pieces.push(input[last..].to_vec());
    pieces
}

#[derive(Debug, PartialEq, Eq)]
struct Relayed {
    out: Vec<u8>,
    usage: Option<Usage>,
    counted: u64,
    new_tokens: u64,
    first_tokens: u64,
    done: bool,
    error: bool,
}

fn relay(opts: (bool, bool), pieces: &[Vec<u8>]) -> Relayed {
    let mut r = StreamRelay::with_options(opts.0, opts.1);
    let (mut out, mut new_tokens, mut first_tokens) = (Vec::new(), 0, 0);
    for p in pieces {
        let pushed = r.push(p);
        out.extend_from_slice(&pushed.forward);
        new_tokens += pushed.new_tokens;
        first_tokens += u64::from(pushed.first_token);
    }
    out.extend_from_slice(&r.finish());
    Relayed {
        out,
        usage: r.usage(),
        counted: r.completion_tokens_counted(),
        new_tokens,
        first_tokens,
        done: r.saw_done(),
        error: r.error_event(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any split of a valid stream relays exactly what the oracle says, in every mode.
    #[test]
    fn valid_streams_any_split(
        events in prop::collection::vec(event(), 0..10),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        opts in any::<(bool, bool)>(),
    ) {
        let input: String = events.iter().map(|e| e.raw.as_str()).collect();
        let expected_out: String = events.iter().filter_map(|e| e.expected(opts)).collect();
        let counted = events.iter().filter(|e| e.bearing).count() as u64;
        let expected = Relayed {
            out: expected_out.into_bytes(),
            usage: events.iter().rev().find_map(|e| e.usage),
            counted,
            new_tokens: counted,
            first_tokens: u64::from(counted > 0),
            done: events.iter().any(|e| e.done),
            error: events.iter().any(|e| e.error),
        };
        let whole = relay(opts, &[input.clone().into_bytes()]);
        prop_assert_eq!(&whole, &expected);
        let pieces = split(input.as_bytes(), &cuts);
        prop_assert_eq!(relay(opts, &pieces), expected);
    }

    /// Any JSON object as a chunk: with `strip_chunk_usage`, what the client gets is the same
    /// object without its top-level object-valued `usage` (and, compact, without
    /// `"usage":null` members at any depth), still valid JSON, whatever the spacing.
    #[test]
    fn cut_chunks_stay_valid_json(
        fields in prop::collection::vec((key(), json_value()), 0..6),
        usage in prop::option::of(prop_oneof![
            Just(json!({})),
            (any::<u32>(), any::<u32>()).prop_map(|(p, c)| json!({"prompt_tokens": p, "completion_tokens": c, "prompt_tokens_details": {"cached_tokens": 1}})),
        ]),
        spaced in any::<bool>(),
        strip_usage_chunk in any::<bool>(),
    ) {
        let mut object: Map<String, Value> = fields.into_iter().collect();
        if let Some(u) = usage {
            object.insert("usage".into(), u);
        }
        let value = Value::Object(object);
        // Pretty JSON has newlines only between tokens (strings escape theirs), so flattening
        // them gives a one-line payload with spacing everywhere.
        let payload = if spaced {
            serde_json::to_string_pretty(&value).unwrap().replace('\n', " ")
        } else {
            serde_json::to_string(&value).unwrap()
        };
        let input = format!("data: {payload}\n\n");
        let got = relay((strip_usage_chunk, true), &[input.into_bytes()]);
        let usage_only = value.get("choices") == Some(&json!([])) && value.get("usage").is_some_and(Value::is_object);
        if usage_only {
            let expected = if strip_usage_chunk { String::new() } else { format!("data: {payload}\n\n") };
            prop_assert_eq!(got.out, expected.into_bytes());
            return Ok(());
        }
        let out = std::str::from_utf8(&got.out).unwrap();
        let out_payload = out.strip_prefix("data: ").and_then(|o| o.strip_suffix("\n\n")).unwrap();
        let parsed: Value = serde_json::from_str(out_payload)
            .map_err(|e| TestCaseError::fail(format!("not JSON: {e}: {out_payload}")))?;
        // Compare with the payload as parsed: float printing does not round-trip.
        let mut expected: Value = serde_json::from_str(&payload).unwrap();
        if let Value::Object(m) = &mut expected {
            if m.get("usage").is_some_and(Value::is_object) {
                m.remove("usage");
            }
        }
        if !spaced {
            remove_usage_nulls(&mut expected);
        }
        prop_assert_eq!(parsed, expected);
    }
}

/// Removes `"usage": null` members at every depth (what the compact-form removal does).
fn remove_usage_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("usage") == Some(&Value::Null) {
                m.remove("usage");
            }
            m.values_mut().for_each(remove_usage_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(remove_usage_nulls),
        _ => {}
    }
}

/// A JSON object body written out member by member, so keys may repeat (serde_json's `Map`
/// cannot say that).
fn object_text(members: &[(String, Value)]) -> String {
    let parts: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn content_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("application/json".to_string()),
        Just("application/json; charset=utf-8".to_string()),
        Just("text/plain".to_string()),
        Just("multipart/form-data; boundary=b".to_string()),
        Just("application/x-www-form-urlencoded".to_string()),
        "\\PC{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `read_model` never panics, whatever the content type, query and body.
    #[test]
    fn read_model_never_panics(
        ctype in content_type(),
        query in proptest::option::of("\\PC{0,30}"),
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let _ = fairgate_relay::read_model(&ctype, query.as_deref(), &body);
    }

    /// For JSON bodies, the model read is exactly what a last-wins parser (serde_json, Python's
    /// `json`) reads when `model` appears once, and the request is refused as ambiguous when it
    /// appears more than once.
    #[test]
    fn read_model_agrees_with_the_backend_or_refuses(
        members in prop::collection::vec((key(), json_value()), 0..6),
        ws in "[ \t\r\n]{0,3}",
    ) {
        let text = format!("{ws}{}", object_text(&members));
        let n_model = members.iter().filter(|(k, _)| k == "model").count();
        let got = fairgate_relay::read_model("application/json", None, text.as_bytes());
        let backend: Value = serde_json::from_str(&text).unwrap();
        match n_model {
            0 => prop_assert_eq!(got.unwrap().model, None),
            1 => match &backend["model"] {
                Value::String(s) if !s.is_empty() => {
                    prop_assert_eq!(got.unwrap().model, Some(s.clone()))
                }
                Value::String(_) | Value::Null => prop_assert_eq!(got.unwrap().model, None),
                _ => prop_assert_eq!(got.unwrap_err().code, "invalid_type"),
            },
            _ => prop_assert_eq!(got.unwrap_err().code, "ambiguous_model"),
        }
    }

    /// A query `model` and a body `model` that differ are always refused.
    #[test]
    fn query_and_body_must_agree(a in "[a-z]{1,4}", b in "[a-z]{1,4}") {
        let body = format!(r#"{{"model":"{b}"}}"#);
        let got = fairgate_relay::read_model("application/json", Some(&format!("model={a}")), body.as_bytes());
        if a == b {
            prop_assert_eq!(got.unwrap().model, Some(b));
        } else {
            prop_assert_eq!(got.unwrap_err().code, "ambiguous_model");
        }
    }
}
