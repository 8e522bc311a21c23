//! Safety screening: exclusion zones (GeoJSON Polygon and MultiPolygon features, holes
//! respected) and the screening of points before they are indexed. A point on a zone's
//! boundary counts as inside: when unsure, a drop is not placed.

use geo::{BoundingRect, Intersects, MultiPolygon, Point, Rect};

use crate::coord::Coord;
use crate::points::Poi;

/// One exclusion zone.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The feature's `id` or `name` property, or `zones[N]`.
    pub name: String,
    shape: MultiPolygon<f64>,
    bbox: Rect<f64>,
}

/// A set of exclusion zones.
#[derive(Debug, Clone, Default)]
pub struct Zones {
    zones: Vec<Zone>,
}

/// Why a zones file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct ZonesError {
    /// `document` or `features[N]`.
    pub location: String,
    /// What is wrong.
    pub problem: String,
}

/// The outcome of screening: the points kept, and how many each zone screened out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screened {
    /// Points outside every zone, in their original order.
    pub kept: Vec<Poi>,
    /// (zone name, points screened out by it), one entry per zone, in file order.
    pub removed: Vec<(String, usize)>,
}

impl Zones {
    /// Parses a GeoJSON FeatureCollection (or one Feature or bare geometry) of Polygons and
    /// MultiPolygons, in `[longitude, latitude]` degrees.
    pub fn from_geojson(text: &str) -> Result<Zones, ZonesError> {
        let doc = text.parse::<geojson::GeoJson>().map_err(|e| ZonesError {
            location: "document".into(),
            problem: e.to_string(),
        })?;
        let features = match doc {
            geojson::GeoJson::FeatureCollection(fc) => fc.features,
            geojson::GeoJson::Feature(f) => vec![f],
            geojson::GeoJson::Geometry(g) => vec![geojson::Feature {
                geometry: Some(g),
                ..Default::default()
            }],
        };
        let mut zones = Vec::with_capacity(features.len());
        for (i, f) in features.iter().enumerate() {
            let location = format!("features[{i}]");
            let shape = match f.geometry.as_ref().map(|g| &g.value) {
                Some(v @ geojson::GeometryValue::Polygon { coordinates }) => {
                    check_polygon(coordinates, "geometry.coordinates").map_err(|problem| {
                        ZonesError {
                            location: location.clone(),
                            problem,
                        }
                    })?;
                    geo::Geometry::<f64>::try_from(v)
                }
                Some(v @ geojson::GeometryValue::MultiPolygon { coordinates }) => {
                    for (k, polygon) in coordinates.iter().enumerate() {
                        check_polygon(polygon, &format!("geometry.coordinates[{k}]")).map_err(
                            |problem| ZonesError {
                                location: location.clone(),
                                problem,
                            },
                        )?;
                    }
                    geo::Geometry::<f64>::try_from(v)
                }
                _ => {
                    return Err(ZonesError {
                        location,
                        problem: "geometry: must be a Polygon or MultiPolygon".into(),
                    })
                }
            };
            let shape = match shape {
                Ok(geo::Geometry::Polygon(p)) => MultiPolygon(vec![p]),
                Ok(geo::Geometry::MultiPolygon(m)) => m,
                Ok(_) | Err(_) => {
                    return Err(ZonesError {
                        location,
                        problem: "geometry: not a valid polygon".into(),
                    })
                }
            };
            let Some(bbox) = shape.bounding_rect() else {
                return Err(ZonesError {
                    location,
                    problem: "geometry: the polygon is empty".into(),
                });
            };
            let name = match &f.id {
                Some(geojson::feature::Id::String(s)) => s.clone(),
                Some(geojson::feature::Id::Number(n)) => n.to_string(),
                None => f
                    .property("name")
                    .and_then(|v| v.as_str())
                    .map_or_else(|| format!("zones[{i}]"), str::to_string),
            };
            zones.push(Zone { name, shape, bbox });
        }
        Ok(Zones { zones })
    }

    /// The zones, in file order.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// The first zone containing `at` (boundary included), if any.
    pub fn zone_of(&self, at: Coord) -> Option<usize> {
        let p = Point::new(at.lng(), at.lat());
        self.zones
            .iter()
            .position(|z| z.bbox.intersects(&p) && z.shape.intersects(&p))
    }

    /// Splits `points` into those outside every zone and per-zone counts of the rest.
    pub fn screen(&self, points: Vec<Poi>) -> Screened {
        let mut removed: Vec<(String, usize)> =
            self.zones.iter().map(|z| (z.name.clone(), 0)).collect();
        let kept = points
            .into_iter()
            .filter(|p| match self.zone_of(p.at) {
                Some(z) => {
                    removed[z].1 += 1;
                    false
                }
                None => true,
            })
            .collect();
        Screened { kept, removed }
    }
}

