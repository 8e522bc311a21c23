//! The append-only ledger's writer: one group-commit thread appends records to segment files
//! (format in the `redrain-ledger` crate), keeping zeros written ahead of them so that a
//! group's fsync does not also grow the file, rolls and seals them by size, and on start-up
//! cuts a torn tail of the open segment (damage with nothing intact after it, or with a page a
//! power cut kept from the disk before the intact records) and refuses any other damage;
//! nothing after damage is ever read as data.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Release};
use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Segments roll once they pass this size unless configured otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Appends waiting for the writer; senders wait (back-pressure) beyond it.
pub const APPEND_QUEUE: usize = 16_384;
/// Most appends folded into one write and fsync.
pub const MAX_GROUP: usize = 4096;
/// Zero bytes kept written ahead of the records (up to the segment's size), topped up when
/// less than half is left. A group that lands in space already written costs its `fdatasync`
/// one device write; one that grows the file costs a second, for the inode's new size.
pub const ZERO_AHEAD: u64 = 1 << 20;

/// A ledger failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("ledger: {0}")]
pub struct LedgerError(pub String);

impl From<std::io::Error> for LedgerError {
    fn from(e: std::io::Error) -> Self {
        LedgerError(e.to_string())
    }
}

pub use redrain_ledger::*;

/// The segment files of `dir`, in order.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LedgerError> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = number {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

/// The result of checking every segment of a ledger.
#[derive(Debug, Clone, Default)]
pub struct Verify {
    /// Segments read.
    pub segments: u64,
    /// Data records read before any damage.
    pub records: u64,
    /// Sequence number of the last good record.
    pub last_seq: Option<u64>,
    /// The first damage, and its file.
    pub damage: Option<(PathBuf, Damage)>,
    /// Whether that damage may be a torn write, which start-up cuts: it is in the open
    /// segment, with nothing intact after it or a page a power cut kept from the disk before
    /// the intact records ([`redrain_ledger::Scan::torn_tail`]), or a last segment shorter than
    /// its header (start-up removes it). Any other damage is corruption.
    pub torn_tail: bool,
}

/// Checks every record of every segment in `dir`, calling `each` for the data records before
/// the first damage. Every segment but the last must be sealed; sequence numbers must run on
/// from segment to segment.
pub fn verify(dir: &Path, mut each: impl FnMut(Record<'_>)) -> Result<Verify, LedgerError> {
    let files = segments(dir)?;
    let mut v = Verify::default();
    for (i, (number, path)) in files.iter().enumerate() {
        let bytes = std::fs::read(path)?;
        v.segments += 1;
        let damaged = |offset: u64, reason: String| {
            let damage = Damage {
                offset,
                reason,
                intact_after: None,
                unwritten_page: None,
            };
            Some((path.clone(), damage))
        };
        let scan = match scan_segment(&bytes, &mut each) {
            Ok(scan) => scan,
            Err(why) => {
                // A last segment whose header never became durable is removed at start-up.
                v.torn_tail = i + 1 == files.len() && bytes.len() < HEADER_LEN;
                v.damage = damaged(0, why);
                break;
            }
        };
        let expected_first = v.last_seq.map_or(scan.header.first_seq, |s| s + 1);
        if scan.header.segment != *number || scan.header.first_seq != expected_first {
            v.damage = damaged(0, format!(
                "header says segment {} from sequence {}, expected segment {number} from {expected_first}",
                scan.header.segment, scan.header.first_seq
            ));
            break;
        }
        v.records += scan.records;
        v.last_seq = scan.last_seq.or(v.last_seq);
        v.torn_tail = scan.torn_tail(i + 1 == files.len());
        if let Some(damage) = scan.damage {
            v.damage = Some((path.clone(), damage));
            break;
        }
        if !scan.sealed && i + 1 < files.len() {
            v.damage = damaged(
                scan.good_len,
                "a segment before the last is not sealed".into(),
            );
            break;
        }
    }
    Ok(v)
}

/// What opening a ledger found.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Segments on disk.
    pub segments: u64,
    /// The next sequence number to write.
    pub next_seq: u64,
    /// A torn tail cut from the open segment: (file, offset, reason).
    pub cut: Option<(PathBuf, u64, String)>,
}

