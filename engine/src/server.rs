//! Opening the engine on a data dir, and serving it on a bound listener until shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quota::book::CounterBook;
use quota::clock::Clock;
use quota::config::{Config, RawConfig};
use quota::ids::{PrizeId, SeqNo};
use quota::store::{counter_is_open, ConfigStore, NodeShare, PublishError, Snapshot};
use redrain_delivery::lanes::Deliveries;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::cache::StandingCache;
use crate::delivery::{DeliverySettings, RocksStore};
use crate::drops::{DropError, Drops};
use crate::metrics::Metrics;
use crate::service::{DrawKey, DrawService};
use crate::storage::{Cf, Op, Storage};
use crate::userlock::UserLocks;

/// Most connections served at once; further ones wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 16_384;

/// Settings of a serving engine, already validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file; published when the data dir has none or when the file changed.
    pub config_path: PathBuf,
    /// Where RocksDB lives.
    pub data_dir: PathBuf,
    /// Bearer token of the admin API.
    pub admin_token: String,
    /// This node's share of every quota and rate.
    pub share: NodeShare,
    /// A fixed seed of the draw's randomness (tests, `--seed`); `None`: a random 128-bit key.
    pub seed: Option<u64>,
    /// Partner secrets, allowed hosts, lane bounds.
    pub delivery: DeliverySettings,
    /// How often reconciliation runs.
    pub reconcile_every: Duration,
    /// Who may log in to the admin page.
    pub operators: crate::admin::Operators,
}

/// The running engine, shared by every request.
#[derive(Debug)]
pub struct App {
    /// The draw service.
    pub service: Arc<DrawService>,
    /// Operators, sessions and the bearer token of the admin API.
    pub admin: crate::admin::Admin,
    /// Per-user limit on "deliver it again" requests.
    pub asks: crate::delivery::WindowLimiter,
    /// The data dir (its `ledger/` is reconciled).
    pub data_dir: PathBuf,
    /// How often reconciliation runs.
    pub reconcile_every: Duration,
    /// The latest reconciliation report.
    pub reconciliation: parking_lot::Mutex<Option<Arc<crate::reconcile::Report>>>,
}

impl App {
    /// Reconciles this node's ledger now (blocking: reads every segment) and keeps the report.
    pub fn reconcile(&self) -> Result<Arc<crate::reconcile::Report>, String> {
        let mut report = crate::reconcile::reconcile(
            &[self.data_dir.join("ledger")],
            self.service.clock.now_ms(),
        )?;
        report.repaired_at_start = self.service.storage.repairs.clone();
        let report = Arc::new(report);
        *self.reconciliation.lock() = Some(report.clone());
        Ok(report)
    }
}

/// A published config as stored (meta `config` and `config/{seq}`).
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredConfig {
    pub(crate) seq: u64,
    pub(crate) config: RawConfig,
}

const CONFIG_KEY: &[u8] = b"config";
/// The meta key every published config is also kept under.
fn config_key(seq: u64) -> String {
    format!("config/{seq:020}")
}
const FILE_HASH_KEY: &[u8] = b"config_file_hash";
/// The node share a data dir was first served with (meta), as [`StoredShare`].
const NODE_SHARE_KEY: &[u8] = b"node_share";

/// A node share as stored under [`NODE_SHARE_KEY`].
#[derive(Serialize, Deserialize)]
struct StoredShare {
    index: u32,
    count: u32,
}

/// Refuses a data dir first served with another node index or count: its counters hold only
/// that node's issued counts, which are checked against that node's share of each quota, so a
/// new share would pass the quota (or strand prizes). A data dir from before shares were
/// recorded takes the current one; either way it is recorded before anything is drawn.
fn check_node_share(
    storage: &Storage,
    share: NodeShare,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    match storage.get(Cf::Meta, NODE_SHARE_KEY)? {
        Some(bytes) => {
            let was: StoredShare = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "the node share recorded in {} is unreadable: {e}",
                    data_dir.display()
                )
            })?;
            if (was.index, was.count) != (share.index, share.count) {
                anyhow::bail!(
                    "the data dir {} belongs to node index {} of node count {}, but this start \
                     asks for node index {} of node count {}. Each node's counters hold only \
                     its own share of every quota, so changing the node count or index would \
                     pass the quotas; re-sharding a running campaign is not supported. Start \
                     this data dir with --node-index {} --node-count {}, or serve the new \
                     layout from new, empty data dirs.",
                    data_dir.display(),
                    was.index,
                    was.count,
                    share.index,
                    share.count,
                    was.index,
                    was.count,
                );
            }
            Ok(())
        }
        None => {
            let stored = serde_json::to_vec(&StoredShare {
                index: share.index,
                count: share.count,
            })?;
            storage.commit_blocking(vec![Op::Put(Cf::Meta, NODE_SHARE_KEY.to_vec(), stored)])?;
            Ok(())
        }
    }
}

