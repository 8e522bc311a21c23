//! The delivery lanes' glue: their records in RocksDB (through the ledger), their settings from
//! the published config and the server's secrets, and the partner host allow-list.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use quota::config::{Config, Partner};
use quota::store::NodeShare;
use redrain_delivery::lanes::PartnerSettings;
use redrain_delivery::record::{DeliveryId, Record, State, Store, StoreError};

use crate::storage::{Cf, Op, Storage, Urgency};

/// Deliveries kept in RocksDB: the record under its win id in `deliveries`, and its place in
/// `outbox` (open: `o\0partner\0id` → when due, u64 LE, so a lane reads its queue back with one
/// prefix scan; dead: `x\0partner\0id`).
#[derive(Debug)]
pub struct RocksStore(pub Arc<Storage>);

/// Prefix of the outbox keys of open deliveries: `o\0{partner}\0{id}`.
pub const OUTBOX_PREFIX: &[u8] = b"o\0";
/// Prefix of the outbox keys of dead letters: `x\0{partner}\0{id}`.
pub const DEAD_PREFIX: &[u8] = b"x\0";

/// Outbox key of an open delivery.
pub fn outbox_key(partner: &str, id: &str) -> Vec<u8> {
    [OUTBOX_PREFIX, partner.as_bytes(), b"\0", id.as_bytes()].concat()
}

/// Outbox key of a dead letter.
pub fn dead_key(partner: &str, id: &str) -> Vec<u8> {
    [DEAD_PREFIX, partner.as_bytes(), b"\0", id.as_bytes()].concat()
}

/// The ops that store `record` and file it by its state; `was` is the state it is stored with
/// now (`None`: a new record), so only keys that exist are deleted.
pub fn record_ops(record: &Record, was: Option<State>) -> Vec<Op> {
    let open = || outbox_key(&record.partner, &record.win_id);
    let dead = || dead_key(&record.partner, &record.win_id);
    let json = serde_json::to_vec(record).expect("plain struct");
    let mut ops = vec![Op::Put(
        Cf::Deliveries,
        record.win_id.as_bytes().to_vec(),
        json,
    )];
    if record.state.is_open() {
        ops.push(Op::Put(
            Cf::Outbox,
            open(),
            record.due_ms().to_le_bytes().to_vec(),
        ));
    } else if was.is_some_and(State::is_open) {
        ops.push(Op::Delete(Cf::Outbox, open()));
    }
    if record.state == State::Dead {
        ops.push(Op::Put(Cf::Outbox, dead(), Vec::new()));
    } else if was == Some(State::Dead) {
        ops.push(Op::Delete(Cf::Outbox, dead()));
    }
    ops
}

impl RocksStore {
    fn save_as(
        &self,
        record: Record,
        was: State,
        urgency: Urgency,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let storage = self.0.clone();
        Box::pin(async move {
            storage
                .commit_as(record_ops(&record, Some(was)), urgency)
                .await
                .map_err(|e| StoreError(e.to_string()))
        })
    }

    /// Every id under `prefix` with its value read as a u64.
    fn ids(&self, prefix: Vec<u8>) -> Result<Vec<(DeliveryId, u64)>, StoreError> {
        let rows = self
            .0
            .scan_prefix(Cf::Outbox, &prefix, usize::MAX)
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(rows
            .iter()
            .filter_map(|(k, v)| {
                let id = std::str::from_utf8(&k[prefix.len()..]).ok()?;
                Some((DeliveryId::parse(id)?, crate::storage::decode_u64(v)))
            })
            .collect())
    }
}

/// A stored record's JSON, read back.
fn parse_record(id: DeliveryId, bytes: Option<Vec<u8>>) -> Result<Option<Record>, StoreError> {
    bytes
        .map(|b| serde_json::from_slice(&b).map_err(|e| StoreError(format!("record {id}: {e}"))))
        .transpose()
}

impl Store for RocksStore {
    fn load(&self, id: DeliveryId) -> Result<Option<Record>, StoreError> {
        let bytes = self
            .0
            .get(Cf::Deliveries, id.to_string().as_bytes())
            .map_err(|e| StoreError(e.to_string()))?;
        parse_record(id, bytes)
    }

