//! The draw service: load the user's standing, plan the draw, make it durable, answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use quota::book::CounterBook;
use quota::clock::Clock;
use quota::config::{format_ms, Campaign, DropTask, PrizeKind, Round};
use quota::draw::{DrawPlan, Outcome, UserStanding, MAX_SHAKES};
use quota::ids::check_id;
use quota::schedule::NotLive;
use quota::store::{ConfigStore, Snapshot};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use redrain_delivery::record::{DeliveryId, Record};
use redrain_geo::Coord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warp::http::StatusCode;

use crate::cache::StandingCache;
use crate::drops::{parse_drop_id, DropIdError, Entry, TakeError};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::storage::{
    claim_request_key, counter_key, drop_key, request_key, standing_ops, win_key, Cf, Op, Storage,
};
use crate::userlock::UserLocks;

/// A draw request body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrawRequest {
    /// The user drawing.
    pub user: String,
    /// Client-chosen id; a retry with the same id gets the same answer and draws nothing.
    pub request_id: String,
    /// Shakes batched in this request (1..=20, default 1).
    #[serde(default = "one")]
    pub shakes: u32,
}

fn one() -> u32 {
    1
}

/// The secret key of the draws' randomness. A request's randomness is SipHash-1-3 of its
/// idempotency key under this key: a keyed hash, so nobody without the key can make a request
/// id that rolls the way an earlier, winning one did (with a plain hash of the ids, two ids
/// whose hashes collide roll alike).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DrawKey(pub [u8; 16]);

impl DrawKey {
    /// A fixed key from a seed (tests and `--seed`): the seed's bytes twice.
    pub fn from_seed(seed: u64) -> DrawKey {
        let b = seed.to_le_bytes();
        let mut key = [0; 16];
        key[..8].copy_from_slice(&b);
        key[8..].copy_from_slice(&b);
        DrawKey(key)
    }

    /// The randomness of the request with idempotency key `request_key` (and geo drop
    /// `drop`, for a claim).
    fn rng(&self, request_key: &[u8], drop: Option<u32>) -> SmallRng {
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher13::new_with_key(&self.0);
        h.write(request_key);
        if let Some(drop) = drop {
            h.write_u32(drop);
        }
        SmallRng::seed_from_u64(h.finish())
    }
}

impl std::fmt::Debug for DrawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DrawKey(secret)")
    }
}

/// The user's lock, or the stored answer of a request seen before.
enum Locked<'a> {
    Guard(crate::userlock::UserGuard<'a>),
    Replay(Vec<u8>),
}

/// A geo drop claim request body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The user claiming.
    pub user: String,
    /// Client-chosen id; a retry with the same id gets the same answer and claims nothing.
    pub request_id: String,
    /// Where the user is: latitude in degrees.
    pub lat: f64,
    /// Where the user is: longitude in degrees.
    pub lng: f64,
}

/// What a planned draw or claim makes durable, besides the plan itself.
struct Commit<'a> {
    snapshot: &'a Snapshot,
    round: &'a Round,
    user: &'a str,
    request_id: &'a str,
    /// Where the answer is stored for retries; also salts the win ids.
    request_key: Vec<u8>,
    loaded: UserStanding,
    /// `loaded` came from the standing cache (which then holds it).
    cached: bool,
    now_ms: u64,
    /// The claimed drop's counter key.
    drop_key: Option<Vec<u8>>,
}

/// One win in a response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WinView {
    /// Unique id of the win.
    pub win_id: String,
    /// The prize.
    pub prize: String,
    /// `cash` or `coupon`.
    pub kind: String,
    /// Cash amount.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub amount_cents: Option<u64>,
    /// Coupon SKU.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sku: Option<String>,
    /// When it was won, RFC 3339.
    pub at: String,
    /// When it was won, ms since the epoch (its 100 ms slot is `at_ms / 100`).
    pub at_ms: u64,
}

/// A draw response body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrawResponse {
    /// `win`, `none`, `capped` or `not_live`.
    pub outcome: String,
    /// Why not live: `round_not_live`, `paused`, `group_not_started`, `window_closed`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// When the user's stagger group starts, for `group_not_started`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retry_at: Option<String>,
    /// The round.
    pub round: String,
    /// The occurrence drawn in.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub occurrence: Option<u64>,
    /// Prizes won.
    pub wins: Vec<WinView>,
    /// SeqNo of the config the draw used.
    pub seq: u64,
    /// The geo drop claimed, for a claim.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drop: Option<String>,
}

