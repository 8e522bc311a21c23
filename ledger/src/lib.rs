//! The redrain ledger's on-disk format: segment headers and length-prefixed records, each with
//! a CRC-32C and a monotonic sequence number. Pure: bytes in, records out (the engine's
//! `ledger` module writes, rolls and recovers the files).
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
//! of data records in the segment; a segment without a seal is the open one.
//!
//! The writer fills the space ahead of its records with zero bytes before it needs it, so that
//! an fsync of a group rewrites file data only (appending would change the file's size too);
//! zero bytes to the end of the file after the last record, or after the seal, end a segment
//! cleanly. Any other bytes there are damage.
//!
//! [`scan_segment`] reads a segment up to its first torn or corrupt record and says where that
//! is; nothing after it is ever returned as data. It also says whether an intact record lies
//! past the damage, and whether a page that never reached the disk lies between them
//! ([`Damage::may_be_torn`], the one rule every reader uses): a process crash mid-write leaves
//! a partial record only at the very end of what was written, and a power cut mid-write may
//! also leave whole pages of the write missing, reading as zeros; damage with an intact record
//! after it and no such page between them is corruption inside written data, not a torn tail,
//! and no reader may cut it as one.

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
/// The unit in which a power cut keeps written data from the disk: the kernel writes the page
/// cache back in whole pages, 4096 bytes on x86-64 and on arm64 with 4 KiB pages, at offsets
/// that are multiples of it from the file's start. A larger page (16 or 64 KiB) is a whole
/// number of these, aligned, so one that never landed still holds whole 4 KiB pages of zeros.
pub const PAGE_LEN: usize = 4096;

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

/// The payload of the seal after `records` data records ending at `last_seq`.
pub fn seal_payload(last_seq: u64, records: u64) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&last_seq.to_le_bytes());
    p[8..].copy_from_slice(&records.to_le_bytes());
    p
}

/// The first damage in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Where it starts: the end of the last good record.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
    /// The first intact record at or after `offset` numbered after the last good one, if any
    /// ([`resync`]).
    pub intact_after: Option<Intact>,
    /// When there is one: the zero bytes of the first page between `offset` and it that reads
    /// as a page a power cut kept from the disk ([`unwritten_page`]), from the page's start
    /// (or from `offset`, in the page holding it) to the page's end.
    pub unwritten_page: Option<std::ops::Range<u64>>,
}

/// An intact record found past damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intact {
    /// Where it starts in the segment.
    pub offset: u64,
    /// Its sequence number.
    pub seq: u64,
}

