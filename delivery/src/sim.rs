//! `partner-sim`: a real HTTP partner for tests and demos.
//!
//! It verifies signatures, applies each delivery once by its idempotency key, and can be told
//! to misbehave the ways real partners do: a declared capacity it enforces per 100 ms slot,
//! latency, random 500s and 429s, users without an account, garbage or huge answers, slow
//! answers. It counts what it saw ([`Summary`]) so a test can check redrain's side of the
//! contract: nothing applied twice, the capacity never exceeded, the signature always right.
//!
//! # Endpoints
//! - `POST /deliver`: a delivery (any other `POST` path outside `/accounts/` is treated the
//!   same, so a partner URL with any path works).
//! - `POST /accounts/{user}`: opens the user's account (204); see
//!   [`SimOptions::require_accounts`].
//! - `GET /summary`: the [`Summary`] as JSON.
//! - `GET /deliveries`: the applied delivery ids as a JSON array, in the order applied.
//!
//! # A delivery, step by step
//! 1. Counted: `received`, the request count of the current 100 ms wall-clock slot
//!    (`unix_ms / 100`, giving `max_per_slot`) and the requests in flight (`max_in_flight`;
//!    a request stops counting when its answer is ready, or just before the partner closes
//!    its connection, e.g. because the client closed it first).
//! 2. The body is read, at most [`MAX_BODY_BYTES`] (413 beyond).
//! 3. The signature is checked ([`crate::sign`]): 401 `{"code":"bad_signature"}` or
//!    `{"code":"stale_signature"}`.
//! 4. The `idempotency-key` header must equal the delivery id (400 otherwise).
//! 5. The body must be a JSON object with `delivery_id` (equal to the header's), `user`,
//!    `prize` and exactly one of `amount_cents` (a non-negative integer) or `sku` (400
//!    otherwise).
//! 6. Capacity: a request past its slot's share of [`SimOptions::capacity_per_s`] (counted
//!    at step 1) gets 429 with `Retry-After: 1`.
//! 7. Random trouble: 500 with [`SimOptions::fail_rate`], else 429 with `Retry-After: 1` with
//!    [`SimOptions::throttle_rate`].
//! 8. No account (when required): 422 `{"code":"no_account"}`.
//! 9. Applied by delivery id: 200 `{"status":"applied"}`, or `{"status":"duplicate"}` if it
//!    was applied before (not applied again).
//! 10. A 200 may then be spoiled: garbage body, huge body, or slow.
//! 11. Every answer to a delivery waits a latency drawn from
//!     [`SimOptions::latency_min_ms`]..=[`SimOptions::latency_max_ms`] (a slow answer waits
//!     [`SimOptions::slow_ms`] instead).

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use quota::limiter::{slot_of, slot_share, SLOTS_PER_S};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::sign::{self, IDEMPOTENCY_HEADER, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// The largest delivery body read; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The size of a "huge" answer ([`SimOptions::huge_rate`]).
pub const HUGE_BODY_BYTES: usize = 16 << 20;
/// The most distinct deliveries (and, separately, accounts) remembered; past it deliveries get
/// 507 `{"code":"sim_full"}` (counted as `failed`) and accounts are not opened.
pub const MAX_TRACKED: usize = 2_000_000;
/// The most connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long open requests may finish after shutdown.
pub const DRAIN: Duration = Duration::from_secs(5);
/// The secret `partner-sim` (and `redrain serve`) use when none is given: for demos only.
pub const DEMO_SECRET: &str = "redrain-demo-secret";
/// The `Retry-After` of every 429, in seconds.
const RETRY_AFTER_S: &str = "1";

/// How the simulated partner behaves. Check with [`SimOptions::validate`].
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Signatures are verified against these (at least one; several during a rotation).
    pub secrets: Vec<String>,
    /// How far a signature's timestamp may be from the partner's clock.
    pub tolerance_s: u64,
    /// Declared capacity: requests received past `slot_share(capacity, slot % 10)` in a 100 ms
    /// slot get 429 (the split redrain's lanes use, so a lane that keeps to it never sees one).
    pub capacity_per_s: Option<u32>,
    /// Shortest simulated latency of an answer.
    pub latency_min_ms: u64,
    /// Longest simulated latency of an answer.
    pub latency_max_ms: u64,
    /// Share of valid deliveries answered 500 (not applied).
    pub fail_rate: f64,
    /// Share of the rest answered 429 with `Retry-After: 1` (not applied).
    pub throttle_rate: f64,
    /// Users must have an opened account (`POST /accounts/{user}`, [`Sim::open_account`]);
    /// deliveries for others get 422 `{"code":"no_account"}`.
    pub require_accounts: bool,
    /// Share of 200s whose body is not JSON (the delivery is still applied).
    pub garbage_rate: f64,
    /// Share of the rest whose body is [`HUGE_BODY_BYTES`], streamed without a length (still
    /// applied).
    pub huge_rate: f64,
    /// Share of the rest answered only after [`SimOptions::slow_ms`] (still applied, before
    /// the wait: a client that times out has delivered anyway).
    pub slow_rate: f64,
    /// How long a slow answer takes.
    pub slow_ms: u64,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SimOptions {
    /// A well-behaved partner without secrets (set at least one before use).
    fn default() -> Self {
        SimOptions {
            secrets: Vec::new(),
            tolerance_s: sign::DEFAULT_TOLERANCE_S,
            capacity_per_s: None,
            latency_min_ms: 0,
            latency_max_ms: 0,
            fail_rate: 0.0,
            throttle_rate: 0.0,
            require_accounts: false,
            garbage_rate: 0.0,
            huge_rate: 0.0,
            slow_rate: 0.0,
            slow_ms: 0,
            seed: 0,
        }
    }
}

/// A [`SimOptions`] value that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimOptionsError {
    /// No secret to verify signatures with.
    #[error("secrets: at least one secret is required")]
    NoSecret,
    /// A secret is empty.
    #[error("secrets[{0}] is empty")]
    EmptySecret(usize),
    /// A rate outside [0, 1] (or not a number).
    #[error("{field} must be within [0, 1], got {value}")]
    Rate {
        /// The field's name.
        field: &'static str,
        /// The bad value.
        value: f64,
    },
    /// The latency range is upside down.
    #[error("latency_min_ms ({min}) is above latency_max_ms ({max})")]
    Latency {
        /// The minimum given.
        min: u64,
        /// The maximum given.
        max: u64,
    },
    /// A capacity of zero would refuse everything; use `throttle_rate = 1` for that.
    #[error("capacity_per_s must be above 0 (use throttle_rate 1 to refuse everything)")]
    ZeroCapacity,
}