/// A win as stored (and listed to its user).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WinRecord {
    /// The win as the client saw it.
    #[serde(flatten)]
    pub view: WinView,
    /// Who won it.
    pub user: String,
    /// The request that won it.
    pub request_id: String,
    /// The round and occurrence.
    pub round: String,
    /// The occurrence.
    pub occurrence: u64,
    /// The partner that delivers it.
    pub partner: String,
    /// Config SeqNo used.
    pub seq: u64,
}

impl WinRecord {
    /// The new pending delivery of this win, made when the win is.
    pub fn pending_delivery(&self) -> Record {
        Record::pending(
            self.view.win_id.clone(),
            self.user.clone(),
            self.partner.clone(),
            self.view.prize.clone(),
            self.view.amount_cents,
            self.view.sku.clone(),
            self.view.at_ms,
        )
    }
}

/// Everything a draw needs; shared by all request handlers.
#[derive(Debug)]
pub struct DrawService {
    /// The live config.
    pub store: ConfigStore,
    /// Counters per prize and occurrence.
    pub book: CounterBook,
    /// Durable state.
    pub storage: Arc<Storage>,
    /// Per-user serialization.
    pub locks: UserLocks,
    /// Standings of recent users.
    pub standings: StandingCache,
    /// Metrics.
    pub metrics: Metrics,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The secret key of every draw's randomness (keyed with the request's idempotency key).
    pub draw_key: DrawKey,
    /// Geo drop tasks: the live index set and region counts.
    pub drops: crate::drops::Drops,
    /// Partner lanes; a durable win's delivery is queued on its partner's lane.
    pub deliveries: Arc<redrain_delivery::lanes::Deliveries>,
    /// Signing secrets, allowed partner hosts, queue bounds.
    pub delivery_settings: crate::delivery::DeliverySettings,
    /// Draws that changed nothing (so wrote nothing), by round and outcome, since the last
    /// per-slot ledger record of them.
    pub unrecorded: parking_lot::Mutex<HashMap<String, [u64; 4]>>,
}

/// Meta key prefix of the running totals of draws that changed nothing: `drawn/{round}/{outcome}`.
pub const DRAWN_PREFIX: &str = "drawn/";
/// Meta key of the last slot whose no-change draws were recorded.
pub const DRAWN_SLOT_KEY: &[u8] = b"drawn_slot";

impl DrawService {
    /// Makes the draws that changed nothing since the last call one ledger record (the 100 ms
    /// slot `slot`'s aggregate: `+n` per round and outcome); nothing when there were none.
    pub async fn record_unrecorded(&self, slot: u64) -> Result<(), crate::storage::StorageError> {
        let tally = std::mem::take(&mut *self.unrecorded.lock());
        if tally.is_empty() {
            return Ok(());
        }
        let mut ops = vec![Op::Put(
            Cf::Meta,
            DRAWN_SLOT_KEY.to_vec(),
            slot.to_le_bytes().to_vec(),
        )];
        for (round, counts) in &tally {
            for (outcome, n) in crate::metrics::OUTCOMES.iter().zip(counts) {
                if *n > 0 {
                    let key = format!("{DRAWN_PREFIX}{round}/{outcome}");
                    ops.push(Op::Add(Cf::Meta, key.into_bytes(), *n));
                }
            }
        }
        let written = self.storage.commit(ops).await;
        if written.is_err() {
            // Put the counts back so the next slot's record carries them.
            let mut now = self.unrecorded.lock();
            for (round, counts) in tally {
                let into = now.entry(round).or_default();
                for (a, b) in into.iter_mut().zip(counts) {
                    *a += b;
                }
            }
        }
        written
    }
}

