//! The campaign config: raw TOML/JSON documents, parsed then validated into [`Config`].
//!
//! Raw structs mirror the file one to one (and are what the admin API reads and writes); the
//! validated types are what the engine uses, so the rest of the code only sees valid settings.
//! Every problem is reported with its field path, e.g. `rounds[1].prizes[0].rate_per_s`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ids::{CampaignId, Cents, IdError, PartnerId, PrizeId, RoundId};

/// Largest quota of one prize per round occurrence (the counter packs it in 32 bits).
pub const MAX_QUOTA: u64 = u32::MAX as u64;
/// Largest issue rate of one prize (the slot limiter packs a slot's share in 18 bits).
pub const MAX_RATE_PER_S: u32 = 2_000_000;
/// Largest amount of one cash prize: 1,000,000.00 in cents.
pub const MAX_AMOUNT_CENTS: u64 = 100_000_000;
/// Most prizes in one round: each draw may scan them all on fall-through.
pub const MAX_PRIZES_PER_ROUND: usize = 64;
/// Most rounds in one config.
pub const MAX_ROUNDS: usize = 1024;
/// Most geo drop tasks in one config.
pub const MAX_DROP_TASKS: usize = 64;
/// Finest H3 resolution.
pub const MAX_H3_RESOLUTION: u64 = 15;
/// Most rings a drop task's `nearby` may return (a k-disk has 3k(k+1)+1 cells).
pub const MAX_RINGS: u64 = 8;
/// Largest claim radius, in metres.
pub const MAX_RADIUS_M: u64 = 10_000;

// ---------------------------------------------------------------------------------------------
// Raw documents
// ---------------------------------------------------------------------------------------------

/// A config document as written by an operator (TOML file or admin JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Campaigns; each round names one.
    #[serde(default)]
    pub campaigns: Vec<RawCampaign>,
    /// Delivery partners; each prize names one.
    #[serde(default)]
    pub partners: Vec<RawPartner>,
    /// Rain windows with their prizes.
    #[serde(default)]
    pub rounds: Vec<RawRound>,
    /// Geo drop tasks: prizes placed at points of interest, claimed by walking to them.
    #[serde(default)]
    pub drops: Vec<RawDropTask>,
}

/// A campaign as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCampaign {
    /// Unique id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// RFC 3339 start time.
    pub starts_at: String,
    /// RFC 3339 end time.
    pub ends_at: String,
    /// Most wins one user may get across the campaign (absent: no limit).
    #[serde(default)]
    pub max_wins_per_user: Option<u32>,
    /// Most cash one user may get across the campaign, in cents (absent: no limit).
    #[serde(default)]
    pub max_cash_cents_per_user: Option<u64>,
    /// Kill switch: a paused campaign's rounds draw nothing.
    #[serde(default)]
    pub paused: bool,
}

/// A delivery partner as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPartner {
    /// Unique id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// `wallet` (cash, fast path) or `coupon` (slow path).
    pub kind: String,
    /// Delivery endpoint, `http://host:port/path`.
    pub url: String,
    /// Most requests a second the partner accepts.
    pub rate_per_s: u32,
    /// Most requests in flight at once.
    pub max_in_flight: u32,
    /// Per-request timeout.
    pub timeout_ms: u32,
    /// Kill switch: a paused partner's lane holds its queue.
    #[serde(default)]
    pub paused: bool,
    /// Retries of a delivery stop this long after its win, and it is dead-lettered (default
    /// one day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_deadline_s: Option<u32>,
    /// A delivery deferred because the user has no account yet is tried again this often
    /// (default 10 minutes), and whenever the user asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred_retry_s: Option<u32>,
}

/// Default [`RawPartner::retry_deadline_s`].
pub const DEFAULT_RETRY_DEADLINE_S: u32 = 86_400;
/// Default [`RawPartner::deferred_retry_s`].
pub const DEFAULT_DEFERRED_RETRY_S: u32 = 600;

/// A round as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRound {
    /// Unique id.
    pub id: String,
    /// The campaign this round belongs to.
    pub campaign: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// RFC 3339 start of the first occurrence.
    pub starts_at: String,
    /// Length of one occurrence.
    pub duration_s: u64,
    /// If set, the round recurs: occurrence n starts at `starts_at + n * every_s`.
    #[serde(default)]
    pub every_s: Option<u64>,
    /// How long a user may draw from their first draw in an occurrence.
    pub participation_s: u64,
    /// Users are hashed into this many groups with staggered starts (1: no stagger).
    #[serde(default = "one")]
    pub stagger_groups: u32,
    /// Delay between consecutive groups' starts.
    #[serde(default)]
    pub stagger_s: u64,
    /// Most wins one user may get in one occurrence.
    pub max_wins_per_user: u32,
    /// Weight of "no win" against the prizes' weights.
    pub no_win_weight: u32,
    /// Kill switch: a paused round draws nothing.
    #[serde(default)]
    pub paused: bool,
    /// The prizes of this round.
    #[serde(default)]
    pub prizes: Vec<RawPrize>,
}

