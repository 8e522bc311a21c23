//! The admin API over HTTP: who may call what (every route of docs/admin-api.md), sessions
//! and CSRF, the draft → review → publish flow, kill switches, the audit log, the dashboard's
//! numbers, uploads and the drop map.

mod common;

use std::time::Duration;

use common::*;
use hyper::Method;
use serde_json::{json, Value};

/// An always-live round `rain` with two always-winning cash prizes of equal weight.
fn config() -> String {
    format!(
        "{}{}{}{}{}",
        campaign("spring", ""),
        PARTNERS,
        live_round("rain", "spring", 1000, 0),
        cash_prize("lucky", 100, 100_000, 100_000, 50),
        cash_prize("big", 800, 100_000, 100_000, 50),
    )
}

/// Every admin route of docs/admin-api.md with the role it needs (`None`: any session).
fn documented_routes() -> Vec<(Method, String, Option<&'static str>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/admin-api.md"))
        .unwrap();
    let mut routes = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let route = cells[1].trim_matches('`');
        // The roles table has rows of this shape too.
        let Some((method, rest)) = route
            .split_once(' ')
            .filter(|(m, _)| ["GET", "POST", "PUT", "DELETE"].contains(m))
        else {
            continue;
        };
        let path = rest
            .split(['`', '?', '['])
            .next()
            .unwrap()
            .trim()
            .replace("{win_id}", "000000000000000000000001")
            .replace("{id}", "wallet")
            .replace("{task}", "nowhere");
        let role = match cells[2] {
            "viewer" => Some("viewer"),
            "editor" => Some("editor"),
            "publisher" => Some("publisher"),
            "any" | "—" => None,
            other => panic!("unknown role {other:?} in {line}"),
        };
        routes.push((method.parse().unwrap(), path, role));
    }
    assert!(routes.len() >= 20, "{routes:?}");
    routes
}

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 0,
        "editor" => 1,
        _ => 2,
    }
}

#[tokio::test]
async fn every_admin_route_refuses_strangers_wrong_roles_and_missing_csrf() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    let mut c = server.conn().await;
    let sessions = [
        ("viewer", Session::login(&mut c, "vic").await),
        ("editor", Session::login(&mut c, "eve").await),
        ("publisher", Session::login(&mut c, "pat").await),
    ];
    let before = get_config(&mut c).await;
    for (method, path, role) in documented_routes() {
        if path == "/admin/api/login" {
            continue;
        }
        let what = format!("{method} {path}");
        // No credentials, a wrong bearer token, a cookie that is no session.
        for headers in [
            vec![],
            vec![("authorization", "Bearer not-the-token-at-all")],
            vec![("cookie", "redrain_session=forged"), ("x-csrf-token", "x")],
        ] {
            let r = c.send(method.clone(), &path, &headers, "{}").await.unwrap();
            assert_eq!(r.status, 401, "{what} with {headers:?}");
            assert_eq!(r.json()["code"], "unauthorized", "{what}");
        }
        let Some(role) = role else { continue };
        for (name, session) in &sessions {
            if rank(name) < rank(role) {
                let r = session
                    .send(&mut c, method.clone(), &path, &json!({}))
                    .await;
                assert_eq!(r.status, 403, "{what} as {name}: {:?}", r.json());
                assert_eq!(r.json()["code"], "forbidden", "{what} as {name}");
            }
        }
        if method != Method::GET {
            // The right role, but no CSRF token: a foreign page riding on the cookie.
            let (_, session) = &sessions[rank(role) as usize];
            let r = c
                .send(
                    method.clone(),
                    &path,
                    &[("cookie", session.cookie.as_str())],
                    "{}",
                )
                .await
                .unwrap();
            assert_eq!(r.status, 403, "{what} without CSRF");
            assert_eq!(r.json()["code"], "csrf", "{what}");
        }
    }
    // Nothing was changed by any of it: the only audit entry is the config file's start-up
    // publish.
    assert_eq!(get_config(&mut c).await, before);
    let audit = sessions[0].1.get(&mut c, "/admin/api/audit").await.json();
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (entries[0]["who"].clone(), entries[0]["seq"].clone()),
        (json!("config-file"), json!(1))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_strangers_body_is_refused_before_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    // An upload declaring 60 MiB, of which only the headers are ever sent: the answer comes
    // without waiting for the body (a server reading it first would wait forever).
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(
        b"POST /admin/api/uploads?name=a.csv HTTP/1.1\r\nhost: x\r\n\
          content-length: 62914560\r\n\r\nid,lat,lng\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(30), raw.read(&mut answer));
    let n = read.await.expect("answered without the body").unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    server.stop().await;
}

