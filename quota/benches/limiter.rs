//! Criterion benches of the hot counters, one thread, uncontended: the quota counter, the 100 ms
//! slot limiter, the two together, and a take through the counter book as a draw does it.
//!
//! Every bench checks the path it measures: after each timed batch it asserts that every take
//! succeeded (or, for `slot_refused`, that every take was refused), and a success bench starts
//! each batch on fresh counters, so a long run can never drain a quota or slot and quietly
//! measure the refusal path instead.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quota::book::CounterBook;
use quota::ids::PrizeId;
use quota::limiter::{PrizeCounters, QuotaCounter, SlotLimiter};
use quota::store::NodeShare;

/// A time well inside any slot tag's range.
const T0: u64 = 1_900_000_000_000;

/// A rate whose slot share (200,000; [`NODE`]'s room about 66,667) is far above the 100 takes a
/// slot sees at 1 ms a take.
const BIG_RATE: u32 = 2_000_000;

/// Node 1 of 3: a slot opens with this node's part of the share, the cluster's path.
const NODE: NodeShare = NodeShare { index: 1, count: 3 };

/// Times `iters` calls of `op(state, i)`, on a state from `fresh` every `chunk` calls (state
/// creation is not timed), and checks that every call returned `want`.
fn timed<S>(
    iters: u64,
    chunk: u64,
    fresh: impl Fn() -> S,
    op: impl Fn(&S, u64) -> bool,
    want: bool,
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(chunk);
        let state = fresh();
        let mut hits = 0u64;
        let start = Instant::now();
        for i in 0..n {
            hits += u64::from(black_box(op(&state, black_box(i))) == want);
        }
        elapsed += start.elapsed();
        assert_eq!(hits, n, "every call must take the measured path");
        left -= n;
    }
    elapsed
}

fn counters(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota");
    g.throughput(Throughput::Elements(1));

    // Quota CAS with room left: a fresh counter (limit u32::MAX) at most every u32::MAX takes.
    let quota_chunk = u64::from(u32::MAX);
    g.bench_function("counter_take", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                quota_chunk,
                || QuotaCounter::new(0, u32::MAX),
                |q, _| q.try_take(),
                true,
            )
        });
    });

    // Slot CAS with room left: the clock advances 1 ms a take, so 100 takes a slot against a
    // room of about 66,667; one take in a hundred opens the next slot. A fresh limiter every 10^9
    // takes (~11.6 days of clock) keeps the clock far from the slot tag's ~310-day wrap.
    g.bench_function("slot_take", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                1_000_000_000,
                SlotLimiter::default,
                |s, i| s.try_take(T0 + i, BIG_RATE, NODE),
                true,
            )
        });
    });

    // A full slot (rate 10: share 1, already taken): every take is refused.
    g.bench_function("slot_refused", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                u64::MAX,
                || {
                    let full = SlotLimiter::default();
                    assert!(full.try_take(T0, 10, NodeShare::ALONE));
                    full
                },
                |s, _| s.try_take(T0, 10, NodeShare::ALONE),
                false,
            )
        });
    });

    // Slot then quota, both with room, as `PrizeCounters::try_take` does for a win.
    g.bench_function("prize_take", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                quota_chunk,
                || PrizeCounters::new(0, u32::MAX),
                |p, i| p.try_take(T0 + i, BIG_RATE, NODE).is_ok(),
                true,
            )
        });
    });

    // What a draw's taker does for a picked prize: look the counters up in the book (read lock,
    // hash of (prize id, occurrence)), then slot and quota. The book holds the three prizes of
    // configs/bench.toml.
    let ids = ["cash-small", "cash-big", "coupon"].map(|s| PrizeId::new(s).unwrap());
    g.bench_function("book_take", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                quota_chunk,
                || {
                    let book = CounterBook::new();
                    for id in &ids {
                        book.restore(id.clone(), 0, 0, u32::MAX);
                    }
                    book
                },
                |book, i| {
                    book.get_or_create(&ids[0], 0, 0, || u32::MAX)
                        .try_take(T0 + i, BIG_RATE, NODE)
                        .is_ok()
                },
                true,
            )
        });
    });
    g.finish();
}

criterion_group!(benches, counters);
criterion_main!(benches);
