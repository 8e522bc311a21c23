//! The crash test: the real `redrain serve` binary is SIGKILLed under concurrent draws at varied
//! moments and restarted on the same data dir, 22 times. After every restart the ledger
//! verifies (`redrain ledger verify`), the counters replayed from the ledger equal the served
//! `issued`, every win that was acknowledged with a 200 is listed, no prize is issued past its
//! quota, `issued` equals the wins actually stored, no user is past a cap, and every
//! acknowledged request id replays byte for byte.
//!
//! And a disk that refuses a write: the same binary with its file size limited (`ulimit -f`)
//! answers the draws whose group failed with 503, and after a restart nothing of them is left.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{
    campaign, cash_prize, coupon_prize, get_ok, issued, live_round, wins_in, wins_of, Engine,
    PARTNERS,
};
use hyper::Method;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redrain::client::Conn;
use serde_json::{json, Value};
use tokio::sync::watch;

const USERS: usize = 200;
const ROUND_CAP: usize = 4;
const CASH_CAP_CENTS: u64 = 250;
const CASH_AMOUNT: u64 = 100;
const QUOTAS: [(&str, u64); 2] = [("cash-w", 300), ("coupon-w", 100)];
const TASKS: usize = 6;

/// Win-heavy (80% of shakes pick a prize), small quotas, a round cap of 4 and a campaign cash
/// cap of 250 cents (two 100-cent wins): 200 users can use the quotas up.
fn config() -> String {
    campaign(
        "crash",
        &format!("max_cash_cents_per_user = {CASH_CAP_CENTS}"),
    ) + PARTNERS
        + &live_round("crash", "crash", ROUND_CAP as u32, 1)
        + &cash_prize("cash-w", CASH_AMOUNT, QUOTAS[0].1, 1_000_000, 3)
        + &coupon_prize("coupon-w", "latte", QUOTAS[1].1, 100_000, 1)
}

/// One draw request: round "crash", a user, a request id, shakes.
#[derive(Debug, Clone)]
struct Req {
    user: String,
    request_id: String,
    shakes: u32,
}

/// A win as acknowledged in a 200.
#[derive(Debug, Clone)]
struct AckedWin {
    user: String,
    win: Value,
}

#[derive(Default)]
struct Ledger {
    /// Acknowledged requests and the exact body of their answer.
    acked: HashMap<(String, String), (Req, Bytes)>,
    /// Every win of an acknowledged answer (once per request).
    wins: Vec<AckedWin>,
    /// Requests whose answer never arrived (the engine died): retried after the restart.
    unanswered: Vec<Req>,
    /// Anything answered but not as it should be.
    problems: Vec<String>,
}

