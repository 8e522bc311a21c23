//! Delivery benchmark over loopback to in-process `partner-sim`s, with the engine's real
//! storage (RocksDB through the ledger, fsync per group):
//!
//! 1. **Throughput**: N pending deliveries in a fast partner's outbox; the lane reads them in
//!    and delivers them all (each: record read, signed request, answer, durable state change).
//! 2. **Bytes per queued delivery**: resident memory before and after filling a lane queue
//!    with 1 M ids.
//! 3. **Cash latency while a coupon lane holds 1 M**: the coupon lane (200/s) reads 1 M pending
//!    deliveries from its outbox; meanwhile cash wins are made at a fixed rate (each committed
//!    like a draw, then queued); win → delivered p50/p99 from the wallet lane.
//! 4. **Throttle overshoot**: the most requests the coupon partner saw in any 100 ms slot,
//!    against the lane's share.
//!
//! `cargo bench -p redrain --bench delivery` runs the full sizes; under `cargo test` (no
//! `--bench` argument) it runs small ones, with the same checks.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quota::store::NodeShare;
use redrain::delivery::{record_ops, RocksStore};
use redrain::metrics::resident_bytes;
use redrain::storage::Storage;
use redrain_delivery::lanes::{now_ms, Deliveries, PartnerSettings};
use redrain_delivery::queue::LaneQueue;
use redrain_delivery::record::{DeliveryId, Record};
use redrain_delivery::sim::{self, Sim, SimOptions};

struct Sizes {
    fast: u64,
    queued: u64,
    cash_per_s: u64,
    cash_secs: u64,
}

