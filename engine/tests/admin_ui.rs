//! The admin page end to end in headless Chromium (ChromeDriver over loopback): log in, add a
//! round with two prizes, see a validation error next to its field, fix it, review and publish
//! and see the SeqNo increase, draw through the API and see the dashboard move, pause a prize
//! and see draws stop winning it, read the audit log; names are shown as text, never run.
//! Screenshots of each step land in `target/ui-artifacts/`.

mod common;
mod webdriver;

use common::*;
use serde_json::{json, Value};
use webdriver::Browser;

/// An always-live round `rain` with one prize, and a drop task `square` on `points.csv`.
fn config() -> String {
    format!(
        "{}{}{}{}{}",
        campaign("spring", ""),
        PARTNERS,
        live_round("rain", "spring", 1000, 100),
        cash_prize("lucky", 100, 100_000, 100_000, 50),
        r#"
[[drops]]
id = "square"
campaign = "spring"
points = "points.csv"
radius_m = 50
starts_at = "2026-01-01T00:00:00Z"
ends_at = "2036-01-01T00:00:00Z"
per_drop = 2
max_claims_per_user = 5

[[drops.prizes]]
id = "drop-cash"
kind = "cash"
amount_cents = 10
partner = "wallet"
quota = 1000
rate_per_s = 100
weight = 1
"#
    )
}

/// 300 points on a 20 × 15 grid about 100 m apart, near People's Square.
fn points() -> String {
    (0..300)
        .map(|i| {
            format!(
                "{},{}\n",
                31.22 + f64::from(i % 20) * 0.001,
                121.46 + f64::from(i / 20) * 0.001
            )
        })
        .collect()
}

const EVIL_ROUND: &str = "<img src=x onerror=\"window.__xss=1\">";
const EVIL_CAMPAIGN: &str = "<script>window.__xss=2</script>Spring";

fn path(p: &str) -> String {
    format!("[data-path=\"{p}\"]")
}

/// The live SeqNo shown in the top bar.
async fn shown_seq(b: &mut Browser) -> u64 {
    b.text("#seq").await.trim().parse().unwrap()
}

/// Draws once for each of `users` in round `night`; the prize each won.
async fn draw_all(
    c: &mut redrain::client::Conn,
    users: std::ops::Range<u32>,
    req: &str,
) -> Vec<String> {
    let mut prizes = Vec::new();
    for i in users {
        let v = draw_ok(c, "night", &format!("u{i}"), req, 1).await;
        prizes.push(v["wins"][0]["prize"].as_str().unwrap_or("none").to_string());
    }
    prizes
}

