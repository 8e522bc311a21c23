//! Durable state in RocksDB, written through one group-commit thread.
//!
//! Every draw that changes state becomes one atomic batch (request record, user standing, wins,
//! pending deliveries, counter increments), at most one ledger record in size. Batches queue
//! on a bounded channel to a single writer thread, which writes whatever is waiting as ledger
//! records with one write and one fsync, then applies them to RocksDB as one `WriteBatch`
//! without its WAL: durability costs one disk flush per group rather than per draw, and no
//! draw waits on a lock while another one is on disk.
//!
//! Column families: `requests` (idempotency records), `users` (standings), `wins`,
//! `deliveries` (pending records for the delivery work), `counters` (issued per prize and
//! occurrence, summed by a merge operator), `meta` (published configs), `drops` (prizes claimed
//! per geo drop, summed likewise).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;

use quota::draw::UserStanding;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, MergeOperands, Options,
    WriteBatch, WriteOptions, DB,
};
use tokio::sync::{mpsc, oneshot};

use crate::ledger::{
    scan_segment, segments, Header, LedgerConfig, Tail, DEFAULT_SEGMENT_BYTES, MAX_PAYLOAD,
};

/// Most draws folded into one group commit.
pub const MAX_GROUP: usize = 4096;
/// Most draws waiting for the writer; senders wait (back-pressure) beyond it.
pub const COMMIT_QUEUE: usize = 16_384;

/// A storage failure; the request that hit it changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub String);

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        StorageError(e.into_string())
    }
}

/// The column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// `user \0 request_id` → the response body that was sent.
    Requests,
    /// `r \0 round \0 user` → round standing; `c \0 campaign \0 user` →
    /// campaign standing.
    Users,
    /// `user \0 at_ms(be) win_id` → win record JSON.
    Wins,
    /// `win_id` → delivery record JSON.
    Deliveries,
    /// `prize \0 occurrence(be)` → issued (u64 LE, merged by addition).
    Counters,
    /// Configs and bookkeeping.
    Meta,
    /// `task \0 drop(be u32)` → prizes claimed from that geo drop (u64 LE, merged by addition).
    Drops,
    /// `o \0 partner \0 id` → open deliveries (a lane's durable queue); `x \0 partner \0 id`
    /// → dead letters. Values are empty.
    Outbox,
}

const CFS: [(Cf, &str); 8] = [
    (Cf::Requests, "requests"),
    (Cf::Users, "users"),
    (Cf::Wins, "wins"),
    (Cf::Deliveries, "deliveries"),
    (Cf::Counters, "counters"),
    (Cf::Meta, "meta"),
    (Cf::Drops, "drops"),
    (Cf::Outbox, "outbox"),
];

fn handle(db: &DB, cf: Cf) -> &ColumnFamily {
    // CFS lists the families in declaration order, so the discriminant indexes it.
    db.cf_handle(CFS[cf as usize].1)
        .expect("column families are created at open")
}

/// One write in a batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Set a key.
    Put(Cf, Vec<u8>, Vec<u8>),
    /// Add a u64 (LE) to a counter.
    Add(Cf, Vec<u8>, u64),
    /// Remove a key.
    Delete(Cf, Vec<u8>),
}

/// How soon a commit must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A client is waiting (a draw, a claim, an operator's change): the writer starts its
    /// group at once.
    Now,
    /// Only a background task is waiting (a delivery lane recording a partner's answer): the
    /// writer may hold it up to [`BATCH_WAIT`] so that more commits share its fsync.
    Batch,
}

/// Longest a group of [`Urgency::Batch`] commits waits for company before it is written.
pub const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

struct Job {
    ops: Vec<Op>,
    urgency: Urgency,
    done: oneshot::Sender<Result<(), StorageError>>,
}

/// One stored key and its value, as returned by a scan.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The engine's durable store.
pub struct Storage {
    db: Arc<DB>,
    /// `None` only while dropping: closing it ends the writer thread.
    writer: Option<mpsc::Sender<Job>>,
    writer_thread: Option<thread::JoinHandle<()>>,
    /// What the writer thread has done.
    writes: Arc<Writes>,
    /// Every ledger record before this sequence number is on disk.
    durable: Arc<AtomicU64>,
    /// Counters RocksDB held differently from the ledger at start-up, set to the ledger's.
    pub repairs: Vec<String>,
}

