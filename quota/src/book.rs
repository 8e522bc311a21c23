//! The counter book: every prize's counters per round occurrence, outside any config.
//!
//! Counters survive config swaps; a publish updates their limits under the book's write lock,
//! so a draw holding an older config still can never pass the newest quota.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::ids::PrizeId;
use crate::limiter::PrizeCounters;

/// Counters keyed by (prize, occurrence).
#[derive(Debug, Default)]
pub struct CounterBook {
    // parking_lot's RwLock: reads (every win attempt) do not contend with each other, and the
    // write side is only taken to add an occurrence's counters or to publish a config.
    map: RwLock<HashMap<(PrizeId, u64), Arc<PrizeCounters>>>,
}

impl CounterBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters of `prize` in `occurrence`, if any draw has created them.
    pub fn get(&self, prize: &PrizeId, occurrence: u64) -> Option<Arc<PrizeCounters>> {
        self.map.read().get(&(prize.clone(), occurrence)).cloned()
    }

    /// The counters of `prize` in `occurrence`, created with the limit `limit()` returns if new.
    /// `limit` runs under the write lock, so it reads the newest published quota.
    pub fn get_or_create(
        &self,
        prize: &PrizeId,
        occurrence: u64,
        limit: impl FnOnce() -> u32,
    ) -> Arc<PrizeCounters> {
        if let Some(c) = self.get(prize, occurrence) {
            return c;
        }
        self.map
            .write()
            .entry((prize.clone(), occurrence))
            .or_insert_with(|| Arc::new(PrizeCounters::new(0, limit())))
            .clone()
    }

    /// Sets restored counters at start-up (from durable storage).
    pub fn restore(&self, prize: PrizeId, occurrence: u64, issued: u32, limit: u32) {
        self.map.write().insert(
            (prize, occurrence),
            Arc::new(PrizeCounters::new(issued, limit.max(issued))),
        );
    }

    /// Drops the counters for which `keep` is false (ended occurrences), bounding the book.
    pub fn retain(&self, mut keep: impl FnMut(&PrizeId, u64) -> bool) {
        self.map
            .write()
            .retain(|(prize, occurrence), _| keep(prize, *occurrence));
    }

    /// Every (prize, occurrence) with its counters, for reports and metrics.
    pub fn entries(&self) -> Vec<((PrizeId, u64), Arc<PrizeCounters>)> {
        self.map
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Runs `f` with the book locked against new counters, handing it every existing entry.
    pub(crate) fn with_exclusive<R>(
        &self,
        f: impl FnOnce(&HashMap<(PrizeId, u64), Arc<PrizeCounters>>) -> R,
    ) -> R {
        let guard = self.map.write();
        f(&guard)
    }
}
