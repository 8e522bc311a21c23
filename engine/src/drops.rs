//! Geo drops in the engine: each drop task's points are read, screened and indexed off the
//! query path, the whole set is swapped in with the config it belongs to, and `nearby`,
//! claims and per-region counts read it.
//!
//! A drop is named `{task}:{n}`, `n` its number in the task's screened point list. Prizes
//! claimed per drop live in [`Claims`], which outlives publishes that keep the task's points
//! (same content digest); a publish that changes the points of a task from which anything was
//! claimed is refused, since drop numbers would then name other places.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use indicatif::ProgressBar;
use parking_lot::Mutex;
use quota::config::{Config, DropTask, PrizeKind};
use quota::ids::check_id;
use quota::schedule::RoundStatus;
use quota::store::Snapshot;
use redrain_geo::{Coord, DropIndex, Nearby, Poi, Zones};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::storage::{Cf, Op, Storage};

/// Most drops one nearby answer lists.
pub const MAX_NEARBY: usize = 100;
/// Drops listed when a nearby request gives no `limit`.
pub const DEFAULT_NEARBY: usize = 50;
/// Points screened per progress step.
const SCREEN_CHUNK: usize = 1 << 16;

/// Why a drop task could not be loaded or published; names the config field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct DropError {
    /// E.g. `drops[0].points`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

fn error(field: impl Into<String>, problem: impl Into<String>) -> DropError {
    DropError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Why a drop's prize could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// Every prize of the drop was claimed.
    Exhausted,
    /// A publish is replacing the task's points; retry.
    Retired,
}

/// Prizes claimed per drop of one task.
#[derive(Debug)]
pub struct Claims {
    claimed: Vec<AtomicU32>,
    /// Set while a publish replaces the task's points: no take may then stick.
    retired: AtomicBool,
}

impl Claims {
    fn new(drops: usize) -> Self {
        Claims {
            claimed: (0..drops).map(|_| AtomicU32::new(0)).collect(),
            retired: AtomicBool::new(false),
        }
    }

    /// Takes one prize from `drop` if fewer than `per_drop` were claimed.
    ///
    /// Sequentially consistent with [`Claims::retire`]: either the publish sees this take in
    /// its total, or this take sees the retirement and gives the prize back.
    pub fn take(&self, drop: u32, per_drop: u32) -> Result<(), TakeError> {
        let cell = &self.claimed[drop as usize];
        cell.fetch_update(SeqCst, SeqCst, |c| (c < per_drop).then_some(c + 1))
            .map_err(|_| TakeError::Exhausted)?;
        if self.retired.load(SeqCst) {
            self.give_back(drop);
            return Err(TakeError::Retired);
        }
        Ok(())
    }

    /// Returns a prize taken from `drop` whose claim did not become durable.
    pub fn give_back(&self, drop: u32) {
        let _ = self.claimed[drop as usize].fetch_update(SeqCst, SeqCst, |c| c.checked_sub(1));
    }

    /// Prizes claimed from `drop`.
    pub fn claimed(&self, drop: u32) -> u32 {
        self.claimed[drop as usize].load(SeqCst)
    }

    /// Stops further takes and returns how many prizes were claimed in all.
    fn retire(&self) -> u64 {
        self.retired.store(true, SeqCst);
        self.claimed.iter().map(|c| u64::from(c.load(SeqCst))).sum()
    }

    fn unretire(&self) {
        self.retired.store(false, SeqCst);
    }
}

/// Names of the drops of a task, in one arena.
#[derive(Debug, Default)]
struct Names {
    text: String,
    ends: Vec<u32>,
}

impl Names {
    fn get(&self, drop: u32) -> Option<&str> {
        let i = drop as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let name = &self.text[start..self.ends[i] as usize];
        (!name.is_empty()).then_some(name)
    }
}

/// What identifies the files a task was built from without reading them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    files: Vec<(PathBuf, u64, Option<SystemTime>)>,
    resolution: u8,
}

