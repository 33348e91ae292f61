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

/// `(strip_usage_chunk, strip_chunk_usage)`, as passed to [`StreamRelay::with_options`].
type Opts = (bool, bool);

const ALL_OPTS: [Opts; 4] = [(false, false), (true, false), (false, true), (true, true)];

fn relay(strip: bool, max_event: usize, pieces: &[&[u8]]) -> Outcome {
    relay_opts((strip, false), max_event, pieces)
}

fn relay_opts(opts: Opts, max_event: usize, pieces: &[&[u8]]) -> Outcome {
    let mut r = StreamRelay::with_max_event_bytes(opts.0, opts.1, max_event);
    let mut out = Vec::new();
    let (mut new_tokens, mut first_token_pushes) = (0, 0);
    for piece in pieces {
        let p = r.push(piece);
        if opts == (false, false) {
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

fn whole_opts(opts: Opts, input: &str) -> Outcome {
    relay_opts(opts, MAX_EVENT_BYTES, &[input.as_bytes()])
}

/// Asserts that splitting `input` at every byte boundary, and into 1-byte pushes, changes
/// nothing observable.
fn assert_split_invariant(strip: bool, max_event: usize, input: &[u8]) {
    assert_split_invariant_opts((strip, false), max_event, input);
}

fn assert_split_invariant_opts(opts: Opts, max_event: usize, input: &[u8]) {
    let reference = relay_opts(opts, max_event, &[input]);
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        assert_eq!(
            relay_opts(opts, max_event, &[a, b]),
            reference,
            "split at {i}, {opts:?}"
        );
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(
        relay_opts(opts, max_event, &bytes),
        reference,
        "1-byte pushes, {opts:?}"
    );
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

/// vLLM chat stream with `include_usage` and `continuous_usage_stats`: cumulative usage on
/// every chunk (cached tokens only where vLLM reports them), then the usage-only chunk.
const CONT: &str = r#"data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":12,"completion_tokens":0}}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":13,"completion_tokens":1}}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":" wörld \",\"usage\":{\"x\":1}}"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":14,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}}}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":14,"completion_tokens":2}}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[],"usage":{"prompt_tokens":12,"total_tokens":14,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}}}

data: [DONE]

"#;

/// [`CONT`] for a client that asked `include_usage` only: per-chunk usage cut, usage chunk kept.
const CONT_FINAL_ONLY: &str = r#"data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":" wörld \",\"usage\":{\"x\":1}}"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[],"usage":{"prompt_tokens":12,"total_tokens":14,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}}}

data: [DONE]

"#;

/// [`CONT`] for a client that asked `continuous_usage_stats` without `include_usage` (which
/// the server should not ask for, as vLLM ignores it): per-chunk usage kept, usage chunk gone.
const CONT_CHUNKS_ONLY: &str = r#"data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":12,"completion_tokens":0}}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":13,"completion_tokens":1}}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":" wörld \",\"usage\":{\"x\":1}}"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":14,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}}}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":14,"completion_tokens":2}}

data: [DONE]

"#;

/// [`CONT`] for a client that asked for no usage at all.
const CONT_NONE: &str = r#"data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":" wörld \",\"usage\":{\"x\":1}}"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-3","object":"chat.completion.chunk","created":1718000000,"model":"llama","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}

data: [DONE]

"#;

/// The client output for [`CONT`] under `opts`.
fn cont_expected(opts: Opts) -> &'static str {
    match opts {
        (false, false) => CONT,
        (false, true) => CONT_FINAL_ONLY,
        (true, false) => CONT_CHUNKS_ONLY,
        (true, true) => CONT_NONE,
    }
}

#[test]
fn continuous_usage_all_four_modes_are_byte_exact() {
    for opts in ALL_OPTS {
        let o = whole_opts(opts, CONT);
        assert_eq!(text(&o.out), cont_expected(opts), "{opts:?}");
        assert_eq!(o.usage, usage(12, 2, 8), "{opts:?}");
        assert_eq!(
            (o.counted, o.new_tokens, o.first_token_pushes),
            (2, 2, 1),
            "{opts:?}"
        );
        assert!(o.done && !o.error);
    }
}

#[test]
fn new_is_with_options_without_chunk_stripping() {
    for strip in [false, true] {
        for input in [CHAT, CONT, COMPLETIONS] {
            let mut a = StreamRelay::new(strip);
            let mut b = StreamRelay::with_options(strip, false);
            assert_eq!(a.push(input.as_bytes()), b.push(input.as_bytes()));
            assert_eq!(a.usage(), b.usage());
        }
    }
}

#[test]
fn continuous_usage_every_split_and_line_ending() {
    for opts in ALL_OPTS {
        for eol in ["\n", "\r\n", "\r"] {
            let input = CONT.replace('\n', eol);
            let o = whole_opts(opts, &input);
            assert_eq!(
                text(&o.out),
                cont_expected(opts).replace('\n', eol),
                "{opts:?} {eol:?}"
            );
            assert_split_invariant_opts(opts, MAX_EVENT_BYTES, input.as_bytes());
        }
    }
}

#[test]
fn usage_after_a_truncated_stream_is_the_last_cumulative_usage() {
    // Upstream broke after the third chunk: no finish chunk, no usage chunk, no [DONE].
    let events: Vec<&str> = CONT.split_inclusive("\n\n").collect();
    let cut: String = events[..3].concat();
    for opts in ALL_OPTS {
        let o = whole_opts(opts, &cut);
        assert_eq!(o.usage, usage(12, 2, 8), "{opts:?}");
        assert_eq!(o.counted, 2);
        assert!(!o.done);
        // Client gone after the second chunk: usage so far is that chunk's.
        let mut r = StreamRelay::with_options(opts.0, opts.1);
        r.push(events[0].as_bytes());
        r.push(events[1].as_bytes());
        assert_eq!(r.usage(), usage(12, 1, 0), "{opts:?}");
        // A chunk cut off mid-event and then flushed is still accounted (finish).
        r.push(&events[2].as_bytes()[..events[2].len() - 2]);
        assert_eq!(r.usage(), usage(12, 1, 0));
        let tail = r.finish();
        assert_eq!(r.usage(), usage(12, 2, 8), "{opts:?}");
        if opts != (false, false) {
            assert_eq!(&tail[..], &events[2].as_bytes()[..events[2].len() - 2]);
        }
    }
    // Later chunks without usage, or with null usage, do not erase it.
    let input = format!(
        "{}data: {{\"choices\":[{{\"text\":\"a\"}}],\"usage\":null}}\n\ndata: {{\"choices\":[{{\"text\":\"b\"}}]}}\n\n",
        events[1]
    );
    for opts in ALL_OPTS {
        assert_eq!(whole_opts(opts, &input).usage, usage(12, 1, 0));
    }
}

#[test]
fn usage_object_members_are_cut_wherever_they_sit() {
    let cut = |payload: &str| {
        let o = whole_opts((false, true), &format!("data: {payload}\n\n"));
        let out = text(&o.out).to_owned();
        out.strip_prefix("data: ")
            .and_then(|s| s.strip_suffix("\n\n"))
            .unwrap()
            .to_owned()
    };
    let u = r#"{"prompt_tokens":1,"total_tokens":2,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":0}}"#;
    let choices = r#""choices":[{"index":0,"text":"x"}]"#;
    assert_eq!(
        cut(&format!(r#"{{{choices},"usage":{u}}}"#)),
        format!("{{{choices}}}")
    );
    assert_eq!(
        cut(&format!(r#"{{"usage":{u},{choices}}}"#)),
        format!("{{{choices}}}")
    );
    assert_eq!(
        cut(&format!(
            r#"{{"id":"a",{choices},"usage":{u},"model":"m"}}"#
        )),
        format!(r#"{{"id":"a",{choices},"model":"m"}}"#)
    );
    // A usage member alone leaves an empty object; spacing around it is kept verbatim.
    assert_eq!(cut(&format!(r#"{{"usage":{u}}}"#)), "{}");
    assert_eq!(
        cut(&format!("{{ {choices} ,\t\"usage\" : {u} }}")),
        format!("{{ {choices} }}")
    );
    assert_eq!(
        cut(&format!("{{ \"usage\" : {u} , {choices} }}")),
        format!("{{ {choices} }}")
    );
    // Duplicates: every object-valued member goes, nulls go as before.
    assert_eq!(
        cut(&format!(
            r#"{{"usage":{u},"usage":{{}},{choices},"usage":null,"usage":{u}}}"#
        )),
        format!("{{{choices}}}")
    );
    assert_eq!(
        cut(&format!(r#"{{"usage":null,{choices},"usage":{u}}}"#)),
        format!("{{{choices}}}")
    );
    // Escaped key: it is `usage` to every JSON parser, so it goes too.
    assert_eq!(
        cut(&format!(r#"{{{choices},"us\u0061ge":{u}}}"#)),
        format!("{{{choices}}}")
    );
    // Only top-level members, never nested ones or text in strings.
    let kept = format!(
        r#"{{"choices":[{{"index":0,"text":"\",\"usage\":{{}}","usage":{u}}}],"meta":{{"usage":{u}}}}}"#
    );
    assert_eq!(cut(&kept), kept);
    // Usage values that are not objects are not ours to cut.
    for odd in [r#""n/a""#, "7", "[]", "true"] {
        let payload = format!(r#"{{{choices},"usage":{odd}}}"#);
        assert_eq!(cut(&payload), payload);
    }
}

#[test]
fn cut_chunks_keep_their_accounting() {
    let input = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n",
        "data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2},\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
    );
    let o = whole_opts((false, true), input);
    assert_eq!(
        text(&o.out),
        concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
        )
    );
    assert_eq!(
        (o.usage, o.counted, o.first_token_pushes),
        (usage(5, 2, 0), 2, 1)
    );
}

#[test]
fn comments_and_fields_survive_cuts() {
    let input = "id: 7\r\n: note\r\nevent: message\r\ndata:{\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}\r\n\r\n";
    let expected =
        "id: 7\r\n: note\r\nevent: message\r\ndata:{\"choices\":[{\"text\":\"a\"}]}\r\n\r\n";
    for opts in [(false, true), (true, true)] {
        assert_eq!(text(&whole_opts(opts, input).out), expected);
        assert_split_invariant_opts(opts, MAX_EVENT_BYTES, input.as_bytes());
    }
}

#[test]
fn multi_line_data_is_cut_only_within_a_line() {
    // The member and its comma sit on one data line: cut there, the other lines untouched.
    let input = "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":3}\ndata: ,\"id\":\"x\"}\n\n";
    let o = whole_opts((false, true), input);
    assert_eq!(
        text(&o.out),
        "data: {\"choices\":[{\"text\":\"a\"}]\ndata: ,\"id\":\"x\"}\n\n"
    );
    assert_eq!((o.usage, o.counted), (usage(3, 0, 0), 1));
    // The comma before the member is on the previous line: forwarded unchanged, since the
    // cut would have to join the lines.
    let input =
        "data: {\"choices\":[{\"text\":\"a\"}],\ndata: \"usage\":{\"prompt_tokens\":3}}\n\n";
    assert_eq!(text(&whole_opts((false, true), input).out), input);
    // The same with a compact null elsewhere: the null removal still applies.
    let input = "data: {\"usage\":null,\"choices\":[{\"text\":\"a\"}],\ndata: \"usage\":{\"prompt_tokens\":3}}\n\n";
    assert_eq!(
        text(&whole_opts((false, true), input).out),
        "data: {\"choices\":[{\"text\":\"a\"}],\ndata: \"usage\":{\"prompt_tokens\":3}}\n\n"
    );
}

#[test]
fn unexpected_payloads_are_forwarded_unchanged() {
    // Invalid UTF-8 in a skipped string, usage first: the chunk is accounted, but the
    // borrowed span parse refuses it, so nothing is cut rather than something guessed.
    let input: &[u8] =
        b"data: {\"usage\":{\"prompt_tokens\":3},\"x\":\"\xff\",\"choices\":[{\"text\":\"a\"}]}\n\n";
    let o = relay_opts((false, true), MAX_EVENT_BYTES, &[input]);
    assert_eq!(o.out, input);
    assert_eq!((o.usage, o.counted), (usage(3, 0, 0), 1));
    // Usage last, after `,"usage":`: the parser placed the member, and the bytes before it
    // cannot be inside a string, so the cut is certain whatever the other strings hold.
    let input: &[u8] =
        b"data: {\"x\":\"\xff\",\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":3}}\n\n";
    let o = relay_opts((false, true), MAX_EVENT_BYTES, &[input]);
    assert_eq!(
        o.out,
        b"data: {\"x\":\"\xff\",\"choices\":[{\"text\":\"a\"}]}\n\n".as_slice()
    );
    assert_eq!((o.usage, o.counted), (usage(3, 0, 0), 1));
    // Not JSON, or not an object: never touched.
    for input in [
        "data: {\"usage\":{\"prompt_tokens\":3},}\n\n",
        "data: [{\"usage\":{\"prompt_tokens\":3}}]\n\n",
        "data: \"usage\":{}\n\n",
    ] {
        for opts in ALL_OPTS {
            assert_eq!(text(&whole_opts(opts, input).out), input, "{opts:?}");
        }
    }
}

#[test]
fn usage_chunk_is_kept_verbatim_when_only_chunk_usage_is_stripped() {
    // Even with a compact null inside, the usage-only chunk the client asked for is untouched.
    let input = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"prompt_tokens_details\":null},\"x\":{\"usage\":null}}\n\n";
    assert_eq!(text(&whole_opts((false, true), input).out), input);
    assert_eq!(text(&whole_opts((true, true), input).out), "");
}

#[test]
fn oversized_continuous_chunks_pass_through() {
    let small = "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":1}}\n\n";
    let big = format!(
        "data: {{\"choices\":[{{\"text\":\"{}\"}}],\"usage\":{{\"prompt_tokens\":2}}}}\n\n",
        "b".repeat(100)
    );
    let input = format!("{small}{big}{small}");
    let o = relay_opts((true, true), 80, &[input.as_bytes()]);
    let cut_small = "data: {\"choices\":[{\"text\":\"a\"}]}\n\n";
    assert_eq!(text(&o.out), format!("{cut_small}{big}{cut_small}"));
    assert_eq!((o.usage, o.counted), (usage(1, 0, 0), 2));
    for opts in ALL_OPTS {
        assert_split_invariant_opts(opts, 80, input.as_bytes());
    }
}

#[test]
fn cut_buffers_are_released() {
    let big = format!(
        "data: {{\"choices\":[{{\"text\":\"{}\"}}],\"usage\":{{\"prompt_tokens\":2}}}}\n\n",
        "y".repeat(300_000)
    );
    let mut r = StreamRelay::with_options(true, true);
    let mut out = Vec::new();
    for piece in big.as_bytes().chunks(4096) {
        out.extend_from_slice(&r.push(piece).forward);
    }
    assert_eq!(
        out.len(),
        big.len() - r#","usage":{"prompt_tokens":2}"#.len()
    );
    assert_eq!(r.usage(), usage(2, 0, 0));
    assert!(r.line.capacity() <= KEEP_CAPACITY);
    assert!(r.pending.capacity() <= KEEP_CAPACITY);
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
        opts in any::<(bool, bool)>(),
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
        let reference = relay_opts(opts, cap, &[&input]);
        prop_assert_eq!(relay_opts(opts, cap, &pieces), reference);
    }
}

/// A Responses API stream (`/v1/responses` with `stream: true`): text deltas are top-level
/// `delta` strings and the usage rides on `response.completed`'s `response.usage`, in the
/// `input_tokens`/`output_tokens` shape.
const RESPONSES: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"usage\":null}}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"m1\",\"delta\":\"Hel\"}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"m1\",\"delta\":\"lo\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":9,\"input_tokens_details\":{\"cached_tokens\":4},\"output_tokens\":2,\"total_tokens\":11}}}\n\n";

#[test]
fn responses_api_stream_usage_and_deltas() {
    let o = whole(false, RESPONSES);
    assert_eq!(text(&o.out), RESPONSES);
    assert_eq!(
        o.usage,
        Some(Usage {
            prompt_tokens: 9,
            completion_tokens: 2,
            cached_tokens: 4
        })
    );
    assert_eq!(o.counted, 2);
    assert!(o.done, "response.completed ends the stream");
    assert_split_invariant(false, MAX_EVENT_BYTES, RESPONSES.as_bytes());
    // A failed response is a mid-stream error.
    let failed = "data: {\"type\":\"response.failed\",\"response\":{\"usage\":null}}\n\n";
    assert!(whole(false, failed).error);
}

#[test]
fn usage_cut_fast_and_general_paths_agree() {
    // The common shape takes the fast cut; an escaped key, spacing or usage first take the
    // general path; each gives the chunk without its usage, and the usage is read.
    for (input, expected) in [
        (
            "data: {\"id\":\"a\",\"choices\":[{\"text\":\"x\"}],\"usage\":{\"prompt_tokens\":3}}\n\n",
            "data: {\"id\":\"a\",\"choices\":[{\"text\":\"x\"}]}\n\n",
        ),
        (
            "data: {\"id\":\"a\",\"choices\":[{\"text\":\"x\"}],\"usage\" : {\"prompt_tokens\":3}}\n\n",
            "data: {\"id\":\"a\",\"choices\":[{\"text\":\"x\"}]}\n\n",
        ),
        (
            "data: {\"id\":\"a\",\"choices\":[{\"text\":\"x\"}],\"us\\u0061ge\":{\"prompt_tokens\":3}}\n\n",
            "data: {\"id\":\"a\",\"choices\":[{\"text\":\"x\"}]}\n\n",
        ),
        (
            "data: {\"id\":\"a\",\"choices\":[{\"text\":\"x\"}], \"usage\":{\"prompt_tokens\":3}}\n\n",
            "data: {\"id\":\"a\",\"choices\":[{\"text\":\"x\"}]}\n\n",
        ),
        (
            "data: {\"usage\":{\"prompt_tokens\":3},\"id\":\"a\",\"choices\":[{\"text\":\"x\"}]}\n\n",
            "data: {\"id\":\"a\",\"choices\":[{\"text\":\"x\"}]}\n\n",
        ),
        // A string value that ends like the key does not fool the fast path.
        (
            "data: {\"id\":\"a,\\\"usage\",\"choices\":[{\"text\":\"x\"}],\"usage\":{\"prompt_tokens\":3}}\n\n",
            "data: {\"id\":\"a,\\\"usage\",\"choices\":[{\"text\":\"x\"}]}\n\n",
        ),
    ] {
        let o = whole_opts((false, true), input);
        assert_eq!(text(&o.out), expected, "{input}");
        assert_eq!((o.usage, o.counted), (usage(3, 0, 0), 1), "{input}");
        assert_split_invariant_opts((false, true), MAX_EVENT_BYTES, input.as_bytes());
    }
}
