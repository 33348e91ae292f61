//! Append-only spill files: where ledger rows go when the database cannot take them now.
//!
//! One file is open for appending at a time (`ledger-spill-<unix millis>-<pid>-<n>.jsonl` in
//! the spill directory, one JSON [`LedgerRow`] per line). Appends are plain `write` calls of
//! whole lines, so a row is in the file (the kernel's page cache) as soon as `append` returns:
//! a killed process loses nothing that was appended. [`Spill::sync`] makes it durable against
//! power loss; the writer task calls it after its own appends and at least every
//! [`SYNC_INTERVAL`] while anything is unsynced. A file is closed ("rotated") before it is
//! replayed, and after [`MAX_ROWS_PER_FILE`] rows, so every file a replay reads is complete and
//! bounded. Replays skip the file still open for appending.
//!
//! One spill directory belongs to one gateway process: a second process sharing it could
//! replay (and delete) a file the first is still appending to.

use fairgate_types::{now_millis, LedgerRow};
use prometheus::{IntCounter, IntGauge};
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Longest an appended row stays unsynced.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Rows per spill file before a new one is started, so a replay reads bounded files.
pub const MAX_ROWS_PER_FILE: u64 = 50_000;

const PREFIX: &str = "ledger-spill-";
const SUFFIX: &str = ".jsonl";

/// Whether `path` names a spill file (by this or an earlier version).
pub fn is_spill_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
}

struct Open {
    path: PathBuf,
    file: File,
    rows: u64,
}

#[derive(Default)]
struct Inner {
    open: Option<Open>,
    seq: u64,
}

/// The spill directory's state, shared by the request path (overflow) and the writer task.
pub(crate) struct Spill {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Something was appended since the last sync.
    dirty: AtomicBool,
    /// Rows in spill files not yet replayed (approximate across restarts: counted by lines).
    pending: AtomicU64,
    pub(crate) spilled: IntCounter,
    pub(crate) files_gauge: IntGauge,
    pub(crate) pending_gauge: IntGauge,
}

