//! The double-buffered config store: each publish makes a new snapshot with SeqNo + 1 and swaps
//! it in whole; a draw loads one snapshot and sees exactly one SeqNo.

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::book::CounterBook;
use crate::config::Config;
use crate::ids::{PrizeId, SeqNo};
use crate::limiter::SLOTS_PER_S;

/// A published config with its sequence number.
#[derive(Debug)]
pub struct Snapshot {
    /// Its SeqNo.
    pub seq: SeqNo,
    /// The config.
    pub config: Config,
}

/// Which share of every quota and rate this node owns when several run behind a balancer.
///
/// Rates are split per 100 ms slot, not per second: [`slot_room`](Self::slot_room) is the one
/// place a node's room in a slot comes from (the draw's [`SlotLimiter`] and the delivery
/// throttle both use it), so the nodes' rooms in any slot sum exactly to that slot's share of
/// the rate.
///
/// [`SlotLimiter`]: crate::limiter::SlotLimiter
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeShare {
    /// This node's index, `0..count`.
    pub index: u32,
    /// Number of nodes.
    pub count: u32,
}

impl Default for NodeShare {
    fn default() -> Self {
        Self::ALONE
    }
}

impl NodeShare {
    /// A node running alone: it owns every quota and rate whole.
    pub const ALONE: NodeShare = NodeShare { index: 0, count: 1 };

    /// A validated share.
    pub fn new(index: u32, count: u32) -> Option<Self> {
        (count >= 1 && index < count).then_some(Self { index, count })
    }

    /// This node's part of `total`: the parts of all nodes sum exactly to `total`.
    pub fn of(&self, total: u64) -> u64 {
        let (n, i) = (u64::from(self.count), u64::from(self.index));
        total / n + u64::from(i < total % n)
    }

    /// This node's part of a quota, as the counter's limit.
    pub fn quota(&self, total: u64) -> u32 {
        self.of(total).min(u64::from(u32::MAX)) as u32
    }

    /// This node's part of a rate, a second: the sum of its ten [`slot_room`](Self::slot_room)s.
    pub fn rate(&self, total: u32) -> u32 {
        self.of(u64::from(total)) as u32
    }

    /// This node's room in slot `slot` (only its place in the second counts) of `rate_per_s`
    /// shared by all nodes: its part of the slot's share,
    /// [`slot_share`](crate::limiter::slot_share)`(rate_per_s, slot)`.
    ///
    /// The rate's units of a second are numbered slot by slot and dealt to the nodes in turn
    /// (unit `k` to node `k % count`), so a slot's remainder goes to the nodes next in turn,
    /// rotating with the slot and the node index. Hence:
    /// - in every slot the nodes' rooms sum exactly to the slot's share, so no node's room
    ///   passes it and the nodes together never do;
    /// - a node's ten rooms sum to [`rate`](Self::rate)`(rate_per_s)`, and the nodes' seconds
    ///   to the rate;
    /// - a node's rooms within a second differ by at most one.
    ///
    /// Splitting the node's part of the second instead (`slot_share(rate(r), j)`) would put
    /// every node's remainder in the same slots, past the slot's share.
    pub fn slot_room(&self, rate_per_s: u32, slot: u64) -> u32 {
        let j = slot % SLOTS_PER_S;
        self.room_in_first_slots(rate_per_s, j + 1) - self.room_in_first_slots(rate_per_s, j)
    }

