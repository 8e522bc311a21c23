//! Criterion bench of the draw algorithm: `draw::plan` for a returning user on the
//! no-win-heavy mix of `configs/bench.toml` (97% of shakes win nothing), one shake a request.
//! The target is at least 3 M plans a second on one core (at most ~333 ns a plan).

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quota::book::CounterBook;
use quota::config::Config;
use quota::draw::{plan, UserStanding};
use quota::ids::SeqNo;
use quota::store::{ConfigStore, NodeShare};
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// 2030-01-01T00:00:00Z: inside the bench round's always-live occurrences.
const T0: u64 = 1_893_456_000_000;

fn draw(c: &mut Criterion) {
    let text = include_str!("../../configs/bench.toml");
    let config = Config::from_toml(text).expect("configs/bench.toml is valid");
    let store = ConfigStore::new(SeqNo(1), config, NodeShare::default());
    let book = CounterBook::new();
    let snapshot = store.load();
    let round = snapshot.config.round("bench").expect("the bench round");
    let mut rng = SmallRng::seed_from_u64(1);
    let first = plan(
        &snapshot,
        &store,
        &book,
        round,
        "user-1",
        UserStanding::default(),
        1,
        T0,
        &mut rng,
    );
    let standing = first.standing.expect("the bench round is live at T0");

    let mut g = c.benchmark_group("quota");
    g.throughput(Throughput::Elements(1));
    // The clock advances 1 ms a plan, so the 3% of shakes that pick a prize find slot room as
    // they would at a thousand draws a second per prize.
    let mut now = T0;
    g.bench_function("draw_plan_no_win", |b| {
        b.iter(|| {
            now += 1;
            let p = plan(
                &snapshot,
                &store,
                &book,
                round,
                black_box("user-1"),
                standing,
                1,
                now,
                &mut rng,
            );
            black_box(p.wins.len())
        });
    });
    g.finish();
}

criterion_group!(benches, draw);
criterion_main!(benches);
