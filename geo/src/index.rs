//! The drop index: H3 cell → drops, in flat sorted arrays built ahead of time.
//!
//! Layout (12 bytes a drop, plus 12 bytes a non-empty cell): `cells` holds every non-empty cell
//! once, sorted; `starts[i]..starts[i + 1]` are cell `i`'s drops in the parallel arrays `lat`,
//! `lng` (1e-7 degrees) and `drop` (the drop's number in the task). An index is immutable:
//! a publish builds a new one and swaps it in whole.
//!
//! A nearby query computes the user's cell and its `k` rings (`grid_disk`, which h3o makes
//! correct around pentagons) and finds each cell through a small directory: an H3 ancestor a
//! few resolutions up → the range of `cells` holding its descendants (they are contiguous in
//! index order). The ancestor level is the finest one whose directory has at most one entry per
//! eight cells, so the directory stays small and each search is a short bisection within one
//! ancestor's range, where the disk's other cells usually fall too: a handful of cache misses
//! where a bisection of the whole array costs one per level.

use std::cell::RefCell;

use h3o::{CellIndex, Resolution};
use rustc_hash::FxHashMap;

use crate::coord::{Coord, Origin};

/// Most rings a query may ask for (k = 2 is the 5×5 grid of the seed).
pub const MAX_K: u32 = 8;

/// One drop near the user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearby {
    /// The drop's number in its task.
    pub drop: u32,
    /// Where it is.
    pub at: Coord,
    /// Great-circle distance from the user, in metres.
    pub distance_m: f64,
}

/// Why an index could not be built or queried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The H3 resolution is not 0..=15.
    #[error("resolution: {0} is not an H3 resolution (0 to 15)")]
    Resolution(u8),
    /// More drops than a `u32` counts.
    #[error("too many drops: {0}")]
    TooMany(usize),
    /// `k` past [`MAX_K`].
    #[error("k: must be at most {MAX_K}, got {0}")]
    K(u32),
}

/// Cell → drops, immutable once built.
#[derive(Debug, Clone)]
pub struct DropIndex {
    resolution: Resolution,
    cells: Vec<u64>,
    starts: Vec<u32>,
    lat: Vec<i32>,
    lng: Vec<i32>,
    drop: Vec<u32>,
    /// `cell >> ancestor_shift` → the range of `cells` under that ancestor.
    directory: FxHashMap<u64, (u32, u32)>,
    ancestor_shift: u32,
}