fn one() -> u32 {
    1
}

/// A geo drop task as written: prizes placed at the points of a POI file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawDropTask {
    /// Unique id, shared namespace with rounds (a user's claims are counted under it).
    pub id: String,
    /// The campaign this task belongs to (its per-user caps apply to claims too).
    pub campaign: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// The POI file, CSV `lat,lng[,name][,region]` or GeoJSON points (`.geojson`/`.json`);
    /// a relative path is taken from the directory of the engine's config file.
    pub points: String,
    /// GeoJSON files of exclusion zones; points inside any of them are never placed.
    #[serde(default)]
    pub zones: Vec<String>,
    /// H3 resolution of the index (0..=15; 10 has cells of about 66 m edge).
    #[serde(default = "default_resolution")]
    pub resolution: u8,
    /// Rings around the user's cell that `nearby` returns.
    #[serde(default = "default_k")]
    pub k: u32,
    /// A claim must come from within this many metres of the drop.
    pub radius_m: u32,
    /// RFC 3339 start of the claim window.
    pub starts_at: String,
    /// RFC 3339 end (exclusive) of the claim window.
    pub ends_at: String,
    /// Prizes in each drop.
    #[serde(default = "one")]
    pub per_drop: u32,
    /// Most claims one user may make in this task.
    pub max_claims_per_user: u32,
    /// How often per-region remaining counts are recomputed.
    #[serde(default = "default_region_refresh_s")]
    pub region_refresh_s: u64,
    /// Kill switch: a paused task takes no claims.
    #[serde(default)]
    pub paused: bool,
    /// The prizes a claim gives, picked by weight; `quota` and `rate_per_s` are per task.
    #[serde(default)]
    pub prizes: Vec<RawPrize>,
}

fn default_resolution() -> u8 {
    10
}

fn default_k() -> u32 {
    2
}

fn default_region_refresh_s() -> u64 {
    5
}

/// A prize as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPrize {
    /// Unique id across the config.
    pub id: String,
    /// `cash` or `coupon`.
    pub kind: String,
    /// Fixed cash amount.
    #[serde(default)]
    pub amount_cents: Option<u64>,
    /// Lower bound of a drawn cash amount (with `amount_max_cents`).
    #[serde(default)]
    pub amount_min_cents: Option<u64>,
    /// Upper bound of a drawn cash amount, inclusive.
    #[serde(default)]
    pub amount_max_cents: Option<u64>,
    /// Coupon SKU at the partner.
    #[serde(default)]
    pub sku: Option<String>,
    /// The partner that delivers it.
    pub partner: String,
    /// Prizes available per round occurrence.
    pub quota: u64,
    /// Most issued per second, enforced per 100 ms slot.
    pub rate_per_s: u32,
    /// Weight against the round's `no_win_weight`.
    pub weight: u32,
    /// Kill switch: a paused prize is never won.
    #[serde(default)]
    pub paused: bool,
}

// ---------------------------------------------------------------------------------------------
// Validated config
// ---------------------------------------------------------------------------------------------

/// A validated config: every id unique, every reference resolved, every number in range.
#[derive(Debug, Clone)]
pub struct Config {
    /// Campaigns in file order.
    pub campaigns: Vec<Campaign>,
    /// Partners in file order.
    pub partners: Vec<Partner>,
    /// Rounds in file order.
    pub rounds: Vec<Round>,
    /// Geo drop tasks in file order.
    pub drops: Vec<DropTask>,
    round_index: HashMap<RoundId, usize>,
    drop_index: HashMap<RoundId, usize>,
    campaign_index: HashMap<CampaignId, usize>,
    /// The raw document this was validated from (the admin API returns it).
    pub raw: RawConfig,
}

/// A validated campaign.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// Id.
    pub id: CampaignId,
    /// Display name.
    pub name: String,
    /// Start, ms since the Unix epoch.
    pub starts_at_ms: u64,
    /// End (exclusive), ms since the Unix epoch.
    pub ends_at_ms: u64,
    /// Per-user win cap across the campaign.
    pub max_wins_per_user: Option<u32>,
    /// Per-user cash cap across the campaign.
    pub max_cash_per_user: Option<Cents>,
    /// Kill switch.
    pub paused: bool,
}

/// Which delivery path a partner is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnerKind {
    /// Cash: fast path.
    Wallet,
    /// Coupons: slow, throttled path.
    Coupon,
}

/// A validated partner.
#[derive(Debug, Clone)]
pub struct Partner {
    /// Id.
    pub id: PartnerId,
    /// Display name.
    pub name: String,
    /// Path.
    pub kind: PartnerKind,
    /// Delivery endpoint.
    pub url: String,
    /// Requests a second.
    pub rate_per_s: u32,
    /// Requests in flight.
    pub max_in_flight: u32,
    /// Per-request timeout.
    pub timeout_ms: u32,
    /// Kill switch.
    pub paused: bool,
    /// Retries stop this long after the win.
    pub retry_deadline_s: u32,
    /// Deferred deliveries are tried again this often.
    pub deferred_retry_s: u32,
}

