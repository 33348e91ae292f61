//! The ledger writer: one task that batches ledger rows and commits them off the request path.
//!
//! Request handlers call [`LedgerHandle::record`], which only enqueues the row on a bounded
//! channel; it waits only when the queue is full (backpressure), never on the database. A single
//! writer task receives rows and commits a batch when it holds `batch_size` rows or when
//! `flush_interval` has passed since the oldest uncommitted row arrived. Flush requests travel
//! through the same channel as rows, so a flush covers exactly the rows recorded before it.
//!
//! When a commit fails the writer keeps the batch and retries it with capped exponential
//! backoff (50 ms doubling to 5 s), logging every failure with `tracing::warn!` and counting it
//! in `fairgate_ledger_write_errors_total`. Meanwhile the queue fills and `record` starts to
//! wait, which is the intended backpressure. Retried batches cannot double-count: inserts are
//! idempotent on the request id.
//!
//! Shutdown ([`LedgerWriter::shutdown`]) stops accepting rows, drains the queue and commits
//! everything. It is bounded: if the database stays unreachable for about 10 s, the rows still in
//! memory are written to `spill_dir/ledger-spill-<unix millis>.jsonl` (one JSON [`LedgerRow`] per
//! line, fsynced) and shutdown returns [`LedgerError::Spilled`] naming that file; an operator
//! replays it with [`import_spill`] (idempotent, so replaying twice is harmless). If even the
//! spill file cannot be written, every row is logged at error level as JSON, the last place left.
//!
//! # What a crash can lose
//! A crash (SIGKILL, OOM kill, a panic that aborts) loses at most the rows recorded but not yet
//! committed, all of which are in memory: the queue (at most `queue_capacity` rows) plus what the
//! writer task holds (at most two batches: the one being committed and the rest of the messages
//! it last received). In steady state that is about `flush_interval` worth of traffic; more only
//! while the database is slow or down and a backlog builds. Committed batches are as durable as
//! the database makes them (this crate leaves SQLite's `synchronous` setting at its default).
//! [`LedgerHandle::queued`] and the `fairgate_ledger_queue_depth` gauge show that exposure at
//! any moment.
//!
//! Metrics, registered in the registry given to [`spawn_ledger`]:
//! `fairgate_ledger_rows_written_total`, `fairgate_ledger_write_errors_total` (failed commit
//! attempts), `fairgate_ledger_queue_depth` (rows recorded but not yet committed or spilled),
//! `fairgate_ledger_batch_seconds` (duration of successful commits) and
//! `fairgate_ledger_rows_spilled_total`.

use crate::{Store, StoreError};
use fairgate_types::{now_millis, LedgerRow};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long [`LedgerWriter::shutdown`] keeps retrying an unreachable database before spilling.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// One commit attempt that hangs this long (a black-holed network, a stuck lock) is abandoned
/// and retried like any other failure, so the writer cannot stall forever on one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Tuning for the writer. The defaults suit a single gateway on SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Rows per commit at most (and the size that triggers a commit without waiting).
    pub batch_size: usize,
    /// Longest a recorded row waits in memory before its batch is committed.
    pub flush_interval: Duration,
    /// Rows the queue holds before `record` waits: the bound on what a crash can lose.
    pub queue_capacity: usize,
    /// Where shutdown spills rows it could not commit; `None` means the system temp directory,
    /// because losing rows is worse than writing them somewhere unexpected.
    pub spill_dir: Option<PathBuf>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            batch_size: 256,
            flush_interval: Duration::from_millis(100),
            queue_capacity: 65_536,
            spill_dir: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger writer has shut down")]
    Closed,
    #[error(
        "database unavailable; {rows} ledger rows spilled to {path} (replay with import_spill)"
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
    Unwritten { rows: usize, reason: String },
}

impl Fate {
    fn into_result(self) -> Result<(), LedgerError> {
        match self {
            Fate::Committed => Ok(()),
            Fate::Spilled { path, rows } => Err(LedgerError::Spilled { path, rows }),
            Fate::Unwritten { rows, reason } => Err(LedgerError::Unwritten { rows, reason }),
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
}

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        Ok(Metrics {
            written: IntCounter::new(
                "fairgate_ledger_rows_written_total",
                "Ledger rows committed to the database.",
            )?,
            errors: IntCounter::new(
                "fairgate_ledger_write_errors_total",
                "Failed ledger batch commit attempts (each is retried).",
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
                "Ledger rows written to a spill file because the database was unavailable.",
            )?,
        })
    }

    /// Handles to the five metrics (clones share their values).
    fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 5] {
        [
            Box::new(self.written.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.depth.clone()),
            Box::new(self.batch_seconds.clone()),
            Box::new(self.spilled.clone()),
        ]
    }

    /// Registers all five, or none: a half-registered set would make a retry fail forever.
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

