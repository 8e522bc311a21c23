//! Shipping ledger segments to a collector over HTTP: the collector ends with byte-identical
//! segments after the node (shipper) and the collector are each restarted mid-transfer; bad
//! secrets, wrong offsets and damaged records are refused and change nothing; a damaged copy
//! refuses its node (file, offset, reason) unless an append cut short explains it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use redrain::client::Conn;
use redrain::collect::{routes, Collector, Shipper};
use redrain::ledger::{segments, Ledger, LedgerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SECRET: &str = "collector-secret-0123456789";

/// A collector served on `addr` (port 0 for any) over `dir`.
async fn collector(
    dir: &Path,
    addr: &str,
) -> (std::net::SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let (_, at, tx, task) = collector_and_handle(dir, addr).await;
    (at, tx, task)
}

/// [`collector`], and the collector itself.
async fn collector_and_handle(
    dir: &Path,
    addr: &str,
) -> (
    Arc<Collector>,
    std::net::SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<()>,
) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let at = listener.local_addr().unwrap();
    let c = Arc::new(Collector::new(dir.to_path_buf(), SECRET.into()));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(redrain::server::serve(
        listener,
        routes(c.clone()),
        async move {
            let _ = rx.await;
        },
        Duration::from_secs(1),
    ));
    (c, at, tx, task)
}

/// Appends `n` two-record appends to the ledger in `dir` (node 7, 4 KiB segments).
fn write(dir: &Path, from: u64, n: u64) {
    write_as(dir, 7, 4096, from, n);
}

/// Appends `n` two-record appends to node `node`'s ledger in `dir`.
fn write_as(dir: &Path, node: u32, segment_bytes: u64, from: u64, n: u64) {
    let config = LedgerConfig {
        dir: dir.to_path_buf(),
        node,
        segment_bytes,
        sync: false,
    };
    let (ledger, _) = Ledger::open(config).unwrap();
    for i in from..from + n {
        let p = format!("draw {i} of the shipping test").into_bytes();
        ledger
            .append_blocking(vec![(1, p.clone()), (2, p)])
            .unwrap();
    }
}

fn assert_identical(node: &Path, collected: &Path) {
    assert_identical_as(7, node, collected);
}

