//! The ledger format and writer: records round-trip; truncation at every byte offset is
//! detected by `verify` and cut by recovery; random byte flips are detected, cut when they may
//! be a torn write (nothing intact after them) and refused when intact records follow; a page
//! a power cut kept from the disk, with intact records after it, is cut; nothing after damage
//! is read as data; zeros written ahead of the records end a segment cleanly, and
//! are trimmed on a clean close; concurrent appends get unique, gapless sequence numbers;
//! segments roll and seal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redrain::ledger::{
    decode_record, encode_record, segments, verify, Decoded, Ledger, LedgerConfig, FRAME_LEN,
    HEADER_LEN,
};

fn config(dir: &Path, segment_bytes: u64) -> LedgerConfig {
    LedgerConfig {
        dir: dir.to_path_buf(),
        node: 3,
        segment_bytes,
        sync: true,
    }
}

/// A record read back: (seq, kind, payload).
type Owned = (u64, u8, Vec<u8>);

/// Every data record of the ledger in `dir` before any damage, and the damage's offset and
/// reason.
fn read_all(dir: &Path) -> (Vec<Owned>, Option<(u64, String)>) {
    let mut out = Vec::new();
    let v = verify(dir, |r| out.push((r.seq, r.kind, r.payload.to_vec()))).unwrap();
    (out, v.damage.map(|(_, d)| (d.offset, d.reason)))
}

fn payload(i: u64) -> Vec<u8> {
    format!("record {i:04} of the test ledger").into_bytes()
}

/// Writes `n` records into one segment; its path, its bytes and the records read back.
fn one_segment(dir: &Path, n: u64) -> (PathBuf, Vec<u8>, Vec<Owned>) {
    write(dir, 1 << 20, n);
    let path = segments(dir).unwrap()[0].1.clone();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes, read_all(dir).0)
}

/// Appends one record of kind 2 after a reopen; its sequence number.
fn append_after(ledger: &Ledger, payload: &[u8]) -> u64 {
    ledger.append_blocking(vec![(2, payload.to_vec())]).unwrap()
}

/// Writes `n` single-record appends and closes the ledger.
fn write(dir: &Path, segment_bytes: u64, n: u64) {
    let (ledger, _) = Ledger::open(config(dir, segment_bytes)).unwrap();
    for i in 0..n {
        assert_eq!(ledger.append_blocking(vec![(1, payload(i))]).unwrap(), i);
    }
}

proptest! {
    #[test]
    fn records_round_trip(
        records in prop::collection::vec((1u8.., prop::collection::vec(any::<u8>(), 0..300)), 1..20),
        first in 0u64..u64::MAX / 2,
    ) {
        let mut buf = Vec::new();
        for (i, (kind, p)) in records.iter().enumerate() {
            encode_record(first + i as u64, *kind, p, &mut buf);
        }
        let mut at = 0;
        for (i, (kind, p)) in records.iter().enumerate() {
            let Decoded::Record(r, len) = decode_record(&buf[at..]) else {
                panic!("record {i} decodes");
            };
            prop_assert_eq!(r.seq, first + i as u64);
            prop_assert_eq!(r.kind, *kind);
            prop_assert_eq!(r.payload, &p[..]);
            prop_assert_eq!(len, FRAME_LEN + p.len());
            at += len;
        }
        prop_assert_eq!(at, buf.len());
        // Any proper prefix of the last record is torn, never a record.
        let last = buf.len() - FRAME_LEN - records.last().unwrap().1.len();
        for cut in last..buf.len() {
            prop_assert_eq!(decode_record(&buf[last..cut]), Decoded::Torn);
        }
    }
}