impl Ledger {
    fn record(&mut self, req: Req, body: Bytes) {
        let key = (req.user.clone(), req.request_id.clone());
        if let Some((_, earlier)) = self.acked.get(&key) {
            if *earlier != body {
                self.problems.push(format!(
                    "{key:?} answered differently: {} then {}",
                    String::from_utf8_lossy(earlier),
                    String::from_utf8_lossy(&body)
                ));
            }
            return;
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        for w in v["wins"].as_array().into_iter().flatten() {
            self.wins.push(AckedWin {
                user: req.user.clone(),
                win: w.clone(),
            });
        }
        self.acked.insert(key, (req, body));
    }
}

async fn send(
    c: &mut Conn,
    req: &Req,
) -> Result<redrain::client::Reply, redrain::client::ClientError> {
    c.post_json(
        "/v1/rounds/crash/draw",
        &json!({"user": req.user, "request_id": req.request_id, "shakes": req.shakes}),
    )
    .await
}

/// One load task: draws until `stop`, retrying unanswered requests first, sometimes re-sending
/// an acknowledged one (which must answer the same bytes).
async fn load(
    addr: SocketAddr,
    cycle: usize,
    task: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    acks: Arc<watch::Sender<u64>>,
) {
    let mut rng = SmallRng::seed_from_u64((cycle * 100 + task) as u64);
    let mut c = match Conn::connect(addr).await {
        Ok(c) => c,
        Err(_) => return, // already killed
    };
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let req = {
            let mut l = ledger.lock().unwrap();
            if let Some(r) = l.unanswered.pop() {
                r
            } else if rng.gen_ratio(1, 10) && !l.acked.is_empty() {
                let i = rng.gen_range(0..l.acked.len());
                l.acked.values().nth(i).unwrap().0.clone()
            } else {
                n += 1;
                Req {
                    user: format!("cu-{}", rng.gen_range(0..USERS)),
                    request_id: format!("c{cycle}-t{task}-{n}"),
                    shakes: rng.gen_range(1..=3),
                }
            }
        };
        match send(&mut c, &req).await {
            Ok(r) if r.status == 200 => {
                ledger.lock().unwrap().record(req, r.body);
                acks.send_modify(|n| *n += 1);
            }
            Ok(r) => ledger.lock().unwrap().problems.push(format!(
                "{req:?}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )),
            Err(_) => {
                // The engine was killed with this request in flight: it may or may not be
                // durable. Retry it, same id, after the restart.
                ledger.lock().unwrap().unanswered.push(req);
                break;
            }
        }
    }
}

/// Checks the durable state against everything acknowledged; returns `issued` by prize.
/// The ledger verifies with the CLI, and the counters it replays equal the served ones.
fn assert_ledger(data: &Path, served: &BTreeMap<String, u64>, cycle: usize) {
    let dir = data.join("ledger");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redrain"))
        .args(["ledger", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cycle {cycle}: ledger verify: {text}");
    let mut replayed: BTreeMap<String, u64> = served.keys().map(|p| (p.clone(), 0)).collect();
    let v = redrain::ledger::verify(&dir, |r| {
        for op in redrain::storage::decode_ops(r.payload).unwrap() {
            if let redrain::storage::Op::Add(redrain::storage::Cf::Counters, key, n) = op {
                let prize = key.split(|&b| b == 0).next().unwrap();
                *replayed
                    .entry(String::from_utf8(prize.to_vec()).unwrap())
                    .or_default() += n;
            }
        }
    })
    .unwrap();
    assert!(v.damage.is_none(), "cycle {cycle}: {:?}", v.damage);
    assert_eq!(
        &replayed, served,
        "cycle {cycle}: ledger counters against served"
    );
}

async fn verify(addr: SocketAddr, ledger: &Mutex<Ledger>, when: &str) -> BTreeMap<String, u64> {
    let mut c = Conn::connect(addr).await.unwrap();
    let issued = issued(&mut c, "crash").await;
    let round = get_ok(&mut c, "/v1/rounds/crash").await;
    let quotas: HashMap<&str, u64> = QUOTAS.into_iter().collect();
    for p in round["prizes"].as_array().unwrap() {
        assert_eq!(
            p["quota"].as_u64(),
            Some(quotas[p["id"].as_str().unwrap()]),
            "{when}: {p}"
        );
    }

    // Every user's listed wins: unique ids, within the caps; counted per prize.
    let mut listed: HashMap<String, HashMap<String, Value>> = HashMap::new();
    let mut per_prize: BTreeMap<String, u64> = BTreeMap::new();
    let mut all_ids = HashSet::new();
    for u in 0..USERS {
        let user = format!("cu-{u}");
        let wins = wins_of(&mut c, &user).await;
        assert!(
            wins.len() <= ROUND_CAP,
            "{when}: {user} has {} wins, past the round cap of {ROUND_CAP}: {wins:?}",
            wins.len()
        );
        let cash: u64 = wins.iter().filter_map(|w| w["amount_cents"].as_u64()).sum();
        assert!(
            cash <= CASH_CAP_CENTS,
            "{when}: {user} has {cash} cents, past the cap of {CASH_CAP_CENTS}"
        );
        for w in wins {
            let id = w["win_id"].as_str().unwrap().to_string();
            assert!(all_ids.insert(id.clone()), "{when}: win {id} listed twice");
            *per_prize
                .entry(w["prize"].as_str().unwrap().to_string())
                .or_default() += 1;
            listed.entry(user.clone()).or_default().insert(id, w);
        }
    }

    for (prize, quota) in QUOTAS {
        let n = issued.get(prize).copied().unwrap_or(0);
        assert!(
            n <= quota,
            "{when}: {prize} issued {n}, past its quota {quota}"
        );
        assert_eq!(
            n,
            per_prize.get(prize).copied().unwrap_or(0),
            "{when}: {prize}: issued differs from the wins stored"
        );
    }

    // Every acknowledged win is durable, as it was answered; every acknowledged answer replays.
    let (wins, acked): (Vec<AckedWin>, Vec<(Req, Bytes)>) = {
        let l = ledger.lock().unwrap();
        assert!(l.problems.is_empty(), "{when}: {:#?}", l.problems);
        (l.wins.clone(), l.acked.values().cloned().collect())
    };
    for a in &wins {
        let id = a.win["win_id"].as_str().unwrap();
        let Some(l) = listed.get(&a.user).and_then(|m| m.get(id)) else {
            panic!("{when}: acknowledged win {} of {} is lost", a.win, a.user);
        };
        for f in ["prize", "kind", "amount_cents", "sku", "at_ms"] {
            assert_eq!(
                l[f], a.win[f],
                "{when}: field {f} of acknowledged win {}",
                a.win
            );
        }
    }
    for (req, body) in acked.iter().take(300) {
        let r = send(&mut c, req).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, *body, "{when}: {req:?} replayed differently");
    }
    issued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_wins_survive_sigkill_and_quotas_hold() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("crash.toml");
    std::fs::write(&config_path, config()).unwrap();
    let data = dir.path().join("data");
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // Kill after this many acknowledged answers in each cycle: at once, early, later, and
    // (the last cycles) while the quotas run out.
    let kill_after = [
        0u64, 3, 40, 1, 90, 15, 150, 250, 7, 400, 2, 60, 0, 25, 120, 5, 300, 11, 75, 180, 33, 500,
    ];
    let mut killed_with_unanswered = 0;
    for (cycle, &k) in kill_after.iter().enumerate() {
        let engine = Engine::start(
            &config_path,
            &data,
            &dir.path().join(format!("log-{cycle}.txt")),
        )
        .await;
        let issued = verify(engine.addr, &ledger, &format!("after start {cycle}")).await;
        assert_ledger(&data, &issued, cycle);
        eprintln!(
            "cycle {cycle}: issued {issued:?}, {} answers acknowledged so far",
            ledger.lock().unwrap().acked.len()
        );

        let stop = Arc::new(AtomicBool::new(false));
        let (acks, mut acked) = watch::channel(0u64);
        let acks = Arc::new(acks);
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                tokio::spawn(load(
                    engine.addr,
                    cycle,
                    t,
                    ledger.clone(),
                    stop.clone(),
                    acks.clone(),
                ))
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(60), acked.wait_for(|n| *n >= k))
            .await
            .expect("the load stalled")
            .unwrap();
        engine.kill().await;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        if !ledger.lock().unwrap().unanswered.is_empty() {
            killed_with_unanswered += 1;
        }
    }
    assert!(
        killed_with_unanswered >= 3,
        "only {killed_with_unanswered} kills caught requests in flight"
    );

    // A last start: check, then draw until the quotas are gone, and check they are exact.
    let engine = Engine::start(&config_path, &data, &dir.path().join("log-final.txt")).await;
    verify(engine.addr, &ledger, "after the last start").await;
    let mut c = Conn::connect(engine.addr).await.unwrap();
    'drain: for pass in 0..6 {
        for u in 0..USERS {
            let req = Req {
                user: format!("cu-{u}"),
                request_id: format!("final-{pass}"),
                shakes: 20,
            };
            let r = send(&mut c, &req).await.unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            ledger.lock().unwrap().record(req, r.body);
            if u % 20 == 19
                && issued(&mut c, "crash").await.values().sum::<u64>()
                    == QUOTAS.iter().map(|q| q.1).sum::<u64>()
            {
                break 'drain;
            }
        }
    }
    let issued = verify(engine.addr, &ledger, "at the end").await;
    assert_eq!(
        issued,
        QUOTAS
            .iter()
            .map(|(p, q)| (p.to_string(), *q))
            .collect::<BTreeMap<_, _>>(),
        "the quotas are used up exactly"
    );
    let m = common::metrics(&mut c).await;
    assert_eq!(common::metric(&m, "redrain_storage_errors_total"), 0.0);
    engine.kill().await;
}

/// Every shake wins a 100-cent prize with ample quota, rate and caps (round id `crash`, so
/// [`send`] reaches it).
fn disk_config() -> String {
    campaign("disk", "")
        + PARTNERS
        + &live_round("crash", "disk", 1_000_000, 0)
        + &cash_prize("cash-d", CASH_AMOUNT, 10_000_000, 1_000_000, 1)
}

/// The ledger's file may grow to this size and no further. A new segment writes its header and
/// 1 MiB of zeros ahead; after about 512 KiB of records the next top-up of zeros fails.
const FILE_LIMIT: u64 = 3 << 19;

/// A disk that refuses a write: the group that hit it is answered 503, gives its prizes back and
/// is cut from the ledger (`Tail::undo`); every later draw is refused as well, since the file's
/// position is no longer known, and `/healthz` answers 503. After a restart without the limit, the acknowledged wins are
/// exactly what is issued and listed, each acknowledged request replays its bytes, and no refused
/// request does: retried, it draws anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draws_the_disk_refused_are_answered_503_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("disk.toml");
    std::fs::write(&config_path, disk_config()).unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("log-limited.txt");
    let engine = Engine::start_with_file_limit(&config_path, &data, &log, FILE_LIMIT).await;

