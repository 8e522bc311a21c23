//! Shipping ledger segments to a collector, and the collector (`redrain collect`).
//!
//! The shipper sends each segment's whole records, in order, as `PUT
//! /v1/ledger/{node}/{segment}?offset=N` with a bearer secret; the collector checks that the
//! chunk continues the segment exactly where its copy ends (else 409 with its length, and the
//! shipper resumes from there), verifies every record's CRC and sequence number, appends and
//! fsyncs, and only then answers. A retried chunk is refused by offset, never appended twice,
//! so the collector's copy ends byte-identical to the node's whatever restarts either side.
//!
//! Each node's copies have their own lock, held from the offset check to the fsync, so appends
//! to one node run one at a time and appends of different nodes in parallel. The file work
//! (reading a copy back, writing, fsync, cutting back after a failure) runs on tokio's blocking
//! threads, never on the async workers.
//!
//! After a restart a copy is read back by the ledger's one rule for damage
//! ([`crate::ledger::Scan::torn_tail`]): an append cut short at the end of a node's last
//! segment is cut, and any other damage refuses that node, leaving its files as they are.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed},
};
use std::sync::Arc;

use bytes::Bytes;
use hyper::Method;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::OwnedMutexGuard;
use warp::http::{Response, StatusCode};
use warp::Filter;

use crate::client::Conn;
use crate::ledger::{
    decode_record, scan_segment, seal_payload, segments, Decoded, Header, HEADER_LEN, SEAL,
};

/// Largest chunk one PUT carries.
pub const MAX_CHUNK: usize = 1 << 20;

/// What the collector knows of one segment's copy.
#[derive(Debug, Clone, Default)]
struct Copy {
    len: u64,
    first_seq: u64,
    last_seq: Option<u64>,
    records: u64,
    sealed: bool,
}

