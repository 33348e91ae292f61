//! StreamRelay tests: byte-exact outputs on realistic vLLM/OpenAI streams, accounting, and
//! independence from how the upstream bytes are split.

use super::*;
use proptest::prelude::*;

/// OpenAI-style chat stream (every chunk carries `"usage":null`), ending in the usage chunk
/// the gateway asked for and `[DONE]`.
const CHAT: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":" wörld \"usage\":null"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[],"usage":{"prompt_tokens":12,"total_tokens":14,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}}}

data: [DONE]

"#;

/// What a client that did not ask for usage receives of [`CHAT`].
const CHAT_STRIPPED: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":" wörld \"usage\":null"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}

data: [DONE]

"#;

/// vLLM-style completions stream (no `usage` key in content chunks), with the usage chunk.
const COMPLETIONS: &str = r#"data: {"id":"cmpl-1","object":"text_completion","created":1718000000,"model":"llama","choices":[{"index":0,"text":" Hello","logprobs":null,"finish_reason":null,"stop_reason":null}]}

data: {"id":"cmpl-1","object":"text_completion","created":1718000000,"model":"llama","choices":[{"index":0,"text":" there","logprobs":null,"finish_reason":null,"stop_reason":null}]}

data: {"id":"cmpl-1","object":"text_completion","created":1718000000,"model":"llama","choices":[{"index":0,"text":"!","logprobs":null,"finish_reason":"length","stop_reason":null}]}

data: {"id":"cmpl-1","object":"text_completion","created":1718000000,"model":"llama","choices":[],"usage":{"prompt_tokens":5,"total_tokens":8,"completion_tokens":3}}

data: [DONE]

"#;

const COMPLETIONS_STRIPPED: &str = r#"data: {"id":"cmpl-1","object":"text_completion","created":1718000000,"model":"llama","choices":[{"index":0,"text":" Hello","logprobs":null,"finish_reason":null,"stop_reason":null}]}

data: {"id":"cmpl-1","object":"text_completion","created":1718000000,"model":"llama","choices":[{"index":0,"text":" there","logprobs":null,"finish_reason":null,"stop_reason":null}]}

data: {"id":"cmpl-1","object":"text_completion","created":1718000000,"model":"llama","choices":[{"index":0,"text":"!","logprobs":null,"finish_reason":"length","stop_reason":null}]}

data: [DONE]

"#;

/// vLLM chat stream without a usage chunk (client asked for nothing, gateway injected nothing).
const CHAT_NO_USAGE: &str = r#"data: {"id":"chatcmpl-2","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-2","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-2","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-2","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}

data: [DONE]

"#;

/// Everything observable about one relayed stream.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    out: Vec<u8>,
    usage: Option<Usage>,
    counted: u64,
    new_tokens: u64,
    first_token_pushes: usize,
    done: bool,
    error: bool,
}

fn relay(strip: bool, max_event: usize, pieces: &[&[u8]]) -> Outcome {
    let mut r = StreamRelay::with_max_event_bytes(strip, max_event);
    let mut out = Vec::new();
    let (mut new_tokens, mut first_token_pushes) = (0, 0);
    for piece in pieces {
        let p = r.push(piece);
        if !strip {
            assert_eq!(
                &p.forward[..],
                *piece,
                "pass-through forwards each chunk as is"
            );
        }
        assert!(
            r.pending.len() <= max_event,
            "held bytes stay under the cap"
        );
        out.extend_from_slice(&p.forward);
        new_tokens += p.new_tokens;
        first_token_pushes += usize::from(p.first_token);
    }
    out.extend_from_slice(&r.finish());
    Outcome {
        out,
        usage: r.usage(),
        counted: r.completion_tokens_counted(),
        new_tokens,
        first_token_pushes,
        done: r.saw_done(),
        error: r.error_event(),
    }
}

fn whole(strip: bool, input: &str) -> Outcome {
    relay(strip, MAX_EVENT_BYTES, &[input.as_bytes()])
}

/// Asserts that splitting `input` at every byte boundary, and into 1-byte pushes, changes
/// nothing observable.
fn assert_split_invariant(strip: bool, max_event: usize, input: &[u8]) {
    let reference = relay(strip, max_event, &[input]);
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        assert_eq!(relay(strip, max_event, &[a, b]), reference, "split at {i}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(relay(strip, max_event, &bytes), reference, "1-byte pushes");
}

fn usage(prompt: u64, completion: u64, cached: u64) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: cached,
    })
}