impl Drop for Storage {
    /// Lets the writer finish what is queued and close the database, so the data dir is
    /// unlocked once the `Storage` is gone (a restart in the same process can open it at once).
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.db.path())
            .finish()
    }
}

fn add_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut sum = existing.map_or(0, decode_u64);
    for op in operands {
        sum = sum.saturating_add(decode_u64(op));
    }
    Some(sum.to_le_bytes().to_vec())
}

/// Decodes a u64 stored little-endian (0 for a malformed value).
pub fn decode_u64(b: &[u8]) -> u64 {
    b.try_into().map_or(0, u64::from_le_bytes)
}

impl Storage {
    /// Opens (creating if needed) the store in `dir` with its ledger in `ledger_dir`, replays
    /// the ledger records RocksDB has not applied, and starts the writer thread.
    pub fn open(dir: &Path, ledger_dir: &Path, node: u32) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError(format!("{}: {e}", dir.display())))?;
        let cache = Cache::new_lru_cache(128 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        // Filters and indexes stay in the table readers (about 1.25 bytes a key) rather than
        // competing for the block cache: with them in the cache, every new user's lookups
        // re-read evicted filter blocks and the engine slowed sixfold at a few million users.
        table.set_cache_index_and_filter_blocks(false);

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        // Bounds memtable memory across all column families.
        db_opts.set_db_write_buffer_size(256 << 20);
        db_opts.set_max_total_wal_size(512 << 20);
        // The ledger is the write-ahead log; RocksDB writes without its own. Flushing every
        // column family together keeps what survives a crash one consistent point, whose
        // `ledger_applied` says where the replay starts.
        db_opts.set_atomic_flush(true);

        let descriptors = CFS.iter().map(|(cf, name)| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_write_buffer_size(64 << 20);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if matches!(cf, Cf::Requests | Cf::Users) {
                // Point lookups only: a memtable bloom filter answers the common miss (a new
                // request id) without searching the skiplist. (A hash-bucketed memtable made
                // inserts cheaper but flushes re-sort it whole, which cost more than it saved.)
                o.set_memtable_whole_key_filtering(true);
                o.set_memtable_prefix_bloom_ratio(0.1);
                // Every draw inserts a random key here; a smaller skiplist misses the CPU
                // cache less on insert (8 MB against 64 MB: +4-9 % draws/s over 30 s runs,
                // BENCHMARKS.md).
                o.set_write_buffer_size(8 << 20);
            }
            if matches!(cf, Cf::Counters | Cf::Drops | Cf::Meta) {
                o.set_merge_operator_associative("add_u64", add_merge);
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = Arc::new(DB::open_cf_descriptors(&db_opts, dir, descriptors)?);
        let config = LedgerConfig {
            dir: ledger_dir.to_path_buf(),
            node,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sync: true,
        };
        let applied = db
            .get_cf(handle(&db, Cf::Meta), APPLIED_KEY)?
            .map(|b| decode_u64(&b));
        let (tail, recovery) =
            Tail::recover(config, applied).map_err(|e| StorageError(e.to_string()))?;
        if let Some((file, offset, why)) = &recovery.cut {
            tracing::warn!(file = %file.display(), offset, reason = %why, "ledger tail cut at start-up");
        }
        let replayed = replay(&db, ledger_dir, applied)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "replayed ledger records RocksDB had not applied"
            );
        }
        let checking = std::time::Instant::now();
        let repairs = repair(&db, ledger_dir)?;
        tracing::info!(
            took_ms = checking.elapsed().as_millis() as u64,
            differences = repairs.len(),
            "RocksDB checked against the whole ledger"
        );
        for r in &repairs {
            tracing::warn!(difference = %r, "RocksDB disagreed with the ledger; the ledger's value is restored");
        }
        let durable = tail.durable();
        let (writer, rx) = mpsc::channel(COMMIT_QUEUE);
        let db2 = db.clone();
        let writes = Arc::new(Writes::default());
        let counted = writes.clone();
        // The writer builds its runtime (only for its waits on the channel, with a deadline; it
        // does its I/O itself) on its own thread, so no runtime is ever dropped on the caller's,
        // which may be async; it reports whether that worked before `open` returns.
        let (started, start) = std::sync::mpsc::sync_channel(1);
        let writer_thread = thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(waiting) => {
                        let _ = started.send(Ok(()));
                        group_commit(db2, tail, rx, waiting, &counted);
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                    }
                }
            })
            .map_err(|e| StorageError(e.to_string()))?;
        start
            .recv()
            .map_err(|_| StorageError("the group-commit thread ended at start".into()))?
            .map_err(|e| StorageError(format!("the group-commit thread's runtime: {e}")))?;
        Ok(Storage {
            db,
            writer: Some(writer),
            writer_thread: Some(writer_thread),
            writes,
            durable,
            repairs,
        })
    }

    /// Every ledger record before this sequence number is on disk (see [`Tail::durable`]).
    pub fn durable(&self) -> Arc<AtomicU64> {
        self.durable.clone()
    }

    /// Groups written since open: one ledger write and one fsync each.
    pub fn groups(&self) -> u64 {
        self.writes.groups.load(Relaxed)
    }

    /// Whether the ledger refused a write: every later batch is refused until a restart.
    pub fn failed(&self) -> bool {
        self.writes.broken.get().is_some()
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        handle(&self.db, cf)
    }

    /// Reads one key.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Reads many keys of one column family in one batched lookup, in the order given.
    pub fn get_many<K: AsRef<[u8]>>(
        &self,
        cf: Cf,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.db
            .batched_multi_get_cf(self.cf(cf), keys, false)
            .into_iter()
            .map(|got| Ok(got?.map(|s| s.to_vec())))
            .collect()
    }

    /// Makes `ops` durable as one ledger record (fsynced) and applies them to RocksDB as one
    /// atomic batch; resolves once both are done.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        self.commit_as(ops, Urgency::Now).await
    }

    /// [`Storage::commit`], telling the writer how soon it must be on disk.
    pub async fn commit_as(&self, ops: Vec<Op>, urgency: Urgency) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        fits_one_record(&ops)?;
        let (done, wait) = oneshot::channel();
        self.writer()?
            .send(Job { ops, urgency, done })
            .await
            .map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }

    /// [`Storage::commit`] from a blocking context (start-up, publishing).
    pub fn commit_blocking(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        fits_one_record(&ops)?;
        let (done, wait) = oneshot::channel();
        self.writer()?
            .blocking_send(Job {
                ops,
                urgency: Urgency::Now,
                done,
            })
            .map_err(|_| stopped())?;
        wait.blocking_recv().map_err(|_| stopped())?
    }

    fn writer(&self) -> Result<&mpsc::Sender<Job>, StorageError> {
        self.writer.as_ref().ok_or_else(stopped)
    }

    /// Every key/value under `prefix`, at most `limit` of them, in key order.
    pub fn scan_prefix(
        &self,
        cf: Cf,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(cf),
            rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The distinct names `n` of the keys `prefix n \0 …` in `cf`, in key order: one seek per
    /// name, however many keys it has (the partners with outbox entries, say).
    pub fn key_names(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<String>, StorageError> {
        let mut names = Vec::new();
        let mut from = prefix.to_vec();
        loop {
            let mut iter = self.db.iterator_cf(
                self.cf(cf),
                rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
            );
            let Some(item) = iter.next() else { break };
            let (k, _) = item?;
            let Some(rest) = k.strip_prefix(prefix) else {
                break;
            };
            match rest.iter().position(|&b| b == 0) {
                Some(end) => {
                    names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
                    // Past every key of this name: `\0` is the smallest byte, `\x01` the next.
                    from = [prefix, &rest[..end], b"\x01"].concat();
                }
                None => from = [&k[..], b"\0"].concat(),
            }
        }
        Ok(names)
    }

    /// Calls `f` with every key/value under `prefix`, last key first, until it returns `false`.
    pub fn scan_prefix_rev(
        &self,
        cf: Cf,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(cf));
        // The last key before the first one past the prefix.
        match next_prefix(prefix) {
            Some(upper) => {
                iter.seek_for_prev(&upper);
                if iter.key() == Some(&upper[..]) {
                    iter.prev();
                }
            }
            None => iter.seek_to_last(),
        }
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            if !k.starts_with(prefix) || !f(k, v) {
                break;
            }
            iter.prev();
        }
        iter.status()?;
        Ok(())
    }

    /// The user's standing in `round` (whatever occurrence it was last in) and `campaign`.
    pub fn standing(
        &self,
        round: &str,
        campaign: &str,
        user: &str,
    ) -> Result<UserStanding, StorageError> {
        let keys = [round_key(round, user), campaign_key(campaign, user)];
        let [round_rec, campaign_rec]: [Option<Vec<u8>>; 2] = self
            .get_many(Cf::Users, &keys)?
            .try_into()
            .expect("one answer per key");
        let mut s = UserStanding::default();
        if let Some(b) = round_rec.filter(|b| b.len() == 20) {
            s.occurrence = Some(decode_u64(&b[0..8]));
            s.first_draw_ms = Some(decode_u64(&b[8..16]));
            s.round_wins = u32::from_le_bytes(b[16..20].try_into().unwrap_or_default());
        }
        if let Some(b) = campaign_rec.filter(|b| b.len() == 12) {
            s.campaign_wins = u32::from_le_bytes(b[0..4].try_into().unwrap_or_default());
            s.campaign_cash_cents = decode_u64(&b[4..12]);
        }
        Ok(s)
    }

    /// Every claimed count of a geo drop task: (drop, claimed).
    pub fn drop_claims(&self, task: &str) -> Result<Vec<(u32, u64)>, StorageError> {
        let prefix = [task.as_bytes(), b"\0"].concat();
        let rows = self.scan_prefix(Cf::Drops, &prefix, usize::MAX)?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| {
                let drop = k[prefix.len()..].try_into().ok().map(u32::from_be_bytes)?;
                Some((drop, decode_u64(&v)))
            })
            .collect())
    }

    /// Every persisted counter: (prize, occurrence, issued).
    pub fn counters(&self) -> Result<Vec<(String, u64, u64)>, StorageError> {
        Ok(self
            .scan_prefix(Cf::Counters, b"", usize::MAX)?
            .into_iter()
            .filter_map(|(k, v)| {
                let (prize, occurrence) = split_counter_key(&k)?;
                Some((prize, occurrence, decode_u64(&v)))
            })
            .collect())
    }
}