impl Copy {
    /// Checks that `chunk` continues this copy with whole, intact records of `node`'s
    /// `segment`, updating the copy as it goes.
    fn extend(&mut self, node: u32, segment: u64, chunk: &[u8]) -> Result<(), String> {
        let mut at = 0;
        if self.len == 0 {
            let header = Header::decode(chunk)?;
            if (header.node, header.segment) != (node, segment) {
                return Err(format!(
                    "the header names node {} segment {}, not node {node} segment {segment}",
                    header.node, header.segment
                ));
            }
            self.first_seq = header.first_seq;
            at = HEADER_LEN;
        }
        while at < chunk.len() {
            if self.sealed {
                return Err("data after the seal".into());
            }
            let (r, len) = match decode_record(&chunk[at..]) {
                Decoded::Record(r, len) => (r, len),
                Decoded::Torn => return Err(format!("the chunk ends inside a record at {at}")),
                Decoded::Corrupt(why) => return Err(format!("record at {at}: {why}")),
            };
            if r.kind == SEAL {
                let last = self.last_seq.ok_or("a seal on an empty segment")?;
                if r.seq != last || r.payload != seal_payload(last, self.records) {
                    return Err("the seal disagrees with the segment".into());
                }
                self.sealed = true;
            } else {
                let expected = self.last_seq.map_or(self.first_seq, |s| s + 1);
                if r.seq != expected {
                    return Err(format!("sequence {} where {expected} was due", r.seq));
                }
                self.last_seq = Some(r.seq);
                self.records += 1;
            }
            at += len;
        }
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// The copy a file holds (`bytes`, node `node`'s segment `segment`; `last`: no later
    /// segment of the node is on disk), by the rule every reader of a ledger uses
    /// ([`crate::ledger::Scan::torn_tail`]): an append cut short by a crash (a partial
    /// record, or a page a power cut kept from the disk, with nothing acknowledged after it)
    /// can only be at the end of the node's last segment, and is left out (the caller cuts
    /// it). Any other damage is an error naming the offset and the reason.
    fn read(node: u32, segment: u64, bytes: &[u8], last: bool) -> Result<Copy, String> {
        if bytes.len() < HEADER_LEN {
            return match last {
                // The first append of the segment, cut short.
                true => Ok(Copy::default()),
                false => Err(format!(
                    "offset 0: {} bytes, shorter than a header, in a segment before the last",
                    bytes.len()
                )),
            };
        }
        let scan = scan_segment(bytes, |_| {}).map_err(|why| format!("offset 0: {why}"))?;
        if let Some(damage) = &scan.damage {
            if !scan.torn_tail(last) {
                let segment_is = match (scan.sealed, last) {
                    (true, _) => ", in a sealed segment",
                    (false, false) => ", in a segment before the last",
                    (false, true) => "",
                };
                return Err(format!("damaged at {damage}{segment_is}"));
            }
        }
        let mut copy = Copy::default();
        copy.extend(node, segment, &bytes[..scan.good_len as usize])?;
        Ok(copy)
    }
}

/// What the collector knows of one node's copies.
#[derive(Debug, Default)]
struct NodeCopies {
    /// Each segment's copy, by segment.
    segments: HashMap<u64, Copy>,
    /// Why the node's copy is refused, once it was found damaged beyond an append cut short:
    /// every request for the node is refused until an operator repairs the copy and restarts
    /// the collector.
    ///
    /// A damaged copy refuses its node only, rather than stopping the collector: the
    /// collector is every node's second copy, and stopping it for one node's file would stop
    /// shipping for all of them, leaving every node's newer records with one copy (copies are
    /// read when first asked for, so deciding at start-up would also mean reading the whole
    /// archive). The whole node, not just the damaged segment: a node's copy is one sequence,
    /// read in order by reconciliation and by a restore, so appending after the damage would
    /// grow a copy that is no way back past it while looking current. The node's shipper,
    /// refused at every round, logs the file and the reason, and its lag grows.
    refused: Option<String>,
}

/// One node's lock, held until dropped; see [`Collector::lock_node`].
#[derive(Debug)]
pub struct NodeLock {
    _held: OwnedMutexGuard<NodeCopies>,
}

/// The collector: stores each node's segments under `DIR/{node}/`.
#[derive(Debug)]
pub struct Collector {
    dir: PathBuf,
    secret: String,
    /// Each node's copies behind that node's lock. An append holds it from its offset check to
    /// its fsync, so two requests at the same offset cannot both pass the check; a read of a
    /// copy holds it too (reading a copy back from disk may cut a torn tail). tokio's mutex:
    /// it is awaited on the async workers and held across the blocking file work. The map's
    /// own lock (parking_lot) is held only to find or add a node's entry.
    nodes: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<NodeCopies>>>>,
}

impl Collector {
    /// A collector storing under `dir`, accepting `secret`.
    pub fn new(dir: PathBuf, secret: String) -> Self {
        Collector {
            dir,
            secret,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until no append to `node`'s copies runs, then holds further ones (and reads of
    /// them) off until the returned lock is dropped: for a consistent copy of a node's
    /// segments, and for tests. Other nodes are not held up.
    pub async fn lock_node(&self, node: u32) -> NodeLock {
        NodeLock {
            _held: self.node(node).lock_owned().await,
        }
    }

    fn node(&self, node: u32) -> Arc<tokio::sync::Mutex<NodeCopies>> {
        self.nodes.lock().entry(node).or_default().clone()
    }

    /// Runs `work` on `node`'s copies on a blocking thread, under the node's lock. The lock
    /// goes with the work: if the request that asked for it goes away, the lock is still
    /// held until the work is done.
    async fn with_node<T: Send + 'static>(
        self: &Arc<Self>,
        node: u32,
        work: impl FnOnce(&Collector, &mut NodeCopies) -> T + Send + 'static,
    ) -> Result<T, String> {
        let mut held = self.node(node).lock_owned().await;
        let collector = self.clone();
        tokio::task::spawn_blocking(move || work(&collector, &mut held))
            .await
            .map_err(|e| format!("the collector's file work failed: {e}"))
    }

    fn path(&self, node: u32, segment: u64) -> PathBuf {
        self.dir
            .join(node.to_string())
            .join(format!("{segment:020}.seg"))
    }

    /// The copy of a segment, read back from disk the first time ([`Copy::read`]): an append
    /// cut short at the end of the node's last segment is cut (it was never acknowledged);
    /// any other damage refuses the node ([`NodeCopies::refused`]) and leaves the file as it
    /// is. Blocking; under the node's lock.
    fn copy(&self, copies: &mut NodeCopies, node: u32, segment: u64) -> Result<Copy, PutError> {
        if let Some(why) = &copies.refused {
            return Err(PutError::Damaged(why.clone()));
        }
        if let Some(c) = copies.segments.get(&segment) {
            return Ok(c.clone());
        }
        let path = self.path(node, segment);
        let io = |e: &dyn std::fmt::Display| PutError::Io(format!("{}: {e}", path.display()));
        let copy = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Copy::default(),
            Err(e) => return Err(io(&e)),
            Ok(bytes) => {
                let node_dir = self.dir.join(node.to_string());
                let on_disk = segments(&node_dir).map_err(|e| io(&e))?;
                // A later file holding no more than its header does not make this segment a
                // middle one: the shipper sends a new segment's header as soon as the node
                // creates it, possibly before this segment's seal, so an append cut short
                // here by a crash is still a torn tail, not damage.
                let last = on_disk.iter().all(|(n, later)| {
                    *n <= segment
                        || std::fs::metadata(later).is_ok_and(|m| m.len() <= HEADER_LEN as u64)
                });
                match Copy::read(node, segment, &bytes, last) {
                    Ok(copy) => {
                        if (copy.len as usize) < bytes.len() {
                            tracing::warn!(file = %path.display(), offset = copy.len, "collector: cutting an append cut short");
                            let f = OpenOptions::new()
                                .write(true)
                                .open(&path)
                                .map_err(|e| io(&e))?;
                            f.set_len(copy.len)
                                .and_then(|()| f.sync_all())
                                .map_err(|e| io(&e))?;
                        }
                        copy
                    }
                    Err(why) => {
                        let refused = format!(
                            "{}: {why}; refusing node {node}'s copy and leaving the file as it \
                             is (restore the segment from the node's ledger, check it with \
                             `redrain ledger verify`, and restart the collector)",
                            path.display()
                        );
                        tracing::error!(node, "collector: {refused}");
                        copies.refused = Some(refused.clone());
                        return Err(PutError::Damaged(refused));
                    }
                }
            }
        };
        copies.segments.insert(segment, copy.clone());
        Ok(copy)
    }