/// Where and how a ledger writes.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Directory of the segment files.
    pub dir: PathBuf,
    /// This node's id, written in every header.
    pub node: u32,
    /// A segment rolls once it passes this size.
    pub segment_bytes: u64,
    /// Whether each group is fsynced before its appends are acknowledged.
    pub sync: bool,
}

struct Append {
    records: Vec<(u8, Vec<u8>)>,
    done: oneshot::Sender<Result<u64, LedgerError>>,
}

/// The segment being written, and where the writer stands in it: the ledger's writer for a
/// caller that runs its own group-commit loop (the engine's storage thread). Dropping it trims
/// the zeros written ahead, so a cleanly closed segment ends at its last record.
#[derive(Debug)]
pub struct Tail {
    file: File,
    header: Header,
    /// End of the last record.
    len: u64,
    /// End of the file: `len..written` holds zeros written ahead.
    written: u64,
    records: u64,
    next_seq: u64,
    /// Every record before this sequence number is on disk (fsynced, when configured).
    durable: Arc<AtomicU64>,
    config: LedgerConfig,
}

impl Tail {
    /// Opens the ledger in `config.dir`: cuts a torn tail of the open segment, or starts a new
    /// segment after a sealed one. Damage that is not a torn write ([`Damage::may_be_torn`]:
    /// an intact record after it, and no page a power cut kept from the disk between them) is
    /// refused, whatever `durable_through` says: the records after it were written whole, and
    /// may have been acknowledged since RocksDB's last flush.
    /// `durable_through` is the last sequence number known to have been on disk before
    /// (RocksDB applies a record only after its fsync): a ledger that now ends before it
    /// (damage, a segment cut short or missing) lost acknowledged records, and recovery refuses
    /// to start rather than cut or reuse them. A segment written by another node is refused
    /// too. A refusal leaves the files as they are for an operator.
    pub fn recover(
        config: LedgerConfig,
        durable_through: Option<u64>,
    ) -> Result<(Tail, Recovery), LedgerError> {
        std::fs::create_dir_all(&config.dir)?;
        let files = segments(&config.dir)?;
        let mut recovery = Recovery {
            segments: files.len() as u64,
            next_seq: 0,
            cut: None,
        };
        // Records before `next_seq` are all the ledger has; RocksDB applied records through
        // `durable_through` only after their fsync. Fewer on disk means acknowledged records
        // are gone (a fault of the medium, or files removed): refuse before changing anything.
        let refuse_if_short = |next_seq: u64, what: &dyn Fn() -> String| match durable_through
            .filter(|&d| d >= next_seq)
        {
            Some(d) => Err(LedgerError(format!(
                "{}, so the ledger ends before sequence {next_seq}, but records through {d} \
                     were acknowledged as durable: refusing to start on a ledger that lost them \
                     (restore the segments from the collector's copy; see `redrain ledger verify`)",
                what()
            ))),
            None => Ok(()),
        };
        let node_of = |header: &Header, path: &Path| {
            if header.node == config.node {
                Ok(())
            } else {
                Err(LedgerError(format!(
                    "{}: written by node {}, but this start is node {}; refusing to mix nodes' \
                     ledgers (start this data dir with --node-index {})",
                    path.display(),
                    header.node,
                    config.node,
                    header.node
                )))
            }
        };
        let Some((number, path)) = files.last().cloned() else {
            refuse_if_short(0, &|| format!("{}: no segments", config.dir.display()))?;
            let open = Tail::create(config, 0, 0)?;
            return Ok((open, recovery));
        };
        let bytes = std::fs::read(&path)?;
        if bytes.len() < HEADER_LEN {
            // A crash while creating the segment: its header never became durable. Start it
            // again after the sealed segment before it.
            let next_seq = match files.len().checked_sub(2).map(|i| &files[i].1) {
                Some(prev) => {
                    let scan = scan_segment(&std::fs::read(prev)?, |_| {})
                        .map_err(|why| LedgerError(format!("{}: {why}", prev.display())))?;
                    node_of(&scan.header, prev)?;
                    if !scan.sealed {
                        return Err(LedgerError(format!(
                            "{}: not sealed, but a later segment was started",
                            prev.display()
                        )));
                    }
                    scan.last_seq.map_or(scan.header.first_seq, |s| s + 1)
                }
                None => 0,
            };
            refuse_if_short(next_seq, &|| {
                format!("{}: its header was never written", path.display())
            })?;
            tracing::warn!(file = %path.display(), "ledger: removing a segment whose header was never written");
            std::fs::remove_file(&path)?;
            recovery.next_seq = next_seq;
            recovery.cut = Some((path, 0, "header never written".into()));
            let open = Tail::create(config, number, next_seq)?;
            return Ok((open, recovery));
        }
        let scan = scan_segment(&bytes, |_| {}).map_err(|why| {
            LedgerError(format!(
                "{}: {why}; the open segment's header is unreadable, refusing to guess",
                path.display()
            ))
        })?;
        node_of(&scan.header, &path)?;
        // The open segment is the last: any damage but a torn tail (also damage after a seal)
        // is refused before a file is touched.
        if let Some(damage) = scan.damage.as_ref().filter(|_| !scan.torn_tail(true)) {
            return Err(LedgerError(format!(
                "{}: damaged at {damage}; refusing to start rather than cut records written \
                 whole (restore the segment from the collector's copy; see `redrain ledger \
                 verify`)",
                path.display()
            )));
        }
        let next_seq = scan.last_seq.map_or(scan.header.first_seq, |s| s + 1);
        recovery.next_seq = next_seq;
        refuse_if_short(next_seq, &|| match &scan.damage {
            Some(damage) => format!("{}: damaged at {damage}", path.display()),
            None => format!(
                "{}: ends after sequence {}",
                path.display(),
                next_seq.saturating_sub(1)
            ),
        })?;
        if scan.sealed {
            let open = Tail::create(config, number + 1, next_seq)?;
            return Ok((open, recovery));
        }
        if let Some(Damage { offset, reason, .. }) = scan.damage {
            tracing::warn!(file = %path.display(), offset, reason = %reason, "ledger: cutting a torn tail");
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(offset)?;
            file.sync_all()?;
            recovery.cut = Some((path.clone(), offset, reason));
        }
        let file = OpenOptions::new().write(true).open(&path)?;
        let open = Tail {
            written: file.metadata()?.len(),
            file,
            header: scan.header,
            len: scan.good_len,
            records: scan.records,
            next_seq,
            durable: Arc::new(AtomicU64::new(next_seq)),
            config,
        };
        Ok((open, recovery))
    }

