//! The draw: a weighted pick against "no win", with fall-through to the other prizes.
//!
//! The algorithm is pure: the caller supplies the randomness and a [`Taker`] that owns the
//! counters, so the same code runs in the engine, in property tests and in benchmarks.

use rand::Rng;

use crate::config::{PrizeKind, Round};
use crate::ids::Cents;
use crate::limiter::Refusal;

/// A user's standing against the caps that apply to one draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserCaps {
    /// Wins so far in this round occurrence.
    pub round_wins: u32,
    /// The round's per-user cap.
    pub round_cap: u32,
    /// Wins so far in the campaign.
    pub campaign_wins: u32,
    /// The campaign's per-user win cap, if any.
    pub campaign_cap: Option<u32>,
    /// Cash so far in the campaign.
    pub cash: Cents,
    /// The campaign's per-user cash cap, if any.
    pub cash_cap: Option<Cents>,
}

impl UserCaps {
    /// Whether no further win of any kind is allowed.
    pub fn wins_exhausted(&self) -> bool {
        self.round_wins >= self.round_cap
            || self
                .campaign_cap
                .is_some_and(|cap| self.campaign_wins >= cap)
    }

    fn cash_fits(&self, amount: Cents) -> bool {
        self.cash_cap
            .is_none_or(|cap| self.cash.0.saturating_add(amount.0) <= cap.0)
    }

    fn record(&mut self, amount: Option<Cents>) {
        self.round_wins += 1;
        self.campaign_wins += 1;
        if let Some(a) = amount {
            self.cash = Cents(self.cash.0 + a.0);
        }
    }
}

/// Takes one unit of a prize from its counters, or says why not.
pub trait Taker {
    /// Tries to take prize `index` (into `Round::prizes`).
    fn try_take(&mut self, index: usize) -> Result<(), Refusal>;
}

impl<F: FnMut(usize) -> Result<(), Refusal>> Taker for F {
    fn try_take(&mut self, index: usize) -> Result<(), Refusal> {
        self(index)
    }
}

/// The result of one shake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shake {
    /// No prize: the pick fell on "no win", or no prize had room.
    None,
    /// A prize was taken.
    Win {
        /// Index into `Round::prizes`.
        prize: usize,
        /// The cash amount, for a cash prize.
        amount: Option<Cents>,
    },
    /// The user reached a win cap before this shake.
    Capped,
}

/// Runs one shake of `round` for a user standing at `caps`, updating `caps` on a win.
///
/// The pick is by weight against `no_win_weight`. If the picked prize is paused, would put the
/// user past the cash cap, or has no quota or slot room, the other prizes are tried in turn
/// (picked + 1, picked + 2, … wrapping), so prizes go out whenever any can.
pub fn shake<R: Rng + ?Sized, T: Taker + ?Sized>(
    round: &Round,
    caps: &mut UserCaps,
    rng: &mut R,
    taker: &mut T,
) -> Shake {
    if caps.wins_exhausted() {
        return Shake::Capped;
    }
    let mut ticket = rng.gen_range(0..round.total_weight);
    if ticket < u64::from(round.no_win_weight) {
        return Shake::None;
    }
    ticket -= u64::from(round.no_win_weight);
    let n = round.prizes.len();
    let mut picked = 0;
    for (i, p) in round.prizes.iter().enumerate() {
        if ticket < u64::from(p.weight) {
            picked = i;
            break;
        }
        ticket -= u64::from(p.weight);
    }
    for step in 0..n {
        let index = (picked + step) % n;
        let prize = &round.prizes[index];
        if prize.paused || prize.weight == 0 {
            continue;
        }
        let amount = match &prize.kind {
            PrizeKind::Cash { min, max } => Some(Cents(rng.gen_range(min.0..=max.0))),
            PrizeKind::Coupon { .. } => None,
        };
        if amount.is_some_and(|a| !caps.cash_fits(a)) {
            continue;
        }
        if taker.try_take(index).is_ok() {
            caps.record(amount);
            return Shake::Win {
                prize: index,
                amount,
            };
        }
    }
    Shake::None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn falls_through_to_a_prize_with_room() {
        let text = crate::config::tests_support::GOOD.to_string()
            + r#"
        [[rounds.prizes]]
        id = "cash-1"
        kind = "cash"
        amount_min_cents = 1
        amount_max_cents = 5
        partner = "wallet"
        quota = 100
        rate_per_s = 15
        weight = 10
        "#;
        let c = Config::from_toml(&text).unwrap();
        let round = c.round("r1").unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut caps = UserCaps {
            round_cap: 1000,
            ..Default::default()
        };
        let mut taker = |i: usize| if i == 0 { Err(Refusal::Quota) } else { Ok(()) };
        let mut wins = 0;
        for _ in 0..1000 {
            match shake(round, &mut caps, &mut rng, &mut taker) {
                Shake::Win { prize, amount } => {
                    assert_eq!(prize, 1);
                    assert!((1..=5).contains(&amount.unwrap().0));
                    wins += 1;
                }
                Shake::None => {}
                Shake::Capped => panic!("not capped"),
            }
        }
        assert!(
            wins > 100,
            "about 20% of shakes pick a prize and fall through: {wins}"
        );
    }
}

/// Most shakes one request may batch.
pub const MAX_SHAKES: u32 = 20;

/// What storage knows of a user in one round and its campaign, before a draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct UserStanding {
    /// The occurrence `first_draw_ms` and `round_wins` belong to.
    pub occurrence: Option<u64>,
    /// The user's first draw in that occurrence.
    pub first_draw_ms: Option<u64>,
    /// Wins in that occurrence.
    pub round_wins: u32,
    /// Wins in the campaign.
    pub campaign_wins: u32,
    /// Cash in the campaign, in cents.
    pub campaign_cash_cents: u64,
}

