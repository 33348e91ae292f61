//! The ledger writer: one task that batches ledger rows and commits them off the request path,
//! and spills them to disk whenever the database cannot take them, so no fault loses a row.
//!
//! # The hand-off
//! Request handlers call [`LedgerHandle::record`], which is neither async nor blocking: it puts
//! the row on a bounded in-memory queue, or, when the queue is full (or the writer has shut
//! down), appends it to the spill file (a `write` of one line; see [`crate::spill`]). Nothing
//! on the request path waits for the database, and memory stays bounded by the queue's
//! capacity whatever the database does.
//!
//! # The writer
//! A single task receives rows and commits a batch when it holds `batch_size` rows or when
//! `flush_interval` has passed since the oldest uncommitted row arrived. When a commit fails,
//! the database is taken to be down (`fairgate_database_up` 0): that batch and every later one
//! are appended to the spill file (fsynced per batch, and recorder appends at least every
//! 100 ms) instead of being held in memory, and the writer pings the database with back-off
//! (200 ms doubling to 5 s). The first successful ping brings it back up; while the database is
//! up and idle it is pinged every `ping_interval` (5 s), so the gauge also notices outages when
//! no traffic flows.
//!
//! # Replay
//! Whenever the database is up and spill rows are pending (at start-up, left by an earlier
//! run; after an outage; after a queue overflow) the writer replays spill files, oldest first,
//! in chunks, between batches of new rows. Inserts are idempotent on the request id (`ON
//! CONFLICT (id) DO NOTHING` on both backends), so a replay interrupted and redone, a file
//! replayed twice, or a batch both committed and spilled (commit sent, answer lost) never
//! counts a request twice. A file is removed only after all its rows are committed.
//!
//! # Shutdown
//! [`LedgerWriter::shutdown_with_timeout`] stops accepting rows into the queue (later
//! [`LedgerHandle::record`] calls spill directly), drains it, and commits what it holds for at
//! most the given time, then spills the rest; if the database was already down it spills at
//! once. It returns [`LedgerError::Spilled`] when rows went to a spill file at shutdown; they
//! are replayed at the next start.
//!
//! # What a crash can lose
//! A crash (SIGKILL, OOM kill, an aborting panic) loses the rows recorded but neither committed
//! nor appended to a spill file: the queue (at most `queue_capacity` rows) plus what the writer
//! task holds (one batch, at most `batch_size`). In steady state that is about
//! `flush_interval` worth of traffic (100 ms by default). Spilled rows survive a process kill
//! (they are in the kernel once appended) and a power loss once synced (within 100 ms).
//! [`LedgerHandle::queued`] and `fairgate_ledger_queue_depth` show that exposure.
//!
//! Metrics, registered in the registry given to [`spawn_ledger`]:
//! `fairgate_ledger_rows_written_total`, `fairgate_ledger_write_errors_total` (failed commit
//! attempts), `fairgate_ledger_queue_depth` (rows recorded but not yet committed or spilled),
//! `fairgate_ledger_batch_seconds`, `fairgate_ledger_rows_spilled_total`,
//! `fairgate_ledger_rows_replayed_total` (spilled rows committed by a replay),
//! `fairgate_ledger_spill_files`, `fairgate_ledger_spill_pending_rows` (spilled, not yet
//! replayed) and `fairgate_database_up`.

use crate::spill::{self, Spill};
use crate::{Store, StoreError};
use fairgate_types::LedgerRow;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long [`LedgerWriter::shutdown`] tries the database before spilling what is left.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// One commit attempt that hangs this long (a black-holed network, a stuck lock) counts as a
/// failure, so the writer cannot stall on one attempt; meanwhile rows overflow to the spill.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows per replay transaction.
const REPLAY_CHUNK: usize = 1_000;
/// Replay steps (chunks or file removals) a flush does before answering.
const FLUSH_REPLAY_STEPS: usize = 20;

