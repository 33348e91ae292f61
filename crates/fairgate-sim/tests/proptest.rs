//! Property tests: the tokenizer's invariants, and that no request body (arbitrary bytes or
//! arbitrary JSON) makes a handler panic or answer anything but success or a client error.

use axum::body::Body;
use axum::http::Request;
use fairgate_sim::tokenizer::pieces;
use fairgate_sim::{count_tokens, tokenize, SimConfig, Simulator};
use proptest::prelude::*;
use serde_json::Value;
use tower::ServiceExt;

proptest! {
    #[test]
    fn tokenizer_invariants(a in any::<String>(), b in any::<String>()) {
        let n = count_tokens(&a);
        prop_assert_eq!(tokenize(&a).len(), n);
        prop_assert_eq!(pieces(&a).collect::<String>(), a.clone());
        if a.is_empty() {
            prop_assert_eq!(n, 0);
        } else {
            prop_assert!(n >= 1);
            prop_assert!(n <= a.chars().count());
        }
        // Appending text never removes tokens and adds at most the tokens of the suffix.
        let ab = format!("{a}{b}");
        let nab = count_tokens(&ab);
        prop_assert!(nab >= n.max(count_tokens(&b)));
        prop_assert!(nab <= n + count_tokens(&b));
    }

    #[test]
    fn english_is_about_four_chars_per_token(words in prop::collection::vec("[a-z]{1,12}", 1..50)) {
        let text = words.join(" ");
        let n = count_tokens(&text);
        let chars = text.len();
        // Non-space characters (chars minus the separating spaces) over 4, rounded up.
        let letters = chars - (words.len() - 1);
        prop_assert!(n >= letters.div_ceil(4), "{n} tokens for {chars} chars");
        prop_assert!(n <= chars);
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..5000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![Just("sim"), Just("user"), Just("text"), Just("hi there")]
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let keys = prop_oneof![
            Just("model".to_owned()),
            Just("messages".to_owned()),
            Just("role".to_owned()),
            Just("content".to_owned()),
            Just("type".to_owned()),
            Just("text".to_owned()),
            Just("prompt".to_owned()),
            Just("input".to_owned()),
            Just("max_tokens".to_owned()),
            Just("max_completion_tokens".to_owned()),
            Just("stream".to_owned()),
            Just("stream_options".to_owned()),
            Just("include_usage".to_owned()),
            Just("n".to_owned()),
            Just("encoding_format".to_owned()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/tokenize",
];

fn check_body(sim: &Simulator, rt: &tokio::runtime::Runtime, path: &str, body: Vec<u8>) {
    let status = rt.block_on(async {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let resp = sim.router().oneshot(req).await.unwrap();
        let status = resp.status();
        // Read the whole body too, so streaming paths run to the end.
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        status
    });
    assert!(
        status.is_success() || status.as_u16() == 400 || status.as_u16() == 404,
        "{path}: {status}"
    );
}

fn runtime_and_sim() -> (tokio::runtime::Runtime, Simulator) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sim = rt.block_on(async {
        Simulator::new(SimConfig {
            max_model_len: 512,
            ..SimConfig::instant("sim")
        })
    });
    (rt, sim)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), p in 0usize..4) {
        let (rt, sim) = runtime_and_sim();
        check_body(&sim, &rt, PATHS[p], body);
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json(), p in 0usize..4) {
        let (rt, sim) = runtime_and_sim();
        check_body(&sim, &rt, PATHS[p], serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn near_valid_chat_requests_never_panic(
        content in arb_json(),
        max_tokens in prop::option::of(0u64..600),
        stream in any::<bool>(),
        include_usage in prop::option::of(any::<bool>()),
    ) {
        let (rt, sim) = runtime_and_sim();
        let mut body = serde_json::json!({
            "model": "sim",
            "messages": [{"role": "user", "content": content}],
            "stream": stream,
        });
        if let Some(m) = max_tokens {
            body["max_tokens"] = m.into();
        }
        if let Some(u) = include_usage {
            body["stream_options"] = serde_json::json!({"include_usage": u});
        }
        check_body(&sim, &rt, PATHS[0], serde_json::to_vec(&body).unwrap());
    }
}
