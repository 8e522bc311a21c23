//! The HTTP API (warp): routes, bounded bodies, JSON errors, admin authentication.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use quota::config::{format_ms, Campaign, Config, PrizeKind, Round};
use quota::ids::check_id;
use quota::limiter::SLOTS_PER_S;
use quota::schedule::{Occurrence, RoundStatus};
use serde::Serialize;
use serde_json::json;
use warp::http::{header, Response, StatusCode};
use warp::{Buf, Filter, Rejection};

use crate::delivery::RocksStore;
use crate::drops::{DEFAULT_NEARBY, MAX_NEARBY};
use crate::error::{parse_json, parse_query, ApiError};
use crate::server::App;
use crate::service::{ClaimRequest, DrawRequest, WinRecord};
use crate::storage::Cf;
use redrain_delivery::record::Store;
use redrain_geo::Coord;

/// Largest draw request body.
pub const MAX_DRAW_BODY: usize = 4 << 10;
/// Largest redelivery request body.
pub const MAX_REDELIVER_BODY: usize = 1 << 10;
/// Largest claim request body.
pub const MAX_CLAIM_BODY: usize = 4 << 10;
/// Most wins listed for one user.
pub const MAX_LISTED_WINS: usize = 1000;

pub(crate) type Reply = Response<warp::hyper::body::Bytes>;

/// A path segment, percent-decoded (`%3A` is `:`, as `encodeURIComponent` writes it). A segment
/// that does not decode to UTF-8 matches no route.
#[derive(Debug, Clone)]
pub struct Segment(pub String);

impl std::str::FromStr for Segment {
    type Err = std::str::Utf8Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let decoded = percent_encoding::percent_decode_str(s).decode_utf8()?;
        Ok(Segment(decoded.into_owned()))
    }
}

/// Every route of the engine.
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Response<warp::hyper::body::Bytes>,), Error = Infallible> + Clone {
    let admin = crate::admin_api::routes(app.clone());
    let with_app = warp::any().map(move || app.clone());

    let draw = warp::path!("v1" / "rounds" / Segment / "draw")
        .and(warp::post())
        .and(with_app.clone())
        .and(body_limited(MAX_DRAW_BODY))
        .then(
            |Segment(round): Segment, app: Arc<App>, body: Result<Bytes, ApiError>| async move {
                let started = Instant::now();
                let reply = draw(&app, &round, body).await;
                app.service.metrics.draw_latency.observe(started.elapsed());
                reply
            },
        );
    let claim = warp::path!("v1" / "drops" / Segment / "claim")
        .and(warp::post())
        .and(with_app.clone())
        .and(body_limited(MAX_CLAIM_BODY))
        .then(
            |Segment(drop): Segment, app: Arc<App>, body: Result<Bytes, ApiError>| async move {
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
        .and(raw_query())
        .and(with_app.clone())
        .map(|q: String, app: Arc<App>| timed(&app, || nearby(&app, &q)));
    let region = warp::path!("v1" / "regions" / Segment)
        .and(warp::get())
        .and(with_app.clone())
        .map(|Segment(id): Segment, app: Arc<App>| timed(&app, || region(&app, &id)));
    // A node whose ledger refused a write refuses every draw it must write: a load balancer's
    // health check takes it out.
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: Arc<App>| match app.service.storage.failed() {
            false => json_reply(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
            true => json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"status":"storage_failed"}"#.to_vec(),
            ),
        });
    let rounds = warp::path!("v1" / "rounds")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: Arc<App>| timed(&app, || list_rounds(&app)));
    let round = warp::path!("v1" / "rounds" / Segment)
        .and(warp::get())
        .and(with_app.clone())
        .map(|Segment(id): Segment, app: Arc<App>| timed(&app, || show_round(&app, &id)));
    let wins = warp::path!("v1" / "users" / Segment / "wins")
        .and(warp::get())
        .and(with_app.clone())
        .map(|Segment(user): Segment, app: Arc<App>| timed(&app, || user_wins(&app, &user)));
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: Arc<App>| {
            let svc = &app.service;
            let mut text = svc
                .metrics
                .render(svc.snapshot().seq.0, svc.locks.in_flight());
            crate::metrics::render_storage(&mut text, &svc.storage);
            crate::metrics::render_lanes(&mut text, &svc.deliveries.stats());
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Bytes::from(text))
                .expect("static headers are valid")
        });
    let redeliver = warp::path!("v1" / "wins" / Segment / "redeliver")
        .and(warp::post())
        .and(with_app.clone())
        .and(body_limited(MAX_REDELIVER_BODY))
        .then(
            |Segment(win): Segment, app: Arc<App>, body: Result<Bytes, ApiError>| async move {
                let started = Instant::now();
                let reply = redeliver(&app, &win, body)
                    .await
                    .unwrap_or_else(|e| error_reply(&e));
                app.service.metrics.other_latency.observe(started.elapsed());
                reply
            },
        );

    draw.or(healthz)
        .unify()
        .or(redeliver)
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
        .or(admin)
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
    // Only an ask for the user's own win counts against the limit: a refused request (an
    // unknown win, someone else's) changes nothing, and cannot use up the user's asks.
    let own = RocksStore(app.service.storage.clone())
        .load(id)
        .map_err(ApiError::unavailable)?
        .is_some_and(|rec| rec.user == req.user);
    if !own {
        return Err(ApiError::not_found("win", &id.to_string()));
    }
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