async fn get_config(c: &mut redrain::client::Conn) -> Value {
    let r = c
        .send(
            Method::GET,
            "/admin/api/config",
            &[("authorization", &format!("Bearer {TOKEN}"))],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    r.json()
}

#[tokio::test]
async fn sessions_expire_and_end_at_logout_and_logins_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    let mut c = server.conn().await;
    let r = c
        .post_json(
            "/admin/api/login",
            &json!({"name": "vic", "password": "wrong"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (401, json!("bad_credentials"))
    );
    assert!(r.headers.get("set-cookie").is_none());
    let r = c
        .post_json("/admin/api/login", &json!({"name": "vic"}))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("password"))
    );

    // Reached through a TLS proxy, the cookie is Secure; on plain loopback it cannot be.
    let proxied = c
        .send(
            Method::POST,
            "/admin/api/login",
            &[("x-forwarded-proto", "https")],
            json!({"name": "vic", "password": "vic-password"}).to_string(),
        )
        .await
        .unwrap();
    let cookie = |r: &redrain::client::Reply| r.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie(&proxied).ends_with("; Secure"),
        "{}",
        cookie(&proxied)
    );
    let vic = Session::login(&mut c, "vic").await;
    let me = vic.get(&mut c, "/admin/api/session").await;
    assert_eq!(me.json()["role"], "viewer");
    // The operators file says an hour.
    server.clock.advance(3_601_000);
    let r = vic.get(&mut c, "/admin/api/live").await;
    assert_eq!(r.status, 401);

    let pat = Session::login(&mut c, "pat").await;
    let r = pat.post(&mut c, "/admin/api/logout", &Value::Null).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let r = pat.get(&mut c, "/admin/api/live").await;
    assert_eq!(r.status, 401);
    server.stop().await;
}

