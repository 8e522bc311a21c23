//! A partner lane's send throttle: 100 ms slots, slowed by trouble, recovering gradually.
//!
//! The partner's `rate_per_s` is split over the ten 100 ms slots of a second exactly as a
//! prize's rate is ([`quota::limiter::slot_share`]): each second sums to the rate and no slot
//! gets more than its share. Slots rather than GCRA because partners state (and measure) their
//! limit per window, and a slot share is a hard bound per window: there is no burst allowance to
//! tune and nothing to overshoot. Unused room does not carry over.
//!
//! Two refinements keep the bound true at the receiver, not just at the sender:
//! - **Tail carry.** A request started in the last [`GUARD_MS`] of a slot may land in the
//!   receiver's next slot (transit, scheduling; sender and receiver read the same wall clock
//!   on one host, and near enough across hosts for 100 ms windows). So it counts against both
//!   slots: the next slot opens with those requests already used, and the tail of a slot may
//!   not start more than the next slot's share. Whichever slot the receiver counts it in, no
//!   slot sees more than its share, and a request due near a slot's end is not held back.
//! - **Slow-down.** A 429, a 5xx or a timeout halves the lane's rate (at most once per slot, so
//!   one burst of failures counts once), down to 1/16 of the configured rate; `Retry-After`
//!   stops the lane until then. Each later slot that sends without trouble gives back 1/32 of
//!   the configured rate, so a lane at 1/16 is back to full speed in about 3 s of clean slots.

use quota::limiter::{slot_of, slot_share, SLOT_MS};

/// Requests started in the last this many ms of a slot also count against the next slot.
pub const GUARD_MS: u64 = 15;
/// Speed is kept in 1/1024ths of the configured rate.
const FULL: u32 = 1024;
/// The slowest a lane goes: 1/16 of its rate.
const SLOWEST: u32 = FULL / 16;
/// Speed given back per clean slot.
const RECOVERY: u32 = FULL / 32;
/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER_MS: u64 = 60_000;

/// A lane's throttle. Not thread-safe on its own: one lane task owns it.
#[derive(Debug, Clone)]
pub struct Throttle {
    rate_per_s: u32,
    speed: u32,
    slot: u64,
    share: u32,
    used: u32,
    /// Requests started in this slot's last [`GUARD_MS`].
    tail: u32,
    slot_troubled: bool,
    paused_until_ms: u64,
}

impl Throttle {
    /// A throttle at full speed.
    pub fn new(rate_per_s: u32) -> Self {
        Throttle {
            rate_per_s,
            speed: FULL,
            slot: u64::MAX,
            share: 0,
            used: 0,
            tail: 0,
            slot_troubled: false,
            paused_until_ms: 0,
        }
    }

    /// Changes the configured rate; applies from the next slot.
    pub fn set_rate(&mut self, rate_per_s: u32) {
        self.rate_per_s = rate_per_s;
    }

    /// The rate the lane sends at now (requests a second).
    pub fn current_rate(&self) -> u32 {
        if self.rate_per_s == 0 {
            return 0;
        }
        ((u64::from(self.rate_per_s) * u64::from(self.speed) / u64::from(FULL)) as u32).max(1)
    }

    /// The configured rate.
    pub fn rate_per_s(&self) -> u32 {
        self.rate_per_s
    }

    /// Moves to `now_ms`'s slot; a time from an earlier slot (read before another thread moved
    /// the throttle on, or a clock stepped back) counts as the current slot, never reopens one.
    fn open(&mut self, now_ms: u64) -> u64 {
        let slot = slot_of(now_ms);
        if self.slot != u64::MAX && slot <= self.slot {
            return now_ms.max(self.slot * SLOT_MS);
        }
        if self.slot != u64::MAX && self.used > 0 && !self.slot_troubled {
            self.speed = (self.speed + RECOVERY).min(FULL);
        }
        // The previous slot's tail may land in this one: it is already used.
        let carried = if slot == self.slot.wrapping_add(1) {
            self.tail
        } else {
            0
        };
        self.slot = slot;
        self.share = slot_share(self.current_rate(), slot);
        self.used = carried;
        self.tail = 0;
        self.slot_troubled = false;
        now_ms
    }