/// Starts the writer task on the current Tokio runtime and registers its metrics.
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
    // Zero would make the channel panic and the batch never fill; one is the smallest sane value.
    let batch_size = cfg.batch_size.max(1);
    let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
    let (stop_tx, stop_rx) = oneshot::channel();
    let depth = Depth {
        count: Arc::new(AtomicUsize::new(0)),
        gauge: metrics.depth.clone(),
    };
    let writer = Writer {
        store,
        batch_size,
        flush_interval: cfg.flush_interval,
        spill_dir: cfg.spill_dir.unwrap_or_else(std::env::temp_dir),
        metrics,
        depth: depth.clone(),
        batch: Vec::with_capacity(batch_size),
        oldest: None,
        waiters: Vec::new(),
        ctl: Control {
            rx,
            stop: Some(stop_rx),
            deadline: None,
        },
    };
    let join = runtime.spawn(writer.run());
    Ok((
        LedgerHandle { tx, depth },
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
}

impl LedgerHandle {
    /// Enqueues a row. Waits only while the queue is full. If the future is dropped while
    /// waiting, the row is not recorded (nothing was enqueued). After shutdown the row cannot
    /// be recorded; it is logged at error level as JSON instead of vanishing.
    pub async fn record(&self, row: LedgerRow) {
        match self.tx.reserve().await {
            Ok(permit) => {
                // Counted before it is visible to the writer, so the count never underflows.
                self.depth.add(1);
                permit.send(Msg::Row(row));
            }
            Err(_) => {
                let json = serde_json::to_string(&row)
                    .unwrap_or_else(|e| format!("<unencodable row: {e}>"));
                tracing::error!(
                    request_id = %row.id,
                    row = %json,
                    "ledger writer has shut down; ledger row not recorded"
                );
            }
        }
    }

    /// Enqueues a row without waiting; gives it back if the queue is full (or the writer is
    /// gone), so the caller can fall back to [`LedgerHandle::record`]. Rows enqueued this way
    /// are ordered before any later [`LedgerHandle::flush`], which is what lets a reader see a
    /// request's row as soon as its response has completed.
    // The row comes back by value so the fallback costs no allocation on the request path.
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

    /// Resolves once every row recorded before this call is committed. Returns
    /// [`LedgerError::Spilled`] if they were spilled at shutdown instead, and
    /// [`LedgerError::Closed`] if the writer is already gone. While the database is down this
    /// waits (the writer keeps retrying); wrap it in a timeout if that matters.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)?.into_result()
    }

    /// Rows recorded but not yet committed (or spilled): what a crash right now would lose.
    pub fn queued(&self) -> usize {
        self.depth.count.load(Ordering::Relaxed)
    }
}

/// Owner of the writer task; call [`LedgerWriter::shutdown`] on the way out. Dropping it
/// without shutting down leaves the task running until every [`LedgerHandle`] is dropped.
pub struct LedgerWriter {
    stop: oneshot::Sender<Duration>,
    join: JoinHandle<Result<(), LedgerError>>,
}

impl LedgerWriter {
    /// Stops accepting rows, commits everything queued and returns when done. If the database
    /// stays unreachable for [`SHUTDOWN_TIMEOUT`], spills the remaining rows and returns
    /// [`LedgerError::Spilled`] naming the file.
    pub async fn shutdown(self) -> Result<(), LedgerError> {
        self.shutdown_with_timeout(SHUTDOWN_TIMEOUT).await
    }