    /// Appends `chunk` at `offset` of a segment's copy if it continues it; returns the copy's
    /// new length. Blocking; under the node's lock, from the offset check to the fsync.
    fn put(
        &self,
        copies: &mut NodeCopies,
        node: u32,
        segment: u64,
        offset: u64,
        chunk: &[u8],
    ) -> Result<u64, PutError> {
        let mut copy = self.copy(copies, node, segment)?;
        if offset != copy.len {
            return Err(PutError::Offset(copy.len));
        }
        copy.extend(node, segment, chunk)
            .map_err(PutError::Invalid)?;
        let path = self.path(node, segment);
        let write = || -> std::io::Result<()> {
            let node_dir = path.parent().expect("under the node's dir");
            // Only an append at offset 0 may create the file, or the node's directory.
            let new_node = offset == 0 && !node_dir.exists();
            if offset == 0 {
                std::fs::create_dir_all(node_dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            f.write_all_at(chunk, offset)?;
            f.sync_data()?;
            // A new file's name (and a new node's directory) must survive a power cut too
            // before the append is acknowledged.
            if offset == 0 {
                crate::ledger::sync_dir(node_dir)?;
            }
            if new_node {
                crate::ledger::sync_dir(&self.dir)?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            // Cut what may have landed and forget the copy: the next request reads the file
            // back, so a retry at this offset is checked against the disk, not a guess.
            let _ = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(offset));
            copies.segments.remove(&segment);
            return Err(PutError::Io(e.to_string()));
        }
        let len = copy.len;
        copies.segments.insert(segment, copy);
        Ok(len)
    }
}

/// Why a request about a copy failed.
enum PutError {
    /// The chunk does not start where the copy ends (its length).
    Offset(u64),
    /// The chunk is not whole, intact records continuing the copy.
    Invalid(String),
    /// The collector's disk failed.
    Io(String),
    /// The node's copy on disk is damaged ([`NodeCopies::refused`]).
    Damaged(String),
}

impl PutError {
    fn reply(self) -> Response<Bytes> {
        match self {
            PutError::Offset(len) => reply(
                StatusCode::CONFLICT,
                json!({"code": "offset_mismatch", "len": len, "message": format!("the copy is {len} bytes long")}),
            ),
            PutError::Invalid(why) => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"code": "invalid_records", "message": why}),
            ),
            PutError::Io(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"code": "storage_unavailable", "message": why}),
            ),
            PutError::Damaged(why) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"code": "copy_damaged", "message": why}),
            ),
        }
    }
}