fn text(out: &[u8]) -> &str {
    std::str::from_utf8(out).unwrap()
}

#[test]
fn chat_strip_mode_is_byte_exact() {
    let o = whole(true, CHAT);
    assert_eq!(text(&o.out), CHAT_STRIPPED);
    assert_eq!(o.usage, usage(12, 2, 8));
    assert_eq!((o.counted, o.new_tokens, o.first_token_pushes), (2, 2, 1));
    assert!(o.done);
    assert!(!o.error);
}

#[test]
fn chat_pass_through_forwards_everything() {
    let o = whole(false, CHAT);
    assert_eq!(text(&o.out), CHAT);
    assert_eq!(o.usage, usage(12, 2, 8));
    assert_eq!((o.counted, o.first_token_pushes), (2, 1));
    assert!(o.done);
}

#[test]
fn completions_both_modes() {
    let o = whole(true, COMPLETIONS);
    assert_eq!(text(&o.out), COMPLETIONS_STRIPPED);
    assert_eq!(o.usage, usage(5, 3, 0));
    assert_eq!(o.counted, 3);
    assert!(o.done);
    let o = whole(false, COMPLETIONS);
    assert_eq!(text(&o.out), COMPLETIONS);
    assert_eq!((o.usage, o.counted), (usage(5, 3, 0), 3));
}

#[test]
fn stream_without_usage_chunk_is_counted() {
    for strip in [false, true] {
        let o = whole(strip, CHAT_NO_USAGE);
        assert_eq!(text(&o.out), CHAT_NO_USAGE, "strip={strip}");
        assert_eq!(o.usage, None);
        assert_eq!(o.counted, 2);
        assert!(o.done);
    }
}