impl DropIndex {
    /// Indexes `points` at H3 `resolution`; point `i` is drop number `i`.
    pub fn build(points: &[Coord], resolution: u8) -> Result<DropIndex, IndexError> {
        let res =
            Resolution::try_from(resolution).map_err(|_| IndexError::Resolution(resolution))?;
        if u32::try_from(points.len()).is_err() {
            return Err(IndexError::TooMany(points.len()));
        }
        let mut keyed: Vec<(u64, u32)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (cell_of(*p, res), i as u32))
            .collect();
        keyed.sort_unstable();
        let mut index = DropIndex {
            resolution: res,
            cells: Vec::new(),
            starts: Vec::new(),
            lat: Vec::with_capacity(points.len()),
            lng: Vec::with_capacity(points.len()),
            drop: Vec::with_capacity(points.len()),
            directory: FxHashMap::default(),
            ancestor_shift: 0,
        };
        for (n, &(cell, drop)) in keyed.iter().enumerate() {
            if index.cells.last() != Some(&cell) {
                index.cells.push(cell);
                index.starts.push(n as u32);
            }
            let p = points[drop as usize];
            index.lat.push(p.lat_e7);
            index.lng.push(p.lng_e7);
            index.drop.push(drop);
        }
        index.starts.push(keyed.len() as u32);
        index.cells.shrink_to_fit();
        index.starts.shrink_to_fit();
        index.build_directory(resolution);
        Ok(index)
    }

    fn build_directory(&mut self, resolution: u8) {
        // Digits below the resolution are unused (all ones) and the same in every cell.
        let unused = 3 * (15 - u32::from(resolution));
        let most = (self.cells.len() / 8).max(1);
        let mut up = u32::from(resolution).min(3);
        let shift = loop {
            let shift = unused + 3 * up;
            let ancestors = 1 + self
                .cells
                .windows(2)
                .filter(|w| w[0] >> shift != w[1] >> shift)
                .count();
            if ancestors <= most || up == u32::from(resolution) {
                break shift;
            }
            up += 1;
        };
        self.ancestor_shift = shift;
        let mut directory = FxHashMap::default();
        let mut lo = 0;
        for i in 1..=self.cells.len() {
            if i == self.cells.len() || self.cells[i] >> shift != self.cells[lo] >> shift {
                directory.insert(self.cells[lo] >> shift, (lo as u32, i as u32));
                lo = i;
            }
        }
        directory.shrink_to_fit();
        self.directory = directory;
    }

    /// The positions in `cells` of those of `disk` that hold drops.
    ///
    /// The searches run in lockstep, one bisection step of every search per round, so the
    /// memory loads of different searches are independent and the CPU overlaps their misses
    /// (one search alone waits for each of its loads in turn).
    fn find_all(
        &self,
        disk: &[CellIndex],
        searches: &mut Vec<(u64, usize, usize)>,
        found: &mut Vec<usize>,
    ) {
        // (cell, range start, range length) of every search still under way.
        searches.clear();
        searches.extend(disk.iter().filter_map(|&c| {
            let cell = u64::from(c);
            let &(lo, hi) = self.directory.get(&(cell >> self.ancestor_shift))?;
            Some((cell, lo as usize, (hi - lo) as usize))
        }));
        while searches.iter().any(|s| s.2 > 1) {
            for (cell, lo, len) in searches.iter_mut() {
                if *len > 1 {
                    let half = *len / 2;
                    if self.cells[*lo + half] <= *cell {
                        *lo += half;
                    }
                    *len -= half;
                }
            }
        }
        found.extend(
            searches
                .iter()
                .filter(|s| s.2 == 1 && self.cells[s.1] == s.0)
                .map(|s| s.1),
        );
    }

    /// The H3 resolution of the index.
    pub fn resolution(&self) -> u8 {
        self.resolution.into()
    }

    /// Number of drops indexed.
    pub fn len(&self) -> usize {
        self.drop.len()
    }

    /// Whether no drop is indexed.
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty()
    }

    /// Bytes held by the index's arrays.
    pub fn heap_bytes(&self) -> usize {
        self.cells.capacity() * 8
            + self.starts.capacity() * 4
            + (self.lat.capacity() + self.lng.capacity() + self.drop.capacity()) * 4
            // hashbrown: a control byte and a (key, range) pair per bucket
            + self.directory.capacity() * (1 + 16)
    }

    fn coord(&self, i: usize) -> Coord {
        Coord {
            lat_e7: self.lat[i],
            lng_e7: self.lng[i],
        }
    }

    /// The cell a point falls in at this index's resolution.
    pub fn cell(&self, at: Coord) -> CellIndex {
        at.to_latlng().to_cell(self.resolution)
    }

    /// Clears `out` and fills it with the drops in `at`'s cell and its `k` rings, nearest
    /// first (by [`Origin::key`], ties by drop number), at most `limit` of them.
    pub fn nearby(
        &self,
        at: Coord,
        k: u32,
        limit: usize,
        out: &mut Vec<Nearby>,
    ) -> Result<(), IndexError> {
        if k > MAX_K {
            return Err(IndexError::K(k));
        }
        out.clear();
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch {
                disk,
                searches,
                positions,
                found,
            } = scratch;
            let cell = self.cell(at);
            disk.clear();
            disk.extend(cell.grid_disk_fast(k).map_while(|c| c));
            if disk.len() != max_disk_len(k) {
                // Near a pentagon the fast walk gives up; the safe one is always right.
                disk.clear();
                disk.extend(cell.grid_disk_safe(k));
            }
            positions.clear();
            self.find_all(disk, searches, positions);
            let origin = Origin::new(at);
            // (haversine key, drop, position) of every candidate; metres only for the answer.
            found.clear();
            for &pos in positions.iter() {
                for i in self.starts[pos]..self.starts[pos + 1] {
                    let p = self.coord(i as usize);
                    found.push((origin.key(p), self.drop[i as usize], i));
                }
            }
            let order =
                |a: &(f64, u32, u32), b: &(f64, u32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
            if found.len() > limit && limit > 0 {
                found.select_nth_unstable_by(limit - 1, order);
            }
            found.truncate(limit);
            found.sort_unstable_by(order);
            out.extend(found.iter().map(|&(key, drop, i)| Nearby {
                drop,
                at: self.coord(i as usize),
                distance_m: origin.metres(key),
            }));
        });
        Ok(())
    }
}

/// Buffers of one thread's queries, kept between them so a query allocates nothing.
#[derive(Default)]
struct Scratch {
    disk: Vec<CellIndex>,
    searches: Vec<(u64, usize, usize)>,
    positions: Vec<usize>,
    found: Vec<(f64, u32, u32)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Cells in a k-disk away from pentagons: 3k(k+1) + 1.
fn max_disk_len(k: u32) -> usize {
    3 * k as usize * (k as usize + 1) + 1
}

/// The cell of `p` at `res`, as its integer index.
pub fn cell_of(p: Coord, res: Resolution) -> u64 {
    u64::from(p.to_latlng().to_cell(res))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_first_and_bounded() {
        let base = Coord::new(31.2304, 121.4737).unwrap();
        let pts: Vec<Coord> = (0..50)
            .map(|i| Coord {
                lat_e7: base.lat_e7 + i * 100,
                lng_e7: base.lng_e7,
            })
            .collect();
        let index = DropIndex::build(&pts, 9).unwrap();
        let mut out = Vec::new();
        index.nearby(base, 2, 10, &mut out).unwrap();
        let drops: Vec<u32> = out.iter().map(|n| n.drop).collect();
        assert_eq!(drops, (0..10).collect::<Vec<_>>());
        assert!(out.windows(2).all(|w| w[0].distance_m <= w[1].distance_m));
        assert_eq!(
            index.nearby(base, MAX_K + 1, 10, &mut out),
            Err(IndexError::K(MAX_K + 1))
        );
        assert_eq!(
            DropIndex::build(&pts, 16).unwrap_err(),
            IndexError::Resolution(16)
        );
    }
}