impl DrawService {
    /// Validates and runs a draw; resolves once the answer is durable.
    pub async fn draw(
        self: &Arc<Self>,
        round_id: &str,
        req: DrawRequest,
    ) -> Result<Vec<u8>, ApiError> {
        check_ids(&req.user, &req.request_id)?;
        if !(1..=MAX_SHAKES).contains(&req.shakes) {
            return Err(ApiError::field(
                "shakes",
                format!("must be from 1 to {MAX_SHAKES}, got {}", req.shakes),
            ));
        }
        let snapshot = self.store.load();
        if snapshot.config.round(round_id).is_none() {
            return Err(ApiError::not_found("round", round_id));
        }
        // Run to completion even if the client goes away: the user's lock must not be released
        // while the draw's batch may still land.
        let this = self.clone();
        let round_id = round_id.to_string();
        tokio::spawn(async move { this.draw_locked(&snapshot, &round_id, &req).await })
            .await
            .map_err(ApiError::internal)?
    }

    async fn draw_locked(
        &self,
        snapshot: &Snapshot,
        round_id: &str,
        req: &DrawRequest,
    ) -> Result<Vec<u8>, ApiError> {
        let round = snapshot
            .config
            .round(round_id)
            .expect("checked by the caller");
        let campaign = &snapshot.config.campaigns[round.campaign];
        let key = request_key(&req.user, &req.request_id);
        let _guard = match self.lock_or_replay(&req.user, &key).await? {
            Locked::Guard(guard) => guard,
            Locked::Replay(stored) => return Ok(stored),
        };
        let (loaded, cached) = self.standing(round, campaign, &req.user)?;
        let now_ms = self.clock.now_ms();
        let mut rng = self.draw_key.rng(&key, None);
        let plan = self.plan(
            snapshot, round, &req.user, loaded, req.shakes, now_ms, &mut rng,
        );

        let mut response = DrawResponse {
            outcome: plan.outcome.as_str().to_string(),
            reason: None,
            retry_at: None,
            round: round.id.to_string(),
            occurrence: plan.occurrence.map(|o| o.index),
            wins: Vec::with_capacity(plan.wins.len()),
            seq: snapshot.seq.0,
            drop: None,
        };
        let outcome_index = match plan.outcome {
            Outcome::Win => 0,
            Outcome::None => 1,
            Outcome::Capped => 2,
            Outcome::NotLive(why) => {
                response.reason = Some(why.code().to_string());
                if let NotLive::GroupNotStarted { starts_at_ms } = why {
                    response.retry_at = Some(format_ms(starts_at_ms));
                }
                3
            }
        };
        // Nothing was drawn and no state changed: answer without a write.
        let Some(standing) = plan
            .standing
            .filter(|s| *s != loaded || !plan.wins.is_empty() || plan.outcome == Outcome::None)
        else {
            self.metrics.draws[outcome_index].fetch_add(1, Relaxed);
            let mut tally = self.unrecorded.lock();
            // Look up by &str first: no allocation once the round has a tally.
            match tally.get_mut(round.id.as_str()) {
                Some(counts) => counts[outcome_index] += 1,
                None => tally.entry(round.id.to_string()).or_default()[outcome_index] += 1,
            }
            return serde_json::to_vec(&response).map_err(ApiError::internal);
        };

        let commit = Commit {
            snapshot,
            round,
            user: &req.user,
            request_id: &req.request_id,
            request_key: key,
            loaded,
            cached,
            now_ms,
            drop_key: None,
        };
        let counted = &self.metrics.draws[outcome_index];
        self.commit_plan(commit, &plan, standing, response, counted)
            .await
    }

