//! # quota
//!
//! The rules of the draw, with no I/O: redrain's campaign config (raw documents validated into
//! engine types), the double-buffered config store, per-prize quota counters and 100 ms slot
//! limiters, round schedules, and the draw algorithm.
//!
//! It must not do I/O, spawn threads or start a runtime: storage, HTTP and delivery live in the
//! engine, which hands this crate closures where it needs them (a [`draw::Taker`], a `persist`
//! step in [`store::ConfigStore::publish`], a [`clock::Clock`]).
//!
//! # Layout
//! - [`ids`]: id and unit newtypes (`PrizeId`, `SeqNo`, `Cents`, …).
//! - [`config`]: raw TOML/JSON documents and their validation into [`config::Config`].
//! - [`diff`]: what changed between two config documents (review and audit lines).
//! - [`store`]: the double-buffered [`store::ConfigStore`] and each node's [`store::NodeShare`].
//! - [`limiter`]: [`limiter::QuotaCounter`], [`limiter::SlotLimiter`] and the slot shares.
//! - [`book`]: the [`book::CounterBook`] of counters per prize and round occurrence.
//! - [`schedule`]: when a round is live and when a user may draw.
//! - [`draw`]: one shake: weighted pick, fall-through, caps.
//! - [`clock`]: wall time as a dependency.
//!
//! # Example
//! ```
//! use quota::limiter::{slot_share, QuotaCounter};
//! // 15 prizes a second: the ten 100 ms slots get 1 or 2 each and sum exactly to 15.
//! assert_eq!((0..10).map(|j| slot_share(15, j)).sum::<u32>(), 15);
//! // A quota counter never passes its limit.
//! let q = QuotaCounter::new(0, 1);
//! assert!(q.try_take());
//! assert!(!q.try_take());
//! ```

pub mod book;
pub mod clock;
pub mod config;
pub mod diff;
pub mod draw;
pub mod ids;
pub mod limiter;
pub mod schedule;
pub mod store;
