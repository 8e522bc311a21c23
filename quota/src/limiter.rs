//! Per-prize quota counters and 100 ms slot limiters, both lock-free.
//!
//! A [`QuotaCounter`] packs `issued` and `limit` into one atomic word so that a take and a
//! limit change (a publish) can never interleave into an over-issue. A [`SlotLimiter`] packs the
//! current slot, that slot's room and the room used into one word; the room is fixed when the
//! slot opens, so a rate change applies from the next slot. With several nodes a slot's room is
//! this node's part of the slot's share ([`NodeShare::slot_room`]), so the nodes together never
//! pass the share.
//!
//! Unused room in a slot does **not** carry over to later slots: a quiet slot is lost, so a
//! burst after a lull can never exceed the configured share.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::NodeShare;

/// Length of a slot.
pub const SLOT_MS: u64 = 100;
/// Slots in a second.
pub const SLOTS_PER_S: u64 = 1000 / SLOT_MS;

/// The share of `rate_per_s` granted to slot `slot_in_second` (0..10) of a second.
///
/// The remainder `rate % 10` is spread evenly (Bresenham), so the ten shares of a second sum
/// exactly to the rate and no two slots differ by more than one.
pub fn slot_share(rate_per_s: u32, slot_in_second: u64) -> u32 {
    let r = u64::from(rate_per_s);
    let j = slot_in_second % SLOTS_PER_S;
    ((j + 1) * r / SLOTS_PER_S - j * r / SLOTS_PER_S) as u32
}

/// The slot number (100 ms since the epoch) that `at_ms` falls in.
pub fn slot_of(at_ms: u64) -> u64 {
    at_ms / SLOT_MS
}

/// How many prizes of a round occurrence are issued, against a limit; never past it, never below 0.
#[derive(Debug)]
pub struct QuotaCounter(AtomicU64);

const HALF: u32 = 32;
const LOW: u64 = (1 << HALF) - 1;

impl QuotaCounter {
    /// A counter with `issued` already taken out of `limit` (restored after a restart).
    pub fn new(issued: u32, limit: u32) -> Self {
        Self(AtomicU64::new(pack_quota(issued, limit)))
    }

    /// Takes one if `issued < limit`; returns whether it did.
    pub fn try_take(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (issued, limit) = unpack_quota(w);
                (issued < limit).then(|| pack_quota(issued + 1, limit))
            })
            .is_ok()
    }

    /// Returns one taken by [`try_take`](Self::try_take) whose win could not be made durable.
    pub fn give_back(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (issued, limit) = unpack_quota(w);
                (issued > 0).then(|| pack_quota(issued - 1, limit))
            });
    }

    /// Sets a new limit unless it is below what was already issued; on refusal returns `issued`.
    pub fn set_limit(&self, limit: u32) -> Result<(), u32> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (issued, _) = unpack_quota(w);
                (issued <= limit).then(|| pack_quota(issued, limit))
            })
            .map(drop)
            .map_err(|w| unpack_quota(w).0)
    }

    /// Lowers the limit to what was issued, so nothing more can be taken (a give-back makes
    /// room for one take again, never more); returns `issued`.
    pub fn close(&self) -> u32 {
        let w = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (issued, _) = unpack_quota(w);
                Some(pack_quota(issued, issued))
            })
            .unwrap_or_else(|w| w);
        unpack_quota(w).0
    }

    /// Prizes issued so far.
    pub fn issued(&self) -> u32 {
        unpack_quota(self.0.load(Ordering::Acquire)).0
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        unpack_quota(self.0.load(Ordering::Acquire)).1
    }
}

fn pack_quota(issued: u32, limit: u32) -> u64 {
    (u64::from(issued) << HALF) | u64::from(limit)
}

fn unpack_quota(w: u64) -> (u32, u32) {
    ((w >> HALF) as u32, (w & LOW) as u32)
}

/// Room per 100 ms slot for one prize on one node.
#[derive(Debug, Default)]
pub struct SlotLimiter(AtomicU64);

// Layout of the word: slot tag (28 bits, wraps every ~310 days) | share (18) | used (18).
const FIELD_BITS: u32 = 18;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;
const TAG_BITS: u32 = 64 - 2 * FIELD_BITS;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// Greatest share one slot can hold (the config caps rates well below 10× this).
pub const MAX_SLOT_SHARE: u32 = FIELD_MASK as u32;