/// A [`counter_key`] split back into (prize, occurrence).
pub fn split_counter_key(key: &[u8]) -> Option<(String, u64)> {
    let split = key.iter().position(|&b| b == 0)?;
    let occurrence: [u8; 8] = key[split + 1..].try_into().ok()?;
    Some((
        std::str::from_utf8(&key[..split]).ok()?.to_string(),
        u64::from_be_bytes(occurrence),
    ))
}

/// Key of an idempotency record.
pub fn request_key(user: &str, request_id: &str) -> Vec<u8> {
    [user.as_bytes(), b"\0", request_id.as_bytes()].concat()
}

/// Key of a user's standing in a round.
pub fn round_key(round: &str, user: &str) -> Vec<u8> {
    [b"r\0", round.as_bytes(), b"\0", user.as_bytes()].concat()
}

/// Key of a user's standing in a campaign.
pub fn campaign_key(campaign: &str, user: &str) -> Vec<u8> {
    [b"c\0", campaign.as_bytes(), b"\0", user.as_bytes()].concat()
}

/// Key of a counter.
pub fn counter_key(prize: &str, occurrence: u64) -> Vec<u8> {
    [prize.as_bytes(), b"\0", &occurrence.to_be_bytes()].concat()
}

/// Key of an idempotency record of a geo drop claim (apart from draws': a draw's request id
/// never holds `\0`).
pub fn claim_request_key(user: &str, request_id: &str) -> Vec<u8> {
    [user.as_bytes(), b"\0claim\0", request_id.as_bytes()].concat()
}

