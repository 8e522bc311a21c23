//! Delivery over loopback to `partner-sim` (in-process, real HTTP): lanes keep their partner's
//! rate share per 100 ms slot and their in-flight cap, every win is applied once by key through
//! failures, garbage, huge and slow answers, "no account" defers until the user asks, dead
//! letters are re-driven by an operator, the kill switch holds the queue, nothing is lost when
//! the engine is SIGKILLed mid-delivery, and a refusing coupon partner does not slow cash
//! deliveries or draws.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    admin, campaign, get_ok, live_round, publish, wins_in, wins_of, Engine, Server, TOKEN,
};
use hyper::Method;
use quota::clock::{Clock, SystemClock};
use redrain::client::Conn;
use redrain_delivery::sim::{self, Sim, SimOptions};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// A partner-sim served on 127.0.0.1:0 until dropped.
struct Partner {
    addr: SocketAddr,
    sim: Arc<Sim>,
    _stop: oneshot::Sender<()>,
}

impl Partner {
    async fn start(opts: SimOptions) -> Partner {
        let sim = Sim::new(SimOptions {
            secrets: vec![sim::DEMO_SECRET.into()],
            ..opts
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(sim::serve(listener, sim.clone(), async move {
            let _ = rx.await;
        }));
        Partner {
            addr,
            sim,
            _stop: tx,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/deliver", self.addr)
    }

    fn applied(&self) -> BTreeSet<String> {
        self.sim.applied_ids().into_iter().collect()
    }
}

/// A partner that knows another secret: it refuses every request with 401, for good.
async fn wrong_secret_partner() -> (Arc<Sim>, String) {
    let wrong = Sim::new(SimOptions {
        secrets: vec!["another-secret-0123456789".into()],
        ..SimOptions::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/deliver", listener.local_addr().unwrap());
    tokio::spawn(sim::serve(listener, wrong.clone(), std::future::pending()));
    (wrong, url)
}

/// A wallet partner, a coupon partner with `coupons` options whose lane has (rate, in-flight
/// cap, timeout ms), and an engine whose round's coupon prize has `quota`.
async fn rig(
    dir: &Path,
    coupons: SimOptions,
    lane: (u32, u32, u32),
    quota: u64,
) -> (Partner, Partner, Server) {
    let wallet = Partner::start(SimOptions::default()).await;
    let coupons = Partner::start(coupons).await;
    let (rate, cap, timeout_ms) = lane;
    let cfg = config(
        &partners(&wallet.url(), &coupons.url(), rate, cap, timeout_ms, ""),
        quota,
        0,
        0,
    );
    let server = Server::with_config(dir, &cfg, now()).await;
    (wallet, coupons, server)
}

/// An engine whose coupon partner knows another secret, 20 coupon wins drawn by two users, all
/// dead; also a wallet partner and a coupon partner that knows the right secret. Returns them,
/// the win ids and the config.
async fn all_dead(dir: &Path) -> (Partner, Partner, Server, BTreeSet<String>, String) {
    let wallet = Partner::start(SimOptions::default()).await;
    let (wrong, wrong_url) = wrong_secret_partner().await;
    let right = Partner::start(SimOptions::default()).await;
    let cfg = config(
        &partners(&wallet.url(), &wrong_url, 1000, 8, 1000, ""),
        20,
        0,
        0,
    );
    let server = Server::with_config(dir, &cfg, now()).await;
    let mut c = server.conn().await;
    let ids = draw_wins(&mut c, 2).await;
    eventually("every delivery is dead", || async {
        let mut c = server.conn().await;
        statuses(&mut c, 2).await.iter().all(|s| s == "failed")
    })
    .await;
    assert_eq!(
        wrong.summary().bad_signature,
        20,
        "each was refused once, for good"
    );
    (wallet, right, server, ids, cfg)
}

/// Polls `check` every 20 ms until it holds; the deadline only guards against a hang.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A wallet partner and a coupon partner (`coupons`), with the coupon lane's rate, cap and
/// timeout and extra partner lines.
fn partners(
    wallet: &str,
    coupons: &str,
    rate: u32,
    cap: u32,
    timeout_ms: u32,
    extra: &str,
) -> String {
    format!(
        r#"
[[partners]]
id = "wallet"
kind = "wallet"
url = "{wallet}"
rate_per_s = 20000
max_in_flight = 32
timeout_ms = 1000

[[partners]]
id = "coupons"
kind = "coupon"
url = "{coupons}"
rate_per_s = {rate}
max_in_flight = {cap}
timeout_ms = {timeout_ms}
{extra}
"#
    )
}

/// Campaign `c`, round `r` (10 wins per user, no "no win"), a coupon prize with `quota`, a cash
/// prize with weight `cash_weight` (0: none) and a no-win weight.
fn config(partners: &str, quota: u64, cash_weight: u32, no_win: u32) -> String {
    let mut c = campaign("c", "") + partners + &live_round("r", "c", 20, no_win);
    c += &format!(
        r#"
[[rounds.prizes]]
id = "latte"
kind = "coupon"
sku = "LATTE"
partner = "coupons"
quota = {quota}
rate_per_s = 2000000
weight = 1
"#
    );
    if cash_weight > 0 {
        c += &format!(
            r#"
[[rounds.prizes]]
id = "cash"
kind = "cash"
amount_cents = 88
partner = "wallet"
quota = 100000000
rate_per_s = 2000000
weight = {cash_weight}
"#
        );
    }
    c
}

/// Draws `users` × 10 shakes; returns every win id.
async fn draw_wins(c: &mut Conn, users: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for u in 0..users {
        let v = common::draw_ok(c, "r", &format!("u{u}"), "q1", 10).await;
        for w in wins_in(&v) {
            ids.insert(w["win_id"].as_str().unwrap().to_string());
        }
    }
    ids
}

async fn statuses(c: &mut Conn, users: usize) -> Vec<String> {
    let mut out = Vec::new();
    for u in 0..users {
        for w in wins_of(c, &format!("u{u}")).await {
            out.push(w["status"].as_str().unwrap().to_string());
        }
    }
    out
}

async fn all_delivered(c: &mut Conn, users: usize) -> bool {
    statuses(c, users).await.iter().all(|s| s == "delivered")
}

async fn ask(c: &mut Conn, win_id: &str, body: Value) -> redrain::client::Reply {
    c.post_json(&format!("/v1/wins/{win_id}/redeliver"), &body)
        .await
        .unwrap()
}

async fn lane(c: &mut Conn, partner: &str) -> Value {
    let r = admin(c, Method::GET, "/admin/api/delivery", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    let v: Value = r.json();
    v["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["partner"] == partner)
        .cloned()
        .unwrap()
}

fn now() -> u64 {
    SystemClock.now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_keeps_its_slot_share_and_in_flight_cap_and_delivers_each_win_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_wallet, coupons, server) = rig(
        dir.path(),
        SimOptions {
            latency_min_ms: 1,
            latency_max_ms: 15,
            ..SimOptions::default()
        },
        (200, 4, 1000),
        400,
    )
    .await;
    let mut c = server.conn().await;
    let ids = draw_wins(&mut c, 40).await;
    assert_eq!(ids.len(), 400);

    eventually("every win is delivered", || async {
        coupons.sim.summary().applied == 400
    })
    .await;
    eventually("every win shows delivered", || async {
        let mut c = server.conn().await;
        all_delivered(&mut c, 40).await
    })
    .await;
    let s = coupons.sim.summary();
    assert_eq!(
        coupons.applied(),
        ids,
        "the partner applied exactly the wins"
    );
    assert_eq!(s.duplicates, 0);
    assert_eq!(s.received, 400);
    assert!(
        s.max_per_slot <= 20,
        "200/s is 20 per 100 ms slot; the partner saw {}",
        s.max_per_slot
    );
    assert!(
        s.max_in_flight <= 4,
        "cap 4; the partner saw {} at once",
        s.max_in_flight
    );
    assert!(
        s.max_per_slot >= 2,
        "the lane did send in bursts up to its share"
    );
    // The lane counts a delivery once its state is durable, just after the record shows it.
    eventually("the lane counted every delivery", || async {
        let mut c = server.conn().await;
        lane(&mut c, "coupons").await["delivered"] == 400
    })
    .await;
    let m = common::metrics(&mut c).await;
    assert_eq!(
        common::metric(&m, "redrain_deliveries_total{partner=\"coupons\"}"),
        400.0
    );
    let l = lane(&mut c, "coupons").await;
    assert_eq!(l["queued"], 0);
    assert_eq!(l["in_flight"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_429s_are_retried_with_the_same_key_until_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (_wallet, coupons, server) = rig(
        dir.path(),
        SimOptions {
            fail_rate: 0.3,
            throttle_rate: 0.05,
            seed: 3,
            ..SimOptions::default()
        },
        (1000, 8, 1000),
        60,
    )
    .await;
    let mut c = server.conn().await;
    let ids = draw_wins(&mut c, 6).await;
    eventually("every win is applied", || async {
        coupons.sim.summary().applied == 60
    })
    .await;
    let s = coupons.sim.summary();
    assert_eq!(coupons.applied(), ids);
    assert!(
        s.failed > 0 && s.throttled > 0,
        "the partner failed some: {s:?}"
    );
    assert_eq!(
        s.duplicates, 0,
        "a failed request was not applied, so no resend is a duplicate"
    );
    eventually("the engine counted the failures", || async {
        let mut c = server.conn().await;
        lane(&mut c, "coupons").await["failures"].as_u64().unwrap() == s.failed + s.throttled
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_huge_and_slow_answers_do_not_stall_the_lane() {
    let dir = tempfile::tempdir().unwrap();
    let (_wallet, coupons, server) = rig(
        dir.path(),
        SimOptions {
            garbage_rate: 0.2,
            huge_rate: 0.2,
            slow_rate: 0.1,
            slow_ms: 3_000,
            seed: 5,
            ..SimOptions::default()
        },
        (1000, 8, 300),
        80,
    )
    .await;
    let mut c = server.conn().await;
    let ids = draw_wins(&mut c, 8).await;
    eventually("every win shows delivered", || async {
        let mut c = server.conn().await;
        all_delivered(&mut c, 8).await
    })
    .await;
    let s = coupons.sim.summary();
    assert_eq!(coupons.applied(), ids);
    assert!(
        s.duplicates > 0,
        "slow answers timed out and were resent with the same key"
    );
    // The lane counts a delivery once its state is durable, just after the record shows it.
    eventually("the lane counted every delivery", || async {
        let mut c = server.conn().await;
        lane(&mut c, "coupons").await["delivered"] == 80
    })
    .await;
    let l = lane(&mut c, "coupons").await;
    assert!(l["failures"].as_u64().unwrap() > 0, "timeouts were counted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_account_defers_until_the_user_asks_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_wallet, coupons, server) = rig(
        dir.path(),
        SimOptions {
            require_accounts: true,
            ..SimOptions::default()
        },
        (1000, 8, 1000),
        10,
    )
    .await;
    let mut c = server.conn().await;
    let ids: Vec<String> = draw_wins(&mut c, 1).await.into_iter().collect();
    eventually("the wins are deferred", || async {
        let mut c = server.conn().await;
        statuses(&mut c, 1).await.iter().all(|s| s == "deferred")
    })
    .await;
    assert_eq!(coupons.sim.summary().no_account, 10);

    // Bad asks: 4xx naming the problem, nothing changes.
    let r = ask(&mut c, "not-hex", json!({"user": "u0"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "win_id");
    let r = ask(&mut c, &ids[0], json!({})).await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("user"));
    let r = ask(&mut c, &ids[0], json!({"user": "someone-else"})).await;
    assert_eq!(r.status, 404, "only the winner may ask");
    // Asks for a win that does not exist, or is someone else's, are refused and do not use up
    // the user's asks.
    for i in 0..redrain::delivery::MAX_ASKS {
        let r = ask(&mut c, "000000000000000000000000", json!({"user": "u0"})).await;
        assert_eq!(
            r.status,
            404,
            "ask {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let r = ask(&mut c, &ids[0], json!({"user": "u1"})).await;
        assert_eq!(
            r.status,
            404,
            "ask {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(coupons.sim.summary().received, 10);

    assert!(coupons.sim.open_account("u0"));
    let r = ask(&mut c, &ids[0], json!({"user": "u0"})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "pending");
    eventually("the asked-for win is delivered", || async {
        coupons.applied().contains(&ids[0])
    })
    .await;
    eventually("it shows delivered", || async {
        let mut c = server.conn().await;
        wins_of(&mut c, "u0")
            .await
            .iter()
            .any(|w| w["win_id"] == ids[0].as_str() && w["status"] == "delivered")
    })
    .await;
    assert_eq!(
        coupons.applied().len(),
        1,
        "the others stay deferred until asked"
    );
    // One ask used; the limit allows MAX_ASKS a minute.
    for i in 1..redrain::delivery::MAX_ASKS {
        let r = ask(&mut c, &ids[i as usize], json!({"user": "u0"})).await;
        assert_eq!(r.status, 200);
    }
    let r = ask(&mut c, &ids[9], json!({"user": "u0"})).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "too_many_redeliveries");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_redriven_by_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let (wallet, right, server, ids, _) = all_dead(dir.path()).await;
    let mut c = server.conn().await;
    eventually("the lane counted every dead letter", || async {
        let mut c = server.conn().await;
        lane(&mut c, "coupons").await["dead"] == 20
    })
    .await;

    // The operator points the partner at the right endpoint and re-drives its dead letters.
    let fixed = config(
        &partners(&wallet.url(), &right.url(), 1000, 8, 1000, ""),
        20,
        0,
        0,
    );
    assert_eq!(
        publish(&mut c, &fixed, "application/toml", Some(TOKEN))
            .await
            .status,
        200
    );
    let path = "/admin/api/delivery/partners/coupons/redrive-dead";
    let r = admin(&mut c, Method::POST, path, None).await;
    assert_eq!(r.status, 401);
    let r = admin(&mut c, Method::POST, path, Some("wrong")).await;
    assert_eq!(r.status, 401);
    let r = admin(
        &mut c,
        Method::POST,
        "/admin/api/delivery/partners/nobody/redrive-dead",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = admin(&mut c, Method::POST, path, Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["redriven"], 20);
    eventually("every win is delivered", || async {
        right.applied() == ids
    })
    .await;
    eventually("every win shows delivered", || async {
        let mut c = server.conn().await;
        all_delivered(&mut c, 2).await
    })
    .await;
    // Re-driving a delivered one changes nothing.
    let one = ids.iter().next().unwrap();
    let r = admin(
        &mut c,
        Method::POST,
        &format!("/admin/api/delivery/{one}/redrive"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "delivered");
    let r = admin(&mut c, Method::POST, path, Some(TOKEN)).await;
    assert_eq!(r.json()["redriven"], 0, "no dead letters are left");
    assert_eq!(right.sim.summary().received, 20);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_holds_a_partners_queue() {
    let dir = tempfile::tempdir().unwrap();
    let wallet = Partner::start(SimOptions::default()).await;
    let coupons = Partner::start(SimOptions::default()).await;
    let paused = config(
        &partners(
            &wallet.url(),
            &coupons.url(),
            1000,
            8,
            1000,
            "paused = true",
        ),
        30,
        0,
        0,
    );
    let server = Server::with_config(dir.path(), &paused, now()).await;
    let mut c = server.conn().await;
    let ids = draw_wins(&mut c, 3).await;
    let l = lane(&mut c, "coupons").await;
    assert_eq!(l["paused"], true);
    assert_eq!(l["queued"], 30);
    // Nothing signals "still nothing sent"; watch the partner for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(coupons.sim.summary().received, 0);
    assert_eq!(lane(&mut c, "coupons").await["queued"], 30);

    let resumed = config(
        &partners(&wallet.url(), &coupons.url(), 1000, 8, 1000, ""),
        30,
        0,
        0,
    );
    assert_eq!(
        publish(&mut c, &resumed, "application/toml", Some(TOKEN))
            .await
            .status,
        200
    );
    eventually("the held queue is delivered", || async {
        coupons.applied() == ids
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_engine_is_killed_mid_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let wallet = Partner::start(SimOptions::default()).await;
    let coupons = Partner::start(SimOptions {
        latency_min_ms: 2,
        latency_max_ms: 20,
        ..SimOptions::default()
    })
    .await;
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        config(
            &partners(&wallet.url(), &coupons.url(), 300, 8, 1000, ""),
            600,
            0,
            0,
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let log = |i: usize| dir.path().join(format!("log-{i}.txt"));
    let engine = Engine::start(&config_path, &data, &log(0)).await;
    let mut c = Conn::connect(engine.addr).await.unwrap();
    let ids = draw_wins(&mut c, 60).await;
    assert_eq!(ids.len(), 600);
    let mut engine = engine;
    for cycle in 1..=3 {
        let target = 150 * cycle as u64;
        eventually("the partner has taken some", || async {
            coupons.sim.summary().applied >= target
        })
        .await;
        engine.kill().await;
        engine = Engine::start(&config_path, &data, &log(cycle)).await;
    }
    eventually("every win is applied after the restarts", || async {
        coupons.sim.summary().applied == 600
    })
    .await;
    assert_eq!(
        coupons.applied(),
        ids,
        "applied once by key, none missing, none extra"
    );
    let addr = engine.addr;
    eventually("every win shows delivered", || async {
        let mut c = Conn::connect(addr).await.unwrap();
        all_delivered(&mut c, 60).await
    })
    .await;
    engine.kill().await;
}

/// Draws from `clients` connections, each [`DRAWS_PER_CLIENT_S`] a second, for `secs` seconds
/// (users named from `users`, so win ids differ between calls); returns the draws' p99 (ms) and
/// how many cash wins there were.
async fn draw_for(addr: SocketAddr, users: &str, clients: usize, secs: u64) -> (f64, u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..clients {
        let users = users.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await.unwrap();
            let (mut lat, mut cash, mut n) = (Vec::new(), 0u64, 0u64);
            // Paced, not as fast as possible: a p99 at saturation measures the queue, and the
            // suite's other tests share the machine meanwhile.
            let mut pace = tokio::time::interval(Duration::from_secs(1) / DRAWS_PER_CLIENT_S);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < until {
                pace.tick().await;
                let started = Instant::now();
                let v = common::draw_ok(&mut c, "r", &format!("{users}{t}-{n}"), "q", 1).await;
                lat.push(started.elapsed().as_secs_f64() * 1000.0);
                cash += wins_in(&v).iter().filter(|w| w["kind"] == "cash").count() as u64;
                n += 1;
            }
            (lat, cash)
        }));
    }
    let (mut all, mut cash) = (Vec::new(), 0);
    for t in tasks {
        let (lat, c) = t.await.unwrap();
        all.extend(lat);
        cash += c;
    }
    all.sort_by(f64::total_cmp);
    (all[(all.len() * 99 / 100).min(all.len() - 1)], cash)
}

/// Draws a second per connection of [`draw_for`].
const DRAWS_PER_CLIENT_S: u32 = 250;

/// Runs an engine whose coupon partner is at `coupon_url` while 8 connections draw for `secs`.
async fn phase(
    dir: &Path,
    name: &str,
    coupon_url: &str,
    wallet: &Partner,
    secs: u64,
) -> (f64, u64, Value, Value) {
    let config_path = dir.join(format!("{name}.toml"));
    // Coupons win as often as cash; the coupon lane is slow (50/s) so it holds a queue.
    std::fs::write(
        &config_path,
        config(
            &partners(&wallet.url(), coupon_url, 50, 8, 500, ""),
            100_000_000,
            1,
            8,
        ),
    )
    .unwrap();
    let engine = Engine::start(
        &config_path,
        &dir.join(name),
        &dir.join(format!("{name}.log")),
    )
    .await;
    let before = wallet.sim.summary().applied;
    let (draw_p99, cash) = draw_for(engine.addr, name, 8, secs).await;
    let mut c = Conn::connect(engine.addr).await.unwrap();
    eventually("every cash win is delivered", || async {
        wallet.sim.summary().applied - before == cash
    })
    .await;
    let (cash_lane, coupon_lane) = (lane(&mut c, "wallet").await, lane(&mut c, "coupons").await);
    engine.kill().await;
    (draw_p99, cash, cash_lane, coupon_lane)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_coupon_partner_slows_neither_cash_nor_draws() {
    let dir = tempfile::tempdir().unwrap();
    let wallet = Partner::start(SimOptions::default()).await;
    let coupons = Partner::start(SimOptions::default()).await;
    // A port with nothing listening: every coupon request is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let healthy = phase(dir.path(), "healthy", &coupons.url(), &wallet, 20).await;
    // The coupon partner refuses every connection for a whole minute.
    let broken = phase(
        dir.path(),
        "broken",
        &format!("http://{closed}/deliver"),
        &wallet,
        60,
    )
    .await;
    eprintln!(
        "draw p99: healthy {:.2} ms, refusing {:.2} ms; cash win→delivered p99: healthy {} ms, refusing {} ms",
        healthy.0, broken.0, healthy.2["latency_p99_ms"], broken.2["latency_p99_ms"]
    );
    assert!(healthy.1 > 0 && broken.1 > 0, "both phases won cash");
    assert_eq!(broken.3["delivered"], 0);
    assert!(
        broken.3["failures"].as_u64().unwrap() > 0,
        "the coupon partner refused"
    );
    let cash_p99 = |p: &(f64, u64, Value, Value)| p.2["latency_p99_ms"].as_f64().unwrap();
    // Same test, same machine: the refusing partner may not make either p99 worse by more than
    // noise (3× plus 20 ms on this shared 2-core machine).
    assert!(
        broken.0 <= healthy.0 * 3.0 + 20.0,
        "draw p99 {:.2} ms with a refusing partner vs {:.2} ms",
        broken.0,
        healthy.0
    );
    assert!(
        cash_p99(&broken) <= cash_p99(&healthy) * 3.0 + 20.0,
        "cash p99 {} ms with a refusing partner vs {} ms",
        cash_p99(&broken),
        cash_p99(&healthy)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_urls_must_point_at_allowed_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &partners(
            "http://127.0.0.1:1/deliver",
            "http://127.0.0.1:2/deliver",
            10,
            1,
            100,
            "",
        ),
        10,
        0,
        0,
    );
    let server = Server::with_config(dir.path(), &cfg, now()).await;
    let mut c = server.conn().await;
    let seq = common::config_seq(&mut c).await;
    let outside = config(
        &partners(
            "http://127.0.0.1:1/deliver",
            "http://partner.example.com/deliver",
            10,
            1,
            100,
            "",
        ),
        10,
        0,
        0,
    );
    let r = publish(&mut c, &outside, "application/toml", Some(TOKEN)).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["field"], "partners[1].url");
    assert_eq!(common::config_seq(&mut c).await, seq, "nothing published");
    let _ = get_ok(&mut c, "/healthz").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_reports_lost_and_failed_deliveries_and_the_redrive_closes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (wallet, right, server, ids, cfg) = all_dead(dir.path()).await;
    let mut c = server.conn().await;
    // One delivery record is lost (as a lost write or a bug would lose it).
    let lost = ids.iter().next().unwrap().clone();
    server
        .app()
        .service
        .storage
        .commit(vec![
            redrain::storage::Op::Delete(
                redrain::storage::Cf::Deliveries,
                lost.clone().into_bytes(),
            ),
            redrain::storage::Op::Delete(
                redrain::storage::Cf::Outbox,
                redrain::delivery::dead_key("coupons", &lost),
            ),
        ])
        .await
        .unwrap();

    let path = "/admin/api/reconciliation?run=true";
    assert_eq!(admin(&mut c, Method::GET, path, None).await.status, 401);
    let r = admin(
        &mut c,
        Method::GET,
        "/admin/api/reconciliation?run=maybe",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "run");
    let r = admin(&mut c, Method::GET, path, Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    let report: Value = r.json();
    assert_eq!(report["ok"], false);
    let m = &report["mismatches"];
    assert_eq!(m["wins_without_delivery"], json!([lost]));
    let dead: BTreeSet<String> = serde_json::from_value(m["dead"].clone()).unwrap();
    let mut others = ids.clone();
    others.remove(&lost);
    assert_eq!(dead, others, "exactly the other 19 are dead");
    for empty in [
        "over_issue",
        "counter_differs",
        "deliveries_without_win",
        "duplicate_deliveries",
    ] {
        assert_eq!(m[empty], json!([]), "{empty}");
    }
    let latte = report["prizes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["prize"] == "latte")
        .unwrap()
        .clone();
    assert_eq!(
        (
            latte["quota"].as_u64(),
            latte["counter"].as_u64(),
            latte["wins"].as_u64()
        ),
        (Some(20), Some(20), Some(20))
    );
    assert_eq!(
        (
            latte["dead"].as_u64(),
            latte["missing"].as_u64(),
            latte["delivered"].as_u64()
        ),
        (Some(19), Some(1), Some(0))
    );

    // Draws that change nothing are on the ledger too, as per-slot aggregates.
    let paused = cfg.replace("no_win_weight = 0\n", "no_win_weight = 0\npaused = true\n");
    assert_ne!(paused, cfg);
    assert_eq!(
        publish(&mut c, &paused, "application/toml", Some(TOKEN))
            .await
            .status,
        200
    );
    let v = common::draw_ok(&mut c, "r", "late", "q1", 1).await;
    assert_eq!(v["outcome"], "not_live");
    eventually("the no-change draw is on the ledger", || async {
        let mut c = server.conn().await;
        let report: Value = admin(&mut c, Method::GET, path, Some(TOKEN)).await.json();
        report["draws"]["r"]["not_live"] == 1
    })
    .await;
    let report: Value = admin(
        &mut c,
        Method::GET,
        "/admin/api/reconciliation",
        Some(TOKEN),
    )
    .await
    .json();
    assert_eq!(report["draws"]["r"]["win"], 2, "two requests won");

    // Fix the partner, re-drive what reconciliation found; a second re-drive finds nothing.
    let fixed = config(
        &partners(&wallet.url(), &right.url(), 1000, 8, 1000, ""),
        20,
        0,
        0,
    );
    assert_eq!(
        publish(&mut c, &fixed, "application/toml", Some(TOKEN))
            .await
            .status,
        200
    );
    let r = admin(
        &mut c,
        Method::POST,
        "/admin/api/reconciliation/redrive",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"created": 1, "redriven": 19}));
    eventually("every win is delivered", || async {
        right.applied() == ids
    })
    .await;
    eventually("reconciliation is clean", || async {
        let mut c = server.conn().await;
        let report: Value = admin(&mut c, Method::GET, path, Some(TOKEN)).await.json();
        report["ok"] == true
            && report["prizes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["prize"] == "latte" && p["delivered"] == 20)
    })
    .await;
    let r = admin(
        &mut c,
        Method::POST,
        "/admin/api/reconciliation/redrive",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.json(), json!({"created": 0, "redriven": 0}));
    assert_eq!(right.sim.summary().duplicates, 0);

    // The CLI reads the same ledger and agrees.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redrain"))
        .args(["reconcile", "--json"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["ok"], true);
    assert_eq!(cli["prizes"], report_prizes(&mut c).await);
    server.stop().await;
}

async fn report_prizes(c: &mut Conn) -> Value {
    let r: Value = admin(
        c,
        Method::GET,
        "/admin/api/reconciliation?run=true",
        Some(TOKEN),
    )
    .await
    .json();
    r["prizes"].clone()
}

/// L3: a partner removed from the config while its deliveries were open kept its lane until a
/// restart; after one, its outbox was never read again and a re-drive answered "no partner".
/// Its lane now comes back with the settings of the last config that named it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_partners_open_deliveries_still_go_out_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let wallet = Partner::start(SimOptions::default()).await;
    // The coupon partner is down: nothing listens on its address yet.
    let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coupons_addr = down.local_addr().unwrap();
    drop(down);
    let coupons_url = format!("http://{coupons_addr}/deliver");
    let cfg = config(
        &partners(&wallet.url(), &coupons_url, 1000, 8, 1000, ""),
        20,
        0,
        0,
    );
    let server = Server::with_config(dir.path(), &cfg, now()).await;
    let mut c = server.conn().await;
    let ids = draw_wins(&mut c, 2).await;
    assert_eq!(ids.len(), 20);
    eventually("every delivery has failed once", || async {
        let mut c = server.conn().await;
        lane(&mut c, "coupons").await["failures"].as_u64().unwrap() >= 20
    })
    .await;

    // The operator removes the partner (and its prize) from the config file; the engine
    // restarts and publishes it.
    let without = campaign("c", "")
        + &format!(
            r#"
[[partners]]
id = "wallet"
kind = "wallet"
url = "{}"
rate_per_s = 20000
max_in_flight = 32
timeout_ms = 1000
"#,
            wallet.url()
        )
        + &live_round("r", "c", 20, 0)
        + &common::cash_prize("cash", 88, 1000, 1000, 1);
    std::fs::write(&server.config_path, without).unwrap();
    let server = server.restart().await;
    let mut c = server.conn().await;
    let l = lane(&mut c, "coupons").await;
    assert_eq!(l["in_config"], false, "{l}");
    assert_eq!(l["settings_known"], true, "{l}");
    let m = common::metrics(&mut c).await;
    assert_eq!(
        common::metric(&m, "redrain_delivery_lane_in_config{partner=\"coupons\"}"),
        0.0
    );

    // A re-drive finds the partner (its lane), and the partner, back up, gets every win.
    let one = ids.iter().next().unwrap();
    let r = admin(
        &mut c,
        Method::POST,
        &format!("/admin/api/delivery/{one}/redrive"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let listener = tokio::net::TcpListener::bind(coupons_addr).await.unwrap();
    let sim = Sim::new(SimOptions {
        secrets: vec![sim::DEMO_SECRET.into()],
        ..SimOptions::default()
    });
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(sim::serve(listener, sim.clone(), async move {
        let _ = stopped.await;
    }));
    eventually("every win is delivered", || async {
        sim.applied_ids().into_iter().collect::<BTreeSet<_>>() == ids
    })
    .await;
    server.stop().await;
}
