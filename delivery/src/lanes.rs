//! Partner lanes: one task per partner that sends its queued deliveries no faster than its
//! throttle and its in-flight cap allow, and records every answer.
//!
//! The draw's hot path only calls [`Deliveries::enqueue`] (a push under the lane's own mutex)
//! after its batch is durable; the pending record and the outbox entry were in that batch, so
//! a delivery is never only in memory. A lane task loops: wait until the lane is not paused,
//! has room in flight, has something due and has room in the current 100 ms slot; then it
//! spawns the request. The request's answer moves the record on (delivered, retrying with
//! backoff, deferred, dead) durably, and only then may the id be sent again, so a crash at any
//! point leaves the record pending or moved on, never lost; a delivery the partner took just
//! before a crash is sent again with the same idempotency key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use quota::store::NodeShare;
use rand::Rng;
use rustc_hash::FxHashSet;
use serde::Serialize;
use tokio::sync::Notify;

use crate::connector::{Closed, Connector};
use crate::queue::{LaneQueue, Next};
use crate::record::{DeliveryId, Record, State, Store, StoreError};
use crate::sign;
use crate::throttle::Throttle;

/// Most bytes of a partner's answer read; the rest is dropped with the connection.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// First retry delay; doubled per attempt.
pub const BACKOFF_BASE_MS: u64 = 250;
/// Longest retry delay.
pub const BACKOFF_MAX_MS: u64 = 60_000;
/// A store failure while recording an answer: try the delivery again after this.
const STORE_RETRY_MS: u64 = 1_000;
/// Most ids a lane takes (and reads the records of) at once.
const MAX_BATCH: u32 = 64;
/// Least time between two reads of a lane's outbox into its queue.
const REFILL_GAP_MS: u64 = 1_000;

/// Milliseconds since the Unix epoch. Lanes use the wall clock: their slots must line up with
/// the partner's.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How a partner is reached and throttled.
#[derive(Debug, Clone, PartialEq)]
pub struct PartnerSettings {
    /// Partner id.
    pub id: String,
    /// Delivery endpoint.
    pub url: String,
    /// Most requests a second, all engine nodes together; this node sends its part, split per
    /// 100 ms slot by [`NodeShare::slot_room`].
    pub rate_per_s: u32,
    /// Which part of `rate_per_s` this node owns.
    pub node: NodeShare,
    /// Most requests in flight from this node.
    pub max_in_flight: u32,
    /// Per-request timeout (connect, send, answer). A request that times out keeps its place
    /// in flight until its connection is closed on both sides, for at most another
    /// `timeout_ms`.
    pub timeout_ms: u64,
    /// Kill switch: the lane sends nothing and keeps its queue.
    pub paused: bool,
    /// Retries stop this long after the win (or a re-drive).
    pub retry_deadline_ms: u64,
    /// A deferred delivery is tried again this often until its deadline.
    pub deferred_retry_ms: u64,
    /// Active signing secrets (several during a rotation).
    pub secrets: Vec<String>,
}

/// Counters of one lane, as shown to operators.
#[derive(Debug, Clone, Serialize)]
pub struct LaneStats {
    /// Partner id.
    pub partner: String,
    /// Whether the live config names the partner. A lane whose partner was removed keeps
    /// sending what its outbox holds, with the settings of the last config that named it.
    pub in_config: bool,
    /// Whether the lane knows how to reach its partner. `false` only for a partner with open
    /// deliveries or dead letters that no stored config names: the lane holds them, paused,
    /// until a published config names the partner again.
    pub settings_known: bool,
    /// Paused by its kill switch (or for want of settings).
    pub paused: bool,
    /// Ids queued in memory (due now or later).
    pub queued: u64,
    /// Whether more are waiting in the store than memory holds.
    pub overflowed: bool,
    /// Requests in flight (a timed-out one until its connection is closed on both sides).
    pub in_flight: u32,
    /// This node's part of the configured rate.
    pub rate_per_s: u32,
    /// Rate this node sends at now (lower after trouble).
    pub current_rate_per_s: u32,
    /// Deliveries the partner took.
    pub delivered: u64,
    /// Requests that failed (timeout, connection, 429, 5xx).
    pub failures: u64,
    /// Deliveries deferred for want of an account.
    pub deferred: u64,
    /// Deliveries given up.
    pub dead: u64,
    /// Win → delivered, p50 (ms).
    pub latency_p50_ms: u64,
    /// Win → delivered, p99 (ms).
    pub latency_p99_ms: u64,
}