/// Key of a geo drop's claimed count.
pub fn drop_key(task: &str, drop: u32) -> Vec<u8> {
    [task.as_bytes(), b"\0", &drop.to_be_bytes()].concat()
}

/// Key of a win, ordered by time within the user.
pub fn win_key(user: &str, at_ms: u64, win_id: &str) -> Vec<u8> {
    [
        user.as_bytes(),
        b"\0",
        &at_ms.to_be_bytes(),
        win_id.as_bytes(),
    ]
    .concat()
}

/// The writes that take a user's stored standing from `old` to `new`: each of the round part
/// and the campaign part only when it changed (a returning user's no-win draw changes neither).
pub fn standing_ops(
    round: &str,
    campaign: &str,
    user: &str,
    old: &UserStanding,
    new: &UserStanding,
) -> Vec<Op> {
    let mut ops = Vec::with_capacity(2);
    let round_part = |s: &UserStanding| (s.occurrence, s.first_draw_ms, s.round_wins);
    if round_part(old) != round_part(new) {
        let mut r = Vec::with_capacity(20);
        r.extend_from_slice(&new.occurrence.unwrap_or(0).to_le_bytes());
        r.extend_from_slice(&new.first_draw_ms.unwrap_or(0).to_le_bytes());
        r.extend_from_slice(&new.round_wins.to_le_bytes());
        ops.push(Op::Put(Cf::Users, round_key(round, user), r));
    }
    if (old.campaign_wins, old.campaign_cash_cents) != (new.campaign_wins, new.campaign_cash_cents)
    {
        let mut c = Vec::with_capacity(12);
        c.extend_from_slice(&new.campaign_wins.to_le_bytes());
        c.extend_from_slice(&new.campaign_cash_cents.to_le_bytes());
        ops.push(Op::Put(Cf::Users, campaign_key(campaign, user), c));
    }
    ops
}