/// The collector's routes.
pub fn routes(
    collector: Arc<Collector>,
) -> impl Filter<Extract = (Response<Bytes>,), Error = Infallible> + Clone {
    let with = warp::any().map(move || collector.clone());
    let auth = warp::header::optional::<String>("authorization");
    let get = warp::path!("v1" / "ledger" / u32 / u64)
        .and(warp::get())
        .and(auth)
        .and(with.clone())
        .then(
            |node, segment, auth: Option<String>, c: Arc<Collector>| async move {
                if !authorized(&c, auth.as_deref()) {
                    return unauthorized();
                }
                let read = c
                    .with_node(node, move |c, copies| c.copy(copies, node, segment))
                    .await;
                match read.unwrap_or_else(|e| Err(PutError::Io(e))) {
                    Ok(copy) => reply(
                        StatusCode::OK,
                        json!({"len": copy.len, "sealed": copy.sealed}),
                    ),
                    Err(e) => e.reply(),
                }
            },
        );
    let put = warp::path!("v1" / "ledger" / u32 / u64)
        .and(warp::put())
        .and(auth)
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::body::content_length_limit(2 * MAX_CHUNK as u64))
        .and(warp::body::bytes())
        .and(with)
        .then(
            |node, segment, auth: Option<String>, q: HashMap<String, String>, body: Bytes, c: Arc<Collector>| async move {
                if !authorized(&c, auth.as_deref()) {
                    return unauthorized();
                }
                let Some(offset) = q.get("offset").and_then(|o| o.parse::<u64>().ok()) else {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        json!({"code": "invalid_field", "field": "offset", "message": "offset: must be a whole number"}),
                    );
                };
                let put = c
                    .with_node(node, move |c, copies| c.put(copies, node, segment, offset, &body))
                    .await;
                match put.unwrap_or_else(|e| Err(PutError::Io(e))) {
                    Ok(len) => reply(StatusCode::OK, json!({"len": len})),
                    Err(e) => e.reply(),
                }
            },
        );
    get.or(put)
        .unify()
        .recover(|_| async {
            Ok::<_, Infallible>(reply(
                StatusCode::BAD_REQUEST,
                json!({"code": "bad_request", "message": "unknown route or method, or a body over 2 MiB"}),
            ))
        })
        .unify()
}

