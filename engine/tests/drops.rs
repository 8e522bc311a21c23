//! Geo drops end to end over HTTP: nearby lists screened drops nearest first, claims need the
//! radius and the window, respect per-drop, per-task and per-user limits under concurrency,
//! are idempotent and durable, and bad input gets a 400 naming the parameter.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use redrain::client::{Conn, Reply};
use serde_json::{json, Value};

/// Metres per degree of latitude (on the engine's sphere).
const M_PER_DEG_LAT: f64 = 111_194.93;

/// A 10 × 10 grid of points 0.001° apart from (31.2300, 121.4700), named `g-{row}-{col}`,
/// rows 0..5 in region `south` and 5..10 in `north`.
fn grid_csv() -> String {
    let mut s = String::from("lat,lng,name,region\n");
    for row in 0..10 {
        for col in 0..10 {
            let region = if row < 5 { "south" } else { "north" };
            s += &format!(
                "{:.4},{:.4},g-{row}-{col},{region}\n",
                31.23 + 0.001 * f64::from(row),
                121.47 + 0.001 * f64::from(col)
            );
        }
    }
    s
}

/// An exclusion zone over the grid's four south-west points (a polygon with a hole that
/// holds no point).
const ZONES: &str = r#"{"type": "FeatureCollection", "features": [{
  "type": "Feature", "id": "works",
  "geometry": {"type": "Polygon", "coordinates": [
    [[121.4695, 31.2295], [121.4715, 31.2295], [121.4715, 31.2315], [121.4695, 31.2315], [121.4695, 31.2295]],
    [[121.4703, 31.2303], [121.4707, 31.2303], [121.4707, 31.2307], [121.4703, 31.2307], [121.4703, 31.2303]]
  ]}}]}"#;

/// Names the zone screens out.
const SCREENED: [&str; 4] = ["g-0-0", "g-0-1", "g-1-0", "g-1-1"];

fn drops_config(per_drop: u32, task_quota: u64, claims_per_user: u32) -> String {
    campaign("c", "max_wins_per_user = 1000")
        + PARTNERS
        + &format!(
            r#"
[[drops]]
id = "grid"
campaign = "c"
points = "points.csv"
zones = ["zones.geojson"]
radius_m = 30
starts_at = "2029-01-01T00:00:00Z"
ends_at = "2031-01-01T00:00:00Z"
per_drop = {per_drop}
max_claims_per_user = {claims_per_user}
region_refresh_s = 1

[[drops.prizes]]
id = "grid-cash"
kind = "cash"
amount_cents = 100
partner = "wallet"
quota = {task_quota}
rate_per_s = 100000
weight = 1
"#
        )
}

async fn start(dir: &Path, per_drop: u32, task_quota: u64, claims_per_user: u32) -> Server {
    std::fs::write(dir.join("points.csv"), grid_csv()).unwrap();
    std::fs::write(dir.join("zones.geojson"), ZONES).unwrap();
    Server::with_config(
        dir,
        &drops_config(per_drop, task_quota, claims_per_user),
        t0(),
    )
    .await
}

async fn nearby(c: &mut Conn, lat: f64, lng: f64, limit: usize) -> Vec<Value> {
    let v = get_ok(
        c,
        &format!("/v1/drops/nearby?lat={lat}&lng={lng}&limit={limit}"),
    )
    .await;
    v["drops"].as_array().unwrap().clone()
}

/// The drop named `name`, found by a nearby query at its grid place.
async fn drop_named(c: &mut Conn, name: &str) -> Value {
    let parts: Vec<f64> = name[2..].split('-').map(|p| p.parse().unwrap()).collect();
    let (lat, lng) = (31.23 + 0.001 * parts[0], 121.47 + 0.001 * parts[1]);
    nearby(c, lat, lng, 10)
        .await
        .into_iter()
        .find(|d| d["name"] == json!(name))
        .unwrap_or_else(|| panic!("{name} is listed near its own place"))
}

async fn claim(c: &mut Conn, drop: &Value, user: &str, request_id: &str, north_m: f64) -> Reply {
    let lat = drop["lat"].as_f64().unwrap() + north_m / M_PER_DEG_LAT;
    let lng = drop["lng"].as_f64().unwrap();
    let id = drop["id"].as_str().unwrap();
    c.post_json(
        &format!("/v1/drops/{id}/claim"),
        &json!({"user": user, "request_id": request_id, "lat": lat, "lng": lng}),
    )
    .await
    .unwrap()
}