/// One drop task's points, indexed: immutable once built, apart from its claims.
#[derive(Debug)]
pub struct LiveTask {
    /// The task id.
    pub id: String,
    /// Cell → drops.
    pub index: DropIndex,
    /// Where drop `n` is.
    pub coords: Vec<Coord>,
    names: Names,
    /// Region number of each drop (`u32::MAX`: none).
    regions: Vec<u32>,
    region_names: Vec<String>,
    /// Prizes claimed per drop.
    pub claims: Arc<Claims>,
    /// SHA-256 of the screened points, in order.
    pub digest: [u8; 32],
    /// (zone, points screened out by it).
    pub screened: Vec<(String, usize)>,
    /// Points in the file before screening.
    pub read: usize,
    fingerprint: Fingerprint,
}

impl LiveTask {
    /// The name of drop `n`, if its file gave one.
    pub fn name(&self, drop: u32) -> Option<&str> {
        self.names.get(drop)
    }

    /// The region of drop `n`, if its file gave one.
    pub fn region(&self, drop: u32) -> Option<&str> {
        let r = self.regions[drop as usize];
        self.region_names.get(r as usize).map(String::as_str)
    }
}

/// Reports the phases of a build; hidden in the server, a bar in `redrain drops import`.
pub type Progress = ProgressBar;

fn fingerprint(base: &Path, task: &DropTask) -> Fingerprint {
    let files = std::iter::once(&task.points)
        .chain(&task.zones)
        .map(|f| {
            let path = base.join(f);
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            (path, len, meta.and_then(|m| m.modified().ok()))
        })
        .collect();
    Fingerprint {
        files,
        resolution: task.resolution,
    }
}

fn read_file(path: &Path, field: &str) -> Result<String, DropError> {
    std::fs::read_to_string(path).map_err(|e| error(field, format!("{}: {e}", path.display())))
}

