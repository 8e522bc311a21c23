//! Reconciliation: what the ledgers say was won, counted and delivered, per prize, and every
//! mismatch between them.
//!
//! It reads ledgers only (a node's `DATA/ledger`, or a collector's `DIR/{node}/`), so it runs
//! the same on one node and on a collector's copies of every node: each batch record is
//! decoded and its writes folded: counter increments, win records, the latest delivery record
//! of each win, and the latest published config (for quotas). The open segment may end in a
//! partial record (one being written, or torn by a crash); reading stops there. Damage with an
//! intact record after it is corruption wherever it is, and fails the run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use quota::config::{Config, Round};
use redrain_delivery::record::{Record, State};
use serde::{Deserialize, Serialize};

use crate::ledger::{scan_segment, segments, Damage};
use crate::server::StoredConfig;
use crate::service::WinRecord;
use crate::storage::{decode_ops, Cf, Op, BATCH};

/// Most ids listed per kind of mismatch (counts are always exact).
pub const MAX_LISTED: usize = 1000;

/// One prize's line of the report (all occurrences of its round).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PrizeLine {
    /// Campaign id.
    pub campaign: String,
    /// Round (or drop task) id.
    pub round: String,
    /// Prize id.
    pub prize: String,
    /// Quota per occurrence (the whole cluster's).
    pub quota: u64,
    /// Sum of the issued counters.
    pub counter: u64,
    /// Wins in the ledgers.
    pub wins: u64,
    /// Deliveries the partner took.
    pub delivered: u64,
    /// Deliveries queued or being retried.
    pub pending: u64,
    /// Deliveries waiting for the user's partner account.
    pub deferred: u64,
    /// Deliveries given up (dead letters).
    pub dead: u64,
    /// Wins with no delivery record.
    pub missing: u64,
}

/// Ids behind each kind of mismatch (at most [`MAX_LISTED`] each).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Mismatches {
    /// `prize occurrence: wins > quota`.
    pub over_issue: Vec<String>,
    /// `prize occurrence: counter C, wins W` where they differ.
    pub counter_differs: Vec<String>,
    /// Win ids with no delivery record.
    pub wins_without_delivery: Vec<String>,
    /// Delivery ids with no win.
    pub deliveries_without_win: Vec<String>,
    /// Win ids recorded more than once (two wins, one delivery key).
    pub duplicate_deliveries: Vec<String>,
    /// Dead deliveries (failed for good; re-drive them).
    pub dead: Vec<String>,
}

/// A reconciliation run's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// When it ran (ms since the epoch).
    pub at_ms: u64,
    /// Ledger directories read (one per node).
    pub ledgers: Vec<String>,
    /// Ledger records read.
    pub records: u64,
    /// SeqNo of the config quotas were taken from.
    pub config_seq: u64,
    /// Draws by round and outcome: those that changed state (one record each) and those that
    /// did not (per-slot aggregates).
    pub draws: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per prize.
    pub prizes: Vec<PrizeLine>,
    /// What does not add up.
    pub mismatches: Mismatches,
    /// No over-issue, no counter difference, no win without delivery, no delivery without win,
    /// no duplicate.
    pub ok: bool,
    /// State this node's RocksDB held differently from its ledger at start-up (counters,
    /// standings, wins, delivery records and outbox entries; each set to the ledger's):
    /// `cf/key: rocksdb A, ledger B`.
    #[serde(default)]
    pub repaired_at_start: Vec<String>,
    /// The wins behind `wins_without_delivery` (what a re-drive needs to create their
    /// deliveries).
    #[serde(skip)]
    pub missing_wins: Vec<WinRecord>,
}