    fn load_many(&self, ids: &[DeliveryId]) -> Vec<Result<Option<Record>, StoreError>> {
        let keys: Vec<String> = ids.iter().map(DeliveryId::to_string).collect();
        match self.0.get_many(Cf::Deliveries, &keys) {
            Ok(got) => ids
                .iter()
                .zip(got)
                .map(|(&id, bytes)| parse_record(id, bytes))
                .collect(),
            Err(e) => vec![Err(StoreError(e.to_string())); ids.len()],
        }
    }

    fn save(&self, record: Record, was: State) -> BoxFuture<'static, Result<(), StoreError>> {
        self.save_as(record, was, Urgency::Now)
    }

    fn save_answer(
        &self,
        record: Record,
        was: State,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.save_as(record, was, Urgency::Batch)
    }

    fn outbox(&self, partner: &str) -> Result<Vec<(DeliveryId, u64)>, StoreError> {
        self.ids(outbox_key(partner, ""))
    }

    fn dead_letters(&self, partner: &str) -> Result<Vec<DeliveryId>, StoreError> {
        Ok(self
            .ids(dead_key(partner, ""))?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }
}

/// Delivery settings of the server (not of a campaign): signing secrets and allowed hosts.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Active signing secrets per partner id; partners not listed sign with `default_secrets`.
    pub secrets: HashMap<String, Vec<String>>,
    /// Secrets of partners without their own (`*=SECRET`; the demo secret only when the server
    /// was given no secret at all). Empty: a partner without its own secret is refused when
    /// a config naming it is published or loaded at start-up.
    pub default_secrets: Vec<String>,
    /// Hosts partner URLs may point at.
    pub allowed_hosts: Vec<String>,
    /// Most ids a lane keeps in memory; the rest wait in its outbox.
    pub max_queued: usize,
}

/// The demo's signing secret (partner-sim's default), used when the server is given none.
pub use redrain_delivery::sim::DEMO_SECRET;

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            secrets: HashMap::new(),
            default_secrets: vec![DEMO_SECRET.to_string()],
            allowed_hosts: vec!["127.0.0.1".into(), "localhost".into(), "[::1]".into()],
            max_queued: 2_000_000,
        }
    }
}

impl DeliverySettings {
    /// Each configured partner's lane settings on a node owning `share` of every rate: the
    /// nodes' lanes together never pass a partner's share of any 100 ms slot (each lane sends its
    /// node's room in the slot) nor its in-flight cap.
    pub fn partners(&self, config: &Config, share: NodeShare) -> Vec<PartnerSettings> {
        config
            .partners
            .iter()
            .map(|p| self.partner(p, share))
            .collect()
    }

    /// One partner's lane settings on a node owning `share` of every rate.
    pub fn partner(&self, p: &Partner, share: NodeShare) -> PartnerSettings {
        PartnerSettings {
            id: p.id.to_string(),
            url: p.url.clone(),
            rate_per_s: p.rate_per_s,
            node: share,
            max_in_flight: share.rate(p.max_in_flight),
            timeout_ms: p.timeout_ms.into(),
            paused: p.paused,
            retry_deadline_ms: u64::from(p.retry_deadline_s) * 1000,
            deferred_retry_ms: u64::from(p.deferred_retry_s) * 1000,
            secrets: self
                .secrets
                .get(p.id.as_str())
                .unwrap_or(&self.default_secrets)
                .clone(),
        }
    }

    /// Refuses a config whose partner URLs point outside the allowed hosts, or whose partner
    /// rate or in-flight cap would leave a node of `share` with none: `(field, problem)`.
    pub fn check_partners(
        &self,
        config: &Config,
        share: NodeShare,
    ) -> Result<(), (String, String)> {
        for (i, p) in config.partners.iter().enumerate() {
            self.check_partner(p, share)
                .map_err(|(field, why)| (format!("partners[{i}].{field}"), why))?;
        }
        Ok(())
    }

