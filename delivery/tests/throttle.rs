//! The lane throttle never lets a receiver see more than a slot's share in any 100 ms slot,
//! whatever the rate changes, trouble and `Retry-After` pauses, nor do the lanes of several
//! engine nodes together: a request started in a slot's last `GUARD_MS` may land in the next
//! slot, so it is counted in both.

use std::collections::HashMap;

use proptest::prelude::*;
use quota::limiter::slot_share;
use quota::store::NodeShare;
use redrain_delivery::throttle::{Throttle, GUARD_MS};

#[derive(Debug, Clone)]
enum Event {
    /// Time moves on by this many ms, asking for room as often as it is given.
    Advance(u64),
    SetRate(u32),
    Trouble(Option<u64>),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (1u64..250).prop_map(Event::Advance),
        1 => (1u32..50_000).prop_map(Event::SetRate),
        2 => proptest::option::of(0u64..3_000).prop_map(Event::Trouble),
    ]
}

/// Every ms of `span`, each lane sends as often as it is given room; `per_slot` counts what the
/// partner may see per slot (a request from a slot's tail in both slots), checked against the
/// share of `rate`. Returns how many were sent.
fn send(
    lanes: &mut [Throttle],
    rate: u32,
    span: std::ops::Range<u64>,
    per_slot: &mut HashMap<u64, u32>,
) -> Result<u64, TestCaseError> {
    let mut sent = 0;
    for at in span {
        for t in lanes.iter_mut() {
            while t.try_take(at).is_ok() {
                sent += 1;
                let mut slots = vec![at / 100];
                if at % 100 >= 100 - GUARD_MS {
                    slots.push(at / 100 + 1);
                }
                for slot in slots {
                    let n = per_slot.entry(slot).or_default();
                    *n += 1;
                    let share = slot_share(rate, slot);
                    prop_assert!(*n <= share, "{} in slot {} (share {})", n, slot, share);
                }
            }
        }
    }
    Ok(sent)
}

proptest! {
    #[test]
    fn no_slot_gets_more_than_its_share(rate in 1u32..50_000, events in proptest::collection::vec(event(), 1..60)) {
        let mut t = Throttle::new(rate, NodeShare::ALONE);
        let mut max_rate = rate;
        let mut now = 1_000_000u64;
        let mut per_slot = std::collections::HashMap::<u64, u32>::new();
        for e in events {
            match e {
                Event::Advance(ms) => {
                    for at in now..now + ms {
                        while t.try_take(at).is_ok() {
                            let mut slots = vec![at / 100];
                            if at % 100 >= 100 - GUARD_MS {
                                slots.push(at / 100 + 1); // it may land in the next slot
                            }
                            for slot in slots {
                                let n = per_slot.entry(slot).or_default();
                                *n += 1;
                                // Shares come from a rate no higher than the highest configured
                                // so far: at most a tenth of it, rounded up.
                                prop_assert!(*n <= max_rate.div_ceil(10), "{n} in slot {slot}");
                            }
                        }
                    }
                    now += ms;
                }
                Event::SetRate(r) => {
                    t.set_rate(r, NodeShare::ALONE);
                    max_rate = max_rate.max(r);
                }
                Event::Trouble(after) => t.trouble(now, after),
            }
        }
    }

    /// A lane made before its node's share was known (a partner held without settings) sends
    /// only that share once it is configured: the share comes with the rate.
    #[test]
    fn a_new_rate_brings_the_nodes_share(rate in 1u32..20_000, count in 2u32..=4, seconds in 1u64..3) {
        let node = NodeShare::new(0, count).unwrap();
        let mut t = Throttle::new(0, NodeShare::ALONE);
        t.set_rate(rate, node);
        let start = 7_000_000u64;
        let mut sent = 0u64;
        for at in start..start + seconds * 1000 {
            while t.try_take(at).is_ok() {
                sent += 1;
            }
        }
        prop_assert_eq!(sent, u64::from(node.rate(rate)) * seconds);
    }

    #[test]
    fn at_a_steady_rate_each_second_sends_exactly_the_rate(rate in 1u32..20_000, seconds in 1u64..4) {
        let mut t = Throttle::new(rate, NodeShare::ALONE);
        let start = 5_000_000u64;
        let mut sent = 0u64;
        for at in start..start + seconds * 1000 {
            while t.try_take(at).is_ok() {
                sent += 1;
            }
        }
        prop_assert_eq!(sent, u64::from(rate) * seconds);
    }

    /// One lane per engine node for one partner, each with its own trouble and `Retry-After`
    /// pauses (so some run slowed while others run at full speed): the partner never sees more
    /// than a slot's share of its rate from all of them together, and at full speed each second
    /// it gets exactly its rate.
    #[test]
    fn nodes_lanes_together_never_pass_a_slots_share(
        rate in prop_oneof![1u32..=200, 1u32..=20_000],
        count in 2u32..=4,
        // per step: node `node` has trouble (none if ≥ count) with this pause, then ms pass
        steps in proptest::collection::vec((1u64..250, 0u32..8, proptest::option::of(0u64..1_500)), 1..30),
    ) {
        let mut lanes: Vec<Throttle> = (0..count)
            .map(|i| Throttle::new(rate, NodeShare::new(i, count).unwrap()))
            .collect();
        let mut now = 3_000_000u64;
        let mut per_slot = HashMap::new();
        // Two clean seconds first, then the steps.
        let sent = send(&mut lanes, rate, now..now + 2_000, &mut per_slot)?;
        prop_assert_eq!(sent, 2 * u64::from(rate));
        now += 2_000;
        for (ms, node, pause) in steps {
            if let Some(t) = lanes.get_mut(node as usize) {
                t.trouble(now, pause);
            }
            send(&mut lanes, rate, now..now + ms, &mut per_slot)?;
            now += ms;
        }
    }
}
