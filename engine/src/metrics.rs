//! Counters and histograms, rendered in the Prometheus text format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::RwLock;
use quota::ids::PrizeId;

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Latency {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            let le = BUCKETS_US
                .get(i)
                .map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// The engine's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Draw requests by outcome: win, none, capped, not_live.
    pub draws: [AtomicU64; 4],
    /// Draw requests answered from an idempotency record.
    pub replays: AtomicU64,
    /// Takes refused because the slot was full.
    pub slot_refusals: AtomicU64,
    /// Takes refused because the quota was used up.
    pub quota_refusals: AtomicU64,
    /// Draws that failed to become durable (their wins were given back).
    pub storage_errors: AtomicU64,
    /// Draw requests refused because the user had too many in flight.
    pub user_busy: AtomicU64,
    /// Geo drop claims that won.
    pub claims: AtomicU64,
    /// Geo drop claims refused (radius, drop or task exhausted, window, caps, rate).
    pub claim_refusals: AtomicU64,
    wins: RwLock<HashMap<PrizeId, PrizeWins>>,
    /// Ledger bytes not yet on the collector, when shipping.
    ship_lag: parking_lot::Mutex<Option<std::sync::Arc<AtomicU64>>>,
    /// Latency of draw requests.
    pub draw_latency: Latency,
    /// Latency of every other request.
    pub other_latency: Latency,
}

/// How many recent 100 ms slots of wins are kept per prize: the dashboard's last minute.
pub const RECENT_SLOTS: usize = 600;

/// One prize's wins: the total, and a ring of the last [`RECENT_SLOTS`] slots.
#[derive(Debug)]
struct PrizeWins {
    total: AtomicU64,
    /// Entry `slot % RECENT_SLOTS` holds `slot << 24 | wins` for the last slot that used it;
    /// an entry whose slot is not the one asked for counts as no wins. One CAS per win, no
    /// lock: a slot holds at most 200,000 wins (the limiter's bound), well inside 24 bits.
    ring: Box<[AtomicU64]>,
}

const SLOT_COUNT_BITS: u32 = 24;

impl PrizeWins {
    fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            ring: (0..RECENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn count(&self, slot: u64) {
        self.total.fetch_add(1, Relaxed);
        let cell = &self.ring[(slot % RECENT_SLOTS as u64) as usize];
        let mut seen = cell.load(Relaxed);
        loop {
            let next = if seen >> SLOT_COUNT_BITS == slot {
                seen + 1
            } else if seen >> SLOT_COUNT_BITS > slot {
                return; // a win of a slot already overwritten by a later one: too old to show
            } else {
                slot << SLOT_COUNT_BITS | 1
            };
            match cell.compare_exchange_weak(seen, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(now) => seen = now,
            }
        }
    }

    fn recent(&self, slot: u64) -> Vec<u32> {
        let first = slot.saturating_sub(RECENT_SLOTS as u64 - 1);
        (first..=slot)
            .map(|s| {
                let v = self.ring[(s % RECENT_SLOTS as u64) as usize].load(Relaxed);
                if v >> SLOT_COUNT_BITS == s {
                    (v & ((1 << SLOT_COUNT_BITS) - 1)) as u32
                } else {
                    0
                }
            })
            .collect()
    }
}

/// Outcome labels, in the order of [`Metrics::draws`].
pub const OUTCOMES: [&str; 4] = ["win", "none", "capped", "not_live"];

impl Metrics {
    /// The shipper's lag in bytes, when shipping.
    pub fn ship_lag(&self) -> Option<u64> {
        self.ship_lag.lock().as_ref().map(|l| l.load(Relaxed))
    }

    /// Reports the shipper's lag as `redrain_ledger_ship_lag_bytes`.
    pub fn set_ship_lag(&self, lag: std::sync::Arc<AtomicU64>) {
        *self.ship_lag.lock() = Some(lag);
    }

    /// Counts one win of `prize`, drawn in 100 ms slot `slot`.
    pub fn win(&self, prize: &PrizeId, slot: u64) {
        if let Some(w) = self.wins.read().get(prize) {
            w.count(slot);
            return;
        }
        self.wins
            .write()
            .entry(prize.clone())
            .or_insert_with(PrizeWins::new)
            .count(slot);
    }

    /// Wins of `prize` in each of the [`RECENT_SLOTS`] slots up to and including `slot`,
    /// oldest first, from its first slot with a win (empty when it won nothing in them): a
    /// dashboard of many quiet prizes stays small.
    pub fn recent_wins(&self, prize: &PrizeId, slot: u64) -> Vec<u32> {
        let Some(mut slots) = self.wins.read().get(prize).map(|w| w.recent(slot)) else {
            return Vec::new();
        };
        let quiet = slots.iter().take_while(|&&n| n == 0).count();
        slots.drain(..quiet);
        slots
    }