/// A validated round.
#[derive(Debug, Clone)]
pub struct Round {
    /// Id.
    pub id: RoundId,
    /// Index of its campaign in [`Config::campaigns`].
    pub campaign: usize,
    /// Display name.
    pub name: String,
    /// Start of occurrence 0, ms since the Unix epoch.
    pub starts_at_ms: u64,
    /// Length of an occurrence.
    pub duration_ms: u64,
    /// Period of recurrence; `None` for a one-off round.
    pub every_ms: Option<u64>,
    /// Participation window from a user's first draw.
    pub participation_ms: u64,
    /// Number of staggered user groups (≥ 1).
    pub stagger_groups: u32,
    /// Delay between groups.
    pub stagger_ms: u64,
    /// Per-user win cap per occurrence.
    pub max_wins_per_user: u32,
    /// Weight of no win.
    pub no_win_weight: u32,
    /// Sum of `no_win_weight` and every prize weight (> 0).
    pub total_weight: u64,
    /// Kill switch.
    pub paused: bool,
    /// Prizes.
    pub prizes: Vec<Prize>,
}

/// A validated geo drop task. Its claims run through the draw path on [`DropTask::round`]: a
/// one-off round spanning the claim window, with no "no win" weight and the task's claim cap as
/// its per-user win cap, so quotas, slots, caps and fall-through are the draw's own.
#[derive(Debug, Clone)]
pub struct DropTask {
    /// The POI file as written.
    pub points: String,
    /// Exclusion zone files as written.
    pub zones: Vec<String>,
    /// H3 resolution of the index.
    pub resolution: u8,
    /// Rings returned by `nearby`.
    pub k: u32,
    /// Claim radius.
    pub radius_m: u32,
    /// Prizes in each drop.
    pub per_drop: u32,
    /// Region count refresh interval.
    pub region_refresh_ms: u64,
    /// The claim window, caps and prizes as a round (id = the task's id).
    pub round: Round,
}

/// What a prize gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrizeKind {
    /// Cash, fixed or drawn uniformly from an inclusive range.
    Cash {
        /// Least amount.
        min: Cents,
        /// Greatest amount (equal to `min` for a fixed amount).
        max: Cents,
    },
    /// A partner coupon.
    Coupon {
        /// The partner's SKU.
        sku: String,
    },
}

impl PrizeKind {
    /// `cash` or `coupon`, as written.
    pub fn name(&self) -> &'static str {
        match self {
            PrizeKind::Cash { .. } => "cash",
            PrizeKind::Coupon { .. } => "coupon",
        }
    }
}

/// A validated prize.
#[derive(Debug, Clone)]
pub struct Prize {
    /// Id, unique across the config.
    pub id: PrizeId,
    /// Cash or coupon.
    pub kind: PrizeKind,
    /// Index of its partner in [`Config::partners`].
    pub partner: usize,
    /// Prizes per occurrence (whole cluster; each node owns a share).
    pub quota: u64,
    /// Issue rate per second (whole cluster; each node owns a share).
    pub rate_per_s: u32,
    /// Weight.
    pub weight: u32,
    /// Kill switch.
    pub paused: bool,
}

impl Config {
    /// Finds a round by id.
    pub fn round(&self, id: &str) -> Option<&Round> {
        self.round_index.get(id).map(|&i| &self.rounds[i])
    }
    /// Finds a campaign by id.
    pub fn campaign(&self, id: &str) -> Option<&Campaign> {
        self.campaign_index.get(id).map(|&i| &self.campaigns[i])
    }
    /// Finds a geo drop task by id.
    pub fn drop_task(&self, id: &str) -> Option<&DropTask> {
        self.drop_index.get(id).map(|&i| &self.drops[i])
    }
    /// Every round, then every drop task's round, with its field path (`rounds[1]`,
    /// `drops[0]`).
    pub fn every_round(&self) -> impl Iterator<Item = (String, &Round)> {
        let rounds = self.rounds.iter().enumerate();
        let drops = self.drops.iter().enumerate();
        rounds
            .map(|(i, r)| (format!("rounds[{i}]"), r))
            .chain(drops.map(|(i, d)| (format!("drops[{i}]"), &d.round)))
    }
    /// Every prize (of rounds and drop tasks) with its round.
    pub fn prizes(&self) -> impl Iterator<Item = (&Round, &Prize)> {
        self.rounds
            .iter()
            .chain(self.drops.iter().map(|d| &d.round))
            .flat_map(|r| r.prizes.iter().map(move |p| (r, p)))
    }
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigErrors::one(path, e.into_inner().message().trim().to_string())
        })?;
        raw.validate()
    }
    /// Parses and validates a JSON document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigErrors> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            ConfigErrors::one(path, e.into_inner().to_string())
        })?;
        // Nothing but whitespace may follow the document.
        de.end()
            .map_err(|e| ConfigErrors::one(String::new(), e.to_string()))?;
        raw.validate()
    }
}