fn assert_identical_as(id: u32, node: &Path, collected: &Path) {
    let ours = segments(node).unwrap();
    let theirs = segments(&collected.join(id.to_string())).unwrap();
    assert_eq!(ours.len(), theirs.len(), "segment count");
    for ((a, pa), (b, pb)) in ours.iter().zip(&theirs) {
        assert_eq!(a, b);
        assert!(
            std::fs::read(pa).unwrap() == std::fs::read(pb).unwrap(),
            "segment {a} differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_arrive_byte_identical_across_restarts_of_both_sides() {
    let node = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let ledger_dir = node.path().join("ledger");
    let nd = ledger_dir.clone();
    tokio::task::spawn_blocking(move || write(&nd, 0, 150))
        .await
        .unwrap();
    assert!(segments(&ledger_dir).unwrap().len() >= 4);

    let (addr, stop, task) = collector(store.path(), "127.0.0.1:0").await;
    let mut shipper = Shipper::new(ledger_dir.clone(), 7, addr, SECRET.into());
    assert!(shipper.ship_once().await.unwrap() > 0);

    // Cut the collector's newest copy mid-record, as a crash mid-append would, and restart
    // it on the same port and data.
    stop.send(()).unwrap();
    task.await.unwrap();
    let copies = segments(&store.path().join("7")).unwrap();
    let last = &copies.last().unwrap().1;
    let bytes = std::fs::read(last).unwrap();
    std::fs::write(last, &bytes[..bytes.len() - 5]).unwrap();
    let (addr2, stop, task) = collector(store.path(), &addr.to_string()).await;
    assert_eq!(addr2, addr);

    // The node writes more (its open segment grows, new ones roll) and a new shipper, which
    // knows nothing, resumes from what the collector has.
    let nd = ledger_dir.clone();
    tokio::task::spawn_blocking(move || write(&nd, 150, 100))
        .await
        .unwrap();
    let mut shipper = Shipper::new(ledger_dir.clone(), 7, addr, SECRET.into());
    for _ in 0..10 {
        if shipper.ship_once().await.unwrap() == 0 {
            break;
        }
    }
    assert_eq!(
        shipper.ship_once().await.unwrap(),
        0,
        "nothing left to ship"
    );
    assert_eq!(
        shipper.lag_bytes.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_identical(&ledger_dir, store.path());

    // A stale shipper that still believes older offsets is refused by offset, not appended.
    let mut c = Conn::connect(addr).await.unwrap();
    let auth = format!("Bearer {SECRET}");
    let seg0 = std::fs::read(&segments(&ledger_dir).unwrap()[0].1).unwrap();
    let r = c
        .send(
            Method::PUT,
            "/v1/ledger/7/0?offset=0",
            &[("authorization", &auth)],
            Bytes::from(seg0.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["len"].as_u64(), Some(seg0.len() as u64));
    // Wrong secret; damaged records.
    let r = c
        .send(
            Method::GET,
            "/v1/ledger/7/0",
            &[("authorization", "Bearer nope")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let mut bad = seg0.clone();
    bad[60] ^= 1;
    let r = c
        .send(
            Method::PUT,
            "/v1/ledger/8/0?offset=0",
            &[("authorization", &auth)],
            Bytes::from(bad),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let r = c
        .send(
            Method::PUT,
            "/v1/ledger/8/0?offset=0",
            &[("authorization", &auth)],
            Bytes::from(seg0),
        )
        .await
        .unwrap();
    assert_eq!(
        r.status,
        422,
        "node 7's segment is refused as node 8's: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(!store
        .path()
        .join("8")
        .join(format!("{:020}.seg", 0))
        .exists());
    assert_identical(&ledger_dir, store.path());
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// Requests racing at one offset: exactly one is appended, the others are told where the copy
/// now ends, and the copy holds the chunk once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_racing_at_one_offset_append_once() {
    let node = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let ledger_dir = node.path().join("ledger");
    let nd = ledger_dir.clone();
    tokio::task::spawn_blocking(move || write(&nd, 0, 10))
        .await
        .unwrap();
    let seg0 = Bytes::from(std::fs::read(&segments(&ledger_dir).unwrap()[0].1).unwrap());
    let (addr, stop, task) = collector(store.path(), "127.0.0.1:0").await;
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let body = seg0.clone();
            tokio::spawn(async move {
                let mut c = Conn::connect(addr).await.unwrap();
                let auth = format!("Bearer {SECRET}");
                let r = c
                    .send(
                        Method::PUT,
                        "/v1/ledger/7/0?offset=0",
                        &[("authorization", &auth)],
                        body,
                    )
                    .await
                    .unwrap();
                r.status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in racers {
        statuses.push(r.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409]);
    let copy = std::fs::read(store.path().join("7").join(format!("{:020}.seg", 0))).unwrap();
    assert!(copy == seg0, "the copy is the segment once");
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// C2: every append held one collector-wide lock from its offset check to its fsync, on an
/// async worker, so one slow fsync held up every node. While node 7's lock is held (as by an
/// append stuck in its fsync), node 8's append goes through; node 7's waits, then goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_append_goes_through_while_another_nodes_is_held() {
    let node = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut seg0 = Vec::new();
    for id in [7, 8] {
        let dir = node.path().join(format!("ledger-{id}"));
        let d = dir.clone();
        tokio::task::spawn_blocking(move || write_as(&d, id, 4096, 0, 10))
            .await
            .unwrap();
        seg0.push(Bytes::from(
            std::fs::read(&segments(&dir).unwrap()[0].1).unwrap(),
        ));
    }
    let (c, addr, stop, task) = collector_and_handle(store.path(), "127.0.0.1:0").await;
    let put = |node: u32, body: Bytes| async move {
        let mut conn = Conn::connect(addr).await.unwrap();
        let auth = format!("Bearer {SECRET}");
        let r = conn
            .send(
                Method::PUT,
                &format!("/v1/ledger/{node}/0?offset=0"),
                &[("authorization", &auth)],
                body,
            )
            .await
            .unwrap();
        r.status
    };
    let copy = |node: u32| {
        store
            .path()
            .join(node.to_string())
            .join(format!("{:020}.seg", 0))
    };

    let held = c.lock_node(7).await;
    let node_7 = tokio::spawn(put(7, seg0[0].clone()));
    // A bound, not a wait: with one lock for all nodes this never answers.
    let node_8 = tokio::time::timeout(Duration::from_secs(30), put(8, seg0[1].clone()))
        .await
        .expect("node 8's append waited for node 7's lock");
    assert_eq!(node_8, 200);
    assert!(std::fs::read(copy(8)).unwrap() == seg0[1]);
    assert!(!node_7.is_finished(), "node 7's append waits for its lock");
    assert!(!copy(7).exists());

    drop(held);
    assert_eq!(node_7.await.unwrap(), 200);
    assert!(std::fs::read(copy(7)).unwrap() == seg0[0]);
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A record written but not yet durable stays on the node: the shipper reads no further than
/// the writer's durable mark, and ships the record once the mark passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_durable_records_are_shipped() {
    use redrain::ledger::{encode_record, scan_segment};
    use redrain::storage::{Cf, Op, Storage};
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering::SeqCst;
    let node = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let ledger_dir = node.path().join("ledger");
    let storage = Storage::open(&node.path().join("db"), &ledger_dir, 7).unwrap();
    for i in 0..5u32 {
        let op = Op::Put(Cf::Meta, format!("k{i}").into_bytes(), vec![1; 100]);
        storage.commit(vec![op]).await.unwrap();
    }
    let mark = storage.durable();
    let next = mark.load(SeqCst);
    // The bytes of the next record, where the writer would put them before its fsync.
    let path = segments(&ledger_dir).unwrap()[0].1.clone();
    let durable_end = scan_segment(&std::fs::read(&path).unwrap(), |_| {})
        .unwrap()
        .good_len;
    let mut record = Vec::new();
    encode_record(next, 1, b"written, not yet fsynced", &mut record);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&record, durable_end).unwrap();

    let (addr, stop, task) = collector(store.path(), "127.0.0.1:0").await;
    let copy = store.path().join("7").join(format!("{:020}.seg", 0));
    let mut shipper =
        Shipper::new(ledger_dir.clone(), 7, addr, SECRET.into()).durable_before(mark.clone());
    shipper.ship_once().await.unwrap();
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), durable_end);
    mark.store(next + 1, SeqCst);
    shipper.ship_once().await.unwrap();
    let expected = durable_end + record.len() as u64;
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), expected);
    stop.send(()).unwrap();
    task.await.unwrap();
    drop(storage);
}

/// Ships everything of the ledger in `dir` (node `node`) until nothing is left.
async fn ship_all(dir: &Path, node: u32, addr: std::net::SocketAddr) {
    let mut shipper = Shipper::new(dir.to_path_buf(), node, addr, SECRET.into());
    for _ in 0..20 {
        if shipper.ship_once().await.unwrap() == 0 {
            return;
        }
    }
    panic!("node {node} still had records to ship");
}

/// The collector's copy is the way back when a node's own ledger is damaged, so reading it
/// back after a restart must not silently drop shipped records: it cut every copy at its
/// first bad record. Damage an append cut short cannot explain (a flip with intact records
/// after it in the last segment; any damage in a segment before the last) now refuses that
/// node's requests, naming the file, the offset and the reason, and leaves the file as it
/// is, while other nodes are served; an append a power cut left with a page of zeros and
/// intact records after it, at the end of a node's last segment, is still cut and shipped
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_copy_refuses_its_node_and_an_append_cut_short_is_cut() {
    use redrain::ledger::{FRAME_LEN, HEADER_LEN, PAGE_LEN};
    // Node 7's copy: a flip in the last segment's first record, intact records after it; a
    // flip in segment 0's seal, its last record, in a segment before the last.
    for in_last in [true, false] {
        let (node7, node9) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = tempfile::tempdir().unwrap();
        let (ledger7, ledger9) = (node7.path().join("ledger"), node9.path().join("ledger"));
        let (l7, l9) = (ledger7.clone(), ledger9.clone());
        tokio::task::spawn_blocking(move || {
            write(&l7, 0, 150);
            write_as(&l9, 9, 64 << 10, 0, 150); // one segment, about 14 KiB
        })
        .await
        .unwrap();
        let (addr, stop, task) = collector(store.path(), "127.0.0.1:0").await;
        ship_all(&ledger7, 7, addr).await;
        ship_all(&ledger9, 9, addr).await;
        stop.send(()).unwrap();
        task.await.unwrap();

        let copies = segments(&store.path().join("7")).unwrap();
        assert!(copies.len() >= 3, "{} segments", copies.len());
        let path = if in_last {
            copies.last().unwrap().1.clone()
        } else {
            copies[0].1.clone()
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let (damaged, expected) = if in_last {
            (HEADER_LEN, "not a torn write")
        } else {
            (bytes.len() - FRAME_LEN - 16, "in a segment before the last")
        };
        bytes[damaged + FRAME_LEN + 2] ^= 0x02;
        std::fs::write(&path, &bytes).unwrap();
        let copy9 = segments(&store.path().join("9")).unwrap()[0].1.clone();
        let mut holed = std::fs::read(&copy9).unwrap();
        assert!(holed.len() > 3 * PAGE_LEN);
        holed[PAGE_LEN..2 * PAGE_LEN].fill(0);
        std::fs::write(&copy9, &holed).unwrap();

        let (addr, stop, task) = collector(store.path(), "127.0.0.1:0").await;
        let mut shipper = Shipper::new(ledger7.clone(), 7, addr, SECRET.into());
        for _ in 0..2 {
            let refused = shipper.ship_once().await.unwrap_err();
            assert!(refused.contains("copy_damaged"), "{refused}");
            assert!(refused.contains(&path.display().to_string()), "{refused}");
            let at = format!("offset {damaged}: CRC mismatch");
            assert!(refused.contains(&at), "{refused}");
            assert!(refused.contains(expected), "{refused}");
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the file is left as it was"
        );
        // Every segment of the node is refused, not only the damaged one.
        let mut c = Conn::connect(addr).await.unwrap();
        let auth = format!("Bearer {SECRET}");
        let other = copies[1].0;
        let r = c
            .send(
                Method::GET,
                &format!("/v1/ledger/7/{other}"),
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["code"], "copy_damaged");

        // Node 9 is served: its copy is cut at the record running into the page of zeros,
        // and shipped again from there.
        ship_all(&ledger9, 9, addr).await;
        assert_identical_as(9, &ledger9, store.path());
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "in_last {in_last}");
        stop.send(()).unwrap();
        task.await.unwrap();
    }
}

/// The shipper sends a new segment's header as soon as the node creates it, which can be
/// before the previous segment's seal is durable on the node. A collector crash while it then
/// appends that seal leaves a torn record in a segment that is no longer the last file: it is
/// still an append cut short (never acknowledged), cut at the restart, and shipped again; not
/// damage that refuses the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_cut_short_behind_the_next_segments_header_is_a_torn_tail() {
    use redrain::ledger::{scan_segment, HEADER_LEN};
    use std::sync::atomic::{AtomicU64, Ordering};
    let node = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let dir = node.path().join("ledger");
    let d = dir.clone();
    tokio::task::spawn_blocking(move || write(&d, 0, 150))
        .await
        .unwrap();
    let segs = segments(&dir).unwrap();
    assert!(segs.len() >= 2);
    for (_, p) in &segs[2..] {
        std::fs::remove_file(p).unwrap();
    }
    // The node mid-roll: segment 0 sealed, segment 1 only its header, and the durable mark not
    // yet past the seal.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[1].1)
        .unwrap();
    f.set_len(HEADER_LEN as u64).unwrap();
    let first_of_1 = scan_segment(&std::fs::read(&segs[1].1).unwrap(), |_| {})
        .unwrap()
        .header
        .first_seq;
    let mark = Arc::new(AtomicU64::new(first_of_1));
    let (addr, stop, task) = collector(store.path(), "127.0.0.1:0").await;
    let mut shipper =
        Shipper::new(dir.clone(), 7, addr, SECRET.into()).durable_before(mark.clone());
    shipper.ship_once().await.unwrap();
    let copy0 = store.path().join("7").join(format!("{:020}.seg", 0));
    let copy1 = store.path().join("7").join(format!("{:020}.seg", 1));
    assert!(
        copy1.exists(),
        "segment 1's header went before segment 0's seal"
    );
    stop.send(()).unwrap();
    task.await.unwrap();

    // The collector crashes while appending segment 0's seal: part of it is on disk.
    let node0 = std::fs::read(&segs[0].1).unwrap();
    let mut c0 = std::fs::read(&copy0).unwrap();
    let seal_at = c0.len();
    assert!(seal_at < node0.len(), "the seal was not shipped yet");
    c0.extend_from_slice(&node0[seal_at..seal_at + 10]);
    std::fs::write(&copy0, &c0).unwrap();

    mark.store(first_of_1 + 1, Ordering::SeqCst);
    let (addr, stop, task) = collector(store.path(), "127.0.0.1:0").await;
    let mut shipper =
        Shipper::new(dir.clone(), 7, addr, SECRET.into()).durable_before(mark.clone());
    let shipped = shipper.ship_once().await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(
        shipped.is_ok(),
        "a collector crash refused the node: {shipped:?}"
    );
    assert_eq!(
        std::fs::read(&copy0).unwrap(),
        node0,
        "segment 0's copy was cut and shipped again"
    );
}