    fn create(config: LedgerConfig, segment: u64, first_seq: u64) -> Result<Tail, LedgerError> {
        let header = Header {
            node: config.node,
            segment,
            first_seq,
        };
        let path = segment_path(&config.dir, segment);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        file.write_all_at(&header.encode(), 0)?;
        file.sync_all()?;
        sync_dir(&config.dir)?;
        Ok(Tail {
            file,
            header,
            len: HEADER_LEN as u64,
            written: HEADER_LEN as u64,
            records: 0,
            next_seq: first_seq,
            durable: Arc::new(AtomicU64::new(first_seq)),
            config,
        })
    }

    /// Every record before this sequence number is on disk: what may leave the node (the
    /// shipper reads no further), since a record written but not yet fsynced may not survive.
    pub fn durable(&self) -> Arc<AtomicU64> {
        self.durable.clone()
    }

    /// Seals this segment and starts the next.
    fn roll(&mut self) -> Result<(), LedgerError> {
        let mut seal = Vec::with_capacity(FRAME_LEN + 16);
        let last = self.next_seq - 1; // a segment rolls only once it holds a record
        encode_record(last, SEAL, &seal_payload(last, self.records), &mut seal);
        self.put(&seal)?;
        self.file.set_len(self.len)?;
        self.written = self.len;
        self.file.sync_all()?;
        let mut next = Tail::create(self.config.clone(), self.header.segment + 1, self.next_seq)?;
        next.durable = self.durable.clone();
        *self = next;
        Ok(())
    }