/// Tuning for the writer. The defaults suit a single gateway on SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Rows per commit at most (and the size that triggers a commit without waiting).
    pub batch_size: usize,
    /// Longest a recorded row waits in memory before its batch is committed.
    pub flush_interval: Duration,
    /// Rows the queue holds before `record` spills instead: the bound on memory and on what a
    /// crash can lose.
    pub queue_capacity: usize,
    /// Where rows are spilled; `None` means the system temp directory, because losing rows is
    /// worse than writing them somewhere unexpected.
    pub spill_dir: Option<PathBuf>,
    /// How often an idle (or failed) database is pinged to keep `fairgate_database_up` true.
    pub ping_interval: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            batch_size: 256,
            flush_interval: Duration::from_millis(100),
            queue_capacity: 65_536,
            spill_dir: None,
            ping_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger writer has shut down")]
    Closed,
    #[error(
        "database unavailable; {rows} ledger rows spilled to {path} (replayed automatically at \
         the next start, or with import_spill)"
    )]
    Spilled { path: PathBuf, rows: usize },
    #[error(
        "database unavailable and spilling failed ({reason}); {rows} ledger rows were logged \
         as errors instead"
    )]
    Unwritten { rows: usize, reason: String },
    #[error("ledger writer task failed: {0}")]
    Task(String),
    #[error("spill file {path}: {source}")]
    SpillIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spill file {path}, line {line}: {source}")]
    SpillParse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What became of rows a flush waited for. Cloneable (unlike [`LedgerError`]) so one outcome
/// can answer several waiting flushes.
#[derive(Clone, Debug)]
enum Fate {
    Committed,
    Spilled { path: PathBuf, rows: usize },
}

impl Fate {
    fn into_result(self) -> Result<(), LedgerError> {
        match self {
            Fate::Committed => Ok(()),
            Fate::Spilled { path, rows } => Err(LedgerError::Spilled { path, rows }),
        }
    }
}

// Rows are nearly every message: boxing them would cost an allocation per request just to
// shrink the rare flush message.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Row(LedgerRow),
    Flush(oneshot::Sender<Fate>),
}

#[derive(Clone)]
struct Metrics {
    written: IntCounter,
    errors: IntCounter,
    depth: IntGauge,
    batch_seconds: Histogram,
    spilled: IntCounter,
    replayed: IntCounter,
    spill_files: IntGauge,
    spill_pending: IntGauge,
    db_up: IntGauge,
}

