//! The double-buffered config store: each publish makes a new snapshot with SeqNo + 1 and swaps
//! it in whole; a draw loads one snapshot and sees exactly one SeqNo.

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::book::CounterBook;
use crate::config::Config;
use crate::ids::{PrizeId, SeqNo};

/// A published config with its sequence number.
#[derive(Debug)]
pub struct Snapshot {
    /// Its SeqNo.
    pub seq: SeqNo,
    /// The config.
    pub config: Config,
}

/// Which share of every quota and rate this node owns when several run behind a balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeShare {
    /// This node's index, `0..count`.
    pub index: u32,
    /// Number of nodes.
    pub count: u32,
}

impl Default for NodeShare {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl NodeShare {
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

    /// This node's part of a rate.
    pub fn rate(&self, total: u32) -> u32 {
        self.of(u64::from(total)) as u32
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
            let mut quotas = std::collections::HashMap::new();
            for (prize, by_occurrence) in &counters.closed {
                let found = quotas
                    .entry(prize)
                    .or_insert_with(|| find_quota(&config, prize, now_ms));
                let Some((field, quota, open_from)) = found else {
                    continue;
                };
                let new = self.share.quota(*quota);
                let reopened = by_occurrence
                    .iter()
                    .find(|&(&occurrence, &issued)| occurrence >= *open_from && issued > new);
                if let Some((&occurrence, &issued)) = reopened {
                    restore(&lowered);
                    return Err(PublishError::QuotaBelowIssued {
                        field: field.clone(),
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