impl Prize {
    /// The partner that delivers this prize.
    pub fn is_cash(&self) -> bool {
        matches!(self.kind, PrizeKind::Cash { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in a config, at a field path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Where, e.g. `rounds[1].prizes[0].rate_per_s` (`.` for the document itself).
    pub field: String,
    /// What is wrong, e.g. `must be at least 1`.
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Every problem found in a config; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{} problem(s) in config, first: {}", .errors.len(), .errors[0])]
pub struct ConfigErrors {
    /// The problems, in document order.
    pub errors: Vec<FieldError>,
}

impl ConfigErrors {
    fn one(field: String, problem: String) -> Self {
        let field = if field.is_empty() {
            ".".to_string()
        } else {
            field
        };
        ConfigErrors {
            errors: vec![FieldError { field, problem }],
        }
    }
}

/// Collects problems with their paths during validation.
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            problem: problem.into(),
        });
    }
    fn id<T>(&mut self, field: String, s: &str, make: fn(&str) -> Result<T, IdError>) -> Option<T> {
        match make(s) {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(field, e.to_string());
                None
            }
        }
    }
    fn time(&mut self, field: String, s: &str) -> Option<u64> {
        match humantime::parse_rfc3339_weak(s.trim_end_matches('Z')) {
            Ok(t) => Some(ms_since_epoch(t)),
            Err(e) => {
                self.add(
                    field,
                    format!("must be an RFC 3339 time like 2027-01-28T20:00:00Z: {e}"),
                );
                None
            }
        }
    }
    fn range(&mut self, field: String, value: u64, min: u64, max: u64) {
        if value < min {
            self.add(field, format!("must be at least {min}"));
        } else if value > max {
            self.add(field, format!("must be at most {max}"));
        }
    }
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Formats ms since the epoch as RFC 3339 with milliseconds.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

const DAY_S: u64 = 86_400;