const METRIC_COUNT: usize = 9;

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        Ok(Metrics {
            written: IntCounter::new(
                "fairgate_ledger_rows_written_total",
                "Ledger rows committed to the database.",
            )?,
            errors: IntCounter::new(
                "fairgate_ledger_write_errors_total",
                "Failed ledger batch commit attempts (the rows are spilled and replayed).",
            )?,
            depth: IntGauge::new(
                "fairgate_ledger_queue_depth",
                "Ledger rows recorded but not yet committed or spilled.",
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "fairgate_ledger_batch_seconds",
                    "Duration of successful ledger batch commits.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            spilled: IntCounter::new(
                "fairgate_ledger_rows_spilled_total",
                "Ledger rows written to a spill file (database down or queue full).",
            )?,
            replayed: IntCounter::new(
                "fairgate_ledger_rows_replayed_total",
                "Spilled ledger rows committed to the database by a replay.",
            )?,
            spill_files: IntGauge::new(
                "fairgate_ledger_spill_files",
                "Ledger spill files on disk, not yet fully replayed.",
            )?,
            spill_pending: IntGauge::new(
                "fairgate_ledger_spill_pending_rows",
                "Ledger rows in spill files, not yet replayed.",
            )?,
            db_up: IntGauge::new(
                "fairgate_database_up",
                "1 if the last database commit or ping succeeded, else 0.",
            )?,
        })
    }

    /// Handles to the metrics (clones share their values).
    fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; METRIC_COUNT] {
        [
            Box::new(self.written.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.depth.clone()),
            Box::new(self.batch_seconds.clone()),
            Box::new(self.spilled.clone()),
            Box::new(self.replayed.clone()),
            Box::new(self.spill_files.clone()),
            Box::new(self.spill_pending.clone()),
            Box::new(self.db_up.clone()),
        ]
    }

    /// Registers all, or none: a half-registered set would make a retry fail forever.
    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        for (i, c) in self.collectors().into_iter().enumerate() {
            if let Err(e) = registry.register(c) {
                for done in self.collectors().into_iter().take(i) {
                    let _ = registry.unregister(done);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Rows recorded but not yet committed or spilled, kept as an exact count (for
/// [`LedgerHandle::queued`]) and mirrored in the gauge.
#[derive(Clone)]
struct Depth {
    count: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Depth {
    fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::Relaxed);
        self.gauge.add(i64::try_from(n).unwrap_or(i64::MAX));
    }
    fn sub(&self, n: usize) {
        self.count.fetch_sub(n, Ordering::Relaxed);
        self.gauge.sub(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Starts the writer task on the current Tokio runtime and registers its metrics. Spill files
/// already in the spill directory (an earlier run's) are replayed as soon as the database
/// answers.
///
/// Fails if the metrics are already registered in `registry`, or (reported as
/// `prometheus::Error::Msg`) if called outside a Tokio runtime.
pub fn spawn_ledger(
    store: Store,
    cfg: LedgerConfig,
    registry: &Registry,
) -> Result<(LedgerHandle, LedgerWriter), prometheus::Error> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
        prometheus::Error::Msg(format!("spawn_ledger must run inside a Tokio runtime: {e}"))
    })?;
    let metrics = Metrics::new()?;
    metrics.register(registry)?;
    // Optimistic until a commit or ping says otherwise.
    metrics.db_up.set(1);
    // Zero would make the channel panic and the batch never fill; one is the smallest sane value.
    let batch_size = cfg.batch_size.max(1);
    let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
    let (stop_tx, stop_rx) = oneshot::channel();
    let depth = Depth {
        count: Arc::new(AtomicUsize::new(0)),
        gauge: metrics.depth.clone(),
    };
    let spill = Spill::new(
        cfg.spill_dir.unwrap_or_else(std::env::temp_dir),
        metrics.spilled.clone(),
        metrics.spill_files.clone(),
        metrics.spill_pending.clone(),
    );
    let wake = Arc::new(Notify::new());
    let ping_interval = cfg.ping_interval.max(Duration::from_millis(10));
    let writer = Writer {
        store,
        batch_size,
        flush_interval: cfg.flush_interval,
        ping_interval,
        metrics,
        depth: depth.clone(),
        spill: spill.clone(),
        wake: wake.clone(),
        batch: Vec::with_capacity(batch_size),
        oldest: None,
        waiters: Vec::new(),
        rx,
        stop: Some(stop_rx),
        stop_at: None,
        db_up: true,
        backoff: BACKOFF_FIRST,
        // Ping at once: a replay of left-over files waits for it, and the gauge should be
        // right from the start.
        next_ping: Instant::now(),
        sync_at: None,
        replay: None,
    };
    let join = runtime.spawn(writer.run());
    Ok((
        LedgerHandle {
            tx,
            depth,
            spill,
            wake,
        },
        LedgerWriter {
            stop: stop_tx,
            join,
        },
    ))
}

/// The request path's side of the ledger: cheap to clone, never touches the database.
#[derive(Clone)]
pub struct LedgerHandle {
    tx: mpsc::Sender<Msg>,
    depth: Depth,
    spill: Arc<Spill>,
    wake: Arc<Notify>,
}

impl LedgerHandle {
    /// Hands a row over, never waiting: onto the queue, or, if it is full or the writer has shut
    /// down, appended to the spill file. Rows queued this way are ordered before any later
    /// [`LedgerHandle::flush`]. Only if the spill file cannot be written either (disk full) is
    /// the row logged at error level as JSON, the last place left.
    pub fn record(&self, row: LedgerRow) {
        let closed = match self.tx.try_reserve() {
            Ok(permit) => {
                // Counted before it is visible to the writer, so the count never underflows.
                self.depth.add(1);
                permit.send(Msg::Row(row));
                return;
            }
            Err(mpsc::error::TrySendError::Full(())) => false,
            Err(mpsc::error::TrySendError::Closed(())) => true,
        };
        let rows = std::slice::from_ref(&row);
        match self.spill.append_rows(rows) {
            Ok(_) if closed => {
                // No writer left to sync it: do it now (rare: rows finishing after shutdown).
                if let Err(e) = self.spill.sync() {
                    tracing::warn!(error = %e, "syncing the ledger spill file failed");
                }
            }
            // The writer syncs within 100 ms of being woken.
            Ok(_) => self.wake.notify_one(),
            Err(e) => {
                log_rows_as_last_resort(rows, &format!("{}: {e}", self.spill.dir().display()))
            }
        }
    }

    /// Enqueues a row only if the queue has room; gives it back otherwise. Prefer
    /// [`LedgerHandle::record`], which never gives a row back (it spills instead); this is
    /// for callers that would rather drop a row of their own making than touch the disk.
    // The row comes back by value so the fallback costs no allocation.
    #[allow(clippy::result_large_err)]
    pub fn try_record(&self, row: LedgerRow) -> Result<(), LedgerRow> {
        match self.tx.try_reserve() {
            Ok(permit) => {
                self.depth.add(1);
                permit.send(Msg::Row(row));
                Ok(())
            }
            Err(_) => Err(row),
        }
    }

    /// Resolves once every row recorded before this call is committed (replaying spilled rows
    /// first if the database is up). Returns [`LedgerError::Spilled`] at once if rows are in
    /// spill files instead (the database is down; they are replayed when it returns), and
    /// [`LedgerError::Closed`] if the writer is already gone.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)?.into_result()
    }

    /// Rows recorded but not yet committed or spilled: what a crash right now would lose.
    pub fn queued(&self) -> usize {
        self.depth.count.load(Ordering::Relaxed)
    }

    /// Rows in spill files, waiting for a replay.
    pub fn spill_pending(&self) -> u64 {
        self.spill.pending()
    }
}

/// Owner of the writer task; call [`LedgerWriter::shutdown`] on the way out. Dropping it
/// without shutting down leaves the task running until every [`LedgerHandle`] is dropped.
pub struct LedgerWriter {
    stop: oneshot::Sender<Duration>,
    join: JoinHandle<Result<(), LedgerError>>,
}

impl LedgerWriter {
    /// [`shutdown_with_timeout`](Self::shutdown_with_timeout) with [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown(self) -> Result<(), LedgerError> {
        self.shutdown_with_timeout(SHUTDOWN_TIMEOUT).await
    }

    /// Stops the queue, commits everything in it, trying the database for at most `timeout`
    /// (not at all if it is known to be down), then spills what is left and returns
    /// [`LedgerError::Spilled`] naming the file.
    pub async fn shutdown_with_timeout(self, timeout: Duration) -> Result<(), LedgerError> {
        // An error means the task already ended (every handle was dropped); its result is in
        // the join handle either way.
        let _ = self.stop.send(timeout);
        match self.join.await {
            Ok(result) => result,
            Err(e) => Err(LedgerError::Task(e.to_string())),
        }
    }
}

/// Resolves with the shutdown timeout when shutdown is requested; never resolves once it was,
/// or if the [`LedgerWriter`] was dropped (then the task runs until every handle is dropped).
async fn stop_requested(stop: &mut Option<oneshot::Receiver<Duration>>) -> Duration {
    if let Some(rx) = stop.as_mut() {
        let result = rx.await;
        *stop = None;
        if let Ok(timeout) = result {
            return timeout;
        }
    }
    std::future::pending().await
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs a database call bounded by `limit`, by `deadline`, and by the deadline of a shutdown
/// requested meanwhile (recorded in `stop_at`). `Err` if it was cut off.
async fn bounded<T>(
    call: impl std::future::Future<Output = T>,
    limit: Duration,
    deadline: Option<Instant>,
    stop: &mut Option<oneshot::Receiver<Duration>>,
    stop_at: &mut Option<Instant>,
) -> Result<T, String> {
    let started = Instant::now();
    tokio::pin!(call);
    loop {
        let mut until = started + limit;
        for d in [deadline, *stop_at].into_iter().flatten() {
            until = until.min(d);
        }
        tokio::select! {
            r = &mut call => return Ok(r),
            timeout = stop_requested(stop) => *stop_at = Some(Instant::now() + timeout),
            () = tokio::time::sleep_until(until) => {
                return Err(format!("no answer after {:?}", started.elapsed()));
            }
        }
    }
}

/// A spill file being replayed.
struct Replay {
    path: PathBuf,
    reader: spill::Reader,
}

struct Writer {
    store: Store,
    batch_size: usize,
    flush_interval: Duration,
    ping_interval: Duration,
    metrics: Metrics,
    depth: Depth,
    spill: Arc<Spill>,
    /// Woken by the request path after it spilled, so the append is synced soon.
    wake: Arc<Notify>,
    batch: Vec<LedgerRow>,
    /// When the oldest row in `batch` arrived.
    oldest: Option<Instant>,
    /// Flushes waiting for `batch` to commit.
    waiters: Vec<oneshot::Sender<Fate>>,
    rx: mpsc::Receiver<Msg>,
    stop: Option<oneshot::Receiver<Duration>>,
    /// When a shutdown requested during a database call must be done.
    stop_at: Option<Instant>,
    /// The last commit or ping succeeded.
    db_up: bool,
    backoff: Duration,
    next_ping: Instant,
    /// When unsynced spill appends must be synced.
    sync_at: Option<Instant>,
    replay: Option<Replay>,
}

enum Event {
    Stop(Duration),
    Msgs,
    Closed,
    Tick,
    Sync,
    Woken,
    Ping,
    Replay,
}

impl Writer {
    async fn run(mut self) -> Result<(), LedgerError> {
        let mut buf: Vec<Msg> = Vec::with_capacity(self.batch_size);
        loop {
            if let Some(at) = self.stop_at {
                // Shutdown arrived while the writer was waiting on the database.
                let left = at.saturating_duration_since(Instant::now());
                return self.shutdown(buf, left).await;
            }
            let tick = self.oldest.map(|t| t + self.flush_interval);
            if self.sync_at.is_none() && self.spill.is_dirty() {
                self.sync_at = Some(Instant::now() + spill::SYNC_INTERVAL);
            }
            let replay_ready = self.db_up && (self.replay.is_some() || self.spill.pending() > 0);
            let event = tokio::select! {
                biased;
                timeout = stop_requested(&mut self.stop) => Event::Stop(timeout),
                n = self.rx.recv_many(&mut buf, self.batch_size) => {
                    if n == 0 { Event::Closed } else { Event::Msgs }
                }
                () = sleep_until_opt(tick) => Event::Tick,
                () = sleep_until_opt(self.sync_at) => Event::Sync,
                () = self.wake.notified() => Event::Woken,
                () = tokio::time::sleep_until(self.next_ping) => Event::Ping,
                () = std::future::ready(()), if replay_ready => Event::Replay,
            };
            match event {
                Event::Stop(timeout) => return self.shutdown(buf, timeout).await,
                // Every handle is gone: nothing more can arrive.
                Event::Closed => return self.shutdown(buf, SHUTDOWN_TIMEOUT).await,
                Event::Msgs => self.handle(&mut buf).await,
                Event::Tick => self.commit_or_spill().await,
                Event::Sync => self.sync().await,
                Event::Woken => {}
                Event::Ping => self.ping().await,
                Event::Replay => {
                    self.replay_step().await;
                }
            }
        }
    }

    async fn handle(&mut self, buf: &mut Vec<Msg>) {
        for msg in buf.drain(..) {
            match msg {
                Msg::Row(row) => {
                    if self.batch.is_empty() {
                        self.oldest = Some(Instant::now());
                    }
                    self.batch.push(row);
                    if self.batch.len() >= self.batch_size {
                        self.commit_or_spill().await;
                    }
                }
                Msg::Flush(tx) => {
                    // Everything recorded before this flush is in `batch`, committed or spilled.
                    self.waiters.push(tx);
                    self.commit_or_spill().await;
                    // Spilled rows count as recorded before it too: replay them if possible,
                    // but only so much (a big backlog keeps replaying in the background and
                    // the flush reports the rest as spilled rather than stall its caller).
                    let mut steps = 0;
                    while steps < FLUSH_REPLAY_STEPS
                        && self.db_up
                        && (self.replay.is_some() || self.spill.pending() > 0)
                    {
                        steps += 1;
                        if !self.replay_step().await {
                            break;
                        }
                    }
                    self.answer_waiters();
                }
            }
        }
        // A steady trickle keeps the channel non-empty, so check the interval here too rather
        // than only when the timer branch wins.
        if self
            .oldest
            .is_some_and(|t| t.elapsed() >= self.flush_interval)
        {
            self.commit_or_spill().await;
        }
    }

    fn set_up(&mut self, up: bool) {
        if up {
            self.backoff = BACKOFF_FIRST;
            self.next_ping = Instant::now() + self.ping_interval;
            if !self.db_up {
                tracing::info!("database reachable again; replaying spilled ledger rows");
            }
        } else {
            self.next_ping = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
        self.db_up = up;
        self.metrics.db_up.set(i64::from(up));
    }

    /// One insert attempt, bounded by [`ATTEMPT_TIMEOUT`] or `deadline`, whichever is first.
    /// A shutdown request arriving meanwhile bounds it too (the attempt is cut at the
    /// shutdown's deadline), so a hung or refused connection cannot stretch the exit.
    async fn insert(
        &mut self,
        rows: &[LedgerRow],
        deadline: Option<Instant>,
    ) -> Result<(), String> {
        let store = self.store.clone();
        bounded(
            store.insert_ledger_rows(rows),
            ATTEMPT_TIMEOUT,
            deadline,
            &mut self.stop,
            &mut self.stop_at,
        )
        .await
        .and_then(|r| r.map_err(|e| e.to_string()))
    }

    /// Commits `batch` if the database is up; spills it if it is down or the commit fails.
    /// Answers waiting flushes unless rows are still pending elsewhere.
    async fn commit_or_spill(&mut self) {
        if !self.batch.is_empty() {
            let rows = self.batch.len();
            let mut committed = false;
            if self.db_up {
                let started = Instant::now();
                let batch = std::mem::take(&mut self.batch);
                let result = self.insert(&batch, None).await;
                self.batch = batch;
                match result {
                    Ok(()) => {
                        self.metrics
                            .batch_seconds
                            .observe(started.elapsed().as_secs_f64());
                        self.metrics
                            .written
                            .inc_by(u64::try_from(rows).unwrap_or(u64::MAX));
                        self.set_up(true);
                        committed = true;
                    }
                    Err(error) => {
                        self.metrics.errors.inc();
                        tracing::warn!(%error, rows, "ledger batch write failed; spilling until the database answers");
                        self.set_up(false);
                    }
                }
            }
            if !committed {
                let batch = std::mem::take(&mut self.batch);
                self.spill_rows(batch).await;
            }
            self.batch.clear();
            self.oldest = None;
            self.depth.sub(rows);
        }
        if !self.waiters.is_empty() && (!self.db_up || self.spill.pending() == 0) {
            self.answer_waiters();
        }
    }

    /// Appends rows to the spill file and syncs it (per batch). Returns the file, if written.
    async fn spill_rows(&mut self, rows: Vec<LedgerRow>) -> Option<PathBuf> {
        let spill = self.spill.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = spill
                .append_rows(&rows)
                .and_then(|p| spill.sync().map(|()| p));
            (rows, r)
        })
        .await;
        match result {
            Ok((_, Ok(path))) => Some(path),
            Ok((rows, Err(e))) => {
                log_rows_as_last_resort(&rows, &format!("{}: {e}", self.spill.dir().display()));
                None
            }
            Err(join) => {
                tracing::error!(error = %join, "ledger spill task failed; rows lost");
                None
            }
        }
    }

    async fn sync(&mut self) {
        self.sync_at = None;
        let spill = self.spill.clone();
        match tokio::task::spawn_blocking(move || spill.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "syncing the ledger spill file failed"),
            Err(e) => tracing::warn!(error = %e, "syncing the ledger spill file failed"),
        }
    }

    async fn ping(&mut self) {
        let store = self.store.clone();
        let result = bounded(
            store.ping(),
            PING_TIMEOUT,
            None,
            &mut self.stop,
            &mut self.stop_at,
        )
        .await;
        self.set_up(matches!(result, Ok(Ok(()))));
    }

    fn answer_waiters(&mut self) {
        let pending = self.spill.pending();
        let fate = if pending == 0 {
            Fate::Committed
        } else {
            Fate::Spilled {
                path: self.spill.dir().to_owned(),
                rows: usize::try_from(pending).unwrap_or(usize::MAX),
            }
        };
        for w in self.waiters.drain(..) {
            // A flush whose caller went away needs no answer.
            let _ = w.send(fate.clone());
        }
    }

    /// Replays one chunk of spilled rows. Returns whether it made progress.
    async fn replay_step(&mut self) -> bool {
        if self.replay.is_none() {
            // Close the file being appended to, so its rows are replayable too.
            if let Err(e) = self.spill.rotate() {
                tracing::warn!(error = %e, "closing the ledger spill file failed");
            }
            let Some(path) = self.spill.files().into_iter().next() else {
                // Nothing left on disk: whatever the count says is stale.
                let stale = self.spill.pending();
                self.spill.sub_pending(stale);
                return false;
            };
            match spill::Reader::open(&path) {
                Ok(reader) => self.replay = Some(Replay { path, reader }),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot read ledger spill file; set aside");
                    let aside = path.with_extension("jsonl.unreadable");
                    let _ = std::fs::rename(&path, aside);
                    self.spill.files_gauge.dec();
                    return false;
                }
            }
        }
        let Some(replay) = self.replay.as_mut() else {
            return false;
        };
        let chunk = match replay.reader.chunk(REPLAY_CHUNK) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(path = %replay.path.display(), error = %e, "reading ledger spill file failed; will retry");
                self.replay = None;
                return false;
            }
        };
        if chunk.is_empty() {
            // The whole file is committed: remove it.
            let Some(done) = self.replay.take() else {
                return false;
            };
            if let Err(e) = self.spill.remove(&done.path, done.reader.consumed) {
                tracing::error!(path = %done.path.display(), error = %e, "removing a replayed ledger spill file failed");
            } else {
                tracing::info!(path = %done.path.display(), rows = done.reader.consumed, "ledger spill file replayed");
            }
            return true;
        }
        match self.insert(&chunk, None).await {
            Ok(()) => {
                self.metrics.replayed.inc_by(chunk.len() as u64);
                self.set_up(true);
                true
            }
            Err(error) => {
                self.metrics.errors.inc();
                tracing::warn!(%error, "replaying spilled ledger rows failed; will retry");
                // Start the file over later: rows already committed are skipped by id.
                self.replay = None;
                self.set_up(false);
                false
            }
        }
    }

    /// Drains the closed queue, commits for at most `timeout` (if the database is up), spills
    /// the rest, syncs and answers every flush.
    async fn shutdown(mut self, mut buf: Vec<Msg>, timeout: Duration) -> Result<(), LedgerError> {
        // Closing makes further sends fail (so `record` spills) while keeping what is buffered.
        self.rx.close();
        let deadline = Instant::now() + timeout;
        while let Some(m) = self.rx.recv().await {
            buf.push(m);
        }
        let mut rows = std::mem::take(&mut self.batch);
        for m in buf {
            match m {
                Msg::Row(r) => rows.push(r),
                Msg::Flush(tx) => self.waiters.push(tx),
            }
        }
        let total = rows.len();
        let mut rest = rows.as_slice();
        while self.db_up && !rest.is_empty() {
            let n = rest.len().min(self.batch_size);
            match self.insert(&rest[..n], Some(deadline)).await {
                Ok(()) => {
                    self.metrics
                        .written
                        .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
                    rest = &rest[n..];
                }
                Err(error) => {
                    self.metrics.errors.inc();
                    tracing::warn!(%error, rows = rest.len(), "ledger write failed at shutdown; spilling");
                    self.set_up(false);
                }
            }
        }
        let left = rest.len();
        let mut result = Ok(());
        if left > 0 {
            let rest = rest.to_vec();
            match self.spill_rows(rest).await {
                Some(path) => {
                    tracing::error!(
                        rows = left,
                        path = %path.display(),
                        "database unavailable at shutdown; ledger rows spilled (replayed at the next start)"
                    );
                    result = Err(LedgerError::Spilled { path, rows: left });
                }
                None => {
                    result = Err(LedgerError::Unwritten {
                        rows: left,
                        reason: "spill failed".to_owned(),
                    })
                }
            }
        }
        if let Err(e) = self.spill.rotate() {
            tracing::warn!(error = %e, "closing the ledger spill file failed");
        }
        self.depth.sub(total);
        self.answer_waiters();
        result
    }
}

