//! Property tests for the invariants `quota` owns: slot shares and their split over nodes, the
//! 100 ms slot limiter (alone and one per node), quota
//! counters, the draw's fall-through and caps, concurrent planning against the counter book, and
//! publishing into the config store.
//!
//! Time is driven (explicit `now_ms`, a [`ManualClock`] for the draw), never slept; threads meet
//! at barriers so each phase of a concurrent test happens in one known slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Barrier;
use std::thread;

use proptest::collection::vec;
use proptest::prelude::*;
use quota::book::CounterBook;
use quota::clock::{Clock, ManualClock};
use quota::config::{Config, PrizeKind, Round};
use quota::draw::{self, DrawPlan, Outcome, Shake, UserCaps, UserStanding};
use quota::ids::{Cents, PrizeId, SeqNo};
use quota::limiter::{slot_of, slot_share, QuotaCounter, Refusal, SlotLimiter, SLOT_MS};
use quota::store::{ConfigStore, NodeShare, PublishError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

/// One campaign, a wallet partner, and round `r1` (50 s every 60 s from 2026-01-01) with one
/// prize (the crate's unit tests read the same file).
const GOOD: &str = include_str!("fixtures/good.toml");

/// A coupon partner, so generated rounds can mix cash and coupon prizes.
const COUPON_PARTNER: &str = r#"
        [[partners]]
        id = "coupons"
        kind = "coupon"
        url = "http://127.0.0.1:9001/deliver"
        rate_per_s = 100
        max_in_flight = 4
        timeout_ms = 1000

"#;

/// What a generated prize gives.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Coupon,
    CashFixed(u64),
    CashRange(u64, u64),
}

#[derive(Debug, Clone)]
struct PrizeSpec {
    kind: Kind,
    quota: u64,
    rate_per_s: u32,
    weight: u32,
    paused: bool,
}

/// GOOD with its round's caps, weights and prizes replaced.
#[derive(Debug, Clone)]
struct RoundSpec {
    no_win_weight: u32,
    round_cap: u32,
    campaign_cap: Option<u32>,
    cash_cap_cents: Option<u64>,
    prizes: Vec<PrizeSpec>,
}

impl RoundSpec {
    fn text(&self) -> String {
        let (head, _good_prize) = GOOD
            .split_once("[[rounds.prizes]]")
            .expect("GOOD has a prize");
        let campaign_cap = self
            .campaign_cap
            .map_or(String::new(), |c| format!("max_wins_per_user = {c}\n"));
        let cash_cap = self.cash_cap_cents.map_or(String::new(), |c| {
            format!("max_cash_cents_per_user = {c}\n")
        });
        let mut text = head
            // the round's cap first: the campaign's line is matched by its value 10
            .replace(
                "max_wins_per_user = 3\n",
                &format!("max_wins_per_user = {}\n", self.round_cap),
            )
            .replacen("max_wins_per_user = 10\n", &campaign_cap, 1)
            .replace("max_cash_cents_per_user = 10000\n", &cash_cap)
            .replace(
                "no_win_weight = 90",
                &format!("no_win_weight = {}", self.no_win_weight),
            )
            .replace("[[rounds]]", &format!("{COUPON_PARTNER}[[rounds]]"));
        for (i, p) in self.prizes.iter().enumerate() {
            let kind = match p.kind {
                Kind::Coupon => format!("kind = \"coupon\"\nsku = \"sku-{i}\"\npartner = \"coupons\""),
                Kind::CashFixed(a) => {
                    format!("kind = \"cash\"\namount_cents = {a}\npartner = \"wallet\"")
                }
                Kind::CashRange(lo, hi) => format!(
                    "kind = \"cash\"\namount_min_cents = {lo}\namount_max_cents = {hi}\npartner = \"wallet\""
                ),
            };
            text += &format!(
                "\n[[rounds.prizes]]\nid = \"p{i}\"\n{kind}\nquota = {}\nrate_per_s = {}\nweight = {}\npaused = {}\n",
                p.quota, p.rate_per_s, p.weight, p.paused
            );
        }
        text
    }

    fn config(&self) -> Config {
        let text = self.text();
        Config::from_toml(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Coupon),
        (1u64..=2_000).prop_map(Kind::CashFixed),
        (1u64..=2_000, 0u64..=2_000).prop_map(|(lo, d)| Kind::CashRange(lo, lo + d)),
    ]
}

fn prize(
    weights: std::ops::RangeInclusive<u32>,
    paused_ok: bool,
) -> impl Strategy<Value = PrizeSpec> {
    (
        kind(),
        1u64..=500,
        1u32..=500,
        weights,
        proptest::bool::weighted(0.2),
    )
        .prop_map(move |(kind, quota, rate_per_s, weight, paused)| PrizeSpec {
            kind,
            quota,
            rate_per_s,
            weight,
            paused: paused && paused_ok,
        })
}

/// A round for pure shakes: weights may be 0, prizes may be paused, caps are loose.
fn shake_round() -> impl Strategy<Value = RoundSpec> {
    (0u32..=20, vec(prize(0..=5, true), 1..=8)).prop_map(|(no_win, prizes)| {
        let all_zero = prizes.iter().all(|p| p.weight == 0);
        RoundSpec {
            // validation refuses a round whose weights sum to 0
            no_win_weight: if all_zero && no_win == 0 { 1 } else { no_win },
            round_cap: 1_000_000,
            campaign_cap: None,
            cash_cap_cents: None,
            prizes,
        }
    })
}

/// A prize may be won by a shake that reaches it in the fall-through.
fn eligible(round: &Round, i: usize) -> bool {
    !round.prizes[i].paused && round.prizes[i].weight > 0
}

/// The prize whose weight interval holds `ticket`, or `None` when it falls on "no win".
fn picked_by(round: &Round, ticket: u64) -> Option<usize> {
    let mut t = ticket.checked_sub(u64::from(round.no_win_weight))?;
    for (i, p) in round.prizes.iter().enumerate() {
        if t < u64::from(p.weight) {
            return Some(i);
        }
        t -= u64::from(p.weight);
    }
    panic!(
        "ticket {ticket} is past the total weight {}",
        round.total_weight
    )
}

fn amount_range(kind: &PrizeKind) -> Option<(u64, u64)> {
    match kind {
        PrizeKind::Cash { min, max } => Some((min.0, max.0)),
        PrizeKind::Coupon { .. } => None,
    }
}

