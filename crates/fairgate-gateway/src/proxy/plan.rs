//! What the request path shares between its phases: the header names it reads and writes,
//! and the [`Plan`], what a request is once it is understood.

use bytes::Bytes;
use fairgate_relay::Endpoint;
use http::HeaderName;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const QUEUE_WAIT_HEADER: &str = "x-fairgate-queue-wait-ms";
/// Request header choosing the priority class (`interactive` or `batch`).
pub const PRIORITY_HEADER: &str = "x-fairgate-priority";
/// Request header `on`/`off` to opt into or out of the response cache; response header
/// `hit`/`miss` on cacheable requests.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-fairgate-cache");
/// Status recorded for a client that went away before any response status was sent
/// (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// What the typed endpoints and the generic relay share once a request is understood.
pub(super) struct Plan {
    pub(super) model: String,
    /// The client did not ask for the final usage chunk (the gateway did).
    pub(super) strip_usage_chunk: bool,
    /// The client did not ask for usage on every chunk (the gateway did).
    pub(super) strip_chunk_usage: bool,
    pub(super) reservation: u64,
    pub(super) prompt_estimate: u64,
    /// A parsed, non-streamed request whose answer may be cached.
    pub(super) cache_candidate: bool,
    /// The parsed endpoint (`None` for relayed paths): where prompt prefix hashing can look.
    pub(super) endpoint: Option<Endpoint>,
    /// The parsed body (typed endpoints): the reservation is recomputed from it once the
    /// model's context length is known.
    pub(super) parsed: Option<fairgate_relay::ParsedRequest>,
    /// The backend will not see the model name in the body (a relayed request whose model
    /// came from the query or from the only model): it then runs its base model, so the name
    /// must not be one of the pool's adapters.
    pub(super) model_not_in_body: bool,
    /// What the request is measured in (tokens, or a relayed surface's own unit) and how
    /// much of it the request asks for, when it says (`n` images, characters to speak, a WAV
    /// upload's seconds).
    pub(super) unit: fairgate_types::Unit,
    pub(super) units_estimate: Option<u64>,
    /// Body to send upstream.
    pub(super) body: Bytes,
    /// A large upload on disk, sent instead of `body` (which is then empty).
    pub(super) spooled: Option<std::sync::Arc<super::spool::SpoolFile>>,
}