#[test]
fn truncating_a_sealed_segment_anywhere_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    // Five records fill segment 0; the sixth append seals it and starts segment 1.
    let record_len = (FRAME_LEN + payload(0).len()) as u64;
    write(dir.path(), HEADER_LEN as u64 + 5 * record_len, 6);
    let files = segments(dir.path()).unwrap();
    assert_eq!(files.len(), 2);
    let (all, damage) = read_all(dir.path());
    assert_eq!(damage, None);
    assert_eq!(all.len(), 6);
    let original = std::fs::read(&files[0].1).unwrap();
    for cut in 0..original.len() {
        std::fs::write(&files[0].1, &original[..cut]).unwrap();
        let (read, damage) = read_all(dir.path());
        assert!(damage.is_some(), "a cut at byte {cut} is detected");
        assert!(
            read.len() <= 5 && read[..] == all[..read.len()],
            "cut {cut}: a prefix"
        );
    }
}

#[test]
fn recovery_cuts_a_torn_tail_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, original, all) = one_segment(dir.path(), 5);
    for cut in HEADER_LEN..original.len() {
        std::fs::write(&path, &original[..cut]).unwrap();
        let whole = (cut - HEADER_LEN) / (FRAME_LEN + payload(0).len());
        let (ledger, recovery) = Ledger::open(config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(recovery.next_seq, whole as u64, "cut at {cut}");
        let at_boundary = (cut - HEADER_LEN).is_multiple_of(FRAME_LEN + payload(0).len());
        assert_eq!(recovery.cut.is_some(), !at_boundary, "cut at {cut}");
        // Writing goes on from the last whole record.
        assert_eq!(append_after(&ledger, b"after"), whole as u64);
        drop(ledger);
        let (read, damage) = read_all(dir.path());
        assert_eq!(
            damage, None,
            "cut at {cut}: the ledger verifies after recovery"
        );
        assert_eq!(read[..whole], all[..whole]);
        assert_eq!(read[whole], (whole as u64, 2, b"after".to_vec()));
        assert_eq!(read.len(), whole + 1);
    }
}

#[test]
fn zeros_written_ahead_end_a_segment_cleanly_and_a_clean_close_trims_them() {
    let dir = tempfile::tempdir().unwrap();
    let records_end = HEADER_LEN as u64 + 5 * (FRAME_LEN + payload(0).len()) as u64;
    let (ledger, _) = Ledger::open(config(dir.path(), 1 << 20)).unwrap();
    for i in 0..5 {
        ledger.append_blocking(vec![(1, payload(i))]).unwrap();
    }
    let path = segments(dir.path()).unwrap()[0].1.clone();
    let open_len = std::fs::metadata(&path).unwrap().len();
    assert!(
        open_len > records_end,
        "zeros are written ahead: {open_len} bytes"
    );
    let (read, damage) = read_all(dir.path());
    assert_eq!(
        (read.len(), damage),
        (5, None),
        "the open segment reads clean"
    );
    drop(ledger);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), records_end);
}

#[test]
fn zeros_after_the_last_record_are_a_clean_end_and_anything_else_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (path, original, all) = one_segment(dir.path(), 5);
    let with_zeros = |mut bytes: Vec<u8>| {
        bytes.resize(bytes.len() + 3000, 0);
        bytes
    };

    // As if the process died with zeros written ahead: nothing is cut, writing goes on after
    // the last record and a clean close trims what is left.
    std::fs::write(&path, with_zeros(original.clone())).unwrap();
    assert_eq!(read_all(dir.path()), (all.clone(), None));
    let (ledger, recovery) = Ledger::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!((recovery.next_seq, recovery.cut), (5, None));
    assert_eq!(append_after(&ledger, b"after"), 5);
    drop(ledger);
    let (read, damage) = read_all(dir.path());
    assert_eq!((read.len(), damage, &read[..5]), (6, None, &all[..]));
    assert_eq!(read[5], (5, 2, b"after".to_vec()));

    // A torn record before the zeros is damage, cut at the record's start.
    let record_len = FRAME_LEN + payload(0).len();
    for cut in [1, FRAME_LEN, record_len - 1] {
        let torn = original[..original.len() - record_len + cut].to_vec();
        std::fs::write(&path, with_zeros(torn)).unwrap();
        let (read, damage) = read_all(dir.path());
        assert_eq!(read, all[..4], "cut {cut}");
        assert_eq!(damage.unwrap().0, (original.len() - record_len) as u64);
        let (_, recovery) = Ledger::open(config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(recovery.next_seq, 4, "cut {cut}");
        assert!(recovery.cut.is_some(), "cut {cut}");
    }

    // One non-zero byte anywhere in the zeros is damage where the records end.
    for at in [0, 1, 1000, 2999] {
        let mut bytes = with_zeros(original.clone());
        bytes[original.len() + at] = 0x40;
        std::fs::write(&path, bytes).unwrap();
        let (read, damage) = read_all(dir.path());
        assert_eq!(read, all, "flip at {at}");
        assert_eq!(damage.unwrap().0, original.len() as u64, "flip at {at}");
    }
}