    /// This node's room in the first `slots` (0..=10) slots of a second of `rate_per_s`.
    pub fn room_in_first_slots(&self, rate_per_s: u32, slots: u64) -> u32 {
        debug_assert!(slots <= SLOTS_PER_S);
        // Units of the second dealt before slot `slots`: the sum of those slots' shares.
        let dealt = slots * u64::from(rate_per_s) / SLOTS_PER_S;
        let (n, i) = (u64::from(self.count), u64::from(self.index));
        // How many of 0..dealt are ≡ i (mod n).
        ((dealt + n - 1 - i) / n) as u32
    }
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The new quota is below what was already issued in some occurrence.
    #[error("{field}: quota {quota} is below the {issued} already issued in occurrence {occurrence} of prize {prize}")]
    QuotaBelowIssued {
        /// Field path of the quota.
        field: String,
        /// The prize.
        prize: PrizeId,
        /// The occurrence.
        occurrence: u64,
        /// This node's share of the new quota.
        quota: u32,
        /// Issued so far on this node.
        issued: u32,
    },
    /// Persisting the new config failed; nothing changed.
    #[error("could not persist the config: {0}")]
    Persist(String),
}

/// Holds the live snapshot.
#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    publishing: Mutex<()>,
    share: NodeShare,
}

impl ConfigStore {
    /// A store whose first snapshot is `config` at `seq`.
    pub fn new(seq: SeqNo, config: Config, share: NodeShare) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot { seq, config }),
            publishing: Mutex::new(()),
            share,
        }
    }

    /// The live snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// This node's share.
    pub fn share(&self) -> NodeShare {
        self.share
    }

    /// The counter limit that the live config gives `prize`, or 0 if it is gone.
    pub fn limit_of(&self, prize: &PrizeId) -> u32 {
        let snap = self.current.load();
        let quota = snap
            .config
            .prizes()
            .find(|(_, p)| &p.id == prize)
            .map_or(0, |(_, p)| p.quota);
        self.share.quota(quota)
    }

    /// Publishes `config` as the next SeqNo.
    ///
    /// Refused, with nothing changed, if any quota would fall below what was already issued in
    /// an occurrence that is live or still to come at `now_ms` (ended occurrences can never be
    /// drawn from again, so their counts do not bind a new quota), or if `persist` fails. `persist` runs before the swap so a published config is durable.
    /// Counter limits are updated under the book's exclusive lock together with the swap.
    pub fn publish<E: std::fmt::Display>(
        &self,
        config: Config,
        book: &CounterBook,
        now_ms: u64,
        persist: impl FnOnce(SeqNo, &Config) -> Result<(), E>,
    ) -> Result<Arc<Snapshot>, PublishError> {
        let _one_at_a_time = self.publishing.lock();
        book.with_exclusive(|counters| {
            // Lower limits first: each CAS refuses if `issued` already passed the new quota, so
            // a take racing on a counter handed out earlier cannot slip past the check. Raising
            // a limit waits until the config is durable; until the swap, draws see the smaller
            // of the two limits, which is the safe side.
            let mut lowered = Vec::new();
            let mut raised = Vec::new();
            for ((prize, occurrence), counters) in &counters.open {
                let Some((field, quota, open_from)) = find_quota(&config, prize, now_ms) else {
                    continue;
                };
                if *occurrence < open_from {
                    continue;
                }
                let (new, old) = (self.share.quota(quota), counters.quota.limit());
                if new >= old {
                    raised.push((counters, new));
                    continue;
                }
                if let Err(issued) = counters.quota.set_limit(new) {
                    restore(&lowered);
                    return Err(PublishError::QuotaBelowIssued {
                        field,
                        prize: prize.clone(),
                        occurrence: *occurrence,
                        quota: new,
                        issued,
                    });
                }
                lowered.push((counters, old));
            }
            // A closed counter this config opens again is created from its issued count, so
            // that count binds the new quota just like an open counter's.
            for (prize, by_occurrence) in &counters.closed {
                let Some((field, quota, open_from)) = find_quota(&config, prize, now_ms) else {
                    continue;
                };
                let new = self.share.quota(quota);
                let reopened = by_occurrence
                    .iter()
                    .find(|&(&occurrence, &issued)| occurrence >= open_from && issued > new);
                if let Some((&occurrence, &issued)) = reopened {
                    restore(&lowered);
                    return Err(PublishError::QuotaBelowIssued {
                        field,
                        prize: prize.clone(),
                        occurrence,
                        quota: new,
                        issued,
                    });
                }
            }
            let seq = SeqNo(self.current.load().seq.0 + 1);
            if let Err(e) = persist(seq, &config) {
                restore(&lowered);
                return Err(PublishError::Persist(e.to_string()));
            }
            for (counters, new) in raised {
                let raised_ok = counters.quota.set_limit(new);
                debug_assert!(raised_ok.is_ok(), "issued <= old limit <= new limit");
            }
            let snapshot = Arc::new(Snapshot { seq, config });
            self.current.store(snapshot.clone());
            Ok(snapshot)
        })
    }
}