/// Why a user's or operator's request about a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No such delivery (or not this user's).
    #[error("no delivery {0}")]
    NotFound(String),
    /// Its partner has no lane.
    #[error("no partner {0}")]
    NoPartner(String),
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Default)]
struct Counts {
    delivered: AtomicU64,
    failures: AtomicU64,
    deferred: AtomicU64,
    dead: AtomicU64,
}

struct Lane {
    settings: ArcSwap<PartnerSettings>,
    uri: ArcSwap<Option<Uri>>,
    queue: Mutex<LaneQueue>,
    throttle: Mutex<Throttle>,
    /// Ids being sent or recorded: never sent twice at once.
    busy: Mutex<FxHashSet<DeliveryId>>,
    in_flight: AtomicU32,
    wake: Notify,
    closing: AtomicBool,
    /// See [`LaneStats::in_config`].
    in_config: AtomicBool,
    /// See [`LaneStats::settings_known`].
    settings_known: AtomicBool,
    counts: Counts,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Lane {
    /// A new lane for partner `p`, holding at most `max_queued` ids in memory.
    fn new(p: &PartnerSettings, max_queued: usize) -> Lane {
        Lane {
            settings: ArcSwap::from_pointee(p.clone()),
            uri: ArcSwap::from_pointee(p.url.parse().ok()),
            queue: Mutex::new(LaneQueue::new(max_queued)),
            throttle: Mutex::new(Throttle::starting(p.rate_per_s, p.node, now_ms())),
            busy: Mutex::new(FxHashSet::default()),
            in_flight: AtomicU32::new(0),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            in_config: AtomicBool::new(true),
            settings_known: AtomicBool::new(true),
            counts: Counts::default(),
            latency: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 2).expect("bounds"),
            ),
        }
    }

    /// Takes its partner's new settings: the rate from the next slot, the rest at once.
    fn reconfigure(&self, p: &PartnerSettings) {
        self.throttle.lock().set_rate(p.rate_per_s, p.node);
        self.uri.store(Arc::new(p.url.parse().ok()));
        self.settings.store(Arc::new(p.clone()));
        self.wake.notify_one();
    }
}

/// Every partner's lane, and the shared HTTP client.
pub struct Deliveries {
    lanes: ArcSwap<HashMap<String, Arc<Lane>>>,
    store: Arc<dyn Store>,
    client: Client<Connector, Full<Bytes>>,
    max_queued: usize,
    configuring: Mutex<()>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries")
            .field("lanes", &self.lanes.load().len())
            .finish()
    }
}

/// One request's place in its lane's in-flight count, given back when dropped.
struct InFlight<'a>(&'a Lane);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let left = self.0.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        let max = self.0.settings.load().max_in_flight;
        if max.saturating_sub(left) >= batch_room(max) {
            self.0.wake.notify_one();
        }
    }
}

/// The room in flight a lane waits for before it takes more ids: an eighth of its cap (at most
/// [`MAX_BATCH`], at least one), so a busy lane sends and reads records in batches instead of
/// waking for every answer.
fn batch_room(max_in_flight: u32) -> u32 {
    (max_in_flight / 8).clamp(1, MAX_BATCH)
}

/// What a partner's answer means for the delivery.
#[derive(Debug, PartialEq)]
enum Answer {
    Took,
    NoAccount,
    Trouble {
        retry_after_ms: Option<u64>,
        why: String,
    },
    Refused(String),
}