    /// Renders everything; `seq` is the live config's SeqNo.
    pub fn render(&self, seq: u64, users_in_flight: usize) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP redrain_draws_total Draw requests by outcome.\n# TYPE redrain_draws_total counter\n");
        for (i, o) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "redrain_draws_total{{outcome=\"{o}\"}} {}",
                self.draws[i].load(Relaxed)
            );
        }
        let counters = [
            (
                "redrain_draw_replays_total",
                "Draw requests answered from an idempotency record.",
                &self.replays,
            ),
            (
                "redrain_slot_refusals_total",
                "Prize takes refused: no room in the 100 ms slot.",
                &self.slot_refusals,
            ),
            (
                "redrain_quota_refusals_total",
                "Prize takes refused: quota used up.",
                &self.quota_refusals,
            ),
            (
                "redrain_storage_errors_total",
                "Draws that could not be made durable.",
                &self.storage_errors,
            ),
            (
                "redrain_user_busy_total",
                "Draw requests refused: too many in flight for one user.",
                &self.user_busy,
            ),
            (
                "redrain_claims_total",
                "Geo drop claims that won.",
                &self.claims,
            ),
            (
                "redrain_claim_refusals_total",
                "Geo drop claims refused: too far, drop or task exhausted, window, caps, rate.",
                &self.claim_refusals,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Relaxed)
            );
        }
        out.push_str(
            "# HELP redrain_wins_total Wins by prize.\n# TYPE redrain_wins_total counter\n",
        );
        let wins = self.wins.read();
        let mut prizes: Vec<_> = wins.iter().collect();
        prizes.sort_by(|a, b| a.0.cmp(b.0));
        for (p, w) in prizes {
            let _ = writeln!(
                out,
                "redrain_wins_total{{prize=\"{p}\"}} {}",
                w.total.load(Relaxed)
            );
        }
        out.push_str("# HELP redrain_config_seq SeqNo of the live config.\n# TYPE redrain_config_seq gauge\n");
        let _ = writeln!(out, "redrain_config_seq {seq}");
        out.push_str("# HELP redrain_users_in_flight Users with a draw running.\n# TYPE redrain_users_in_flight gauge\n");
        let _ = writeln!(out, "redrain_users_in_flight {users_in_flight}");
        if let Some(lag) = self.ship_lag.lock().as_ref() {
            out.push_str("# HELP redrain_ledger_ship_lag_bytes Ledger bytes not yet on the collector.\n# TYPE redrain_ledger_ship_lag_bytes gauge\n");
            let _ = writeln!(out, "redrain_ledger_ship_lag_bytes {}", lag.load(Relaxed));
        }
        if let Some(rss) = resident_bytes() {
            out.push_str("# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\n");
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        out.push_str("# HELP redrain_request_seconds Request latency.\n# TYPE redrain_request_seconds histogram\n");
        self.draw_latency
            .render(&mut out, "redrain_request_seconds", "route=\"draw\"");
        self.other_latency
            .render(&mut out, "redrain_request_seconds", "route=\"other\"");
        out
    }
}

/// Prometheus text read back: every sample's value by series (name with labels). For the load
/// tool and the tests, which read the engine's `/metrics`.
pub fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Resident memory of this process, from `/proc/self/statm` (Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on the Linux targets this engine runs on (x86-64 and arm64 defaults).
    Some(pages * 4096)
}

/// Appends the storage writer's count of group commits.
pub fn render_storage(out: &mut String, storage: &crate::storage::Storage) {
    out.push_str("# HELP redrain_storage_groups_total Group commits written: one ledger write and one fsync each.\n# TYPE redrain_storage_groups_total counter\n");
    let _ = writeln!(out, "redrain_storage_groups_total {}", storage.groups());
    out.push_str("# HELP redrain_storage_failed 1 once the ledger refused a write: every draw that must be written is refused until a restart.\n# TYPE redrain_storage_failed gauge\n");
    let _ = writeln!(out, "redrain_storage_failed {}", u8::from(storage.failed()));
}

/// Appends each partner lane's gauges and counters.
pub fn render_lanes(out: &mut String, lanes: &[redrain_delivery::lanes::LaneStats]) {
    type Field = fn(&redrain_delivery::lanes::LaneStats) -> u64;
    let series: [(&str, &str, &str, Field); 10] = [
        (
            "redrain_delivery_queued",
            "gauge",
            "Deliveries queued in memory per partner lane.",
            |l| l.queued,
        ),
        (
            "redrain_delivery_in_flight",
            "gauge",
            "Delivery requests in flight per partner.",
            |l| l.in_flight.into(),
        ),
        (
            "redrain_delivery_rate_per_s",
            "gauge",
            "Rate a partner lane sends at now (lower after trouble).",
            |l| l.current_rate_per_s.into(),
        ),
        (
            "redrain_delivery_lane_in_config",
            "gauge",
            "0 when the partner's lane drains deliveries after it left the live config.",
            |l| l.in_config.into(),
        ),
        (
            "redrain_delivery_lane_settings_unknown",
            "gauge",
            "1 when a partner's deliveries are held unsent: no stored config has usable settings for it.",
            |l| (!l.settings_known).into(),
        ),
        (
            "redrain_delivery_paused",
            "gauge",
            "1 when a partner's kill switch is on.",
            |l| l.paused.into(),
        ),
        (
            "redrain_deliveries_total",
            "counter",
            "Deliveries the partner took.",
            |l| l.delivered,
        ),
        (
            "redrain_delivery_failures_total",
            "counter",
            "Delivery requests that failed (timeout, connection, 429, 5xx).",
            |l| l.failures,
        ),
        (
            "redrain_delivery_deferred_total",
            "counter",
            "Deliveries deferred: the user has no account yet.",
            |l| l.deferred,
        ),
        (
            "redrain_delivery_dead_total",
            "counter",
            "Deliveries dead-lettered.",
            |l| l.dead,
        ),
    ];
    for (name, kind, help, field) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in lanes {
            let _ = writeln!(out, "{name}{{partner=\"{}\"}} {}", l.partner, field(l));
        }
    }
}
