//! Nearby equals a brute-force scan of the same rings, on random data around random places,
//! H3 pentagons, the antimeridian and the poles; screened points are never returned.

use std::collections::HashSet;

use h3o::{LatLng, Resolution};
use proptest::prelude::*;
use redrain_geo::coord::Origin;
use redrain_geo::index::cell_of;
use redrain_geo::points::Poi;
use redrain_geo::{Coord, DropIndex, Nearby, Zones};

/// Where a case is centred.
#[derive(Debug, Clone, Copy)]
enum Place {
    Anywhere(f64, f64),
    /// The centre of the `i`-th pentagon (of 12) at the case's resolution.
    Pentagon(usize),
    /// Just east or west of ±180° longitude.
    Antimeridian(f64, bool),
    /// Near the north or south pole.
    Pole(f64, bool),
}

fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        (-80.0..80.0f64, -180.0..180.0f64).prop_map(|(a, b)| Place::Anywhere(a, b)),
        (0usize..12).prop_map(Place::Pentagon),
        (-70.0..70.0f64, any::<bool>()).prop_map(|(a, east)| Place::Antimeridian(a, east)),
        (89.0..90.0f64, any::<bool>()).prop_map(|(a, north)| Place::Pole(a, north)),
    ]
}

fn centre(place: Place, res: Resolution) -> (f64, f64) {
    match place {
        Place::Anywhere(lat, lng) => (lat, lng),
        Place::Pentagon(i) => {
            let c = LatLng::from(res.pentagons().nth(i).unwrap());
            (c.lat(), c.lng())
        }
        Place::Antimeridian(lat, east) => (lat, if east { 179.999 } else { -179.999 }),
        Place::Pole(lat, north) => (if north { lat } else { -lat }, 0.0),
    }
}

/// A point `dlat`, `dlng` degrees from `(lat, lng)`, wrapped across ±180° and clamped at the
/// poles.
fn offset((lat, lng): (f64, f64), dlat: f64, dlng: f64) -> Coord {
    let lat = (lat + dlat).clamp(-90.0, 90.0);
    let mut lng = lng + dlng;
    if lng > 180.0 {
        lng -= 360.0;
    }
    if lng < -180.0 {
        lng += 360.0;
    }
    Coord::new(lat, lng).unwrap()
}

#[derive(Debug, Clone)]
struct Case {
    res: u8,
    k: u32,
    place: Place,
    /// Offsets of the points, in units of the case's spread.
    points: Vec<(f64, f64)>,
    query: (f64, f64),
    limit: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        3u8..=10,
        0u32..=3,
        place(),
        proptest::collection::vec((-1.0..1.0f64, -1.0..1.0f64), 0..400),
        (-0.3..0.3f64, -0.3..0.3f64),
        1usize..50,
    )
        .prop_map(|(res, k, place, points, query, limit)| Case {
            res,
            k,
            place,
            points,
            query,
            limit,
        })
}

impl Case {
    /// Degrees spanned by the points: a few rings' worth of cells at the resolution.
    fn spread(&self) -> f64 {
        let res = Resolution::try_from(self.res).unwrap();
        res.edge_length_km() * f64::from(2 * self.k + 3) / 111.0
    }

    fn coords(&self) -> (Vec<Coord>, Coord) {
        let res = Resolution::try_from(self.res).unwrap();
        let c = centre(self.place, res);
        let s = self.spread();
        let pts = self
            .points
            .iter()
            .map(|&(a, b)| offset(c, a * s, b * s))
            .collect();
        (pts, offset(c, self.query.0 * s, self.query.1 * s))
    }
}

