//! The HTTP API (warp): routes, bounded bodies, JSON errors, admin authentication.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use quota::config::{format_ms, Config, PrizeKind, Round};
use quota::ids::check_id;
use quota::schedule::RoundStatus;
use serde::Serialize;
use serde_json::json;
use warp::http::{header, Response, StatusCode};
use warp::{Buf, Filter, Rejection};

use crate::drops::{DEFAULT_NEARBY, MAX_NEARBY};
use crate::error::{parse_json, ApiError};
use crate::server::{App, PublishFailure};
use crate::service::{ClaimRequest, DrawRequest, WinRecord};
use crate::storage::Cf;
use quota::store::PublishError;
use redrain_geo::Coord;
use std::collections::HashMap;

/// Largest draw request body.
pub const MAX_DRAW_BODY: usize = 4 << 10;
/// Largest config body.
pub const MAX_CONFIG_BODY: usize = 1 << 20;
/// Largest redelivery request body.
pub const MAX_REDELIVER_BODY: usize = 1 << 10;
/// Largest claim request body.
pub const MAX_CLAIM_BODY: usize = 4 << 10;
/// Most wins listed for one user.
pub const MAX_LISTED_WINS: usize = 1000;

type Reply = Response<warp::hyper::body::Bytes>;

/// Every route of the engine.
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Response<warp::hyper::body::Bytes>,), Error = Infallible> + Clone {
    let with_app = warp::any().map(move || app.clone());

    let draw = warp::path!("v1" / "rounds" / String / "draw")
        .and(warp::post())
        .and(with_app.clone())
        .and(body_limited(MAX_DRAW_BODY))
        .then(
            |round: String, app: Arc<App>, body: Result<Bytes, ApiError>| async move {
                let started = Instant::now();
                let reply = draw(&app, &round, body).await;
                app.service.metrics.draw_latency.observe(started.elapsed());
                reply
            },
        );
    let claim = warp::path!("v1" / "drops" / String / "claim")
        .and(warp::post())
        .and(with_app.clone())
        .and(body_limited(MAX_CLAIM_BODY))
        .then(
            |drop: String, app: Arc<App>, body: Result<Bytes, ApiError>| async move {
                let started = Instant::now();
                let result = async {
                    let req: ClaimRequest = parse_json(&body?)?;
                    app.service.claim(&drop, req).await
                };
                let reply = match result.await {
                    Ok(body) => json_reply(StatusCode::OK, body),
                    Err(e) => error_reply(&e),
                };
                app.service.metrics.other_latency.observe(started.elapsed());
                reply
            },
        );
    let nearby = warp::path!("v1" / "drops" / "nearby")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_app.clone())
        .map(|q: HashMap<String, String>, app: Arc<App>| timed(&app, || nearby(&app, &q)));
    let region = warp::path!("v1" / "regions" / String)
        .and(warp::get())
        .and(with_app.clone())
        .map(|id: String, app: Arc<App>| timed(&app, || region(&app, &id)));
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()));
    let rounds = warp::path!("v1" / "rounds")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: Arc<App>| timed(&app, || list_rounds(&app)));
    let round = warp::path!("v1" / "rounds" / String)
        .and(warp::get())
        .and(with_app.clone())
        .map(|id: String, app: Arc<App>| timed(&app, || show_round(&app, &id)));
    let wins = warp::path!("v1" / "users" / String / "wins")
        .and(warp::get())
        .and(with_app.clone())
        .map(|user: String, app: Arc<App>| timed(&app, || user_wins(&app, &user)));
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: Arc<App>| {
            let svc = &app.service;
            let mut text = svc
                .metrics
                .render(svc.snapshot().seq.0, svc.locks.in_flight());
            crate::metrics::render_lanes(&mut text, &svc.deliveries.stats());
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Bytes::from(text))
                .expect("static headers are valid")
        });
    let admin = warp::path("admin")
        .and(warp::path("api"))
        .and(warp::header::optional::<String>("authorization"))
        .and(with_app.clone());
    let get_config = admin
        .clone()
        .and(warp::path!("config"))
        .and(warp::get())
        .map(|auth: Option<String>, app: Arc<App>| {
            timed(&app, || {
                authorize(&app, auth.as_deref())?;
                let snap = app.service.snapshot();
                json_ok(&json!({"seq": snap.seq.0, "config": snap.config.raw}))
            })
        });
    let post_config = admin
        .clone()
        .and(warp::path!("config"))
        .and(warp::post())
        .and(warp::header::optional::<String>("content-type"))
        .and(body_limited(MAX_CONFIG_BODY))
        .then(
            |auth: Option<String>,
             app: Arc<App>,
             ctype: Option<String>,
             body: Result<Bytes, ApiError>| async move {
                // A publish may read and index millions of drop points: off the async workers.
                tokio::task::spawn_blocking(move || {
                    timed(&app, || {
                        authorize(&app, auth.as_deref())?;
                        publish(&app, ctype.as_deref(), &body?)
                    })
                })
                .await
                .unwrap_or_else(|e| error_reply(&ApiError::internal(e)))
            },
        );

    let redeliver = warp::path!("v1" / "wins" / String / "redeliver")
        .and(warp::post())
        .and(with_app.clone())
        .and(body_limited(MAX_REDELIVER_BODY))
        .then(
            |win: String, app: Arc<App>, body: Result<Bytes, ApiError>| async move {
                let started = Instant::now();
                let reply = redeliver(&app, &win, body)
                    .await
                    .unwrap_or_else(|e| error_reply(&e));
                app.service.metrics.other_latency.observe(started.elapsed());
                reply
            },
        );
    let delivery_stats = admin
        .clone()
        .and(warp::path!("delivery"))
        .and(warp::get())
        .map(|auth: Option<String>, app: Arc<App>| {
            timed(&app, || {
                authorize(&app, auth.as_deref())?;
                let (ready, later) = redrain_delivery::queue::LaneQueue::bytes_per_id();
                json_ok(&json!({
                    "lanes": app.service.deliveries.stats(),
                    "queued_bytes_per_delivery": {"ready": ready, "retrying": later},
                }))
            })
        });
    let redrive_one = admin
        .clone()
        .and(warp::path!("delivery" / String / "redrive"))
        .and(warp::post())
        .then(
            |auth: Option<String>, app: Arc<App>, id: String| async move {
                let result = async {
                    authorize(&app, auth.as_deref())?;
                    let id = delivery_id(&id)?;
                    let rec = app
                        .service
                        .deliveries
                        .redrive(id, None)
                        .await
                        .map_err(delivery_error)?;
                    json_ok(&rec)
                };
                result.await.unwrap_or_else(|e| error_reply(&e))
            },
        );
    let redrive_dead = admin
        .clone()
        .and(warp::path!(
            "delivery" / "partners" / String / "redrive-dead"
        ))
        .and(warp::post())
        .then(
            |auth: Option<String>, app: Arc<App>, partner: String| async move {
                let result = async {
                    authorize(&app, auth.as_deref())?;
                    let n = app
                        .service
                        .deliveries
                        .redrive_dead(&partner)
                        .await
                        .map_err(delivery_error)?;
                    json_ok(&json!({"partner": partner, "redriven": n}))
                };
                result.await.unwrap_or_else(|e| error_reply(&e))
            },
        );

    let reconciliation = admin
        .clone()
        .and(warp::path!("reconciliation"))
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |auth: Option<String>, app: Arc<App>, q: HashMap<String, String>| async move {
                let result = async {
                    authorize(&app, auth.as_deref())?;
                    let run = match q.get("run").map(String::as_str) {
                        None | Some("false") => false,
                        Some("true") => true,
                        Some(other) => {
                            return Err(ApiError::field(
                                "run",
                                format!("must be true or false, got {other:?}"),
                            ))
                        }
                    };
                    let latest = app.reconciliation.lock().clone();
                    let report = match latest {
                        Some(r) if !run => r,
                        _ => reconcile_now(&app).await?,
                    };
                    json_ok(&*report)
                };
                result.await.unwrap_or_else(|e| error_reply(&e))
            },
        );
    let reconcile_redrive = admin
        .and(warp::path!("reconciliation" / "redrive"))
        .and(warp::post())
        .then(|auth: Option<String>, app: Arc<App>| async move {
            let result = async {
                authorize(&app, auth.as_deref())?;
                redrive_mismatches(&app).await
            };
            result.await.unwrap_or_else(|e| error_reply(&e))
        });

    // Boxed: one more level of nested filter types overflows the compiler's recursion limit.
    let delivery = redeliver
        .or(delivery_stats)
        .unify()
        .or(redrive_one)
        .unify()
        .or(redrive_dead)
        .unify()
        .or(reconciliation)
        .unify()
        .or(reconcile_redrive)
        .unify()
        .boxed();

    draw.or(healthz)
        .unify()
        .or(delivery)
        .unify()
        .or(nearby)
        .unify()
        .or(claim)
        .unify()
        .or(region)
        .unify()
        .or(rounds)
        .unify()
        .or(round)
        .unify()
        .or(wins)
        .unify()
        .or(metrics)
        .unify()
        .or(get_config)
        .unify()
        .or(post_config)
        .unify()
        .recover(rejection)
        .unify()
}