fn stopped() -> StorageError {
    StorageError("the writer has stopped".into())
}

/// Ledger record kind of a storage batch.
pub const BATCH: u8 = 1;
/// The smallest key above every key that starts with `prefix` (`None`: there is none).
fn next_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < 0xff {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

/// `meta` key of the last ledger sequence number applied to RocksDB.
const APPLIED_KEY: &[u8] = b"ledger_applied";
/// Ledger records replayed per RocksDB write.
const REPLAY_CHUNK: usize = 4096;

/// Encodes a batch as a ledger payload: per op, a tag (0 put, 1 add, 2 delete), the column
/// family, the key (u32 length + bytes), then the value (u32 length + bytes), the addend (u64)
/// or nothing.
pub fn encode_ops(ops: &[Op], out: &mut Vec<u8>) {
    for op in ops {
        let (tag, cf, key) = match op {
            Op::Put(cf, k, _) => (0u8, cf, k),
            Op::Add(cf, k, _) => (1u8, cf, k),
            Op::Delete(cf, k) => (2u8, cf, k),
        };
        out.push(tag);
        out.push(*cf as u8);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match op {
            Op::Put(_, _, v) => {
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            Op::Add(_, _, n) => out.extend_from_slice(&n.to_le_bytes()),
            Op::Delete(..) => {}
        }
    }
}

/// The length of [`encode_ops`]'s payload for `ops`.
pub fn encoded_len(ops: &[Op]) -> usize {
    ops.iter()
        .map(|op| match op {
            Op::Put(_, k, v) => 2 + 4 + k.len() + 4 + v.len(),
            Op::Add(_, k, _) => 2 + 4 + k.len() + 8,
            Op::Delete(_, k) => 2 + 4 + k.len(),
        })
        .sum()
}

/// Refuses a batch too large for one ledger record: it is a commit's unit of atomicity, and
/// a record the reader would take for damage must never be written.
fn fits_one_record(ops: &[Op]) -> Result<(), StorageError> {
    let len = encoded_len(ops);
    if len > MAX_PAYLOAD {
        return Err(StorageError(format!(
            "a batch of {len} bytes is more than one ledger record holds ({MAX_PAYLOAD} bytes); \
             nothing was written"
        )));
    }
    Ok(())
}

/// The name of a column family.
pub fn cf_name(cf: Cf) -> &'static str {
    CFS[cf as usize].1
}

/// Decodes [`encode_ops`]'s payload.
pub fn decode_ops(mut b: &[u8]) -> Result<Vec<Op>, String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err("a batch record ends inside an op".into());
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    let len = |b: &mut &[u8]| -> Result<usize, String> {
        Ok(u32::from_le_bytes(take(b, 4)?.try_into().expect("4 bytes")) as usize)
    };
    let mut ops = Vec::new();
    while !b.is_empty() {
        let head = take(&mut b, 2)?;
        let cf = CFS
            .get(usize::from(head[1]))
            .map(|(cf, _)| *cf)
            .ok_or_else(|| format!("unknown column family {}", head[1]))?;
        let n = len(&mut b)?;
        let key = take(&mut b, n)?.to_vec();
        ops.push(match head[0] {
            0 => {
                let n = len(&mut b)?;
                Op::Put(cf, key, take(&mut b, n)?.to_vec())
            }
            1 => Op::Add(cf, key, decode_u64(take(&mut b, 8)?)),
            2 => Op::Delete(cf, key),
            tag => return Err(format!("unknown op tag {tag}")),
        });
    }
    Ok(ops)
}

