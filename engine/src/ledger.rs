//! The append-only ledger: segment files of length-prefixed records, each with a CRC-32C and a
//! monotonic sequence number, written by one group-commit thread.
//!
//! # Format (little-endian)
//!
//! A segment `{segment:020}.seg` starts with a 36-byte header: magic `RDLEDGR1`, format
//! version (u16), reserved (u16), node id (u32), segment number (u64), first sequence number
//! (u64), and a CRC-32C of those 32 bytes. Records follow back to back:
//!
//! ```text
//! len: u32 | crc: u32 | seq: u64 | kind: u8 | payload: len bytes
//! ```
//!
//! `crc` is the CRC-32C of `seq`, `kind` and the payload. Sequence numbers rise by one from
//! data record to data record across segments. A segment is closed by a seal record (kind 0)
//! that repeats the last data record's number and whose payload is that number and the count
//! of data records in the segment; a segment without a seal is the open one. Recovery reads the open segment up to its first torn or corrupt
//! record and cuts the file there; nothing after damage is ever read as data.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// File magic.
pub const MAGIC: [u8; 8] = *b"RDLEDGR1";
/// Format version.
pub const VERSION: u16 = 1;
/// Bytes of a segment header.
pub const HEADER_LEN: usize = 36;
/// Bytes of a record's frame before its payload.
pub const FRAME_LEN: usize = 17;
/// Largest payload of one record.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Kind of the record that seals a segment.
pub const SEAL: u8 = 0;
/// Segments roll once they pass this size unless configured otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Appends waiting for the writer; senders wait (back-pressure) beyond it.
pub const APPEND_QUEUE: usize = 16_384;
/// Most appends folded into one write and fsync.
pub const MAX_GROUP: usize = 4096;

/// A ledger failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("ledger: {0}")]
pub struct LedgerError(pub String);

impl From<std::io::Error> for LedgerError {
    fn from(e: std::io::Error) -> Self {
        LedgerError(e.to_string())
    }
}