impl SimOptions {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SimOptionsError> {
        if self.secrets.is_empty() {
            return Err(SimOptionsError::NoSecret);
        }
        if let Some(i) = self.secrets.iter().position(String::is_empty) {
            return Err(SimOptionsError::EmptySecret(i));
        }
        for (field, value) in [
            ("fail_rate", self.fail_rate),
            ("throttle_rate", self.throttle_rate),
            ("garbage_rate", self.garbage_rate),
            ("huge_rate", self.huge_rate),
            ("slow_rate", self.slow_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(SimOptionsError::Rate { field, value });
            }
        }
        if self.latency_min_ms > self.latency_max_ms {
            return Err(SimOptionsError::Latency {
                min: self.latency_min_ms,
                max: self.latency_max_ms,
            });
        }
        if self.capacity_per_s == Some(0) {
            return Err(SimOptionsError::ZeroCapacity);
        }
        Ok(())
    }
}

/// What the partner saw. Counts are of deliveries (`POST` outside `/accounts/`) only.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Deliveries received, whatever became of them.
    pub received: u64,
    /// Distinct delivery ids applied.
    pub applied: u64,
    /// Deliveries for an id already applied (answered 200 again, not applied again).
    pub duplicates: u64,
    /// Refused: signature missing, malformed or not matching (401).
    pub bad_signature: u64,
    /// Refused: authentic signature outside the timestamp tolerance (401).
    pub stale: u64,
    /// Refused: the user has no account (422).
    pub no_account: u64,
    /// Answered 429 (capacity or random throttling).
    pub throttled: u64,
    /// Answered 5xx (random failures, or the simulator full).
    pub failed: u64,
    /// The most deliveries received in one 100 ms wall-clock slot (`unix_ms / 100`), counted
    /// on arrival before any check.
    pub max_per_slot: u64,
    /// The most deliveries being handled at once.
    pub max_in_flight: u64,
    /// The declared capacity, echoed.
    pub capacity_per_s: Option<u32>,
}