/// Reads, screens and indexes the points of `task` (`at` is its field path, `drops[i]`),
/// with fresh (unclaimed) claims.
pub fn build(
    base: &Path,
    task: &DropTask,
    at: &str,
    progress: &Progress,
) -> Result<LiveTask, DropError> {
    let fingerprint = fingerprint(base, task);
    let points_field = format!("{at}.points");
    let path = base.join(&task.points);
    progress.set_message(format!("reading {}", path.display()));
    let text = read_file(&path, &points_field)?;
    let lower = task.points.to_ascii_lowercase();
    let parsed = if lower.ends_with(".csv") {
        redrain_geo::points::parse_csv(&text)
    } else {
        redrain_geo::points::parse_geojson(&text)
    };
    drop(text);
    let mut points = parsed.map_err(|e| {
        let shown = e.to_string();
        error(
            &points_field,
            format!("{}:\n{}", path.display(), shown.trim_end()),
        )
    })?;
    let read = points.len();
    for (n, p) in points.iter().enumerate() {
        if let Some(r) = &p.region {
            check_id(r).map_err(|e| {
                error(
                    &points_field,
                    format!("point {n}: region {r:?}: {e} (use region codes)"),
                )
            })?;
        }
    }

    let mut screened = Vec::new();
    for (z, file) in task.zones.iter().enumerate() {
        let field = format!("{at}.zones[{z}]");
        let zpath = base.join(file);
        let zones = Zones::from_geojson(&read_file(&zpath, &field)?)
            .map_err(|e| error(&field, format!("{}: {e}", zpath.display())))?;
        progress.set_message(format!("screening against {}", zpath.display()));
        progress.set_length(points.len() as u64);
        progress.set_position(0);
        let mut removed: Vec<(String, usize)> =
            zones.zones().iter().map(|z| (z.name.clone(), 0)).collect();
        let mut kept = Vec::with_capacity(points.len());
        let mut rest = points.into_iter();
        loop {
            let chunk: Vec<Poi> = rest.by_ref().take(SCREEN_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            progress.inc(chunk.len() as u64);
            let out = zones.screen(chunk);
            kept.extend(out.kept);
            for (total, (_, n)) in removed.iter_mut().zip(out.removed) {
                total.1 += n;
            }
        }
        screened.extend(removed);
        points = kept;
    }

    progress.set_message(format!("indexing {} points", points.len()));
    let coords: Vec<Coord> = points.iter().map(|p| p.at).collect();
    let index = DropIndex::build(&coords, task.resolution)
        .map_err(|e| error(format!("{at}.resolution"), e.to_string()))?;

    let mut hash = Sha256::new();
    let mut names = Names::default();
    let mut regions = Vec::with_capacity(points.len());
    let mut region_names: Vec<String> = Vec::new();
    let mut region_numbers: HashMap<String, u32> = HashMap::new();
    for p in &points {
        hash.update(p.at.lat_e7.to_le_bytes());
        hash.update(p.at.lng_e7.to_le_bytes());
        for part in [&p.name, &p.region] {
            hash.update(part.as_deref().unwrap_or("").as_bytes());
            hash.update([0]);
        }
        names.text.push_str(p.name.as_deref().unwrap_or(""));
        let end = u32::try_from(names.text.len())
            .map_err(|_| error(&points_field, "the names of the points exceed 4 GiB"))?;
        names.ends.push(end);
        regions.push(match &p.region {
            Some(r) => *region_numbers.entry(r.clone()).or_insert_with(|| {
                region_names.push(r.clone());
                (region_names.len() - 1) as u32
            }),
            None => u32::MAX,
        });
    }
    Ok(LiveTask {
        id: task.round.id.to_string(),
        claims: Arc::new(Claims::new(coords.len())),
        index,
        coords,
        names,
        regions,
        region_names,
        digest: hash.finalize().into(),
        screened,
        read,
        fingerprint,
    })
}

/// A live task with what the config it was published with says of it.
#[derive(Debug)]
pub struct Entry {
    /// The indexed points.
    pub live: Arc<LiveTask>,
    /// Index into `Config::drops`.
    pub config_index: usize,
    /// The prizes a claim may give, as listed to clients.
    pub prizes: serde_json::Value,
}

/// Every drop task of one published config.
#[derive(Debug, Default)]
pub struct DropSet {
    /// SeqNo of the config.
    pub seq: u64,
    /// The tasks, in config order.
    pub entries: Vec<Entry>,
    by_id: HashMap<String, usize>,
}

impl DropSet {
    /// The task with this id.
    pub fn entry(&self, task: &str) -> Option<&Entry> {
        self.by_id.get(task).map(|&i| &self.entries[i])
    }

    /// The drops of live tasks in the user's cell and its rings, nearest first, at most
    /// `limit`, with their tasks.
    pub fn nearby<'a>(
        &'a self,
        snapshot: &'a Snapshot,
        at: Coord,
        limit: usize,
        now_ms: u64,
    ) -> NearbyAnswer<'a> {
        let mut found: Vec<(f64, usize, Nearby)> = Vec::new();
        let mut scratch = Vec::new();
        for (e, entry) in self.entries.iter().enumerate() {
            let task = &snapshot.config.drops[entry.config_index];
            let campaign = &snapshot.config.campaigns[task.round.campaign];
            let live_now = matches!(task.round.status(campaign, now_ms), RoundStatus::Live(_));
            if !live_now || task.round.paused || campaign.paused {
                continue;
            }
            if entry
                .live
                .index
                .nearby(at, task.k, limit, &mut scratch)
                .is_err()
            {
                continue; // k was validated against the same bound
            }
            found.extend(scratch.iter().map(|n| (n.distance_m, e, *n)));
        }
        found.sort_unstable_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.drop.cmp(&b.2.drop))
        });
        found.truncate(limit);
        let mut tasks = BTreeMap::new();
        let drops = found
            .into_iter()
            .map(|(_, e, n)| {
                let entry = &self.entries[e];
                let task = &snapshot.config.drops[entry.config_index];
                let live = &entry.live;
                tasks
                    .entry(live.id.as_str())
                    .or_insert_with(|| TaskSummary {
                        name: &task.round.name,
                        radius_m: task.radius_m,
                        prizes: &entry.prizes,
                    });
                NearbyDrop {
                    id: format!("{}:{}", live.id, n.drop),
                    task: &live.id,
                    name: live.name(n.drop),
                    region: live.region(n.drop),
                    lat: n.at.lat(),
                    lng: n.at.lng(),
                    distance_m: (n.distance_m * 10.0).round() / 10.0,
                    remaining: task.per_drop.saturating_sub(live.claims.claimed(n.drop)),
                }
            })
            .collect();
        NearbyAnswer {
            seq: snapshot.seq.0,
            lat: at.lat(),
            lng: at.lng(),
            limit,
            drops,
            tasks,
        }
    }
}

/// A new drop set, built but not yet live.
#[derive(Debug)]
pub struct Prepared {
    entries: Vec<Entry>,
    /// Claims of tasks whose points are being replaced, retired until the publish ends.
    retired: Vec<Arc<Claims>>,
    /// (task, digest) to store with the config.
    digests: Vec<(String, [u8; 32])>,
}

