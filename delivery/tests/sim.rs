//! `partner-sim` over real HTTP: each test starts the simulator on `127.0.0.1:0`, talks to it
//! with a plain hyper client and stops it at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use redrain_delivery::sign::{
    sign, IDEMPOTENCY_HEADER, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use redrain_delivery::sim::{self, Sim, SimOptions, Summary, HUGE_BODY_BYTES, MAX_BODY_BYTES};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SECRET: &str = "partner-test-secret";

/// A running simulator.
struct Partner {
    addr: SocketAddr,
    sim: Arc<Sim>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

fn options() -> SimOptions {
    SimOptions {
        secrets: vec![SECRET.to_string()],
        ..SimOptions::default()
    }
}

async fn start(opts: SimOptions) -> Partner {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = Sim::new(opts);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(sim::serve(listener, sim.clone(), async {
        let _ = stopped.await;
    }));
    Partner {
        addr,
        sim,
        stop,
        task,
    }
}

impl Partner {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the simulator stops")
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(self.addr).await.is_err(),
            "no longer accepting"
        );
    }
}

/// One keep-alive connection.
struct Client(SendRequest<Full<Bytes>>);

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

async fn connect(addr: SocketAddr) -> Client {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    Client(send)
}

impl Client {
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let res = self
            .0
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.call(Method::GET, path, &[], Vec::new()).await
    }

    async fn deliver(&mut self, d: &Delivery) -> Answer {
        self.call(Method::POST, "/deliver", &d.headers(), d.body.clone())
            .await
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A delivery request as a lane would send it.
#[derive(Clone)]
struct Delivery {
    id: String,
    timestamp_s: u64,
    secret: String,
    idempotency_key: Option<String>,
    body: Vec<u8>,
}

fn delivery(id: &str, user: &str) -> Delivery {
    let body = json!({
        "delivery_id": id,
        "win_id": id,
        "user": user,
        "prize": "cash-small",
        "amount_cents": 100,
        "issued_at": "2025-01-01T00:00:00Z",
        "issued_ms": 1_735_689_600_000u64,
    });
    Delivery {
        id: id.to_string(),
        timestamp_s: now_s(),
        secret: SECRET.to_string(),
        idempotency_key: Some(id.to_string()),
        body: serde_json::to_vec(&body).unwrap(),
    }
}

impl Delivery {
    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (ID_HEADER, self.id.clone()),
            (TIMESTAMP_HEADER, self.timestamp_s.to_string()),
            (
                SIGNATURE_HEADER,
                sign(&[&self.secret], &self.id, self.timestamp_s, &self.body),
            ),
        ];
        if let Some(k) = &self.idempotency_key {
            h.push((IDEMPOTENCY_HEADER, k.clone()));
        }
        h
    }
}

#[tokio::test]
async fn a_signed_delivery_is_applied_once_and_a_repeat_is_a_duplicate() {
    let p = start(options()).await;
    let mut c = connect(p.addr).await;
    let d = delivery("d_1", "u1");
    let a = c.deliver(&d).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"status": "applied"}));
    // Same connection (keep-alive), same delivery, freshly signed as a retry would be.
    let retry = Delivery {
        timestamp_s: now_s(),
        ..d.clone()
    };
    let a = c.deliver(&retry).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"status": "duplicate"}));
    let s = p.sim.summary();
    assert_eq!((s.received, s.applied, s.duplicates), (2, 1, 1));
    assert_eq!(p.sim.applied_ids(), vec!["d_1".to_string()]);
    p.stop().await;
}

