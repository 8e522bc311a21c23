//! Property tests of the draw over HTTP: caps under one user's concurrent requests, and
//! idempotent retries, for generated caps, amounts, weights and request mixes.
//!
//! Each case serves a fresh engine (RocksDB in a temp dir) on 127.0.0.1:0 and has one user
//! send a generated set of requests at once across two rounds of one campaign, each request id
//! several times concurrently and once more afterwards.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use redrain::client::Conn;
use serde_json::Value;
use tokio::sync::Barrier;

const ROUNDS: [&str; 2] = ["ra", "rb"];
const USER: &str = "prop-user";

/// A cash prize's amount: fixed, or drawn from an inclusive range.
#[derive(Debug, Clone)]
enum Amount {
    Fixed(u64),
    Range(u64, u64),
}

impl Amount {
    fn toml(&self) -> String {
        match self {
            Amount::Fixed(a) => format!("amount_cents = {a}"),
            Amount::Range(lo, hi) => format!("amount_min_cents = {lo}\namount_max_cents = {hi}"),
        }
    }

    fn contains(&self, a: u64) -> bool {
        match *self {
            Amount::Fixed(x) => a == x,
            Amount::Range(lo, hi) => (lo..=hi).contains(&a),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    round_cap: u32,
    campaign_cap: Option<u32>,
    cash_cap: Option<u64>,
    amount: Amount,
    cash_quota: u64,
    no_win_weight: u32,
    cash_weight: u32,
    coupon_weight: u32,
    /// (round index, shakes, concurrent copies) per request id.
    requests: Vec<(usize, u32, usize)>,
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        (1u64..400).prop_map(Amount::Fixed),
        (1u64..300, 0u64..300).prop_map(|(lo, span)| Amount::Range(lo, lo + span)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1u32..6,
        proptest::option::of(1u32..9),
        proptest::option::of(50u64..1500),
        amount(),
        1u64..20,
        0u32..4,
        1u32..4,
        1u32..3,
        // At most 10 ids × 3 copies = 30 concurrent requests: below the per-user wait queue
        // (one running plus 32 waiting), so none is refused as busy.
        proptest::collection::vec((0usize..2, 1u32..8, 1usize..4), 1..11),
    )
        .prop_map(
            |(
                round_cap,
                campaign_cap,
                cash_cap,
                amount,
                cash_quota,
                no_win_weight,
                cash_weight,
                coupon_weight,
                requests,
            )| Case {
                round_cap,
                campaign_cap,
                cash_cap,
                amount,
                cash_quota,
                no_win_weight,
                cash_weight,
                coupon_weight,
                requests,
            },
        )
}

fn config(c: &Case) -> String {
    let mut caps = String::new();
    if let Some(n) = c.campaign_cap {
        caps += &format!("max_wins_per_user = {n}\n");
    }
    if let Some(n) = c.cash_cap {
        caps += &format!("max_cash_cents_per_user = {n}\n");
    }
    let mut text = campaign("camp", &caps) + PARTNERS;
    for round in ROUNDS {
        text += &live_round(round, "camp", c.round_cap, c.no_win_weight);
        text += &format!(
            r#"
[[rounds.prizes]]
id = "cash-{round}"
kind = "cash"
{amount}
partner = "wallet"
quota = {quota}
rate_per_s = 1000000
weight = {weight}
"#,
            amount = c.amount.toml(),
            quota = c.cash_quota,
            weight = c.cash_weight,
        );
        text += &coupon_prize(
            &format!("coupon-{round}"),
            "latte",
            1_000_000,
            1_000_000,
            c.coupon_weight,
        );
    }
    text
}

/// Runs one case; returns an error message when a property fails.
async fn check(c: Case) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(&c), t0()).await;
    let addr = server.addr;