/// Applies ops to RocksDB without its WAL, recording `applied` in the same batch.
fn write_group<'a>(
    db: &DB,
    ops: impl Iterator<Item = &'a Op>,
    applied: u64,
) -> Result<(), StorageError> {
    let handles = CFS.map(|(cf, _)| handle(db, cf));
    let mut batch = WriteBatch::default();
    for op in ops {
        match op {
            Op::Put(cf, k, v) => batch.put_cf(handles[*cf as usize], k, v),
            Op::Add(cf, k, n) => batch.merge_cf(handles[*cf as usize], k, n.to_le_bytes()),
            Op::Delete(cf, k) => batch.delete_cf(handles[*cf as usize], k),
        }
    }
    batch.put_cf(
        handles[Cf::Meta as usize],
        APPLIED_KEY,
        applied.to_le_bytes(),
    );
    let mut opts = WriteOptions::default();
    opts.disable_wal(true);
    Ok(db.write_opt(batch, &opts)?)
}

/// Applies every ledger record after `applied` (RocksDB's `ledger_applied`); returns how many.
fn replay(db: &DB, dir: &Path, applied: Option<u64>) -> Result<u64, StorageError> {
    let files = segments(dir).map_err(|e| StorageError(e.to_string()))?;
    let mut replayed = 0;
    for (i, (_, path)) in files.iter().enumerate() {
        // A segment whose successor starts at or before the first unapplied record holds
        // nothing to replay.
        if let (Some(applied), Some((_, next))) = (applied, files.get(i + 1)) {
            let head = std::fs::read(next).map_err(|e| StorageError(e.to_string()))?;
            if Header::decode(&head).is_ok_and(|h| h.first_seq <= applied + 1) {
                continue;
            }
        }
        let bytes = std::fs::read(path).map_err(|e| StorageError(e.to_string()))?;
        let mut pending: Vec<(u64, Vec<Op>)> = Vec::new();
        let mut failed = None;
        let flush = |pending: &mut Vec<(u64, Vec<Op>)>| -> Result<(), StorageError> {
            if let Some(last) = pending.last().map(|p| p.0) {
                write_group(db, pending.iter().flat_map(|p| p.1.iter()), last)?;
                pending.clear();
            }
            Ok(())
        };
        let scan = scan_segment(&bytes, |r| {
            if failed.is_some() || r.kind != BATCH || applied.is_some_and(|a| r.seq <= a) {
                return;
            }
            match decode_ops(r.payload) {
                Ok(ops) => pending.push((r.seq, ops)),
                Err(e) => failed = Some(format!("record {}: {e}", r.seq)),
            }
            if pending.len() >= REPLAY_CHUNK {
                if let Err(e) = flush(&mut pending) {
                    failed = Some(e.to_string());
                }
            }
            replayed += 1;
        })
        .map_err(|why| StorageError(format!("{}: {why}", path.display())))?;
        if let Some(why) = failed.or(scan.damage.map(|d| d.to_string())) {
            return Err(StorageError(format!(
                "ledger {}: {why}; refusing to start on a damaged ledger (see `redrain ledger verify`)",
                path.display()
            )));
        }
        flush(&mut pending)?;
    }
    Ok(replayed)
}

/// Column families whose values are sums (`Op::Add`): the quota and drop claim counters.
const SUMMED: [Cf; 2] = [Cf::Counters, Cf::Drops];
/// Column families of records the ledger sets whole: users' standings, wins, delivery states
/// and the delivery outbox. (`requests`, the idempotency records, and `meta` are replayed but
/// not compared: the first is the largest family by far, the second holds the applied mark.)
const RECORDS: [Cf; 4] = [Cf::Users, Cf::Wins, Cf::Deliveries, Cf::Outbox];

/// Calls `f` with every op of every ledger record, in order. Recovery has cut a torn tail of
/// the open segment, so any damage left (a sealed segment, a gap in the sequence, a record
/// that does not decode) is a fault of the medium: it is refused, never read past, because
/// what follows it would repair RocksDB to a ledger with acknowledged records missing.
fn each_ledger_op(dir: &Path, mut f: impl FnMut(Op)) -> Result<(), StorageError> {
    let mut undecodable = None;
    let checked = crate::ledger::verify(dir, |r| {
        if r.kind != BATCH || undecodable.is_some() {
            return;
        }
        match decode_ops(r.payload) {
            Ok(ops) => ops.into_iter().for_each(&mut f),
            Err(e) => undecodable = Some(format!("record {}: {e}", r.seq)),
        }
    })
    .map_err(|e| StorageError(e.to_string()))?;
    let damage = checked
        .damage
        .map(|(file, damage)| format!("{} at {damage}", file.display()));
    match undecodable.or(damage) {
        Some(why) => Err(StorageError(format!(
            "ledger {why}; refusing to start on a damaged ledger (see `redrain ledger verify`)"
        ))),
        None => Ok(()),
    }
}