#[test]
fn a_sealed_segment_may_keep_zeros_after_its_seal_but_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let record_len = (FRAME_LEN + payload(0).len()) as u64;
    write(dir.path(), HEADER_LEN as u64 + 5 * record_len, 6);
    let sealed = segments(dir.path()).unwrap()[0].1.clone();
    let mut bytes = std::fs::read(&sealed).unwrap();
    let seal_end = bytes.len();
    // As if the machine died after the seal was written but before the zeros were trimmed.
    bytes.resize(seal_end + 500, 0);
    std::fs::write(&sealed, &bytes).unwrap();
    let (read, damage) = read_all(dir.path());
    assert_eq!((read.len(), damage), (6, None));
    bytes[seal_end + 499] = 1;
    std::fs::write(&sealed, &bytes).unwrap();
    let (_, damage) = read_all(dir.path());
    assert_eq!(damage.unwrap().0, seal_end as u64);
}

#[test]
fn byte_flips_are_detected_and_nothing_after_them_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (path, original, all) = one_segment(dir.path(), 40);
    let record_len = FRAME_LEN + payload(0).len();
    let mut rng = SmallRng::seed_from_u64(11);
    for _ in 0..300 {
        let mut bytes = original.clone();
        let at = rng.gen_range(0..bytes.len());
        bytes[at] ^= 1 << rng.gen_range(0..8);
        std::fs::write(&path, &bytes).unwrap();
        let (read, damage) = read_all(dir.path());
        let (offset, _) = damage.unwrap_or_else(|| panic!("a flip at byte {at} is detected"));
        assert!(
            offset <= at as u64,
            "damage reported at {offset}, after the flip at {at}"
        );
        assert_eq!(
            read[..],
            all[..read.len()],
            "only records before the flip are read"
        );
        if at < HEADER_LEN {
            assert!(Ledger::open(config(dir.path(), 1 << 20)).is_err());
            continue;
        }
        // A flip in the last record may be a torn write and is cut; one with intact records
        // after it is not, and is refused with the file left as it was.
        let in_last = (at - HEADER_LEN) / record_len == all.len() - 1;
        match Ledger::open(config(dir.path(), 1 << 20)) {
            Ok((ledger, recovery)) => {
                assert!(in_last, "a flip at byte {at} under intact records was cut");
                assert!(recovery.cut.is_some());
                assert_eq!(recovery.next_seq, read.len() as u64);
                drop(ledger);
                assert_eq!(read_all(dir.path()), (read, None));
            }
            Err(e) => {
                assert!(!in_last, "a flip at byte {at} in the last record: {e}");
                assert!(e.to_string().contains("not a torn write"), "{e}");
                assert_eq!(std::fs::read(&path).unwrap(), bytes, "flip at byte {at}");
            }
        }
    }
}

