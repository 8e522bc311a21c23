//! The lane throttle never lets a receiver see more than a slot's share in any 100 ms slot,
//! whatever the rate changes, trouble and `Retry-After` pauses: a request started in a slot's
//! last `GUARD_MS` may land in the next slot, so it is counted in both.

use proptest::prelude::*;
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

proptest! {
    #[test]
    fn no_slot_gets_more_than_its_share(rate in 1u32..50_000, events in proptest::collection::vec(event(), 1..60)) {
        let mut t = Throttle::new(rate);
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
                    t.set_rate(r);
                    max_rate = max_rate.max(r);
                }
                Event::Trouble(after) => t.trouble(now, after),
            }
        }
    }

    #[test]
    fn at_a_steady_rate_each_second_sends_exactly_the_rate(rate in 1u32..20_000, seconds in 1u64..4) {
        let mut t = Throttle::new(rate);
        let start = 5_000_000u64;
        let mut sent = 0u64;
        for at in start..start + seconds * 1000 {
            while t.try_take(at).is_ok() {
                sent += 1;
            }
        }
        prop_assert_eq!(sent, u64::from(rate) * seconds);
    }
}
