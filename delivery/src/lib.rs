//! Delivery of won prizes to partners.
//!
//! Every win becomes one delivery, identified by its win id and sent with that id as its
//! idempotency key, so a partner applies it once however often it is sent. Cash goes to the
//! wallet partner on the fast path, coupons to their partners on the slow path; each partner
//! has its own lane (queue, 100 ms slot throttle, in-flight cap, retries), so a slow or broken
//! partner holds up only its own deliveries.
//!
//! - [`record`]: the durable delivery record, its states, and the [`record::Store`] seam.
//! - [`lanes`]: [`lanes::Deliveries`], the lanes and their sending loop.
//! - `connector`: the lanes' TCP connector, whose connections say when they are closed.
//! - [`throttle`]: 100 ms slot throttle that slows down on trouble.
//! - [`queue`]: a lane's bounded in-memory queue of ids.
//! - [`sign`]: the request signature (HMAC-SHA256) and its verifier.
//! - [`sim`]: `partner-sim`, a real HTTP partner for tests and demos.
//! - [`serve`]: HTTP/1.1 serving with a connection cap and a graceful drain (the engine's API
//!   and `partner-sim`).

mod connector;
pub mod lanes;
pub mod queue;
pub mod record;
pub mod serve;
pub mod sign;
pub mod sim;
pub mod throttle;
