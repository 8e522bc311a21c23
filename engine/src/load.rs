//! `redrain load`: a full-link load generator over HTTP, and the checks that follow it.
//!
//! Many keep-alive connections send draws (closed loop, or paced to a fixed total rate) for a
//! duration, with a progress bar; latencies go into HDR histograms. Optionally `/healthz` is
//! loaded first with the same connections and duration, and the ratio is printed. Afterwards
//! the properties are checked through the API and against every win the run received:
//! per prize issued ≤ quota, wins in any 100 ms slot ≤ that slot's share, no user over a cap,
//! and (for a sample of users) every win received is listed for its user.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use quota::limiter::{slot_of, slot_share, SLOTS_PER_S};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::Conn;

/// Arguments of `redrain load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The engine, e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Round to draw in (default: the first live round).
    #[arg(long)]
    pub round: Option<String>,
    /// How long to load, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Total requests per second across connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Size of the user population drawn from (users are `PREFIX-N`).
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Give every request a new user (distinct users, e.g. for memory per user).
    #[arg(long)]
    pub distinct_users: bool,
    /// Prefix of user ids (default: a random one per run). Pass the same prefix again to draw
    /// as returning users; request ids are new in every run either way.
    #[arg(long)]
    pub user_prefix: Option<String>,
    /// Stop after this many requests in total (0 = only the duration limits the run).
    #[arg(long, default_value_t = 0)]
    pub requests: u64,
    /// Shakes per request.
    #[arg(long, default_value_t = 1)]
    pub shakes: u32,
    /// Also load GET /healthz first for the same duration and print the draw/healthz ratio.
    #[arg(long)]
    pub compare_healthz: bool,
    /// Users whose win lists are fetched to confirm every received win is listed.
    #[arg(long, default_value_t = 200)]
    pub verify_users: usize,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the report as JSON too.
    #[arg(long)]
    pub json: bool,
}

/// A draw request, written straight from borrowed parts.
#[derive(Serialize)]
struct DrawBody<'a> {
    user: &'a str,
    request_id: &'a str,
    shakes: u32,
}

/// What the load tool keeps of a draw's answer (a `DrawResponse`), borrowed from the body.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    occurrence: Option<u64>,
    #[serde(borrow)]
    wins: Vec<AnswerWin<'a>>,
}

#[derive(Deserialize)]
struct AnswerWin<'a> {
    #[serde(borrow)]
    prize: Cow<'a, str>,
    #[serde(borrow)]
    win_id: Cow<'a, str>,
    at_ms: u64,
}

#[derive(Debug, Clone)]
struct Won {
    user: String,
    prize: String,
    occurrence: u64,
    at_ms: u64,
    win_id: String,
}

#[derive(Default)]
struct PhaseResult {
    ok: u64,
    errors: HashMap<String, u64>,
    outcomes: HashMap<String, u64>,
    wins: Vec<Won>,
    latency: Option<Histogram<u64>>,
    elapsed: Duration,
}

impl PhaseResult {
    fn merge(&mut self, other: PhaseResult) {
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.wins.extend(other.wins);
        match (&mut self.latency, other.latency) {
            (Some(h), Some(o)) => h.add(o).expect("same bounds"),
            (slot @ None, o) => *slot = o,
            _ => {}
        }
    }
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn quantile_us(&self, q: f64) -> u64 {
        self.latency.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }
}

fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    let hostport = target
        .strip_prefix("http://")
        .unwrap_or(target)
        .trim_end_matches('/');
    hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {target}"))
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Healthz,
    Draw,
}