    /// Takes room for one request at `now_ms`, or says when to ask again.
    pub fn try_take(&mut self, now_ms: u64) -> Result<(), u64> {
        if now_ms < self.paused_until_ms {
            return Err(self.paused_until_ms);
        }
        let now_ms = self.open(now_ms);
        let next_slot = (self.slot + 1) * SLOT_MS;
        if self.used >= self.share {
            return Err(next_slot);
        }
        if now_ms + GUARD_MS >= next_slot {
            if self.tail >= slot_share(self.current_rate(), self.slot + 1) {
                return Err(next_slot);
            }
            self.tail += 1;
        }
        self.used += 1;
        Ok(())
    }

    /// The partner was in trouble (429, 5xx, timeout): slow down, and wait `retry_after_ms`
    /// (capped at [`MAX_RETRY_AFTER_MS`]) if the partner said so.
    pub fn trouble(&mut self, now_ms: u64, retry_after_ms: Option<u64>) {
        let now_ms = self.open(now_ms);
        if !self.slot_troubled {
            self.slot_troubled = true;
            self.speed = (self.speed / 2).max(SLOWEST);
        }
        if let Some(ms) = retry_after_ms {
            self.paused_until_ms = self
                .paused_until_ms
                .max(now_ms + ms.min(MAX_RETRY_AFTER_MS));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_sends_exactly_the_rate_in_slot_shares() {
        let mut t = Throttle::new(25);
        let mut per_slot = [0u32; 10];
        for ms in 0..1000 {
            while t.try_take(ms).is_ok() {
                per_slot[(ms / 100) as usize] += 1;
            }
        }
        assert_eq!(per_slot.iter().sum::<u32>(), 25);
        for (j, n) in per_slot.iter().enumerate() {
            assert_eq!(*n, slot_share(25, j as u64));
        }
    }

    #[test]
    fn requests_started_in_a_slots_tail_count_against_the_next_slot() {
        let mut t = Throttle::new(50); // 5 per slot
        for _ in 0..3 {
            t.try_take(100 - GUARD_MS).unwrap();
        }
        let mut next = 0;
        while t.try_take(100).is_ok() {
            next += 1;
        }
        assert_eq!(next, 2, "the tail's 3 already used the next slot's 5");
        // A slot's tail never starts more than the next slot's share.
        let mut t = Throttle::new(50);
        let mut tail = 0;
        while t.try_take(1_000 - GUARD_MS).is_ok() {
            tail += 1;
        }
        assert_eq!(tail, 5);
    }

    #[test]
    fn trouble_halves_once_per_slot_and_clean_slots_recover() {
        let mut t = Throttle::new(1000);
        t.trouble(5, None);
        t.trouble(6, None);
        assert_eq!(t.current_rate(), 500);
        for slot in 1..=20 {
            t.trouble(slot * 100, None);
        }
        assert_eq!(t.current_rate(), 1000 / 16);
        let before = t.current_rate();
        for slot in 30..40 {
            t.try_take(slot * 100).unwrap();
        }
        assert!(t.current_rate() > before);
        for slot in 40..200 {
            t.try_take(slot * 100).unwrap();
        }
        assert_eq!(t.current_rate(), 1000);
    }

    #[test]
    fn a_time_from_an_earlier_slot_never_reopens_it() {
        let mut t = Throttle::new(50); // 5 per slot
        for _ in 0..5 {
            t.try_take(250).unwrap();
        }
        assert_eq!(
            t.try_take(150),
            Err(300),
            "slot 2 is full; slot 1 is not reopened"
        );
        t.trouble(120, None);
        t.trouble(260, None);
        assert_eq!(t.current_rate(), 25, "both count in slot 2: halved once");
    }

    #[test]
    fn retry_after_stops_the_lane_until_then() {
        let mut t = Throttle::new(1000);
        t.trouble(1_000, Some(2_000));
        assert_eq!(t.try_take(2_500), Err(3_000));
        assert!(t.try_take(3_000).is_ok());
        t.trouble(4_000, Some(10 * MAX_RETRY_AFTER_MS));
        assert_eq!(t.try_take(4_001), Err(4_000 + MAX_RETRY_AFTER_MS));
    }
}