impl RawConfig {
    /// Validates into the engine's types, reporting every problem found.
    pub fn validate(&self) -> Result<Config, ConfigErrors> {
        let mut p = Problems(Vec::new());
        // A config replaces the live one whole: an empty document (an empty body, `{}`, a file
        // of comments) would publish "no campaigns" and stop every round and drop task.
        if self.campaigns.is_empty() {
            p.add("campaigns", "at least one campaign is required");
        }
        if self.rounds.is_empty() && self.drops.is_empty() {
            p.add("rounds", "at least one round or drop task is required");
        }
        if self.rounds.len() > MAX_ROUNDS {
            p.add(
                "rounds",
                format!("at most {MAX_ROUNDS} rounds, got {}", self.rounds.len()),
            );
        }
        if self.drops.len() > MAX_DROP_TASKS {
            p.add(
                "drops",
                format!(
                    "at most {MAX_DROP_TASKS} drop tasks, got {}",
                    self.drops.len()
                ),
            );
        }

        let mut campaigns = Vec::new();
        let mut campaign_index = HashMap::new();
        for (i, c) in self.campaigns.iter().enumerate() {
            let at = |f: &str| format!("campaigns[{i}].{f}");
            let id = p.id(at("id"), &c.id, CampaignId::new);
            let starts = p.time(at("starts_at"), &c.starts_at);
            let ends = p.time(at("ends_at"), &c.ends_at);
            if let (Some(s), Some(e)) = (starts, ends) {
                if e <= s {
                    p.add(at("ends_at"), "must be after starts_at");
                }
            }
            if c.max_wins_per_user == Some(0) {
                p.add(
                    at("max_wins_per_user"),
                    "must be at least 1 (omit it for no limit)",
                );
            }
            if let Some(cash) = c.max_cash_cents_per_user {
                p.range(at("max_cash_cents_per_user"), cash, 1, u64::MAX / 4);
            }
            if let Some(id) = id {
                if campaign_index.insert(id.clone(), campaigns.len()).is_some() {
                    p.add(at("id"), format!("duplicate campaign id {id}"));
                }
                campaigns.push(Campaign {
                    id,
                    name: c.name.clone(),
                    starts_at_ms: starts.unwrap_or(0),
                    ends_at_ms: ends.unwrap_or(0),
                    max_wins_per_user: c.max_wins_per_user,
                    max_cash_per_user: c.max_cash_cents_per_user.map(Cents),
                    paused: c.paused,
                });
            }
        }

        let mut partners = Vec::new();
        let mut partner_index = HashMap::new();
        for (i, r) in self.partners.iter().enumerate() {
            let at = |f: &str| format!("partners[{i}].{f}");
            let id = p.id(at("id"), &r.id, PartnerId::new);
            let kind = match r.kind.as_str() {
                "wallet" => Some(PartnerKind::Wallet),
                "coupon" => Some(PartnerKind::Coupon),
                other => {
                    p.add(
                        at("kind"),
                        format!("must be \"wallet\" or \"coupon\", got {other:?}"),
                    );
                    None
                }
            };
            if !valid_http_url(&r.url) {
                p.add(
                    at("url"),
                    format!("must be an http:// URL with a host, got {:?}", r.url),
                );
            }
            p.range(
                at("rate_per_s"),
                r.rate_per_s.into(),
                1,
                MAX_RATE_PER_S.into(),
            );
            p.range(at("max_in_flight"), r.max_in_flight.into(), 1, 10_000);
            p.range(at("timeout_ms"), r.timeout_ms.into(), 1, 120_000);
            let retry_deadline_s = r.retry_deadline_s.unwrap_or(DEFAULT_RETRY_DEADLINE_S);
            p.range(
                at("retry_deadline_s"),
                retry_deadline_s.into(),
                1,
                30 * 86_400,
            );
            let deferred_retry_s = r.deferred_retry_s.unwrap_or(DEFAULT_DEFERRED_RETRY_S);
            p.range(at("deferred_retry_s"), deferred_retry_s.into(), 1, 86_400);
            if let (Some(id), Some(kind)) = (id, kind) {
                if partner_index.insert(id.clone(), partners.len()).is_some() {
                    p.add(at("id"), format!("duplicate partner id {id}"));
                }
                partners.push(Partner {
                    id,
                    name: r.name.clone(),
                    kind,
                    url: r.url.clone(),
                    rate_per_s: r.rate_per_s,
                    max_in_flight: r.max_in_flight,
                    timeout_ms: r.timeout_ms,
                    paused: r.paused,
                    retry_deadline_s,
                    deferred_retry_s,
                });
            }
        }

        let mut rounds = Vec::new();
        let mut round_index = HashMap::new();
        let mut prize_ids = HashSet::new();
        for (i, r) in self.rounds.iter().enumerate() {
            let at = |f: &str| format!("rounds[{i}].{f}");
            let id = p.id(at("id"), &r.id, RoundId::new);
            let campaign = campaign_index.get(r.campaign.as_str()).copied();
            if campaign.is_none() {
                p.add(at("campaign"), format!("unknown campaign {:?}", r.campaign));
            }
            let starts = p.time(at("starts_at"), &r.starts_at);
            p.range(at("duration_s"), r.duration_s, 1, 30 * DAY_S);
            if let Some(every) = r.every_s {
                if every < r.duration_s {
                    p.add(
                        at("every_s"),
                        "must be at least duration_s (occurrences may not overlap)",
                    );
                }
                p.range(at("every_s"), every, 1, 365 * DAY_S);
            }
            p.range(at("participation_s"), r.participation_s, 1, 30 * DAY_S);
            p.range(at("stagger_groups"), r.stagger_groups.into(), 1, 1000);
            p.range(at("stagger_s"), r.stagger_s, 0, DAY_S);
            if r.stagger_groups > 1 && u64::from(r.stagger_groups - 1) * r.stagger_s >= r.duration_s
            {
                p.add(
                    at("stagger_s"),
                    "the last group must start before the round ends",
                );
            }
            p.range(
                at("max_wins_per_user"),
                r.max_wins_per_user.into(),
                1,
                1_000_000,
            );
            if r.prizes.len() > MAX_PRIZES_PER_ROUND {
                p.add(
                    at("prizes"),
                    format!(
                        "at most {MAX_PRIZES_PER_ROUND} prizes, got {}",
                        r.prizes.len()
                    ),
                );
            }
            let mut prizes = Vec::new();
            for (j, z) in r.prizes.iter().enumerate() {
                if let Some(prize) = validate_prize(
                    &mut p,
                    &format!("rounds[{i}].prizes[{j}]"),
                    z,
                    &partner_index,
                    &partners,
                ) {
                    if !prize_ids.insert(prize.id.clone()) {
                        p.add(
                            format!("rounds[{i}].prizes[{j}].id"),
                            format!("duplicate prize id {}", prize.id),
                        );
                    }
                    prizes.push(prize);
                }
            }
            let total_weight = u64::from(r.no_win_weight)
                + prizes.iter().map(|z| u64::from(z.weight)).sum::<u64>();
            if total_weight == 0 {
                p.add(
                    at("no_win_weight"),
                    "the round's weights sum to 0: give no_win_weight or a prize a weight",
                );
            }
            if let (Some(id), Some(campaign)) = (id, campaign) {
                if let (Some(s), Some(c)) = (starts, campaigns.get(campaign)) {
                    if s < c.starts_at_ms || s >= c.ends_at_ms {
                        p.add(
                            at("starts_at"),
                            "must fall within its campaign's starts_at..ends_at",
                        );
                    }
                }
                if round_index.insert(id.clone(), rounds.len()).is_some() {
                    p.add(at("id"), format!("duplicate round id {id}"));
                }
                rounds.push(Round {
                    id,
                    campaign,
                    name: r.name.clone(),
                    starts_at_ms: starts.unwrap_or(0),
                    duration_ms: r.duration_s.saturating_mul(1000),
                    every_ms: r.every_s.map(|s| s.saturating_mul(1000)),
                    participation_ms: r.participation_s.saturating_mul(1000),
                    stagger_groups: r.stagger_groups.max(1),
                    stagger_ms: r.stagger_s.saturating_mul(1000),
                    max_wins_per_user: r.max_wins_per_user,
                    no_win_weight: r.no_win_weight,
                    total_weight,
                    paused: r.paused,
                    prizes,
                });
            }
        }

        let mut drops = Vec::new();
        let mut drop_index = HashMap::new();
        for (i, d) in self.drops.iter().enumerate() {
            let at = |f: &str| format!("drops[{i}].{f}");
            let id = p.id(at("id"), &d.id, RoundId::new);
            let campaign = campaign_index.get(d.campaign.as_str()).copied();
            if campaign.is_none() {
                p.add(at("campaign"), format!("unknown campaign {:?}", d.campaign));
            }
            let lower = d.points.to_ascii_lowercase();
            if !(lower.ends_with(".csv") || lower.ends_with(".geojson") || lower.ends_with(".json"))
            {
                p.add(
                    at("points"),
                    format!("must be a .csv, .geojson or .json file, got {:?}", d.points),
                );
            }
            for (z, zone) in d.zones.iter().enumerate() {
                if zone.trim().is_empty() {
                    p.add(format!("drops[{i}].zones[{z}]"), "must be a file path");
                }
            }
            p.range(at("resolution"), d.resolution.into(), 0, MAX_H3_RESOLUTION);
            p.range(at("k"), d.k.into(), 0, MAX_RINGS);
            p.range(at("radius_m"), d.radius_m.into(), 1, MAX_RADIUS_M);
            p.range(at("per_drop"), d.per_drop.into(), 1, MAX_QUOTA);
            p.range(
                at("max_claims_per_user"),
                d.max_claims_per_user.into(),
                1,
                1_000_000,
            );
            p.range(at("region_refresh_s"), d.region_refresh_s, 1, 3600);
            let starts = p.time(at("starts_at"), &d.starts_at);
            let ends = p.time(at("ends_at"), &d.ends_at);
            if let (Some(s), Some(e)) = (starts, ends) {
                if e <= s {
                    p.add(at("ends_at"), "must be after starts_at");
                }
            }
            if d.prizes.is_empty() {
                p.add(at("prizes"), "a drop task needs at least one prize");
            }
            if d.prizes.len() > MAX_PRIZES_PER_ROUND {
                p.add(
                    at("prizes"),
                    format!(
                        "at most {MAX_PRIZES_PER_ROUND} prizes, got {}",
                        d.prizes.len()
                    ),
                );
            }
            let mut prizes = Vec::new();
            for (j, z) in d.prizes.iter().enumerate() {
                let base = format!("drops[{i}].prizes[{j}]");
                if let Some(prize) = validate_prize(&mut p, &base, z, &partner_index, &partners) {
                    if !prize_ids.insert(prize.id.clone()) {
                        p.add(
                            format!("{base}.id"),
                            format!("duplicate prize id {}", prize.id),
                        );
                    }
                    prizes.push(prize);
                }
            }
            let total_weight: u64 = prizes.iter().map(|z| u64::from(z.weight)).sum();
            if total_weight == 0 && !d.prizes.is_empty() {
                p.add(
                    at("prizes"),
                    "the prizes' weights sum to 0: give one a weight",
                );
            }
            let (Some(id), Some(campaign), Some(starts), Some(ends)) = (id, campaign, starts, ends)
            else {
                continue;
            };
            if let Some(c) = campaigns.get(campaign) {
                if starts < c.starts_at_ms || ends > c.ends_at_ms {
                    p.add(
                        at("starts_at"),
                        "the window must fall within its campaign's starts_at..ends_at",
                    );
                }
            }
            if round_index.contains_key(&id) || drop_index.insert(id.clone(), drops.len()).is_some()
            {
                p.add(at("id"), format!("duplicate round or drop task id {id}"));
            }
            let duration_ms = ends.saturating_sub(starts);
            drops.push(DropTask {
                points: d.points.clone(),
                zones: d.zones.clone(),
                resolution: d.resolution,
                k: d.k,
                radius_m: d.radius_m,
                per_drop: d.per_drop,
                region_refresh_ms: d.region_refresh_s.saturating_mul(1000),
                round: Round {
                    id,
                    campaign,
                    name: d.name.clone(),
                    starts_at_ms: starts,
                    duration_ms,
                    every_ms: None,
                    participation_ms: duration_ms,
                    stagger_groups: 1,
                    stagger_ms: 0,
                    max_wins_per_user: d.max_claims_per_user,
                    no_win_weight: 0,
                    total_weight,
                    paused: d.paused,
                    prizes,
                },
            });
        }

        if p.0.is_empty() {
            Ok(Config {
                campaigns,
                partners,
                rounds,
                drops,
                round_index,
                drop_index,
                campaign_index,
                raw: self.clone(),
            })
        } else {
            Err(ConfigErrors { errors: p.0 })
        }
    }
}