/// Runs `redrain load`: prints the report and exits non-zero when a check failed or no draw
/// succeeded.
pub async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let report = report(&args).await?;
    if args.json {
        println!("{report}");
    }
    Ok(if passed(&report) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Whether a report says every check held and some draw succeeded.
pub fn passed(report: &Value) -> bool {
    report["check_failures"]
        .as_array()
        .is_some_and(|f| f.is_empty())
        && report["draws"]["ok"].as_u64().unwrap_or(0) > 0
}

/// Loads the engine, checks it through its API and returns the report (also printed as
/// lines): throughput, latency, outcomes, memory, and `check_failures`.
pub async fn report(args: &LoadArgs) -> anyhow::Result<Value> {
    if args.connections == 0 || args.connections > 10_000 {
        bail!("--connections must be from 1 to 10000");
    }
    let addr = resolve(&args.target)?;
    let mut conn = Conn::connect(addr)
        .await
        .context("connecting to the engine")?;
    let round = match &args.round {
        Some(r) => r.clone(),
        None => {
            let rounds = conn.get("/v1/rounds").await?.json();
            rounds["rounds"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["status"] == "live"))
                .and_then(|r| r["id"].as_str().map(String::from))
                .ok_or_else(|| anyhow!("no live round; pass --round"))?
        }
    };
    let prefix = args
        .user_prefix
        .clone()
        .unwrap_or_else(|| format!("load{:x}", rand::random::<u32>()));
    // Request ids are this run's own even when the users are not, so a rerun with the same
    // prefix draws anew instead of replaying the answers of the run before.
    let ids = Ids {
        users: prefix,
        requests: format!("{:x}", rand::random::<u64>()),
    };

    let before = engine_metrics(&mut conn).await;
    let healthz = if args.compare_healthz {
        Some(phase(args, addr, Phase::Healthz, &round, &ids).await?)
    } else {
        None
    };
    let draws = phase(args, addr, Phase::Draw, &round, &ids).await?;

    let mut report = json!({
        "round": round,
        "connections": args.connections,
        "duration_s": args.duration.as_secs_f64(),
        "draws": summary(&draws),
        "outcomes": draws.outcomes,
        "wins_per_s": draws.wins.len() as f64 / draws.elapsed.as_secs_f64().max(1e-9),
    });
    println!("draws:   {}", line(&draws));
    println!(
        "outcomes: {:?}; wins {} ({:.0}/s)",
        draws.outcomes,
        draws.wins.len(),
        report["wins_per_s"].as_f64().unwrap_or(0.0)
    );
    if let Some(h) = &healthz {
        println!("healthz: {}", line(h));
        let ratio = draws.throughput() / h.throughput().max(1e-9);
        println!("draw/healthz throughput ratio: {ratio:.3}");
        report["healthz"] = summary(h);
        report["ratio"] = ratio.into();
    }

    let after = engine_metrics(&mut conn).await;
    let value = |m: &Option<HashMap<String, f64>>, name| m.as_ref()?.get(name).map(|v| *v as u64);
    let replays = |m| value(m, "redrain_draw_replays_total");
    if let (Some(b), Some(a)) = (replays(&before), replays(&after)) {
        // The tool never repeats a request id, so this is other clients' retries (or a bug).
        println!("answers replayed from idempotency records: {}", a - b);
        report["replayed"] = (a - b).into();
    }
    let resident = |m| value(m, "process_resident_memory_bytes");
    if let (Some(before), Some(after)) = (resident(&before), resident(&after)) {
        println!(
            "engine resident memory: {:.1} MiB before, {:.1} MiB after",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        );
        report["rss_before"] = before.into();
        report["rss_after"] = after.into();
        if args.distinct_users && draws.ok > 0 {
            let per_user = after as f64 / draws.ok as f64;
            println!(
                "resident bytes per distinct user: {per_user:.1} (whole process / {} users)",
                draws.ok
            );
            report["rss_bytes_per_user"] = per_user.into();
        }
    }
    let failures = check(&mut conn, &round, &draws, args.verify_users).await?;
    for f in &failures {
        println!("CHECK FAILED: {f}");
    }
    if failures.is_empty() {
        println!(
            "checks: ok (issued ≤ quota, wins per 100 ms slot ≤ share, per-user caps, wins listed)"
        );
    }
    report["check_failures"] = failures.into();
    Ok(report)
}

/// The engine's `/metrics` samples, if it serves them.
async fn engine_metrics(conn: &mut Conn) -> Option<HashMap<String, f64>> {
    let reply = conn.get("/metrics").await.ok()?;
    Some(crate::metrics::parse(
        std::str::from_utf8(&reply.body).ok()?,
    ))
}

/// Where a run's user ids and request ids come from.
struct Ids {
    /// `PREFIX` of the users `PREFIX-N`.
    users: String,
    /// Prefix of this run's request ids, `RUN-CONNECTION-N`.
    requests: String,
}

fn line(p: &PhaseResult) -> String {
    let errors: u64 = p.errors.values().sum();
    format!(
        "{} ok, {} errors {:?} in {:.2}s = {:.0} req/s; latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        p.ok,
        errors,
        p.errors,
        p.elapsed.as_secs_f64(),
        p.throughput(),
        p.quantile_us(0.5),
        p.quantile_us(0.99),
        p.quantile_us(0.999),
        p.latency.as_ref().map_or(0, Histogram::max)
    )
}