/// A `POST /v1/wins/{win_id}/redeliver` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeliverRequest {
    user: String,
}

/// The user asks for a win's delivery again: a deferred, retrying or failed one is sent now.
async fn redeliver(app: &App, win: &str, body: Result<Bytes, ApiError>) -> Result<Reply, ApiError> {
    let req: RedeliverRequest = parse_json(&body?)?;
    check_id(&req.user).map_err(|e| ApiError::field("user", e.to_string()))?;
    let id = delivery_id(win)?;
    if !app.asks.allow(&req.user, app.service.clock.now_ms()) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_redeliveries",
            format!(
                "at most {} redelivery requests a minute per user",
                crate::delivery::MAX_ASKS
            ),
        ));
    }
    let rec = app
        .service
        .deliveries
        .redrive(id, Some(&req.user))
        .await
        .map_err(delivery_error)?;
    json_ok(&json!({"win_id": rec.win_id, "status": rec.state.user_view()}))
}

/// Reconciles this node's ledger now, off the async workers.
async fn reconcile_now(app: &Arc<App>) -> Result<Arc<crate::reconcile::Report>, ApiError> {
    let a = app.clone();
    tokio::task::spawn_blocking(move || a.reconcile())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::unavailable)
}

/// Reconciles now, then closes what re-driving can close: a win without a delivery record gets
/// a pending one (unless one exists by now), a dead delivery is sent again. Idempotent: a
/// second run finds nothing left to create, and re-driving a pending delivery changes nothing.
async fn redrive_mismatches(app: &Arc<App>) -> Result<Reply, ApiError> {
    let report = reconcile_now(app).await?;
    let svc = &app.service;
    let mut created = 0;
    for win in &report.missing_wins {
        let id = &win.view.win_id;
        let Some(did) = redrain_delivery::record::DeliveryId::parse(id) else {
            continue;
        };
        if svc
            .storage
            .get(Cf::Deliveries, id.as_bytes())
            .map_err(ApiError::unavailable)?
            .is_some()
        {
            continue;
        }
        let mut rec = win.pending_delivery();
        // Retries run to the partner's deadline from now, not from the (maybe old) win.
        let deadline_s = svc
            .snapshot()
            .config
            .partners
            .iter()
            .find(|p| p.id.as_str() == win.partner)
            .map_or(quota::config::DEFAULT_RETRY_DEADLINE_S, |p| {
                p.retry_deadline_s
            });
        rec.deadline_ms = svc.clock.now_ms() + u64::from(deadline_s) * 1000;
        svc.storage
            .commit(crate::delivery::record_ops(&rec, None))
            .await
            .map_err(ApiError::unavailable)?;
        svc.deliveries.enqueue(&win.partner, did);
        created += 1;
    }
    let mut redriven = 0;
    for id in &report.mismatches.dead {
        if let Some(did) = redrain_delivery::record::DeliveryId::parse(id) {
            svc.deliveries
                .redrive(did, None)
                .await
                .map_err(delivery_error)?;
            redriven += 1;
        }
    }
    json_ok(&json!({"created": created, "redriven": redriven}))
}