    /// Takes the user's lock (429 `user_busy` past the waiting bound), then looks for a stored
    /// answer under `request_key`.
    async fn lock_or_replay(&self, user: &str, request_key: &[u8]) -> Result<Locked<'_>, ApiError> {
        let guard = self.locks.lock(user).await.map_err(|e| {
            self.metrics.user_busy.fetch_add(1, Relaxed);
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "user_busy", e.to_string())
        })?;
        let stored = self
            .storage
            .get(Cf::Requests, request_key)
            .map_err(ApiError::unavailable)?;
        Ok(match stored {
            Some(body) => {
                self.metrics.replays.fetch_add(1, Relaxed);
                Locked::Replay(body)
            }
            None => Locked::Guard(guard),
        })
    }

    /// The user's standing in `round` and `campaign`, from the cache (`true`) or storage.
    fn standing(
        &self,
        round: &Round,
        campaign: &Campaign,
        user: &str,
    ) -> Result<(UserStanding, bool), ApiError> {
        let (round_key, campaign_key) = (round.id.as_str(), campaign.id.as_str());
        match self.standings.get(round_key, campaign_key, user) {
            Some(s) => Ok((s, true)),
            None => self
                .storage
                .standing(round_key, campaign_key, user)
                .map(|s| (s, false))
                .map_err(ApiError::unavailable),
        }
    }

    /// `quota::draw::plan` on this node's counters, counting its refusals.
    #[allow(clippy::too_many_arguments)] // reason: the draw's context, as `quota::draw::plan`
    fn plan(
        &self,
        snapshot: &Snapshot,
        round: &Round,
        user: &str,
        standing: UserStanding,
        shakes: u32,
        now_ms: u64,
        rng: &mut SmallRng,
    ) -> DrawPlan {
        let plan = quota::draw::plan(
            snapshot,
            &self.store,
            &self.book,
            round,
            user,
            standing,
            shakes,
            now_ms,
            rng,
        );
        self.metrics
            .slot_refusals
            .fetch_add(plan.slot_refusals.into(), Relaxed);
        self.metrics
            .quota_refusals
            .fetch_add(plan.quota_refusals.into(), Relaxed);
        plan
    }

    /// Makes a plan with wins (or a changed standing) durable, then answers; gives the wins
    /// back if the commit fails.
    async fn commit_plan(
        &self,
        c: Commit<'_>,
        plan: &DrawPlan,
        standing: UserStanding,
        mut response: DrawResponse,
        counted: &AtomicU64,
    ) -> Result<Vec<u8>, ApiError> {
        let (snapshot, round, now_ms) = (c.snapshot, c.round, c.now_ms);
        let campaign = &snapshot.config.campaigns[round.campaign];
        let occurrence = plan.occurrence.map_or(0, |o| o.index);
        let mut ops = Vec::with_capacity(4 + 3 * plan.wins.len());
        for (i, w) in plan.wins.iter().enumerate() {
            let prize = &round.prizes[w.prize];
            let view = win_view(&c.request_key, i, prize, w.amount.map(|a| a.0), now_ms);
            let record = WinRecord {
                view: view.clone(),
                user: c.user.to_string(),
                request_id: c.request_id.to_string(),
                round: round.id.to_string(),
                occurrence,
                partner: snapshot.config.partners[prize.partner].id.to_string(),
                seq: snapshot.seq.0,
            };
            let delivery = record.pending_delivery();
            ops.push(Op::Put(
                Cf::Wins,
                win_key(c.user, now_ms, &view.win_id),
                serde_json::to_vec(&record).map_err(ApiError::internal)?,
            ));
            ops.extend(crate::delivery::record_ops(&delivery, None));
            ops.push(Op::Add(
                Cf::Counters,
                counter_key(prize.id.as_str(), occurrence),
                1,
            ));
            response.wins.push(view);
        }
        if let Some(key) = c.drop_key {
            ops.push(Op::Add(Cf::Drops, key, 1));
        }
        ops.extend(standing_ops(
            round.id.as_str(),
            campaign.id.as_str(),
            c.user,
            &c.loaded,
            &standing,
        ));
        let body = serde_json::to_vec(&response).map_err(ApiError::internal)?;
        ops.push(Op::Put(Cf::Requests, c.request_key, body.clone()));

        if let Err(e) = self.storage.commit(ops).await {
            plan.give_back();
            self.metrics.storage_errors.fetch_add(1, Relaxed);
            return Err(ApiError::unavailable(e));
        }
        // A returning user's no-win draw leaves the cached standing as it was: no insert.
        if !(c.cached && standing == c.loaded) {
            self.standings
                .put(round.id.as_str(), campaign.id.as_str(), c.user, &standing);
        }
        counted.fetch_add(1, Relaxed);
        for (w, view) in plan.wins.iter().zip(&response.wins) {
            let prize = &round.prizes[w.prize];
            self.metrics.win(&prize.id, quota::limiter::slot_of(now_ms));
            if let Some(id) = DeliveryId::parse(&view.win_id) {
                self.deliveries
                    .enqueue(snapshot.config.partners[prize.partner].id.as_str(), id);
            }
        }
        Ok(body)
    }

    /// Validates and runs a claim of geo drop `drop_id`; resolves once the win is durable.
    pub async fn claim(
        self: &Arc<Self>,
        drop_id: &str,
        req: ClaimRequest,
    ) -> Result<Vec<u8>, ApiError> {
        check_ids(&req.user, &req.request_id)?;
        let at = Coord::new(req.lat, req.lng).map_err(|e| ApiError::field(e.field, e.problem))?;
        let (set, snapshot) = self
            .drops
            .consistent(|| self.store.load())
            .ok_or_else(republishing)?;
        let (task, drop) = match parse_drop_id(drop_id) {
            Ok(parsed) => Some(parsed),
            Err(e @ DropIdError::NotCanonical { .. }) => {
                return Err(ApiError::field("drop", e.to_string()))
            }
            Err(DropIdError::Malformed(_)) => None,
        }
        .filter(|(task, n)| {
            set.entry(task)
                .is_some_and(|e| (*n as usize) < e.live.coords.len())
        })
        .ok_or_else(|| ApiError::not_found("drop", drop_id))?;
        let (task, drop_id) = (task.to_string(), drop_id.to_string());
        // As for draws: run to completion even if the client goes away.
        let this = self.clone();
        let answer = tokio::spawn(async move {
            let entry = set.entry(&task).expect("checked above");
            this.claim_locked(&snapshot, entry, drop, &drop_id, at, &req)
                .await
        })
        .await
        .map_err(ApiError::internal)?;
        if answer
            .as_ref()
            .is_err_and(|e| e.status < 500 && e.code != "user_busy")
        {
            self.metrics.claim_refusals.fetch_add(1, Relaxed);
        }
        answer
    }

    async fn claim_locked(
        &self,
        snapshot: &Snapshot,
        entry: &Entry,
        drop: u32,
        drop_id: &str,
        at: Coord,
        req: &ClaimRequest,
    ) -> Result<Vec<u8>, ApiError> {
        let task = &snapshot.config.drops[entry.config_index];
        let round = &task.round;
        let campaign = &snapshot.config.campaigns[round.campaign];
        let request_key = claim_request_key(&req.user, &req.request_id);
        let _guard = match self.lock_or_replay(&req.user, &request_key).await? {
            Locked::Guard(guard) => guard,
            Locked::Replay(stored) => return Ok(stored),
        };
        let distance = entry.live.coords[drop as usize].distance_m(at);
        if distance > f64::from(task.radius_m) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "too_far",
                format!(
                    "drop {drop_id} is {distance:.1} m away; claims must come from within {} m",
                    task.radius_m
                ),
            ));
        }
        let (loaded, cached) = self.standing(round, campaign, &req.user)?;
        let claims = &entry.live.claims;
        claims.take(drop, task.per_drop).map_err(|e| match e {
            TakeError::Exhausted => ApiError::new(
                StatusCode::CONFLICT,
                "drop_exhausted",
                format!("every prize of drop {drop_id} was claimed"),
            ),
            TakeError::Retired => republishing(),
        })?;
        let now_ms = self.clock.now_ms();
        let mut rng = self.draw_key.rng(&request_key, Some(drop));
        let plan = self.plan(snapshot, round, &req.user, loaded, 1, now_ms, &mut rng);
        let Some(standing) = plan.standing.filter(|_| !plan.wins.is_empty()) else {
            claims.give_back(drop);
            return Err(claim_refusal(&plan, task, campaign));
        };
        let response = DrawResponse {
            outcome: Outcome::Win.as_str().to_string(),
            reason: None,
            retry_at: None,
            round: round.id.to_string(),
            occurrence: plan.occurrence.map(|o| o.index),
            wins: Vec::with_capacity(plan.wins.len()),
            seq: snapshot.seq.0,
            drop: Some(drop_id.to_string()),
        };
        let commit = Commit {
            snapshot,
            round,
            user: &req.user,
            request_id: &req.request_id,
            request_key,
            loaded,
            cached,
            now_ms,
            drop_key: Some(drop_key(round.id.as_str(), drop)),
        };
        let answer = self
            .commit_plan(commit, &plan, standing, response, &self.metrics.claims)
            .await;
        if answer.is_err() {
            claims.give_back(drop);
        }
        answer
    }

    /// The live snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.store.load()
    }

    /// Issued so far on this node for `round`'s prizes in `occurrence`.
    pub fn issued(&self, round: &Round, occurrence: u64) -> Vec<u64> {
        round
            .prizes
            .iter()
            .map(|p| self.book.issued(&p.id, occurrence).into())
            .collect()
    }
}