/// A delivery (win) id from a path; 400 naming `win_id` when it is not one.
pub(crate) fn delivery_id(text: &str) -> Result<redrain_delivery::record::DeliveryId, ApiError> {
    redrain_delivery::record::DeliveryId::parse(text)
        .ok_or_else(|| ApiError::field("win_id", "must be 24 hex digits"))
}

pub(crate) fn delivery_error(e: redrain_delivery::lanes::DeliveryError) -> ApiError {
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

/// A round's status word and its current (or next, or last) occurrence.
pub(crate) fn round_status(
    r: &Round,
    campaign: &Campaign,
    now_ms: u64,
) -> (&'static str, Occurrence) {
    match r.status(campaign, now_ms) {
        RoundStatus::Upcoming(o) => ("upcoming", o),
        RoundStatus::Live(o) => ("live", o),
        RoundStatus::Ended(o) => (
            "ended",
            o.unwrap_or(Occurrence {
                index: 0,
                starts_at_ms: r.starts_at_ms,
                ends_at_ms: r.starts_at_ms + r.duration_ms,
            }),
        ),
    }
}

fn round_view<'a>(config: &'a Config, r: &'a Round, now_ms: u64) -> RoundView<'a> {
    let campaign = &config.campaigns[r.campaign];
    let (status, occ) = round_status(r, campaign, now_ms);
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
            let rooms: Vec<u32> = (0..SLOTS_PER_S)
                .map(|j| share.slot_room(p.rate_per_s, j))
                .collect();
            let mut v = json!({
                "id": p.id, "quota": p.quota, "issued": issued, "rate_per_s": p.rate_per_s,
                "node_quota": share.quota(p.quota), "node_rate_per_s": share.rate(p.rate_per_s),
                "node_slot_rooms": rooms,
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

/// The request's query string as sent (empty when there is none). Routes parse it with
/// [`parse_query`] in their handler, so a bad one gets our JSON error naming the parameter
/// (and, on admin routes, only once the caller is checked) instead of a rejection.
pub(crate) fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// A count parameter from 1 to `max`, `default` when absent; 400 naming it otherwise.
pub(crate) fn count_param(
    name: &str,
    value: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::field(
            name,
            format!("must be from 1 to {max}, got {n}"),
        )),
    }
}

/// A `GET /v1/drops/nearby` query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NearbyQuery {
    lat: f64,
    lng: f64,
    limit: Option<usize>,
}

fn nearby(app: &App, query: &str) -> Result<Reply, ApiError> {
    let q: NearbyQuery = parse_query(query)?;
    let at = Coord::new(q.lat, q.lng).map_err(|e| ApiError::field(e.field, e.problem))?;
    let limit = count_param("limit", q.limit, DEFAULT_NEARBY, MAX_NEARBY)?;
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

/// How many times its limit an oversized body is read and dropped before the 413.
const DRAIN_FACTOR: u64 = 4;

/// A request body not read yet: routes that must check the caller first (the admin API) read
/// it only once the caller may make the change, so nobody unauthenticated gets a body buffered.
pub(crate) struct PendingBody {
    declared: Option<u64>,
    stream: futures_util::stream::BoxStream<'static, Result<Bytes, warp::Error>>,
}

/// Extracts the request's [`PendingBody`].
pub(crate) fn pending_body() -> impl Filter<Extract = (PendingBody,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .map(|declared, stream| PendingBody {
            declared,
            stream: as_bytes(stream),
        })
}

fn as_bytes<S, B>(stream: S) -> futures_util::stream::BoxStream<'static, Result<Bytes, warp::Error>>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    stream
        .map(|chunk| chunk.map(|mut b| b.copy_to_bytes(b.remaining())))
        .boxed()
}

/// Reads a body of at most `limit` bytes, whether or not it declares its length.
pub(crate) fn body_limited(
    limit: usize,
) -> impl Filter<Extract = (Result<Bytes, ApiError>,), Error = Rejection> + Clone {
    pending_body().then(move |body: PendingBody| body.read(limit))
}

/// Every body gets this long to arrive, plus [`BODY_SECONDS_PER_MIB`] a MiB of its limit: the
/// header timeout ends once the headers are in, and a client that then sends its body slowly
/// or never would hold its connection place for good.
pub const BODY_READ_BASE: Duration = Duration::from_secs(20);
/// Seconds of [`BODY_READ_BASE`] added per MiB a body may have (a 64 MiB upload gets 660 s).
pub const BODY_SECONDS_PER_MIB: u64 = 10;

/// How long a body of at most `limit` bytes may take to arrive.
fn body_deadline(limit: usize) -> Duration {
    BODY_READ_BASE + Duration::from_secs(BODY_SECONDS_PER_MIB * (limit as u64).div_ceil(1 << 20))
}

impl PendingBody {
    /// The whole body, or 413 past `limit` bytes, or 408 if it has not arrived within
    /// [`BODY_READ_BASE`] and [`BODY_SECONDS_PER_MIB`].
    pub(crate) async fn read(self, limit: usize) -> Result<Bytes, ApiError> {
        self.read_within(limit, body_deadline(limit)).await
    }

    async fn read_within(self, limit: usize, within: Duration) -> Result<Bytes, ApiError> {
        tokio::time::timeout(within, self.read_all(limit))
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the body did not arrive within {} s", within.as_secs()),
                ))
            })
    }

    async fn read_all(mut self, limit: usize) -> Result<Bytes, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body must be at most {limit} bytes"),
            )
        };
        // An oversized body is read and dropped, up to a bound, before the 413 goes out: a
        // client still writing its body would otherwise see the connection reset instead of
        // the answer. Past the bound the connection is simply closed after the 413.
        let drain_budget = limit as u64 * DRAIN_FACTOR;
        if let Some(n) = self.declared.filter(|&n| n > limit as u64) {
            if n <= drain_budget {
                while let Some(Ok(_)) = self.stream.next().await {}
            }
            return Err(too_large());
        }
        let mut body = BytesMut::with_capacity(self.declared.unwrap_or(0) as usize);
        while let Some(chunk) = self.stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "body_unreadable", e.to_string())
            })?;
            if body.len() + chunk.len() > limit {
                let mut seen = (body.len() + chunk.len()) as u64;
                while seen <= drain_budget {
                    match self.stream.next().await {
                        Some(Ok(c)) => seen += c.len() as u64,
                        _ => break,
                    }
                }
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

async fn rejection(r: Rejection) -> Result<Reply, Infallible> {
    // A request every route refused: a route that refused it for a bad header tells more than
    // one whose path or method did not match (warp ranks them the same way).
    let e = if let Some(h) = r.find::<warp::reject::InvalidHeader>() {
        ApiError::header(h.name(), "is invalid")
    } else if r.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("{r:?}"))
    };
    Ok(error_reply(&e))
}

pub(crate) fn json_ok<T: Serialize>(v: &T) -> Result<Reply, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that never arrives (headers sent, then nothing) gets a 408 once its time is up,
    /// instead of holding its connection place for good; that time grows with the limit.
    #[tokio::test]
    async fn a_body_that_never_arrives_times_out() {
        let never = PendingBody {
            declared: Some(1000),
            stream: futures_util::stream::pending().boxed(),
        };
        let e = never
            .read_within(4 << 10, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!((e.status, e.code), (408, "body_timeout"));
        assert_eq!(body_deadline(4 << 10), Duration::from_secs(30));
        assert_eq!(body_deadline(64 << 20), Duration::from_secs(660));
    }
}