/// A delivery (win) id from a path; 400 naming `win_id` when it is not one.
fn delivery_id(text: &str) -> Result<redrain_delivery::record::DeliveryId, ApiError> {
    redrain_delivery::record::DeliveryId::parse(text)
        .ok_or_else(|| ApiError::field("win_id", "must be 24 hex digits"))
}

fn delivery_error(e: redrain_delivery::lanes::DeliveryError) -> ApiError {
    use redrain_delivery::lanes::DeliveryError;
    match e {
        DeliveryError::NotFound(id) => ApiError::not_found("win", &id),
        DeliveryError::NoPartner(p) => ApiError::not_found("partner", &p),
        DeliveryError::Store(e) => ApiError::unavailable(e),
    }
}

async fn draw(app: &App, round: &str, body: Result<Bytes, ApiError>) -> Reply {
    let result = async {
        let req: DrawRequest = parse_json(&body?)?;
        app.service.draw(round, req).await
    };
    match result.await {
        Ok(body) => json_reply(StatusCode::OK, body),
        Err(e) => error_reply(&e),
    }
}

fn timed(app: &App, f: impl FnOnce() -> Result<Reply, ApiError>) -> Reply {
    let started = Instant::now();
    let reply = f().unwrap_or_else(|e| error_reply(&e));
    app.service.metrics.other_latency.observe(started.elapsed());
    reply
}

