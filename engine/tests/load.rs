//! `redrain load` itself: against a real engine its checks pass, and against an engine that
//! lies (over quota, over a slot's share, over a cap, wins it does not list) every check fails
//! and the run fails.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use redrain::load::{self, LoadArgs};
use serde_json::{json, Value};
use warp::Filter;

fn args(target: String, rate: u64) -> LoadArgs {
    LoadArgs {
        target,
        round: None,
        duration: Duration::from_millis(1500),
        connections: 8,
        rate,
        users: 20,
        distinct_users: false,
        user_prefix: None,
        requests: 0,
        shakes: 2,
        compare_healthz: true,
        verify_users: 200,
        quiet: true,
        json: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_pass_against_the_engine_while_its_clock_runs_through_many_slots() {
    let dir = tempfile::tempdir().unwrap();
    let config = campaign("spring", "")
        + PARTNERS
        + &live_round("r1", "spring", 3, 1)
        + &cash_prize("cash", 88, 1_000, 50, 10)
        + &coupon_prize("latte", "latte-m", 40, 30, 10);
    let server = Server::with_config(dir.path(), &config, t0()).await;
    // The engine's clock moves 100 ms (one slot) about every 10 ms of the run, so the load
    // meets fresh slots, runs coupons out of quota and users into their cap.
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (clock, done) = (server.clock.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                clock.advance(100);
                tokio::time::sleep(Duration::from_millis(10)).await; // drives time, not sync
            }
        })
    };
    for rate in [0, 2_000] {
        let report = load::report(&args(format!("http://{}", server.addr), rate))
            .await
            .unwrap();
        assert_eq!(report["check_failures"], json!([]), "{report}");
        assert!(load::passed(&report), "{report}");
        assert!(report["draws"]["ok"].as_u64().unwrap() > 100, "{report}");
        assert!(report["ratio"].as_f64().unwrap() > 0.0, "{report}");
        // 20 users, each capped at 3 wins in the round: the load saw wins, and saw the caps.
        let wins: u64 = report["outcomes"]["win"].as_u64().unwrap_or(0);
        assert!(wins > 0 && wins <= 60, "{report}");
    }
    done.store(true, Ordering::Relaxed);
    ticker.await.unwrap();
    let issued = issued(&mut server.conn().await, "r1").await;
    assert!(issued["latte"] <= 40, "{issued:?}");
    server.stop().await;
}

/// An engine that answers every draw with a win of prize `p` (quota 1, 10/s: one per slot),
/// all in the same 100 ms slot, says it issued 5, and lists no wins.
async fn lying_engine() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let next = Arc::new(AtomicU64::new(0));
    let rounds = warp::path!("v1" / "rounds")
        .map(|| warp::reply::json(&json!({"rounds": [{"id": "r", "status": "live"}]})));
    let round = warp::path!("v1" / "rounds" / String).map(|_: String| {
        warp::reply::json(&json!({
            "id": "r",
            "max_wins_per_user": 1,
            "prizes": [{"id": "p", "quota": 1, "issued": 5, "node_quota": 1, "node_rate_per_s": 10}],
        }))
    });
    let draw = warp::post()
        .and(warp::path!("v1" / "rounds" / String / "draw"))
        .and(warp::body::json())
        .map(move |_: String, body: Value| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            warp::reply::json(&json!({
                "outcome": "win", "round": "r", "occurrence": 1, "seq": 1,
                "wins": [{"win_id": format!("w{n}"), "prize": "p", "kind": "cash",
                          "amount_cents": 1, "at": "2030-01-01T00:00:00.000Z",
                          "at_ms": 1_893_456_000_000u64, "user": body["user"]}],
            }))
        });
    let wins = warp::path!("v1" / "users" / String / "wins")
        .map(|_: String| warp::reply::json(&json!({"wins": []})));
    let healthz = warp::path!("healthz").map(|| "ok");
    let routes = rounds.or(round).or(draw).or(wins).or(healthz);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        warp::serve(routes)
            .incoming(listener)
            .graceful(async move {
                let _ = rx.await;
            })
            .run(),
    );
    (addr, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_fails_against_an_engine_that_lies() {
    let (addr, stop) = lying_engine().await;
    let mut a = args(format!("http://{addr}"), 0);
    a.compare_healthz = false;
    a.shakes = 1;
    let report = load::report(&a).await.unwrap();
    assert!(!load::passed(&report), "{report}");
    let failures: Vec<String> = report["check_failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    for expected in [
        "prize p: issued 5 > quota 1",
        "wins received > node quota 1",
        "wins > the node's room 1 in it",
        "> round cap 1",
        "was acknowledged but is not listed",
    ] {
        assert!(
            failures.iter().any(|f| f.contains(expected)),
            "no failure says {expected:?}: {failures:?}"
        );
    }
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_with_the_same_users_draws_anew_rather_than_replaying() {
    let dir = tempfile::tempdir().unwrap();
    let config = campaign("spring", "")
        + PARTNERS
        + &live_round("r1", "spring", 1_000, 1)
        + &cash_prize("cash", 88, 1_000_000, 100_000, 1);
    let server = Server::with_config(dir.path(), &config, t0()).await;
    let mut a = args(format!("http://{}", server.addr), 0);
    a.compare_healthz = false;
    a.duration = Duration::from_millis(800);
    a.user_prefix = Some("back".into());
    for run in 0..2 {
        let report = load::report(&a).await.unwrap();
        assert!(load::passed(&report), "{report}");
        assert!(report["draws"]["ok"].as_u64().unwrap() > 100, "{report}");
        // Run 1 draws as the same users as run 0, with request ids of its own.
        assert_eq!(report["replayed"], json!(0), "run {run}: {report}");
    }
    server.stop().await;
}