#[tokio::test]
async fn a_forged_signature_is_refused_and_nothing_applied() {
    let p = start(options()).await;
    let mut c = connect(p.addr).await;
    let forged = Delivery {
        secret: "not-the-partner-secret".into(),
        ..delivery("d_1", "u1")
    };
    let a = c.deliver(&forged).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["code"], "bad_signature");
    // No signature headers at all: refused the same way.
    let a = c
        .call(Method::POST, "/deliver", &[], forged.body.clone())
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["code"], "bad_signature");
    // A body changed after signing.
    let mut tampered = delivery("d_1", "u1");
    let headers = tampered.headers();
    tampered.body = with_bigger_amount(&tampered.body);
    let a = c
        .call(Method::POST, "/deliver", &headers, tampered.body)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let s = p.sim.summary();
    assert_eq!((s.received, s.bad_signature, s.applied), (3, 3, 0));
    assert!(p.sim.applied_ids().is_empty());
    p.stop().await;
}

/// The same body asking for a thousand times the amount.
fn with_bigger_amount(body: &[u8]) -> Vec<u8> {
    String::from_utf8(body.to_vec())
        .unwrap()
        .replace("\"amount_cents\":100", "\"amount_cents\":100000")
        .into_bytes()
}

#[tokio::test]
async fn a_stale_timestamp_is_refused_as_stale() {
    let p = start(SimOptions {
        tolerance_s: 60,
        ..options()
    })
    .await;
    let mut c = connect(p.addr).await;
    for timestamp_s in [now_s() - 120, now_s() + 120] {
        let old = Delivery {
            timestamp_s,
            ..delivery("d_1", "u1")
        };
        let a = c.deliver(&old).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.json()["code"], "stale_signature");
    }
    let s = p.sim.summary();
    assert_eq!((s.stale, s.bad_signature, s.applied), (2, 0, 0));
    p.stop().await;
}

#[tokio::test]
async fn rotation_either_active_secret_is_accepted() {
    let p = start(SimOptions {
        secrets: vec!["old-secret".into(), "new-secret".into()],
        ..options()
    })
    .await;
    let mut c = connect(p.addr).await;
    for (i, secret) in ["old-secret", "new-secret"].into_iter().enumerate() {
        let d = Delivery {
            secret: secret.into(),
            ..delivery(&format!("d_{i}"), "u1")
        };
        assert_eq!(c.deliver(&d).await.status, StatusCode::OK);
    }
    assert_eq!(p.sim.summary().applied, 2);
    p.stop().await;
}

#[tokio::test]
async fn a_user_without_account_gets_422_until_the_account_is_opened() {
    let p = start(SimOptions {
        require_accounts: true,
        ..options()
    })
    .await;
    let mut c = connect(p.addr).await;
    let d = delivery("d_1", "u");
    let a = c.deliver(&d).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.json(), json!({"code": "no_account"}));
    assert_eq!(p.sim.summary().no_account, 1);
    assert!(p.sim.applied_ids().is_empty());

    let a = c.call(Method::POST, "/accounts/u", &[], Vec::new()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = c.deliver(&d).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"status": "applied"}));
    // Another user still has none; accounts opened in-process count too.
    assert_eq!(
        c.deliver(&delivery("d_2", "v")).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    p.sim.open_account("v");
    assert_eq!(
        c.deliver(&delivery("d_2", "v")).await.status,
        StatusCode::OK
    );
    let s = p.sim.summary();
    assert_eq!((s.no_account, s.applied), (2, 2));
    assert_eq!(
        c.call(Method::POST, "/accounts/", &[], Vec::new())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    p.stop().await;
}

#[tokio::test]
async fn capacity_is_enforced_per_100ms_slot_with_retry_after() {
    // 10/s is one request per 100 ms slot.
    let p = start(SimOptions {
        capacity_per_s: Some(10),
        ..options()
    })
    .await;
    let mut c = connect(p.addr).await;
    // Start just after a slot boundary so several requests surely share a slot.
    let into_slot = now_ms() % 100;
    tokio::time::sleep(Duration::from_millis(101 - into_slot)).await;
    let first_slot = now_ms() / 100;
    let (mut ok, mut throttled) = (0u64, 0u64);
    for i in 0..200 {
        let a = c.deliver(&delivery(&format!("d_{i}"), "u")).await;
        match a.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(a.headers["retry-after"], "1");
                assert_eq!(a.json()["code"], "throttled");
                throttled += 1;
            }
            other => panic!("unexpected {other}"),
        }
        if throttled >= 3 {
            break;
        }
    }
    let last_slot = now_ms() / 100;
    assert!(throttled >= 3, "the 2nd request in a slot gets 429");
    let s = p.sim.summary();
    assert_eq!((s.applied, s.throttled), (ok, throttled));
    assert_eq!(s.received, ok + throttled);
    assert!(s.max_per_slot >= 2, "{s:?}");
    assert!(
        ok <= last_slot - first_slot + 1,
        "at most one applied per slot: {ok} in {} slots",
        last_slot - first_slot + 1
    );
    assert_eq!(s.capacity_per_s, Some(10));
    p.stop().await;
}