fn refusal() -> impl Strategy<Value = Option<Refusal>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Refusal::Quota)),
        1 => Just(Some(Refusal::Slot)),
    ]
}

fn node_share() -> impl Strategy<Value = NodeShare> {
    (1u32..=3)
        .prop_flat_map(|count| (0..count, Just(count)))
        .prop_map(|(index, count)| NodeShare::new(index, count).expect("index < count"))
}

/// A recent instant in ms, slot-aligned or not; some sequences start just before the limiter's
/// 28-bit slot tag wraps (every 2^28 slots).
fn start_ms() -> impl Strategy<Value = u64> {
    const WRAP_MS: u64 = (1 << 28) * SLOT_MS;
    prop_oneof![
        1_767_225_600_000u64..1_800_000_000_000,
        (66u64..=68, 0u64..5_000).prop_map(|(k, back)| k * WRAP_MS - back),
    ]
}

// ---------------------------------------------------------------------------------------------
// 1. Slot shares
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The ten shares of a second sum exactly to the rate and differ by at most one; the share
    /// depends only on the slot's place in its second.
    #[test]
    fn slot_shares_sum_to_rate_and_differ_by_at_most_one(
        rate in prop_oneof![0u32..=2_000_000, 0u32..=40],
        second in 0u64..1_000_000_000,
    ) {
        let shares: Vec<u32> = (0..10).map(|j| slot_share(rate, j)).collect();
        prop_assert_eq!(shares.iter().map(|&s| u64::from(s)).sum::<u64>(), u64::from(rate));
        let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
        prop_assert!(hi - lo <= 1, "{:?}", shares);
        for j in 0..10 {
            prop_assert_eq!(slot_share(rate, second * 10 + j), shares[j as usize]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    /// In every slot the nodes' rooms sum exactly to the slot's share (so none passes it), each
    /// node's second sums to its rate, the nodes' seconds to the rate, and a node's rooms within a
    /// second differ by at most one.
    #[test]
    fn node_rooms_sum_exactly_to_each_slots_share(
        rate in prop_oneof![0u32..=2_000_000, 0u32..=200],
        count in 1u32..=16,
        slot in 0u64..20_000_000_000,
    ) {
        let nodes: Vec<NodeShare> = (0..count).map(|i| NodeShare::new(i, count).unwrap()).collect();
        let share = slot_share(rate, slot);
        let rooms: Vec<u32> = nodes.iter().map(|n| n.slot_room(rate, slot)).collect();
        prop_assert_eq!(rooms.iter().sum::<u32>(), share, "rooms {:?}", rooms);
        prop_assert!(rooms.iter().all(|&r| r <= share), "rooms {:?} > share {}", rooms, share);
        let mut seconds = 0u64;
        for n in &nodes {
            let second: Vec<u32> = (0..10).map(|j| n.slot_room(rate, slot / 10 * 10 + j)).collect();
            prop_assert_eq!(second.iter().sum::<u32>(), n.rate(rate), "{:?}: {:?}", n, second);
            let (lo, hi) = (second.iter().min().unwrap(), second.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "{:?}: {:?}", n, second);
            seconds += u64::from(n.rate(rate));
        }
        prop_assert_eq!(seconds, u64::from(rate));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The slot limiter, one caller
// ---------------------------------------------------------------------------------------------

/// Gaps between readings: mostly many per 100 ms slot, sometimes a lull of whole slots.
fn gaps() -> impl Strategy<Value = Vec<u64>> {
    vec(prop_oneof![12 => 0u64..=25, 1 => 100u64..=1_500], 50..=600)
}

#[derive(Debug, Default, Clone, Copy)]
struct SlotTally {
    attempts: u32,
    taken: u32,
}

/// What `SlotLimiter` promises, written out plainly: a slot opens at its first *successful* take,
/// fixing its share from the rate passed then; later takes in that slot use that share whatever
/// rate they pass; a reading of a slot older than the open one is refused; a newer slot opens
/// afresh with no carry-over. A take whose new slot's share is 0 is refused and opens nothing.
#[derive(Debug, Default)]
struct SlotModel {
    open: Option<(u64, u32, u32)>, // (slot, share, used)
}

impl SlotModel {
    fn try_take(&mut self, now_ms: u64, rate_per_s: u32) -> bool {
        let slot = slot_of(now_ms);
        match &mut self.open {
            Some((open, share, used)) if *open == slot => {
                let ok = *used < *share;
                *used += u32::from(ok);
                ok
            }
            Some((open, _, _)) if *open > slot => false,
            _ => {
                let share = slot_share(rate_per_s, slot);
                if share > 0 {
                    self.open = Some((slot, share, 1));
                }
                share > 0
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// At a fixed rate and readings in time order, each slot grants exactly
    /// min(attempts, share), so unused room never carries over; each whole second grants at most
    /// the rate, and exactly the rate when every slot of it was saturated.
    #[test]
    fn slot_limiter_grants_exactly_each_slots_share(
        rate in 0u32..=400,
        start in start_ms(),
        gaps in gaps(),
    ) {
        let limiter = SlotLimiter::default();
        let mut tally: HashMap<u64, SlotTally> = HashMap::new();
        let mut now = start;
        for gap in gaps {
            now += gap;
            let ok = limiter.try_take(now, rate, NodeShare::ALONE);
            let t = tally.entry(slot_of(now)).or_default();
            t.attempts += 1;
            t.taken += u32::from(ok);
            prop_assert_eq!(limiter.used_in(now), t.taken, "used_in at {}", now);
        }
        for (&slot, t) in &tally {
            prop_assert_eq!(
                t.taken,
                t.attempts.min(slot_share(rate, slot)),
                "slot {} (rate {})", slot, rate
            );
        }
        let first_second = slot_of(start) / 10;
        let last_second = slot_of(now) / 10;
        for second in first_second..=last_second {
            let slots = (second * 10..second * 10 + 10).map(|s| tally.get(&s).copied().unwrap_or_default());
            let taken: u32 = slots.clone().map(|t| t.taken).sum();
            let saturated = slots
                .zip(second * 10..)
                .all(|(t, s)| t.attempts >= slot_share(rate, s));
            prop_assert!(taken <= rate, "second {} took {} > {}", second, taken, rate);
            if saturated {
                prop_assert_eq!(taken, rate, "saturated second {}", second);
            }
        }
    }

    /// With the rate changing between readings and some readings lagging behind (stale), the
    /// limiter answers every take exactly as [`SlotModel`] does; in particular once a slot has
    /// granted a take no older slot grants another, and an open slot keeps the share it opened
    /// with until the next slot.
    #[test]
    fn slot_limiter_fixes_share_at_open_and_refuses_stale_readings(
        rates in vec(0u32..=300, 1..=4),
        start in start_ms(),
        steps in vec((prop_oneof![10 => 0i64..=25, 1 => 100i64..=1_000, 2 => -250i64..0], proptest::bool::weighted(0.05)), 50..=600),
    ) {
        let limiter = SlotLimiter::default();
        let mut model = SlotModel::default();
        let (mut now, mut rate_at) = (start, 0usize);
        let mut newest_taken: Option<u64> = None;
        let mut share_at_open: HashMap<u64, u32> = HashMap::new();
        let mut taken_in: HashMap<u64, u32> = HashMap::new();
        for (step, switch_rate) in steps {
            now = now.saturating_add_signed(step).max(start);
            if switch_rate {
                rate_at = (rate_at + 1) % rates.len();
            }
            let rate = rates[rate_at];
            let slot = slot_of(now);
            let ok = limiter.try_take(now, rate, NodeShare::ALONE);
            prop_assert_eq!(ok, model.try_take(now, rate), "take at {} (slot {}, rate {})", now, slot, rate);
            if ok {
                prop_assert!(newest_taken.is_none_or(|n| n <= slot), "slot {} granted after slot {:?}", slot, newest_taken);
                newest_taken = Some(slot);
                let share = *share_at_open.entry(slot).or_insert_with(|| slot_share(rate, slot));
                let taken = taken_in.entry(slot).or_default();
                *taken += 1;
                prop_assert!(*taken <= share, "slot {} took {} past its opening share {}", slot, taken, share);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The slot limiter, many threads
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Threads meeting at a barrier before each phase, all reading one slot per phase: each
    /// slot grants exactly min(attempts across threads, share).
    #[test]
    fn slot_limiter_grants_exactly_the_share_across_threads(
        rate in 0u32..=3_000,
        start in start_ms(),
        // per phase: slots to skip before it, then each thread's attempts and offset in the slot
        phases in vec((0u64..=3, vec((0u32..=120, 0u64..SLOT_MS), 8)), 1..=4),
        threads in 4usize..=8,
    ) {
        let limiter = SlotLimiter::default();
        let mut slots = Vec::new();
        let mut slot = slot_of(start);
        for (skip, _) in &phases {
            slot += 1 + skip;
            slots.push(slot);
        }
        let barrier = Barrier::new(threads);
        let taken: Vec<Vec<u32>> = thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (limiter, barrier, phases, slots) = (&limiter, &barrier, &phases, &slots);
                    s.spawn(move || {
                        phases
                            .iter()
                            .zip(slots)
                            .map(|((_, per_thread), &slot)| {
                                barrier.wait();
                                let (attempts, offset) = per_thread[t];
                                let now = slot * SLOT_MS + offset;
                                (0..attempts).filter(|_| limiter.try_take(now, rate, NodeShare::ALONE)).count() as u32
                            })
                            .collect::<Vec<u32>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (p, ((_, per_thread), &slot)) in phases.iter().zip(&slots).enumerate() {
            let attempts: u32 = per_thread[..threads].iter().map(|(a, _)| a).sum();
            let got: u32 = taken.iter().map(|per_phase| per_phase[p]).sum();
            prop_assert_eq!(got, attempts.min(slot_share(rate, slot)), "phase {} slot {}", p, slot);
        }
        let last = *slots.last().unwrap();
        let expected_last: u32 = taken.iter().map(|per_phase| per_phase[phases.len() - 1]).sum();
        prop_assert_eq!(limiter.used_in(last * SLOT_MS), expected_last);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// One limiter per node, each asked in turn at readings in time order: each node's slot
    /// grants exactly min(attempts, its room), and the nodes together never more than the slot's
    /// share of the prize's rate; saturated, exactly the share.
    #[test]
    fn node_limiters_together_grant_at_most_each_slots_share(
        rate in prop_oneof![0u32..=400, 0u32..=40],
        count in 1u32..=5,
        start in start_ms(),
        // per reading: the gap before it, and which node is asked how often
        readings in vec((prop_oneof![12 => 0u64..=25, 1 => 100u64..=1_000], 0u32..5, 0u32..=12), 20..=300),
    ) {
        let nodes: Vec<NodeShare> = (0..count).map(|i| NodeShare::new(i, count).unwrap()).collect();
        let limiters: Vec<SlotLimiter> = nodes.iter().map(|_| SlotLimiter::default()).collect();
        let mut tally: HashMap<(u64, usize), SlotTally> = HashMap::new();
        let mut now = start;
        for (gap, node, attempts) in readings {
            now += gap;
            let i = (node % count) as usize;
            let t = tally.entry((slot_of(now), i)).or_default();
            for _ in 0..attempts {
                t.attempts += 1;
                t.taken += u32::from(limiters[i].try_take(now, rate, nodes[i]));
            }
        }
        let mut per_slot: HashMap<u64, (u32, bool)> = HashMap::new();
        for (&(slot, i), t) in &tally {
            let room = nodes[i].slot_room(rate, slot);
            prop_assert_eq!(t.taken, t.attempts.min(room), "slot {} node {}", slot, i);
            let s = per_slot.entry(slot).or_insert((0, true));
            s.0 += t.taken;
            s.1 &= t.attempts >= room;
        }
        for (&slot, &(taken, _)) in &per_slot {
            prop_assert!(taken <= slot_share(rate, slot), "slot {}: {} > share {}", slot, taken, slot_share(rate, slot));
        }
        // A slot in which every node was asked past its room took exactly the share.
        for (&slot, &(taken, saturated)) in &per_slot {
            let asked_all = (0..count as usize).all(|i| tally.contains_key(&(slot, i)));
            if saturated && asked_all {
                prop_assert_eq!(taken, slot_share(rate, slot), "saturated slot {}", slot);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Quota counters
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Eight threads taking at once issue exactly min(attempts, limit) and never pass the limit.
    #[test]
    fn quota_counter_issues_exactly_min_of_attempts_and_limit(
        limit in 0u32..=2_000,
        issued_before in 0u32..=100,
        attempts in vec(0u32..=400, 8),
    ) {
        let issued_before = issued_before.min(limit);
        let q = QuotaCounter::new(issued_before, limit);
        let taken: u32 = thread::scope(|s| {
            let handles: Vec<_> = attempts
                .iter()
                .map(|&n| {
                    let q = &q;
                    s.spawn(move || (0..n).filter(|_| q.try_take()).count() as u32)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let total: u32 = attempts.iter().sum();
        prop_assert_eq!(taken, total.min(limit - issued_before));
        prop_assert_eq!(q.issued(), issued_before + taken);
        prop_assert!(q.issued() <= q.limit());
        prop_assert_eq!(q.limit(), limit);
    }

    /// Give-backs return room one for one (never below zero); a limit below `issued` is refused
    /// with `Err(issued)` and changes nothing; a raise lets exactly the difference be taken.
    #[test]
    fn quota_counter_give_back_and_set_limit(
        limit in 0u32..=300,
        take in 0u32..=400,
        give in 0u32..=450,
        // the new limit: anywhere, or within 2 of what will be issued (the boundary)
        new_limit in prop_oneof![(0u32..=600).prop_map(Ok), (-2i64..=2).prop_map(Err)],
    ) {
        let q = QuotaCounter::new(0, limit);
        let taken = (0..take).filter(|_| q.try_take()).count() as u32;
        prop_assert_eq!(taken, take.min(limit));
        for _ in 0..give {
            q.give_back();
        }
        let issued = taken.saturating_sub(give);
        prop_assert_eq!(q.issued(), issued);
        let retaken = (0..give + 1).filter(|_| q.try_take()).count() as u32;
        prop_assert_eq!(retaken, (limit - issued).min(give + 1));
        let issued = issued + retaken;
        prop_assert_eq!(q.issued(), issued);

        let new_limit = new_limit
            .unwrap_or_else(|near| u32::try_from((i64::from(issued) + near).max(0)).unwrap());
        match q.set_limit(new_limit) {
            Ok(()) => {
                prop_assert!(new_limit >= issued, "accepted {} below issued {}", new_limit, issued);
                prop_assert_eq!(q.limit(), new_limit);
                let more = (0..new_limit - issued + 1).filter(|_| q.try_take()).count() as u32;
                prop_assert_eq!(more, new_limit - issued);
            }
            Err(at) => {
                prop_assert!(new_limit < issued, "refused {} at issued {}", new_limit, issued);
                prop_assert_eq!(at, issued);
                prop_assert_eq!(q.limit(), limit, "a refused limit changes nothing");
                prop_assert_eq!(q.issued(), issued);
            }
        }
        prop_assert!(q.issued() <= q.limit());
    }

    /// Limits changing while eight threads take: a refusal always reports an `issued` above the
    /// limit asked for, `issued` never passes the largest limit ever accepted, and at the end it
    /// is within the last accepted limit, which a final drain reaches exactly.
    #[test]
    fn quota_counter_limit_changes_race_takes_safely(
        first_limit in 0u32..=500,
        limits in vec(0u32..=800, 1..=40),
        attempts in vec(0u32..=300, 8),
    ) {
        let q = QuotaCounter::new(0, first_limit);
        let max_accepted = AtomicU32::new(first_limit);
        let done = AtomicU32::new(0);
        let (taken, last_accepted) = thread::scope(|s| {
            let (q, max_accepted, done) = (&q, &max_accepted, &done);
            let takers: Vec<_> = attempts
                .iter()
                .map(|&n| {
                    s.spawn(move || {
                        let got = (0..n).filter(|_| q.try_take()).count() as u32;
                        done.fetch_add(1, Ordering::SeqCst);
                        got
                    })
                })
                .collect();
            let setter = s.spawn(move || {
                let mut last = first_limit;
                for &l in &limits {
                    // raise the ceiling before a limit can be accepted, so a watcher reading it
                    // afterwards is never behind the counter
                    max_accepted.fetch_max(l, Ordering::SeqCst);
                    match q.set_limit(l) {
                        Ok(()) => last = l,
                        Err(issued) => assert!(issued > l, "refused {l} at issued {issued}"),
                    }
                }
                last
            });
            // watch from this thread while the others run (bounded, no sleeping)
            while done.load(Ordering::SeqCst) < 8 {
                let issued = q.issued();
                let ceiling = max_accepted.load(Ordering::SeqCst);
                assert!(issued <= ceiling, "issued {issued} past every limit ever set ({ceiling})");
                thread::yield_now();
            }
            let taken: u32 = takers.into_iter().map(|h| h.join().unwrap()).sum();
            (taken, setter.join().unwrap())
        });
        prop_assert_eq!(q.issued(), taken);
        prop_assert_eq!(q.limit(), last_accepted);
        prop_assert!(taken <= last_accepted, "issued {} past the final limit {}", taken, last_accepted);
        let drained = (0..=last_accepted).filter(|_| q.try_take()).count() as u32;
        prop_assert_eq!(taken + drained, last_accepted);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Fall-through
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// `shake` draws its ticket first, `rng.gen_range(0..total_weight)`, so a clone of the rng
    /// foretells the pick. A ticket on "no win" tries nothing and returns `None`; otherwise the
    /// prizes are tried from the picked one on, wrapping, skipping paused and weight-0 ones, up
    /// to the first with room, which is won; if none has room the shake is `None`. A refusing
    /// prize is never won.
    #[test]
    fn shake_falls_through_in_order_to_the_first_prize_with_room(
        spec in shake_round(),
        refusals in vec(refusal(), 8),
        seed in any::<u64>(),
    ) {
        let config = spec.config();
        let round = &config.rounds[0];
        let n = round.prizes.len();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut caps = UserCaps { round_cap: u32::MAX, ..UserCaps::default() };
        for _ in 0..40 {
            let ticket = rng.clone().gen_range(0..round.total_weight);
            let mut tried = Vec::new();
            let got = draw::shake(round, &mut caps, &mut rng, &mut |i: usize| {
                tried.push(i);
                refusals[i].map_or(Ok(()), Err)
            });
            let (expected_tried, expected_win) = match picked_by(round, ticket) {
                None => (Vec::new(), None),
                Some(picked) => {
                    prop_assert!(round.prizes[picked].weight > 0);
                    let order: Vec<usize> =
                        (0..n).map(|s| (picked + s) % n).filter(|&i| eligible(round, i)).collect();
                    match order.iter().position(|&i| refusals[i].is_none()) {
                        Some(k) => (order[..=k].to_vec(), Some(order[k])),
                        None => (order, None),
                    }
                }
            };
            prop_assert_eq!(&tried, &expected_tried, "ticket {}", ticket);
            match (got, expected_win) {
                (Shake::None, None) => {}
                (Shake::Win { prize, amount }, Some(want)) => {
                    prop_assert_eq!(prize, want);
                    prop_assert!(refusals[prize].is_none(), "won refusing prize {}", prize);
                    match amount_range(&round.prizes[prize].kind) {
                        Some((lo, hi)) => prop_assert!(amount.is_some_and(|a| (lo..=hi).contains(&a.0)), "{:?}", amount),
                        None => prop_assert_eq!(amount, None),
                    }
                }
                (got, want) => prop_assert!(false, "got {:?}, expected a win of {:?} (ticket {})", got, want, ticket),
            }
        }
    }

    /// With no weight on "no win", every shake wins while any eligible prize has room, and only
    /// a prize with room.
    #[test]
    fn shake_without_no_win_always_wins_when_any_prize_has_room(
        spec in shake_round().prop_filter("some prize weight", |s| s.prizes.iter().any(|p| p.weight > 0)),
        refusals in vec(refusal(), 8),
        seed in any::<u64>(),
    ) {
        let config = RoundSpec { no_win_weight: 0, ..spec }.config();
        let round = &config.rounds[0];
        let any_room = (0..round.prizes.len()).any(|i| eligible(round, i) && refusals[i].is_none());
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut caps = UserCaps { round_cap: u32::MAX, ..UserCaps::default() };
        for _ in 0..40 {
            let got = draw::shake(round, &mut caps, &mut rng, &mut |i: usize| refusals[i].map_or(Ok(()), Err));
            match got {
                Shake::Win { prize, .. } => {
                    prop_assert!(eligible(round, prize) && refusals[prize].is_none(), "won prize {}", prize);
                }
                Shake::None => prop_assert!(!any_room, "no win although a prize had room"),
                Shake::Capped => prop_assert!(false, "capped without caps"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Caps
// ---------------------------------------------------------------------------------------------

fn user_caps() -> impl Strategy<Value = UserCaps> {
    (
        1u32..=20,
        0u32..=20,
        proptest::option::of(1u32..=30),
        0u32..=30,
        proptest::option::of(1u64..=5_000),
        0u64..=5_000,
    )
        .prop_map(
            |(round_cap, round_wins, campaign_cap, campaign_wins, cash_cap, cash)| UserCaps {
                round_wins: round_wins.min(round_cap),
                round_cap,
                campaign_wins: campaign_cap.map_or(campaign_wins, |c| campaign_wins.min(c)),
                campaign_cap,
                cash: Cents(cash_cap.map_or(cash, |c| cash.min(c))),
                cash_cap: cash_cap.map(Cents),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Repeated shakes, every take granted: round wins, campaign wins and cash never pass their
    /// caps; a win adds one to each count and its amount to the cash; once a win cap is reached
    /// every shake is `Capped` and changes nothing. With no "no win" weight a shake wins
    /// whenever some eligible prize's largest amount fits, and with an eligible coupon the user
    /// ends with exactly as many wins as the tighter win cap allows.
    #[test]
    fn shakes_never_pass_a_users_caps(
        spec in shake_round(),
        start in user_caps(),
        no_win_zero in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let spec = if no_win_zero && spec.prizes.iter().any(|p| p.weight > 0) {
            RoundSpec { no_win_weight: 0, ..spec }
        } else {
            spec
        };
        let config = spec.config();
        let round = &config.rounds[0];
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut caps = start;
        let exhausted = |c: &UserCaps| {
            c.round_wins >= c.round_cap || c.campaign_cap.is_some_and(|cap| c.campaign_wins >= cap)
        };
        let mut wins = 0u32;
        for _ in 0..60 {
            let before = caps;
            let got = draw::shake(round, &mut caps, &mut rng, &mut |_: usize| Ok::<(), Refusal>(()));
            if exhausted(&before) {
                prop_assert_eq!(got, Shake::Capped);
                prop_assert_eq!(caps, before);
                continue;
            }
            match got {
                Shake::Capped => prop_assert!(false, "capped below the caps: {:?}", before),
                Shake::None => {
                    prop_assert_eq!(caps, before);
                    if round.no_win_weight == 0 {
                        let room = before.cash_cap.map_or(u64::MAX, |c| c.0 - before.cash.0);
                        let sure_fit = (0..round.prizes.len()).any(|i| {
                            eligible(round, i)
                                && amount_range(&round.prizes[i].kind).is_none_or(|(_, hi)| hi <= room)
                        });
                        prop_assert!(!sure_fit, "no win though a prize surely fit {:?}", before);
                    }
                }
                Shake::Win { prize, amount } => {
                    wins += 1;
                    prop_assert!(eligible(round, prize));
                    prop_assert_eq!(caps.round_wins, before.round_wins + 1);
                    prop_assert_eq!(caps.campaign_wins, before.campaign_wins + 1);
                    prop_assert_eq!(caps.cash.0, before.cash.0 + amount.map_or(0, |a| a.0));
                    prop_assert_eq!(amount.is_some(), round.prizes[prize].is_cash());
                }
            }
            prop_assert!(caps.round_wins <= caps.round_cap, "{:?}", caps);
            prop_assert!(caps.campaign_cap.is_none_or(|c| caps.campaign_wins <= c), "{:?}", caps);
            prop_assert!(caps.cash_cap.is_none_or(|c| caps.cash <= c), "{:?}", caps);
        }
        let coupon_open = (0..round.prizes.len())
            .any(|i| eligible(round, i) && amount_range(&round.prizes[i].kind).is_none());
        if round.no_win_weight == 0 && coupon_open {
            let room = (start.round_cap - start.round_wins)
                .min(start.campaign_cap.map_or(u32::MAX, |c| c - start.campaign_wins));
            prop_assert_eq!(wins, room);
            prop_assert!(exhausted(&caps));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A fixed cash amount that divides the cash cap: wins fill the cap to the cent (a win that
    /// lands exactly on the cap is allowed), then every shake is `None`, not `Capped`: the cash
    /// cap stops cash prizes, it is not a win cap.
    #[test]
    fn cash_cap_fills_exactly_then_stops_cash_prizes(
        amount in 1u64..=2_000,
        cap_in_wins in 1u64..=12,
        already in 0u64..=12,
        seed in any::<u64>(),
    ) {
        let already = already.min(cap_in_wins);
        let spec = RoundSpec {
            no_win_weight: 0,
            round_cap: 1_000,
            campaign_cap: None,
            cash_cap_cents: Some(amount * cap_in_wins),
            prizes: vec![PrizeSpec { kind: Kind::CashFixed(amount), quota: 100, rate_per_s: 100, weight: 1, paused: false }],
        };
        let config = spec.config();
        let round = &config.rounds[0];
        let campaign = &config.campaigns[round.campaign];
        prop_assert_eq!(campaign.max_cash_per_user, Some(Cents(amount * cap_in_wins)));
        let mut caps = UserCaps {
            round_cap: round.max_wins_per_user,
            campaign_cap: campaign.max_wins_per_user,
            cash_cap: campaign.max_cash_per_user,
            cash: Cents(amount * already),
            ..UserCaps::default()
        };
        let mut rng = SmallRng::seed_from_u64(seed);
        let outcomes: Vec<Shake> = (0..cap_in_wins + 3)
            .map(|_| draw::shake(round, &mut caps, &mut rng, &mut |_: usize| Ok::<(), Refusal>(())))
            .collect();
        let wins = (cap_in_wins - already) as usize;
        for (k, got) in outcomes.iter().enumerate() {
            if k < wins {
                prop_assert_eq!(*got, Shake::Win { prize: 0, amount: Some(Cents(amount)) }, "shake {}", k);
            } else {
                prop_assert_eq!(*got, Shake::None, "shake {}", k);
            }
        }
        prop_assert_eq!(caps.cash, Cents(amount * cap_in_wins));
        prop_assert_eq!(caps.round_wins as usize, wins);
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Planning across threads
// ---------------------------------------------------------------------------------------------

/// An instant 2 s into occurrence 0 of `r1`, on a second boundary.
fn live_ms(config: &Config) -> u64 {
    config.rounds[0].starts_at_ms + 2_000
}

fn plan_round() -> impl Strategy<Value = RoundSpec> {
    (0u32..=30, vec(prize(1..=10, false), 1..=3)).prop_map(|(no_win_weight, prizes)| RoundSpec {
        no_win_weight,
        round_cap: draw::MAX_SHAKES,
        campaign_cap: None,
        cash_cap_cents: None,
        prizes,
    })
}

/// One plan by a fresh user, at `now_ms`.
fn plan_once(
    store: &ConfigStore,
    book: &CounterBook,
    user: &str,
    shakes: u32,
    now_ms: u64,
    rng: &mut SmallRng,
) -> DrawPlan {
    let snapshot = store.load();
    let round = &snapshot.config.rounds[0];
    draw::plan(
        &snapshot,
        store,
        book,
        round,
        user,
        UserStanding::default(),
        shakes,
        now_ms,
        rng,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Four threads planning for distinct users at readings spread over a few seconds (so some
    /// readings are stale): per prize, wins never pass this node's quota, no slot grants more
    /// than this node's room in it and no second more than this node's rate; the counters agree
    /// with the plans; giving plans back lowers `issued` by exactly their wins.
    #[test]
    fn plans_across_threads_respect_quota_and_slot_shares(
        spec in plan_round(),
        share in node_share(),
        seed in any::<u64>(),
    ) {
        let config = spec.config();
        let t0 = live_ms(&config);
        let store = ConfigStore::new(SeqNo(1), config, share);
        let book = CounterBook::new();
        let clock = ManualClock::new(t0);
        let plans: Vec<(u64, u32, DrawPlan)> = thread::scope(|s| {
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    let (store, book, clock) = (&store, &book, &clock);
                    s.spawn(move || {
                        let mut rng = SmallRng::seed_from_u64(seed ^ t);
                        let mut now = clock.now_ms();
                        (0..60)
                            .map(|k| {
                                now += rng.gen_range(0..60);
                                let shakes = rng.gen_range(1..=draw::MAX_SHAKES);
                                let plan = plan_once(store, book, &format!("t{t}-u{k}"), shakes, now, &mut rng);
                                (now, shakes, plan)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let snapshot = store.load();
        let round = &snapshot.config.rounds[0];
        let mut per_prize = vec![0u32; round.prizes.len()];
        let mut per_slot: HashMap<(usize, u64), u32> = HashMap::new();
        let mut per_second: HashMap<(usize, u64), u32> = HashMap::new();
        for (now, shakes, plan) in &plans {
            prop_assert_eq!(plan.occurrence.map(|o| o.index), Some(0));
            prop_assert_eq!(plan.outcome == Outcome::Win, !plan.wins.is_empty(), "{:?}", plan.outcome);
            prop_assert!(plan.wins.len() as u32 <= *shakes);
            let standing = plan.standing.expect("a live draw stores the standing");
            prop_assert_eq!(standing.round_wins as usize, plan.wins.len());
            prop_assert_eq!(standing.first_draw_ms, Some(*now));
            for w in &plan.wins {
                per_prize[w.prize] += 1;
                *per_slot.entry((w.prize, slot_of(*now))).or_default() += 1;
                *per_second.entry((w.prize, slot_of(*now) / 10)).or_default() += 1;
            }
        }
        let counters: Vec<_> = round.prizes.iter().map(|p| book.get(&p.id, 0)).collect();
        for (i, p) in round.prizes.iter().enumerate() {
            let quota = share.quota(p.quota);
            prop_assert!(per_prize[i] <= quota, "prize {} won {} > quota {}", i, per_prize[i], quota);
            prop_assert_eq!(counters[i].as_ref().map_or(0, |c| c.quota.issued()), per_prize[i]);
        }
        for (&(i, slot), &n) in &per_slot {
            let room = share.slot_room(round.prizes[i].rate_per_s, slot);
            prop_assert!(n <= room, "prize {} slot {}: {} > node's room {}", i, slot, n, room);
        }
        for (&(i, second), &n) in &per_second {
            let rate = share.rate(round.prizes[i].rate_per_s);
            prop_assert!(n <= rate, "prize {} second {}: {} > rate {}", i, second, n, rate);
        }
        let mut given = vec![0u32; round.prizes.len()];
        for (_, _, plan) in plans.iter().step_by(2) {
            plan.give_back();
            for w in &plan.wins {
                given[w.prize] += 1;
            }
        }
        for i in 0..round.prizes.len() {
            prop_assert_eq!(
                counters[i].as_ref().map_or(0, |c| c.quota.issued()),
                per_prize[i] - given[i]
            );
        }
    }

    /// One prize, no "no win": every shake is one take. Threads plan in phases, one slot each,
    /// meeting at barriers while the clock moves: each slot grants exactly
    /// min(attempts, this node's room in the slot), the quota grants exactly min(that, what is left),
    /// and the plans count the refusals of each kind exactly.
    #[test]
    fn phased_plans_take_exactly_slot_share_then_quota(
        quota in 1u64..=600,
        rate_per_s in 1u32..=600,
        share in node_share(),
        // per phase: slots skipped before it, and each of 4 threads' shakes
        phases in vec((0u64..=2, vec(0u32..=50, 4)), 1..=6),
        seed in any::<u64>(),
    ) {
        let spec = RoundSpec {
            no_win_weight: 0,
            round_cap: draw::MAX_SHAKES,
            campaign_cap: None,
            cash_cap_cents: None,
            prizes: vec![PrizeSpec { kind: Kind::Coupon, quota, rate_per_s, weight: 1, paused: false }],
        };
        let config = spec.config();
        let t0 = live_ms(&config);
        let store = ConfigStore::new(SeqNo(1), config, share);
        let book = CounterBook::new();
        let clock = ManualClock::new(t0);
        let mut times = Vec::new();
        let mut t = t0;
        for (skip, _) in &phases {
            t += (1 + skip) * SLOT_MS;
            times.push(t + seed % SLOT_MS);
        }
        let barrier = Barrier::new(4);
        // per thread, per phase: (wins, slot refusals, quota refusals)
        let results: Vec<Vec<(u32, u32, u32)>> = thread::scope(|s| {
            let handles: Vec<_> = (0..4usize)
                .map(|t| {
                    let (store, book, clock, barrier, phases, times) = (&store, &book, &clock, &barrier, &phases, &times);
                    s.spawn(move || {
                        let mut rng = SmallRng::seed_from_u64(seed ^ t as u64);
                        let mut out = Vec::new();
                        for (p, (_, shakes)) in phases.iter().enumerate() {
                            if barrier.wait().is_leader() {
                                clock.set(times[p]);
                            }
                            barrier.wait();
                            let now = clock.now_ms();
                            let (mut left, mut k, mut sums) = (shakes[t], 0, (0, 0, 0));
                            while left > 0 {
                                let n = left.min(draw::MAX_SHAKES);
                                let plan = plan_once(store, book, &format!("t{t}-p{p}-u{k}"), n, now, &mut rng);
                                sums.0 += plan.wins.len() as u32;
                                sums.1 += plan.slot_refusals;
                                sums.2 += plan.quota_refusals;
                                left -= n;
                                k += 1;
                            }
                            out.push(sums);
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let node_quota = share.quota(quota);
        let mut left = node_quota;
        for (p, (_, shakes)) in phases.iter().enumerate() {
            let attempts: u32 = shakes.iter().sum();
            let slot_share_now = share.slot_room(rate_per_s, slot_of(times[p]));
            let through_slot = attempts.min(slot_share_now);
            let wins = through_slot.min(left);
            let got = results.iter().fold((0, 0, 0), |a, r| (a.0 + r[p].0, a.1 + r[p].1, a.2 + r[p].2));
            prop_assert_eq!(got, (wins, attempts - through_slot, through_slot - wins), "phase {} ({} attempts, share {}, {} left)", p, attempts, slot_share_now, left);
            left -= wins;
        }
        let issued = book.get(&PrizeId::new("p0").unwrap(), 0).map_or(0, |c| c.quota.issued());
        prop_assert_eq!(issued, node_quota - left);
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Publishing
// ---------------------------------------------------------------------------------------------

fn coupons(quotas: &[u64]) -> RoundSpec {
    RoundSpec {
        no_win_weight: 0,
        round_cap: draw::MAX_SHAKES,
        campaign_cap: None,
        cash_cap_cents: None,
        prizes: quotas
            .iter()
            .map(|&quota| PrizeSpec {
                kind: Kind::Coupon,
                quota,
                rate_per_s: 2_000_000,
                weight: 1,
                paused: false,
            })
            .collect(),
    }
}

fn prize_id(i: usize) -> PrizeId {
    PrizeId::new(&format!("p{i}")).unwrap()
}

fn live_quotas(store: &ConfigStore) -> Vec<u64> {
    store.load().config.rounds[0]
        .prizes
        .iter()
        .map(|p| p.quota)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A publish whose node share of some quota is below what that prize already issued in an
    /// open occurrence is refused naming that prize, occurrence, quota and count, and leaves the
    /// seq, the live config and every limit as they were (including limits it had lowered
    /// before finding the refusal). A failing persist likewise changes nothing. Otherwise the
    /// seq goes up by one and every open counter's limit becomes the new share; a counter of an
    /// ended occurrence keeps its limit; a snapshot loaded earlier keeps its seq and config.
    #[test]
    fn publish_refuses_quota_below_issued_and_changes_nothing(
        old in vec(1u64..=300, 2..=4),
        // each new quota: anywhere, or one whose node share is within 1 of what was issued
        new in vec(prop_oneof![(1u64..=600).prop_map(Ok), (-1i64..=1).prop_map(Err)], 4),
        issued_frac in vec(0u32..=100, 4),
        ended_issued in 0u32..=300,
        share in node_share(),
        persist_fails in proptest::bool::weighted(0.15),
        seq0 in 0u64..1_000,
    ) {
        let n = old.len();
        let config = coupons(&old).config();
        let round_start = config.rounds[0].starts_at_ms;
        // occurrence 2 is live; occurrence 0 has ended
        let now = round_start + 2 * 60_000 + 1_000;
        let store = ConfigStore::new(SeqNo(seq0), config, share);
        let book = CounterBook::new();
        let mut issued = Vec::new();
        for i in 0..n {
            let c = book.get_or_create(&prize_id(i), 2, 0, || store.limit_of(&prize_id(i)));
            prop_assert_eq!(c.quota.limit(), share.quota(old[i]));
            let want = c.quota.limit() * issued_frac[i] / 100;
            for _ in 0..want {
                prop_assert!(c.quota.try_take());
            }
            issued.push(want);
        }
        let ended_limit = ended_issued.max(share.quota(old[0]));
        book.restore(prize_id(0), 0, ended_issued, ended_limit);
        let before = store.load();

        let new: Vec<u64> = (0..n)
            .map(|i| {
                new[i].unwrap_or_else(|near| {
                    let node_quota = (i64::from(issued[i]) + near).max(1) as u64;
                    node_quota * u64::from(share.count)
                })
            })
            .collect();
        let refusing: Vec<usize> = (0..n).filter(|&i| share.quota(new[i]) < issued[i]).collect();
        let mut persisted = None;
        let result = store.publish(coupons(&new).config(), &book, now, |seq, cfg: &Config| {
            persisted = Some((seq, cfg.rounds[0].prizes.len()));
            if persist_fails { Err("disk full") } else { Ok(()) }
        });
        let limits: Vec<u32> = (0..n).map(|i| book.get(&prize_id(i), 2).unwrap().quota.limit()).collect();
        let unchanged = |store: &ConfigStore, limits: &[u32]| -> Result<(), TestCaseError> {
            prop_assert_eq!(store.load().seq, SeqNo(seq0));
            prop_assert_eq!(live_quotas(store), old.clone());
            let old_limits: Vec<u32> = old.iter().map(|&q| share.quota(q)).collect();
            prop_assert_eq!(limits, &old_limits[..]);
            Ok(())
        };
        match result {
            Err(PublishError::QuotaBelowIssued { field, prize, occurrence, quota, issued: at }) => {
                let i = (0..n).find(|&i| prize == prize_id(i)).expect("a prize of the round");
                prop_assert!(refusing.contains(&i), "refused prize {} that fits", i);
                prop_assert_eq!(field, format!("rounds[0].prizes[{i}].quota"));
                prop_assert_eq!(occurrence, 2);
                prop_assert_eq!(quota, share.quota(new[i]));
                prop_assert_eq!(at, issued[i]);
                prop_assert_eq!(persisted, None, "persisted a refused config");
                unchanged(&store, &limits)?;
            }
            Err(PublishError::Persist(msg)) => {
                prop_assert!(persist_fails && refusing.is_empty());
                prop_assert!(msg.contains("disk full"));
                prop_assert_eq!(persisted, Some((SeqNo(seq0 + 1), n)));
                unchanged(&store, &limits)?;
            }
            Ok(snapshot) => {
                prop_assert!(!persist_fails && refusing.is_empty(), "published over {:?}", refusing);
                prop_assert_eq!(snapshot.seq, SeqNo(seq0 + 1));
                prop_assert_eq!(store.load().seq, SeqNo(seq0 + 1));
                prop_assert_eq!(persisted, Some((SeqNo(seq0 + 1), n)));
                prop_assert_eq!(live_quotas(&store), new.to_vec());
                let new_limits: Vec<u32> = new.iter().map(|&q| share.quota(q)).collect();
                prop_assert_eq!(&limits, &new_limits);
                for (i, &q) in new.iter().enumerate() {
                    prop_assert_eq!(store.limit_of(&prize_id(i)), share.quota(q));
                }
            }
        }
        let ended = book.get(&prize_id(0), 0).unwrap();
        prop_assert_eq!((ended.quota.issued(), ended.quota.limit()), (ended_issued, ended_limit));
        prop_assert_eq!(before.seq, SeqNo(seq0));
        prop_assert_eq!(before.config.rounds[0].prizes.iter().map(|p| p.quota).collect::<Vec<_>>(), old);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Takers planning from four threads while a publisher lowers and raises quotas: every
    /// refusal reports an `issued` above its quota, the seq ends at the start plus the accepted
    /// publishes, every snapshot a taker drew from carries the config published under its seq,
    /// and at the end every counter's limit is the share of the live quota with `issued` within it.
    #[test]
    fn publish_racing_plans_never_lets_issued_pass_the_limit(
        first in vec(1u64..=400, 2),
        publishes in vec(vec(1u64..=400, 2), 1..=12),
        share in node_share(),
        seed in any::<u64>(),
    ) {
        let config = coupons(&first).config();
        let now = live_ms(&config);
        let store = ConfigStore::new(SeqNo(1), config, share);
        let book = CounterBook::new();
        let (accepted, seen) = thread::scope(|s| {
            let (store, book) = (&store, &book);
            let takers: Vec<_> = (0..4u64)
                .map(|t| {
                    s.spawn(move || {
                        let mut rng = SmallRng::seed_from_u64(seed ^ t);
                        let mut seen = Vec::new();
                        for k in 0..40 {
                            let snapshot = store.load();
                            let quotas: Vec<u64> = snapshot.config.rounds[0].prizes.iter().map(|p| p.quota).collect();
                            seen.push((snapshot.seq, quotas));
                            let round = &snapshot.config.rounds[0];
                            let plan = draw::plan(&snapshot, store, book, round, &format!("t{t}-u{k}"), UserStanding::default(), draw::MAX_SHAKES, now, &mut rng);
                            if k % 5 == 0 {
                                plan.give_back();
                            }
                        }
                        seen
                    })
                })
                .collect();
            let publisher = s.spawn(move || {
                let mut accepted: HashMap<SeqNo, Vec<u64>> = HashMap::from([(SeqNo(1), first.clone())]);
                for quotas in &publishes {
                    match store.publish(coupons(quotas).config(), book, now, |_, _: &Config| Ok::<(), String>(())) {
                        Ok(snapshot) => {
                            assert_eq!(snapshot.seq, SeqNo(accepted.len() as u64 + 1));
                            accepted.insert(snapshot.seq, quotas.clone());
                        }
                        Err(PublishError::QuotaBelowIssued { quota, issued, .. }) => {
                            assert!(issued > quota, "refused quota {quota} at issued {issued}");
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
                accepted
            });
            let seen: Vec<_> = takers.into_iter().flat_map(|h| h.join().unwrap()).collect();
            (publisher.join().unwrap(), seen)
        });
        let final_seq = SeqNo(accepted.len() as u64);
        prop_assert_eq!(store.load().seq, final_seq);
        for (seq, quotas) in &seen {
            prop_assert_eq!(Some(quotas), accepted.get(seq), "snapshot {}", seq);
        }
        let live = &accepted[&final_seq];
        prop_assert_eq!(&live_quotas(&store), live);
        for (i, &q) in live.iter().enumerate() {
            if let Some(c) = book.get(&prize_id(i), 0) {
                prop_assert_eq!(c.quota.limit(), share.quota(q), "prize {}", i);
                prop_assert!(c.quota.issued() <= c.quota.limit(), "prize {}: issued {} > limit {}", i, c.quota.issued(), c.quota.limit());
            }
        }
    }
}
