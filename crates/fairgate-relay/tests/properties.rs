//! Property tests on the public API: no panics on arbitrary bytes, `with_include_usage` keeps
//! everything but `include_usage`, and the stream relay's output and accounting do not depend
//! on how the upstream bytes are split (checked against an independent oracle).

use bytes::Bytes;
use fairgate_relay::{parse_request, with_include_usage, Endpoint, ParsedRequest, StreamRelay};
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

/// `stream_options` in every form the rewrite must handle.
fn stream_options() -> impl Strategy<Value = Option<Value>> {
    let include_usage = prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        any::<bool>().prop_map(|b| Some(Value::Bool(b))),
    ];
    let others = prop::collection::vec(("[a-z_]{1,6}", json_value()), 0..3);
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        (include_usage, others).prop_map(|(iu, others)| {
            let mut m: Map<String, Value> = others.into_iter().collect();
            m.remove("include_usage");
            if let Some(iu) = iu {
                m.insert("include_usage".into(), iu);
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

/// Checks the rewrite of a JSON object body: valid JSON, include_usage true, and every other
/// top-level key and every other stream_options key unchanged.
fn check_rewrite(input: &str, out: &Bytes) -> Result<(), TestCaseError> {
    // Compare with the input as parsed (not as generated): float printing does not round-trip.
    let input: Value = serde_json::from_str(input).unwrap();
    let got: Value = serde_json::from_slice(out)
        .map_err(|e| TestCaseError::fail(format!("output is not JSON: {e}")))?;
    let (Value::Object(before), Value::Object(after)) = (&input, &got) else {
        return Err(TestCaseError::fail("not objects"));
    };
    prop_assert_eq!(
        &after["stream_options"]["include_usage"],
        &Value::Bool(true)
    );
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
        if k != "include_usage" {
            prop_assert_eq!(new_opts.get(k), Some(v));
        }
    }
    prop_assert_eq!(
        new_opts.len(),
        old_opts.len() + usize::from(!old_opts.contains_key("include_usage"))
    );
    Ok(())
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
            Ok(out) => check_rewrite(&text, &out)?,
            Err(e) => {
                // Only a stream_options that is neither object nor null, or a non-boolean
                // include_usage, may be refused.
                prop_assert_eq!(e.code, "invalid_type");
                let opts = &input["stream_options"];
                let bad_iu = opts.is_object() && !matches!(opts.get("include_usage"), None | Some(Value::Null | Value::Bool(_)));
                prop_assert!(bad_iu || !(opts.is_object() || opts.is_null()));
            }
        }
    }

    #[test]
    fn with_include_usage_on_valid_requests(body in valid_chat_body(), pretty in any::<bool>(), pad in pad()) {
        let text = render(&body, pretty, &pad);
        let out = with_include_usage(text.as_bytes()).unwrap();
        check_rewrite(&text, &out)?;
        let already = matches!(&body["stream_options"], Value::Object(o) if o.get("include_usage") == Some(&Value::Bool(true)));
        prop_assert_eq!(already, &out[..] == text.as_bytes());
        let before = parse_request(Endpoint::ChatCompletions, text.as_bytes()).unwrap();
        let after = parse_request(Endpoint::ChatCompletions, &out).unwrap();
        prop_assert_eq!(after, ParsedRequest { client_wants_usage: true, ..before });
    }

    #[test]
    fn stream_relay_never_panics_on_bytes(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
        strip in any::<bool>(),
    ) {
        let mut r = StreamRelay::new(strip);
        let mut out = Vec::new();
        for c in &chunks {
            out.extend_from_slice(&r.push(c).forward);
        }
        out.extend_from_slice(&r.finish());
        if !strip {
            prop_assert_eq!(out, chunks.concat());
        }
        let _ = (r.usage(), r.completion_tokens_counted(), r.saw_done(), r.error_event());
    }
}

/// One generated upstream event: its bytes, what a stripping relay must forward of it, and
/// its accounting.
#[derive(Clone, Debug)]
struct Ev {
    raw: String,
    stripped: Option<String>,
    bearing: bool,
    usage: Option<Usage>,
    done: bool,
    error: bool,
}

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
}

fn event() -> impl Strategy<Value = Ev> {
    let text = prop_oneof![
        Just(String::new()),
        "\\PC{1,6}",
        Just("\"usage\":null,\n".to_string())
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
        0u8..3,        // where "usage":null goes: none, first, last
        any::<bool>(), // space after "data:"
        prop::option::of("(id|event): [a-z0-9]{1,4}"),
        any::<bool>(), // leading comment line
        eol(),
    )
        .prop_map(|((kind, t), (p, c, cached), null_at, space, field, comment, eol)| {
            let choice = |body: Value| serde_json::to_string(&json!([body])).unwrap();
            let (members, bearing, usage, done, error) = match kind {
                0 => (format!(r#""object":"chat.completion.chunk","choices":{}"#, choice(json!({"index":0,"delta":{"content":t},"finish_reason":null}))), !t.is_empty(), None, false, false),
                1 => (format!(r#""choices":{}"#, choice(json!({"index":0,"delta":{"reasoning_content":t}}))), !t.is_empty(), None, false, false),
                2 => (format!(r#""choices":{}"#, choice(json!({"index":0,"text":t,"logprobs":null}))), !t.is_empty(), None, false, false),
                3 => (format!(r#""choices":{}"#, choice(json!({"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":t}}]}}))), true, None, false, false),
                4 => {
                    let u = Usage { prompt_tokens: p.into(), completion_tokens: c.into(), cached_tokens: cached.into() };
                    (format!(r#""choices":[],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"prompt_tokens_details":{{"cached_tokens":{cached}}}}}"#), false, Some(u), false, false)
                }
                5 => (r#""error":{"message":"boom","code":500}"#.to_string(), false, None, false, true),
                _ => (String::new(), false, None, kind == 6, false),
            };
            let is_usage = usage.is_some();
            let (payload, payload_stripped) = if kind >= 6 {
                let p = if done { "[DONE]".to_string() } else { "{}".to_string() };
                (p.clone(), p)
            } else if is_usage || kind == 5 {
                let p = format!("{{{members}}}");
                (p.clone(), p)
            } else {
                match null_at {
                    1 => (format!(r#"{{"usage":null,{members}}}"#), format!("{{{members}}}")),
                    2 => (format!(r#"{{{members},"usage":null}}"#), format!("{{{members}}}")),
                    _ => (format!("{{{members}}}"), format!("{{{members}}}")),
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
            let raw = format!("{head}{sep}{payload}{eol}{eol}");
            let stripped = (!is_usage).then(|| format!("{head}{sep}{payload_stripped}{eol}{eol}"));
            Ev { raw, stripped, bearing, usage, done, error }
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

fn relay(strip: bool, pieces: &[Vec<u8>]) -> Relayed {
    let mut r = StreamRelay::new(strip);
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

    /// Any split of a valid stream relays exactly what the oracle says, in both modes.
    #[test]
    fn valid_streams_any_split(
        events in prop::collection::vec(event(), 0..10),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        strip in any::<bool>(),
    ) {
        let input: String = events.iter().map(|e| e.raw.as_str()).collect();
        let expected_out = if strip {
            events.iter().filter_map(|e| e.stripped.as_deref()).collect::<String>()
        } else {
            input.clone()
        };
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
        let whole = relay(strip, &[input.clone().into_bytes()]);
        prop_assert_eq!(&whole, &expected);
        let pieces = split(input.as_bytes(), &cuts);
        prop_assert_eq!(relay(strip, &pieces), expected);
    }
}