/// A segment's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The node that wrote it.
    pub node: u32,
    /// Its number, from 0.
    pub segment: u64,
    /// Sequence number of its first record.
    pub first_seq: u64,
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.node.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        let crc = crc32c::crc32c(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a header, or says what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<Header, String> {
        if b.len() < HEADER_LEN {
            return Err(format!("header: {} bytes, need {HEADER_LEN}", b.len()));
        }
        if b[0..8] != MAGIC {
            return Err("header: bad magic".into());
        }
        if crc32c::crc32c(&b[..32]) != u32_at(b, 32) {
            return Err("header: CRC mismatch".into());
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(format!(
                "header: format version {version}, this build reads {VERSION}"
            ));
        }
        Ok(Header {
            node: u32_at(b, 12),
            segment: u64_at(b, 16),
            first_seq: u64_at(b, 24),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Appends one record's bytes to `out`.
pub fn encode_record(seq: u64, kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let mut crc = crc32c::crc32c(&seq.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its sequence number.
    pub seq: u64,
    /// Its kind ([`SEAL`] or the caller's).
    pub kind: u8,
    /// Its payload.
    pub payload: &'a [u8],
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact record of `len` bytes.
    Record(Record<'a>, usize),
    /// The buffer ends inside a record (a torn write).
    Torn,
    /// The bytes are not a record.
    Corrupt(String),
}

/// Decodes the record at the start of `b`.
pub fn decode_record(b: &[u8]) -> Decoded<'_> {
    if b.len() < FRAME_LEN {
        return Decoded::Torn;
    }
    let len = u32_at(b, 0) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt(format!("length {len} exceeds {MAX_PAYLOAD}"));
    }
    if b.len() < FRAME_LEN + len {
        return Decoded::Torn;
    }
    let crc = crc32c::crc32c(&b[8..FRAME_LEN + len]);
    if crc != u32_at(b, 4) {
        return Decoded::Corrupt("CRC mismatch".into());
    }
    let record = Record {
        seq: u64_at(b, 8),
        kind: b[16],
        payload: &b[FRAME_LEN..FRAME_LEN + len],
    };
    Decoded::Record(record, FRAME_LEN + len)
}

fn seal_payload(last_seq: u64, records: u64) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&last_seq.to_le_bytes());
    p[8..].copy_from_slice(&records.to_le_bytes());
    p
}

/// How a segment's scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The header.
    pub header: Header,
    /// Data records read (the seal not counted).
    pub records: u64,
    /// Sequence number of the last good record (data or seal), if any.
    pub last_seq: Option<u64>,
    /// Bytes up to the end of the last good record.
    pub good_len: u64,
    /// Whether a valid seal ended the segment.
    pub sealed: bool,
    /// The first damage: (offset, reason). `None` for a clean segment.
    pub damage: Option<(u64, String)>,
}

/// Reads a whole segment, calling `each` for every intact data record up to the first damage.
///
/// A seal must be the last record and agree with what precedes it; sequence numbers must rise
/// by one from the header's `first_seq`.
pub fn scan_segment(bytes: &[u8], mut each: impl FnMut(Record<'_>)) -> Result<Scan, String> {
    let header = Header::decode(bytes)?;
    let mut scan = Scan {
        header,
        records: 0,
        last_seq: None,
        good_len: HEADER_LEN as u64,
        sealed: false,
        damage: None,
    };
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let damage = |why: String| Some((at as u64, why));
        if scan.sealed {
            scan.damage = damage("data after the seal".into());
            break;
        }
        let (record, len) = match decode_record(&bytes[at..]) {
            Decoded::Record(r, len) => (r, len),
            Decoded::Torn => {
                scan.damage = damage(format!("torn record ({} bytes left)", bytes.len() - at));
                break;
            }
            Decoded::Corrupt(why) => {
                scan.damage = damage(why);
                break;
            }
        };
        // A seal repeats the last data record's number; data records count up by one.
        let expected = match (record.kind, scan.last_seq) {
            (SEAL, Some(last)) => last,
            (SEAL, None) => {
                scan.damage = damage("a seal on an empty segment".into());
                break;
            }
            (_, last) => last.map_or(header.first_seq, |s| s + 1),
        };
        if record.seq != expected {
            scan.damage = damage(format!("sequence {} where {expected} was due", record.seq));
            break;
        }
        if record.kind == SEAL {
            if record.payload != seal_payload(record.seq, scan.records) {
                scan.damage = damage("the seal disagrees with the segment".into());
                break;
            }
            scan.sealed = true;
        } else {
            each(record.clone());
            scan.records += 1;
        }
        scan.last_seq = Some(record.seq);
        at += len;
        scan.good_len = at as u64;
    }
    Ok(scan)
}

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
    /// The first damage: (file, offset, reason).
    pub damage: Option<(PathBuf, u64, String)>,
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
        let damaged = |offset: u64, why: String| Some((path.clone(), offset, why));
        let scan = match scan_segment(&bytes, &mut each) {
            Ok(scan) => scan,
            Err(why) => {
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
        if let Some((offset, why)) = scan.damage {
            v.damage = damaged(offset, why);
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
    /// A torn or corrupt tail cut from the open segment: (file, offset, reason).
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

/// The segment being written, and where the writer stands in it.
struct Tail {
    file: File,
    header: Header,
    len: u64,
    records: u64,
    next_seq: u64,
    config: LedgerConfig,
}

impl Tail {
    /// Opens the ledger in `config.dir`: cuts a damaged tail of the open segment, or starts a
    /// new segment after a sealed one.
    fn recover(config: LedgerConfig) -> Result<(Tail, Recovery), LedgerError> {
        std::fs::create_dir_all(&config.dir)?;
        let files = segments(&config.dir)?;
        let mut recovery = Recovery {
            segments: files.len() as u64,
            next_seq: 0,
            cut: None,
        };
        let Some((number, path)) = files.last().cloned() else {
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
        let next_seq = scan.last_seq.map_or(scan.header.first_seq, |s| s + 1);
        recovery.next_seq = next_seq;
        if scan.sealed {
            let open = Tail::create(config, number + 1, next_seq)?;
            return Ok((open, recovery));
        }
        if let Some((offset, why)) = scan.damage {
            tracing::warn!(file = %path.display(), offset, reason = %why, "ledger: cutting a damaged tail");
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(offset)?;
            file.sync_all()?;
            recovery.cut = Some((path.clone(), offset, why));
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        let open = Tail {
            file,
            header: scan.header,
            len: scan.good_len,
            records: scan.records,
            next_seq,
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
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(&header.encode())?;
        file.sync_all()?;
        sync_dir(&config.dir)?;
        Ok(Tail {
            file,
            header,
            len: HEADER_LEN as u64,
            records: 0,
            next_seq: first_seq,
            config,
        })
    }

    /// Seals this segment and starts the next.
    fn roll(&mut self) -> Result<(), LedgerError> {
        let mut seal = Vec::with_capacity(FRAME_LEN + 16);
        let last = self.next_seq - 1; // a segment rolls only once it holds a record
        encode_record(last, SEAL, &seal_payload(last, self.records), &mut seal);
        self.file.write_all(&seal)?;
        self.file.sync_all()?;
        let next = Tail::create(self.config.clone(), self.header.segment + 1, self.next_seq)?;
        *self = next;
        Ok(())
    }

    /// Writes every append of `group`, rolling between appends when the segment is full;
    /// returns each append's last sequence number.
    fn write(&mut self, group: &[Append], buf: &mut Vec<u8>) -> Result<Vec<u64>, LedgerError> {
        let mut last = Vec::with_capacity(group.len());
        buf.clear();
        for append in group {
            if self.len + buf.len() as u64 >= self.config.segment_bytes && self.records > 0 {
                self.file.write_all(buf)?;
                self.len += buf.len() as u64;
                buf.clear();
                self.roll()?;
            }
            for (kind, payload) in &append.records {
                encode_record(self.next_seq, *kind, payload, buf);
                self.next_seq += 1;
                self.records += 1;
            }
            last.push(self.next_seq - 1);
        }
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        if self.config.sync {
            self.file.sync_data()?;
        }
        Ok(last)
    }
}

fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    File::open(dir)?.sync_all()?;
    Ok(())
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
        let (open, recovery) = Tail::recover(config)?;
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
        if let Some((kind, p)) = records
            .iter()
            .find(|(kind, p)| *kind == SEAL || p.len() > MAX_PAYLOAD)
        {
            return Err(LedgerError(format!(
                "a record of kind {kind} with {} bytes: kind 0 is the seal and payloads are at \
                 most {MAX_PAYLOAD} bytes",
                p.len()
            )));
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
        match open.write(&group, &mut buf) {
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