/// Everything folded from the ledgers.
#[derive(Default)]
struct Fold {
    records: u64,
    config: Option<(u64, quota::config::RawConfig)>,
    counters: HashMap<(String, u64), u64>,
    /// win id → (its record, how many times a win with this id was recorded).
    wins: BTreeMap<String, (WinRecord, u64)>,
    deliveries: HashMap<String, Record>,
    draws: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The fields of a stored answer that reconciliation counts.
#[derive(Deserialize)]
struct Answered {
    round: String,
    outcome: String,
}

impl Fold {
    fn apply(&mut self, op: Op) {
        match op {
            Op::Add(Cf::Counters, key, n) => {
                if let Some(k) = crate::storage::split_counter_key(&key) {
                    *self.counters.entry(k).or_default() += n;
                }
            }
            Op::Put(Cf::Wins, _, value) => {
                if let Ok(w) = serde_json::from_slice::<WinRecord>(&value) {
                    let e = self
                        .wins
                        .entry(w.view.win_id.clone())
                        .or_insert_with(|| (w.clone(), 0));
                    e.1 += 1;
                }
            }
            Op::Put(Cf::Deliveries, key, value) => {
                if let Ok(r) = serde_json::from_slice::<Record>(&value) {
                    self.deliveries
                        .insert(String::from_utf8_lossy(&key).into_owned(), r);
                }
            }
            Op::Put(Cf::Requests, _, value) => {
                if let Ok(a) = serde_json::from_slice::<Answered>(&value) {
                    *self
                        .draws
                        .entry(a.round)
                        .or_default()
                        .entry(a.outcome)
                        .or_default() += 1;
                }
            }
            Op::Add(Cf::Meta, key, n) => {
                let key = String::from_utf8_lossy(&key);
                if let Some((round, outcome)) = key
                    .strip_prefix(crate::service::DRAWN_PREFIX)
                    .and_then(|k| k.rsplit_once('/'))
                {
                    *self
                        .draws
                        .entry(round.to_string())
                        .or_default()
                        .entry(outcome.to_string())
                        .or_default() += n;
                }
            }
            Op::Delete(Cf::Deliveries, key) => {
                self.deliveries
                    .remove(String::from_utf8_lossy(&key).as_ref());
            }
            Op::Put(Cf::Meta, key, value) if key == b"config" => {
                if let Ok(s) = serde_json::from_slice::<StoredConfig>(&value) {
                    if self.config.as_ref().is_none_or(|(seq, _)| s.seq >= *seq) {
                        self.config = Some((s.seq, s.config));
                    }
                }
            }
            _ => {}
        }
    }
}

/// The ledger directories under `path`: itself if it holds segments, its `ledger/` (a node's
/// data dir), or each subdirectory with segments (a collector's).
pub fn ledger_dirs(path: &Path) -> Result<Vec<PathBuf>, String> {
    let has_segments = |p: &Path| segments(p).is_ok_and(|s| !s.is_empty());
    if has_segments(path) {
        return Ok(vec![path.to_path_buf()]);
    }
    if has_segments(&path.join("ledger")) {
        return Ok(vec![path.join("ledger")]);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && has_segments(p))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(format!("{}: no ledger segments found", path.display()));
    }
    Ok(dirs)
}

/// Reads the ledgers under `paths` and reconciles them.
pub fn reconcile(paths: &[PathBuf], now_ms: u64) -> Result<Report, String> {
    let mut fold = Fold::default();
    let mut ledgers = Vec::new();
    for path in paths {
        for dir in ledger_dirs(path)? {
            let files = segments(&dir).map_err(|e| e.to_string())?;
            for (i, (_, file)) in files.iter().enumerate() {
                let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
                let mut bad = None;
                let scan = scan_segment(&bytes, |r| {
                    if r.kind != BATCH || bad.is_some() {
                        return;
                    }
                    fold.records += 1;
                    match decode_ops(r.payload) {
                        Ok(ops) => ops.into_iter().for_each(|op| fold.apply(op)),
                        Err(e) => bad = Some(format!("record {}: {e}", r.seq)),
                    }
                })
                .map_err(|e| format!("{}: {e}", file.display()))?;
                let last = i + 1 == files.len();
                let torn = scan.torn_tail(last);
                let damage = match scan.damage {
                    Some(_) if torn => None,
                    Some(_) if last && !scan.sealed => corrupt_on_rereading(file)?,
                    d => d,
                };
                if let Some(why) = bad.or(damage.map(|d| d.to_string())) {
                    return Err(format!(
                        "{}: {why} (see `redrain ledger verify`)",
                        file.display()
                    ));
                }
            }
            ledgers.push(dir.display().to_string());
        }
    }
    Ok(report(fold, ledgers, now_ms))
}

/// The open segment's damage on a second read, unless it may be torn. A read that races the
/// writer can see a group's later page written and an earlier one not yet (reads and writes
/// are not atomic to each other across pages), which looks like damage with intact records
/// after it; read once more before calling it corruption. What was folded from the first read
/// stays: records before its damage, a prefix of the ledger.
fn corrupt_on_rereading(file: &Path) -> Result<Option<Damage>, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let scan = scan_segment(&bytes, |_| {}).map_err(|e| format!("{}: {e}", file.display()))?;
    let torn = scan.torn_tail(true);
    Ok(scan.damage.filter(|_| !torn))
}