    // Four clients draw, one new user per request, until each is refused three times in a row
    // (every 200 is a win: a fresh data dir holds back no start slot, see CounterBook::starting_at)
    // (the limit is reached after a few thousand draws; 20,000 each bounds the loop).
    let addr = engine.addr;
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            tokio::spawn(async move {
                let mut c = Conn::connect(addr).await.unwrap();
                let (mut acked, mut refused) = (Vec::new(), Vec::new());
                for n in 0..20_000 {
                    let req = Req {
                        user: format!("du-{t}-{n}"),
                        request_id: format!("d-{t}-{n}"),
                        shakes: 1,
                    };
                    let r = send(&mut c, &req).await.unwrap();
                    match r.status {
                        200 => {
                            assert!(refused.is_empty(), "{req:?} was drawn after a refusal");
                            acked.push((req, r.body));
                        }
                        503 => {
                            let e: Value = r.json();
                            assert_eq!(e["code"], "storage_unavailable", "{e}");
                            refused.push(req);
                            if refused.len() == 3 {
                                break;
                            }
                        }
                        s => panic!("{req:?}: {s} {}", String::from_utf8_lossy(&r.body)),
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        let (a, r) = t.await.unwrap();
        assert_eq!(r.len(), 3, "the disk never refused a write");
        acked.extend(a);
        refused.extend(r);
    }
    let acked_wins = acked.len() as u64;
    eprintln!("{acked_wins} draws acknowledged, {} refused", refused.len());
    assert!(acked_wins > 100, "only {acked_wins} draws before the limit");

    // Still up: the refused draws gave their prizes back, and an acknowledged answer is still
    // read back from what is durable.
    let mut c = Conn::connect(addr).await.unwrap();
    assert_eq!(issued(&mut c, "crash").await["cash-d"], acked_wins);
    let m = common::metrics(&mut c).await;
    assert!(common::metric(&m, "redrain_storage_errors_total") >= 1.0);
    assert_eq!(common::metric(&m, "redrain_storage_failed"), 1.0);
    let health = c.get("/healthz").await.unwrap();
    assert_eq!(
        health.status, 503,
        "a node that refuses every draw it must write is not healthy"
    );
    assert_eq!(health.json()["status"], "storage_failed");
    let live = common::admin(&mut c, Method::GET, "/admin/api/live", Some(common::TOKEN)).await;
    assert_eq!(live.json()["storage_failed"], true, "the dashboard says so");
    let (req, body) = &acked[0];
    assert_eq!(send(&mut c, req).await.unwrap().body, *body);
    engine.kill().await;

    // Restarted without the limit: the ledger verifies and replays exactly the acknowledged wins.
    let engine = Engine::start(&config_path, &data, &dir.path().join("log-after.txt")).await;
    let mut c = Conn::connect(engine.addr).await.unwrap();
    assert_eq!(c.get("/healthz").await.unwrap().status, 200);
    let served = issued(&mut c, "crash").await;
    assert_eq!(served["cash-d"], acked_wins, "issued after the restart");
    assert_ledger(&data, &served, 0);
    let replays = |m: &HashMap<String, f64>| common::metric(m, "redrain_draw_replays_total");
    let before = replays(&common::metrics(&mut c).await);
    // Each draws anew (it wins, unless it falls in the 100 ms slot the node started in).
    let mut redrawn_wins = 0;
    for req in &refused {
        let r = send(&mut c, req).await.unwrap();
        assert_eq!(
            r.status,
            200,
            "{req:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        redrawn_wins += wins_in(&r.json()).len() as u64;
    }
    assert_eq!(
        replays(&common::metrics(&mut c).await),
        before,
        "a refused request replayed a stored answer"
    );
    for (req, body) in &acked {
        assert_eq!(send(&mut c, req).await.unwrap().body, *body, "{req:?}");
        let listed = wins_of(&mut c, &req.user).await;
        let won = wins_in(&serde_json::from_slice(body).unwrap());
        assert_eq!(listed.len(), 1, "{req:?}: {listed:?}");
        assert_eq!(listed[0]["win_id"], won[0]["win_id"], "{req:?}");
    }
    assert_eq!(
        issued(&mut c, "crash").await["cash-d"],
        acked_wins + redrawn_wins
    );
    engine.kill().await;
}