impl Deliveries {
    /// No lanes yet; [`Deliveries::configure`] adds them. Each lane holds at most `max_queued`
    /// ids in memory.
    pub fn new(store: Arc<dyn Store>, max_queued: usize) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(Connector(connector));
        Arc::new(Deliveries {
            lanes: ArcSwap::from_pointee(HashMap::new()),
            store,
            client,
            max_queued,
            configuring: Mutex::new(()),
        })
    }

    /// Brings the lanes in line with `partners` (the live config's): new partners get a lane
    /// (started, and filled from their outbox), known ones take the new settings (rate from
    /// the next slot), lanes of partners no longer configured keep running so queued
    /// deliveries still go out. Must run inside a tokio runtime.
    pub fn configure(self: &Arc<Self>, partners: &[PartnerSettings]) {
        let _one = self.configuring.lock();
        let mut lanes = HashMap::clone(&self.lanes.load());
        let configured: std::collections::HashSet<&str> =
            partners.iter().map(|p| p.id.as_str()).collect();
        for (id, lane) in &lanes {
            lane.in_config
                .store(configured.contains(id.as_str()), Ordering::Relaxed);
        }
        for p in partners {
            if let Some(lane) = lanes.get(&p.id) {
                lane.settings_known.store(true, Ordering::Relaxed);
                lane.reconfigure(p);
                continue;
            }
            self.start_lane(&mut lanes, Lane::new(p, self.max_queued));
        }
        self.lanes.store(Arc::new(lanes));
    }

    /// Gives a partner the live config no longer names a lane with `settings` (those of the
    /// last config that named it), so what its outbox holds still goes out and can be
    /// re-driven after a restart as before it. A partner that has a lane keeps it. Must run
    /// inside a tokio runtime.
    pub fn drain_removed(self: &Arc<Self>, settings: &PartnerSettings) {
        self.add_outside_config(Lane::new(settings, self.max_queued));
    }

    /// Gives a partner no stored config names a paused lane without a URL: its deliveries are
    /// held (and shown, with [`LaneStats::settings_known`] false) until a published config
    /// names the partner again, instead of being ignored. A partner that has a lane keeps it.
    /// Must run inside a tokio runtime.
    pub fn hold_unknown(self: &Arc<Self>, partner: &str) {
        let settings = PartnerSettings {
            id: partner.to_string(),
            url: String::new(),
            rate_per_s: 0,
            node: NodeShare::ALONE,
            max_in_flight: 0,
            timeout_ms: 0,
            paused: true,
            retry_deadline_ms: 0,
            deferred_retry_ms: 0,
            secrets: Vec::new(),
        };
        let lane = Lane::new(&settings, self.max_queued);
        lane.settings_known.store(false, Ordering::Relaxed);
        self.add_outside_config(lane);
    }

    fn add_outside_config(self: &Arc<Self>, lane: Lane) {
        let _one = self.configuring.lock();
        let id = lane.settings.load().id.clone();
        if self.lanes.load().contains_key(&id) {
            return;
        }
        lane.in_config.store(false, Ordering::Relaxed);
        let mut lanes = HashMap::clone(&self.lanes.load());
        self.start_lane(&mut lanes, lane);
        self.lanes.store(Arc::new(lanes));
    }

    fn start_lane(self: &Arc<Self>, lanes: &mut HashMap<String, Arc<Lane>>, lane: Lane) {
        let lane = Arc::new(lane);
        // What the outbox already holds (after a restart) is read in as after an overflow.
        lane.queue.lock().mark_overflowed();
        lanes.insert(lane.settings.load().id.clone(), lane.clone());
        tokio::spawn(self.clone().run_lane(lane));
    }

    /// Queues a durable pending delivery for sending. Cheap: the draw calls it after commit.
    pub fn enqueue(&self, partner: &str, id: DeliveryId) {
        let lanes = self.lanes.load();
        let Some(lane) = lanes.get(partner) else {
            tracing::warn!(partner, %id, "no lane for partner; the delivery waits in its outbox");
            return;
        };
        lane.queue.lock().push(id);
        lane.wake.notify_one();
    }

    /// Sends a delivery again now if it is deferred, retrying or dead, with a fresh deadline;
    /// a pending or delivered one is left as it is. `user`, when given, must own it.
    /// Idempotent: asking twice queues it once more at most.
    pub async fn redrive(
        &self,
        id: DeliveryId,
        user: Option<&str>,
    ) -> Result<Record, DeliveryError> {
        let rec = self
            .store
            .load(id)?
            .filter(|r| user.is_none_or(|u| r.user == u))
            .ok_or_else(|| DeliveryError::NotFound(id.to_string()))?;
        if matches!(rec.state, State::Pending | State::Delivered) {
            return Ok(rec);
        }
        let lanes = self.lanes.load();
        let lane = lanes
            .get(&rec.partner)
            .ok_or_else(|| DeliveryError::NoPartner(rec.partner.clone()))?;
        // Claim the id as the lane does for a send, so an answer being recorded cannot
        // interleave with this change; while it is being sent, its answer decides.
        if !lane.busy.lock().insert(id) {
            return Ok(rec);
        }
        let result = async {
            // Read again under the claim: the lane may have moved it on before.
            let mut rec = self
                .store
                .load(id)?
                .ok_or_else(|| DeliveryError::NotFound(id.to_string()))?;
            if matches!(rec.state, State::Pending | State::Delivered) {
                return Ok((rec, false));
            }
            let was = rec.state;
            rec.state = State::Pending;
            rec.next_at_ms = 0;
            rec.deadline_ms = now_ms() + lane.settings.load().retry_deadline_ms;
            self.store.save(rec.clone(), was).await?;
            Ok::<_, DeliveryError>((rec, true))
        }
        .await;
        lane.busy.lock().remove(&id);
        let (rec, changed) = result?;
        if changed {
            lane.queue.lock().push(id);
            lane.wake.notify_one();
        }
        Ok(rec)
    }

    /// Re-drives every dead delivery of a partner; returns how many.
    pub async fn redrive_dead(&self, partner: &str) -> Result<usize, DeliveryError> {
        if !self.lanes.load().contains_key(partner) {
            return Err(DeliveryError::NoPartner(partner.to_string()));
        }
        let ids = self.store.dead_letters(partner)?;
        let mut n = 0;
        for id in ids {
            if self.redrive(id, None).await?.state == State::Pending {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every lane's counters, by partner id.
    pub fn stats(&self) -> Vec<LaneStats> {
        let lanes = self.lanes.load();
        let mut out: Vec<LaneStats> = lanes
            .values()
            .map(|lane| {
                let s = lane.settings.load();
                let (queued, overflowed) = {
                    let q = lane.queue.lock();
                    (q.len() as u64, q.overflowed())
                };
                let latency = lane.latency.lock();
                let throttle = lane.throttle.lock();
                LaneStats {
                    partner: s.id.clone(),
                    in_config: lane.in_config.load(Ordering::Relaxed),
                    settings_known: lane.settings_known.load(Ordering::Relaxed),
                    paused: s.paused,
                    queued,
                    overflowed,
                    in_flight: lane.in_flight.load(Ordering::Relaxed),
                    rate_per_s: throttle.node_rate_per_s(),
                    current_rate_per_s: throttle.current_rate(),
                    delivered: lane.counts.delivered.load(Ordering::Relaxed),
                    failures: lane.counts.failures.load(Ordering::Relaxed),
                    deferred: lane.counts.deferred.load(Ordering::Relaxed),
                    dead: lane.counts.dead.load(Ordering::Relaxed),
                    latency_p50_ms: latency.value_at_quantile(0.5),
                    latency_p99_ms: latency.value_at_quantile(0.99),
                }
            })
            .collect();
        out.sort_by(|a, b| a.partner.cmp(&b.partner));
        out
    }

    /// Stops every lane's loop (requests in flight finish or are dropped with the runtime;
    /// their records stay pending and are sent again after a restart).
    pub fn shutdown(&self) {
        for lane in self.lanes.load().values() {
            lane.closing.store(true, Ordering::SeqCst);
            lane.wake.notify_one();
        }
    }

    async fn run_lane(self: Arc<Self>, lane: Arc<Lane>) {
        // No refill of a queue more than half full before this time: each one reads the
        // whole outbox.
        let mut refill_after_ms = 0;
        loop {
            let wake = lane.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if lane.closing.load(Ordering::SeqCst) {
                return;
            }
            // Once the ready ids are sent, not when retries due later are too: deferred ones
            // may wait for hours. A full queue of ids due later is not refilled again and
            // again (it keeps the earliest-due; its ids come due and are sent as usual).
            let (wants_refill, half_free) = {
                let q = lane.queue.lock();
                (q.ready_is_empty() && q.wants_refill(), q.is_half_free())
            };
            let now = now_ms();
            // A refill into a half-free queue brings in at least half a queue of ids (or all
            // the store holds, which leaves it not overflowed): no loop without progress.
            // Others, to take in a few ids or swap in earlier ones, wait for the gap.
            if wants_refill && (half_free || now >= refill_after_ms) {
                // Even a paused lane reads its outbox, so operators see what it holds.
                self.refill(&lane).await;
                refill_after_ms = now_ms() + REFILL_GAP_MS;
                continue;
            }
            // A refill held back by the gap wakes the lane when the gap is over.
            let refill_at = wants_refill.then_some(refill_after_ms);
            let settings = lane.settings.load_full();
            let room = settings
                .max_in_flight
                .saturating_sub(lane.in_flight.load(Ordering::SeqCst));
            if settings.paused || room < batch_room(settings.max_in_flight) {
                wake.await; // an answer that leaves enough room wakes the lane
                continue;
            }
            let next = lane.queue.lock().next(now);
            match (next, refill_at) {
                (Next::Empty, None) => {
                    wake.await;
                    continue;
                }
                (Next::Empty, Some(at)) => {
                    sleep_or_wake(at.saturating_sub(now), wake).await;
                    continue;
                }
                (Next::Later(at), refill_at) => {
                    let at = refill_at.map_or(at, |r| r.min(at));
                    sleep_or_wake(at.saturating_sub(now), wake).await;
                    continue;
                }
                (Next::Due, _) => {}
            }
            let (batch, throttled) = take_batch(&lane, now, room.min(MAX_BATCH) as usize);
            if batch.is_empty() {
                if let Some(at) = throttled {
                    sleep_or_wake(at.saturating_sub(now), wake).await;
                }
                continue;
            }
            // One batched read for the records of every id taken.
            let records = self.store.load_many(&batch);
            for (id, record) in batch.into_iter().zip(records) {
                lane.in_flight.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(
                    self.clone()
                        .deliver(lane.clone(), settings.clone(), id, record),
                );
            }
        }
    }

    /// Reads the lane's outbox back into its queue (start-up, or after an overflow drained).
    async fn refill(&self, lane: &Arc<Lane>) {
        let partner = lane.settings.load().id.clone();
        let store = self.store.clone();
        lane.queue.lock().begin_refill();
        let outbox = match tokio::task::spawn_blocking(move || store.outbox(&partner)).await {
            Ok(Ok(outbox)) => outbox,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading a partner's outbox failed; trying again in 1 s");
                tokio::time::sleep(Duration::from_millis(STORE_RETRY_MS)).await;
                lane.queue.lock().refill_failed();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox reader panicked");
                lane.queue.lock().refill_failed();
                return;
            }
        };
        let busy = lane.busy.lock().clone();
        lane.queue.lock().refill(outbox, |id| busy.contains(id));
    }

    async fn deliver(
        self: Arc<Self>,
        lane: Arc<Lane>,
        settings: Arc<PartnerSettings>,
        id: DeliveryId,
        record: Result<Option<Record>, StoreError>,
    ) {
        let in_flight = InFlight(&lane);
        let outcome = match record {
            Ok(record) => self.attempt(&lane, &settings, id, record, in_flight).await,
            Err(e) => Err(e),
        };
        // Out of `busy` first: a copy popped in between would be dropped as a duplicate.
        lane.busy.lock().remove(&id);
        let again = match outcome {
            Ok(at) => at,
            Err(e) => {
                tracing::error!(%id, error = %e, "recording a delivery failed; it is tried again");
                Some(now_ms() + STORE_RETRY_MS)
            }
        };
        if let Some(at) = again {
            lane.queue.lock().push_at(at, id);
            lane.wake.notify_one();
        }
    }

    /// Sends one delivery (its stored record as read just before) and records the answer;
    /// returns when it is due again, if it is.
    async fn attempt(
        &self,
        lane: &Lane,
        settings: &PartnerSettings,
        id: DeliveryId,
        record: Option<Record>,
        in_flight: InFlight<'_>,
    ) -> Result<Option<u64>, StoreError> {
        let Some(mut rec) = record else {
            tracing::warn!(%id, "queued delivery has no record");
            return Ok(None);
        };
        let now = now_ms();
        let was = rec.state;
        let due = match rec.state {
            State::Pending => true,
            State::Retrying | State::Deferred => rec.next_at_ms <= now,
            State::Delivered | State::Dead => false,
        };
        if !due {
            return Ok(None); // a stale copy: the record moved on since it was queued
        }
        let (answer, closing) = match lane.uri.load().as_ref() {
            Some(uri) => self.request(uri.clone(), settings, &rec, now).await,
            None => (
                Answer::Refused(format!("partner url {} is not a valid URI", settings.url)),
                None,
            ),
        };
        // The partner has answered: the lane may send the next request while this answer is
        // made durable (the id stays busy until then). A request that timed out keeps its place
        // until its connection is closed (below), after its answer is recorded.
        let held = match closing {
            None => {
                drop(in_flight);
                None
            }
            Some(closed) => Some((in_flight, closed)),
        };
        let now = now_ms();
        rec.attempts += 1;
        let deadline = if rec.deadline_ms == 0 {
            rec.created_ms + settings.retry_deadline_ms
        } else {
            rec.deadline_ms
        };
        let mut later = None;
        match answer {
            Answer::Took => {
                rec.state = State::Delivered;
                rec.delivered_ms = Some(now);
                rec.last_error = None;
            }
            Answer::NoAccount => {
                rec.state = State::Deferred;
                let at = now + settings.deferred_retry_ms;
                rec.next_at_ms = if at <= deadline { at } else { 0 };
                rec.last_error = Some("the user has no account at the partner yet".into());
                later = (rec.next_at_ms > 0).then_some(rec.next_at_ms);
            }
            Answer::Trouble {
                retry_after_ms,
                why,
            } => {
                lane.throttle.lock().trouble(now, retry_after_ms);
                let wait = backoff_ms(rec.attempts).max(retry_after_ms.unwrap_or(0));
                if now + wait > deadline {
                    rec.state = State::Dead;
                    rec.last_error =
                        Some(format!("gave up after {} attempts: {why}", rec.attempts));
                } else {
                    rec.state = State::Retrying;
                    rec.next_at_ms = now + wait;
                    rec.last_error = Some(why);
                    later = Some(rec.next_at_ms);
                }
            }
            Answer::Refused(why) => {
                rec.state = State::Dead;
                rec.last_error = Some(why);
            }
        }
        let (state, created_ms) = (rec.state, rec.created_ms);
        self.store.save_answer(rec, was).await?;
        let counter = match state {
            State::Delivered => {
                let _ = lane
                    .latency
                    .lock()
                    .record(now.saturating_sub(created_ms).max(1));
                &lane.counts.delivered
            }
            State::Deferred => &lane.counts.deferred,
            State::Dead => &lane.counts.dead,
            _ => &lane.counts.failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some((_place, closed)) = held {
            // The partner may still be working on the request until it has seen the
            // connection close, which hyper's connection task starts later: the place is held
            // until the connection is closed on both sides (see `connector`), for at most
            // another timeout (a partner that does not close, or hyper pooled it unused).
            let timeout = Duration::from_millis(settings.timeout_ms);
            if tokio::time::timeout(timeout, closed.wait()).await.is_err() {
                // Not a warning: a partner that keeps timing out would log one a request.
                tracing::debug!(
                    partner = %settings.id,
                    "a timed-out request's connection was still open after another {} ms",
                    settings.timeout_ms
                );
            }
        }
        Ok(later)
    }

    /// Sends one delivery and classifies the answer; on a timeout, also the request's
    /// connection's [`Closed`] (none if it never got a connection, so was never sent).
    async fn request(
        &self,
        uri: Uri,
        settings: &PartnerSettings,
        rec: &Record,
        now: u64,
    ) -> (Answer, Option<Closed>) {
        let body = request_body(rec);
        let ts = now / 1000;
        let signature = sign::sign(&settings.secrets, &rec.win_id, ts, &body);
        let req = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(sign::IDEMPOTENCY_HEADER, &rec.win_id)
            .header(sign::ID_HEADER, &rec.win_id)
            .header(sign::TIMESTAMP_HEADER, ts.to_string())
            .header(sign::SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)));
        let mut req = match req {
            Ok(req) => req,
            Err(e) => return (Answer::Refused(format!("building the request: {e}")), None),
        };
        let connection = capture_connection(&mut req);
        let exchange = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let retry_after_ms = resp
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| s.saturating_mul(1000));
            // A body past the bound is not read further; the status already decided.
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after_ms, body))
        };
        let timeout = Duration::from_millis(settings.timeout_ms);
        // On a timeout the exchange is dropped here, and hyper closes its connection.
        let answered = tokio::time::timeout(timeout, exchange).await;
        match answered {
            Err(_) => (
                Answer::Trouble {
                    retry_after_ms: None,
                    why: format!("no answer within {} ms", settings.timeout_ms),
                },
                connection
                    .connection_metadata()
                    .as_ref()
                    .and_then(Closed::of),
            ),
            Ok(Err(e)) => (
                Answer::Trouble {
                    retry_after_ms: None,
                    why: format!("request failed: {e}"),
                },
                None,
            ),
            Ok(Ok((status, retry_after_ms, body))) => {
                (classify(status.as_u16(), retry_after_ms, &body), None)
            }
        }
    }
}

