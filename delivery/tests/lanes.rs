//! Partner lanes against an in-memory store and a real `partner-sim` over loopback HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redrain_delivery::lanes::{now_ms, Deliveries, PartnerSettings};
use redrain_delivery::record::{DeliveryId, Record, State, Store, StoreError};
use redrain_delivery::sim::{self, Sim, SimOptions};
use tokio::sync::oneshot;

const SECRET: &str = "lanes-test-secret";

/// Delivery records in memory, filed as the engine's store files them.
#[derive(Default)]
struct MemStore {
    records: Mutex<BTreeMap<DeliveryId, Record>>,
}

impl MemStore {
    fn states(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for r in self.records.lock().values() {
            *out.entry(r.state.as_str()).or_default() += 1;
        }
        out
    }
}

impl Store for MemStore {
    fn load(&self, id: DeliveryId) -> Result<Option<Record>, StoreError> {
        Ok(self.records.lock().get(&id).cloned())
    }

    fn save(&self, record: Record, _was: State) -> BoxFuture<'static, Result<(), StoreError>> {
        let id = record.id().expect("a delivery id");
        self.records.lock().insert(id, record);
        Box::pin(async { Ok(()) })
    }

    fn outbox(&self, partner: &str) -> Result<Vec<(DeliveryId, u64)>, StoreError> {
        Ok(self
            .records
            .lock()
            .iter()
            .filter(|(_, r)| r.partner == partner && r.state.is_open())
            .map(|(id, r)| (*id, r.due_ms()))
            .collect())
    }

    fn dead_letters(&self, partner: &str) -> Result<Vec<DeliveryId>, StoreError> {
        Ok(self
            .records
            .lock()
            .iter()
            .filter(|(_, r)| r.partner == partner && r.state == State::Dead)
            .map(|(id, _)| *id)
            .collect())
    }
}

fn partner(url: String) -> PartnerSettings {
    PartnerSettings {
        id: "coupons".into(),
        url,
        rate_per_s: 1000,
        node: quota::store::NodeShare::ALONE,
        max_in_flight: 8,
        timeout_ms: 1000,
        paused: false,
        retry_deadline_ms: 600_000,
        deferred_retry_ms: 1000,
        secrets: vec![SECRET.into()],
    }
}

/// A partner-sim accepting [`SECRET`] on a free port: the sim, its address, its stop signal and
/// its server task.
async fn partner_sim() -> (
    Arc<Sim>,
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = Sim::new(SimOptions {
        secrets: vec![SECRET.into()],
        ..SimOptions::default()
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(sim::serve(listener, sim.clone(), async {
        let _ = stopped.await;
    }));
    (sim, addr, stop, server)
}

fn pending(n: u32) -> Record {
    let mut id = [0u8; 12];
    id[8..].copy_from_slice(&n.to_be_bytes());
    Record::pending(
        DeliveryId(id).to_string(),
        format!("user-{n}"),
        "coupons".into(),
        "coupon".into(),
        None,
        Some("SKU-1".into()),
        now_ms(),
    )
}

/// An address nothing listens on (bound, then closed).
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/deliver")
}

/// L1: with the partner down and more open deliveries than `max_queued`, the queue fills with
/// retries due later; the lane used to refill it in a loop (every push refused, which asked
/// for another refill) and never sent again, even once the partner was back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_full_of_retries_still_sends_once_the_partner_is_back() {
    const DELIVERIES: u32 = 60;
    let store = Arc::new(MemStore::default());
    for n in 0..DELIVERIES {
        let rec = pending(n);
        store.save(rec, State::Pending).await.unwrap();
    }
    let deliveries = Deliveries::new(store.clone(), 5);
    deliveries.configure(&[partner(dead_url().await)]);

    // Down long enough for every queued id to have failed and be due again later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let states = store.states();
    assert!(
        states.get("retrying").copied().unwrap_or(0) > 0,
        "{states:?}"
    );

    let (sim, addr, stop, server) = partner_sim().await;
    deliveries.configure(&[partner(format!("http://{addr}/deliver"))]);

    let start = Instant::now();
    while sim.summary().applied < u64::from(DELIVERIES) && start.elapsed().as_secs() < 30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = sim.summary();
    assert_eq!(
        summary.applied,
        u64::from(DELIVERIES),
        "{summary:?}, store: {:?}",
        store.states()
    );
    assert_eq!(summary.duplicates, 0, "{summary:?}");
    let stats = &deliveries.stats()[0];
    assert_eq!(stats.queued, 0, "{stats:?}");
    assert!(!stats.overflowed, "{stats:?}");

    deliveries.shutdown();
    let _ = stop.send(());
    server.await.unwrap();
}

/// L3: deliveries of a partner no config names are held by a paused lane that says so, and go
/// out once a config names the partner again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_without_settings_is_held_and_shown_until_configured() {
    let store = Arc::new(MemStore::default());
    for n in 0..10 {
        store.save(pending(n), State::Pending).await.unwrap();
    }
    let deliveries = Deliveries::new(store.clone(), 100);
    deliveries.hold_unknown("coupons");
    let start = Instant::now();
    while deliveries.stats()[0].queued < 10 && start.elapsed().as_secs() < 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = &deliveries.stats()[0];
    assert_eq!(
        (
            stats.queued,
            stats.paused,
            stats.in_config,
            stats.settings_known
        ),
        (10, true, false, false),
        "{stats:?}"
    );

    let (sim, addr, stop, server) = partner_sim().await;
    deliveries.configure(&[partner(format!("http://{addr}/deliver"))]);
    let start = Instant::now();
    while sim.summary().applied < 10 && start.elapsed().as_secs() < 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.summary().applied, 10);
    let stats = &deliveries.stats()[0];
    assert!(stats.in_config && stats.settings_known, "{stats:?}");
    deliveries.shutdown();
    let _ = stop.send(());
    server.await.unwrap();
}

/// L5: a request that timed out gave its in-flight place back at once, while its connection
/// was still open and the partner still working on it, so the lane's next request made the
/// partner see more than `max_in_flight` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_request_keeps_its_place_until_its_connection_is_closed() {
    const DELIVERIES: u32 = 200;
    const MAX_IN_FLIGHT: u32 = 4;
    let store = Arc::new(MemStore::default());
    for n in 0..DELIVERIES {
        store.save(pending(n), State::Pending).await.unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Every answer comes long after the lane gave up on it: a request stops counting at the
    // partner only when its connection closes.
    let sim = Sim::new(SimOptions {
        secrets: vec![SECRET.into()],
        slow_rate: 1.0,
        slow_ms: 60_000,
        ..SimOptions::default()
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(sim::serve(listener, sim.clone(), async {
        let _ = stopped.await;
    }));
    let deliveries = Deliveries::new(store.clone(), 1000);
    deliveries.configure(&[PartnerSettings {
        max_in_flight: MAX_IN_FLIGHT,
        timeout_ms: 20,
        ..partner(format!("http://{addr}/deliver"))
    }]);

    let start = Instant::now();
    while sim.summary().received < 400 && start.elapsed().as_secs() < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let summary = sim.summary();
    assert!(summary.received >= 400, "{summary:?}");
    assert!(
        summary.max_in_flight <= u64::from(MAX_IN_FLIGHT),
        "the partner saw {} in flight: {summary:?}",
        summary.max_in_flight
    );

    deliveries.shutdown();
    let _ = stop.send(());
    server.await.unwrap();
}