#[tokio::test]
async fn a_draft_is_saved_with_its_problems_reviewed_and_published_by_a_publisher_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    let mut c = server.conn().await;
    let (eve, pat) = (
        Session::login(&mut c, "eve").await,
        Session::login(&mut c, "pat").await,
    );
    let draft = eve.get(&mut c, "/admin/api/draft").await.json();
    assert_eq!(draft["saved_by"], Value::Null);
    assert_eq!(draft["changes"], json!([]));
    let live_seq = draft["live_seq"].as_u64().unwrap();

    // A second round with two prizes, one with a rate of 0.
    let mut config = draft["config"].clone();
    let mut round = config["rounds"][0].clone();
    round["id"] = json!("night");
    round["prizes"][0]["id"] = json!("moon");
    round["prizes"][0]["rate_per_s"] = json!(0);
    round["prizes"][1]["id"] = json!("star");
    config["rounds"].as_array_mut().unwrap().push(round);
    let save =
        |config: &Value, expect_rev: &Value| json!({"config": config, "expect_rev": expect_rev});
    let r = eve
        .send(
            &mut c,
            Method::PUT,
            "/admin/api/draft",
            &save(&config, &Value::Null),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let saved = r.json();
    assert_eq!(saved["saved_by"], "eve");
    assert_eq!(saved["base_seq"], live_seq);
    assert_eq!(
        saved["errors"],
        json!([{"field": "rounds[1].prizes[0].rate_per_s", "problem": "must be at least 1"}])
    );
    assert_eq!(saved["changes"], json!(["rounds[night]: added"]));
    let first_rev = saved["rev"].clone();
    // An invalid draft does not publish.
    let publish = |seq: u64, rev: &Value| json!({"expect_seq": seq, "expect_rev": rev});
    let r = pat
        .post(
            &mut c,
            "/admin/api/draft/publish",
            &publish(live_seq, &first_rev),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (422, json!("invalid_config"))
    );
    assert_eq!(
        r.json()["errors"][0]["field"],
        "rounds[1].prizes[0].rate_per_s"
    );

    // A save must name the draft it replaces: one made from the live config (or an older
    // draft) is refused and changes nothing.
    config["rounds"][1]["prizes"][0]["rate_per_s"] = json!(10);
    let r = eve
        .send(
            &mut c,
            Method::PUT,
            "/admin/api/draft",
            &save(&config, &Value::Null),
        )
        .await;
    assert_eq!(
        (
            r.status,
            r.json()["code"].clone(),
            r.json()["field"].clone()
        ),
        (409, json!("draft_changed"), json!("expect_rev"))
    );
    let r = eve
        .send(
            &mut c,
            Method::PUT,
            "/admin/api/draft",
            &save(&config, &first_rev),
        )
        .await;
    assert_eq!(r.json()["errors"], json!([]));
    let second_rev = r.json()["rev"].clone();
    assert_ne!(first_rev, second_rev);
    // An editor may not publish; a review of an older draft or against an older SeqNo may not
    // either.
    let r = eve
        .post(
            &mut c,
            "/admin/api/draft/publish",
            &publish(live_seq, &second_rev),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = pat
        .post(
            &mut c,
            "/admin/api/draft/publish",
            &publish(live_seq, &first_rev),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (409, json!("draft_changed"))
    );
    let r = pat
        .post(
            &mut c,
            "/admin/api/draft/publish",
            &publish(live_seq - 1, &second_rev),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (409, json!("stale_review"))
    );
    assert_eq!(c.get("/v1/rounds/night").await.unwrap().status, 404);
    let r = pat
        .post(
            &mut c,
            "/admin/api/draft/publish",
            &publish(live_seq, &second_rev),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["seq"], live_seq + 1);
    assert_eq!(
        get_ok(&mut c, "/v1/rounds/night").await["seq"],
        live_seq + 1
    );
    // The draft is used up: it is the live config again.
    let draft = eve.get(&mut c, "/admin/api/draft").await.json();
    assert_eq!(
        (
            draft["saved_by"].clone(),
            draft["rev"].clone(),
            draft["changes"].clone()
        ),
        (Value::Null, Value::Null, json!([]))
    );

    let audit = pat.get(&mut c, "/admin/api/audit").await.json();
    let entries: Vec<(String, String, u64)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["who"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            ("pat".into(), "published".into(), live_seq + 1),
            ("eve".into(), "draft_saved".into(), live_seq),
            ("eve".into(), "draft_saved".into(), live_seq),
            ("config-file".into(), "published".into(), live_seq),
        ]
    );
    assert_eq!(
        audit["entries"][0]["changes"],
        json!(["rounds[night]: added"])
    );
    assert_eq!(
        audit["entries"][1]["changes"],
        json!(["rounds[night].prizes[moon].rate_per_s: 0 → 10"])
    );
    server.stop().await;
}