#[tokio::test]
async fn the_summary_over_http_matches_the_in_process_one() {
    let p = start(SimOptions {
        require_accounts: true,
        ..options()
    })
    .await;
    let mut c = connect(p.addr).await;
    p.sim.open_account("u");
    c.deliver(&delivery("d_1", "u")).await;
    c.deliver(&delivery("d_2", "u")).await;
    c.deliver(&delivery("d_1", "u")).await;
    c.deliver(&delivery("d_3", "nobody")).await;
    let forged = Delivery {
        secret: "x".into(),
        ..delivery("d_4", "u")
    };
    c.deliver(&forged).await;

    let a = c.get("/summary").await;
    assert_eq!(a.status, StatusCode::OK);
    let over_http: Summary = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(over_http, p.sim.summary());
    assert_eq!(
        (
            over_http.received,
            over_http.applied,
            over_http.duplicates,
            over_http.no_account,
            over_http.bad_signature,
            over_http.max_in_flight
        ),
        (5, 2, 1, 1, 1, 1)
    );
    let a = c.get("/deliveries").await;
    assert_eq!(a.json(), json!(["d_1", "d_2"]));
    assert_eq!(c.get("/nowhere").await.status, StatusCode::NOT_FOUND);
    p.stop().await;
}

#[tokio::test]
async fn malformed_deliveries_are_400_and_oversized_ones_413() {
    let p = start(options()).await;
    let mut c = connect(p.addr).await;
    let no_key = Delivery {
        idempotency_key: None,
        ..delivery("d_1", "u")
    };
    let a = c.deliver(&no_key).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["code"], "bad_idempotency_key");
    let other_key = Delivery {
        idempotency_key: Some("d_2".into()),
        ..delivery("d_1", "u")
    };
    assert_eq!(c.deliver(&other_key).await.status, StatusCode::BAD_REQUEST);
    for body in [
        json!({"delivery_id": "d_1", "user": "u", "prize": "p"}),
        json!({"delivery_id": "d_9", "user": "u", "prize": "p", "sku": "S"}),
        json!({"delivery_id": "d_1", "prize": "p", "sku": "S"}),
        json!({"delivery_id": "d_1", "user": "u", "prize": "p", "amount_cents": "5"}),
    ] {
        let d = Delivery {
            body: serde_json::to_vec(&body).unwrap(),
            ..delivery("d_1", "u")
        };
        let a = c.deliver(&d).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(a.json()["code"], "bad_request");
        assert!(a.json()["message"].as_str().is_some());
    }
    let sku = Delivery {
        body: serde_json::to_vec(
            &json!({"delivery_id": "d_1", "user": "u", "prize": "p", "sku": "SKU-1"}),
        )
        .unwrap(),
        ..delivery("d_1", "u")
    };
    assert_eq!(c.deliver(&sku).await.status, StatusCode::OK);

    let mut c = connect(p.addr).await;
    let big = Delivery {
        body: vec![b' '; MAX_BODY_BYTES + 1],
        ..delivery("d_big", "u")
    };
    assert_eq!(c.deliver(&big).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let s = p.sim.summary();
    assert_eq!((s.received, s.applied, s.bad_signature), (8, 1, 0));
    p.stop().await;
}