    /// Writes every append of `group` (each a list of (kind, payload) records) with one
    /// `write` (and now and then the zeros ahead) and, if configured, one `fdatasync`, rolling
    /// between appends when the segment is full; returns each append's last sequence number.
    pub fn write<'a, R>(
        &mut self,
        group: impl IntoIterator<Item = R>,
        buf: &mut Vec<u8>,
    ) -> Result<Vec<u64>, LedgerError>
    where
        R: IntoIterator<Item = (u8, &'a [u8])>,
    {
        let before = (self.header.segment, self.len, self.records, self.next_seq);
        let written = self.write_group(group, buf);
        match &written {
            Ok(_) => self.durable.store(self.next_seq, Release),
            Err(e) => self.undo(before, e),
        }
        written
    }

    fn write_group<'a, R>(
        &mut self,
        group: impl IntoIterator<Item = R>,
        buf: &mut Vec<u8>,
    ) -> Result<Vec<u64>, LedgerError>
    where
        R: IntoIterator<Item = (u8, &'a [u8])>,
    {
        let mut last = Vec::new();
        buf.clear();
        for records in group {
            if self.len + buf.len() as u64 >= self.config.segment_bytes && self.records > 0 {
                self.put(buf)?;
                buf.clear();
                self.roll()?;
            }
            for (kind, payload) in records {
                check_record(kind, payload)?;
                encode_record(self.next_seq, kind, payload, buf);
                self.next_seq += 1;
                self.records += 1;
            }
            last.push(self.next_seq - 1);
        }
        self.put(buf)?;
        self.zero_ahead()?;
        if self.config.sync {
            self.file.sync_data()?;
        }
        Ok(last)
    }

    /// After a failed group: cuts the segment back to where the group began, so that none of
    /// it can surface at the next start while its appends were answered with an error. When
    /// that is impossible (the group rolled a segment, or the cut itself fails) whether the
    /// group is on disk is unknown, and no answer can be true: the process stops, and recovery
    /// at the next start decides.
    fn undo(&mut self, (segment, len, records, next_seq): (u64, u64, u64, u64), e: &LedgerError) {
        let cut = (self.header.segment == segment)
            .then(|| self.file.set_len(len).and_then(|()| self.file.sync_all()));
        match cut {
            Some(Ok(())) => {
                (self.len, self.written, self.records, self.next_seq) =
                    (len, len, records, next_seq);
            }
            _ => {
                tracing::error!(error = %e, "a failed ledger write could not be cut back; stopping so that recovery decides what is on disk");
                std::process::abort();
            }
        }
    }

    /// Writes `bytes` after the last record.
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, self.len)?;
        self.len += bytes.len() as u64;
        self.written = self.written.max(self.len);
        Ok(())
    }

    /// Tops the zeros ahead of the records up to [`ZERO_AHEAD`] (not past the segment's size)
    /// once less than half of that is left.
    fn zero_ahead(&mut self) -> std::io::Result<()> {
        static CHUNK: [u8; 64 << 10] = [0; 64 << 10];
        if self.written >= self.len + ZERO_AHEAD / 2 {
            return Ok(());
        }
        let end = (self.len + ZERO_AHEAD).min(self.config.segment_bytes);
        while self.written < end {
            let n = (end - self.written).min(CHUNK.len() as u64) as usize;
            self.file.write_all_at(&CHUNK[..n], self.written)?;
            self.written += n as u64;
        }
        Ok(())
    }
}