fn report(fold: Fold, ledgers: Vec<String>, now_ms: u64) -> Report {
    let (config_seq, config) = match &fold.config {
        Some((seq, raw)) => (*seq, raw.validate().ok()),
        None => (0, None),
    };
    let mut lines: BTreeMap<String, PrizeLine> = BTreeMap::new();
    let mut quota_of: HashMap<String, u64> = HashMap::new();
    if let Some(config) = &config {
        for round in config
            .rounds
            .iter()
            .chain(config.drops.iter().map(|d| &d.round))
        {
            add_round(config, round, &mut lines, &mut quota_of);
        }
    }
    let mut m = Mismatches::default();
    let mut missing_wins = Vec::new();
    let mut wins_per: HashMap<(String, u64), u64> = HashMap::new();
    for (id, (w, times)) in &fold.wins {
        let line = lines
            .entry(w.view.prize.clone())
            .or_insert_with(|| PrizeLine {
                round: w.round.clone(),
                prize: w.view.prize.clone(),
                ..PrizeLine::default()
            });
        line.wins += 1;
        *wins_per
            .entry((w.view.prize.clone(), w.occurrence))
            .or_default() += 1;
        if *times > 1 {
            push(&mut m.duplicate_deliveries, id.clone());
        }
        match fold.deliveries.get(id).map(|d| d.state) {
            None => {
                line.missing += 1;
                if m.wins_without_delivery.len() < MAX_LISTED {
                    missing_wins.push(w.clone());
                }
                push(&mut m.wins_without_delivery, id.clone());
            }
            Some(State::Delivered) => line.delivered += 1,
            Some(State::Pending | State::Retrying) => line.pending += 1,
            Some(State::Deferred) => line.deferred += 1,
            Some(State::Dead) => {
                line.dead += 1;
                push(&mut m.dead, id.clone());
            }
        }
    }
    for id in fold.deliveries.keys().collect::<BTreeSet<_>>() {
        if !fold.wins.contains_key(id) {
            push(&mut m.deliveries_without_win, id.clone());
        }
    }
    let keys: BTreeSet<&(String, u64)> = fold.counters.keys().chain(wins_per.keys()).collect();
    for key in keys {
        let (prize, occ) = key;
        let counter = fold.counters.get(key).copied().unwrap_or(0);
        let wins = wins_per.get(key).copied().unwrap_or(0);
        if let Some(line) = lines.get_mut(prize) {
            line.counter += counter;
        }
        if counter != wins {
            push(
                &mut m.counter_differs,
                format!("{prize} {occ}: counter {counter}, wins {wins}"),
            );
        }
        if let Some(q) = quota_of.get(prize).filter(|q| wins > **q) {
            push(
                &mut m.over_issue,
                format!("{prize} {occ}: {wins} wins, quota {q}"),
            );
        }
    }
    let ok = m.over_issue.is_empty()
        && m.counter_differs.is_empty()
        && m.wins_without_delivery.is_empty()
        && m.deliveries_without_win.is_empty()
        && m.duplicate_deliveries.is_empty();
    Report {
        at_ms: now_ms,
        ledgers,
        records: fold.records,
        config_seq,
        draws: fold.draws,
        prizes: lines.into_values().collect(),
        mismatches: m,
        ok,
        repaired_at_start: Vec::new(),
        missing_wins,
    }
}

fn add_round(
    config: &Config,
    round: &Round,
    lines: &mut BTreeMap<String, PrizeLine>,
    quota_of: &mut HashMap<String, u64>,
) {
    for p in &round.prizes {
        quota_of.insert(p.id.to_string(), p.quota);
        lines.insert(
            p.id.to_string(),
            PrizeLine {
                campaign: config.campaigns[round.campaign].id.to_string(),
                round: round.id.to_string(),
                prize: p.id.to_string(),
                quota: p.quota,
                ..PrizeLine::default()
            },
        );
    }
}

fn push(list: &mut Vec<String>, id: String) {
    if list.len() < MAX_LISTED {
        list.push(id);
    }
}

/// The report as a readable table and the mismatches below it.
pub fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<14} {:<14} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>7}",
        "campaign",
        "round",
        "prize",
        "quota",
        "counter",
        "wins",
        "delivered",
        "pending",
        "deferred",
        "dead",
        "missing"
    );
    for p in &r.prizes {
        let _ = writeln!(
            out,
            "{:<14} {:<14} {:<14} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>7}",
            p.campaign,
            p.round,
            p.prize,
            p.quota,
            p.counter,
            p.wins,
            p.delivered,
            p.pending,
            p.deferred,
            p.dead,
            p.missing
        );
    }
    let m = &r.mismatches;
    for (what, list) in [
        ("over-issue", &m.over_issue),
        ("counter differs from wins", &m.counter_differs),
        ("win without delivery", &m.wins_without_delivery),
        ("delivery without win", &m.deliveries_without_win),
        ("duplicate delivery", &m.duplicate_deliveries),
        ("dead delivery", &m.dead),
    ] {
        for item in list {
            let _ = writeln!(out, "{what}: {item}");
        }
    }
    for item in &r.repaired_at_start {
        let _ = writeln!(out, "repaired at start (ledger wins): {item}");
    }
    for (round, outcomes) in &r.draws {
        let list: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        let _ = writeln!(out, "draws in {round}: {}", list.join(", "));
    }
    let _ = writeln!(
        out,
        "{} ledger records from {} ledger(s), config seq {}: {}",
        r.records,
        r.ledgers.len(),
        r.config_seq,
        if r.ok { "ok" } else { "MISMATCHES" }
    );
    out
}