impl Damage {
    /// Whether this may be a torn write, which a reader of the open segment cuts: nothing of
    /// it, nor anything after it, was acknowledged. Anything else is corruption. (Only the open
    /// segment can have a torn tail at all; readers check that themselves.)
    ///
    /// The writer acknowledges a group of records only after its one `write` and its
    /// `fdatasync` have returned, and writes the next group only after that. Two ways a write
    /// is cut short:
    /// - A process crash leaves a prefix of the write (the page cache keeps what was copied):
    ///   a partial record at the very end of what was written, then zeros or the end of the
    ///   file. So damage with nothing intact after it may be torn.
    /// - A power cut before the `fdatasync` returned may keep any of the write's pages from the
    ///   disk, an earlier one and not a later one. A page that never landed reads as it was
    ///   after the last `fdatasync`: zeros written ahead, or, in the page where the last
    ///   durable record ends, that record's bytes and then zeros. So damage with an intact
    ///   record after it may be torn too when, between the two, a [`PAGE_LEN`]-aligned page
    ///   reads as zeros from its start, or from the damage offset in the page holding it, to
    ///   its end, and at least [`FRAME_LEN`] bytes of them ([`Damage::unwritten_page`]). A
    ///   durable page holds its records, not zeros, so that page belongs to a write whose
    ///   `fdatasync` never returned, and the intact records after it were written by the same
    ///   write: none of them was acknowledged.
    ///
    /// A flipped or garbled byte never makes such a page: damage with an intact record after
    /// it and no such page between them stays corruption. The edges:
    /// - Damage mid-page (a record whose first bytes are on a page that landed and the rest on
    ///   one that did not): the zero page is the next one, whole.
    /// - The write's first page, shared with the last durable record, missing while a later
    ///   one landed: zeros from the damage offset (where that record ends) to the page's end.
    ///   Fewer than [`FRAME_LEN`] of them are not counted, since a damaged record's first bytes
    ///   may be zeros of its own (a length's low bytes); no record's frame is all zeros (a
    ///   data record's kind is not 0, a seal's length is 16), so a whole frame of zeros is not
    ///   a record's start with a byte flipped further on. A power cut that hits a write which
    ///   began fewer than [`FRAME_LEN`] bytes before a page's end, and keeps only that page
    ///   from the disk, is therefore refused and needs an operator.
    /// - A hole that ends mid-record: the record across its end is damaged too (its start is
    ///   zeros), and the intact record found is the one after it; the page lies before that.
    /// - Several missing pages: the first one found is enough. Holes after the first intact
    ///   record are not looked at: a cut at the damage offset removes them too.
    /// - Zeros inside a payload: payloads may hold zeros, and the rule reads a page of zeros
    ///   that no intact record covers as never written, so a record whose payload held an
    ///   aligned page of zeros, damaged by a flip, would be cut with the acknowledged records
    ///   after it. Only a damaged record matters: the damage offset is where the scan stopped
    ///   and [`resync`] takes the first intact record after it, so the page lies inside
    ///   records none of which is intact. The engine's records cannot hold such a page: a
    ///   storage batch is ids of at most 64 printable ASCII bytes, JSON values (JSON never
    ///   holds a raw zero byte) and a few fixed-size numbers and digests, so its runs of zeros
    ///   are a few dozen bytes, and a run ends at the next frame's kind (never 0 for a data
    ///   record). A record kind that carries binary blobs must keep its runs of zeros well
    ///   under a page, or this rule no longer tells its damage from a torn write.
    /// - A run of zeros shorter than a page, or not ending at a page's end (a zeroed sector,
    ///   garbled bytes), is not counted: corruption. A disk that tears a page at sector
    ///   granularity in a power cut leaves such holes; that cut is refused too.
    /// - A lying disk (or a lost write) that returns zeros for a page it said was fsynced
    ///   reads exactly like a page a power cut kept from the disk: the rule cuts it, with the
    ///   acknowledged records after it. That cannot be told apart from the bytes; the
    ///   collector's copy may still hold those records. Likewise damage in the last records
    ///   acknowledged cannot be told from a torn write.
    pub fn may_be_torn(&self) -> bool {
        self.intact_after.is_none() || self.unwritten_page.is_some()
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "offset {}: {}", self.offset, self.reason)?;
        match (self.intact_after, &self.unwritten_page) {
            (None, _) => {}
            (Some(intact), None) => write!(
                f,
                ", followed by an intact record (sequence {} at offset {}): corruption inside \
                 written records, not a torn write",
                intact.seq, intact.offset
            )?,
            (Some(intact), Some(zeros)) => write!(
                f,
                ", then zeros at offsets {}..{} (a page a power cut kept from the disk) before \
                 an intact record (sequence {} at offset {}): a write cut short, never \
                 acknowledged",
                zeros.start, zeros.end, intact.seq, intact.offset
            )?,
        }
        Ok(())
    }
}

/// The zero bytes of the first [`PAGE_LEN`]-aligned page between `from` (damage) and `to` (an
/// intact record after it) that reads as a page a power cut kept from the disk: zeros from the
/// page's start, or from `from` in the page holding it, to the page's end, at least
/// [`FRAME_LEN`] of them ([`Damage::may_be_torn`] says why). Bounded by `to - from`.
pub fn unwritten_page(bytes: &[u8], from: usize, to: usize) -> Option<std::ops::Range<u64>> {
    let to = to.min(bytes.len());
    let mut page = from - from % PAGE_LEN;
    while page + PAGE_LEN <= to {
        let (start, end) = (page.max(from), page + PAGE_LEN);
        if end - start >= FRAME_LEN && zeros(&bytes[start..end]) {
            return Some(start as u64..end as u64);
        }
        page = end;
    }
    None
}