fn summary(p: &PhaseResult) -> Value {
    json!({
        "ok": p.ok, "errors": p.errors, "elapsed_s": p.elapsed.as_secs_f64(), "per_s": p.throughput(),
        "p50_us": p.quantile_us(0.5), "p99_us": p.quantile_us(0.99), "p999_us": p.quantile_us(0.999),
    })
}

async fn phase(
    args: &LoadArgs,
    addr: SocketAddr,
    kind: Phase,
    round: &str,
    ids: &Ids,
) -> anyhow::Result<PhaseResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let next_user = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let per_conn_interval = (args.rate > 0)
        .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
    let mut tasks = Vec::with_capacity(args.connections);
    for c in 0..args.connections {
        let (stop, sent, next_user) = (stop.clone(), sent.clone(), next_user.clone());
        let (args, round) = (args.clone(), round.to_string());
        let (prefix, run) = (ids.users.clone(), ids.requests.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = PhaseResult {
                latency: Some(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")),
                ..Default::default()
            };
            let mut conn = match Conn::connect(addr).await {
                Ok(c) => c,
                Err(e) => {
                    *out.errors.entry(format!("connect: {e}")).or_default() += 1;
                    return out;
                }
            };
            let path = format!("/v1/rounds/{round}/draw");
            let mut rng_state = (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            // Senders are spread over one interval, so a fixed rate arrives evenly rather than
            // in bursts of one request per connection.
            let mut scheduled = Instant::now()
                + per_conn_interval
                    .map_or(Duration::ZERO, |iv| iv * c as u32 / args.connections as u32);
            let mut n = 0u64;
            let (mut user, mut request_id) = (String::new(), String::new());
            while !stop.load(Relaxed) {
                if args.requests > 0 && sent.fetch_add(1, Relaxed) >= args.requests {
                    break;
                }
                // At a fixed rate, a sender still busy with its previous request when the next
                // one is due is behind because of the engine: it sends at once and measures from
                // the intended send time (no coordinated omission). A sender that slept measures
                // from when it woke: tokio's timer wakes up to 1-2 ms late, and that lateness is
                // the pacer's, not the engine's.
                let mut behind = false;
                if let Some(iv) = per_conn_interval {
                    scheduled += iv;
                    behind = Instant::now() >= scheduled;
                    if !behind {
                        tokio::time::sleep_until(scheduled.into()).await; // pacing, not synchronization
                    }
                    if stop.load(Relaxed) {
                        break;
                    }
                }
                let t0 = if behind { scheduled } else { Instant::now() };
                let reply = match kind {
                    Phase::Healthz => conn.get("/healthz").await,
                    Phase::Draw => {
                        rng_state ^= rng_state << 13;
                        rng_state ^= rng_state >> 7;
                        rng_state ^= rng_state << 17;
                        let u = if args.distinct_users {
                            next_user.fetch_add(1, Relaxed)
                        } else {
                            rng_state % args.users.max(1)
                        };
                        user.clear();
                        request_id.clear();
                        let _ = write!(user, "{prefix}-{u}");
                        let _ = write!(request_id, "{run}-{c}-{n}");
                        let body = DrawBody {
                            user: &user,
                            request_id: &request_id,
                            shakes: args.shakes,
                        };
                        conn.post_json(&path, &body).await
                    }
                };
                n += 1;
                let us = t0.elapsed().as_micros() as u64;
                if args.requests == 0 {
                    sent.fetch_add(1, Relaxed);
                }
                match reply {
                    Ok(r) if r.status == 200 => {
                        out.ok += 1;
                        let _ = out.latency.as_mut().map(|h| h.record(us.max(1)));
                        if kind == Phase::Draw {
                            if let Ok(d) = serde_json::from_slice::<Answer>(&r.body) {
                                match out.outcomes.get_mut(d.outcome.as_ref()) {
                                    Some(count) => *count += 1,
                                    None => {
                                        out.outcomes.insert(d.outcome.into_owned(), 1);
                                    }
                                }
                                for w in d.wins {
                                    out.wins.push(Won {
                                        user: user.clone(),
                                        prize: w.prize.into_owned(),
                                        occurrence: d.occurrence.unwrap_or(0),
                                        at_ms: w.at_ms,
                                        win_id: w.win_id.into_owned(),
                                    });
                                }
                            }
                        }
                    }
                    Ok(r) => *out.errors.entry(format!("http {}", r.status)).or_default() += 1,
                    Err(e) => *out.errors.entry(format!("client: {e}")).or_default() += 1,
                }
            }
            out
        }));
    }
    let bar = (!args.quiet).then(|| {
        let bar = indicatif::ProgressBar::new(args.duration.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len}s {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(if kind == Phase::Draw {
            "draw   "
        } else {
            "healthz"
        });
        bar
    });
    let mut last = 0;
    while started.elapsed() < args.duration && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(
            Duration::from_millis(250).min(args.duration.saturating_sub(started.elapsed())),
        )
        .await;
        if let Some(bar) = &bar {
            let now = sent.load(Relaxed);
            bar.set_position(started.elapsed().as_secs());
            bar.set_message(format!("{} req/s", (now - last) * 4));
            last = now;
        }
    }
    stop.store(true, Relaxed);
    let mut total = PhaseResult::default();
    for t in tasks {
        total.merge(t.await?);
    }
    total.elapsed = started.elapsed();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(total)
}