#[tokio::test]
async fn an_operator_configures_publishes_watches_and_pauses_a_round_in_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("points.csv"), points()).unwrap();
    let server = Server::with_config(dir.path(), &config(), t0()).await;
    let base = format!("http://{}", server.addr);
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-artifacts");
    let mut b = Browser::launch(artifacts).await;

    // Log in: a wrong password first.
    b.goto(&format!("{base}/admin/")).await;
    b.fill("#login-name", "pat").await;
    b.fill("#login-password", "not-it").await;
    b.click("#login-submit").await;
    b.wait_text("#login-error", "wrong password").await;
    b.screenshot("login-refused").await;
    b.fill("#login-password", "pat-password").await;
    b.click("#login-submit").await;
    b.wait_text("#whoami", "pat").await;
    let seq = shown_seq(&mut b).await;
    b.screenshot("dashboard").await;

    // A new round with two prizes, the first with a rate of 0.
    b.click("a[href=\"#/editor\"]").await;
    b.fill(&path("campaigns[0].name"), EVIL_CAMPAIGN).await;
    b.click("#add-round").await;
    for (field, value) in [
        ("id", "night"),
        ("name", EVIL_ROUND),
        ("starts_at", "2026-01-01T00:00:00Z"),
        ("duration_s", "2592000"),
        ("every_s", "2592000"),
        ("participation_s", "2592000"),
        ("max_wins_per_user", "100"),
        ("no_win_weight", "0"),
    ] {
        b.fill(&path(&format!("rounds[1].{field}")), value).await;
    }
    b.click("[data-section=\"rounds[1]\"] .add-prize").await;
    b.click("[data-section=\"rounds[1]\"] .add-prize").await;
    for (i, id, rate) in [(0, "moon", "0"), (1, "star", "1000")] {
        b.fill(&path(&format!("rounds[1].prizes[{i}].id")), id)
            .await;
        b.fill(&path(&format!("rounds[1].prizes[{i}].quota")), "1000")
            .await;
        b.fill(&path(&format!("rounds[1].prizes[{i}].rate_per_s")), rate)
            .await;
    }
    b.click("#save-draft").await;
    let bad = path("rounds[1].prizes[0].rate_per_s");
    b.wait_text(&format!("{bad} + .field-error"), "must be at least 1")
        .await;
    assert!(b
        .text("#editor-errors")
        .await
        .contains("rounds[1].prizes[0].rate_per_s"));
    b.screenshot("validation-error").await;

    // Fix it and save again: the error goes.
    b.fill(&bad, "1000").await;
    b.click("#save-draft").await;
    b.wait_until(
        "the draft saves without errors",
        "return document.querySelector('#draft-status').textContent.includes('saved') && \
         [...document.querySelectorAll('.field-error')].every(e => e.textContent.trim() === '');",
        json!([]),
    )
    .await;

    // Review against the live SeqNo, then publish.
    b.click("a[href=\"#/review\"]").await;
    b.wait_text("#changes", "rounds[night]: added").await;
    b.screenshot("review").await;
    b.click("#publish").await;
    b.wait_text("#publish-result", &(seq + 1).to_string()).await;
    b.wait_text("#seq", &(seq + 1).to_string()).await;
    b.screenshot("published").await;
    let live = get_ok(&mut server.conn().await, "/v1/rounds/night").await;
    assert_eq!(live["seq"], seq + 1);

    // Draws through the API move the dashboard's counts.
    b.click("a[href=\"#/dashboard\"]").await;
    b.wait_text("[data-prize=\"moon\"] .issued", "0").await;
    let mut c = server.conn().await;
    let first = draw_all(&mut c, 0..30, "r1").await;
    let moons = first.iter().filter(|p| *p == "moon").count();
    assert!(moons > 0 && moons < 30, "{first:?}");
    let counts =
        "const n = s => +document.querySelector(`[data-prize=\"${s}\"] .issued`).textContent; \
                  return n('moon') === arguments[0] && n('star') === arguments[1];";
    b.wait_until(
        "the dashboard counts the wins",
        counts,
        json!([moons, 30 - moons]),
    )
    .await;
    b.screenshot("dashboard-moved").await;
    assert_eq!(
        b.js(
            "return document.querySelector('#storage-failed').hidden",
            json!([])
        )
        .await,
        json!(true),
        "no storage banner while the ledger writes"
    );

    // Names are text: nothing the operator typed ran.
    let round_name = b.text("[data-round=\"night\"] .name").await;
    assert!(round_name.contains(EVIL_ROUND), "{round_name}");
    let campaign_name = b.text("[data-campaign=\"spring\"] .name").await;
    assert!(campaign_name.contains(EVIL_CAMPAIGN), "{campaign_name}");
    assert_eq!(
        b.js("return window.__xss === undefined;", json!([])).await,
        json!(true)
    );

    // Pause `moon` (the button asks to confirm): draws stop winning it.
    b.click("[data-prize=\"moon\"] .kill").await;
    b.click("[data-prize=\"moon\"] .kill").await;
    b.wait_text("#seq", &(seq + 2).to_string()).await;
    b.wait_text("[data-prize=\"moon\"] .kill", "Resume").await;
    let after = draw_all(&mut c, 0..30, "r2").await;
    assert!(after.iter().all(|p| p == "star"), "{after:?}");
    b.screenshot("prize-paused").await;

    // The audit log names who did what, and at which SeqNo.
    b.click("a[href=\"#/audit\"]").await;
    b.wait_text("#audit-table tbody", "kill_switch").await;
    let rows: Value = b
        .js(
            "return [...document.querySelectorAll('#audit-table tbody tr')]\
               .map(tr => [...tr.cells].map(td => td.textContent.trim()));",
            json!([]),
        )
        .await;
    let rows: Vec<Vec<String>> = serde_json::from_value(rows).unwrap();
    let summary: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r[1].as_str(), r[3].as_str(), r[4].as_str()))
        .collect();
    let (s1, s2) = ((seq + 1).to_string(), (seq + 2).to_string());
    assert_eq!(
        summary,
        vec![
            ("pat", "kill_switch", s2.as_str()),
            ("pat", "published", s1.as_str()),
            ("pat", "draft_saved", &seq.to_string()),
            ("pat", "draft_saved", &seq.to_string()),
            ("config-file", "published", &seq.to_string()),
        ]
    );
    assert!(rows[0][5].contains("rounds[night].prizes[moon].paused: false → true"));
    b.screenshot("audit").await;

    // The map draws the task's drops on its canvas.
    b.click("a[href=\"#/map\"]").await;
    b.wait_text("#map-legend", "300 in the task").await;
    b.wait_text("#map-legend", "drops in view").await;
    let painted = "const c = document.querySelector('#map-canvas'); \
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
                   const seen = new Set(); \
                   for (let i = 0; i < d.length; i += 4 * 97) seen.add(`${d[i]},${d[i+1]},${d[i+2]}`); \
                   return seen.size > 1;";
    b.wait_until("the map canvas shows drops", painted, json!([]))
        .await;
    b.screenshot("map").await;

    // Reconciliation over the ledger: every win has its (pending) delivery.
    b.click("a[href=\"#/reconciliation\"]").await;
    b.click("#recon-run").await;
    b.wait_text(
        "#recon-ok",
        "OK: issued counters, wins and deliveries add up",
    )
    .await;
    b.wait_text("#recon-prizes tbody", "moon").await;
    b.screenshot("reconciliation").await;

    // A viewer sees the same dashboard but may not flip a switch.
    b.click("#logout").await;
    b.fill("#login-name", "vic").await;
    b.fill("#login-password", "vic-password").await;
    b.click("#login-submit").await;
    b.wait_text("#whoami", "vic").await;
    b.click("a[href=\"#/dashboard\"]").await;
    b.wait_until(
        "a viewer's kill switches are disabled",
        "const k = document.querySelector('[data-prize=\"moon\"] .kill'); return !!k && k.disabled;",
        json!([]),
    )
    .await;
    b.screenshot("viewer").await;
    b.quit().await;
    server.stop().await;
}