impl Spill {
    pub(crate) fn new(
        dir: PathBuf,
        spilled: IntCounter,
        files_gauge: IntGauge,
        pending_gauge: IntGauge,
    ) -> Arc<Spill> {
        let s = Arc::new(Spill {
            dir,
            inner: Mutex::new(Inner::default()),
            dirty: AtomicBool::new(false),
            pending: AtomicU64::new(0),
            spilled,
            files_gauge,
            pending_gauge,
        });
        // Files left by an earlier run: counted so the gauges and the replay see them.
        let files = s.files();
        let rows: u64 = files.iter().map(|p| count_lines(p)).sum();
        s.files_gauge.set(gauge(files.len() as u64));
        s.add_pending(rows);
        s
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves at worst a partly written line, which replay
        // skips; keep spilling rather than lose every later row.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add_pending(&self, n: u64) {
        let now = self
            .pending
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n);
        self.pending_gauge.set(gauge(now));
    }

    pub(crate) fn sub_pending(&self, n: u64) {
        let mut cur = self.pending.load(Ordering::Relaxed);
        loop {
            let next = cur.saturating_sub(n);
            match self
                .pending
                .compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.pending_gauge.set(gauge(next));
                    return;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Rows spilled and not yet replayed.
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Appends already-encoded lines (`rows` of them) to the open file, opening one if needed.
    /// Returns the file's path. Never waits on anything but the file system.
    pub(crate) fn append(&self, lines: &[u8], rows: u64) -> std::io::Result<PathBuf> {
        if rows == 0 {
            return Ok(self.dir.clone());
        }
        let mut inner = self.lock();
        if inner.open.is_none() {
            let open = self.create(&mut inner)?;
            inner.open = Some(open);
            self.files_gauge.inc();
        }
        let Some(open) = inner.open.as_mut() else {
            unreachable!("opened above")
        };
        open.file.write_all(lines)?;
        open.rows += rows;
        let path = open.path.clone();
        if open.rows >= MAX_ROWS_PER_FILE {
            // Full: close it (synced) so it can be replayed; the next append starts a new one.
            if let Some(full) = inner.open.take() {
                full.file.sync_data()?;
            }
        } else {
            self.dirty.store(true, Ordering::Release);
        }
        drop(inner);
        self.spilled.inc_by(rows);
        self.add_pending(rows);
        Ok(path)
    }

    /// Encodes and appends rows.
    pub(crate) fn append_rows(&self, rows: &[LedgerRow]) -> std::io::Result<PathBuf> {
        let lines = encode(rows)?;
        self.append(&lines, rows.len() as u64)
    }

    fn create(&self, inner: &mut Inner) -> std::io::Result<Open> {
        std::fs::create_dir_all(&self.dir)?;
        let ts = now_millis();
        let pid = std::process::id();
        for _ in 0..1000 {
            inner.seq += 1;
            let path = self
                .dir
                .join(format!("{PREFIX}{ts}-{pid}-{}{SUFFIX}", inner.seq));
            match std::fs::OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    // The new name must survive a crash too, or the rows in it are unreachable.
                    sync_dir(&self.dir);
                    return Ok(Open {
                        path,
                        file,
                        rows: 0,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "too many spill files for one millisecond",
        ))
    }

    /// Makes every appended row durable. The fsync runs outside the lock, so appends on the
    /// request path never wait for the disk.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let file = {
            let inner = self.lock();
            match inner.open.as_ref() {
                Some(o) => o.file.try_clone()?,
                None => return Ok(()),
            }
        };
        if let Err(e) = file.sync_data() {
            self.dirty.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Closes the open file (synced), so it can be replayed. Returns its path, if any.
    pub(crate) fn rotate(&self) -> std::io::Result<Option<PathBuf>> {
        let open = self.lock().open.take();
        match open {
            Some(o) => {
                o.file.sync_data()?;
                Ok(Some(o.path))
            }
            None => Ok(None),
        }
    }

    /// Spill files ready to replay (every one but the file open for appending), oldest first.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        let current = self.lock().open.as_ref().map(|o| o.path.clone());
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_spill_file(p) && Some(p) != current.as_ref())
            .collect();
        // Names start with the creation time, so this is oldest first (near enough; ids make
        // the order irrelevant to the result anyway).
        files.sort();
        files
    }

    /// A replayed file is done: removed, gauges updated.
    pub(crate) fn remove(&self, path: &Path, rows: u64) -> std::io::Result<()> {
        std::fs::remove_file(path)?;
        sync_dir(&self.dir);
        self.files_gauge.dec();
        self.sub_pending(rows);
        Ok(())
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn sync_dir(dir: &Path) {
    // Best effort: not every platform can open a directory for syncing.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// One JSON line per row.
pub(crate) fn encode(rows: &[LedgerRow]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(rows.len() * 512);
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.push(b'\n');
    }
    Ok(out)
}

fn count_lines(path: &Path) -> u64 {
    let Ok(file) = File::open(path) else {
        return 0;
    };
    std::io::BufReader::new(file)
        .split(b'\n')
        .filter(|l| l.as_ref().is_ok_and(|l| !l.is_empty()))
        .count() as u64
}

/// Reads a spill file in chunks of rows. A line that does not parse (the torn last line of a
/// process killed mid-write, or damage) is logged and skipped, so one bad line cannot block
/// the rest of the file forever.
pub(crate) struct Reader {
    path: PathBuf,
    lines: std::io::Split<std::io::BufReader<File>>,
    line: usize,
    /// Lines read so far (parsed or not): what the pending count drops by once done.
    pub(crate) consumed: u64,
}

impl Reader {
    pub(crate) fn open(path: &Path) -> std::io::Result<Reader> {
        let file = File::open(path)?;
        Ok(Reader {
            path: path.to_owned(),
            lines: std::io::BufReader::new(file).split(b'\n'),
            line: 0,
            consumed: 0,
        })
    }

    /// Up to `max` rows; empty at the end of the file.
    pub(crate) fn chunk(&mut self, max: usize) -> std::io::Result<Vec<LedgerRow>> {
        let mut rows = Vec::with_capacity(max.min(4096));
        while rows.len() < max {
            let Some(line) = self.lines.next() else { break };
            let line = line?;
            self.line += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.consumed += 1;
            match serde_json::from_slice::<LedgerRow>(&line) {
                Ok(r) => rows.push(r),
                Err(e) => tracing::error!(
                    path = %self.path.display(),
                    line = self.line,
                    error = %e,
                    "unreadable ledger spill line skipped"
                ),
            }
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairgate_types::RequestId;

    fn spill(dir: &Path) -> Arc<Spill> {
        Spill::new(
            dir.to_owned(),
            IntCounter::new("s", "s").unwrap(),
            IntGauge::new("f", "f").unwrap(),
            IntGauge::new("p", "p").unwrap(),
        )
    }

    fn row(i: i64) -> LedgerRow {
        LedgerRow::new(RequestId(format!("r{i}")), i, "/v1/chat/completions".into())
    }

    #[test]
    fn appends_rotate_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = spill(&dir.path().join("nested"));
        assert!(s.files().is_empty(), "no directory yet is no files");
        let a = s.append_rows(&[row(1), row(2)]).unwrap();
        assert!(is_spill_file(&a));
        assert!(s.files().is_empty(), "the open file is not replayable yet");
        assert_eq!(s.pending(), 2);
        assert_eq!(s.rotate().unwrap(), Some(a.clone()));
        let b = s.append_rows(&[row(3)]).unwrap();
        assert_ne!(a, b);
        s.sync().unwrap();
        assert_eq!(s.files(), vec![a.clone()]);
        assert_eq!(s.pending(), 3);
        assert_eq!(s.files_gauge.get(), 2);

        let mut r = Reader::open(&a).unwrap();
        assert_eq!(r.chunk(1).unwrap(), vec![row(1)]);
        assert_eq!(r.chunk(10).unwrap(), vec![row(2)]);
        assert!(r.chunk(10).unwrap().is_empty());
        s.remove(&a, r.consumed).unwrap();
        assert_eq!(s.pending(), 1);

        // A new Spill (the next run) counts what the last one left.
        s.rotate().unwrap();
        let again = spill(&dir.path().join("nested"));
        assert_eq!(again.pending(), 1);
        assert_eq!(again.files(), vec![b]);
    }

    #[test]
    fn torn_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger-spill-1.jsonl");
        let good = serde_json::to_string(&row(1)).unwrap();
        std::fs::write(
            &path,
            format!("{good}\n\n{{not json\n{good}\n{{\"id\":\"ha"),
        )
        .unwrap();
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.chunk(100).unwrap(), vec![row(1), row(1)]);
        assert_eq!(r.consumed, 4);
    }
}