    /// Refuses a partner that has no signing secret (neither its own nor a default).
    pub fn check_secret(&self, p: &Partner) -> Result<(), String> {
        if self.secrets.contains_key(p.id.as_str()) || !self.default_secrets.is_empty() {
            return Ok(());
        }
        Err(format!(
            "partner {:?} has no signing secret; start the engine with --partner-secret {}=SECRET (or *=SECRET for every partner without its own)",
            p.id.as_str(),
            p.id.as_str()
        ))
    }

    /// [`DeliverySettings::check_partners`] for one partner: `(field, problem)`.
    pub fn check_partner(&self, p: &Partner, share: NodeShare) -> Result<(), (String, String)> {
        self.check_secret(p)
            .map_err(|why| ("id".to_string(), why))?;
        for (field, value) in [
            ("rate_per_s", p.rate_per_s),
            ("max_in_flight", p.max_in_flight),
        ] {
            if share.rate(value) == 0 {
                return Err((
                    field.to_string(),
                    format!(
                        "{value} split over {} engine nodes leaves node {} none; it must be at least {}",
                        share.count, share.index, share.count
                    ),
                ));
            }
        }
        let host = p
            .url
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .unwrap_or_default();
        if !self
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&host))
        {
            return Err((
                "url".to_string(),
                format!(
                    "host {host:?} is not an allowed partner host ({}); start the engine with --partner-host {host} to allow it",
                    self.allowed_hosts.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// Most redelivery requests a user may make per window.
pub const MAX_ASKS: u32 = 5;
/// The redelivery rate window.
pub const ASK_WINDOW_MS: u64 = 60_000;
/// Keys a [`WindowLimiter`] tracks at once.
const MAX_ASKERS: usize = 100_000;

/// At most `max` events per key in each window of `window_ms` (the window starts at a key's
/// first event): "deliver it again" requests per user, login attempts per operator name.
///
/// Tracks at most `capacity` keys (100,000 by default). A full table never refuses a key it
/// has not seen (that would let anyone lock everyone out with made-up names): it drops the
/// expired windows, and if still full, forgets the oldest tenth of the keys, keys still under
/// their limit before keys at it, so a flood of new names must first push out everything else
/// before a key being hammered is forgotten. Forgetting a key only gives it a fresh window.
#[derive(Debug)]
pub struct WindowLimiter {
    max: u32,
    window_ms: u64,
    capacity: usize,
    keys: parking_lot::Mutex<HashMap<String, (u64, u32)>>,
}

impl WindowLimiter {
    /// A limiter of `max` events per `window_ms`.
    pub fn new(max: u32, window_ms: u64) -> Self {
        Self::with_capacity(max, window_ms, MAX_ASKERS)
    }

    /// A limiter of `max` events per `window_ms` tracking at most `capacity` keys.
    pub fn with_capacity(max: u32, window_ms: u64, capacity: usize) -> Self {
        Self {
            max,
            window_ms,
            capacity: capacity.max(1),
            keys: Default::default(),
        }
    }

    /// The limit on "deliver it again": [`MAX_ASKS`] per [`ASK_WINDOW_MS`].
    pub fn asks() -> Self {
        Self::new(MAX_ASKS, ASK_WINDOW_MS)
    }

    /// Counts one event of `key` at `now_ms`; `false` when the key is over the limit.
    pub fn allow(&self, key: &str, now_ms: u64) -> bool {
        let mut keys = self.keys.lock();
        if keys.len() >= self.capacity && !keys.contains_key(key) {
            self.make_room(&mut keys, now_ms);
        }
        let entry = keys.entry(key.to_string()).or_insert((now_ms, 0));
        if now_ms >= entry.0 + self.window_ms {
            *entry = (now_ms, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= self.max
    }

    /// Drops expired windows; if the table is still full, a tenth of it (at least one key):
    /// keys under their limit first, oldest first, then keys at their limit, newest first, so
    /// a key being hammered since before a flood (the name under attack) is the last to get a
    /// fresh window. One pass per tenth of the capacity, so a flood of new keys costs O(1) per
    /// key, amortized.
    fn make_room(&self, keys: &mut HashMap<String, (u64, u32)>, now_ms: u64) {
        keys.retain(|_, (start, _)| now_ms < *start + self.window_ms);
        if keys.len() < self.capacity {
            return;
        }
        let rank = |&(start, n): &(u64, u32)| match n >= self.max {
            false => (false, start),
            true => (true, u64::MAX - start),
        };
        let mut ranks: Vec<(bool, u64)> = keys.values().map(rank).collect();
        let nth = (ranks.len() / 10).min(ranks.len() - 1);
        let (_, &mut cutoff, _) = ranks.select_nth_unstable(nth);
        keys.retain(|_, v| rank(v) > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L5: with only `--partner-secret wallet=…`, the coupon partner was signed with the
    /// public demo secret.
    #[test]
    fn a_partner_without_a_secret_is_refused_when_others_have_one() {
        let config = Config::from_toml(
            r#"
[[campaigns]]
id = "c"
starts_at = "2026-01-01T00:00:00Z"
ends_at = "2036-01-01T00:00:00Z"

[[rounds]]
id = "r"
campaign = "c"
starts_at = "2026-01-01T00:00:00Z"
duration_s = 60
participation_s = 60
max_wins_per_user = 1
no_win_weight = 1

[[rounds.prizes]]
id = "cash"
kind = "cash"
amount_cents = 1
partner = "wallet"
quota = 1
rate_per_s = 1
weight = 1

[[partners]]
id = "wallet"
kind = "wallet"
url = "http://127.0.0.1:1/deliver"
rate_per_s = 10
max_in_flight = 2
timeout_ms = 1000

[[partners]]
id = "coupons"
kind = "coupon"
url = "http://127.0.0.1:2/deliver"
rate_per_s = 10
max_in_flight = 2
timeout_ms = 1000
"#,
        )
        .expect("a valid config");
        let share = NodeShare::default();
        let wallet_only = DeliverySettings {
            secrets: HashMap::from([("wallet".into(), vec!["wallet-secret-0123456789".into()])]),
            default_secrets: Vec::new(),
            ..DeliverySettings::default()
        };
        let (field, why) = wallet_only.check_partners(&config, share).unwrap_err();
        assert_eq!(field, "partners[1].id");
        assert!(why.contains("\"coupons\" has no signing secret"), "{why}");
        let with_default = DeliverySettings {
            default_secrets: vec!["default-secret-0123456789".into()],
            ..wallet_only.clone()
        };
        assert_eq!(with_default.check_partners(&config, share), Ok(()));
        // No secret given at all: the demo secret, as before.
        assert_eq!(
            DeliverySettings::default().check_partners(&config, share),
            Ok(())
        );
    }

    #[test]
    fn asks_are_limited_per_user_and_window() {
        let l = WindowLimiter::asks();
        for _ in 0..MAX_ASKS {
            assert!(l.allow("u", 1_000));
        }
        assert!(!l.allow("u", 1_001));
        assert!(l.allow("v", 1_001));
        assert!(l.allow("u", 1_000 + ASK_WINDOW_MS));
    }

    #[test]
    fn a_full_table_admits_new_keys_and_keeps_the_blocked_ones() {
        let l = WindowLimiter::with_capacity(2, 60_000, 100);
        // "victim" is at its limit; 99 made-up keys fill the table.
        assert!(l.allow("victim", 0) && l.allow("victim", 0));
        for i in 0..99 {
            assert!(l.allow(&format!("made-up-{i}"), 1 + i));
        }
        // Unseen keys are still admitted, and the table stays bounded.
        for i in 0..1_000 {
            assert!(l.allow(&format!("operator-{i}"), 200 + i), "operator-{i}");
            assert!(l.keys.lock().len() <= 100);
        }
        // The blocked key was not the one forgotten: keys under their limit went first.
        assert!(!l.allow("victim", 1_500));
        // Nor when the flood's own keys are at their limit too: those, newer, go first.
        for i in 0..500 {
            let key = format!("blocked-{i}");
            assert!(l.allow(&key, 1_000 + i) && l.allow(&key, 1_000 + i));
            assert!(!l.allow(&key, 1_000 + i));
        }
        assert!(!l.allow("victim", 1_600));
        // Expired windows go before anything else.
        assert!(l.allow("late", 60_000 + 1_500));
        assert!(l.keys.lock().len() <= 100);
        assert!(l.allow("victim", 60_000 + 1_500));
    }
}
