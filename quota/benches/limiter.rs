//! Criterion benches of the hot counters: the quota counter, the 100 ms slot limiter and the
//! two together, each on its success path and the slot limiter also on its refusal path.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quota::limiter::{PrizeCounters, QuotaCounter, SlotLimiter};

/// A time well inside any slot tag's range.
const T0: u64 = 1_900_000_000_000;

fn counters(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota");
    g.throughput(Throughput::Elements(1));

    let quota = QuotaCounter::new(0, u32::MAX);
    g.bench_function("counter_take", |b| {
        b.iter(|| black_box(quota.try_take()));
    });

    // The clock advances 1 ms a take: 100 takes a slot, well under the share, so every take
    // succeeds and one in a hundred opens a new slot.
    let slots = SlotLimiter::default();
    let mut now = T0;
    g.bench_function("slot_take", |b| {
        b.iter(|| {
            now += 1;
            black_box(slots.try_take(black_box(now), 2_000_000))
        });
    });

    // A full slot: every take is refused.
    let full = SlotLimiter::default();
    while full.try_take(T0, 10) {}
    g.bench_function("slot_refused", |b| {
        b.iter(|| black_box(full.try_take(black_box(T0), 10)));
    });

    let prize = PrizeCounters::new(0, u32::MAX);
    let mut now = T0;
    g.bench_function("prize_take", |b| {
        b.iter(|| {
            now += 1;
            black_box(prize.try_take(black_box(now), 2_000_000))
        });
    });
    g.finish();
}

criterion_group!(benches, counters);
criterion_main!(benches);
