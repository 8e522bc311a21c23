//! A partner lane's send throttle: 100 ms slots, slowed by trouble, recovering gradually.
//!
//! The partner's `rate_per_s` is split over the ten 100 ms slots of a second exactly as a
//! prize's rate is ([`quota::limiter::slot_share`]): each second sums to the rate and no slot
//! gets more than its share. With several engine nodes each lane sends only its node's room in a
//! slot ([`NodeShare::slot_room`]): the nodes' rooms in a slot sum exactly to the slot's share, so
//! the partner never sees more from all nodes together. Slots rather than GCRA because partners
//! state (and measure) their limit per window, and a slot share is a hard bound per window: there
//! is no burst allowance to tune and nothing to overshoot. Unused room does not carry over.
//!
//! Two refinements keep the bound true at the receiver, not just at the sender:
//! - **Tail carry.** A request started in the last [`GUARD_MS`] of a slot may land in the
//!   receiver's next slot (transit, scheduling; sender and receiver read the same wall clock
//!   on one host, and near enough across hosts for 100 ms windows). So it counts against both
//!   slots: the next slot opens with those requests already used, and the tail of a slot may
//!   not start more than the next slot's room. Whichever slot the receiver counts it in, no
//!   slot sees more than this node's room, and a request due near a slot's end is not held back.
//! - **Slow-down.** A 429, a 5xx or a timeout halves the lane's rate (at most once per slot, so
//!   one burst of failures counts once), down to 1/16 of the node's configured rate;
//!   `Retry-After` stops the lane until then. Each later slot that sends without trouble gives
//!   back 1/32 of the configured rate, so a lane at 1/16 is back to full speed in about 3 s of
//!   clean slots. A slowed lane still sends its current rate a second, but thins its full-speed
//!   rooms rather than splitting the slower rate afresh: a slot's slowed room is never more than
//!   its full-speed room, so a slowed node never takes room another node's lane counts on.
//! - **Start.** A lane sends nothing in the slot it starts in nor in the next
//!   ([`Throttle::starting`]): a node restarted within a slot cannot know what its previous
//!   process sent there, so at most 200 ms of sending is given up at each start.

use quota::limiter::{slot_of, SLOTS_PER_S, SLOT_MS};
use quota::store::NodeShare;

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
    /// The partner's rate, all engine nodes together.
    rate_per_s: u32,
    /// This node's share of it.
    node: NodeShare,
    speed: u32,
    slot: u64,
    /// This slot's room at the speed it opened with.
    room: u32,
    used: u32,
    /// Requests started in this slot's last [`GUARD_MS`].
    tail: u32,
    slot_troubled: bool,
    paused_until_ms: u64,
}

impl Throttle {
    /// A throttle at full speed for `node`'s part of a partner's `rate_per_s` (all nodes).
    pub fn new(rate_per_s: u32, node: NodeShare) -> Self {
        Throttle {
            rate_per_s,
            node,
            speed: FULL,
            slot: u64::MAX,
            room: 0,
            used: 0,
            tail: 0,
            slot_troubled: false,
            paused_until_ms: 0,
        }
    }

    /// [`Throttle::new`] for a lane that starts at `now_ms`, which sends nothing in that slot
    /// nor in the next, whatever the rate. A node that starts again within the slot in which it
    /// stopped does not know what its previous process sent in that slot, nor the tail it
    /// started there, which counts against the next slot.
    pub fn starting(rate_per_s: u32, node: NodeShare, now_ms: u64) -> Self {
        Throttle {
            paused_until_ms: (slot_of(now_ms) + 2) * SLOT_MS,
            ..Throttle::new(rate_per_s, node)
        }
    }

    /// Changes the partner's rate (all nodes) and this node's share of it; applies from the
    /// next slot.
    pub fn set_rate(&mut self, rate_per_s: u32, node: NodeShare) {
        self.rate_per_s = rate_per_s;
        self.node = node;
    }

    /// The rate this node's lane sends at now (requests a second).
    pub fn current_rate(&self) -> u32 {
        let node_rate = self.node_rate_per_s();
        if node_rate == 0 {
            return 0;
        }
        ((u64::from(node_rate) * u64::from(self.speed) / u64::from(FULL)) as u32).max(1)
    }

    /// This node's part of the configured rate (requests a second).
    pub fn node_rate_per_s(&self) -> u32 {
        self.node.rate(self.rate_per_s)
    }

