//! Geo drops for redrain: points of interest from CSV or GeoJSON, safety screening against
//! exclusion zones, and the H3 drop index that answers "what is near me".
//!
//! The crate is pure (no I/O beyond parsing text it is given). The flow is the seed's
//! "打点 / 查点": points are read ([`points`]), screened out of unsafe zones ([`zones`]),
//! quantized to 1e-7 degrees ([`coord`]) and indexed by H3 cell ahead of time into flat sorted
//! arrays ([`index`]). A query maps the user's coordinates to a cell and returns the drops of
//! that cell and its `k` rings, nearest first.

pub mod coord;
pub mod index;
pub mod points;
pub mod zones;

pub use coord::{Coord, CoordError};
pub use index::{DropIndex, IndexError, Nearby};
pub use points::{Poi, PointError, PointErrors};
pub use zones::{Screened, Zones, ZonesError};
