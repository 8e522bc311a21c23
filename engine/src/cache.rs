//! The in-process cache of user standings, so a returning user's draw reads no disk.
//!
//! Only the draw that holds a user's lock writes that user's entries, after its batch is
//! durable, so a cached standing is never older than storage. The round part and the campaign
//! part are cached apart because one campaign's standing is shared by all its rounds.
//! Bounded by entry count; a miss falls back to storage.

use quota::draw::UserStanding;
use quota::ids::Cents;

/// Default entries per part.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

#[derive(Clone, Copy)]
struct RoundPart {
    occurrence: Option<u64>,
    first_draw_ms: Option<u64>,
    wins: u32,
}

#[derive(Clone, Copy)]
struct CampaignPart {
    wins: u32,
    cash: Cents,
}

/// Cached standings.
pub struct StandingCache {
    rounds: quick_cache::sync::Cache<String, RoundPart>,
    campaigns: quick_cache::sync::Cache<String, CampaignPart>,
}

impl std::fmt::Debug for StandingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandingCache")
            .field("rounds", &self.rounds.len())
            .field("campaigns", &self.campaigns.len())
            .finish()
    }
}

fn key(scope: &str, user: &str) -> String {
    let mut k = String::with_capacity(scope.len() + 1 + user.len());
    k.push_str(scope);
    k.push('\0');
    k.push_str(user);
    k
}

impl StandingCache {
    /// A cache of at most `capacity` entries per part.
    pub fn new(capacity: usize) -> Self {
        Self {
            rounds: quick_cache::sync::Cache::new(capacity),
            campaigns: quick_cache::sync::Cache::new(capacity),
        }
    }

    /// The cached standing of `user`, if both parts are cached.
    pub fn get(&self, round: &str, campaign: &str, user: &str) -> Option<UserStanding> {
        let r = self.rounds.get(key(round, user).as_str())?;
        let c = self.campaigns.get(key(campaign, user).as_str())?;
        Some(UserStanding {
            occurrence: r.occurrence,
            first_draw_ms: r.first_draw_ms,
            round_wins: r.wins,
            campaign_wins: c.wins,
            campaign_cash_cents: c.cash.0,
        })
    }

    /// Records `s` as `user`'s standing (call only once it is durable, under the user's lock).
    pub fn put(&self, round: &str, campaign: &str, user: &str, s: &UserStanding) {
        self.rounds.insert(
            key(round, user),
            RoundPart {
                occurrence: s.occurrence,
                first_draw_ms: s.first_draw_ms,
                wins: s.round_wins,
            },
        );
        self.campaigns.insert(
            key(campaign, user),
            CampaignPart {
                wins: s.campaign_wins,
                cash: Cents(s.campaign_cash_cents),
            },
        );
    }
}
