//! # redrain engine
//!
//! The glue and the binary: the HTTP API, the draw service, durable storage, and the load tool.
//! It owns every I/O of the draw; the rules themselves live in the pure `quota` crate.
//!
//! # Layout
//! - [`server`]: opening a data dir ([`server::open`]) and serving a bound listener until a
//!   shutdown future resolves ([`server::run`]).
//! - [`api`]: the public warp routes, bounded bodies, JSON errors.
//! - [`admin_api`]: the admin API and the embedded admin page under `/admin`.
//! - [`admin`]: operators, sessions, roles, CSRF, the audit log.
//! - [`service`]: the draw: per-user lock → idempotency check → plan → durable commit → answer.
//! - [`drops`]: geo drop tasks: point files loaded, screened and indexed off the query path,
//!   swapped in with their config; nearby, per-drop claims, region counts.
//! - [`delivery`]: the partner lanes' records in RocksDB, their settings, allowed hosts.
//! - [`collect`]: shipping ledger segments to a collector, and the collector.
//! - [`ledger`]: the append-only ledger: CRC-checked segment files, group commit, recovery.
//! - [`reconcile`]: wins, counters and deliveries reconciled from ledgers.
//! - [`storage`]: RocksDB column families and the group-commit writer.
//! - [`userlock`]: per-user serialization without a global lock.
//! - [`cache`]: the bounded in-process cache of user standings.
//! - [`metrics`]: Prometheus text metrics.
//! - [`error`]: the API error type.
//! - [`client`]: a small keep-alive HTTP client (load tool and tests).
//! - [`load`]: `redrain load`, the full-link load generator and checker.
//!
//! # Example
//! ```
//! use redrain::error::ApiError;
//! let e = ApiError::field("shakes", "must be from 1 to 20, got 0");
//! assert_eq!(e.status, 400);
//! assert_eq!(e.message, "shakes: must be from 1 to 20, got 0");
//! ```

/// Every binary linked with the engine (the `redrain` binary, its tests and benches) allocates
/// with mimalloc: glibc's malloc cost about 8% of the delivery lanes' CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod admin;
pub mod admin_api;
pub mod api;
pub mod cache;
pub mod client;
pub mod collect;
pub mod delivery;
pub mod drops;
pub mod error;
pub mod ledger;
pub mod load;
pub mod metrics;
pub mod reconcile;
pub mod server;
pub mod service;
pub mod storage;
pub mod userlock;