async fn check(
    conn: &mut Conn,
    round: &str,
    run: &PhaseResult,
    verify_users: usize,
) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    let info = conn.get(&format!("/v1/rounds/{round}")).await?;
    if info.status != 200 {
        bail!("GET /v1/rounds/{round}: {}", info.status);
    }
    let info = info.json();
    // Per prize: this node's quota, and its room in each slot of a second.
    let mut limits: HashMap<String, (u64, Vec<u32>)> = HashMap::new();
    for p in info["prizes"].as_array().into_iter().flatten() {
        let id = p["id"].as_str().unwrap_or_default().to_string();
        let (quota, issued) = (
            p["quota"].as_u64().unwrap_or(0),
            p["issued"].as_u64().unwrap_or(0),
        );
        if issued > quota {
            failures.push(format!("prize {id}: issued {issued} > quota {quota}"));
        }
        // An engine that does not list its slot rooms splits its node's rate evenly.
        let node_rate = p["node_rate_per_s"].as_u64().unwrap_or(0) as u32;
        let rooms = match p["node_slot_rooms"].as_array() {
            Some(rooms) => rooms
                .iter()
                .map(|r| r.as_u64().unwrap_or(0) as u32)
                .collect(),
            None => (0..SLOTS_PER_S).map(|j| slot_share(node_rate, j)).collect(),
        };
        limits.insert(id, (p["node_quota"].as_u64().unwrap_or(0), rooms));
    }

    let mut per_occurrence: HashMap<(&str, u64), u64> = HashMap::new();
    let mut per_slot: HashMap<(&str, u64), u32> = HashMap::new();
    let mut per_user_round: HashMap<(&str, u64), u64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for w in &run.wins {
        *per_occurrence.entry((&w.prize, w.occurrence)).or_default() += 1;
        *per_slot.entry((&w.prize, slot_of(w.at_ms))).or_default() += 1;
        *per_user_round.entry((&w.user, w.occurrence)).or_default() += 1;
        if !ids.insert(&w.win_id) {
            failures.push(format!("win id {} was returned twice", w.win_id));
        }
    }
    for ((prize, occ), n) in &per_occurrence {
        match limits.get(*prize) {
            Some((quota, _)) if n > quota => failures.push(format!(
                "prize {prize} occurrence {occ}: {n} wins received > node quota {quota}"
            )),
            None => failures.push(format!(
                "prize {prize} is not in round {round} any more; cannot check it"
            )),
            _ => {}
        }
    }
    for ((prize, slot), n) in &per_slot {
        if let Some((_, rooms)) = limits.get(*prize) {
            let room = rooms
                .get((slot % SLOTS_PER_S) as usize)
                .copied()
                .unwrap_or(0);
            if *n > room {
                failures.push(format!(
                    "prize {prize} slot {slot}: {n} wins > the node's room {room} in it"
                ));
            }
        }
    }
    let cap = info["max_wins_per_user"].as_u64().unwrap_or(u64::MAX);
    for ((user, occ), n) in &per_user_round {
        if *n > cap {
            failures.push(format!(
                "user {user} occurrence {occ}: {n} wins > round cap {cap}"
            ));
        }
    }

    let mut by_user: HashMap<&str, Vec<&str>> = HashMap::new();
    for w in &run.wins {
        by_user.entry(&w.user).or_default().push(&w.win_id);
    }
    for (user, wins) in by_user.into_iter().take(verify_users) {
        let listed = conn.get(&format!("/v1/users/{user}/wins")).await?.json();
        let listed: std::collections::HashSet<&str> = listed["wins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w["win_id"].as_str())
            .collect();
        for id in wins {
            if !listed.contains(id) {
                failures.push(format!(
                    "user {user}: win {id} was acknowledged but is not listed"
                ));
            }
        }
    }
    Ok(failures)
}