fn validate_prize(
    p: &mut Problems,
    base: &str,
    z: &RawPrize,
    partner_index: &HashMap<PartnerId, usize>,
    partners: &[Partner],
) -> Option<Prize> {
    let at = |f: &str| format!("{base}.{f}");
    let id = p.id(at("id"), &z.id, PrizeId::new);
    let partner = partner_index.get(z.partner.as_str()).copied();
    if partner.is_none() {
        p.add(at("partner"), format!("unknown partner {:?}", z.partner));
    }
    p.range(at("quota"), z.quota, 1, MAX_QUOTA);
    p.range(
        at("rate_per_s"),
        z.rate_per_s.into(),
        1,
        MAX_RATE_PER_S.into(),
    );
    let kind = match z.kind.as_str() {
        "cash" => {
            if z.sku.is_some() {
                p.add(at("sku"), "a cash prize has no sku");
            }
            let amount = match (z.amount_cents, z.amount_min_cents, z.amount_max_cents) {
                (Some(a), None, None) => Some((at("amount_cents"), a, a)),
                (None, Some(lo), Some(hi)) => {
                    if hi < lo {
                        p.add(at("amount_max_cents"), "must be at least amount_min_cents");
                    }
                    Some((at("amount_min_cents"), lo, hi))
                }
                _ => {
                    p.add(
                        at("amount_cents"),
                        "give amount_cents, or both amount_min_cents and amount_max_cents",
                    );
                    None
                }
            };
            amount.map(|(field, lo, hi)| {
                p.range(field, lo, 1, MAX_AMOUNT_CENTS);
                if hi > MAX_AMOUNT_CENTS {
                    p.add(
                        at("amount_max_cents"),
                        format!("must be at most {MAX_AMOUNT_CENTS}"),
                    );
                }
                PrizeKind::Cash {
                    min: Cents(lo),
                    max: Cents(hi.max(lo)),
                }
            })
        }
        "coupon" => {
            if z.amount_cents.is_some()
                || z.amount_min_cents.is_some()
                || z.amount_max_cents.is_some()
            {
                p.add(at("amount_cents"), "a coupon has a sku, not an amount");
            }
            match &z.sku {
                Some(sku) => {
                    if let Err(e) = crate::ids::check_id(sku) {
                        p.add(at("sku"), e.to_string());
                    }
                    Some(PrizeKind::Coupon { sku: sku.clone() })
                }
                None => {
                    p.add(at("sku"), "a coupon needs a sku");
                    None
                }
            }
        }
        other => {
            p.add(
                at("kind"),
                format!("must be \"cash\" or \"coupon\", got {other:?}"),
            );
            None
        }
    };
    if let (Some(kind), Some(partner)) = (&kind, partner) {
        let wanted = if matches!(kind, PrizeKind::Cash { .. }) {
            PartnerKind::Wallet
        } else {
            PartnerKind::Coupon
        };
        if partners[partner].kind != wanted {
            p.add(
                at("partner"),
                format!("a {} prize needs a {:?} partner", z.kind, wanted).to_lowercase(),
            );
        }
    }
    Some(Prize {
        id: id?,
        kind: kind?,
        partner: partner?,
        quota: z.quota,
        rate_per_s: z.rate_per_s,
        weight: z.weight,
        paused: z.paused,
    })
}