/// The first intact record in `bytes` at or after `from` whose sequence number is at least
/// `next_seq` (the one after the last good record): a plausible length that fits, then a
/// matching CRC-32C. Every offset is tried, since damage may have changed the lengths that
/// would lead from record to record; the sequence number is checked before the CRC, so most
/// offsets cost a few comparisons. Bounded by the segment's size.
pub fn resync(bytes: &[u8], from: usize, next_seq: u64) -> Option<Intact> {
    let last_start = bytes.len().checked_sub(FRAME_LEN)?;
    (from..=last_start).find_map(|at| {
        if u64_at(bytes, at + 8) < next_seq {
            return None;
        }
        match decode_record(&bytes[at..]) {
            Decoded::Record(r, _) => Some(Intact {
                offset: at as u64,
                seq: r.seq,
            }),
            Decoded::Torn | Decoded::Corrupt(_) => None,
        }
    })
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
    /// Bytes up to the end of the last good record (zeros written ahead may follow).
    pub good_len: u64,
    /// Whether a valid seal ended the segment.
    pub sealed: bool,
    /// The first damage. `None` for a clean segment.
    pub damage: Option<Damage>,
}

impl Scan {
    /// Whether this segment ends in a torn tail that may be cut: damage that may be torn
    /// ([`Damage::may_be_torn`]) in the `last` segment, which is not sealed (a sealed segment
    /// was fsynced whole before the next one was created, so any damage in it is corruption).
    /// Every reader of a ledger decides by this one rule.
    pub fn torn_tail(&self, last: bool) -> bool {
        last && !self.sealed && self.damage.as_ref().is_some_and(Damage::may_be_torn)
    }
}