fn authorized(c: &Collector, header: Option<&str>) -> bool {
    let presented = header.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
    presented.len() == c.secret.len()
        && !c.secret.is_empty()
        && presented
            .bytes()
            .zip(c.secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn unauthorized() -> Response<Bytes> {
    reply(
        StatusCode::UNAUTHORIZED,
        json!({"code": "unauthorized", "message": "the collector needs `Authorization: Bearer <secret>`"}),
    )
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .expect("static headers are valid")
}

/// Ships one node's ledger directory to a collector.
#[derive(Debug)]
pub struct Shipper {
    dir: PathBuf,
    node: u32,
    collector: SocketAddr,
    secret: String,
    /// How far each segment is known to be on the collector.
    shipped: HashMap<u64, u64>,
    /// Whole-record bytes that were on disk but not on the collector when the last round
    /// began (what accumulated since the round before, plus anything a failure left).
    pub lag_bytes: Arc<AtomicU64>,
    /// The writer's durable mark ([`crate::ledger::Tail::durable`]): records from it on are
    /// not shipped yet. `None` ships every whole record (a ledger nobody is writing).
    durable: Option<Arc<AtomicU64>>,
}

impl Shipper {
    /// A shipper of `dir` (node `node`) to the collector at `collector`.
    pub fn new(dir: PathBuf, node: u32, collector: SocketAddr, secret: String) -> Self {
        Shipper {
            dir,
            node,
            collector,
            secret,
            shipped: HashMap::new(),
            lag_bytes: Arc::new(AtomicU64::new(0)),
            durable: None,
        }
    }

    /// Ships only records the writer has made durable (`mark` from [`crate::ledger::Tail::durable`]):
    /// a record written but not yet fsynced may not survive a crash, and the collector must
    /// never hold what the node lost.
    pub fn durable_before(mut self, mark: Arc<AtomicU64>) -> Self {
        self.durable = Some(mark);
        self
    }

    /// Sends everything not yet on the collector; returns the bytes sent.
    pub async fn ship_once(&mut self) -> Result<u64, String> {
        let mut conn = Conn::connect(self.collector)
            .await
            .map_err(|e| e.to_string())?;
        let auth = format!("Bearer {}", self.secret);
        let mut sent = 0u64;
        let mut lag = 0u64;
        for (segment, path) in segments(&self.dir).map_err(|e| e.to_string())? {
            let known = match self.shipped.get(&segment) {
                Some(&n) => n,
                None => {
                    let r = conn
                        .send(
                            Method::GET,
                            &self.url(segment, None),
                            &[("authorization", &auth)],
                            Bytes::new(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    if r.status != 200 {
                        return Err(format!(
                            "collector: {} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ));
                    }
                    r.json()["len"].as_u64().unwrap_or(0)
                }
            };
            // Read the mark before the file: whatever it covers is on disk by then.
            let below = self.durable.as_ref().map(|d| d.load(Acquire));
            let (bounds, base) =
                whole_records_from(&path, known, below).map_err(|e| e.to_string())?;
            let end = bounds.last().copied().unwrap_or(known);
            lag += end - known;
            let mut offset = known;
            for chunk in chunks(&bounds, known) {
                let body = Bytes::copy_from_slice(
                    &base[(offset - known) as usize..(chunk - known) as usize],
                );
                let r = conn
                    .send(
                        Method::PUT,
                        &self.url(segment, Some(offset)),
                        &[
                            ("authorization", &auth),
                            ("content-type", "application/octet-stream"),
                        ],
                        body,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                match r.status {
                    200 => {
                        sent += chunk - offset;
                        offset = chunk;
                    }
                    409 => {
                        // The collector is elsewhere (a restart on either side): resume there.
                        let len = r.json()["len"].as_u64().unwrap_or(0);
                        self.shipped.insert(segment, len);
                        self.lag_bytes.store(lag, Relaxed);
                        return Ok(sent);
                    }
                    status => {
                        return Err(format!(
                            "collector refused segment {segment} at {offset}: {status} {}",
                            String::from_utf8_lossy(&r.body)
                        ))
                    }
                }
            }
            self.shipped.insert(segment, offset);
        }
        self.lag_bytes.store(lag, Relaxed);
        Ok(sent)
    }

    fn url(&self, segment: u64, offset: Option<u64>) -> String {
        match offset {
            Some(o) => format!("/v1/ledger/{}/{segment}?offset={o}", self.node),
            None => format!("/v1/ledger/{}/{segment}", self.node),
        }
    }
}

/// The bytes of `path` from `from` and the end offsets of the whole records in them (the
/// header counts as one when `from` is 0); a record still being written is left for later,
/// and so is every record from sequence number `below` on (a seal, which repeats its
/// segment's last sequence number, waits until a record after it is durable: the seal is
/// fsynced before the next segment's first record is written).
fn whole_records_from(
    path: &Path,
    from: u64,
    below: Option<u64>,
) -> std::io::Result<(Vec<u64>, Vec<u8>)> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let mut bounds = Vec::new();
    let mut at = 0usize;
    if from == 0 {
        if bytes.len() < HEADER_LEN {
            return Ok((bounds, bytes));
        }
        at = HEADER_LEN;
        bounds.push(at as u64);
    }
    while let Decoded::Record(r, len) = decode_record(&bytes[at..]) {
        let last = if r.kind == SEAL { r.seq + 1 } else { r.seq };
        if below.is_some_and(|b| last >= b) {
            break;
        }
        at += len;
        bounds.push(from + at as u64);
    }
    Ok((bounds, bytes))
}

/// Chunk ends: whole records, at most [`MAX_CHUNK`] bytes a chunk (a longer record alone).
fn chunks(bounds: &[u64], from: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut start = from;
    let mut prev = from;
    for &b in bounds {
        if b - start > MAX_CHUNK as u64 && prev > start {
            out.push(prev);
            start = prev;
        }
        prev = b;
    }
    if prev > start {
        out.push(prev);
    }
    out
}

/// Ships every `every` until the process ends; failures are logged and retried next round.
pub async fn ship_forever(mut shipper: Shipper, every: std::time::Duration) {
    loop {
        if let Err(e) = shipper.ship_once().await {
            tracing::warn!(error = %e, "shipping the ledger failed; retrying");
        }
        tokio::time::sleep(every).await;
    }
}