impl SlotLimiter {
    /// Takes one unit of room in the slot containing `now_ms`, opening that slot with `node`'s
    /// room in it ([`NodeShare::slot_room`]) of `rate_per_s`, the rate of all nodes together, if
    /// it is new. A caller whose clock reading lags a slot that already opened is refused, so an
    /// old slot is never reopened.
    pub fn try_take(&self, now_ms: u64, rate_per_s: u32, node: NodeShare) -> bool {
        let slot = slot_of(now_ms);
        let tag = slot & TAG_MASK;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (cur_tag, share, used) = unpack_slot(w);
                let ahead = tag.wrapping_sub(cur_tag) & TAG_MASK;
                let (share, used) = if ahead == 0 && w != 0 {
                    (share, used)
                } else if ahead < TAG_MASK / 2 || w == 0 {
                    (node.slot_room(rate_per_s, slot).min(MAX_SLOT_SHARE), 0)
                } else {
                    return None; // a stale reading of an older slot
                };
                (used < share).then(|| pack_slot(tag, share, used + 1))
            })
            .is_ok()
    }

    /// Leaves no room in the slot containing `now_ms`; a later slot opens as usual. Only for a
    /// limiter no take has used yet ([`crate::book::CounterBook::starting_at`]).
    pub(crate) fn exhaust(&self, now_ms: u64) {
        // A share of 0 with 1 used: never the word 0 of a limiter that has not opened a slot.
        let word = pack_slot(slot_of(now_ms) & TAG_MASK, 0, 1);
        self.0.store(word, Ordering::Release);
    }

    /// Room used in the slot containing `now_ms` (0 if that slot has not opened).
    pub fn used_in(&self, now_ms: u64) -> u32 {
        let (tag, _, used) = unpack_slot(self.0.load(Ordering::Acquire));
        if tag == slot_of(now_ms) & TAG_MASK {
            used
        } else {
            0
        }
    }
}

fn pack_slot(tag: u64, share: u32, used: u32) -> u64 {
    (tag << (2 * FIELD_BITS)) | (u64::from(share) << FIELD_BITS) | u64::from(used)
}

fn unpack_slot(w: u64) -> (u64, u32, u32) {
    (
        w >> (2 * FIELD_BITS),
        ((w >> FIELD_BITS) & FIELD_MASK) as u32,
        (w & FIELD_MASK) as u32,
    )
}

/// The counters of one prize in one round occurrence.
#[derive(Debug)]
pub struct PrizeCounters {
    /// Issued against quota.
    pub quota: QuotaCounter,
    /// Issue rate per slot.
    pub slots: SlotLimiter,
}

impl PrizeCounters {
    /// Fresh counters.
    pub fn new(issued: u32, limit: u32) -> Self {
        Self {
            quota: QuotaCounter::new(issued, limit),
            slots: SlotLimiter::default(),
        }
    }
}

/// Which way a take was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The prize's quota is used up.
    Quota,
    /// The current slot has no room left.
    Slot,
}

impl PrizeCounters {
    /// Takes one prize at `now_ms` if both the slot (`node`'s room in it of `rate_per_s`, the
    /// prize's rate over all nodes) and the quota have room.
    ///
    /// The slot is checked first: it refuses most often and costs nothing to give up; a slot
    /// unit spent on an exhausted quota is harmless because that prize cannot be won anyway.
    pub fn try_take(&self, now_ms: u64, rate_per_s: u32, node: NodeShare) -> Result<(), Refusal> {
        if !self.slots.try_take(now_ms, rate_per_s, node) {
            return Err(Refusal::Slot);
        }
        if !self.quota.try_take() {
            return Err(Refusal::Quota);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALONE: NodeShare = NodeShare::ALONE;

    #[test]
    fn an_exhausted_slot_refuses_and_the_next_slot_opens() {
        let s = SlotLimiter::default();
        s.exhaust(1_050);
        assert!(!s.try_take(1_099, 100, ALONE), "the slot of the start");
        assert!(s.try_take(1_100, 100, ALONE), "the next slot");
        let fresh = SlotLimiter::default();
        fresh.exhaust(0); // slot tag 0: still not taken for a limiter that never opened
        assert!(!fresh.try_take(50, 100, ALONE));
    }

    #[test]
    fn shares_sum_to_rate_and_spread_evenly() {
        for rate in [0, 1, 7, 10, 15, 99, 1001] {
            let shares: Vec<u32> = (0..10).map(|j| slot_share(rate, j)).collect();
            assert_eq!(shares.iter().sum::<u32>(), rate, "{shares:?}");
            let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "{shares:?}");
        }
    }

    #[test]
    fn quota_never_passes_limit_and_limit_never_below_issued() {
        let q = QuotaCounter::new(0, 2);
        assert!(q.try_take() && q.try_take());
        assert!(!q.try_take());
        assert_eq!(q.set_limit(1), Err(2));
        assert_eq!(q.set_limit(3), Ok(()));
        assert!(q.try_take());
        q.give_back();
        q.give_back();
        q.give_back();
        q.give_back();
        assert_eq!(q.issued(), 0, "give_back never goes below zero");
    }

    #[test]
    fn slot_refuses_past_share_and_reopens_next_slot() {
        let s = SlotLimiter::default();
        // rate 15: slot 0 share 1, slot 1 share 2
        assert!(s.try_take(1_000_000, 15, ALONE));
        assert!(!s.try_take(1_000_050, 15, ALONE));
        assert!(s.try_take(1_000_100, 15, ALONE));
        assert!(s.try_take(1_000_150, 15, ALONE));
        assert!(!s.try_take(1_000_199, 15, ALONE));
        // a lagging reader of the older slot is refused, never reopening it
        assert!(!s.try_take(1_000_099, 15, ALONE));
    }

    #[test]
    fn rate_change_applies_from_next_slot() {
        let s = SlotLimiter::default();
        assert!(s.try_take(500, 10, ALONE)); // share 1 for this slot
        assert!(
            !s.try_take(510, 1000, ALONE),
            "the open slot keeps its share"
        );
        for _ in 0..100 {
            assert!(s.try_take(600, 1000, ALONE));
        }
        assert!(!s.try_take(600, 1000, ALONE));
    }
}