fn log_rows_as_last_resort(rows: &[LedgerRow], reason: &str) {
    for row in rows {
        let json = serde_json::to_string(row).unwrap_or_else(|e| format!("<unencodable row: {e}>"));
        tracing::error!(
            request_id = %row.id,
            row = %json,
            %reason,
            "ledger row could not be committed or spilled"
        );
    }
}

/// Reads a spill file back into rows (blank lines are skipped; any bad line is an error).
pub fn spill_file_rows(path: impl AsRef<Path>) -> Result<Vec<LedgerRow>, LedgerError> {
    let path = path.as_ref();
    let io = |source| LedgerError::SpillIo {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line).map_err(|source| LedgerError::SpillParse {
            path: path.to_owned(),
            line: i + 1,
            source,
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// Replays a spill file into the store and returns how many rows it held. Rows already stored
/// are skipped, so importing the same file twice is harmless. (The writer replays its spill
/// directory by itself; this is for files moved elsewhere.)
pub async fn import_spill(store: &Store, path: impl AsRef<Path>) -> Result<usize, LedgerError> {
    let path = path.as_ref().to_owned();
    let rows = tokio::task::spawn_blocking(move || spill_file_rows(path))
        .await
        .map_err(|e| LedgerError::Task(e.to_string()))??;
    store.insert_ledger_rows(&rows).await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registering_twice_fails_cleanly_and_leaves_no_half_set() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let registry = Registry::new();
        let (_h, w) = spawn_ledger(store.clone(), LedgerConfig::default(), &registry).unwrap();
        assert!(spawn_ledger(store.clone(), LedgerConfig::default(), &registry).is_err());
        w.shutdown().await.unwrap();

        // A registry already holding one of the names rejects the set and keeps nothing of it.
        let registry = Registry::new();
        let clash = IntCounter::new("fairgate_ledger_rows_spilled_total", "x").unwrap();
        registry.register(Box::new(clash)).unwrap();
        assert!(spawn_ledger(store.clone(), LedgerConfig::default(), &registry).is_err());
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.get_name().to_owned())
            .collect();
        assert_eq!(names, vec!["fairgate_ledger_rows_spilled_total".to_owned()]);
    }

    #[test]
    fn spawning_outside_a_runtime_is_an_error_not_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt.block_on(Store::connect("sqlite::memory:")).unwrap();
        let result = spawn_ledger(store, LedgerConfig::default(), &Registry::new());
        assert!(matches!(result, Err(prometheus::Error::Msg(_))));
    }

    /// With the database known down, shutdown does not wait out its (hour-long) bound: it
    /// spills at once.
    #[tokio::test]
    async fn shutdown_with_database_known_down_spills_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let dead = Store::connect("sqlite::memory:").await.unwrap();
        dead.close().await;
        let cfg = LedgerConfig {
            spill_dir: Some(dir.path().to_owned()),
            ..LedgerConfig::default()
        };
        let (h, w) = spawn_ledger(dead, cfg, &Registry::new()).unwrap();
        let rec = |i: i64| {
            h.record(LedgerRow::new(
                fairgate_types::RequestId(format!("r{i}")),
                i,
                "/v1/x".into(),
            ))
        };
        // A failed commit (or the failed start-up ping) marks the database down.
        (0..10).for_each(rec);
        assert!(matches!(h.flush().await, Err(LedgerError::Spilled { .. })));
        (10..15).for_each(rec);
        let result = tokio::time::timeout(
            Duration::from_secs(120),
            w.shutdown_with_timeout(Duration::from_secs(3600)),
        )
        .await
        .expect("shutdown must not wait for a database known to be down");
        assert!(matches!(result, Err(LedgerError::Spilled { rows: 5, .. })));
        let rows: usize = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| spill_file_rows(e.unwrap().path()).unwrap().len())
            .sum();
        assert_eq!(rows, 15);
    }
}