fn valid_http_url(url: &str) -> bool {
    url.strip_prefix("http://")
        .map(|rest| {
            let host = rest.split('/').next().unwrap_or("");
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// One campaign, a wallet partner, and round `r1` (50 s every 60 s from 2026-01-01) with one
    /// prize; shared with the crate's integration tests.
    pub(crate) const GOOD: &str = include_str!("../tests/fixtures/good.toml");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tests_support::GOOD;

    fn errors_of(text: &str) -> Vec<String> {
        Config::from_toml(text)
            .unwrap_err()
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn good_config_validates() {
        let c = Config::from_toml(GOOD).unwrap();
        let r = c.round("r1").unwrap();
        assert_eq!(r.total_weight, 100);
        assert_eq!(r.every_ms, Some(60_000));
        assert_eq!(
            r.prizes[0].kind,
            PrizeKind::Cash {
                min: Cents(88),
                max: Cents(88)
            }
        );
    }

    #[test]
    fn problems_name_the_field_path() {
        let text = GOOD.replace("rate_per_s = 15", "rate_per_s = 0");
        assert_eq!(
            errors_of(&text),
            vec!["rounds[0].prizes[0].rate_per_s: must be at least 1"]
        );
        let text = GOOD.replace("partner = \"wallet\"", "partner = \"nobody\"");
        assert_eq!(
            errors_of(&text),
            vec!["rounds[0].prizes[0].partner: unknown partner \"nobody\""]
        );
    }

    #[test]
    fn wrong_types_name_the_field_path() {
        let text = GOOD.replace("quota = 100", "quota = \"lots\"");
        let errs = errors_of(&text);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("rounds[0].prizes[0].quota: invalid type"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = GOOD.replace("weight = 10", "weight = 10\nwieght = 3");
        let errs = errors_of(&text);
        assert!(errs[0].contains("unknown field `wieght`"), "{errs:?}");
    }

    #[test]
    fn several_problems_are_all_reported() {
        let text = GOOD
            .replace("quota = 100", "quota = 0")
            .replace("duration_s = 50", "duration_s = 0");
        let errs = errors_of(&text);
        assert!(
            errs.contains(&"rounds[0].duration_s: must be at least 1".to_string()),
            "{errs:?}"
        );
        assert!(
            errs.contains(&"rounds[0].prizes[0].quota: must be at least 1".to_string()),
            "{errs:?}"
        );
    }

    const DROPS: &str = r#"
        [[drops]]
        id = "mall"
        campaign = "spring"
        points = "points.csv"
        radius_m = 50
        starts_at = "2027-01-01T00:00:00Z"
        ends_at = "2027-02-01T00:00:00Z"
        max_claims_per_user = 2

        [[drops.prizes]]
        id = "drop-cash"
        kind = "cash"
        amount_cents = 50
        partner = "wallet"
        quota = 1000
        rate_per_s = 10
        weight = 1
    "#;

    #[test]
    fn a_drop_task_is_a_one_off_round_over_its_window() {
        let c = Config::from_toml(&(GOOD.to_string() + DROPS)).unwrap();
        let task = c.drop_task("mall").unwrap();
        assert_eq!((task.resolution, task.k, task.per_drop), (10, 2, 1));
        let r = &task.round;
        assert_eq!(
            (r.every_ms, r.no_win_weight, r.max_wins_per_user),
            (None, 0, 2)
        );
        assert_eq!(r.participation_ms, r.duration_ms);
        assert_eq!(r.duration_ms, 31 * 86_400_000);
        assert!(
            c.round("mall").is_none(),
            "a task is not drawable as a round"
        );
        assert!(c
            .prizes()
            .any(|(r, p)| r.id.as_str() == "mall" && p.id.as_str() == "drop-cash"));
    }

    #[test]
    fn drop_task_problems_name_the_field_path() {
        let text = GOOD.to_string()
            + &DROPS
                .replace("points.csv", "points.txt")
                .replace("radius_m = 50", "radius_m = 0\nresolution = 16\nk = 9")
                .replace("id = \"mall\"", "id = \"r1\"")
                .replace("2027-02-01", "2026-12-01")
                .replace("id = \"drop-cash\"", "id = \"cash-88\"");
        let errs = errors_of(&text);
        for expected in [
            "drops[0].points: must be a .csv, .geojson or .json file, got \"points.txt\"",
            "drops[0].radius_m: must be at least 1",
            "drops[0].resolution: must be at most 15",
            "drops[0].k: must be at most 8",
            "drops[0].ends_at: must be after starts_at",
            "drops[0].prizes[0].id: duplicate prize id cash-88",
            "drops[0].id: duplicate round or drop task id r1",
        ] {
            assert!(errs.contains(&expected.to_string()), "{expected}: {errs:?}");
        }
    }

    #[test]
    fn empty_config_is_refused() {
        let expected = [
            "campaigns: at least one campaign is required".to_string(),
            "rounds: at least one round or drop task is required".to_string(),
        ];
        for text in ["", "   \n", "# just a comment\n"] {
            assert_eq!(errors_of(text), expected, "{text:?}");
        }
        for json in [&b"{}"[..], b"{\"campaigns\": [], \"rounds\": []}"] {
            let errs: Vec<String> = Config::from_json(json)
                .unwrap_err()
                .errors
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(errs, expected);
        }
        // A campaign and partner with nothing to draw is refused too.
        let no_rounds = GOOD.split("[[rounds]]").next().unwrap();
        assert_eq!(
            errors_of(no_rounds),
            ["rounds: at least one round or drop task is required"]
        );
    }

    #[test]
    fn json_and_toml_agree() {
        let c = Config::from_toml(GOOD).unwrap();
        let json = serde_json::to_vec(&c.raw).unwrap();
        let again = Config::from_json(&json).unwrap();
        assert_eq!(again.raw, c.raw);
    }
}