/// `users` users claim `drop` at once, each on its own connection; (status, code) → count.
async fn claim_at_once(
    server: &Server,
    drop: &Value,
    users: usize,
) -> BTreeMap<(u16, String), usize> {
    let mut tasks = Vec::new();
    for u in 0..users {
        let (addr, drop) = (server.addr, drop.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await.unwrap();
            code(&claim(&mut c, &drop, &format!("user-{u}"), "r", 5.0).await)
        }));
    }
    let mut outcomes = BTreeMap::new();
    for t in tasks {
        *outcomes.entry(t.await.unwrap()).or_default() += 1;
    }
    outcomes
}

fn code(r: &Reply) -> (u16, String) {
    (
        r.status,
        r.json()["code"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearby_lists_screened_drops_nearest_first_and_claims_need_the_radius() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 2, 1000, 10).await;
    let mut c = server.conn().await;

    let listed = nearby(&mut c, 31.2305, 121.4705, 100).await;
    let names: Vec<&str> = listed.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert!(!listed.is_empty());
    for screened in SCREENED {
        assert!(!names.contains(&screened), "{screened} lies in the zone");
    }
    assert!(
        names.contains(&"g-0-2"),
        "the nearest point outside the zone is listed"
    );
    let distances: Vec<f64> = listed
        .iter()
        .map(|d| d["distance_m"].as_f64().unwrap())
        .collect();
    assert!(distances.windows(2).all(|w| w[0] <= w[1]), "{distances:?}");
    assert!(listed.iter().all(|d| d["remaining"] == json!(2)));
    let full = get_ok(
        &mut c,
        "/v1/drops/nearby?lat=31.2305&lng=121.4705&limit=100",
    )
    .await;
    assert_eq!(
        full["tasks"]["grid"]["prizes"][0]["prize"],
        json!("grid-cash")
    );
    assert_eq!(full["tasks"]["grid"]["radius_m"], json!(30));
    assert!(listed.iter().all(|d| d["task"] == json!("grid")));
    let few = nearby(&mut c, 31.2305, 121.4705, 3).await;
    assert_eq!(few[..], listed[..3], "a smaller limit keeps the nearest");

    let drop = drop_named(&mut c, "g-5-5").await;
    let far = claim(&mut c, &drop, "u1", "far", 45.0).await;
    assert_eq!(code(&far), (403, "too_far".into()), "{}", far.json());
    let near = claim(&mut c, &drop, "u1", "near", 20.0).await;
    assert_eq!(near.status, 200, "{}", near.json());
    let won = near.json();
    assert_eq!(won["outcome"], json!("win"));
    assert_eq!(won["drop"], drop["id"]);
    assert_eq!(won["wins"][0]["amount_cents"], json!(100));
    let listed = wins_of(&mut c, "u1").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["round"], json!("grid"));
    assert_eq!(drop_named(&mut c, "g-5-5").await["remaining"], json!(1));

    // Region counts come from the double buffer, refreshed on its interval (run here at once).
    let svc = &server.app().service;
    svc.drops
        .refresh_regions(|| svc.store.load(), svc.clock.now_ms());
    let north = get_ok(&mut c, "/v1/regions/north").await;
    assert_eq!(north["drops"], json!(50));
    assert_eq!(north["remaining"], json!(99));
    let south = get_ok(&mut c, "/v1/regions/south").await;
    assert_eq!(
        south["drops"],
        json!(46),
        "four south points were screened out"
    );
    assert_eq!(south["remaining"], json!(92));
    let missing = c.get("/v1/regions/east").await.unwrap();
    assert_eq!(code(&missing), (404, "not_found".into()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_on_one_drop_never_exceed_its_quota() {
    const USERS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 3, 1000, 10).await;
    let drop = drop_named(&mut server.conn().await, "g-7-7").await;

    let outcomes = claim_at_once(&server, &drop, USERS).await;
    let expected = BTreeMap::from([
        ((200, String::new()), 3),
        ((409, "drop_exhausted".to_string()), USERS - 3),
    ]);
    assert_eq!(outcomes, expected);
    let m = metrics(&mut server.conn().await).await;
    assert_eq!(metric(&m, "redrain_claims_total"), 3.0);
    assert_eq!(
        metric(&m, "redrain_claim_refusals_total"),
        (USERS - 3) as f64
    );
    assert_eq!(total_draws(&m), 0, "claims are not counted as draws");

    // The claimed count is durable: after a restart the drop is still exhausted.
    let server = server.restart().await;
    let mut c = server.conn().await;
    assert_eq!(drop_named(&mut c, "g-7-7").await["remaining"], json!(0));
    let late = claim(&mut c, &drop, "late-user", "r", 5.0).await;
    assert_eq!(code(&late), (409, "drop_exhausted".into()));
    server.stop().await;

    // The task's quota bounds claims across drops the same way.
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 1000, 5, 10).await;
    let drop = drop_named(&mut server.conn().await, "g-3-3").await;
    let outcomes = claim_at_once(&server, &drop, USERS).await;
    let expected = BTreeMap::from([
        ((200, String::new()), 5),
        ((409, "task_exhausted".to_string()), USERS - 5),
    ]);
    assert_eq!(outcomes, expected);
    let mut c = server.conn().await;
    assert_eq!(
        drop_named(&mut c, "g-3-3").await["remaining"],
        json!(995),
        "refused claims give the drop's prize back"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_idempotent_capped_and_windowed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 5, 1000, 2).await;
    let mut c = server.conn().await;
    let a = drop_named(&mut c, "g-2-2").await;
    let b = drop_named(&mut c, "g-2-3").await;

    let first = claim(&mut c, &a, "u", "r1", 0.0).await;
    assert_eq!(first.status, 200);
    let again = claim(&mut c, &a, "u", "r1", 0.0).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body, "a retry gets the same answer");
    assert_eq!(drop_named(&mut c, "g-2-2").await["remaining"], json!(4));
    assert_eq!(wins_of(&mut c, "u").await.len(), 1);

    assert_eq!(claim(&mut c, &b, "u", "r2", 0.0).await.status, 200);
    let capped = claim(&mut c, &b, "u", "r3", 0.0).await;
    assert_eq!(code(&capped), (409, "claim_cap_reached".into()));
    assert_eq!(drop_named(&mut c, "g-2-3").await["remaining"], json!(4));

    server.clock.set(ms("2028-06-01T00:00:00Z"));
    let early = claim(&mut c, &a, "v", "r1", 0.0).await;
    assert_eq!(code(&early), (409, "outside_window".into()));
    assert!(
        nearby(&mut c, 31.2320, 121.4720, 10).await.is_empty(),
        "a task outside its window lists no drops"
    );
    server.clock.set(ms("2031-06-01T00:00:00Z"));
    let late = claim(&mut c, &a, "v", "r1", 0.0).await;
    assert_eq!(code(&late), (409, "outside_window".into()));
    server.clock.set(t0());
    assert_eq!(drop_named(&mut c, "g-2-2").await["remaining"], json!(4));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_coordinates_get_a_400_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 2, 1000, 10).await;
    let mut c = server.conn().await;
    let cases = [
        ("lat=NaN&lng=121.47", "lat"),
        ("lat=inf&lng=121.47", "lat"),
        ("lat=-inf&lng=121.47", "lat"),
        ("lat=90.5&lng=121.47", "lat"),
        ("lat=abc&lng=121.47", "lat"),
        ("lat=31.23&lng=181", "lng"),
        ("lat=31.23&lng=-Infinity", "lng"),
        ("lat=31.23", "lng"),
        ("lng=121.47", "lat"),
        ("lat=31.23&lng=121.47&limit=0", "limit"),
        ("lat=31.23&lng=121.47&limit=101", "limit"),
        ("lat=31.23&lng=121.47&radius=5", "radius"),
        ("lat=31.23&lng=121.47&lat=1", "lat"),
    ];
    for (query, field) in cases {
        let r = c.get(&format!("/v1/drops/nearby?{query}")).await.unwrap();
        assert_eq!(r.status, 400, "{query}");
        let v = r.json();
        assert_eq!(v["field"], json!(field), "{query}: {v}");
        assert!(v["message"].as_str().unwrap().starts_with(field), "{v}");
    }

    let drop = drop_named(&mut c, "g-4-4").await;
    let path = format!("/v1/drops/{}/claim", drop["id"].as_str().unwrap());
    let bodies = [
        (
            json!({"user": "u", "request_id": "r", "lat": 91.0, "lng": 121.47}),
            "lat",
        ),
        (
            json!({"user": "u", "request_id": "r", "lat": "31.23", "lng": 121.47}),
            "lat",
        ),
        (
            json!({"user": "u", "request_id": "r", "lat": 31.23, "lng": -180.5}),
            "lng",
        ),
        (json!({"user": "u", "request_id": "r", "lat": 31.23}), "lng"),
        (
            json!({"user": "u", "request_id": "r", "lat": 31.23, "lng": null}),
            "lng",
        ),
        (
            json!({"user": "u u", "request_id": "r", "lat": 31.23, "lng": 121.47}),
            "user",
        ),
    ];
    for (body, field) in bodies {
        let r = c.post_json(&path, &body).await.unwrap();
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["field"], json!(field), "{body}: {}", r.json());
    }
    let unknown = claim(
        &mut c,
        &json!({"id": "grid:100000", "lat": 31.23, "lng": 121.47}),
        "u",
        "r",
        0.0,
    )
    .await;
    assert_eq!(code(&unknown), (404, "not_found".into()));
    assert_eq!(drop_named(&mut c, "g-4-4").await["remaining"], json!(2));
    assert!(
        wins_of(&mut c, "u").await.is_empty(),
        "bad input changed nothing"
    );
    server.stop().await;
}