/// The overall outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one shake won.
    Win,
    /// No shake won.
    None,
    /// The user had reached a cap.
    Capped,
    /// The user may not draw now.
    NotLive(crate::schedule::NotLive),
}

impl Outcome {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Win => "win",
            Outcome::None => "none",
            Outcome::Capped => "capped",
            Outcome::NotLive(_) => "not_live",
        }
    }
}

/// One prize taken by a plan.
#[derive(Debug, Clone)]
pub struct PlannedWin {
    /// Index into the round's prizes.
    pub prize: usize,
    /// Cash amount, for cash prizes.
    pub amount: Option<Cents>,
    /// The counters it was taken from (to give back if the win cannot be made durable).
    pub counters: std::sync::Arc<crate::limiter::PrizeCounters>,
}

/// The result of planning one request: counters are already taken; the caller must make the
/// plan durable, or give the wins back with [`DrawPlan::give_back`].
#[derive(Debug, Clone)]
pub struct DrawPlan {
    /// The overall outcome.
    pub outcome: Outcome,
    /// The occurrence drawn in, when live.
    pub occurrence: Option<crate::schedule::Occurrence>,
    /// Prizes taken, in shake order.
    pub wins: Vec<PlannedWin>,
    /// The user's standing after the draw (to store), `None` if unchanged.
    pub standing: Option<UserStanding>,
    /// Takes refused for lack of slot room.
    pub slot_refusals: u32,
    /// Takes refused for lack of quota.
    pub quota_refusals: u32,
}

impl DrawPlan {
    /// Returns every taken prize to its quota.
    pub fn give_back(&self) {
        for w in &self.wins {
            w.counters.quota.give_back();
        }
    }
}

/// Plans a request of `shakes` shakes by `user` in `round` at `now_ms`.
///
/// Uses `store`'s node share of each prize's quota and rate, and `book` for the counters.
/// The caller must hold the user's serialization lock from loading `standing` until the plan
/// is durable, so caps hold under one user's concurrent requests.
#[allow(clippy::too_many_arguments)] // reason: each input is a distinct piece of the draw's context
pub fn plan<R: Rng + ?Sized>(
    snapshot: &crate::store::Snapshot,
    store: &crate::store::ConfigStore,
    book: &crate::book::CounterBook,
    round: &Round,
    user: &str,
    standing: UserStanding,
    shakes: u32,
    now_ms: u64,
    rng: &mut R,
) -> DrawPlan {
    let campaign = &snapshot.config.campaigns[round.campaign];
    let mut plan = DrawPlan {
        outcome: Outcome::None,
        occurrence: None,
        wins: Vec::new(),
        standing: None,
        slot_refusals: 0,
        quota_refusals: 0,
    };
    let current = match round.status(campaign, now_ms) {
        crate::schedule::RoundStatus::Live(occ) => Some(occ.index),
        _ => None,
    };
    let same_occurrence = current.is_some() && standing.occurrence == current;
    let first_draw = if same_occurrence {
        standing.first_draw_ms
    } else {
        None
    };
    let occ = match round.admit(campaign, user, first_draw, now_ms) {
        Ok(occ) => occ,
        Err(why) => {
            plan.outcome = Outcome::NotLive(why);
            return plan;
        }
    };
    plan.occurrence = Some(occ);
    let mut caps = UserCaps {
        round_wins: if same_occurrence {
            standing.round_wins
        } else {
            0
        },
        round_cap: round.max_wins_per_user,
        campaign_wins: standing.campaign_wins,
        campaign_cap: campaign.max_wins_per_user,
        cash: Cents(standing.campaign_cash_cents),
        cash_cap: campaign.max_cash_per_user,
    };
    let share = store.share();
    let (mut taken, mut amounts) = (Vec::new(), Vec::new());
    let (mut slot_refusals, mut quota_refusals) = (0, 0);
    let mut taker = |index: usize| {
        let prize = &round.prizes[index];
        let counters =
            book.get_or_create(&prize.id, occ.index, now_ms, || store.limit_of(&prize.id));
        let result = counters.try_take(now_ms, prize.rate_per_s, share);
        match result {
            Ok(()) => taken.push((index, counters)),
            Err(Refusal::Slot) => slot_refusals += 1,
            Err(Refusal::Quota) => quota_refusals += 1,
        }
        result
    };
    let mut capped = false;
    for _ in 0..shakes.clamp(1, MAX_SHAKES) {
        match shake(round, &mut caps, rng, &mut taker) {
            Shake::Win { amount, .. } => amounts.push(amount),
            Shake::None => {}
            Shake::Capped => {
                capped = true;
                break;
            }
        }
    }
    plan.slot_refusals = slot_refusals;
    plan.quota_refusals = quota_refusals;
    plan.wins = taken
        .into_iter()
        .zip(amounts)
        .map(|((prize, counters), amount)| PlannedWin {
            prize,
            amount,
            counters,
        })
        .collect();
    plan.outcome = match (plan.wins.is_empty(), capped) {
        (false, _) => Outcome::Win,
        (true, true) => Outcome::Capped,
        (true, false) => Outcome::None,
    };
    plan.standing = Some(UserStanding {
        occurrence: Some(occ.index),
        first_draw_ms: Some(first_draw.unwrap_or(now_ms)),
        round_wins: caps.round_wins,
        campaign_wins: caps.campaign_wins,
        campaign_cash_cents: caps.cash.0,
    });
    plan
}
