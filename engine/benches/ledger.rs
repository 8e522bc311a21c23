//! Ledger throughput: appends into the writer from concurrent producers (one record per append,
//! as draws make them: tokio tasks, as in the engine, and OS threads), without and with
//! group-commit fsync; appends of 1,000 records at once (the writer alone); the recovery scan.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use redrain::ledger::{verify, Ledger, LedgerConfig, DEFAULT_SEGMENT_BYTES};

/// Producer threads.
const PRODUCERS: u64 = 64;
/// Producer tasks on a 2-worker tokio runtime (a thousand draws in flight).
const TASKS: u64 = 1024;
/// Bytes of a record's payload (a win record is about this size).
const PAYLOAD: usize = 100;

fn open(dir: &std::path::Path, sync: bool) -> Arc<Ledger> {
    let config = LedgerConfig {
        dir: dir.to_path_buf(),
        node: 1,
        segment_bytes: DEFAULT_SEGMENT_BYTES,
        sync,
    };
    Ledger::open(config).expect("a fresh ledger").0
}

/// `iters` single-record appends spread over the producers; the time until the last is acked.
fn appends(ledger: &Arc<Ledger>, iters: u64) -> Duration {
    let per = iters.div_ceil(PRODUCERS);
    let started = Instant::now();
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let ledger = Arc::clone(ledger);
            std::thread::spawn(move || {
                for _ in 0..per {
                    ledger
                        .append_blocking(vec![(1, vec![7u8; PAYLOAD])])
                        .expect("append");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("producer");
    }
    started.elapsed()
}

/// `iters` single-record appends spread over tokio tasks; the time until the last is acked.
fn async_appends(rt: &tokio::runtime::Runtime, ledger: &Arc<Ledger>, iters: u64) -> Duration {
    let per = iters.div_ceil(TASKS);
    rt.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let ledger = Arc::clone(ledger);
                tokio::spawn(async move {
                    for _ in 0..per {
                        ledger
                            .append(vec![(1, vec![7u8; PAYLOAD])])
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("producer");
        }
        started.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    for sync in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(dir.path(), sync);
        let fsync = if sync { "fsync" } else { "no_fsync" };
        g.bench_function(
            BenchmarkId::new(format!("append_tasks_{fsync}"), TASKS),
            |b| {
                b.iter_custom(|iters| async_appends(&rt, &ledger, iters));
            },
        );
        g.bench_function(
            BenchmarkId::new(format!("append_threads_{fsync}"), PRODUCERS),
            |b| {
                b.iter_custom(|iters| appends(&ledger, iters));
            },
        );
    }
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(dir.path(), false);
        g.throughput(Throughput::Elements(1000));
        g.bench_function("append_batch_1000_no_fsync", |b| {
            b.iter(|| {
                let batch = (0..1000).map(|_| (1u8, vec![7u8; PAYLOAD])).collect();
                ledger.append_blocking(batch).expect("append")
            });
        });
    }

    // Recovery scan: read and check a 64 MiB segment.
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path(), false);
    let records = DEFAULT_SEGMENT_BYTES as usize / (PAYLOAD + 17) - 1000;
    for _ in 0..records / 1000 {
        let batch = (0..1000).map(|_| (1u8, vec![7u8; PAYLOAD])).collect();
        ledger.append_blocking(batch).expect("append");
    }
    drop(ledger);
    let bytes: u64 = redrain::ledger::segments(dir.path())
        .expect("segments")
        .iter()
        .map(|(_, p)| std::fs::metadata(p).expect("size").len())
        .sum();
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("verify_scan", |b| {
        b.iter(|| {
            let v = verify(dir.path(), |_| {}).expect("verify");
            assert!(v.damage.is_none());
            v.records
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