/// The simulated partner's state, shared by all connections.
pub struct Sim {
    opts: SimOptions,
    /// One generator for every draw; a request takes all its draws under one lock, so the
    /// sequence depends only on the order requests arrive in.
    rng: Mutex<SmallRng>,
    /// parking_lot's mutex, not tokio's: it is never held across an await.
    state: Mutex<State>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

struct State {
    counts: Summary,
    /// The slot being counted and the deliveries received in it so far.
    slot: u64,
    in_slot: u64,
    applied: HashSet<String>,
    applied_order: Vec<String>,
    accounts: HashSet<String>,
}

/// Every random choice of one delivery, drawn on arrival.
struct Draws {
    fail: bool,
    throttle: bool,
    spoil: Option<Spoil>,
    latency_ms: u64,
}

/// How a 200 is spoiled.
#[derive(Clone, Copy)]
enum Spoil {
    Garbage,
    Huge,
    Slow,
}

/// A delivery counted in [`Sim::in_flight`]. It stops counting once: when its handler is done
/// (or dropped), or just before its connection's socket is closed, whichever comes first. The
/// second matters when the client goes away: hyper closes the socket first and drops the
/// handler after, and a client that saw the close must not find its request still counted.
struct InFlight {
    sim: Arc<Sim>,
    left: AtomicBool,
}

impl InFlight {
    fn enter(sim: &Arc<Sim>) -> Arc<InFlight> {
        let n = sim.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        sim.max_in_flight.fetch_max(n, Ordering::SeqCst);
        Arc::new(InFlight {
            sim: sim.clone(),
            left: AtomicBool::new(false),
        })
    }

