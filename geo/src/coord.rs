//! Coordinates: validated, and quantized to 1e-7 degrees (about 1 cm) so that a point has
//! one exact position everywhere: in the index, in screening and in distance checks.

use h3o::LatLng;

/// Units per degree of a quantized coordinate.
pub const E7: f64 = 1e7;

/// A point on the globe in 1e-7 degrees: latitude in -90..=90, longitude in -180..=180.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Coord {
    /// Latitude × 1e7.
    pub lat_e7: i32,
    /// Longitude × 1e7.
    pub lng_e7: i32,
}

/// Why a coordinate was refused; `field` is `lat` or `lng`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct CoordError {
    /// `lat` or `lng`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn check(field: &'static str, value: f64, bound: f64) -> Result<i32, CoordError> {
    if !value.is_finite() {
        return Err(CoordError {
            field,
            problem: format!("{value} is not a coordinate"),
        });
    }
    if !(-bound..=bound).contains(&value) {
        return Err(CoordError {
            field,
            problem: format!("{value} is outside -{bound}..={bound}"),
        });
    }
    Ok((value * E7).round() as i32)
}

impl Coord {
    /// Validates and quantizes degrees.
    pub fn new(lat: f64, lng: f64) -> Result<Coord, CoordError> {
        Ok(Coord {
            lat_e7: check("lat", lat, 90.0)?,
            lng_e7: check("lng", lng, 180.0)?,
        })
    }

    /// Latitude in degrees.
    pub fn lat(self) -> f64 {
        f64::from(self.lat_e7) / E7
    }

    /// Longitude in degrees.
    pub fn lng(self) -> f64 {
        f64::from(self.lng_e7) / E7
    }

    /// As an h3o coordinate.
    pub fn to_latlng(self) -> LatLng {
        LatLng::new(self.lat(), self.lng()).expect("a Coord is always in range")
    }

    /// Great-circle distance in metres.
    pub fn distance_m(self, other: Coord) -> f64 {
        let from = Origin::new(self);
        from.metres(from.key(other))
    }
}

/// Mean Earth radius in metres (as h3o uses).
pub const EARTH_RADIUS_M: f64 = h3o::EARTH_RADIUS_KM * 1000.0;

const RAD_PER_E7: f64 = std::f64::consts::PI / 180.0 / E7;

/// The fixed end of many distance measurements: the haversine formula with this end's part
/// computed once. [`Origin::key`] is the haversine term (monotone in distance, so it ranks
/// points without the final square root and arcsine); [`Origin::metres`] turns it into metres.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    lat: f64,
    lng: f64,
    cos_lat: f64,
    sin_lat: f64,
}

impl Origin {
    /// Prepares distances from `at`.
    pub fn new(at: Coord) -> Origin {
        let lat = f64::from(at.lat_e7) * RAD_PER_E7;
        Origin {
            lat,
            lng: f64::from(at.lng_e7) * RAD_PER_E7,
            cos_lat: lat.cos(),
            sin_lat: lat.sin(),
        }
    }

    /// The haversine term of the distance to `p`: 0 at the origin, 1 at its antipode, growing
    /// with the distance. Longitudes need no wrapping: the half-angle sine squared has period 2π.
    #[inline]
    pub fn key(&self, p: Coord) -> f64 {
        use std::f64::consts::{PI, TAU};
        let half_dlat = (f64::from(p.lat_e7) * RAD_PER_E7 - self.lat) * 0.5;
        let mut dlng = f64::from(p.lng_e7) * RAD_PER_E7 - self.lng;
        if dlng > PI {
            dlng -= TAU;
        } else if dlng < -PI {
            dlng += TAU;
        }
        let s_lat = sin_small(half_dlat);
        let s_lng = sin_small(dlng * 0.5);
        // cos(lat₂) from lat₁ and the half difference s = sin(Δφ/2):
        // cos(lat₁ + Δφ) = cos lat₁ (1 − 2s²) − sin lat₁ · 2s·√(1 − s²).
        let cos_lat2 = self.cos_lat * (1.0 - 2.0 * s_lat * s_lat)
            - self.sin_lat * 2.0 * s_lat * (1.0 - s_lat * s_lat).sqrt();
        s_lat.mul_add(s_lat, self.cos_lat * cos_lat2 * s_lng * s_lng)
    }

    /// Metres for a [`Origin::key`].
    pub fn metres(&self, key: f64) -> f64 {
        2.0 * EARTH_RADIUS_M * key.clamp(0.0, 1.0).sqrt().asin()
    }
}

/// sin x: by its Taylor series to x⁷ where |x| < 0.01 (the next term is below 3e-22 of the
/// result, far under an f64's precision), which is every nearby candidate; by libm elsewhere.
#[inline]
fn sin_small(x: f64) -> f64 {
    if x.abs() < 0.01 {
        let x2 = x * x;
        x * (1.0 - x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0)))
    } else {
        x.sin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_coordinate() {
        for (lat, lng, field) in [
            (f64::NAN, 0.0, "lat"),
            (0.0, f64::INFINITY, "lng"),
            (90.0001, 0.0, "lat"),
            (-91.0, 0.0, "lat"),
            (0.0, 180.5, "lng"),
        ] {
            assert_eq!(
                Coord::new(lat, lng).unwrap_err().field,
                field,
                "{lat},{lng}"
            );
        }
        let c = Coord::new(-90.0, 180.0).unwrap();
        assert_eq!((c.lat_e7, c.lng_e7), (-900_000_000, 1_800_000_000));
    }

    #[test]
    fn distance_across_the_antimeridian_is_short() {
        let a = Coord::new(0.0, 179.9999).unwrap();
        let b = Coord::new(0.0, -179.9999).unwrap();
        let d = a.distance_m(b);
        assert!((20.0..25.0).contains(&d), "{d}");
    }

    #[test]
    fn sin_small_matches_libm() {
        for i in -1000..=1000 {
            let x = f64::from(i) * 1e-5;
            assert!(
                (sin_small(x) - x.sin()).abs() <= 2.0 * f64::EPSILON * x.abs(),
                "{x}"
            );
        }
    }

    #[test]
    fn short_distances_agree_with_h3o() {
        let a = Coord::new(31.2304, 121.4737).unwrap();
        for (dlat, dlng) in [(0.001, 0.0), (0.0, 0.002), (-0.003, 0.004), (0.5, -0.5)] {
            let b = Coord::new(31.2304 + dlat, 121.4737 + dlng).unwrap();
            let ours = a.distance_m(b);
            let theirs = a.to_latlng().distance_m(b.to_latlng());
            assert!((ours - theirs).abs() < 1e-6, "{ours} vs {theirs}");
        }
    }

    #[test]
    fn distance_agrees_with_h3o() {
        let a = Coord::new(48.864716, 2.349014).unwrap();
        let b = Coord::new(31.224361, 121.469170).unwrap();
        let ours = a.distance_m(b);
        let theirs = a.to_latlng().distance_m(b.to_latlng());
        assert!((ours - theirs).abs() < 1e-6 * theirs, "{ours} vs {theirs}");
    }
}