/// A 64-bit digest of a key or value, to fold millions of records in bounded memory.
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Makes RocksDB agree with the ledger, which wins, and reports each difference as
/// `cf/key: rocksdb …, ledger …`. Compared: every counter (`counters`, `drops`: the ledger's
/// sums) and every record of [`RECORDS`] (the ledger's last write of each key). Records are
/// folded as digests (16 bytes a key), then the keys whose digests differ are read exactly
/// from a second pass, so a digest collision costs a second look, never a wrong repair. Fixes
/// are written without WAL, like every apply: a crash before the next flush finds and repairs
/// them again.
fn repair(db: &DB, dir: &Path) -> Result<Vec<String>, StorageError> {
    use std::collections::{HashMap, HashSet};
    let mut sums: HashMap<(Cf, Vec<u8>), u64> = HashMap::new();
    // (family, key digest) → the digest of the last value written, `None` when deleted.
    let mut last: HashMap<(Cf, u64), Option<u64>> = HashMap::new();
    each_ledger_op(dir, |op| match op {
        Op::Add(cf, k, n) if SUMMED.contains(&cf) => *sums.entry((cf, k)).or_default() += n,
        Op::Put(cf, k, v) if SUMMED.contains(&cf) => {
            sums.insert((cf, k), decode_u64(&v));
        }
        Op::Delete(cf, k) if SUMMED.contains(&cf) => {
            sums.insert((cf, k), 0);
        }
        Op::Put(cf, k, v) if RECORDS.contains(&cf) => {
            last.insert((cf, digest(&k)), Some(digest(&v)));
        }
        Op::Delete(cf, k) if RECORDS.contains(&cf) => {
            last.insert((cf, digest(&k)), None);
        }
        _ => {}
    })?;

    let mut batch = WriteBatch::default();
    let mut differences = Vec::new();
    let name = |cf: Cf, k: &[u8]| {
        format!(
            "{}/{}",
            cf_name(cf),
            String::from_utf8_lossy(k).escape_debug()
        )
    };

    // Counters: few, compared whole.
    let mut stored: HashMap<(Cf, Vec<u8>), u64> = HashMap::new();
    for cf in SUMMED {
        for item in db.iterator_cf(handle(db, cf), rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            stored.insert((cf, k.to_vec()), decode_u64(&v));
        }
    }
    let keys: std::collections::BTreeSet<&(Cf, Vec<u8>)> =
        sums.keys().chain(stored.keys()).collect();
    for key @ (cf, k) in keys {
        let (l, r) = (
            sums.get(key).copied().unwrap_or(0),
            stored.get(key).copied().unwrap_or(0),
        );
        if l != r {
            differences.push(format!("{}: rocksdb {r}, ledger {l}", name(*cf, k)));
            batch.put_cf(handle(db, *cf), k, l.to_le_bytes());
        }
    }

    // Records: RocksDB's keys whose value digest differs (or that the ledger never kept), and
    // the ledger's keys RocksDB lacks (known by digest until the second pass).
    let mut suspects: HashSet<(Cf, Vec<u8>)> = HashSet::new();
    for cf in RECORDS {
        for item in db.iterator_cf(handle(db, cf), rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            match last.remove(&(cf, digest(&k))) {
                Some(Some(d)) if d == digest(&v) => {}
                _ => {
                    suspects.insert((cf, k.to_vec()));
                }
            }
        }
    }
    let missing: HashSet<(Cf, u64)> = last
        .into_iter()
        .filter_map(|(key, value)| value.map(|_| key))
        .collect();
    if !suspects.is_empty() || !missing.is_empty() {
        let mut exact: HashMap<(Cf, Vec<u8>), Option<Vec<u8>>> = HashMap::new();
        each_ledger_op(dir, |op| {
            let (cf, k, v) = match op {
                Op::Put(cf, k, v) => (cf, k, Some(v)),
                Op::Delete(cf, k) => (cf, k, None),
                Op::Add(..) => return,
            };
            if !RECORDS.contains(&cf) {
                return;
            }
            let key = (cf, k);
            if suspects.contains(&key) || missing.contains(&(cf, digest(&key.1))) {
                exact.insert(key, v);
            }
        })?;
        for (cf, k) in suspects {
            exact.entry((cf, k)).or_insert(None);
        }
        let mut exact: Vec<_> = exact.into_iter().collect();
        exact.sort();
        let show = |v: &Option<Vec<u8>>| match v {
            Some(v) => format!("{} bytes", v.len()),
            None => "none".to_string(),
        };
        for ((cf, k), ledger) in exact {
            let rocks = db.get_cf(handle(db, cf), &k)?;
            if rocks != ledger {
                differences.push(format!(
                    "{}: rocksdb {}, ledger {}",
                    name(cf, &k),
                    show(&rocks),
                    show(&ledger)
                ));
                match ledger {
                    Some(v) => batch.put_cf(handle(db, cf), &k, v),
                    None => batch.delete_cf(handle(db, cf), &k),
                }
            }
        }
    }
    if !differences.is_empty() {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        db.write_opt(batch, &opts)?;
    }
    if differences.len() > MAX_REPAIRS_LISTED {
        let more = differences.len() - MAX_REPAIRS_LISTED;
        differences.truncate(MAX_REPAIRS_LISTED);
        differences.push(format!("… and {more} more, all repaired"));
    }
    Ok(differences)
}