#[tokio::test]
async fn random_failures_and_throttling() {
    let p = start(SimOptions {
        fail_rate: 1.0,
        ..options()
    })
    .await;
    let mut c = connect(p.addr).await;
    let a = c.deliver(&delivery("d_1", "u")).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!((p.sim.summary().failed, p.sim.summary().applied), (1, 0));
    p.stop().await;

    let p = start(SimOptions {
        throttle_rate: 1.0,
        ..options()
    })
    .await;
    let mut c = connect(p.addr).await;
    let a = c.deliver(&delivery("d_1", "u")).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers["retry-after"], "1");
    assert_eq!((p.sim.summary().throttled, p.sim.summary().applied), (1, 0));
    p.stop().await;

    // Half and half, over enough requests, and the same seed gives the same answers.
    let mut runs = Vec::new();
    for _ in 0..2 {
        let p = start(SimOptions {
            fail_rate: 0.5,
            seed: 7,
            ..options()
        })
        .await;
        let mut c = connect(p.addr).await;
        let mut statuses = Vec::new();
        for i in 0..200 {
            statuses.push(c.deliver(&delivery(&format!("d_{i}"), "u")).await.status);
        }
        let s = p.sim.summary();
        assert_eq!(s.failed + s.applied, 200);
        assert!((50..150).contains(&s.failed), "{s:?}");
        runs.push(statuses);
        p.stop().await;
    }
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test]
async fn garbage_and_huge_answers_still_apply() {
    let p = start(SimOptions {
        garbage_rate: 1.0,
        ..options()
    })
    .await;
    let mut c = connect(p.addr).await;
    let a = c.deliver(&delivery("d_1", "u")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(serde_json::from_slice::<Value>(&a.body).is_err());
    assert_eq!(p.sim.applied_ids(), vec!["d_1".to_string()]);
    p.stop().await;

    let p = start(SimOptions {
        huge_rate: 1.0,
        ..options()
    })
    .await;
    let mut c = connect(p.addr).await;
    let a = c.deliver(&delivery("d_1", "u")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers.get("content-length").is_none(), "streamed");
    assert_eq!(a.body.len(), HUGE_BODY_BYTES);
    assert_eq!(p.sim.applied_ids(), vec!["d_1".to_string()]);
    p.stop().await;
}

#[tokio::test]
async fn a_slow_answer_is_applied_before_it_is_given() {
    let p = start(SimOptions {
        slow_rate: 1.0,
        slow_ms: 400,
        ..options()
    })
    .await;
    let mut c = connect(p.addr).await;
    let started = Instant::now();
    let sim = p.sim.clone();
    let d = delivery("d_1", "u");
    let (a, applied_meanwhile) = tokio::join!(c.deliver(&d), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sim.summary().applied
    });
    assert_eq!(a.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(applied_meanwhile, 1);
    p.stop().await;
}

#[tokio::test]
async fn latency_is_simulated_and_in_flight_requests_are_counted() {
    let p = start(SimOptions {
        latency_min_ms: 150,
        latency_max_ms: 200,
        ..options()
    })
    .await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            c.deliver(&delivery(&format!("d_{i}"), "u")).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(150), "{took:?}");
    let s = p.sim.summary();
    assert_eq!((s.applied, s.max_in_flight), (5, 5));
    p.stop().await;
}

#[tokio::test]
async fn a_dropped_request_leaves_the_in_flight_count() {
    let p = start(SimOptions {
        latency_min_ms: 300,
        latency_max_ms: 300,
        ..options()
    })
    .await;
    // A client that gives up: its connection closes while the answer is pending.
    {
        let mut c = connect(p.addr).await;
        let _ =
            tokio::time::timeout(Duration::from_millis(50), c.deliver(&delivery("d_1", "u"))).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Then two at once: the abandoned one is no longer counted.
    let mut tasks = Vec::new();
    for i in 2..4 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            connect(addr)
                .await
                .deliver(&delivery(&format!("d_{i}"), "u"))
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(p.sim.summary().max_in_flight, 2);
    p.stop().await;
}