    fn leave(&self) {
        if !self.left.swap(true, Ordering::SeqCst) {
            self.sim.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Leaves [`InFlight`] when the handler is done or dropped.
struct Handling(Arc<InFlight>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// The delivery being handled on one connection (HTTP/1.1: one at a time).
#[derive(Default)]
struct OnConnection(Mutex<Option<Arc<InFlight>>>);

/// Dropped just before its connection's socket is closed: the connection's delivery leaves
/// [`InFlight`].
struct Closing(Arc<OnConnection>);

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(in_flight) = self.0 .0.lock().take() {
            in_flight.leave();
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

impl Sim {
    /// A partner with nothing received yet.
    ///
    /// # Panics
    /// If `opts` does not pass [`SimOptions::validate`].
    pub fn new(opts: SimOptions) -> Arc<Sim> {
        if let Err(e) = opts.validate() {
            panic!("invalid partner-sim options: {e}");
        }
        Arc::new(Sim {
            rng: Mutex::new(SmallRng::seed_from_u64(opts.seed)),
            state: Mutex::new(State {
                counts: Summary {
                    capacity_per_s: opts.capacity_per_s,
                    ..Summary::default()
                },
                slot: 0,
                in_slot: 0,
                applied: HashSet::new(),
                applied_order: Vec::new(),
                accounts: HashSet::new(),
            }),
            opts,
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        })
    }

    /// What the partner saw so far.
    pub fn summary(&self) -> Summary {
        let mut s = self.state.lock().counts.clone();
        s.max_in_flight = self.max_in_flight.load(Ordering::Relaxed);
        s
    }

    /// The applied delivery ids, in the order applied.
    pub fn applied_ids(&self) -> Vec<String> {
        self.state.lock().applied_order.clone()
    }

    /// Opens `user`'s account; returns false only if [`MAX_TRACKED`] accounts are open already.
    pub fn open_account(&self, user: &str) -> bool {
        let mut st = self.state.lock();
        if st.accounts.len() >= MAX_TRACKED && !st.accounts.contains(user) {
            return false;
        }
        st.accounts.insert(user.to_string());
        true
    }

    fn draw(&self) -> Draws {
        let o = &self.opts;
        let mut rng = self.rng.lock();
        let mut hit = |rate: f64| rng.gen::<f64>() < rate;
        let fail = hit(o.fail_rate);
        let throttle = hit(o.throttle_rate);
        let spoil = if hit(o.garbage_rate) {
            Some(Spoil::Garbage)
        } else if hit(o.huge_rate) {
            Some(Spoil::Huge)
        } else if hit(o.slow_rate) {
            Some(Spoil::Slow)
        } else {
            None
        };
        let latency_ms = rng.gen_range(o.latency_min_ms..=o.latency_max_ms);
        Draws {
            fail,
            throttle,
            spoil,
            latency_ms,
        }
    }

    /// Counts an arriving delivery; returns whether it is past its slot's capacity.
    fn arrive(&self, now_ms: u64) -> bool {
        let slot = slot_of(now_ms);
        let mut st = self.state.lock();
        st.counts.received += 1;
        if st.slot != slot {
            st.slot = slot;
            st.in_slot = 0;
        }
        st.in_slot += 1;
        st.counts.max_per_slot = st.counts.max_per_slot.max(st.in_slot);
        self.opts
            .capacity_per_s
            .is_some_and(|cap| st.in_slot > u64::from(slot_share(cap, slot % SLOTS_PER_S)))
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, on: &OnConnection) -> Response<Body> {
        let path = req.uri().path();
        match *req.method() {
            Method::GET if path == "/summary" => json(StatusCode::OK, &self.summary()),
            Method::GET if path == "/deliveries" => json(StatusCode::OK, &self.applied_ids()),
            Method::POST if path == "/accounts" || path.starts_with("/accounts/") => {
                match path.strip_prefix("/accounts/") {
                    Some(user) if !user.is_empty() && !user.contains('/') => {
                        if self.open_account(user) {
                            empty(StatusCode::NO_CONTENT)
                        } else {
                            code(StatusCode::INSUFFICIENT_STORAGE, "sim_full")
                        }
                    }
                    _ => code(StatusCode::NOT_FOUND, "not_found"),
                }
            }
            Method::POST => self.deliver(req, on).await,
            _ => code(StatusCode::NOT_FOUND, "not_found"),
        }
    }

    async fn deliver(
        self: &Arc<Self>,
        req: Request<Incoming>,
        on: &OnConnection,
    ) -> Response<Body> {
        let over_capacity = self.arrive(unix_ms());
        let in_flight = InFlight::enter(self);
        *on.0.lock() = Some(in_flight.clone());
        let _handling = Handling(in_flight);
        let draws = self.draw();
        let (parts, body) = req.into_parts();
        let (answer, wait_ms) = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(body) => self.decide(&parts.headers, &body.to_bytes(), over_capacity, &draws),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => (
                reason(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("body is over {MAX_BODY_BYTES} bytes"),
                ),
                draws.latency_ms,
            ),
            Err(e) => (
                reason(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
                draws.latency_ms,
            ),
        };
        if wait_ms > 0 {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
        answer
    }

    /// Steps 3 to 10 of a delivery: the answer and how long to wait before giving it.
    fn decide(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        over_capacity: bool,
        draws: &Draws,
    ) -> (Response<Body>, u64) {
        let answer = |r| (r, draws.latency_ms);
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let (Some(id), Some(timestamp), Some(signature)) = (
            header(ID_HEADER),
            header(TIMESTAMP_HEADER).and_then(|t| t.parse::<u64>().ok()),
            header(SIGNATURE_HEADER),
        ) else {
            self.state.lock().counts.bad_signature += 1;
            return answer(reason(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                format!("{ID_HEADER}, {TIMESTAMP_HEADER} (unix seconds) and {SIGNATURE_HEADER} are required"),
            ));
        };
        let now_s = unix_ms() / 1000;
        let verified = sign::verify(
            &self.opts.secrets,
            id,
            timestamp,
            body,
            signature,
            now_s,
            self.opts.tolerance_s,
        );
        if let Err(e) = verified {
            tracing::debug!(id, error = %e, "refused a signature");
            let mut st = self.state.lock();
            let code = if let sign::VerifyError::Stale { .. } = e {
                st.counts.stale += 1;
                "stale_signature"
            } else {
                st.counts.bad_signature += 1;
                "bad_signature"
            };
            return answer(reason(StatusCode::UNAUTHORIZED, code, e.to_string()));
        }
        if header(IDEMPOTENCY_HEADER) != Some(id) {
            return answer(reason(
                StatusCode::BAD_REQUEST,
                "bad_idempotency_key",
                format!("{IDEMPOTENCY_HEADER} must equal {ID_HEADER} ({id:?})"),
            ));
        }
        let user = match check_body(body, id) {
            Ok(user) => user,
            Err(why) => return answer(reason(StatusCode::BAD_REQUEST, "bad_request", why)),
        };
        let throttled = || {
            self.state.lock().counts.throttled += 1;
            let mut r = code(StatusCode::TOO_MANY_REQUESTS, "throttled");
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
            answer(r)
        };
        if over_capacity {
            return throttled();
        }
        if draws.fail {
            self.state.lock().counts.failed += 1;
            return answer(code(StatusCode::INTERNAL_SERVER_ERROR, "internal"));
        }
        if draws.throttle {
            return throttled();
        }
        let status = {
            let mut st = self.state.lock();
            if self.opts.require_accounts && !st.accounts.contains(&user) {
                st.counts.no_account += 1;
                return answer(code(StatusCode::UNPROCESSABLE_ENTITY, "no_account"));
            }
            if st.applied.contains(id) {
                st.counts.duplicates += 1;
                "duplicate"
            } else if st.applied.len() >= MAX_TRACKED {
                st.counts.failed += 1;
                return answer(code(StatusCode::INSUFFICIENT_STORAGE, "sim_full"));
            } else {
                st.applied.insert(id.to_string());
                st.applied_order.push(id.to_string());
                st.counts.applied += 1;
                "applied"
            }
        };
        let ok = serde_json::json!({ "status": status });
        match draws.spoil {
            None => answer(json(StatusCode::OK, &ok)),
            Some(Spoil::Slow) => (json(StatusCode::OK, &ok), self.opts.slow_ms),
            Some(Spoil::Garbage) => answer(garbage()),
            Some(Spoil::Huge) => answer(huge()),
        }
    }
}

/// Checks a delivery body; returns its user.
fn check_body(body: &[u8], id: &str) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("body is not a JSON object".to_string());
    };
    let text = |name: &str| match fields.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        Some(_) => Err(format!("{name} must be a non-empty string")),
        None => Err(format!("{name} is missing")),
    };
    let delivery_id = text("delivery_id")?;
    if delivery_id != id {
        return Err(format!(
            "delivery_id {delivery_id:?} is not the {ID_HEADER} header ({id:?})"
        ));
    }
    let user = text("user")?;
    text("prize")?;
    match (fields.get("amount_cents"), fields.get("sku")) {
        (Some(a), None) if a.is_u64() => {}
        (Some(_), None) => return Err("amount_cents must be a non-negative integer".to_string()),
        (None, Some(_)) => {
            text("sku")?;
        }
        (Some(_), Some(_)) => return Err("only one of amount_cents and sku may be set".into()),
        (None, None) => return Err("one of amount_cents and sku is required".to_string()),
    }
    Ok(user.to_string())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("plain data serializes");
    full(status, "application/json", body)
}

fn code(status: StatusCode, code: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "code": code }))
}

fn reason(status: StatusCode, code: &str, message: String) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "code": code, "message": message }),
    )
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = status;
    r
}

