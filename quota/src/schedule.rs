//! When a round is live, and when one user may draw in it.

use crate::config::{Campaign, Round};

/// One occurrence of a (possibly recurring) round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    /// 0 for the first; counters and user windows are per occurrence.
    pub index: u64,
    /// Start, ms since the epoch.
    pub starts_at_ms: u64,
    /// End (exclusive), ms since the epoch; clamped to the campaign's end.
    pub ends_at_ms: u64,
}

/// A round's status at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundStatus {
    /// The next occurrence has not started.
    Upcoming(Occurrence),
    /// This occurrence is running.
    Live(Occurrence),
    /// No occurrence remains.
    Ended(Option<Occurrence>),
}

/// Why a user may not draw now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotLive {
    /// No occurrence is running.
    RoundNotLive,
    /// The round, its campaign or its prizes are paused by an operator.
    Paused,
    /// The user's stagger group starts later in this occurrence.
    GroupNotStarted {
        /// When the group starts, ms since the epoch.
        starts_at_ms: u64,
    },
    /// The user's participation window (from their first draw) has closed.
    WindowClosed,
}

impl NotLive {
    /// A stable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            NotLive::RoundNotLive => "round_not_live",
            NotLive::Paused => "paused",
            NotLive::GroupNotStarted { .. } => "group_not_started",
            NotLive::WindowClosed => "window_closed",
        }
    }
}

impl Round {
    fn occurrence(&self, index: u64, campaign: &Campaign) -> Occurrence {
        let starts_at_ms = self.starts_at_ms + index * self.every_ms.unwrap_or(0);
        let ends_at_ms = (starts_at_ms + self.duration_ms).min(campaign.ends_at_ms);
        Occurrence {
            index,
            starts_at_ms,
            ends_at_ms,
        }
    }

    /// The round's status at `now_ms`.
    pub fn status(&self, campaign: &Campaign, now_ms: u64) -> RoundStatus {
        if now_ms < self.starts_at_ms {
            return RoundStatus::Upcoming(self.occurrence(0, campaign));
        }
        let index = self
            .every_ms
            .map_or(0, |every| (now_ms - self.starts_at_ms) / every);
        let occ = self.occurrence(index, campaign);
        if now_ms < occ.ends_at_ms {
            return RoundStatus::Live(occ);
        }
        let next = self.occurrence(index + 1, campaign);
        if self.every_ms.is_some() && next.starts_at_ms < campaign.ends_at_ms {
            RoundStatus::Upcoming(next)
        } else {
            RoundStatus::Ended(Some(occ))
        }
    }

    /// The first occurrence that has not ended at `now_ms` (live or upcoming); `None` once the
    /// round is over. Counters of earlier occurrences can never be drawn from again.
    pub fn first_open_occurrence(&self, campaign: &Campaign, now_ms: u64) -> Option<u64> {
        match self.status(campaign, now_ms) {
            RoundStatus::Live(o) | RoundStatus::Upcoming(o) => Some(o.index),
            RoundStatus::Ended(_) => None,
        }
    }

    /// The stagger group of a user (stable across nodes and restarts).
    pub fn group_of(&self, user: &str) -> u32 {
        (fnv1a(user.as_bytes()) % u64::from(self.stagger_groups)) as u32
    }

    /// Whether `user`, whose first draw in this occurrence was at `first_draw_ms`, may draw now.
    pub fn admit(
        &self,
        campaign: &Campaign,
        user: &str,
        first_draw_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Occurrence, NotLive> {
        if self.paused || campaign.paused {
            return Err(NotLive::Paused);
        }
        let RoundStatus::Live(occ) = self.status(campaign, now_ms) else {
            return Err(NotLive::RoundNotLive);
        };
        let group_start = occ.starts_at_ms + u64::from(self.group_of(user)) * self.stagger_ms;
        if now_ms < group_start {
            return Err(NotLive::GroupNotStarted {
                starts_at_ms: group_start,
            });
        }
        if first_draw_ms.is_some_and(|first| now_ms >= first.saturating_add(self.participation_ms))
        {
            return Err(NotLive::WindowClosed);
        }
        Ok(occ)
    }
}

/// FNV-1a, 64 bit: a stable hash for grouping users (not for security).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config() -> Config {
        Config::from_toml(crate::config::tests_support::GOOD).unwrap()
    }

    #[test]
    fn recurring_round_is_live_then_upcoming() {
        let c = config();
        let r = c.round("r1").unwrap();
        let camp = &c.campaigns[0];
        let t0 = r.starts_at_ms;
        assert!(matches!(r.status(camp, t0 + 10_000), RoundStatus::Live(o) if o.index == 0));
        assert!(matches!(r.status(camp, t0 + 55_000), RoundStatus::Upcoming(o) if o.index == 1));
        assert!(matches!(r.status(camp, t0 + 60_000), RoundStatus::Live(o) if o.index == 1));
        assert!(matches!(r.status(camp, t0 - 1), RoundStatus::Upcoming(o) if o.index == 0));
        assert!(matches!(
            r.status(camp, camp.ends_at_ms),
            RoundStatus::Ended(_)
        ));
    }

    #[test]
    fn participation_window_closes() {
        let c = config();
        let r = c.round("r1").unwrap();
        let camp = &c.campaigns[0];
        let t0 = r.starts_at_ms + 1000;
        assert!(r.admit(camp, "u", Some(t0), t0 + 29_999).is_ok());
        assert_eq!(
            r.admit(camp, "u", Some(t0), t0 + 30_000),
            Err(NotLive::WindowClosed)
        );
    }
}