    let copies: usize = c.requests.iter().map(|r| r.2).sum();
    let barrier = Arc::new(Barrier::new(copies));
    let mut tasks = Vec::new();
    for (i, &(round, shakes, n)) in c.requests.iter().enumerate() {
        for _ in 0..n {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::connect(addr).await.unwrap();
                barrier.wait().await;
                let r = draw(&mut conn, ROUNDS[round], USER, &format!("q{i}"), shakes).await;
                (i, r)
            }));
        }
    }
    let mut answers: BTreeMap<usize, Vec<bytes::Bytes>> = BTreeMap::new();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if r.status != 200 {
            return Err(format!(
                "request q{i}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        answers.entry(i).or_default().push(r.body);
    }
    // One more retry of every id, later and with another shake count: the stored answer.
    let mut conn = server.conn().await;
    server.clock.advance(100);
    for (i, &(round, shakes, _)) in c.requests.iter().enumerate() {
        let r = draw(
            &mut conn,
            ROUNDS[round],
            USER,
            &format!("q{i}"),
            shakes % 7 + 1,
        )
        .await;
        answers.get_mut(&i).unwrap().push(r.body);
    }

    let mut wins: Vec<Value> = Vec::new();
    let mut shakes_in = [0u32; 2];
    for (i, bodies) in &answers {
        if bodies.iter().any(|b| b != &bodies[0]) {
            return Err(format!("request q{i} got different answers: {bodies:?}"));
        }
        let v: Value = serde_json::from_slice(&bodies[0]).unwrap();
        wins.extend(wins_in(&v));
        let (round, shakes, _) = c.requests[*i];
        shakes_in[round] += shakes;
    }

    // Caps: per round, per campaign, cash.
    let mut per_round = [0u32; 2];
    let mut per_prize: BTreeMap<String, u64> = BTreeMap::new();
    let mut cash = 0;
    for w in &wins {
        let prize = w["prize"].as_str().unwrap();
        let round = if prize.ends_with("ra") { 0 } else { 1 };
        per_round[round] += 1;
        *per_prize.entry(prize.to_string()).or_default() += 1;
        if let Some(a) = w["amount_cents"].as_u64() {
            if !c.amount.contains(a) {
                return Err(format!("amount {a} outside {:?}", c.amount));
            }
            cash += a;
        }
    }
    if per_round.iter().any(|&n| n > c.round_cap) {
        return Err(format!(
            "round wins {per_round:?} past the cap {}",
            c.round_cap
        ));
    }
    let total = per_round[0] + per_round[1];
    if c.campaign_cap.is_some_and(|cap| total > cap) {
        return Err(format!("{total} wins past the campaign cap"));
    }
    if c.cash_cap.is_some_and(|cap| cash > cap) {
        return Err(format!("{cash} cents past the cash cap"));
    }
    // With no "no win" weight every shake wins until a cap: a coupon always fits when cash
    // does not, so the total is exactly what the caps allow.
    if c.no_win_weight == 0 {
        let allowed: u32 = (0..2).map(|r| shakes_in[r].min(c.round_cap)).sum();
        let expected = c.campaign_cap.map_or(allowed, |cap| allowed.min(cap));
        if total != expected {
            return Err(format!(
                "{total} wins where the caps allow exactly {expected} (shakes {shakes_in:?})"
            ));
        }
    }

    // Durable and counted once: listed wins are exactly the answered ones, and every
    // prize's issued counter is its number of wins.
    let listed: BTreeSet<String> = wins_of(&mut conn, USER)
        .await
        .iter()
        .map(|w| w["win_id"].as_str().unwrap().to_string())
        .collect();
    let answered: BTreeSet<String> = wins
        .iter()
        .map(|w| w["win_id"].as_str().unwrap().to_string())
        .collect();
    if answered.len() != wins.len() || listed != answered {
        return Err(format!("listed {listed:?} but answered {answered:?}"));
    }
    for round in ROUNDS {
        for (prize, n) in issued(&mut conn, round).await {
            let won = per_prize.get(&prize).copied().unwrap_or(0);
            if n != won {
                return Err(format!("{prize}: issued {n} but {won} won"));
            }
            if prize.starts_with("cash") && n > c.cash_quota {
                return Err(format!("{prize}: issued {n} past quota {}", c.cash_quota));
            }
        }
    }
    server.stop().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn caps_and_retries_hold_under_one_users_concurrent_requests(c in case()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let result = rt.block_on(check(c));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