    /// The room of `slot` at the current speed: the node's full-speed rooms of the second,
    /// thinned evenly to the current rate. Through any slot of a second it has sent
    /// ⌊(full-speed room so far) · current / full rate⌋, so a second at one speed sums to the
    /// current rate and no slot's room passes its full-speed room (⌊a·x⌋ − ⌊b·x⌋ ≤ a − b for x ≤ 1).
    fn room(&self, slot: u64) -> u32 {
        let (full, current) = (
            u64::from(self.node_rate_per_s()),
            u64::from(self.current_rate()),
        );
        if full == 0 {
            return 0;
        }
        let j = slot % SLOTS_PER_S;
        let through = |slots| {
            u64::from(self.node.room_in_first_slots(self.rate_per_s, slots)) * current / full
        };
        (through(j + 1) - through(j)) as u32
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
        self.room = self.room(slot);
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
        if self.used >= self.room {
            return Err(next_slot);
        }
        if now_ms + GUARD_MS >= next_slot {
            if self.tail >= self.room(self.slot + 1) {
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
    use quota::limiter::slot_share;

    const ALONE: NodeShare = NodeShare::ALONE;

    #[test]
    fn a_second_sends_exactly_the_rate_in_slot_shares() {
        let mut t = Throttle::new(25, ALONE);
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
    fn a_starting_throttle_sends_nothing_in_its_first_two_slots() {
        let mut t = Throttle::starting(50, ALONE, 1_042); // 5 per slot
        assert_eq!(t.try_take(1_042), Err(1_200));
        t.set_rate(1000, ALONE); // a raised rate does not shorten the hold
        assert_eq!(t.try_take(1_150), Err(1_200));
        t.set_rate(50, ALONE);
        for _ in 0..5 {
            t.try_take(1_210).unwrap();
        }
        assert_eq!(t.try_take(1_210), Err(1_300));
    }

    #[test]
    fn requests_started_in_a_slots_tail_count_against_the_next_slot() {
        let mut t = Throttle::new(50, ALONE); // 5 per slot
        for _ in 0..3 {
            t.try_take(100 - GUARD_MS).unwrap();
        }
        let mut next = 0;
        while t.try_take(100).is_ok() {
            next += 1;
        }
        assert_eq!(next, 2, "the tail's 3 already used the next slot's 5");
        // A slot's tail never starts more than the next slot's room.
        let mut t = Throttle::new(50, ALONE);
        let mut tail = 0;
        while t.try_take(1_000 - GUARD_MS).is_ok() {
            tail += 1;
        }
        assert_eq!(tail, 5);
    }

    /// Rate 10 over 2 nodes used to give each node 5 a second split as `slot_share(5, j)`: both
    /// nodes sent in every odd slot, 2 where the partner allows 1.
    #[test]
    fn two_nodes_together_send_each_slots_share_once() {
        let mut nodes = [0, 1].map(|i| Throttle::new(10, NodeShare::new(i, 2).unwrap()));
        let mut per_slot = [0u32; 10];
        for ms in 0..1000 {
            for t in &mut nodes {
                while t.try_take(ms).is_ok() {
                    per_slot[(ms / 100) as usize] += 1;
                }
            }
        }
        assert_eq!(per_slot, [1; 10]);
    }

    #[test]
    fn a_slowed_lane_sends_its_current_rate_within_its_full_speed_rooms() {
        let node = NodeShare::new(1, 3).unwrap();
        let mut t = Throttle::new(95, node); // 32 a second on this node
        t.trouble(999, None); // slowed to 16 a second from the next second
        let mut per_slot = [0u32; 10];
        for ms in 1000..2000 {
            while t.try_take(ms).is_ok() {
                per_slot[(ms % 1000 / 100) as usize] += 1;
            }
        }
        // Clean slots give speed back as the second goes on: between the slowed and full rate.
        let sent = per_slot.iter().sum::<u32>();
        assert!((16..32).contains(&sent), "{per_slot:?}");
        for (j, n) in per_slot.iter().enumerate() {
            assert!(*n <= node.slot_room(95, j as u64), "slot {j}: {per_slot:?}");
        }
    }

    #[test]
    fn trouble_halves_once_per_slot_and_clean_slots_recover() {
        let mut t = Throttle::new(1000, ALONE);
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
        let mut t = Throttle::new(50, ALONE); // 5 per slot
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
        let mut t = Throttle::new(1000, ALONE);
        t.trouble(1_000, Some(2_000));
        assert_eq!(t.try_take(2_500), Err(3_000));
        assert!(t.try_take(3_000).is_ok());
        t.trouble(4_000, Some(10 * MAX_RETRY_AFTER_MS));
        assert_eq!(t.try_take(4_001), Err(4_000 + MAX_RETRY_AFTER_MS));
    }
}