/// Raises lowered limits back to what they were; always succeeds since `issued` ≤ the lower one.
fn restore(lowered: &[(&Arc<crate::limiter::PrizeCounters>, u32)]) {
    for (counters, old) in lowered {
        let _ = counters.quota.set_limit(*old);
    }
}

/// The field path and quota of `prize` in `config`, and the first occurrence of its round still
/// open at `now_ms` (`None`, like a missing prize, when the round is over).
fn find_quota(config: &Config, prize: &PrizeId, now_ms: u64) -> Option<(String, u64, u64)> {
    config.every_round().find_map(|(path, r)| {
        let j = r.prizes.iter().position(|p| &p.id == prize)?;
        let open_from = r.first_open_occurrence(&config.campaigns[r.campaign], now_ms)?;
        Some((
            format!("{path}.prizes[{j}].quota"),
            r.prizes[j].quota,
            open_from,
        ))
    })
}

/// Whether the counters of `prize` in `occurrence` can still be drawn from under `config`.
pub fn counter_is_open(config: &Config, prize: &PrizeId, occurrence: u64, now_ms: u64) -> bool {
    find_quota(config, prize, now_ms).is_some_and(|(_, _, open_from)| occurrence >= open_from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::slot_share;

    fn nodes(count: u32) -> impl Iterator<Item = NodeShare> {
        (0..count).map(move |index| NodeShare::new(index, count).unwrap())
    }

    /// The reviewers' cases: splitting each node's part of the second over the slots put every
    /// node's remainder in the same slots (rate 10 on 3 nodes: 4/3/3 a second, all three with a
    /// unit in slot 9; rate 10 on 2 nodes: 5 a second each, both in every odd slot).
    #[test]
    fn nodes_together_never_pass_a_slots_share() {
        for (rate, count) in [(10, 3), (10, 2)] {
            for j in 0..SLOTS_PER_S {
                let rooms: Vec<u32> = nodes(count).map(|n| n.slot_room(rate, j)).collect();
                assert_eq!(
                    rooms.iter().sum::<u32>(),
                    slot_share(rate, j),
                    "slot {j}: {rooms:?}"
                );
            }
        }
        // Every small rate on up to 8 nodes, where the remainders matter most.
        for rate in 0..=400 {
            for count in 1..=8 {
                for j in 0..SLOTS_PER_S {
                    let sum: u32 = nodes(count).map(|n| n.slot_room(rate, j)).sum();
                    assert_eq!(
                        sum,
                        slot_share(rate, j),
                        "rate {rate}, {count} nodes, slot {j}"
                    );
                }
                for n in nodes(count) {
                    let second: u32 = (0..SLOTS_PER_S).map(|j| n.slot_room(rate, j)).sum();
                    assert_eq!(second, n.rate(rate), "rate {rate}, {n:?}");
                }
            }
        }
    }

    #[test]
    fn a_node_alone_has_the_whole_slot_share() {
        for rate in [0, 1, 7, 15, 99, 1001] {
            for slot in 0..30 {
                assert_eq!(
                    NodeShare::ALONE.slot_room(rate, slot),
                    slot_share(rate, slot)
                );
            }
        }
    }
}