/// A round as listed.
#[derive(Debug, Serialize)]
struct RoundView<'a> {
    id: &'a str,
    campaign: &'a str,
    name: &'a str,
    status: &'static str,
    occurrence: u64,
    starts_at: String,
    ends_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    every_s: Option<u64>,
    participation_s: u64,
    stagger_groups: u32,
    stagger_s: u64,
    max_wins_per_user: u32,
    paused: bool,
}

fn round_view<'a>(config: &'a Config, r: &'a Round, now_ms: u64) -> RoundView<'a> {
    let campaign = &config.campaigns[r.campaign];
    let (status, occ) = match r.status(campaign, now_ms) {
        RoundStatus::Upcoming(o) => ("upcoming", o),
        RoundStatus::Live(o) => ("live", o),
        RoundStatus::Ended(o) => (
            "ended",
            o.unwrap_or(quota::schedule::Occurrence {
                index: 0,
                starts_at_ms: r.starts_at_ms,
                ends_at_ms: r.starts_at_ms + r.duration_ms,
            }),
        ),
    };
    RoundView {
        id: r.id.as_str(),
        campaign: campaign.id.as_str(),
        name: &r.name,
        status,
        occurrence: occ.index,
        starts_at: format_ms(occ.starts_at_ms),
        ends_at: format_ms(occ.ends_at_ms),
        every_s: r.every_ms.map(|ms| ms / 1000),
        participation_s: r.participation_ms / 1000,
        stagger_groups: r.stagger_groups,
        stagger_s: r.stagger_ms / 1000,
        max_wins_per_user: r.max_wins_per_user,
        paused: r.paused || campaign.paused,
    }
}

fn list_rounds(app: &App) -> Result<Reply, ApiError> {
    let snap = app.service.snapshot();
    let now = app.service.clock.now_ms();
    let rounds: Vec<_> = snap
        .config
        .rounds
        .iter()
        .map(|r| round_view(&snap.config, r, now))
        .collect();
    json_ok(&json!({"seq": snap.seq.0, "rounds": rounds}))
}