#[test]
fn per_push_tokens_and_first_token_flag() {
    let mut r = StreamRelay::new(true);
    let events: Vec<&str> = CHAT.split_inclusive("\n\n").collect();
    assert_eq!(events.len(), 6);
    let pushed: Vec<(u64, bool, usize)> = events
        .iter()
        .map(|e| {
            let p = r.push(e.as_bytes());
            (p.new_tokens, p.first_token, p.forward.len())
        })
        .collect();
    let tokens: Vec<(u64, bool)> = pushed.iter().map(|&(n, f, _)| (n, f)).collect();
    assert_eq!(
        tokens,
        vec![
            (0, false),
            (1, true),
            (1, false),
            (0, false),
            (0, false),
            (0, false)
        ]
    );
    // The usage event forwards nothing; the others forward themselves minus `,"usage":null`.
    assert_eq!(pushed[4].2, 0);
    assert_eq!(pushed[1].2, events[1].len() - r#","usage":null"#.len());
    assert!(r.push(b"").forward.is_empty());
    assert!(r.finish().is_empty());
}

#[test]
fn strip_mode_holds_back_partial_events() {
    let mut r = StreamRelay::new(true);
    let p = r.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n");
    assert!(p.forward.is_empty());
    assert_eq!(p.new_tokens, 0);
    let p = r.push(b"\ndata: [DO");
    assert_eq!(
        &p.forward[..],
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
    );
    assert_eq!((p.new_tokens, p.first_token), (1, true));
    assert!(!r.saw_done());
    let p = r.push(b"NE]\n\n");
    assert_eq!(&p.forward[..], b"data: [DONE]\n\n");
    assert!(r.saw_done());
}

#[test]
fn finish_forwards_the_held_tail_as_is_and_accounts_it() {
    let mut r = StreamRelay::new(true);
    let tail = br#"data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
    assert!(r.push(tail).forward.is_empty());
    assert_eq!(&r.finish()[..], &tail[..]);
    assert_eq!(r.usage(), usage(1, 2, 0));
    assert!(r.finish().is_empty(), "finish twice is harmless");

    let mut r = StreamRelay::new(false);
    assert_eq!(
        &r.push(b"data: {\"choices\":[{\"text\":\"x\"}]}\n").forward[..],
        b"data: {\"choices\":[{\"text\":\"x\"}]}\n"
    );
    assert!(r.finish().is_empty(), "pass-through holds nothing back");
    assert_eq!(r.completion_tokens_counted(), 1);
}

#[test]
fn every_split_gives_identical_output_and_accounting() {
    for input in [CHAT, COMPLETIONS, CHAT_NO_USAGE] {
        for strip in [false, true] {
            assert_split_invariant(strip, MAX_EVENT_BYTES, input.as_bytes());
        }
    }
}

#[test]
fn crlf_and_cr_streams() {
    for eol in ["\r\n", "\r"] {
        let input = CHAT.replace('\n', eol);
        let expected = CHAT_STRIPPED.replace('\n', eol);
        let o = whole(true, &input);
        assert_eq!(text(&o.out), expected, "eol {eol:?}");
        assert_eq!(o.usage, usage(12, 2, 8));
        assert_eq!(o.counted, 2);
        assert!(o.done);
        assert_eq!(text(&whole(false, &input).out), input);
        for strip in [false, true] {
            assert_split_invariant(strip, MAX_EVENT_BYTES, input.as_bytes());
        }
    }
}

#[test]
fn dropped_event_takes_its_crlf_tail_along() {
    // The usage event's blank line is "\r\n" after an LF line end: the framer ends the event at
    // the CR and the LF that follows (possibly in a later push) must be dropped with it.
    let input = concat!(
        "data: {\"choices\":[{\"text\":\"a\"}]}\n\r\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\r\n",
        "data: [DONE]\n\r\n"
    );
    let o = whole(true, input);
    assert_eq!(
        text(&o.out),
        "data: {\"choices\":[{\"text\":\"a\"}]}\n\r\ndata: [DONE]\n\r\n"
    );
    assert_eq!(o.usage, usage(3, 1, 0));
    for strip in [false, true] {
        assert_split_invariant(strip, MAX_EVENT_BYTES, input.as_bytes());
    }
}

#[test]
fn comments_ids_and_event_lines() {
    let input = concat!(
        ": keep-alive\n\n",
        "event: message\nid: 1\ndata:{\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n",
        "id: 2\n: usage follows\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n\n",
        "data: [DONE]\n\n"
    );
    let o = whole(true, input);
    assert_eq!(
        text(&o.out),
        concat!(
            ": keep-alive\n\n",
            "event: message\nid: 1\ndata:{\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
            "data: [DONE]\n\n"
        )
    );
    assert_eq!((o.usage, o.counted, o.done), (usage(4, 1, 0), 1, true));
}

#[test]
fn usage_null_as_first_key_is_removed() {
    let o = whole(
        true,
        "data: {\"usage\":null,\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
    );
    assert_eq!(
        text(&o.out),
        "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"
    );
}

#[test]
fn invalid_json_data_is_left_alone() {
    let input = "data: {\"choices\":[],\"usage\":null,}\n\ndata: not json ,\"usage\":null\n\n";
    let o = whole(true, input);
    assert_eq!(text(&o.out), input);
    assert_eq!(
        (o.usage, o.counted, o.done, o.error),
        (None, 0, false, false)
    );
}

#[test]
fn multi_line_data_is_joined() {
    let input =
        "data: {\"choices\":[{\"delta\":\ndata: {\"content\":\"hi\"}}],\ndata: \"usage\":null}\n\n";
    let o = whole(true, input);
    assert_eq!(o.counted, 1);
    // Only the compact form on one line is removed; `"usage":null` here starts its line.
    assert_eq!(text(&o.out), input);
}

#[test]
fn content_bearing_classification() {
    let count = |chunk: &str| whole(false, &format!("data: {chunk}\n\n")).counted;
    assert_eq!(count(r#"{"choices":[{"delta":{"content":"a"}}]}"#), 1);
    assert_eq!(
        count(r#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#),
        1
    );
    assert_eq!(
        count(r#"{"choices":[{"delta":{"reasoning":"hm","content":null}}]}"#),
        1
    );
    assert_eq!(
        count(
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#
        ),
        1
    );
    assert_eq!(count(r#"{"choices":[{"text":"a"}]}"#), 1);
    assert_eq!(
        count(r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}"#),
        1
    );
    assert_eq!(
        count(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
        0
    );
    assert_eq!(count(r#"{"choices":[{"delta":{"tool_calls":[]}}]}"#), 0);
    assert_eq!(
        count(r#"{"choices":[{"delta":{"content":"a","content":""}}]}"#),
        0
    );
    assert_eq!(count(r#"{"choices":[{"text":""}],"usage":null}"#), 0);
    assert_eq!(count(r#"{"choices":[{"delta":"a"}]}"#), 0);
    assert_eq!(count(r#"{"choices":{"delta":{"content":"a"}}}"#), 0);
    assert_eq!(
        count(r#"{"object":"x","nested":{"choices":[{"text":"a"}]}}"#),
        0
    );
}

#[test]
fn continuous_usage_chunks_are_kept_and_last_usage_wins() {
    let input = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
    );
    let o = whole(true, input);
    assert_eq!(text(&o.out), input, "chunks with choices are never dropped");
    assert_eq!((o.usage, o.counted), (usage(5, 2, 0), 2));
}

#[test]
fn mid_stream_error_event() {
    let input = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"error\":{\"object\":\"error\",\"message\":\"CUDA out of memory\",\"code\":500}}\n\n",
    );
    for strip in [false, true] {
        let o = whole(strip, input);
        assert!(o.error);
        assert_eq!(text(&o.out), input);
        assert!(!o.done);
    }
    assert!(!whole(false, "data: {\"error\":null,\"choices\":[]}\n\n").error);
    assert!(!whole(false, "data: {\"choices\":[{\"text\":\"error\"}]}\n\n").error);
}

#[test]
fn oversized_events_pass_through_unprocessed() {
    let big_usage = format!(
        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":1}},\"pad\":\"{}\"}}\n\n",
        "x".repeat(100)
    );
    let small = "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n";
    let input = format!("{small}{big_usage}{small}data: [DONE]\n\n");
    let o = relay(true, 80, &[input.as_bytes()]);
    let expected_small = "data: {\"choices\":[{\"text\":\"a\"}]}\n\n";
    assert_eq!(
        text(&o.out),
        format!("{expected_small}{big_usage}{expected_small}data: [DONE]\n\n")
    );
    assert_eq!((o.usage, o.counted, o.done), (None, 2, true));
    for strip in [false, true] {
        assert_split_invariant(strip, 80, input.as_bytes());
    }
}

#[test]
fn event_exactly_at_the_cap_is_processed() {
    let event = "data: {\"choices\":[],\"usage\":{}}\n\n";
    // The cap counts the whole event (all but the LF of a final CRLF blank line).
    let measured = event.len();
    assert_eq!(whole(true, event).out.len(), 0);
    assert!(relay(true, measured, &[event.as_bytes()]).out.is_empty());
    assert_eq!(
        text(&relay(true, measured - 1, &[event.as_bytes()]).out),
        event
    );
    assert_split_invariant(true, measured, event.as_bytes());
    assert_split_invariant(true, measured - 1, event.as_bytes());
}

#[test]
fn large_event_buffers_are_released() {
    let big = format!(
        "data: {{\"choices\":[{{\"text\":\"{}\"}}]}}\n\n",
        "y".repeat(300_000)
    );
    let mut r = StreamRelay::new(true);
    let mut out = Vec::new();
    for piece in big.as_bytes().chunks(4096) {
        out.extend_from_slice(&r.push(piece).forward);
    }
    assert_eq!(out, big.as_bytes());
    assert_eq!(r.completion_tokens_counted(), 1);
    assert!(r.pending.capacity() <= KEEP_CAPACITY);
    assert!(r.scratch.capacity() <= KEEP_CAPACITY);
}

#[test]
fn bare_newlines_and_garbage_are_forwarded() {
    let input: &[u8] = b"\n\n\r\r\n\xff\xfe\0data\n\n";
    assert_eq!(relay(true, MAX_EVENT_BYTES, &[input]).out, input);
    assert_split_invariant(true, MAX_EVENT_BYTES, input);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes, arbitrary splits and a small cap: no panic, output independent of
    /// the split, held bytes bounded, pass-through exact.
    #[test]
    fn arbitrary_bytes_small_cap(
        input in proptest::collection::vec(
            prop_oneof![
                Just(b'\n'), Just(b'\r'), Just(b':'), Just(b'{'), Just(b'}'),
                any::<u8>(), Just(b'd'), Just(b'"'),
            ],
            0..300,
        ),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        cap in 1usize..64,
        strip in any::<bool>(),
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for p in points {
            pieces.push(&input[last..p]);
            last = p;
        }
        pieces.push(&input[last..]);
        let reference = relay(strip, cap, &[&input]);
        prop_assert_eq!(relay(strip, cap, &pieces), reference);
    }
}