impl Prepared {
    /// The writes that record each task's points digest with the config.
    pub fn ops(&self) -> Vec<Op> {
        self.digests
            .iter()
            .map(|(task, digest)| Op::Put(Cf::Meta, digest_key(task), digest.to_vec()))
            .collect()
    }

    /// Gives up: the tasks whose points were to be replaced take claims again.
    pub fn abandon(self) {
        for c in &self.retired {
            c.unretire();
        }
    }
}

fn digest_key(task: &str) -> Vec<u8> {
    format!("drop_points/{task}").into_bytes()
}

/// One drop near the user.
#[derive(Debug, Serialize)]
pub struct NearbyDrop<'a> {
    /// `{task}:{n}`.
    pub id: String,
    /// The task.
    pub task: &'a str,
    /// The name from the points file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// The region from the points file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<&'a str>,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lng: f64,
    /// Great-circle distance from the user, to the decimetre.
    pub distance_m: f64,
    /// Prizes left in the drop.
    pub remaining: u32,
}

/// What a claim in one task may give, listed once per answer rather than per drop.
#[derive(Debug, Serialize)]
pub struct TaskSummary<'a> {
    /// Display name.
    pub name: &'a str,
    /// Claims must come from within this many metres.
    pub radius_m: u32,
    /// The prizes: id, kind and amount range or SKU.
    pub prizes: &'a serde_json::Value,
}

/// A nearby answer.
#[derive(Debug, Serialize)]
pub struct NearbyAnswer<'a> {
    /// SeqNo of the config answered from.
    pub seq: u64,
    /// The user's place, as quantized.
    pub lat: f64,
    /// The user's place, as quantized.
    pub lng: f64,
    /// Most drops listed.
    pub limit: usize,
    /// The drops, nearest first.
    pub drops: Vec<NearbyDrop<'a>>,
    /// Each listed drop's task, by id.
    pub tasks: BTreeMap<&'a str, TaskSummary<'a>>,
}

/// Remaining prizes of one region.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RegionCount {
    /// Prizes left in the region's drops.
    pub remaining: u64,
    /// Drops in the region.
    pub drops: u64,
    /// Drops with a prize left.
    pub drops_left: u64,
    /// Prizes left per task.
    pub tasks: BTreeMap<String, u64>,
}

/// Region counts as of one refresh.
#[derive(Debug, Default)]
pub struct RegionView {
    /// When they were counted, ms since the epoch.
    pub as_of_ms: u64,
    /// SeqNo of the config they were counted under.
    pub seq: u64,
    /// Region → counts.
    pub regions: HashMap<String, RegionCount>,
}

/// The engine's drop state: the live set (double-buffered) and region counts.
#[derive(Debug)]
pub struct Drops {
    /// Relative point and zone files are taken from here.
    pub base_dir: PathBuf,
    current: ArcSwap<DropSet>,
    regions: ArcSwap<RegionView>,
    /// Held by a publish from its drop build to its install, one publish at a time.
    pub publishing: Mutex<()>,
}

impl Drops {
    /// No tasks yet; files are resolved against `base_dir`.
    pub fn new(base_dir: PathBuf) -> Self {
        Drops {
            base_dir,
            current: ArcSwap::from_pointee(DropSet::default()),
            regions: ArcSwap::from_pointee(RegionView::default()),
            publishing: Mutex::new(()),
        }
    }

    /// The live set.
    pub fn load(&self) -> Arc<DropSet> {
        self.current.load_full()
    }

    /// The latest region counts.
    pub fn regions(&self) -> Arc<RegionView> {
        self.regions.load_full()
    }

    /// Builds the drop set of `config`. Tasks whose files and resolution are unchanged are
    /// kept as they are; a rebuilt task keeps its claims when its points are the same. The
    /// caller publishes the config, then calls [`Drops::install`], or [`Prepared::abandon`].
    pub fn prepare(&self, config: &Config, storage: &Storage) -> Result<Prepared, DropError> {
        let old = self.load();
        let mut prepared = Prepared {
            entries: Vec::with_capacity(config.drops.len()),
            retired: Vec::new(),
            digests: Vec::new(),
        };
        for (i, task) in config.drops.iter().enumerate() {
            match self.prepare_task(&old, task, i, storage, &mut prepared.retired) {
                Ok(live) => {
                    prepared.digests.push((live.id.clone(), live.digest));
                    prepared.entries.push(Entry {
                        prizes: prize_summary(task),
                        live,
                        config_index: i,
                    });
                }
                Err(e) => {
                    prepared.abandon();
                    return Err(e);
                }
            }
        }
        Ok(prepared)
    }

