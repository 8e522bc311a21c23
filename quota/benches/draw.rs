//! Criterion benches of the draw algorithm: `draw::plan`, one shake a request, for a returning
//! user on the no-win-heavy config `configs/bench.toml` (no-win weight 970 against 30).
//!
//! - `draw_plan_no_win`: the common path. Every shake lands on "no win" (see [`NoWinRng`]);
//!   the bench checks that no plan won or was refused admission.
//! - `draw_plan_mix`: the config's own mix (about 3% of plans take a prize), with a plain
//!   `SmallRng`; it prints the share of plans that won.
//!
//! The target is at least 3 M plans a second on one core (at most ~333 ns a plan).

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quota::book::CounterBook;
use quota::config::Config;
use quota::draw::{plan, Outcome, UserStanding};
use quota::ids::SeqNo;
use quota::store::{ConfigStore, NodeShare};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// 2030-01-01T00:00:00Z: 21 days into one of the bench round's 30-day occurrences, so the
/// ~10^8 ms the clock advances over a run (1 ms a plan) stay in that occurrence.
const T0: u64 = 1_893_456_000_000;

/// A `SmallRng` whose words have the top bit cleared. rand 0.8 draws the ticket
/// `gen_range(0..1000)` as the high word of `word * 1000`, so every ticket is below 500: inside
/// the no-win weight of 970. It costs what a `SmallRng` costs; the bench checks the path.
struct NoWinRng(SmallRng);

impl RngCore for NoWinRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32() >> 1
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64() >> 1
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.0.try_fill_bytes(dest)
    }
}

fn draw(c: &mut Criterion) {
    let text = include_str!("../../configs/bench.toml");
    let config = Config::from_toml(text).expect("configs/bench.toml is valid");
    let store = ConfigStore::new(SeqNo(1), config, NodeShare::default());
    let book = CounterBook::new();
    let snapshot = store.load();
    let round = snapshot.config.round("bench").expect("the bench round");
    assert!(
        2 * u64::from(round.no_win_weight) > round.total_weight,
        "NoWinRng needs the no-win weight above half the total"
    );

    // The user's first draw, at T0 - 1 s: afterwards they are a returning user in the same
    // occurrence (first_draw_ms set, no wins yet).
    let mut rng = NoWinRng(SmallRng::seed_from_u64(1));
    let first = plan(
        &snapshot,
        &store,
        &book,
        round,
        "user-1",
        UserStanding::default(),
        1,
        T0 - 1000,
        &mut rng,
    );
    assert_eq!(first.outcome, Outcome::None);
    let standing = first.standing.expect("the bench round is live at T0");
    let ends_at_ms = first.occurrence.expect("admitted").ends_at_ms;

    let mut g = c.benchmark_group("quota");
    g.throughput(Throughput::Elements(1));

    let mut now = T0;
    let mut off_path = 0u64;
    g.bench_function("draw_plan_no_win", |b| {
        b.iter(|| {
            now += 1;
            let p = plan(
                &snapshot,
                &store,
                &book,
                round,
                black_box("user-1"),
                black_box(standing),
                1,
                now,
                &mut rng,
            );
            off_path += u64::from(p.outcome != Outcome::None);
            black_box(p.wins.len())
        });
    });
    assert_eq!(off_path, 0, "draw_plan_no_win: a plan left the no-win path");
    assert!(book.entries().is_empty(), "no counters were touched");
    assert!(
        now < ends_at_ms,
        "the clock stayed in the user's occurrence"
    );

    // The clock advances 1 ms a plan, so the prizes picked find slot room as they would at a
    // thousand draws a second (cash-big's quota of 1000 runs out early, and its picks then
    // fall through to the other prizes, as in a long load run).
    let mut rng = SmallRng::seed_from_u64(2);
    let (mut plans, mut wins, mut other) = (0u64, 0u64, 0u64);
    g.bench_function("draw_plan_mix", |b| {
        b.iter(|| {
            now += 1;
            let p = plan(
                &snapshot,
                &store,
                &book,
                round,
                black_box("user-1"),
                black_box(standing),
                1,
                now,
                &mut rng,
            );
            plans += 1;
            match p.outcome {
                Outcome::Win => wins += 1,
                Outcome::None => {}
                _ => other += 1,
            }
            black_box(p.wins.len())
        });
    });
    assert_eq!(
        other, 0,
        "draw_plan_mix: every plan is admitted and uncapped"
    );
    assert!(
        now < ends_at_ms,
        "the clock stayed in the user's occurrence"
    );
    if plans > 0 {
        eprintln!(
            "draw_plan_mix: {wins} of {plans} plans won ({:.2}%)",
            100.0 * wins as f64 / plans as f64
        );
    }
    g.finish();
}

criterion_group!(benches, draw);
criterion_main!(benches);