/// Every point whose cell is in the query cell's k-disk, nearest first (ties by number).
fn brute_force(points: &[Coord], at: Coord, res: u8, k: u32) -> Vec<Nearby> {
    let res = Resolution::try_from(res).unwrap();
    let disk: HashSet<u64> = at
        .to_latlng()
        .to_cell(res)
        .grid_disk_safe(k)
        .map(u64::from)
        .collect();
    let mut out: Vec<Nearby> = points
        .iter()
        .enumerate()
        .filter(|(_, p)| disk.contains(&cell_of(**p, res)))
        .map(|(i, p)| Nearby {
            drop: i as u32,
            at: *p,
            distance_m: at.distance_m(*p),
        })
        .collect();
    let origin = Origin::new(at);
    out.sort_by(|a, b| {
        origin
            .key(a.at)
            .total_cmp(&origin.key(b.at))
            .then(a.drop.cmp(&b.drop))
    });
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn nearby_equals_a_brute_force_scan_of_the_same_rings(c in case()) {
        let (points, at) = c.coords();
        let index = DropIndex::build(&points, c.res).unwrap();
        let expected = brute_force(&points, at, c.res, c.k);
        let mut got = Vec::new();
        index.nearby(at, c.k, usize::MAX, &mut got).unwrap();
        prop_assert_eq!(&got, &expected);
        index.nearby(at, c.k, c.limit, &mut got).unwrap();
        prop_assert_eq!(&got[..], &expected[..expected.len().min(c.limit)]);
    }

    #[test]
    fn no_returned_drop_lies_in_an_exclusion_zone(
        c in case(),
        mid in (-80.0..80.0f64, -170.0..170.0f64),
        rects in proptest::collection::vec((-1.0..1.0f64, -1.0..1.0f64, 0.05..0.8f64, 0.05..0.8f64), 1..4),
    ) {
        // Axis-aligned rectangles around the centre, away from the antimeridian and the poles
        // so that "inside" can be checked without the polygon code.
        let c = Case { place: Place::Anywhere(mid.0, mid.1), ..c };
        let (points, at) = c.coords();
        let res = Resolution::try_from(c.res).unwrap();
        let (lat0, lng0) = centre(c.place, res);
        let s = c.spread();
        let boxes: Vec<(f64, f64, f64, f64)> = rects
            .iter()
            .map(|&(a, b, h, w)| {
                let (lat, lng) = (lat0 + a * s, lng0 + b * s);
                (lat, lng, lat + h * s, lng + w * s)
            })
            .collect();
        prop_assume!(boxes.iter().all(|b| b.1 > -179.0 && b.3 < 179.0));
        let features: Vec<String> = boxes
            .iter()
            .map(|&(s, w, n, e)| {
                format!(
                    r#"{{"type":"Feature","properties":null,"geometry":{{"type":"Polygon","coordinates":[[[{w},{s}],[{e},{s}],[{e},{n}],[{w},{n}],[{w},{s}]]]}}}}"#
                )
            })
            .collect();
        let zones = Zones::from_geojson(&format!(
            r#"{{"type":"FeatureCollection","features":[{}]}}"#,
            features.join(",")
        ))
        .unwrap();
        let inside = |p: Coord| {
            boxes
                .iter()
                .any(|&(s, w, n, e)| (s..=n).contains(&p.lat()) && (w..=e).contains(&p.lng()))
        };
        let pois: Vec<Poi> = points
            .iter()
            .map(|&at| Poi { at, name: None, region: None })
            .collect();
        let screened = zones.screen(pois);
        let removed: usize = screened.removed.iter().map(|r| r.1).sum();
        prop_assert_eq!(removed, points.iter().filter(|p| inside(**p)).count());
        let kept: Vec<Coord> = screened.kept.iter().map(|p| p.at).collect();
        let index = DropIndex::build(&kept, c.res).unwrap();
        let mut got = Vec::new();
        index.nearby(at, c.k, usize::MAX, &mut got).unwrap();
        for n in &got {
            prop_assert!(!inside(n.at), "{:?} lies in a zone", n.at);
        }
        prop_assert_eq!(got, brute_force(&kept, at, c.res, c.k));
    }
}