    /// [`shutdown`](Self::shutdown) with a different bound on retrying the database.
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

/// The writer task gave up on the database (only ever while draining, past the deadline).
struct GaveUp(String);

/// The task's inbox and shutdown state, kept apart from the batch so both can be borrowed at
/// once while a commit is in flight.
struct Control {
    rx: mpsc::Receiver<Msg>,
    /// `None` once shutdown was requested or the [`LedgerWriter`] was dropped.
    stop: Option<oneshot::Receiver<Duration>>,
    /// Set once draining: after it, give up on the database and spill.
    deadline: Option<Instant>,
}

impl Control {
    fn begin_drain(&mut self, timeout: Duration) {
        self.stop = None;
        if self.deadline.is_none() {
            // Closing makes further sends fail while keeping what is buffered receivable.
            self.rx.close();
            self.deadline = Some(Instant::now() + timeout);
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

struct Writer {
    store: Store,
    batch_size: usize,
    flush_interval: Duration,
    spill_dir: PathBuf,
    metrics: Metrics,
    depth: Depth,
    batch: Vec<LedgerRow>,
    /// When the oldest row in `batch` arrived.
    oldest: Option<Instant>,
    /// Flushes waiting for `batch` to commit.
    waiters: Vec<oneshot::Sender<Fate>>,
    ctl: Control,
}

enum Event {
    Stop(Duration),
    Msgs,
    Tick,
    Closed,
}

impl Writer {
    async fn run(mut self) -> Result<(), LedgerError> {
        let mut buf: Vec<Msg> = Vec::with_capacity(self.batch_size);
        loop {
            let tick = self.oldest.map(|t| t + self.flush_interval);
            let event = tokio::select! {
                biased;
                timeout = stop_requested(&mut self.ctl.stop) => Event::Stop(timeout),
                n = self.ctl.rx.recv_many(&mut buf, self.batch_size) => {
                    if n == 0 { Event::Closed } else { Event::Msgs }
                }
                () = sleep_until_opt(tick) => Event::Tick,
            };
            let step = match event {
                Event::Stop(timeout) => {
                    self.ctl.begin_drain(timeout);
                    Ok(())
                }
                Event::Msgs => self.handle(&mut buf).await,
                Event::Tick => self.commit().await,
                Event::Closed => {
                    // Every handle is gone, or shutdown was requested and the queue is empty.
                    self.ctl.begin_drain(SHUTDOWN_TIMEOUT);
                    match self.commit().await {
                        Ok(()) => return Ok(()),
                        Err(gave_up) => Err(gave_up),
                    }
                }
            };
            if let Err(gave_up) = step {
                return self.spill_everything(buf, gave_up).await;
            }
        }
    }

    /// Processes received messages in order. On giving up, the unprocessed ones are left in
    /// `buf` for the spill.
    async fn handle(&mut self, buf: &mut Vec<Msg>) -> Result<(), GaveUp> {
        let mut msgs = std::mem::take(buf).into_iter();
        while let Some(msg) = msgs.next() {
            let full = match msg {
                Msg::Row(row) => {
                    if self.batch.is_empty() {
                        self.oldest = Some(Instant::now());
                    }
                    self.batch.push(row);
                    self.batch.len() >= self.batch_size
                }
                Msg::Flush(tx) => {
                    // Everything recorded before this flush is in `batch` or already committed.
                    self.waiters.push(tx);
                    true
                }
            };
            if full {
                if let Err(gave_up) = self.commit().await {
                    buf.extend(msgs);
                    return Err(gave_up);
                }
            }
        }
        // A steady trickle keeps the channel non-empty, so check the interval here too rather
        // than only when the timer branch wins.
        if self
            .oldest
            .is_some_and(|t| t.elapsed() >= self.flush_interval)
        {
            self.commit().await?;
        }
        Ok(())
    }

    /// Commits `batch`, retrying until it succeeds or (only while draining) the deadline passes.
    async fn commit(&mut self) -> Result<(), GaveUp> {
        if self.batch.is_empty() {
            self.answer(Fate::Committed);
            return Ok(());
        }
        let rows = self.batch.len();
        let mut backoff = BACKOFF_FIRST;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = {
                let insert = self.store.insert_ledger_rows(&self.batch);
                tokio::pin!(insert);
                loop {
                    let limit = self.ctl.deadline.map_or(started + ATTEMPT_TIMEOUT, |d| {
                        d.min(started + ATTEMPT_TIMEOUT)
                    });
                    tokio::select! {
                        r = &mut insert => break r.map_err(|e| e.to_string()),
                        timeout = stop_requested(&mut self.ctl.stop) => {
                            // Shutdown arrived mid-commit: keep waiting, now under the deadline.
                            self.ctl.begin_drain(timeout);
                        }
                        () = tokio::time::sleep_until(limit) => {
                            break Err(format!("attempt timed out after {:?}", started.elapsed()));
                        }
                    }
                }
            };
            match result {
                Ok(()) => {
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics
                        .written
                        .inc_by(u64::try_from(rows).unwrap_or(u64::MAX));
                    self.depth.sub(rows);
                    self.batch.clear();
                    self.oldest = None;
                    self.answer(Fate::Committed);
                    return Ok(());
                }
                Err(error) => {
                    self.metrics.errors.inc();
                    if let Some(deadline) = self.ctl.deadline {
                        if Instant::now() >= deadline {
                            tracing::warn!(%error, rows, attempt, "ledger batch write failed; giving up");
                            return Err(GaveUp(error));
                        }
                    }
                    tracing::warn!(
                        %error,
                        rows,
                        attempt,
                        retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "ledger batch write failed; will retry"
                    );
                    let wake = self.ctl.deadline.map_or(Instant::now() + backoff, |d| {
                        d.min(Instant::now() + backoff)
                    });
                    tokio::select! {
                        () = tokio::time::sleep_until(wake) => {}
                        timeout = stop_requested(&mut self.ctl.stop) => self.ctl.begin_drain(timeout),
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn answer(&mut self, fate: Fate) {
        for w in self.waiters.drain(..) {
            // A flush whose caller went away needs no answer.
            let _ = w.send(fate.clone());
        }
    }

    /// Gave up on the database while draining: write every row still in memory (the failed
    /// batch, messages received but unprocessed, and the rest of the closed queue) to a spill
    /// file, answer every waiting flush, and end the task.
    async fn spill_everything(
        mut self,
        pending: Vec<Msg>,
        gave_up: GaveUp,
    ) -> Result<(), LedgerError> {
        let mut rows = std::mem::take(&mut self.batch);
        let mut msgs = pending;
        // The channel is closed (draining), so this ends as soon as the buffer is empty.
        while let Some(m) = self.ctl.rx.recv().await {
            msgs.push(m);
        }
        for m in msgs {
            match m {
                Msg::Row(r) => rows.push(r),
                Msg::Flush(tx) => self.waiters.push(tx),
            }
        }
        let n = rows.len();
        let dir = self.spill_dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            let result = write_spill(&dir, &rows);
            (rows, result)
        })
        .await;
        let fate = match written {
            Ok((_, Ok(path))) => {
                self.metrics
                    .spilled
                    .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
                tracing::error!(
                    rows = n,
                    path = %path.display(),
                    error = %gave_up.0,
                    "database unavailable at shutdown; ledger rows spilled (replay with import_spill)"
                );
                Fate::Spilled { path, rows: n }
            }
            Ok((rows, Err(e))) => {
                let reason = format!("{}: {e}", self.spill_dir.display());
                log_rows_as_last_resort(&rows, &reason);
                Fate::Unwritten { rows: n, reason }
            }
            Err(join) => {
                // The blocking task panicked and took the rows with it; say so loudly.
                let reason = format!("spill task failed: {join}");
                tracing::error!(rows = n, %reason, "ledger rows lost");
                Fate::Unwritten { rows: n, reason }
            }
        };
        self.depth.sub(n);
        self.answer(fate.clone());
        fate.into_result()
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

/// Writes rows as JSON lines to a new `ledger-spill-<unix millis>.jsonl` in `dir` (a numeric
/// suffix avoids clobbering a file from the same millisecond) and fsyncs it.
fn write_spill(dir: &Path, rows: &[LedgerRow]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let ts = now_millis();
    for n in 0..1000 {
        let name = if n == 0 {
            format!("ledger-spill-{ts}.jsonl")
        } else {
            format!("ledger-spill-{ts}-{n}.jsonl")
        };
        let path = dir.join(name);
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let mut w = std::io::BufWriter::new(file);
        for row in rows {
            serde_json::to_writer(&mut w, row)?;
            w.write_all(b"\n")?;
        }
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        return Ok(path);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "too many spill files for one millisecond",
    ))
}

/// Reads a spill file back into rows (blank lines are skipped).
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
/// are skipped, so importing the same file twice is harmless.
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
    use fairgate_types::{Outcome, RequestId, UsageSource};

    fn row(i: u64) -> LedgerRow {
        LedgerRow {
            id: RequestId(format!("r{i}")),
            ts: 1_700_000_000_000 + i64::try_from(i).unwrap(),
            tenant: Some("t".into()),
            user: None,
            key_id: None,
            model: Some("m".into()),
            backend: None,
            endpoint: "/v1/chat/completions".into(),
            stream: i % 2 == 0,
            prompt_tokens: i,
            completion_tokens: 2 * i,
            cached_tokens: 0,
            reserved_tokens: 3 * i,
            usage_source: UsageSource::Upstream,
            status: 200,
            outcome: Outcome::Ok,
            error_class: None,
            queue_ms: 1,
            ttft_ms: Some(5),
            duration_ms: 9,
            cost: fairgate_types::Micros(i),
            cache_hit: i % 3 == 0,
            priority: fairgate_types::Priority::Batch,
            attempts: (i % 3) as u32,
        }
    }

    #[test]
    fn spill_files_roundtrip_and_never_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<LedgerRow> = (0..5).map(row).collect();
        let a = write_spill(&dir.path().join("nested"), &rows).unwrap();
        let b = write_spill(&dir.path().join("nested"), &rows[..2]).unwrap();
        assert_ne!(a, b);
        assert!(a
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ledger-spill-"));
        assert_eq!(spill_file_rows(&a).unwrap(), rows);
        assert_eq!(spill_file_rows(&b).unwrap(), rows[..2].to_vec());
    }

    #[test]
    fn bad_spill_lines_are_reported_with_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        let good = serde_json::to_string(&row(1)).unwrap();
        std::fs::write(&path, format!("{good}\n\n{{not json\n")).unwrap();
        match spill_file_rows(&path) {
            Err(LedgerError::SpillParse { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a parse error, got {other:?}"),
        }
        assert!(matches!(
            spill_file_rows(dir.path().join("missing")),
            Err(LedgerError::SpillIo { .. })
        ));
    }

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
}
