//! The drop index at scale: build time and bytes per point for 10 M points, and nearby
//! latency (criterion's mean, then p50/p99/p99.9 of single queries from an HDR histogram).
//!
//! Points: half in 40 "cities" (Gaussian, σ ≈ 8 km), half uniform over 18–53°N, 73–135°E.
//! Queries come from the same distribution (users are where the drops are).
//! `GEO_BENCH_POINTS` overrides the 10 M (100,000 when run as a test).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redrain_geo::{Coord, DropIndex};

const RESOLUTION: u8 = 10;
const K: u32 = 2;
const LIMIT: usize = 100;

fn gaussian(rng: &mut SmallRng) -> f64 {
    // Box–Muller.
    let (u, v): (f64, f64) = (rng.gen_range(f64::EPSILON..1.0), rng.gen());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn sample(rng: &mut SmallRng, cities: &[(f64, f64)]) -> Coord {
    if rng.gen_bool(0.5) {
        let (lat, lng) = cities[rng.gen_range(0..cities.len())];
        let (dlat, dlng) = (gaussian(rng) * 0.072, gaussian(rng) * 0.085);
        Coord::new((lat + dlat).clamp(-90.0, 90.0), lng + dlng).unwrap()
    } else {
        Coord::new(rng.gen_range(18.0..53.0), rng.gen_range(73.0..135.0)).unwrap()
    }
}

fn bench(c: &mut Criterion) {
    let n: usize = std::env::var("GEO_BENCH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        // `cargo bench` passes --bench; a test run (`cargo test --benches`) only checks that
        // the bench works, on a smaller index.
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            10_000_000
        } else {
            100_000
        });
    let mut rng = SmallRng::seed_from_u64(7);
    let cities: Vec<(f64, f64)> = (0..40)
        .map(|_| (rng.gen_range(22.0..45.0), rng.gen_range(100.0..122.0)))
        .collect();
    let points: Vec<Coord> = (0..n).map(|_| sample(&mut rng, &cities)).collect();

    let started = Instant::now();
    let index = DropIndex::build(&points, RESOLUTION).unwrap();
    let built = started.elapsed();
    println!(
        "build: {n} points at resolution {RESOLUTION} in {:.2} s; index {} bytes = {:.1} bytes/point",
        built.as_secs_f64(),
        index.heap_bytes(),
        index.heap_bytes() as f64 / n as f64
    );

    let queries: Vec<Coord> = (0..100_000).map(|_| sample(&mut rng, &cities)).collect();
    let mut out = Vec::with_capacity(LIMIT);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut found = 0usize;
    for _ in 0..10 {
        for q in &queries {
            let t = Instant::now();
            index.nearby(*q, K, LIMIT, &mut out).unwrap();
            hist.record(t.elapsed().as_nanos() as u64).unwrap();
            found += out.len();
        }
    }
    println!(
        "nearby k={K} limit={LIMIT}: {} queries, {:.1} drops each; p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.2} µs",
        hist.len(),
        found as f64 / hist.len() as f64,
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.value_at_quantile(0.999) as f64 / 1e3,
        hist.max() as f64 / 1e3,
    );

    let mut g = c.benchmark_group("geo");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("nearby_k2_10M", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            index
                .nearby(black_box(queries[i]), K, LIMIT, &mut out)
                .unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