    fn prepare_task(
        &self,
        old: &DropSet,
        task: &DropTask,
        i: usize,
        storage: &Storage,
        retired: &mut Vec<Arc<Claims>>,
    ) -> Result<Arc<LiveTask>, DropError> {
        let id = task.round.id.as_str();
        let at = format!("drops[{i}]");
        let previous = old.entry(id).map(|e| &e.live);
        if let Some(prev) = previous {
            if prev.fingerprint == fingerprint(&self.base_dir, task) {
                return Ok(prev.clone());
            }
        }
        let mut live = build(&self.base_dir, task, &at, &ProgressBar::hidden())?;
        tracing::info!(
            task = id,
            read = live.read,
            indexed = live.coords.len(),
            screened = ?live.screened,
            "drop task indexed"
        );
        let changed = |claimed: u64| {
            error(
                format!("{at}.points"),
                format!(
                    "the points changed, but {claimed} prize(s) were already claimed from this \
                     task and drop numbers would name other places: restore the file or publish \
                     the new points as a new task"
                ),
            )
        };
        match previous {
            Some(prev) if prev.digest == live.digest => live.claims = prev.claims.clone(),
            Some(prev) => {
                retired.push(prev.claims.clone());
                let claimed = prev.claims.retire();
                if claimed > 0 {
                    return Err(changed(claimed));
                }
            }
            None => {
                let rows = storage
                    .drop_claims(id)
                    .map_err(|e| error(format!("{at}.points"), e.to_string()))?;
                if !rows.is_empty() {
                    let stored = storage
                        .get(Cf::Meta, &digest_key(id))
                        .map_err(|e| error(format!("{at}.points"), e.to_string()))?;
                    if stored.as_deref() != Some(live.digest.as_slice()) {
                        return Err(changed(rows.iter().map(|r| r.1).sum()));
                    }
                    for (drop, claimed) in rows {
                        let Some(cell) = live.claims.claimed.get(drop as usize) else {
                            return Err(changed(claimed));
                        };
                        cell.store(claimed.min(u64::from(u32::MAX)) as u32, SeqCst);
                    }
                }
            }
        }
        Ok(Arc::new(live))
    }

    /// Makes `prepared` the live set for the config published as `seq`.
    pub fn install(&self, prepared: Prepared, seq: u64) {
        let by_id = prepared
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.live.id.clone(), i))
            .collect();
        self.current.store(Arc::new(DropSet {
            seq,
            entries: prepared.entries,
            by_id,
        }));
    }

    /// The live set and config of one SeqNo; `None` while a publish is between its two swaps.
    pub fn consistent(
        &self,
        load_config: impl Fn() -> Arc<Snapshot>,
    ) -> Option<(Arc<DropSet>, Arc<Snapshot>)> {
        (0..3).find_map(|_| {
            let set = self.load();
            let snap = load_config();
            (set.seq == snap.seq.0).then_some((set, snap))
        })
    }

    /// Recounts the remaining prizes of every region from the live set, if it is consistent
    /// with the live config (`load_config`); otherwise the next refresh does.
    pub fn refresh_regions(&self, load_config: impl Fn() -> Arc<Snapshot>, now_ms: u64) {
        let Some((set, snapshot)) = self.consistent(load_config) else {
            return;
        };
        let mut regions: HashMap<String, RegionCount> = HashMap::new();
        for entry in &set.entries {
            let Some(task) = snapshot.config.drops.get(entry.config_index) else {
                continue;
            };
            let live = &entry.live;
            let mut per_region = vec![RegionCount::default(); live.region_names.len()];
            for (drop, &r) in live.regions.iter().enumerate() {
                let Some(count) = per_region.get_mut(r as usize) else {
                    continue;
                };
                let left = task
                    .per_drop
                    .saturating_sub(live.claims.claimed(drop as u32));
                count.remaining += u64::from(left);
                count.drops += 1;
                count.drops_left += u64::from(left > 0);
            }
            for (name, count) in live.region_names.iter().zip(per_region) {
                let total = regions.entry(name.clone()).or_default();
                total.remaining += count.remaining;
                total.drops += count.drops;
                total.drops_left += count.drops_left;
                *total.tasks.entry(live.id.clone()).or_default() += count.remaining;
            }
        }
        self.regions.store(Arc::new(RegionView {
            as_of_ms: now_ms,
            seq: set.seq,
            regions,
        }));
    }

    /// How long until region counts are due again: the shortest `region_refresh_s` of the
    /// config's tasks (5 s when it has none).
    pub fn refresh_interval_ms(config: &Config) -> u64 {
        config
            .drops
            .iter()
            .map(|d| d.region_refresh_ms)
            .min()
            .unwrap_or(5_000)
    }
}