/// Checks a request's `user` and `request_id` against the id alphabet.
fn check_ids(user: &str, request_id: &str) -> Result<(), ApiError> {
    check_id(user).map_err(|e| ApiError::field("user", e.to_string()))?;
    check_id(request_id).map_err(|e| ApiError::field("request_id", e.to_string()))
}

/// Why a claim that passed the radius and drop checks won nothing.
fn claim_refusal(plan: &DrawPlan, task: &DropTask, campaign: &Campaign) -> ApiError {
    let conflict = |code, message: String| ApiError::new(StatusCode::CONFLICT, code, message);
    let round = &task.round;
    match plan.outcome {
        Outcome::NotLive(NotLive::Paused) => {
            conflict("paused", format!("task {} is paused", round.id))
        }
        Outcome::NotLive(_) => conflict(
            "outside_window",
            format!(
                "task {} takes claims from {} to {}",
                round.id,
                format_ms(round.starts_at_ms),
                format_ms(round.starts_at_ms + round.duration_ms)
            ),
        ),
        Outcome::Capped => conflict(
            "claim_cap_reached",
            format!(
                "the user reached a claim cap: {} in task {}{}",
                round.max_wins_per_user,
                round.id,
                campaign
                    .max_wins_per_user
                    .map_or(String::new(), |c| format!(
                        " or {c} wins in campaign {}",
                        campaign.id
                    ))
            ),
        ),
        _ if plan.slot_refusals > 0 => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "task {} is handing out prizes at its rate limit; retry shortly",
                round.id
            ),
        ),
        _ if plan.quota_refusals > 0 => conflict(
            "task_exhausted",
            format!("every prize of task {} was given out", round.id),
        ),
        _ => conflict(
            "cash_cap_reached",
            format!("the user reached the cash cap of campaign {}", campaign.id),
        ),
    }
}