fn show_round(app: &App, id: &str) -> Result<Reply, ApiError> {
    let snap = app.service.snapshot();
    let round = snap
        .config
        .round(id)
        .ok_or_else(|| ApiError::not_found("round", id))?;
    let view = round_view(&snap.config, round, app.service.clock.now_ms());
    let issued = app.service.issued(round, view.occurrence);
    let share = app.service.store.share();
    let prizes: Vec<_> = round
        .prizes
        .iter()
        .zip(issued)
        .map(|(p, issued)| {
            let mut v = json!({
                "id": p.id, "quota": p.quota, "issued": issued, "rate_per_s": p.rate_per_s,
                "node_quota": share.quota(p.quota), "node_rate_per_s": share.rate(p.rate_per_s),
                "weight": p.weight, "paused": p.paused, "partner": snap.config.partners[p.partner].id,
            });
            match &p.kind {
                PrizeKind::Cash { min, max } => {
                    v["kind"] = "cash".into();
                    if min == max {
                        v["amount_cents"] = min.0.into();
                    } else {
                        v["amount_min_cents"] = min.0.into();
                        v["amount_max_cents"] = max.0.into();
                    }
                }
                PrizeKind::Coupon { sku } => {
                    v["kind"] = "coupon".into();
                    v["sku"] = sku.as_str().into();
                }
            }
            v
        })
        .collect();
    let mut body = serde_json::to_value(&view).map_err(ApiError::internal)?;
    body["seq"] = snap.seq.0.into();
    body["prizes"] = prizes.into();
    json_ok(&body)
}

fn user_wins(app: &App, user: &str) -> Result<Reply, ApiError> {
    check_id(user).map_err(|e| ApiError::field("user", e.to_string()))?;
    let prefix = [user.as_bytes(), b"\0"].concat();
    let rows = app
        .service
        .storage
        .scan_prefix(Cf::Wins, &prefix, MAX_LISTED_WINS + 1)
        .map_err(ApiError::unavailable)?;
    let truncated = rows.len() > MAX_LISTED_WINS;
    let mut wins = Vec::with_capacity(rows.len());
    for (_, v) in rows.into_iter().take(MAX_LISTED_WINS) {
        let rec: WinRecord = serde_json::from_slice(&v).map_err(ApiError::internal)?;
        let delivery = app
            .service
            .storage
            .get(Cf::Deliveries, rec.view.win_id.as_bytes())
            .map_err(ApiError::unavailable)?;
        let status = delivery
            .and_then(|d| serde_json::from_slice::<redrain_delivery::record::Record>(&d).ok())
            .map_or("pending", |d| d.state.user_view());
        let mut w = serde_json::to_value(&rec.view).map_err(ApiError::internal)?;
        w["round"] = rec.round.into();
        w["occurrence"] = rec.occurrence.into();
        w["status"] = status.into();
        wins.push(w);
    }
    json_ok(&json!({"user": user, "wins": wins, "truncated": truncated}))
}

/// A query parameter parsed as a finite-or-not number; 400 naming it when absent or not a
/// number.
fn number_param(q: &HashMap<String, String>, name: &str) -> Result<f64, ApiError> {
    let text = q
        .get(name)
        .ok_or_else(|| ApiError::field(name, "is required"))?;
    text.trim()
        .parse::<f64>()
        .map_err(|_| ApiError::field(name, format!("must be a number, got {text:?}")))
}

fn nearby(app: &App, q: &HashMap<String, String>) -> Result<Reply, ApiError> {
    if let Some(unknown) = q
        .keys()
        .find(|k| !matches!(k.as_str(), "lat" | "lng" | "limit"))
    {
        return Err(ApiError::field(
            unknown.as_str(),
            "unknown parameter (expected lat, lng, limit)",
        ));
    }
    let at = Coord::new(number_param(q, "lat")?, number_param(q, "lng")?)
        .map_err(|e| ApiError::field(e.field, e.problem))?;
    let limit = match q.get("limit") {
        None => DEFAULT_NEARBY,
        Some(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_NEARBY).contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_NEARBY}, got {text:?}"),
                )
            })?,
    };
    let svc = &app.service;
    let (set, snap) = svc.drops.consistent(|| svc.store.load()).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "republishing",
            "the drop tasks are being republished; retry",
        )
    })?;
    json_ok(&set.nearby(&snap, at, limit, svc.clock.now_ms()))
}

fn region(app: &App, id: &str) -> Result<Reply, ApiError> {
    let view = app.service.drops.regions();
    let count = view
        .regions
        .get(id)
        .ok_or_else(|| ApiError::not_found("region", id))?;
    let mut body = serde_json::to_value(count).map_err(ApiError::internal)?;
    body["region"] = id.into();
    body["as_of"] = format_ms(view.as_of_ms).into();
    body["seq"] = view.seq.into();
    json_ok(&body)
}