/// Takes up to `max` due ids, each with room in the lane's throttle, and marks them busy; with
/// when the throttle has room again if it ran out.
fn take_batch(lane: &Lane, now: u64, max: usize) -> (Vec<DeliveryId>, Option<u64>) {
    let mut batch = Vec::new();
    let mut queue = lane.queue.lock();
    let mut throttle = lane.throttle.lock();
    let mut busy = lane.busy.lock();
    while batch.len() < max {
        let Some(id) = queue.peek(now) else { break };
        // A second copy of an id being sent is dropped without taking room in the throttle:
        // the first one's answer decides.
        if !busy.contains(&id) {
            if let Err(at) = throttle.try_take(now) {
                return (batch, Some(at));
            }
            busy.insert(id);
            batch.push(id);
        }
        queue.pop(now);
    }
    (batch, None)
}

fn classify(status: u16, retry_after_ms: Option<u64>, body: &[u8]) -> Answer {
    match status {
        200..=299 => Answer::Took,
        422 if is_no_account(body) => Answer::NoAccount,
        429 => Answer::Trouble {
            retry_after_ms: Some(retry_after_ms.unwrap_or(1000)),
            why: "429 too many requests".into(),
        },
        408 | 500..=599 => Answer::Trouble {
            retry_after_ms: None,
            why: format!("partner answered {status}"),
        },
        _ => Answer::Refused(format!("partner refused it with {status}")),
    }
}