/// Opens the data dir, restores counters, and settles the config: the stored one, or the file
/// published on top of it when the file is new or changed.
pub fn open(settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
    let text = std::fs::read_to_string(&settings.config_path)
        .map_err(|e| anyhow::anyhow!("reading config {}: {e}", settings.config_path.display()))?;
    let file_hash: String = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let storage = Arc::new(Storage::open(
        &settings.data_dir.join("db"),
        &settings.data_dir.join("ledger"),
        settings.share.index,
    )?);

    check_node_share(&storage, settings.share, &settings.data_dir)?;

    let stored = match storage.get(Cf::Meta, CONFIG_KEY)? {
        Some(bytes) => {
            // The document as JSON first: a config an older version wrote may no longer parse
            // as this version's `RawConfig`, and is then treated like one that no longer
            // validates. (It stays stored under `config/{seq}` either way.)
            #[derive(serde::Deserialize)]
            struct Stored {
                seq: u64,
                config: serde_json::Value,
            }
            let s: Stored = serde_json::from_slice(&bytes)?;
            let (raw, validated) = match serde_json::from_value::<RawConfig>(s.config) {
                Ok(raw) => {
                    let validated = raw.validate().map_err(|e| e.to_string());
                    (Some(raw), validated)
                }
                Err(e) => (None, Err(format!("it does not parse: {e}"))),
            };
            Some((SeqNo(s.seq), raw, validated))
        }
        None => None,
    };
    let file_changed =
        storage.get(Cf::Meta, FILE_HASH_KEY)?.as_deref() != Some(file_hash.as_bytes());
    let parse_file = || {
        Config::from_toml(&text).map_err(|e| {
            let list: Vec<String> = e.errors.iter().map(|f| format!("  {f}")).collect();
            anyhow::anyhow!(
                "config {} is invalid:\n{}",
                settings.config_path.display(),
                list.join("\n")
            )
        })
    };
    // `replaced`: a stored config this version no longer accepts, which a changed file
    // replaces. The file's config stands in for it until the file is published on top (as the
    // next SeqNo, checked against the counters like any publish).
    let mut replaced = None;
    let (seq, config, pending_file) = match stored {
        Some((seq, _, Ok(config))) if !file_changed => (seq, config, None),
        Some((seq, _, Ok(config))) => (seq, config, Some(parse_file()?)),
        Some((seq, raw, Err(e))) if file_changed => {
            let file = parse_file()?;
            tracing::warn!(seq = seq.0, errors = %e, "this version no longer accepts the stored config; the changed config file replaces it");
            replaced = Some((raw, e));
            (seq, file.clone(), Some(file))
        }
        Some((seq, _, Err(e))) => anyhow::bail!(
            "this version no longer accepts the stored config (seq {}): {e}\n(start with a changed, valid \
             --config file: it is published on top, checked against what was issued)",
            seq.0
        ),
        None => (SeqNo(0), parse_file()?, None),
    };

    let now_ms = clock.now_ms();
    // A data dir with a config was served before: its last process may have stopped within
    // the slot this one starts in.
    let book = match seq.0 {
        0 => CounterBook::new(),
        _ => CounterBook::starting_at(now_ms),
    };
    let store = ConfigStore::new(seq, config, settings.share);
    for (prize, occurrence, issued) in storage.counters()? {
        let Ok(prize) = PrizeId::new(&prize) else {
            continue;
        };
        let issued = issued.min(u64::from(u32::MAX)) as u32;
        // A counter the config does not open (its occurrence ended, its prize is gone) is kept
        // as its count only: a later config may open it again, and it must go on from there.
        if counter_is_open(&store.load().config, &prize, occurrence, now_ms) {
            let limit = store.limit_of(&prize);
            book.restore(prize, occurrence, issued, limit);
        } else {
            book.restore_closed(prize, occurrence, issued);
        }
    }
    let storage_for_lanes = storage.clone();
    let service = Arc::new(DrawService {
        store,
        book,
        storage,
        locks: UserLocks::default(),
        standings: StandingCache::new(crate::cache::DEFAULT_CAPACITY),
        metrics: Metrics::default(),
        clock,
        draw_key: settings
            .seed
            .map_or_else(|| DrawKey(rand::random()), DrawKey::from_seed),
        drops: Drops::new(config_dir(&settings.config_path)),
        deliveries: Deliveries::new(
            Arc::new(RocksStore(storage_for_lanes)),
            settings.delivery.max_queued,
        ),
        delivery_settings: settings.delivery.clone(),
        unrecorded: Default::default(),
    });
    let admin = crate::admin::Admin::new(settings.operators.clone(), settings.admin_token.clone());
    // The config file, published at start-up, is audited like an operator's publish.
    let from_file = crate::admin::Principal {
        name: crate::admin::FILE_OPERATOR.into(),
        role: crate::admin::Role::Publisher,
    };
    let audited = |seq: SeqNo, old: &RawConfig, new: &RawConfig| {
        let mut changes = vec![format!(
            "from {} (sha256 {file_hash})",
            settings.config_path.display()
        )];
        let old = match &replaced {
            Some((raw, e)) => {
                let replaced_seq = seq.0 - 1;
                changes.push(format!(
                    "replaces the stored config (seq {replaced_seq}, kept as meta {}), which \
                     this version no longer accepts: {e}",
                    config_key(replaced_seq)
                ));
                raw.as_ref().unwrap_or(old)
            }
            None => old,
        };
        changes.extend(crate::admin::publish_changes(old, new));
        let at = service.clock.now_ms();
        vec![admin.audit(&from_file, "published", seq.0, changes, at)]
    };
    if seq.0 == 0 {
        // A fresh data dir: make the file's config durable as SeqNo 1.
        let config = service.store.load().config.clone();
        publish(&service, config, Some(&file_hash), None, &audited)?;
    } else if let Some(config) = pending_file {
        publish(&service, config, Some(&file_hash), None, &audited)?;
        tracing::info!(path = %settings.config_path.display(), "config file changed; published it");
    } else {
        let snapshot = service.store.load();
        // A publish checks the partners; a restart with other secrets or hosts must too.
        settings
            .delivery
            .check_partners(&snapshot.config, settings.share)
            .map_err(|(field, why)| {
                anyhow::anyhow!("the stored config (seq {}): {field}: {why}", snapshot.seq.0)
            })?;
        let prepared = service.drops.prepare(&snapshot.config, &service.storage)?;
        service.storage.commit_blocking(prepared.ops())?;
        service.drops.install(prepared, snapshot.seq.0);
        service
            .drops
            .refresh_regions(|| service.store.load(), now_ms);
    }
    Ok(App {
        service,
        admin,
        asks: crate::delivery::WindowLimiter::asks(),
        data_dir: settings.data_dir.clone(),
        reconcile_every: settings.reconcile_every,
        reconciliation: Default::default(),
    })
}

