//! The durable delivery record, its states, and the store the lanes keep it in.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// A delivery's id: the id of the win it delivers (12 bytes, written as 24 hex digits). One
/// win has one delivery, so the id is also the partner's idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(pub [u8; 12]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex() {
        let id = DeliveryId([0, 1, 0x7f, 0x80, 0xff, 0xab, 2, 3, 4, 5, 6, 0xfe]);
        assert_eq!(id.to_string(), "00017f80ffab0203040506fe");
        assert_eq!(DeliveryId::parse(&id.to_string()), Some(id));
        assert_eq!(DeliveryId::parse("00017F80FFAB0203040506FE"), Some(id));
        assert_eq!(DeliveryId::parse("00017f80ffab0203040506f"), None);
        assert_eq!(DeliveryId::parse("00017f80ffab0203040506fg"), None);
        assert_eq!(DeliveryId::parse("+0017f80ffab0203040506fe"), None);
    }
}

impl DeliveryId {
    /// Parses 24 lowercase or uppercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 24 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; 12];
        for (i, pair) in b.chunks(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(DeliveryId(out))
    }
}

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 24];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        f.write_str(std::str::from_utf8(&out).expect("hex digits are ASCII"))
    }
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Queued (or being sent) and not yet answered.
    Pending,
    /// The partner was in trouble; sent again at `next_at_ms`.
    Retrying,
    /// The partner says the user has no account yet; sent again when the user asks, or at
    /// `next_at_ms` (0: not before the user asks).
    Deferred,
    /// The partner took it. Final.
    Delivered,
    /// Given up (deadline passed or the partner refused it for good); an operator can re-drive
    /// it.
    Dead,
}

impl State {
    /// Whether the lane still has work to do for it.
    pub fn is_open(self) -> bool {
        matches!(self, State::Pending | State::Retrying | State::Deferred)
    }

    /// What the user is told: `pending`, `delivered`, `deferred` or `failed`.
    pub fn user_view(self) -> &'static str {
        match self {
            State::Pending | State::Retrying => "pending",
            State::Deferred => "deferred",
            State::Delivered => "delivered",
            State::Dead => "failed",
        }
    }

    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Retrying => "retrying",
            State::Deferred => "deferred",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }
}

/// One delivery, as stored (JSON) under its win id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The win delivered; also the delivery's id.
    pub win_id: String,
    /// Recipient.
    pub user: String,
    /// The partner.
    pub partner: String,
    /// The prize.
    pub prize: String,
    /// Cash amount.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub amount_cents: Option<u64>,
    /// Coupon SKU.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sku: Option<String>,
    /// Where it is.
    pub state: State,
    /// When the win was made (ms since the epoch).
    pub created_ms: u64,
    /// Requests sent so far.
    #[serde(default)]
    pub attempts: u32,
    /// When a retrying or deferred delivery is due again.
    #[serde(default)]
    pub next_at_ms: u64,
    /// Retries stop after this (0: the partner's deadline counted from `created_ms`).
    #[serde(default)]
    pub deadline_ms: u64,
    /// When the partner took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_ms: Option<u64>,
    /// The last failure, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Record {
    /// A new pending delivery of a win.
    pub fn pending(
        win_id: String,
        user: String,
        partner: String,
        prize: String,
        amount_cents: Option<u64>,
        sku: Option<String>,
        created_ms: u64,
    ) -> Self {
        Record {
            win_id,
            user,
            partner,
            prize,
            amount_cents,
            sku,
            state: State::Pending,
            created_ms,
            attempts: 0,
            next_at_ms: 0,
            deadline_ms: 0,
            delivered_ms: None,
            last_error: None,
        }
    }

    /// The delivery's id (`None` for a win id that is not one: never sent).
    pub fn id(&self) -> Option<DeliveryId> {
        DeliveryId::parse(&self.win_id)
    }

    /// When an open delivery is due: 0 (now) when pending, `next_at_ms` when retrying or
    /// deferred with a schedule, [`NOT_SCHEDULED`] when deferred without one.
    pub fn due_ms(&self) -> u64 {
        match self.state {
            State::Pending => 0,
            State::Retrying => self.next_at_ms,
            State::Deferred if self.next_at_ms > 0 => self.next_at_ms,
            _ => NOT_SCHEDULED,
        }
    }
}

/// Due time of a delivery that waits until someone asks.
pub const NOT_SCHEDULED: u64 = u64::MAX;

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("delivery store: {0}")]
pub struct StoreError(pub String);

/// Where delivery records live. The engine keeps them in RocksDB, written through its ledger.
pub trait Store: Send + Sync + 'static {
    /// The record of one delivery.
    fn load(&self, id: DeliveryId) -> Result<Option<Record>, StoreError>;
    /// The records of many deliveries, in the order of `ids` (a store that can read them in
    /// one batch does so).
    fn load_many(&self, ids: &[DeliveryId]) -> Vec<Result<Option<Record>, StoreError>> {
        ids.iter().map(|&id| self.load(id)).collect()
    }
    /// Writes a record that is stored with state `was`, durably, and files it by its state:
    /// open deliveries in the partner's outbox, dead ones in its dead letters, delivered ones
    /// in neither.
    fn save(&self, record: Record, was: State) -> BoxFuture<'static, Result<(), StoreError>>;
    /// [`Store::save`] of a partner's answer. Only the lane waits on it, so a store may hold it
    /// briefly to make several durable together.
    fn save_answer(
        &self,
        record: Record,
        was: State,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.save(record, was)
    }
    /// A partner's outbox (open deliveries) in id order: each id with when it is due (0: now;
    /// [`NOT_SCHEDULED`]: only when the user or an operator asks).
    fn outbox(&self, partner: &str) -> Result<Vec<(DeliveryId, u64)>, StoreError>;
    /// The ids in a partner's dead letters.
    fn dead_letters(&self, partner: &str) -> Result<Vec<DeliveryId>, StoreError>;
}