/// `grid:044` named the drop `grid:44` too, so one drop had several ids. Only the id nearby
/// lists is taken; another spelling gets a 400 naming the `drop` segment and that id, and
/// claims nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_id_with_leading_zeros_is_refused_naming_the_drops_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 2, 1000, 10).await;
    let mut c = server.conn().await;
    let drop = drop_named(&mut c, "g-4-4").await;
    let id = drop["id"].as_str().unwrap().to_string();
    let (task, n) = id.rsplit_once(':').unwrap();
    for other in [format!("{task}:0{n}"), format!("{task}:000{n}")] {
        let mut spelled = drop.clone();
        spelled["id"] = json!(other);
        let r = claim(&mut c, &spelled, "u", &other, 0.0).await;
        assert_eq!(
            code(&r),
            (400, "invalid_field".into()),
            "{other}: {}",
            r.json()
        );
        let v = r.json();
        assert_eq!(v["field"], json!("drop"), "{v}");
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(&format!("{id:?}")), "{message}");
    }
    assert_eq!(drop_named(&mut c, "g-4-4").await["remaining"], json!(2));
    assert!(wins_of(&mut c, "u").await.is_empty(), "nothing was claimed");
    assert_eq!(claim(&mut c, &drop, "u", "r", 0.0).await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_of_a_claimed_task_cannot_change_and_bad_rows_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 2, 1000, 10).await;
    let mut c = server.conn().await;
    let config = drops_config(2, 1000, 10);

    // A bad row is reported with its line; nothing changes.
    std::fs::write(
        dir.path().join("points.csv"),
        grid_csv() + "31.5,not-a-number,bad-row,south\n",
    )
    .unwrap();
    let r = publish(&mut c, &config, "application/toml", Some(TOKEN)).await;
    assert_eq!(code(&r), (422, "invalid_drops".into()), "{}", r.json());
    assert_eq!(r.json()["field"], json!("drops[0].points"));
    assert!(
        r.json()["message"].as_str().unwrap().contains("line 102"),
        "{}",
        r.json()
    );
    assert_eq!(config_seq(&mut c).await, 1);

    // Same points: the publish keeps the claims.
    std::fs::write(dir.path().join("points.csv"), grid_csv()).unwrap();
    let drop = drop_named(&mut c, "g-6-6").await;
    assert_eq!(claim(&mut c, &drop, "u", "r", 0.0).await.status, 200);
    let r = publish(&mut c, &config, "application/toml", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(drop_named(&mut c, "g-6-6").await["remaining"], json!(1));

    // Moved points under claims: refused, and the live set still takes claims.
    let moved = grid_csv().replace("31.2360,121.4760,g-6-6", "31.2361,121.4760,g-6-6");
    assert_ne!(moved, grid_csv());
    std::fs::write(dir.path().join("points.csv"), moved).unwrap();
    let r = publish(&mut c, &config, "application/toml", Some(TOKEN)).await;
    assert_eq!(code(&r), (422, "invalid_drops".into()), "{}", r.json());
    assert_eq!(r.json()["field"], json!("drops[0].points"));
    assert_eq!(config_seq(&mut c).await, 2);
    assert_eq!(claim(&mut c, &drop, "v", "r", 0.0).await.status, 200);
    assert_eq!(drop_named(&mut c, "g-6-6").await["remaining"], json!(0));
    server.stop().await;
}