/// What the writer thread reports.
#[derive(Debug, Default)]
struct Writes {
    /// Groups written: one ledger write and one fsync each.
    groups: AtomicU64,
    /// The ledger write that failed; every later batch is refused with it.
    broken: std::sync::OnceLock<StorageError>,
}

/// Most start-up repairs listed (and logged) one by one; all of them are made.
const MAX_REPAIRS_LISTED: usize = 1000;

/// The writer: each group of batches becomes ledger records with one write and one fsync, then
/// one RocksDB batch without WAL; only then are the group's draws answered. After a ledger
/// failure the file position is unknown, so every later batch is refused.
fn group_commit(
    db: Arc<DB>,
    mut ledger: Tail,
    mut rx: mpsc::Receiver<Job>,
    waiting: tokio::runtime::Runtime,
    writes: &Writes,
) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(MAX_GROUP);
    let mut buf = Vec::with_capacity(1 << 20);
    while let Some(first) = waiting.block_on(rx.recv()) {
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        let mut urgent = false;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            urgent |= job.urgency == Urgency::Now;
            jobs.push(job);
            if jobs.len() == MAX_GROUP {
                break;
            }
            next = match rx.try_recv() {
                Ok(job) => Some(job),
                // A group of background commits waits a little for company, so that one fsync
                // covers more of them; any commit a client waits on ends the wait.
                // (The timer is made inside `block_on`, in the runtime's context.)
                Err(_) if !urgent => waiting
                    .block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await })
                    .ok()
                    .flatten(),
                Err(_) => None,
            };
        }
        let result = match writes.broken.get() {
            Some(e) => Err(e.clone()),
            None => {
                payloads.resize_with(jobs.len(), Vec::new);
                for (p, job) in payloads.iter_mut().zip(&jobs) {
                    p.clear();
                    encode_ops(&job.ops, p);
                }
                let records = payloads.iter().map(|p| [(BATCH, p.as_slice())]);
                match ledger.write(records, &mut buf) {
                    Ok(last) => {
                        writes.groups.fetch_add(1, Relaxed);
                        let applied = last.last().copied().unwrap_or_default();
                        if let Err(e) =
                            write_group(&db, jobs.iter().flat_map(|j| j.ops.iter()), applied)
                        {
                            // The group is durable in the ledger, so it happened: answering
                            // "failed" would let the draws give their prizes back while a
                            // restart replays them. Stop instead; the restart applies it.
                            tracing::error!(error = %e, "RocksDB refused a group already in the ledger; stopping so start-up replays it");
                            std::process::abort();
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let e = StorageError(e.to_string());
                        let _ = writes.broken.set(e.clone());
                        Err(e)
                    }
                }
            }
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, draws = jobs.len(), "group commit failed");
        }
        for job in jobs.drain(..) {
            let _ = job.done.send(result.clone());
        }
    }
}