/// The directory relative point and zone files of drop tasks are read from.
pub fn config_dir(config_path: &std::path::Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Why a publish was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    /// The config store refused it.
    #[error(transparent)]
    Store(#[from] PublishError),
    /// A drop task's points could not be loaded, or changed under claims.
    #[error(transparent)]
    Drops(#[from] DropError),
    /// The live config is no longer the one this publish was made from.
    #[error("the live config is now SeqNo {live}, not {expected}: review the changes again")]
    Stale {
        /// The SeqNo the publish was made from.
        expected: u64,
        /// The live SeqNo.
        live: u64,
    },
    /// A partner URL points outside the allowed hosts, or its rate or cap cannot be split.
    #[error("{field}: {message}")]
    Partner {
        /// E.g. `partners[0].url`.
        field: String,
        /// The problem.
        message: String,
    },
}

/// Writes to commit with a publish, made from its SeqNo and the config it replaces: the audit
/// entry, clearing the draft.
pub type ExtraOps<'a> = &'a dyn Fn(SeqNo, &RawConfig, &RawConfig) -> Vec<Op>;

/// Publishes `config` as the next SeqNo, durably; `file_hash` marks it as read from the file,
/// `expect` refuses it unless the live SeqNo is still that one (the config it was made from),
/// and `extra(seq, old, new)` adds writes to the same commit. Drop tasks are read, screened
/// and indexed first; their set goes live right after the config.
pub fn publish(
    service: &DrawService,
    config: Config,
    file_hash: Option<&str>,
    expect: Option<SeqNo>,
    extra: ExtraOps<'_>,
) -> Result<Arc<Snapshot>, PublishFailure> {
    let _one_at_a_time = service.drops.publishing.lock();
    // Every publish holds the lock above, so the live config cannot change until this returns.
    let old = service.store.load();
    if let Some(expected) = expect.filter(|&e| e != old.seq) {
        return Err(PublishFailure::Stale {
            expected: expected.0,
            live: old.seq.0,
        });
    }
    service
        .delivery_settings
        .check_partners(&config, service.store.share())
        .map_err(|(field, message)| PublishFailure::Partner { field, message })?;
    let prepared = service.drops.prepare(&config, &service.storage)?;
    let digest_ops = prepared.ops();
    let now_ms = service.clock.now_ms();
    let published = service
        .store
        .publish(config, &service.book, now_ms, |seq, config| {
            let stored = serde_json::to_vec(&StoredConfig {
                seq: seq.0,
                config: config.raw.clone(),
            })
            .map_err(|e| e.to_string())?;
            let mut ops = vec![
                Op::Put(Cf::Meta, config_key(seq.0).into_bytes(), stored.clone()),
                Op::Put(Cf::Meta, CONFIG_KEY.to_vec(), stored),
            ];
            if let Some(hash) = file_hash {
                ops.push(Op::Put(
                    Cf::Meta,
                    FILE_HASH_KEY.to_vec(),
                    hash.as_bytes().to_vec(),
                ));
            }
            ops.extend(digest_ops);
            ops.extend(extra(seq, &old.config.raw, &config.raw));
            service
                .storage
                .commit_blocking(ops)
                .map_err(|e| e.to_string())
        });
    let snapshot = match published {
        Ok(snapshot) => snapshot,
        Err(e) => {
            prepared.abandon();
            return Err(e.into());
        }
    };
    service.drops.install(prepared, snapshot.seq.0);
    service
        .drops
        .refresh_regions(|| service.store.load(), now_ms);
    if tokio::runtime::Handle::try_current().is_ok() {
        // Outside a runtime (start-up), `run` starts the lanes.
        configure_lanes(service, &snapshot.config);
    }
    service
        .book
        .retain(|prize, occurrence| counter_is_open(&snapshot.config, prize, occurrence, now_ms));
    Ok(snapshot)
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains open requests (for at most
/// `drain`) and returns.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let refresher = tokio::spawn(refresh_regions(app.clone()));
    let reconciler = tokio::spawn(reconcile_on_schedule(app.clone()));
    let tallier = tokio::spawn(record_unrecorded(app.clone()));
    configure_lanes(&app.service, &app.service.store.load().config);
    if let Err(e) = configure_removed_lanes(&app.service) {
        tracing::error!(error = %e, "looking for deliveries of partners no longer configured failed");
    }
    let service = app.service.clone();
    serve(listener, crate::api::routes(app), shutdown, drain).await;
    tallier.abort();
    let slot = quota::limiter::slot_of(service.clock.now_ms());
    if let Err(e) = service.record_unrecorded(slot).await {
        tracing::error!(error = %e, "recording the last no-change draws failed");
    }
    service.deliveries.shutdown();
    refresher.abort();
    reconciler.abort();
}

/// Every 100 ms slot, records the slot's draws that changed nothing as one ledger record.
async fn record_unrecorded(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_millis(quota::limiter::SLOT_MS));
    loop {
        tick.tick().await;
        let slot = quota::limiter::slot_of(app.service.clock.now_ms());
        if let Err(e) = app.service.record_unrecorded(slot).await {
            tracing::error!(error = %e, "recording the slot's no-change draws failed; retried next slot");
        }
    }
}

/// Runs reconciliation every `reconcile_every`, keeping the latest report.
async fn reconcile_on_schedule(app: Arc<App>) {
    loop {
        tokio::time::sleep(app.reconcile_every).await;
        let a = app.clone();
        match tokio::task::spawn_blocking(move || a.reconcile()).await {
            Ok(Ok(r)) if !r.ok => {
                tracing::warn!(mismatches = ?r.mismatches, "reconciliation found mismatches")
            }
            Ok(Ok(_)) => tracing::info!("reconciliation ok"),
            Ok(Err(e)) => tracing::error!(error = %e, "reconciliation failed"),
            Err(e) => tracing::error!(error = %e, "reconciliation panicked"),
        }
    }
}

/// Brings the partner lanes in line with a published config.
fn configure_lanes(service: &DrawService, config: &Config) {
    service.deliveries.configure(
        &service
            .delivery_settings
            .partners(config, service.store.share()),
    );
}

/// Gives a lane to each partner the live config does not name but whose outbox holds open
/// deliveries or dead letters (it was removed from the config; before a restart its lane kept
/// running): with the settings of the last stored config that named it, if its URL is still
/// on the allowed hosts, so its deliveries go out and can be re-driven as before the restart;
/// otherwise a paused lane without a URL that holds them and says so (log, metric, lane list)
/// until a config names the partner again.
fn configure_removed_lanes(service: &DrawService) -> anyhow::Result<()> {
    let live = service.store.load();
    let mut missing: Vec<String> = Vec::new();
    for prefix in [crate::delivery::OUTBOX_PREFIX, crate::delivery::DEAD_PREFIX] {
        for partner in service.storage.key_names(Cf::Outbox, prefix)? {
            let configured = live
                .config
                .partners
                .iter()
                .any(|p| p.id.as_str() == partner);
            if !configured && !missing.contains(&partner) {
                missing.push(partner);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let share = service.store.share();
    let mut found = Vec::new();
    let mut unreadable = 0u32;
    // The newest config first; stop once every missing partner is found.
    service
        .storage
        .scan_prefix_rev(Cf::Meta, b"config/", |_, bytes| {
            let config = serde_json::from_slice::<StoredConfig>(bytes)
                .ok()
                .and_then(|s| Some((s.seq, s.config.validate().ok()?)));
            let Some((seq, config)) = config else {
                unreadable += 1;
                return true;
            };
            for p in &config.partners {
                if let Some(i) = missing.iter().position(|m| m == p.id.as_str()) {
                    missing.swap_remove(i);
                    found.push((seq, p.clone()));
                }
            }
            !missing.is_empty()
        })?;
    if unreadable > 0 {
        tracing::warn!(
            unreadable,
            "stored configs that no longer parse or validate were skipped"
        );
    }
    for (seq, p) in found {
        match service.delivery_settings.check_partner(&p, share) {
            Ok(()) => {
                tracing::warn!(
                    partner = %p.id,
                    config_seq = seq,
                    "partner is not in the live config but has open deliveries or dead letters; \
                     its lane runs with the settings of the last config that named it"
                );
                service
                    .deliveries
                    .drain_removed(&service.delivery_settings.partner(&p, share));
            }
            Err((field, why)) => {
                tracing::error!(
                    partner = %p.id,
                    config_seq = seq,
                    "partner is not in the live config and its last settings are unusable \
                     ({field}: {why}); its deliveries are held, not sent, until a config names it"
                );
                service.deliveries.hold_unknown(p.id.as_str());
            }
        }
    }
    for partner in missing {
        tracing::error!(
            %partner,
            "partner has open deliveries or dead letters but no stored config names it; they \
             are held, not sent, until a config names it"
        );
        service.deliveries.hold_unknown(&partner);
    }
    Ok(())
}

/// Serves `routes` on `listener` (at most [`MAX_CONNECTIONS`] at once) until `shutdown`
/// resolves, then drains open requests for at most `drain`.
pub async fn serve<F>(
    listener: TcpListener,
    routes: F,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    F: warp::Filter<Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let routes = hyper_util::service::TowerToHyperService::new(warp::service(routes));
    // HEAD is GET without the body (RFC 9110 §9.3.2): every GET route answers it, and hyper,
    // which knows the request was a HEAD, sends the head and not the body.
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            if req.method() == hyper::Method::HEAD {
                *req.method_mut() = hyper::Method::GET;
            }
            hyper::service::Service::call(&routes, req)
        });
    let limits = redrain_delivery::serve::Limits {
        max_connections: MAX_CONNECTIONS,
        drain,
        header_read_timeout: redrain_delivery::serve::HEADER_READ_TIMEOUT,
        name: "redrain",
    };
    redrain_delivery::serve::http1(listener, service, limits, shutdown).await;
}

/// Recounts region remaining counts every `region_refresh_s` (the shortest of the live tasks').
async fn refresh_regions(app: Arc<App>) {
    let svc = &app.service;
    loop {
        let every = crate::drops::Drops::refresh_interval_ms(&svc.store.load().config);
        tokio::time::sleep(Duration::from_millis(every)).await;
        let svc = svc.clone();
        // Counting walks every drop: off the async workers.
        let counted = tokio::task::spawn_blocking(move || {
            svc.drops
                .refresh_regions(|| svc.store.load(), svc.clock.now_ms());
        });
        if counted.await.is_err() {
            tracing::error!("region count refresh panicked");
        }
    }
}
