//! The gateway's hot-path byte work, as pure functions with no IO: validating client request
//! bodies and estimating their tokens, turning on the upstream's usage reporting, reading usage
//! from responses, and relaying SSE streams while counting tokens.
//!
//! Everything here takes bytes and returns bytes or small records; the server crate owns the
//! sockets, timing and ledger. Nothing panics on any input (checked by property tests on
//! arbitrary bytes), allocation is kept to the output buffers, and JSON is read in a single
//! streaming pass without building `serde_json::Value` trees.
//!
//! # Layout
//!
//! - [`request`]: [`parse_request`] (validation with field paths, token estimate),
//!   [`estimate_text_tokens`], [`reservation_tokens`], [`with_include_usage`] and
//!   [`with_stream_usage`] (implemented in `rewrite.rs`: a byte-level splice, not a
//!   re-serialization).
//! - [`model`]: [`read_model`], the one reading of a relayed request's model (content type,
//!   query and body), refusing what could be read two ways.
//! - [`response`]: [`usage_from_body`] for non-stream responses (both usage shapes).
//! - [`units`]: each non-token surface's unit (images, audio seconds, characters).
//! - [`stream`]: [`StreamRelay`], the SSE relay with usage stripping and accounting, built on
//!   `sse.rs` (event framing that tolerates any split and every SSE line ending).
//! - `json.rs`: the serde visitor plumbing all of the above share; it is where the
//!   "duplicate keys: last one wins" rule lives.
//!
//! Benchmarks: `cargo bench -p fairgate-relay` (plain `harness = false` timing loops).

mod json;
pub mod model;
pub mod prefix;
pub mod request;
pub mod response;
mod rewrite;
mod sse;
pub mod stream;
pub mod units;

pub use model::{form_boundary, query_model, read_model, BodyKind, ModelRead, ModelSource};
pub use request::{
    client_priority, estimate_text_tokens, parse_request, reservation_tokens,
    reservation_tokens_within, with_include_usage, with_model, with_model_set, with_priority,
    with_stream_usage, Endpoint, ParsedRequest, RequestError, NON_TEXT_PART_TOKENS,
};
pub use response::usage_from_body;
pub use stream::{Pushed, StreamRelay, MAX_EVENT_BYTES};
pub use units::{answer_units, request_units, unit_of_path};