/// `redrain partner-sim` as a child process on 127.0.0.1:0; killed when dropped.
struct SimProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl SimProcess {
    fn start() -> SimProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_redrain"))
            .args([
                "partner-sim",
                "--listen",
                "127.0.0.1:0",
                "--secret",
                sim::DEMO_SECRET,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn redrain partner-sim");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("partner-sim listening on ")
            .unwrap_or_else(|| panic!("partner-sim said {line:?}"))
            .parse()
            .unwrap();
        SimProcess { child, addr }
    }

    async fn summary(&self) -> sim::Summary {
        let mut c = redrain::client::Conn::connect(self.addr).await.unwrap();
        serde_json::from_slice(&c.get("/summary").await.unwrap().body).unwrap()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) used so far by this process, or by process `pid`.
fn cpu_s(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which is in parentheses) start at field 3; utime and
    // stime are fields 14 and 15. Fields are taken by position: some are negative (tpgid is
    // -1 without a terminal) or not numbers (the state).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |n: usize| -> u64 {
        rest.split_whitespace()
            .nth(n - 3)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    let ticks = field(14) + field(15);
    ticks as f64 / 100.0 // USER_HZ is 100 on Linux
}

async fn partner() -> (Arc<Sim>, SocketAddr) {
    let sim = Sim::new(SimOptions {
        secrets: vec![sim::DEMO_SECRET.into()],
        ..SimOptions::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sim::serve(listener, sim.clone(), std::future::pending()));
    (sim, addr)
}

fn settings(id: &str, addr: SocketAddr, rate_per_s: u32, max_in_flight: u32) -> PartnerSettings {
    PartnerSettings {
        id: id.into(),
        url: format!("http://{addr}/deliver"),
        rate_per_s,
        node: NodeShare::ALONE,
        max_in_flight,
        timeout_ms: 2_000,
        paused: false,
        retry_deadline_ms: 86_400_000,
        deferred_retry_ms: 600_000,
        secrets: vec![sim::DEMO_SECRET.into()],
    }
}

fn record(partner: &str, n: u64, created_ms: u64) -> Record {
    // Ids differ by partner (first byte) and number (last eight).
    let mut id = [0u8; 12];
    id[0] = partner.as_bytes()[0];
    id[4..].copy_from_slice(&n.to_be_bytes());
    Record::pending(
        DeliveryId(id).to_string(),
        format!("user-{n}"),
        partner.into(),
        "prize".into(),
        Some(88),
        None,
        created_ms,
    )
}

/// Writes `n` pending records of `partner` in batches; returns their ids.
async fn write_pending(storage: &Storage, partner: &str, n: u64) -> Vec<DeliveryId> {
    let mut ids = Vec::with_capacity(n as usize);
    let mut ops = Vec::new();
    for i in 0..n {
        let r = record(partner, i, now_ms());
        ids.push(r.id().unwrap());
        ops.extend(record_ops(&r, None));
        if ops.len() >= 3_000 {
            storage.commit(std::mem::take(&mut ops)).await.unwrap();
        }
    }
    storage.commit(ops).await.unwrap();
    ids
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            fast: 300_000,
            queued: 1_000_000,
            cash_per_s: 2_000,
            cash_secs: 10,
        }
    } else {
        Sizes {
            fast: 3_000,
            queued: 20_000,
            cash_per_s: 500,
            cash_secs: 1,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(sizes));
}

async fn run(s: Sizes) {
    let dir = tempfile::tempdir().unwrap();
    let storage =
        Arc::new(Storage::open(&dir.path().join("db"), &dir.path().join("ledger"), 1).unwrap());
    let deliveries = Deliveries::new(Arc::new(RocksStore(storage.clone())), 2_000_000);
    let fast = SimProcess::start();
    let fast_addr = fast.addr;
    let (coupons, coupons_addr) = partner().await;
    let (wallet, wallet_addr) = partner().await;
    let coupon_rate = 200;

    // 1. Throughput to a fast partner: `redrain partner-sim` in its own process, so the CPU
    //    each side spends per delivery can be told apart.
    write_pending(&storage, "fast", s.fast).await;
    let (engine_cpu, sim_cpu) = (cpu_s(None), cpu_s(Some(fast.child.id())));
    let started = Instant::now();
    deliveries.configure(&[settings("fast", fast_addr, 1_000_000, 256)]);
    until("every delivery is recorded", || {
        deliveries
            .stats()
            .iter()
            .any(|l| l.partner == "fast" && l.delivered == s.fast)
    })
    .await;
    let elapsed = started.elapsed();
    let engine_us = (cpu_s(None) - engine_cpu) * 1e6 / s.fast as f64;
    let sim_us = (cpu_s(Some(fast.child.id())) - sim_cpu) * 1e6 / s.fast as f64;
    let summary = fast.summary().await;
    assert_eq!(summary.applied, s.fast);
    assert_eq!(summary.duplicates, 0);
    println!(
        "throughput: {} deliveries in {:.2} s = {:.0} deliveries/s (partner-sim process, 256 in flight, durable state per delivery)",
        s.fast,
        elapsed.as_secs_f64(),
        s.fast as f64 / elapsed.as_secs_f64()
    );
    println!(
        "cpu per delivery: engine side {engine_us:.1} µs (= {:.0} deliveries/s on 2 cores of its own), partner-sim {sim_us:.1} µs",
        2e6 / engine_us
    );

    // 2. Bytes per queued id: the lanes' queue type, filled with as many ids.
    let before = resident_bytes().unwrap_or(0);
    let mut queue = LaneQueue::new(usize::MAX);
    for n in 0..s.queued {
        queue.push(record("coupons", n, 0).id().unwrap());
    }
    let after = resident_bytes().unwrap_or(0);
    let held = queue.heap_bytes();
    drop(queue);
    println!(
        "queued: {} ids: the queue's buffers hold {:.1} bytes each (an id is 12 bytes; the buffer grows by doubling); resident memory grew {:.1} bytes each (the allocator may keep the buffers the queue outgrew)",
        s.queued,
        held as f64 / s.queued as f64,
        after.saturating_sub(before) as f64 / s.queued as f64
    );

    // 3. A coupon lane at 200/s reads as many pending deliveries from its outbox and holds them.
    write_pending(&storage, "coupons", s.queued).await;
    let lanes = [
        settings("fast", fast_addr, 1_000_000, 256),
        settings("coupons", coupons_addr, coupon_rate, 8),
        settings("wallet", wallet_addr, 20_000, 64),
    ];
    deliveries.configure(&lanes);
    until("the coupon lane has read its outbox", || {
        let queued = deliveries
            .stats()
            .iter()
            .find(|l| l.partner == "coupons")
            .map_or(0, |l| l.queued);
        queued + coupons.summary().received >= s.queued
    })
    .await;

    // Cash at a fixed rate while the coupon lane works through its queue.
    let total = s.cash_per_s * s.cash_secs;
    let tick = Duration::from_millis(10);
    let per_tick = s.cash_per_s / 100;
    let mut next = Instant::now();
    let mut n = 0;
    while n < total {
        // Each win committed on its own, as a draw does (they group into one fsync), and
        // queued as soon as its commit returns.
        let mut wins = Vec::new();
        for _ in 0..per_tick {
            let r = record("wallet", n, now_ms());
            let id = r.id().unwrap();
            let (storage, deliveries) = (storage.clone(), deliveries.clone());
            wins.push(tokio::spawn(async move {
                storage.commit(record_ops(&r, None)).await.unwrap();
                deliveries.enqueue("wallet", id);
            }));
            n += 1;
        }
        for w in wins {
            w.await.unwrap();
        }
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    until("every cash delivery is applied", || {
        wallet.summary().applied == total
    })
    .await;
    until("every cash delivery is recorded", || {
        deliveries
            .stats()
            .iter()
            .any(|l| l.partner == "wallet" && l.delivered == total)
    })
    .await;
    let stats = deliveries.stats();
    let w = stats.iter().find(|l| l.partner == "wallet").unwrap();
    let c = stats.iter().find(|l| l.partner == "coupons").unwrap();
    println!(
        "cash: {} at {}/s while the coupon lane held {} queued: win → delivered p50 {} ms, p99 {} ms",
        total,
        s.cash_per_s,
        c.queued,
        w.latency_p50_ms,
        w.latency_p99_ms
    );

    // 4. Overshoot at the coupon partner.
    let share = coupon_rate.div_ceil(10) as u64;
    let seen = coupons.summary().max_per_slot;
    println!(
        "throttle: coupon lane at {coupon_rate}/s (share {share} per 100 ms slot); the partner saw at most {seen} in a slot: overshoot {}",
        seen.saturating_sub(share)
    );
    assert!(seen <= share, "overshoot");
    assert!(coupons.summary().applied > 0, "the coupon lane sent");
    deliveries.shutdown();
}
