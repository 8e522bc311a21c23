//! Shipping lag at 50 k draws/s worth of ledger: a ledger (group-commit fsync) takes 50,000
//! records a second of 173 bytes (the ledger bytes per draw measured under `redrain load` with
//! `configs/bench.toml`), while a shipper sends it every 200 ms to a collector over loopback.
//! Sampled every 100 ms: the bytes on disk but not yet on the collector, as seconds of ledger.
//! (This machine cannot sustain 50 k real draws/s; this loads the shipping path at that rate.)
//!
//! `cargo bench -p redrain --bench ship`; under `cargo test` it runs 1 s instead of 10.
#![allow(missing_docs)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redrain::collect::{routes, ship_forever, Collector, Shipper};
use redrain::ledger::{Ledger, LedgerConfig, DEFAULT_SEGMENT_BYTES};

const RATE: u64 = 50_000;
const BYTES_PER_DRAW: usize = 173;
const SECRET: &str = "ship-bench-secret-0123456789";

fn main() {
    let secs = if std::env::args().any(|a| a == "--bench") {
        10
    } else {
        1
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(secs));
}

async fn run(secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let ledger_dir = dir.path().join("ledger");
    let (ledger, _) = Ledger::open(LedgerConfig {
        dir: ledger_dir.clone(),
        node: 1,
        segment_bytes: DEFAULT_SEGMENT_BYTES,
        sync: true,
    })
    .unwrap();
    let collected = dir.path().join("collected");
    let collector = Arc::new(Collector::new(collected.clone(), SECRET.into()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(redrain::server::serve(
        listener,
        routes(collector),
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let shipper = Shipper::new(ledger_dir.clone(), 1, addr, SECRET.into());
    let lag = shipper.lag_bytes.clone();
    tokio::spawn(ship_forever(shipper, Duration::from_millis(200)));

    // Producers: every 10 ms, 500 appends (one record each, as draws make them), concurrently.
    let started = Instant::now();
    let per_tick = RATE / 100;
    let mut samples = Vec::new();
    let mut next = Instant::now();
    let mut appended = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let tasks: Vec<_> = (0..per_tick)
            .map(|_| {
                let ledger = ledger.clone();
                tokio::spawn(
                    async move { ledger.append(vec![(1, vec![7u8; BYTES_PER_DRAW])]).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        appended += per_tick;
        if appended.is_multiple_of(RATE / 10) {
            samples.push(lag.load(Ordering::Relaxed));
        }
        next += Duration::from_millis(10);
        tokio::time::sleep_until(next.into()).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bytes_per_s = appended as f64 * (BYTES_PER_DRAW + 17) as f64 / elapsed;
    samples.sort_unstable();
    let max = *samples.last().unwrap_or(&0) as f64;
    let p50 = samples.get(samples.len() / 2).copied().unwrap_or(0) as f64;
    println!(
        "{appended} records in {elapsed:.2} s = {:.0}/s ({:.1} MB/s of ledger); lag sampled {} times: p50 {:.3} s, max {:.3} s",
        appended as f64 / elapsed,
        bytes_per_s / 1e6,
        samples.len(),
        p50 / bytes_per_s,
        max / bytes_per_s
    );
    assert!(
        appended as f64 / elapsed > RATE as f64 * 0.9,
        "the producers kept the rate"
    );
}