impl Drop for Tail {
    /// Trims the zeros written ahead (best effort: a segment that keeps them reads the same).
    fn drop(&mut self) {
        if self.written > self.len {
            let _ = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all());
        }
    }
}

/// Refuses a record a caller may not write: the seal's kind (the writer alone seals), or a
/// payload longer than the reader accepts.
fn check_record(kind: u8, payload: &[u8]) -> Result<(), LedgerError> {
    if kind == SEAL || payload.len() > MAX_PAYLOAD {
        return Err(LedgerError(format!(
            "a record of kind {kind} with {} bytes: kind {SEAL} is the seal and payloads are at \
             most {MAX_PAYLOAD} bytes",
            payload.len()
        )));
    }
    Ok(())
}

/// Makes `dir`'s entries durable (a file created or removed in it).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An open ledger: appends go to its group-commit thread.
#[derive(Debug)]
pub struct Ledger {
    tx: Option<mpsc::Sender<Append>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger and starts its writer.
    pub fn open(config: LedgerConfig) -> Result<(Arc<Ledger>, Recovery), LedgerError> {
        let (open, recovery) = Tail::recover(config, None)?;
        let (tx, rx) = mpsc::channel(APPEND_QUEUE);
        let thread = thread::Builder::new()
            .name("ledger".into())
            .spawn(move || group_commit(open, rx))?;
        let ledger = Ledger {
            tx: Some(tx),
            thread: Mutex::new(Some(thread)),
        };
        Ok((Arc::new(ledger), recovery))
    }

    /// Appends `records` (kind, payload) as consecutive records; resolves with the last one's
    /// sequence number once they are written (and fsynced, if configured).
    pub async fn append(&self, records: Vec<(u8, Vec<u8>)>) -> Result<u64, LedgerError> {
        let (job, wait) = self.job(records)?;
        self.sender()?.send(job).await.map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }

    /// [`Ledger::append`] from a blocking context.
    pub fn append_blocking(&self, records: Vec<(u8, Vec<u8>)>) -> Result<u64, LedgerError> {
        let (job, wait) = self.job(records)?;
        self.sender()?.blocking_send(job).map_err(|_| stopped())?;
        wait.blocking_recv().map_err(|_| stopped())?
    }

    fn sender(&self) -> Result<&mpsc::Sender<Append>, LedgerError> {
        self.tx
            .as_ref()
            .ok_or_else(|| LedgerError("the ledger is closed".into()))
    }

    fn job(&self, records: Vec<(u8, Vec<u8>)>) -> Result<(Append, Acked), LedgerError> {
        if records.is_empty() {
            return Err(LedgerError("an append needs at least one record".into()));
        }
        for (kind, payload) in &records {
            check_record(*kind, payload)?;
        }
        let (done, wait) = oneshot::channel();
        Ok((Append { records, done }, wait))
    }
}

/// Resolves with an append's last sequence number once it is on disk.
type Acked = oneshot::Receiver<Result<u64, LedgerError>>;

fn stopped() -> LedgerError {
    LedgerError("the writer has stopped".into())
}

impl Drop for Ledger {
    /// Lets the writer finish what is queued and close the file.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

fn group_commit(mut open: Tail, mut rx: mpsc::Receiver<Append>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut buf = Vec::with_capacity(1 << 20);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let records = group
            .iter()
            .map(|a: &Append| a.records.iter().map(|(k, p)| (*k, p.as_slice())));
        match open.write(records, &mut buf) {
            Ok(last) => {
                for (job, seq) in group.drain(..).zip(last) {
                    let _ = job.done.send(Ok(seq));
                }
            }
            Err(e) => {
                // What was written of this group is not acknowledged; recovery decides what
                // of it survives. Stop taking appends: the file position is no longer known.
                tracing::error!(error = %e, "ledger write failed; the ledger stops");
                for job in group.drain(..) {
                    let _ = job.done.send(Err(e.clone()));
                }
                return;
            }
        }
    }
}