#[tokio::test]
async fn a_paused_prize_is_never_won_and_the_dashboard_counts_every_win_in_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    let mut c = server.conn().await;
    let pat = Session::login(&mut c, "pat").await;
    let mut won = std::collections::HashMap::<String, u64>::new();
    for i in 0..40 {
        let v = draw_ok(&mut c, "rain", &format!("u{i}"), "r1", 1).await;
        *won.entry(v["wins"][0]["prize"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert!(won["big"] > 0 && won["lucky"] > 0, "{won:?}");
    let live = pat.get(&mut c, "/admin/api/live").await.json();
    assert_eq!(live["draws"]["win"], 40);
    for p in live["rounds"][0]["prizes"].as_array().unwrap() {
        let slots: u64 = p["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(slots, won[p["id"].as_str().unwrap()], "{p}");
        assert_eq!(p["issued"].as_u64().unwrap(), slots);
        // The manual clock stood still: every win is in the last slot, and the quiet slots
        // before it are left out.
        assert_eq!(p["slots"], json!([slots]));
    }

    // A draft started before the kill switch...
    let draft = pat.get(&mut c, "/admin/api/draft").await.json();
    let r = pat
        .send(
            &mut c,
            Method::PUT,
            "/admin/api/draft",
            &json!({"config": draft["config"], "expect_rev": null}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = pat
        .post(
            &mut c,
            "/admin/api/kill",
            &json!({"kind": "prize", "id": "big", "paused": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let seq = r.json()["seq"].as_u64().unwrap();
    // ...says it is based on an older SeqNo, and its review shows publishing it would undo it.
    let draft = pat.get(&mut c, "/admin/api/draft").await.json();
    assert_eq!(
        (draft["base_seq"].as_u64(), draft["live_seq"].as_u64()),
        (Some(seq - 1), Some(seq))
    );
    assert_eq!(
        draft["changes"],
        json!(["rounds[rain].prizes[big].paused: true → false"])
    );
    for i in 0..40 {
        let v = draw_ok(&mut c, "rain", &format!("u{i}"), "r2", 1).await;
        assert_eq!(v["wins"][0]["prize"], "lucky", "{v}");
    }
    // Flipping it to where it is changes nothing; an unknown id is a 404.
    let r = pat
        .post(
            &mut c,
            "/admin/api/kill",
            &json!({"kind": "prize", "id": "big", "paused": true}),
        )
        .await;
    assert_eq!(
        (r.json()["seq"].as_u64(), r.json()["changed"].clone()),
        (Some(seq), json!(false))
    );
    let r = pat
        .post(
            &mut c,
            "/admin/api/kill",
            &json!({"kind": "round", "id": "nope", "paused": true}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = pat
        .post(
            &mut c,
            "/admin/api/kill",
            &json!({"kind": "planet", "id": "big", "paused": true}),
        )
        .await;
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("kind")));
    let audit = pat.get(&mut c, "/admin/api/audit?limit=1").await.json();
    assert_eq!(audit["entries"][0]["action"], "kill_switch");
    assert_eq!(
        audit["entries"][0]["changes"],
        json!(["rounds[rain].prizes[big].paused: false → true"])
    );
    server.stop().await;
}

/// Kill switches flipped at once: each publishes only over the live SeqNo it read, so some
/// find another publish landed first (with one attempt each, this test fails). Each of those
/// reads the live config again and tries again (at most 5 times; each other switch can beat it
/// only once), so every flag ends set and none undoes another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switches_flipped_at_once_all_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    let mut c = server.conn().await;
    let pat = Session::login(&mut c, "pat").await;
    let seq = config_seq(&mut c).await;
    let switches = [
        ("prize", "lucky"),
        ("prize", "big"),
        ("round", "rain"),
        ("campaign", "spring"),
    ];
    let flip = |kind: &'static str, id: &'static str| {
        let (pat, conn) = (pat.clone(), server.conn());
        async move {
            let mut c = conn.await;
            let body = json!({"kind": kind, "id": id, "paused": true});
            pat.post(&mut c, "/admin/api/kill", &body).await
        }
    };
    let replies = futures_util::future::join_all(switches.map(|(kind, id)| flip(kind, id))).await;
    for r in replies {
        assert_eq!(
            (r.status, r.json()["changed"].clone()),
            (200, json!(true)),
            "{:?}",
            r.json()
        );
    }
    assert_eq!(config_seq(&mut c).await, seq + switches.len() as u64);
    for (kind, id) in switches {
        let r = flip(kind, id).await;
        assert_eq!(
            r.json()["changed"],
            json!(false),
            "{kind} {id} is paused in the live config"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn uploads_are_checked_and_the_map_answers_points_or_density() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    let mut c = server.conn().await;
    let eve = Session::login(&mut c, "eve").await;
    let csv: String = (0..300)
        .map(|i| {
            format!(
                "{},{}\n",
                31.2 + f64::from(i % 20) * 0.001,
                121.4 + f64::from(i / 20) * 0.001
            )
        })
        .collect();
    let upload = |name: &str| format!("/admin/api/uploads?name={name}");
    let r = eve
        .send_raw(&mut c, Method::POST, &upload("square.csv"), csv.clone())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["points"], 300);
    let stored = r.json()["path"].as_str().unwrap().to_string();
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), csv);
    for (name, body, field) in [
        ("../evil.csv", csv.clone(), "name"),
        ("square.exe", csv.clone(), "name"),
        ("bad.csv", "north,south\n".to_string(), "body"),
    ] {
        let r = eve
            .send_raw(&mut c, Method::POST, &upload(name), body)
            .await;
        assert_eq!(
            (r.status, r.json()["field"].clone()),
            (400, json!(field)),
            "{name}"
        );
    }

    // A drop task on the uploaded points, published through the draft.
    let draft = eve.get(&mut c, "/admin/api/draft").await.json();
    let mut config = draft["config"].clone();
    config["drops"] = json!([{
        "id": "square", "campaign": "spring", "points": stored, "radius_m": 50,
        "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2036-01-01T00:00:00Z",
        "per_drop": 2, "max_claims_per_user": 5,
        "prizes": [{"id": "drop-cash", "kind": "cash", "amount_cents": 10, "partner": "wallet",
                    "quota": 1000, "rate_per_s": 100, "weight": 1}]
    }]);
    let r = eve
        .send(
            &mut c,
            Method::PUT,
            "/admin/api/draft",
            &json!({"config": config}),
        )
        .await;
    assert_eq!(r.json()["errors"], json!([]));
    let pat = Session::login(&mut c, "pat").await;
    let (seq, rev) = (r.json()["live_seq"].clone(), r.json()["rev"].clone());
    let r = pat
        .post(
            &mut c,
            "/admin/api/draft/publish",
            &json!({"expect_seq": seq, "expect_rev": rev}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());

    let tasks = eve.get(&mut c, "/admin/api/drops").await.json();
    assert_eq!(tasks["tasks"][0]["points"], 300);
    let bbox = tasks["tasks"][0]["bbox"].clone();
    let q = format!(
        "south={}&west={}&north={}&east={}",
        bbox[0], bbox[1], bbox[2], bbox[3]
    );
    let map = eve
        .get(&mut c, &format!("/admin/api/drops/square/map?{q}"))
        .await
        .json();
    assert_eq!(
        (map["mode"].clone(), map["total"].clone()),
        (json!("points"), json!(300))
    );
    assert!(map["points"].as_array().unwrap().iter().all(|p| p[2] == 2));
    let map = eve
        .get(&mut c, &format!("/admin/api/drops/square/map?{q}&max=100"))
        .await
        .json();
    assert_eq!(map["mode"], "density");
    let cells = map["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 64 * 64);
    let counted: u64 = cells.iter().map(|c| c[0].as_u64().unwrap()).sum();
    let remaining: u64 = cells.iter().map(|c| c[1].as_u64().unwrap()).sum();
    assert_eq!((counted, remaining), (300, 600));
    let r = eve
        .get(
            &mut c,
            "/admin/api/drops/square/map?south=1&west=1&north=0&east=2",
        )
        .await;
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("south")));
    server.stop().await;
}

/// Admin query strings ignored what they did not know (`audit?limt=5` listed 200 entries) and
/// took the last of a repeated parameter: an unknown, repeated or mistyped one gets our JSON
/// 400 naming it, only once the caller is checked, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_repeated_query_parameters_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    let mut c = server.conn().await;
    let pat = Session::login(&mut c, "pat").await;
    let map = "/admin/api/drops/nowhere/map?south=1&west=1&north=2";
    let cases = [
        (Method::GET, "/admin/api/audit?limt=5".to_string(), "limt"),
        (
            Method::GET,
            "/admin/api/audit?limit=1&limit=500".into(),
            "limit",
        ),
        (Method::GET, "/admin/api/audit?limit=many".into(), "limit"),
        (Method::GET, "/admin/api/audit?limit=0".into(), "limit"),
        (
            Method::GET,
            "/admin/api/reconciliation?run=true&now=1".into(),
            "now",
        ),
        (Method::GET, format!("{map}&east=2&zoom=3"), "zoom"),
        (Method::GET, map.to_string(), "east"),
        (
            Method::POST,
            "/admin/api/uploads?name=a.csv&replace=1".into(),
            "replace",
        ),
    ];
    for (method, path, field) in cases {
        let r = pat
            .send_raw(&mut c, method.clone(), &path, "lat,lng\n31.2,121.4\n")
            .await;
        let v = r.json();
        assert_eq!(
            (r.status, v["code"].as_str(), v["field"].as_str()),
            (400, Some("invalid_field"), Some(field)),
            "{method} {path}: {v}"
        );
        assert!(v["message"].as_str().unwrap().starts_with(field), "{v}");
    }
    // A stranger learns nothing of the query: the caller is checked first.
    let r = admin(&mut c, Method::GET, "/admin/api/audit?limt=5", None).await;
    assert_eq!(r.status, 401);
    assert!(
        !server.data_dir.join("uploads").exists(),
        "a refused upload stored nothing"
    );
    let audit = pat.get(&mut c, "/admin/api/audit?limit=1").await;
    assert_eq!(audit.status, 200);
    assert_eq!(audit.json()["entries"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_content_security_policy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    let mut c = server.conn().await;
    let r = c.get("/admin").await.unwrap();
    assert_eq!(
        (r.status, r.headers["location"].to_str().unwrap()),
        (308, "/admin/")
    );
    for (path, ctype) in [
        ("/admin/", "text/html; charset=utf-8"),
        ("/admin/app.js", "text/javascript; charset=utf-8"),
        ("/admin/app.css", "text/css; charset=utf-8"),
    ] {
        let r = c.get(path).await.unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.headers["content-type"], ctype);
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
    }
    assert_eq!(c.get("/admin/../Cargo.toml").await.unwrap().status, 404);
    assert_eq!(c.get("/admin/nothing.js").await.unwrap().status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redrive_closes_more_mismatches_than_a_report_lists() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    let mut c = server.conn().await;
    let listed = redrain::reconcile::MAX_LISTED;
    let mut ids = Vec::new();
    for r in 0..listed / 20 + 3 {
        let v = draw_ok(&mut c, "rain", &format!("u{r}"), "q", 20).await;
        ids.extend(
            wins_in(&v)
                .iter()
                .map(|w| w["win_id"].as_str().unwrap().to_string()),
        );
    }
    assert!(ids.len() > listed, "{}", ids.len());
    // Every win's delivery record is lost.
    let lost = ids
        .iter()
        .map(|id| {
            redrain::storage::Op::Delete(redrain::storage::Cf::Deliveries, id.clone().into_bytes())
        })
        .collect();
    server.app().service.storage.commit(lost).await.unwrap();
    let pat = Session::login(&mut c, "pat").await;
    let report = pat
        .get(&mut c, "/admin/api/reconciliation?run=true")
        .await
        .json();
    let missing = report["mismatches"]["wins_without_delivery"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(missing, listed, "a report lists at most {listed}");

    let r = pat
        .post(&mut c, "/admin/api/reconciliation/redrive", &Value::Null)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["created"], ids.len());
    let report = pat
        .get(&mut c, "/admin/api/reconciliation?run=true")
        .await
        .json();
    assert_eq!(report["ok"], true, "{}", report["mismatches"]);
    // Idempotent: nothing is left to create.
    let r = pat
        .post(&mut c, "/admin/api/reconciliation/redrive", &Value::Null)
        .await;
    assert_eq!(
        (r.json()["created"].clone(), r.json()["redriven"].clone()),
        (json!(0), json!(0))
    );
    server.stop().await;
}