fn republishing() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "republishing",
        "the drop tasks are being republished; retry with the same request_id",
    )
}

/// A win as the client sees it; its id is derived from the request's key, so a retry yields
/// the same id and draws and claims never share one.
fn win_view(
    request_key: &[u8],
    index: usize,
    prize: &quota::config::Prize,
    amount_cents: Option<u64>,
    at_ms: u64,
) -> WinView {
    let digest = Sha256::new()
        .chain_update(request_key)
        .chain_update([0])
        .chain_update((index as u32).to_be_bytes())
        .finalize();
    let win_id: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let (kind, sku) = match &prize.kind {
        PrizeKind::Cash { .. } => ("cash", None),
        PrizeKind::Coupon { sku } => ("coupon", Some(sku.clone())),
    };
    WinView {
        win_id,
        prize: prize.id.to_string(),
        kind: kind.into(),
        amount_cents,
        sku,
        at: format_ms(at_ms),
        at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::DrawKey;
    use rand::Rng;

    fn rolls(key: DrawKey, request: &[u8], drop: Option<u32>) -> Vec<u64> {
        let mut rng = key.rng(request, drop);
        (0..8).map(|_| rng.gen()).collect()
    }

    #[test]
    fn a_requests_randomness_follows_its_key_its_id_and_its_drop() {
        let (a, b) = (DrawKey::from_seed(1), DrawKey::from_seed(2));
        assert_eq!(rolls(a, b"u\0r1", None), rolls(a, b"u\0r1", None));
        assert_ne!(rolls(a, b"u\0r1", None), rolls(b, b"u\0r1", None));
        assert_ne!(rolls(a, b"u\0r1", None), rolls(a, b"u\0r2", None));
        assert_ne!(rolls(a, b"u\0r1", Some(1)), rolls(a, b"u\0r1", Some(2)));
        assert_eq!(format!("{a:?}"), "DrawKey(secret)", "the key is not logged");
    }
}