#[test]
fn concurrent_appends_get_gapless_sequences_across_rolled_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, recovery) = Ledger::open(config(dir.path(), 4096)).unwrap();
    assert_eq!(recovery.next_seq, 0);
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let ledger = Arc::clone(&ledger);
            std::thread::spawn(move || {
                (0..200u64)
                    .map(|i| {
                        let p = format!("thread {t} append {i}").into_bytes();
                        let last = ledger.append_blocking(vec![(t + 1, p.clone()), (t + 1, p)]);
                        last.unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut acked: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acked.sort_unstable();
    let expected: Vec<u64> = (0..1600).map(|i| 2 * i + 1).collect();
    assert_eq!(acked, expected, "each append's two records are consecutive");
    drop(ledger);

    let (read, damage) = read_all(dir.path());
    assert_eq!(damage, None);
    assert_eq!(read.len(), 3200);
    assert!(read.iter().enumerate().all(|(i, r)| r.0 == i as u64));
    for pair in read.chunks(2) {
        assert_eq!(pair[0].2, pair[1].2, "an append's records stay together");
    }
    let files = segments(dir.path()).unwrap();
    assert!(files.len() > 10, "4 KiB segments rolled: {}", files.len());

    // Reopening after a clean close starts a new segment after the last sealed one, or goes
    // on in the open one, and keeps the numbering.
    let (ledger, recovery) = Ledger::open(config(dir.path(), 4096)).unwrap();
    assert_eq!(recovery.next_seq, 3200);
    assert_eq!(
        ledger.append_blocking(vec![(9, b"x".to_vec())]).unwrap(),
        3200
    );
}

#[test]
fn a_segment_whose_header_never_landed_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let record_len = (FRAME_LEN + payload(0).len()) as u64;
    // The sixth append seals segment 0 (records 0..=4) and starts segment 1.
    write(dir.path(), HEADER_LEN as u64 + 5 * record_len, 6);
    let files = segments(dir.path()).unwrap();
    assert_eq!(files.len(), 2);
    // As if the machine died while creating segment 1: before its header was durable, and
    // so before any record was written to it.
    std::fs::write(&files[1].1, &std::fs::read(&files[1].1).unwrap()[..10]).unwrap();
    let (ledger, recovery) = Ledger::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(recovery.next_seq, 5, "segment 0 sealed records 0..=4");
    assert!(recovery.cut.is_some());
    assert_eq!(append_after(&ledger, b"again"), 5);
    drop(ledger);
    let (read, damage) = read_all(dir.path());
    assert_eq!(damage, None);
    assert_eq!(
        read.iter().map(|r| r.0).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(read[5].2, b"again");
}

#[test]
fn the_cli_verifies_and_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(config(dir.path(), 1 << 20)).unwrap();
    for i in 0..6u64 {
        let json = format!(r#"{{"win": {i}}}"#).into_bytes();
        ledger
            .append_blocking(vec![(2, json), (3, vec![0xff, i as u8])])
            .unwrap();
    }
    drop(ledger);
    let redrain = env!("CARGO_BIN_EXE_redrain");
    let run = |args: &[&str]| {
        std::process::Command::new(redrain)
            .args(args)
            .output()
            .unwrap()
    };
    let d = dir.path().to_str().unwrap();

    let ok = run(&["ledger", "verify", d]);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    assert!(text.contains("12 records, last good sequence 11"), "{text}");

    let dump = run(&["ledger", "dump", d, "--from", "8"]);
    assert!(dump.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[0],
        serde_json::json!({"seq": 8, "kind": 2, "payload": {"win": 4}})
    );
    assert_eq!(
        lines[1],
        serde_json::json!({"seq": 9, "kind": 3, "payload_hex": "ff04"})
    );

    let path = segments(dir.path()).unwrap()[0].1.clone();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let bad = run(&["ledger", "verify", d]);
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{text}");
    assert!(text.contains("11 records, last good sequence 10"), "{text}");
    assert!(text.contains("CRC mismatch"), "{text}");
}

/// Background commits (`Urgency::Batch`) wait at most `BATCH_WAIT` for company, so one alone
/// still lands; every commit is one counted group when each waits for the last; and what was
/// committed either way is there after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_commits_land_alone_and_survive_reopen() {
    use redrain::storage::{Cf, Op, Storage, Urgency};
    let dir = tempfile::tempdir().unwrap();
    let open = || Storage::open(&dir.path().join("db"), &dir.path().join("ledger"), 1).unwrap();
    let key = |i: u32| format!("k{i}").into_bytes();
    let storage = open();
    let before = storage.groups();
    for i in 0..10u32 {
        let urgency = if i % 2 == 0 {
            Urgency::Batch
        } else {
            Urgency::Now
        };
        let op = Op::Put(Cf::Meta, key(i), i.to_le_bytes().to_vec());
        storage.commit_as(vec![op], urgency).await.unwrap();
    }
    assert_eq!(
        storage.groups() - before,
        10,
        "one group per commit awaited in turn"
    );

    // Many at once: they share groups, and a commit a client waits on is among them.
    let storage = Arc::new(storage);
    let tasks: Vec<_> = (10..200u32)
        .map(|i| {
            let s = storage.clone();
            let urgency = if i == 150 {
                Urgency::Now
            } else {
                Urgency::Batch
            };
            tokio::spawn(async move {
                let op = Op::Put(Cf::Meta, key(i), i.to_le_bytes().to_vec());
                s.commit_as(vec![op], urgency).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let groups = storage.groups() - before - 10;
    assert!((1..190).contains(&groups), "190 commits in {groups} groups");

    drop(Arc::into_inner(storage).expect("no other owner"));
    let storage = open();
    for i in 0..200u32 {
        let got = storage.get(Cf::Meta, &key(i)).unwrap();
        assert_eq!(got, Some(i.to_le_bytes().to_vec()), "key {i} after reopen");
    }
}

/// A batch one ledger record cannot hold is refused before anything is written, at both
/// depths: the storage commit, and the writer itself (which then cuts nothing, since it wrote
/// nothing). The ledger stays clean and the next commit lands.
#[test]
fn a_batch_larger_than_one_record_is_refused_and_writes_nothing() {
    use redrain::ledger::{Tail, MAX_PAYLOAD};
    use redrain::storage::{Cf, Op, Storage};
    let dir = tempfile::tempdir().unwrap();
    let open = || Storage::open(&dir.path().join("db"), &dir.path().join("ledger"), 1).unwrap();
    let storage = open();
    let big = Op::Put(Cf::Meta, b"big".to_vec(), vec![7; MAX_PAYLOAD]);
    let refused = storage.commit_blocking(vec![big]).unwrap_err();
    assert!(
        refused.to_string().contains("nothing was written"),
        "{refused}"
    );
    let small = Op::Put(Cf::Meta, b"small".to_vec(), b"1".to_vec());
    storage.commit_blocking(vec![small]).unwrap();
    drop(storage);
    let (records, damage) = read_all(&dir.path().join("ledger"));
    assert_eq!((records.len(), damage), (1, None), "only the small batch");
    let storage = open();
    assert_eq!(storage.get(Cf::Meta, b"big").unwrap(), None);
    assert_eq!(
        storage.get(Cf::Meta, b"small").unwrap(),
        Some(b"1".to_vec())
    );
    drop(storage);

    let dir = tempfile::tempdir().unwrap();
    let (mut tail, _) = Tail::recover(config(dir.path(), 1 << 20), None).unwrap();
    let mut buf = Vec::new();
    let (first, second, too_big) = (payload(0), payload(1), vec![0u8; MAX_PAYLOAD + 1]);
    let group = [vec![(1u8, first.as_slice())], vec![(1, too_big.as_slice())]];
    assert!(tail.write(group, &mut buf).is_err());
    assert_eq!(
        tail.write([[(1u8, second.as_slice())]], &mut buf).unwrap(),
        [0]
    );
    drop(tail);
    let (records, damage) = read_all(dir.path());
    assert_eq!(
        records,
        [(0, 1, payload(1))],
        "the refused group left nothing"
    );
    assert_eq!(damage, None);
}

/// Damage before records RocksDB has applied (and so were acknowledged) is not a torn write:
/// start-up refuses it and leaves the file as it was, in the open segment (which recovery
/// would otherwise cut) and in a sealed one (which replay skips as applied).
#[test]
fn damage_under_acknowledged_records_is_refused_not_cut() {
    use redrain::storage::{Cf, Op, Storage};
    let flip_and_reopen = |records: u32, value: usize, segment: usize| {
        let dir = tempfile::tempdir().unwrap();
        let (db, ledger) = (dir.path().join("db"), dir.path().join("ledger"));
        let storage = Storage::open(&db, &ledger, 1).unwrap();
        for i in 0..records {
            let op = Op::Put(Cf::Wins, format!("w{i}").into_bytes(), vec![1; value]);
            storage.commit_blocking(vec![op]).unwrap();
        }
        drop(storage);
        let files = segments(&ledger).unwrap();
        assert!(files.len() > segment, "{} segments", files.len());
        let path = &files[segment].1;
        let mut bytes = std::fs::read(path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x20;
        std::fs::write(path, &bytes).unwrap();
        let refused = Storage::open(&db, &ledger, 1).unwrap_err().to_string();
        assert!(refused.contains("refusing"), "{refused}");
        assert_eq!(
            std::fs::read(path).unwrap(),
            bytes,
            "the file is left as it was"
        );
    };
    flip_and_reopen(10, 100, 0);
    // 70 records of 1,000,000 bytes pass the 64 MiB segment size: segment 0 is sealed.
    flip_and_reopen(70, 1_000_000, 0);

    // A segment cut short at a record boundary, and another node's ledger, are refused too.
    let dir = tempfile::tempdir().unwrap();
    let (db, ledger) = (dir.path().join("db"), dir.path().join("ledger"));
    let storage = Storage::open(&db, &ledger, 1).unwrap();
    for i in 0..3u32 {
        let op = Op::Put(Cf::Wins, format!("w{i}").into_bytes(), vec![1; 10]);
        storage.commit_blocking(vec![op]).unwrap();
    }
    drop(storage);
    let refused = Storage::open(&db, &ledger, 2).unwrap_err().to_string();
    assert!(
        refused.contains("written by node 1, but this start is node 2"),
        "{refused}"
    );
    let path = segments(&ledger).unwrap()[0].1.clone();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(HEADER_LEN as u64).unwrap();
    let refused = Storage::open(&db, &ledger, 1).unwrap_err().to_string();
    assert!(refused.contains("refusing"), "{refused}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), HEADER_LEN as u64);
}

/// A data dir whose RocksDB closed (and so flushed) after `flushed` commits, and whose ledger
/// then took `after` more records, each written and fsynced on its own (so acknowledged) but
/// not in RocksDB's files: as if the process died before RocksDB's next flush, zeros written
/// ahead left in place. The ledger directory, its segment, and where each record starts.
fn acknowledged_since_the_last_flush(
    dir: &Path,
    flushed: u32,
    after: u32,
) -> (PathBuf, PathBuf, Vec<usize>) {
    use redrain::ledger::{Tail, DEFAULT_SEGMENT_BYTES};
    use redrain::storage::{encode_ops, Cf, Op, Storage, BATCH};
    let win = |i: u32| Op::Put(Cf::Wins, format!("w{i}").into_bytes(), vec![1; 100]);
    let (db, ledger) = (dir.join("db"), dir.join("ledger"));
    let storage = Storage::open(&db, &ledger, 1).unwrap();
    for i in 0..flushed {
        storage.commit_blocking(vec![win(i)]).unwrap();
    }
    drop(storage);
    let config = LedgerConfig {
        dir: ledger.clone(),
        node: 1,
        segment_bytes: DEFAULT_SEGMENT_BYTES,
        sync: true,
    };
    let (mut tail, _) = Tail::recover(config, None).unwrap();
    let mut buf = Vec::new();
    for i in flushed..flushed + after {
        let mut record = Vec::new();
        encode_ops(&[win(i)], &mut record);
        let last = tail
            .write([[(BATCH, record.as_slice())]], &mut buf)
            .unwrap();
        assert_eq!(last, [u64::from(i)]);
    }
    // A crash, not a close: the zeros written ahead stay.
    std::mem::forget(tail);
    let files = segments(&ledger).unwrap();
    assert_eq!(files.len(), 1);
    let path = files[0].1.clone();
    let bytes = std::fs::read(&path).unwrap();
    let mut starts = vec![HEADER_LEN];
    while let Decoded::Record(_, len) = decode_record(&bytes[*starts.last().unwrap()..]) {
        starts.push(starts.last().unwrap() + len);
    }
    starts.pop(); // where the zeros begin
    assert_eq!(starts.len(), (flushed + after) as usize);
    (ledger, path, starts)
}

/// Runs `redrain ledger verify DIR`: whether it passed, and what it printed.
fn cli_verify(dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redrain"))
        .args(["ledger", "verify", dir.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A flipped byte in a record written after RocksDB's last flush, with intact (acknowledged)
/// records after it, is corruption, not a torn tail: start-up refused to cut it only when
/// the damage lay before RocksDB's persisted mark, and cut the acknowledged records after it
/// otherwise. Now start-up refuses and changes no file, reconciliation fails, and `ledger
/// verify` calls it corruption.
#[test]
fn a_flip_under_records_acknowledged_since_the_last_flush_is_refused_not_cut() {
    use redrain::storage::Storage;
    let dir = tempfile::tempdir().unwrap();
    // RocksDB's mark is at record 4; records 5..=14 are only in the ledger.
    let (ledger, path, starts) = acknowledged_since_the_last_flush(dir.path(), 5, 10);
    let mut bytes = std::fs::read(&path).unwrap();
    let damaged = starts[8];
    bytes[damaged + FRAME_LEN + 10] ^= 0x04; // record 8's payload
    std::fs::write(&path, &bytes).unwrap();

    let refused = Storage::open(&dir.path().join("db"), &ledger, 1)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("refusing"), "{refused}");
    assert!(
        refused.contains(&format!("offset {damaged}: CRC mismatch")),
        "{refused}"
    );
    let intact = format!("sequence 9 at offset {}", starts[9]);
    assert!(refused.contains(&intact), "{refused}");
    assert!(refused.contains("collector's copy"), "{refused}");
    assert!(refused.contains("redrain ledger verify"), "{refused}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file is left as it was"
    );

    let refused = redrain::reconcile::reconcile(&[dir.path().to_path_buf()], 0).unwrap_err();
    assert!(refused.contains(&intact), "{refused}");
    assert!(refused.contains("not a torn write"), "{refused}");

    let (ok, text) = cli_verify(&ledger);
    assert!(!ok, "{text}");
    assert!(text.contains("8 records, last good sequence 7"), "{text}");
    assert!(text.contains("corrupt: "), "{text}");
    assert!(text.contains(&intact), "{text}");
    assert!(!text.contains("torn tail"), "{text}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file is left as it was"
    );
}

/// A last record cut short with only zeros after it is what a crash mid-write leaves: start-up
/// still cuts it and goes on, reconciliation reads up to it, and `ledger verify` calls it a
/// torn tail.
#[test]
fn a_torn_last_record_is_still_cut_and_reconciled() {
    use redrain::storage::{Cf, Storage};
    let dir = tempfile::tempdir().unwrap();
    let (ledger, path, starts) = acknowledged_since_the_last_flush(dir.path(), 5, 10);
    let mut bytes = std::fs::read(&path).unwrap();
    let torn = starts[14];
    bytes[torn + FRAME_LEN + 20..].fill(0); // record 14 written only in part
    std::fs::write(&path, &bytes).unwrap();

    let report = redrain::reconcile::reconcile(&[dir.path().to_path_buf()], 0).unwrap();
    assert_eq!(report.records, 14);

    let (ok, text) = cli_verify(&ledger);
    assert!(!ok, "{text}");
    assert!(text.contains("14 records, last good sequence 13"), "{text}");
    assert!(text.contains("torn tail: "), "{text}");
    assert!(
        text.contains(&format!("offset {torn}: CRC mismatch")),
        "{text}"
    );

    let storage = Storage::open(&dir.path().join("db"), &ledger, 1).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        torn as u64,
        "cut at record 14"
    );
    assert!(
        storage.get(Cf::Wins, b"w13").unwrap().is_some(),
        "record 13 replayed"
    );
    assert_eq!(storage.get(Cf::Wins, b"w14").unwrap(), None);
    drop(storage);
    let (read, damage) = read_all(&ledger);
    assert_eq!((read.len(), damage), (14, None));
}

/// A power cut while a group was being written, before its fsync returned, can keep an
/// earlier page of the group from the disk and not a later one: the page still holds the zeros
/// written ahead, and intact records follow it. None of the group was acknowledged, so
/// start-up cuts at the damage and goes on (it refused until the rule learnt the page), and
/// `ledger verify` calls it a torn tail.
#[test]
fn a_page_a_power_cut_kept_from_the_disk_is_cut_as_a_torn_tail() {
    use redrain::ledger::PAGE_LEN;
    use redrain::storage::{Cf, Storage};
    let dir = tempfile::tempdir().unwrap();
    // RocksDB's mark is at record 4; records 5..=69 run past the second page.
    let (ledger, path, starts) = acknowledged_since_the_last_flush(dir.path(), 5, 65);
    let mut bytes = std::fs::read(&path).unwrap();
    let page = PAGE_LEN;
    assert!(starts[5] < page && *starts.last().unwrap() > page + PAGE_LEN);
    bytes[page..page + PAGE_LEN].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    // Cut at the record that runs into the page: the write began no later than there.
    let cut = starts.iter().rposition(|&s| s < page).unwrap();
    let intact = starts.iter().position(|&s| s >= page + PAGE_LEN).unwrap();

    let (ok, text) = cli_verify(&ledger);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("{cut} records, last good sequence {}", cut - 1)),
        "{text}"
    );
    assert!(text.contains("torn tail: "), "{text}");
    assert!(
        text.contains(&format!("offset {}: CRC mismatch", starts[cut])),
        "{text}"
    );
    assert!(
        text.contains(&format!("zeros at offsets {page}..{}", page + PAGE_LEN)),
        "{text}"
    );
    assert!(
        text.contains(&format!("sequence {intact} at offset {}", starts[intact])),
        "{text}"
    );
    assert!(!text.contains("corrupt"), "{text}");

    let report = redrain::reconcile::reconcile(&[dir.path().to_path_buf()], 0).unwrap();
    assert_eq!(report.records, cut as u64);

    let storage = Storage::open(&dir.path().join("db"), &ledger, 1).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        starts[cut] as u64,
        "cut at the damage"
    );
    let win = |i: usize| format!("w{i}").into_bytes();
    assert!(storage.get(Cf::Wins, &win(cut - 1)).unwrap().is_some());
    assert_eq!(storage.get(Cf::Wins, &win(cut)).unwrap(), None);
    assert_eq!(storage.get(Cf::Wins, &win(intact)).unwrap(), None);
    drop(storage);
    let (read, damage) = read_all(&ledger);
    assert_eq!((read.len(), damage), (cut, None));
}