fn is_no_account(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Code {
        code: String,
    }
    serde_json::from_slice::<Code>(body).is_ok_and(|c| c.code == "no_account")
}

async fn sleep_or_wake(ms: u64, wake: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = wake => {}
    }
}

/// The retry delay after `attempts` failed requests: exponential from [`BACKOFF_BASE_MS`],
/// capped at [`BACKOFF_MAX_MS`], with jitter over its upper half.
pub fn backoff_ms(attempts: u32) -> u64 {
    let full = BACKOFF_BASE_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(BACKOFF_MAX_MS);
    rand::thread_rng().gen_range(full / 2..=full)
}

/// The JSON body sent to the partner.
pub fn request_body(rec: &Record) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        delivery_id: &'a str,
        win_id: &'a str,
        user: &'a str,
        prize: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        amount_cents: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sku: Option<&'a str>,
        issued_at: String,
        issued_ms: u64,
    }
    serde_json::to_vec(&Body {
        delivery_id: &rec.win_id,
        win_id: &rec.win_id,
        user: &rec.user,
        prize: &rec.prize,
        amount_cents: rec.amount_cents,
        sku: rec.sku.as_deref(),
        issued_at: rfc3339_ms(rec.created_ms),
        issued_ms: rec.created_ms,
    })
    .expect("plain struct")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time in ms since the epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_of_a_busy_id_is_dropped_without_taking_throttle_room() {
        let partner = PartnerSettings {
            id: "p".into(),
            url: "http://127.0.0.1:1/deliver".into(),
            rate_per_s: 10, // one request in each 100 ms slot
            node: NodeShare::ALONE,
            max_in_flight: 8,
            timeout_ms: 1000,
            paused: false,
            retry_deadline_ms: 60_000,
            deferred_retry_ms: 1000,
            secrets: vec![],
        };
        let lane = Lane::new(&partner, 16);
        let (sending, waiting) = (DeliveryId([1; 12]), DeliveryId([2; 12]));
        lane.busy.lock().insert(sending);
        {
            let mut queue = lane.queue.lock();
            queue.push(sending);
            queue.push(waiting);
            queue.push(sending);
        }
        // The lane sends nothing in the slot it started in nor the next (Throttle::starting).
        let early_in_a_slot =
            (quota::limiter::slot_of(now_ms()) + 2) * quota::limiter::SLOT_MS + 10;
        let (batch, throttled) = take_batch(&lane, early_in_a_slot, 8);
        assert_eq!(
            batch,
            vec![waiting],
            "the slot's one request went to the new id"
        );
        assert_eq!(throttled, None);
        assert!(lane.queue.lock().is_empty(), "both copies were dropped");
        assert!(lane.busy.lock().contains(&waiting));
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(200, None, b"garbage"), Answer::Took);
        assert_eq!(classify(204, None, b""), Answer::Took);
        assert_eq!(
            classify(422, None, br#"{"code":"no_account"}"#),
            Answer::NoAccount
        );
        assert!(matches!(classify(422, None, b"{}"), Answer::Refused(_)));
        assert!(matches!(
            classify(429, Some(3000), b""),
            Answer::Trouble {
                retry_after_ms: Some(3000),
                ..
            }
        ));
        assert!(matches!(
            classify(429, None, b""),
            Answer::Trouble {
                retry_after_ms: Some(1000),
                ..
            }
        ));
        assert!(matches!(
            classify(503, None, b""),
            Answer::Trouble {
                retry_after_ms: None,
                ..
            }
        ));
        assert!(matches!(classify(400, None, b""), Answer::Refused(_)));
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        for attempts in 1..40 {
            let full = (BACKOFF_BASE_MS << (attempts - 1).min(20)).min(BACKOFF_MAX_MS);
            let d = backoff_ms(attempts);
            assert!(d >= full / 2 && d <= full, "attempt {attempts}: {d}");
        }
    }
}