/// Checks a polygon's rings as written: every position a valid `[longitude, latitude]` (as
/// [`Coord::new`] checks a point), every ring closed with at least 4 positions (RFC 7946
/// 3.1.6). `at` is the polygon's path, e.g. `geometry.coordinates`; a problem names the ring
/// or position under it.
fn check_polygon(rings: &[Vec<geojson::Position>], at: &str) -> Result<(), String> {
    for (r, ring) in rings.iter().enumerate() {
        for (k, position) in ring.iter().enumerate() {
            match position.as_slice() {
                [lng, lat, ..] => {
                    Coord::new(*lat, *lng).map_err(|e| format!("{at}[{r}][{k}]: {e}"))?;
                }
                _ => {
                    return Err(format!(
                        "{at}[{r}][{k}]: a position needs a longitude and a latitude"
                    ))
                }
            }
        }
        if ring.len() < 4 {
            return Err(format!(
                "{at}[{r}]: a ring needs at least 4 positions, got {}",
                ring.len()
            ));
        }
        if ring.first() != ring.last() {
            return Err(format!(
                "{at}[{r}]: a ring must end at the position it starts from"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poi(lat: f64, lng: f64) -> Poi {
        Poi {
            at: Coord::new(lat, lng).unwrap(),
            name: None,
            region: None,
        }
    }

    /// A 2°×2° square at (0..2, 0..2) with a 1°×1° hole at (0.5..1.5), and a named triangle.
    const ZONES: &str = r#"{"type":"FeatureCollection","features":[
        {"type":"Feature","id":"lake","properties":null,"geometry":{"type":"Polygon","coordinates":[
            [[0,0],[2,0],[2,2],[0,2],[0,0]],
            [[0.5,0.5],[1.5,0.5],[1.5,1.5],[0.5,1.5],[0.5,0.5]]]}},
        {"type":"Feature","properties":{"name":"road"},"geometry":{"type":"MultiPolygon","coordinates":[
            [[[10,10],[11,10],[10,11],[10,10]]]]}}]}"#;

    #[test]
    fn screens_points_in_zones_and_respects_holes() {
        let zones = Zones::from_geojson(ZONES).unwrap();
        let s = zones.screen(vec![
            poi(0.25, 0.25), // in the lake
            poi(1.0, 1.0),   // in the hole: safe
            poi(0.0, 1.0),   // on the lake's edge: screened
            poi(10.2, 10.2), // on the road
            poi(10.9, 10.9), // beside the road's hypotenuse
            poi(5.0, 5.0),
        ]);
        assert_eq!(s.kept, vec![poi(1.0, 1.0), poi(10.9, 10.9), poi(5.0, 5.0)]);
        assert_eq!(
            s.removed,
            vec![("lake".to_string(), 2), ("road".to_string(), 1)]
        );
    }

    #[test]
    fn refuses_what_is_not_a_polygon() {
        let e = Zones::from_geojson(
            r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":null,"geometry":{"type":"Point","coordinates":[0,0]}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.location, "features[0]");
        assert!(Zones::from_geojson("{").is_err());
    }

    #[test]
    fn refuses_out_of_range_coordinates_and_bad_rings() {
        let problem = |geometry: &str| {
            let doc = format!(
                r#"{{"type":"FeatureCollection","features":[
                    {{"type":"Feature","properties":null,"geometry":{{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,0]]]}}}},
                    {{"type":"Feature","properties":null,"geometry":{geometry}}}]}}"#
            );
            let e = Zones::from_geojson(&doc).unwrap_err();
            assert_eq!(e.location, "features[1]", "{geometry}");
            e.problem
        };
        assert_eq!(
            problem(r#"{"type":"Polygon","coordinates":[[[0,0],[500,0],[1,1],[0,0]]]}"#),
            "geometry.coordinates[0][1]: lng: 500 is outside -180..=180"
        );
        assert_eq!(
            problem(r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,-91],[0,0]]]}"#),
            "geometry.coordinates[0][2]: lat: -91 is outside -90..=90"
        );
        assert_eq!(
            problem(r#"{"type":"Polygon","coordinates":[[[0,0],[1,0]]]}"#),
            "geometry.coordinates[0]: a ring needs at least 4 positions, got 2"
        );
        assert_eq!(
            problem(r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}"#),
            "geometry.coordinates[0]: a ring must end at the position it starts from"
        );
        assert_eq!(
            problem(
                r#"{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]],
                    [[[0,0],[1,0],[1,1],[0,0]],[[0.1,0.1],[0.2,0.1],[0.1,0.2]]]]}"#
            ),
            "geometry.coordinates[1][1]: a ring needs at least 4 positions, got 3"
        );
    }
}