/// Reads a whole segment, calling `each` for every intact data record up to the first damage.
///
/// A seal must be the last record and agree with what precedes it; sequence numbers must rise
/// by one from the header's `first_seq`; only zero bytes may follow the last record. After
/// damage, the rest of the segment is searched for an intact record ([`resync`]), which is
/// reported, never read as data.
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
    let mut damage = None;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if scan.sealed {
            if !zeros(rest) {
                damage = Some("data after the seal".to_string());
            }
            break;
        }
        let (record, len) = match decode_record(rest) {
            Decoded::Record(r, len) => (r, len),
            // Space the writer zeroed ahead of its records: the clean end.
            _ if zeros(rest) => break,
            Decoded::Torn => {
                damage = Some(format!("torn record ({} bytes left)", bytes.len() - at));
                break;
            }
            Decoded::Corrupt(why) => {
                damage = Some(why);
                break;
            }
        };
        // A seal repeats the last data record's number; data records count up by one.
        let expected = match (record.kind, scan.last_seq) {
            (SEAL, Some(last)) => last,
            (SEAL, None) => {
                damage = Some("a seal on an empty segment".to_string());
                break;
            }
            (_, last) => last.map_or(header.first_seq, |s| s + 1),
        };
        if record.seq != expected {
            damage = Some(format!("sequence {} where {expected} was due", record.seq));
            break;
        }
        if record.kind == SEAL {
            if record.payload != seal_payload(record.seq, scan.records) {
                damage = Some("the seal disagrees with the segment".to_string());
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
    let next_seq = scan.last_seq.map_or(header.first_seq, |s| s + 1);
    scan.damage = damage.map(|reason| {
        let intact_after = resync(bytes, at, next_seq);
        Damage {
            offset: at as u64,
            reason,
            intact_after,
            unwritten_page: intact_after
                .and_then(|intact| unwritten_page(bytes, at, intact.offset as usize)),
        }
    });
    Ok(scan)
}

/// Whether every byte is zero: space written ahead, not yet used.
fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// What the fuzz target and its corpus test run on arbitrary bytes: the decoder and the segment
/// scan must never panic, never read past the input, and must stop at the first damage.
pub fn check_decoder(bytes: &[u8]) {
    let mut at = 0;
    while at < bytes.len() {
        match decode_record(&bytes[at..]) {
            Decoded::Record(r, len) => {
                assert!(len >= FRAME_LEN && at + len <= bytes.len());
                assert_eq!(r.payload.len(), len - FRAME_LEN);
                at += len;
            }
            Decoded::Torn | Decoded::Corrupt(_) => break,
        }
    }
    let mut seen = 0u64;
    let mut last = None;
    if let Ok(scan) = scan_segment(bytes, |r| {
        assert!(
            last.is_none_or(|l: u64| r.seq == l + 1),
            "sequence numbers count up"
        );
        last = Some(r.seq);
        seen += 1;
    }) {
        assert_eq!(scan.records, seen);
        assert!(scan.good_len as usize <= bytes.len());
        if let Some(damage) = scan.damage {
            assert_eq!(
                damage.offset, scan.good_len,
                "damage starts where good data ends"
            );
            if let Some(intact) = damage.intact_after {
                assert!(
                    intact.offset >= damage.offset,
                    "an intact record after the damage"
                );
                let Decoded::Record(r, _) = decode_record(&bytes[intact.offset as usize..]) else {
                    panic!("the record found after the damage decodes");
                };
                assert_eq!(r.seq, intact.seq);
                let next = scan.last_seq.map_or(scan.header.first_seq, |s| s + 1);
                assert!(r.seq >= next, "numbered after the last good record");
            }
            if let Some(page) = &damage.unwritten_page {
                let intact = damage.intact_after.expect("a page before an intact record");
                assert!(damage.offset <= page.start && page.end <= intact.offset);
                assert_eq!(page.end % PAGE_LEN as u64, 0, "the page ends aligned");
                let len = page.end - page.start;
                assert!((FRAME_LEN as u64..=PAGE_LEN as u64).contains(&len));
                assert!(page.start == damage.offset || len == PAGE_LEN as u64);
                assert!(zeros(&bytes[page.start as usize..page.end as usize]));
            }
        } else {
            assert!(
                zeros(&bytes[scan.good_len as usize..]),
                "a clean end is zeros"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: u64 = 10;

    /// An open segment: its header and `n` records from `first_seq`; where each record starts.
    fn open_segment(first_seq: u64, n: u64) -> (Vec<u8>, Vec<usize>) {
        let header = Header {
            node: 1,
            segment: 0,
            first_seq,
        };
        let mut b = header.encode().to_vec();
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(b.len());
            encode_record(first_seq + i, 1, format!("payload {i}").as_bytes(), &mut b);
        }
        (b, starts)
    }

    fn damage_of(bytes: &[u8]) -> Damage {
        scan_segment(bytes, |_| {}).unwrap().damage.expect("damage")
    }

    #[test]
    fn an_intact_record_after_damage_is_found_and_the_damage_is_not_torn() {
        let (mut b, starts) = open_segment(FIRST, 5);
        b[starts[1] + FRAME_LEN + 2] ^= 0x08; // record 11's payload
        let damage = damage_of(&b);
        assert_eq!(damage.offset, starts[1] as u64);
        assert_eq!(damage.reason, "CRC mismatch");
        let intact = Intact {
            offset: starts[2] as u64,
            seq: FIRST + 2,
        };
        assert_eq!(damage.intact_after, Some(intact));
        assert!(!damage.may_be_torn());
        assert!(damage.to_string().contains("not a torn write"), "{damage}");

        // A flipped length no longer leads to the next record; the search does not need it.
        let (mut b, starts) = open_segment(FIRST, 5);
        b[starts[3]] ^= 0x01;
        let damage = damage_of(&b);
        assert_eq!(damage.offset, starts[3] as u64);
        assert_eq!(damage.intact_after.map(|i| i.seq), Some(FIRST + 4));
    }

    #[test]
    fn zeros_after_a_torn_record_are_not_taken_for_a_record() {
        for first_seq in [FIRST, 0] {
            let (mut b, starts) = open_segment(first_seq, 3);
            // The last record cut short, then the zeros the writer wrote ahead.
            b.truncate(starts[2] + FRAME_LEN + 3);
            b.resize(b.len() + 4096, 0);
            let damage = damage_of(&b);
            assert_eq!(damage.offset, starts[2] as u64, "from {first_seq}");
            assert_eq!(damage.intact_after, None, "from {first_seq}");
            assert!(damage.may_be_torn());
            // Where a sequence number of zero would do, the CRC alone tells zeros from a record.
            assert_eq!(resync(&b, starts[2], 0), None, "from {first_seq}");
        }
        // A first record torn, with zeros after it: nothing good, nothing intact.
        let (mut b, starts) = open_segment(0, 1);
        b.truncate(starts[0] + 5);
        b.resize(b.len() + 4096, 0);
        assert_eq!(damage_of(&b).intact_after, None);
    }

    #[test]
    fn a_record_numbered_at_or_before_the_last_good_one_is_not_counted() {
        let (mut b, starts) = open_segment(FIRST, 3);
        let stale = b[starts[1]..starts[2]].to_vec(); // record 11, intact
        b.extend_from_slice(&[0xff; 40]);
        b.extend_from_slice(&stale);
        b.resize(b.len() + 100, 0);
        let damage = damage_of(&b);
        assert_eq!(damage.offset, (starts[2] + stale.len()) as u64);
        assert_eq!(damage.intact_after, None, "record 11 comes before 13");

        // One numbered after the last good record is.
        let at = b.len();
        encode_record(FIRST + 7, 1, b"later", &mut b);
        let damage = damage_of(&b);
        let intact = Intact {
            offset: at as u64,
            seq: FIRST + 7,
        };
        assert_eq!(damage.intact_after, Some(intact));
    }

    /// The open segment of one group written whole: `n` records of `payload_len` non-zero
    /// bytes from [`FIRST`], then zeros written ahead; where each record starts.
    fn group(n: u64, payload_len: usize) -> (Vec<u8>, Vec<usize>) {
        let header = Header {
            node: 1,
            segment: 0,
            first_seq: FIRST,
        };
        let mut b = header.encode().to_vec();
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(b.len());
            let payload = vec![b'a' + (i % 26) as u8; payload_len];
            encode_record(FIRST + i, 1, &payload, &mut b);
        }
        b.resize(b.len() + 2 * PAGE_LEN, 0);
        (b, starts)
    }

    /// The record holding byte `at`.
    fn record_at(starts: &[usize], at: usize) -> usize {
        starts.iter().rposition(|&s| s <= at).unwrap()
    }

    #[test]
    fn a_page_of_the_last_group_that_never_landed_may_be_torn() {
        let (b, starts) = group(60, 300);
        let page = 2 * PAGE_LEN; // well inside the records, which run to about 19,000
        let mut holed = b.clone();
        holed[page..page + PAGE_LEN].fill(0);
        let damage = damage_of(&holed);
        // Cut at the record that runs into the page; intact records follow the page.
        let cut = record_at(&starts, page);
        assert_eq!(damage.offset, starts[cut] as u64);
        let intact = damage.intact_after.expect("intact records after the page");
        assert!(intact.offset >= (page + PAGE_LEN) as u64, "{damage}");
        let page_range = page as u64..(page + PAGE_LEN) as u64;
        assert_eq!(damage.unwritten_page, Some(page_range.clone()));
        assert!(damage.may_be_torn(), "{damage}");
        assert!(
            damage.to_string().contains("never acknowledged"),
            "{damage}"
        );

        // Several pages missing, the second ending mid-record: the first is enough.
        let mut holed = b.clone();
        holed[page..page + 2 * PAGE_LEN].fill(0);
        let damage = damage_of(&holed);
        assert_eq!(damage.offset, starts[cut] as u64);
        assert_eq!(damage.unwritten_page, Some(page_range));
        assert!(damage.may_be_torn());

        // A record starting on the page's first byte: zeros where a record should start,
        // then non-zero bytes. 36 + 4 * (17 + 2022) = 8192.
        let (mut b, starts) = group(20, 2022);
        assert_eq!(starts[4], page);
        b[page..page + PAGE_LEN].fill(0);
        let damage = damage_of(&b);
        assert_eq!(damage.offset, page as u64);
        // Records 4 and 5 lie in the page, record 6 starts in it: 7 is the first intact.
        assert_eq!(damage.intact_after.map(|i| i.seq), Some(FIRST + 7));
        assert_eq!(
            damage.unwritten_page,
            Some(page as u64..(page + PAGE_LEN) as u64)
        );
        assert!(damage.may_be_torn(), "{damage}");
    }

    #[test]
    fn a_flipped_byte_where_the_page_was_is_corruption() {
        let (mut b, starts) = group(60, 300);
        let page = 2 * PAGE_LEN;
        b[page + 100] ^= 0x10;
        let damage = damage_of(&b);
        assert_eq!(damage.offset, starts[record_at(&starts, page + 100)] as u64);
        assert!(damage.intact_after.is_some());
        assert_eq!(damage.unwritten_page, None);
        assert!(!damage.may_be_torn(), "{damage}");
        assert!(damage.to_string().contains("not a torn write"), "{damage}");
    }

    #[test]
    fn a_run_of_zeros_shorter_than_an_aligned_page_is_corruption() {
        let (b, starts) = group(60, 300);
        let page = 2 * PAGE_LEN;
        // One byte short of the page; a page's length, not aligned, from inside a record.
        assert!(!starts.contains(&(page + 100)));
        for zeroed in [
            page..page + PAGE_LEN - 1,
            page + 1..page + PAGE_LEN + 1,
            page + 100..page + 100 + PAGE_LEN,
        ] {
            let mut holed = b.clone();
            holed[zeroed.clone()].fill(0);
            let damage = damage_of(&holed);
            assert!(damage.intact_after.is_some(), "{zeroed:?}: {damage}");
            assert_eq!(damage.unwritten_page, None, "{zeroed:?}");
            assert!(!damage.may_be_torn(), "{zeroed:?}: {damage}");
        }
    }

    /// The write's first page, shared with the last durable record, never landed while a later
    /// one did: it reads as that record's bytes, then zeros from where the write began.
    #[test]
    fn the_first_page_of_a_write_that_never_landed_counts_from_the_damage() {
        // 36 + 10 * (17 + 379) = 3996: record 10 starts 100 bytes before the page's end.
        let (b, starts) = group(40, 379);
        assert_eq!(starts[10], PAGE_LEN - 100);
        let mut holed = b.clone();
        holed[starts[10]..PAGE_LEN].fill(0);
        let damage = damage_of(&holed);
        assert_eq!(damage.offset, starts[10] as u64);
        assert_eq!(
            damage.unwritten_page,
            Some(starts[10] as u64..PAGE_LEN as u64)
        );
        assert!(damage.may_be_torn(), "{damage}");

        // Fewer zeros than a frame could be a record's own first bytes: not counted.
        // 36 + 10 * (17 + 388) = 4086: record 10 starts 10 bytes before the page's end.
        let (b, starts) = group(40, 388);
        assert_eq!(starts[10], PAGE_LEN - 10);
        let mut holed = b.clone();
        holed[starts[10]..PAGE_LEN].fill(0);
        let damage = damage_of(&holed);
        assert_eq!(damage.offset, starts[10] as u64);
        assert_eq!(damage.unwritten_page, None);
        assert!(!damage.may_be_torn(), "{damage}");

        // Zeros from the damage that stop short of the page's end are not counted either.
        let (b, starts) = group(40, 379);
        let mut holed = b.clone();
        holed[starts[10]..PAGE_LEN - 1].fill(0);
        assert!(!damage_of(&holed).may_be_torn());
    }
}