/// The prizes of `task` as listed to clients: id, kind and amount range or SKU.
fn prize_summary(task: &DropTask) -> serde_json::Value {
    let prizes: Vec<serde_json::Value> = task
        .round
        .prizes
        .iter()
        .map(|p| match &p.kind {
            PrizeKind::Cash { min, max } => serde_json::json!({
                "prize": p.id, "kind": "cash",
                "amount_min_cents": min.0, "amount_max_cents": max.0,
            }),
            PrizeKind::Coupon { sku } => serde_json::json!({
                "prize": p.id, "kind": "coupon", "sku": sku,
            }),
        })
        .collect();
    prizes.into()
}

/// Why a text is not a drop id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropIdError {
    /// Not `{task}:{n}` with a task and a drop number that fits 32 bits.
    #[error("{0:?} is not a drop id ({{task}}:{{number}})")]
    Malformed(String),
    /// A drop number with leading zeros: one drop has one id, so it is refused, not read.
    #[error("{given:?} is not how the drop is written; its id is {canonical:?}")]
    NotCanonical {
        /// The id as sent.
        given: String,
        /// The drop's one id.
        canonical: String,
    },
}

/// Splits a drop id `{task}:{n}` into its task and number; only the canonical form (the
/// number without leading zeros, as nearby lists it) is a drop id.
pub fn parse_drop_id(id: &str) -> Result<(&str, u32), DropIdError> {
    let malformed = || DropIdError::Malformed(id.to_string());
    let (task, digits) = id.rsplit_once(':').ok_or_else(malformed)?;
    if task.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let n: u32 = digits.parse().map_err(|_| malformed())?;
    if digits != n.to_string() {
        return Err(DropIdError::NotCanonical {
            given: id.to_string(),
            canonical: format!("{task}:{n}"),
        });
    }
    Ok((task, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ids_split_at_the_last_colon() {
        assert_eq!(parse_drop_id("mall:12"), Ok(("mall", 12)));
        assert_eq!(parse_drop_id("a:b:7"), Ok(("a:b", 7)));
        assert_eq!(parse_drop_id("mall:0"), Ok(("mall", 0)));
        for malformed in [
            "mall",
            "mall:",
            ":3",
            "mall:-1",
            "mall:+1",
            "mall:99999999999",
        ] {
            assert_eq!(
                parse_drop_id(malformed),
                Err(DropIdError::Malformed(malformed.into()))
            );
        }
    }

    /// `mall:012` named drop 12 too: one drop had many ids.
    #[test]
    fn a_drop_number_with_leading_zeros_is_refused_naming_the_drops_id() {
        for (given, canonical) in [("mall:012", "mall:12"), ("mall:00", "mall:0")] {
            assert_eq!(
                parse_drop_id(given),
                Err(DropIdError::NotCanonical {
                    given: given.into(),
                    canonical: canonical.into()
                })
            );
        }
    }

    #[test]
    fn takes_stop_at_the_drop_quota_and_after_retirement() {
        let c = Claims::new(2);
        assert_eq!(c.take(0, 2), Ok(()));
        assert_eq!(c.take(0, 2), Ok(()));
        assert_eq!(c.take(0, 2), Err(TakeError::Exhausted));
        assert_eq!(c.retire(), 2);
        assert_eq!(c.take(1, 2), Err(TakeError::Retired));
        assert_eq!(c.claimed(1), 0, "a refused take leaves nothing behind");
        c.unretire();
        assert_eq!(c.take(1, 2), Ok(()));
        c.give_back(1);
        assert_eq!(c.claimed(1), 0);
    }
}