fn authorize(app: &App, header_value: Option<&str>) -> Result<(), ApiError> {
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let presented = header_value
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    if constant_time_eq(presented.as_bytes(), app.admin_token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API needs `Authorization: Bearer <token>`",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && !b.is_empty()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn publish(app: &App, content_type: Option<&str>, body: &[u8]) -> Result<Reply, ApiError> {
    let parsed = if content_type.is_some_and(|c| c.starts_with("application/json")) {
        Config::from_json(body)
    } else {
        let text = std::str::from_utf8(body).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_toml",
                "the config must be UTF-8 TOML or application/json",
            )
        })?;
        Config::from_toml(text)
    };
    let config = parsed.map_err(|e| ApiError {
        errors: e.errors.clone(),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            e.to_string(),
        )
    })?;
    let snap = crate::server::publish(&app.service, config, None).map_err(|e| match e {
        PublishFailure::Store(PublishError::QuotaBelowIssued { ref field, .. }) => ApiError {
            field: Some(field.clone()),
            ..ApiError::new(StatusCode::CONFLICT, "quota_below_issued", e.to_string())
        },
        PublishFailure::Store(PublishError::Persist(_)) => ApiError::unavailable(e),
        PublishFailure::Partner { ref field, .. } => ApiError {
            field: Some(field.clone()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_partner",
                e.to_string(),
            )
        },
        PublishFailure::Drops(d) => ApiError {
            field: Some(d.field.clone()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_drops",
                d.to_string(),
            )
        },
    })?;
    tracing::info!(seq = snap.seq.0, "config published");
    json_ok(&json!({"seq": snap.seq.0}))
}

/// Reads a body of at most `limit` bytes, whether or not it declares its length.
/// How many times its limit an oversized body is read and dropped before the 413.
const DRAIN_FACTOR: u64 = 4;

fn body_limited(
    limit: usize,
) -> impl Filter<Extract = (Result<Bytes, ApiError>,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |declared: Option<u64>, stream| read_limited(declared, stream, limit))
}

async fn read_limited<S, B>(
    declared: Option<u64>,
    stream: S,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body must be at most {limit} bytes"),
        )
    };
    // An oversized body is read and dropped, up to a bound, before the 413 goes out: a
    // client still writing its body would otherwise see the connection reset instead of the
    // answer. Past the bound the connection is simply closed after the 413.
    let drain_budget = limit as u64 * DRAIN_FACTOR;
    let mut stream = std::pin::pin!(stream);
    if declared.is_some_and(|n| n > limit as u64) {
        if declared.is_some_and(|n| n <= drain_budget) {
            while let Some(Ok(_)) = stream.next().await {}
        }
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "body_unreadable", e.to_string())
        })?;
        if body.len() + chunk.remaining() > limit {
            let mut seen = (body.len() + chunk.remaining()) as u64;
            while seen <= drain_budget {
                match stream.next().await {
                    Some(Ok(c)) => seen += c.remaining() as u64,
                    _ => break,
                }
            }
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            let n = piece.len();
            body.extend_from_slice(piece);
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

async fn rejection(r: Rejection) -> Result<Reply, Infallible> {
    let e = if r.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    } else if let Some(h) = r.find::<warp::reject::InvalidHeader>() {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            format!("header {} is invalid", h.name()),
        )
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("{r:?}"))
    };
    Ok(error_reply(&e))
}

fn json_ok<T: Serialize>(v: &T) -> Result<Reply, ApiError> {
    Ok(json_reply(
        StatusCode::OK,
        serde_json::to_vec(v).map_err(ApiError::internal)?,
    ))
}

fn json_reply(status: StatusCode, body: Vec<u8>) -> Reply {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body))
        .expect("static headers are valid")
}

/// The JSON response for an error.
pub fn error_reply(e: &ApiError) -> Reply {
    let mut reply = json_reply(e.status(), serde_json::to_vec(e).unwrap_or_default());
    if e.status == 401 {
        reply.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    reply
}