fn garbage() -> Response<Body> {
    full(
        StatusCode::OK,
        "text/html",
        &b"<html><body>upstream hiccup\x00\xff</body>"[..],
    )
}

/// [`HUGE_BODY_BYTES`] of a JSON-looking answer, streamed in 64 KiB chunks without a
/// content length, so only a client that bounds what it reads is safe.
fn huge() -> Response<Body> {
    const CHUNK: usize = 64 << 10;
    const HEAD: &[u8] = br#"{"status":"applied","padding":""#;
    const TAIL: &[u8] = br#""}"#;
    let padding = Bytes::from(vec![b'x'; CHUNK]);
    let mut left = HUGE_BODY_BYTES - HEAD.len() - TAIL.len();
    let mut chunks = vec![Bytes::from_static(HEAD)];
    while left > 0 {
        let n = left.min(CHUNK);
        chunks.push(padding.slice(..n));
        left -= n;
    }
    chunks.push(Bytes::from_static(TAIL));
    let stream = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(Frame::data(c))),
    );
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Serves `sim` on `listener` (HTTP/1.1, keep-alive; at most [`MAX_CONNECTIONS`] at once) until
/// `shutdown` resolves, then lets open requests finish for at most [`DRAIN`] and returns.
pub async fn serve(listener: TcpListener, sim: Arc<Sim>, shutdown: impl Future<Output = ()>) {
    let connection = move || {
        let on = Arc::new(OnConnection::default());
        let (sim, on_handler) = (sim.clone(), on.clone());
        let service = hyper::service::service_fn(move |req| {
            let (sim, on) = (sim.clone(), on_handler.clone());
            async move { Ok::<_, Infallible>(sim.handle(req, &on).await) }
        });
        (service, Closing(on))
    };
    let limits = crate::serve::Limits {
        max_connections: MAX_CONNECTIONS,
        drain: DRAIN,
        header_read_timeout: crate::serve::HEADER_READ_TIMEOUT,
        name: "partner-sim",
    };
    crate::serve::http1_per_connection(listener, connection, limits, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_field_by_field() {
        let ok = br#"{"delivery_id":"d1","user":"u","prize":"p","amount_cents":5}"#;
        assert_eq!(check_body(ok, "d1"), Ok("u".to_string()));
        let sku = br#"{"delivery_id":"d1","user":"u","prize":"p","sku":"S"}"#;
        assert_eq!(check_body(sku, "d1"), Ok("u".to_string()));
        for bad in [
            &b"not json"[..],
            br#"[1]"#,
            br#"{"delivery_id":"d2","user":"u","prize":"p","amount_cents":5}"#,
            br#"{"delivery_id":"d1","prize":"p","amount_cents":5}"#,
            br#"{"delivery_id":"d1","user":"u","amount_cents":5}"#,
            br#"{"delivery_id":"d1","user":"u","prize":"p"}"#,
            br#"{"delivery_id":"d1","user":"u","prize":"p","amount_cents":-1}"#,
            br#"{"delivery_id":"d1","user":"u","prize":"p","amount_cents":1.5}"#,
            br#"{"delivery_id":"d1","user":"u","prize":"p","amount_cents":1,"sku":"S"}"#,
            br#"{"delivery_id":"d1","user":"u","prize":"p","sku":7}"#,
        ] {
            assert!(
                check_body(bad, "d1").is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn options_are_validated() {
        let good = SimOptions {
            secrets: vec!["s".into()],
            ..SimOptions::default()
        };
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(
            SimOptions::default().validate(),
            Err(SimOptionsError::NoSecret)
        );
        let bad = SimOptions {
            huge_rate: 1.5,
            ..good.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(SimOptionsError::Rate {
                field: "huge_rate",
                ..
            })
        ));
        let nan = SimOptions {
            fail_rate: f64::NAN,
            ..good.clone()
        };
        assert!(nan.validate().is_err());
        let upside_down = SimOptions {
            latency_min_ms: 5,
            latency_max_ms: 1,
            ..good.clone()
        };
        assert!(upside_down.validate().is_err());
        let zero = SimOptions {
            capacity_per_s: Some(0),
            ..good
        };
        assert_eq!(zero.validate(), Err(SimOptionsError::ZeroCapacity));
    }

    #[tokio::test]
    async fn huge_answers_are_exactly_the_size() {
        let n = huge().into_body().collect().await.unwrap().to_bytes();
        assert_eq!(n.len(), HUGE_BODY_BYTES);
        assert!(n.starts_with(br#"{"status":"applied""#) && n.ends_with(br#""}"#));
    }
}
