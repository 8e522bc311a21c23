//! Point-of-interest files: CSV `lat,lng[,name][,region]` (an optional header row, `#`
//! comments) and GeoJSON (a FeatureCollection of Point features, the name from the feature's
//! `id` or its `name` property, the region from its `region` property).
//!
//! Every bad row is reported with where it is (`line 7` or `features[3]`), up to
//! [`MAX_ERRORS`] of them: NaN or out-of-range coordinates, missing columns, duplicate names.

use std::collections::HashMap;

use crate::coord::Coord;

/// Most errors reported for one file.
pub const MAX_ERRORS: usize = 100;

/// One point of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poi {
    /// Where it is.
    pub at: Coord,
    /// Its name, unique in the file when given.
    pub name: Option<String>,
    /// The region (district) it counts towards.
    pub region: Option<String>,
}

/// One bad row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct PointError {
    /// `line N` (CSV, 1-based) or `features[N]` (GeoJSON).
    pub location: String,
    /// What is wrong.
    pub problem: String,
}

/// Every bad row of a file (at most [`MAX_ERRORS`]; `more` counts the rest).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PointErrors {
    /// The reported errors, in file order.
    pub errors: Vec<PointError>,
    /// Errors past [`MAX_ERRORS`], not listed.
    pub more: usize,
}

impl std::fmt::Display for PointErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        if self.more > 0 {
            writeln!(f, "... and {} more", self.more)?;
        }
        Ok(())
    }
}

impl std::error::Error for PointErrors {}

/// Collects points and errors, checking names for duplicates.
#[derive(Default)]
struct Collector {
    points: Vec<Poi>,
    errors: PointErrors,
    names: HashMap<String, String>,
}

impl Collector {
    fn error(&mut self, location: String, problem: String) {
        if self.errors.errors.len() < MAX_ERRORS {
            self.errors.errors.push(PointError { location, problem });
        } else {
            self.errors.more += 1;
        }
    }

    fn push(&mut self, location: String, at: Coord, name: Option<String>, region: Option<String>) {
        if let Some(n) = &name {
            if let Some(first) = self.names.get(n) {
                let problem = format!("name {n:?} duplicates {first}");
                return self.error(location, problem);
            }
            self.names.insert(n.clone(), location);
        }
        self.points.push(Poi { at, name, region });
    }

    fn finish(self) -> Result<Vec<Poi>, PointErrors> {
        if self.errors.errors.is_empty() {
            Ok(self.points)
        } else {
            Err(self.errors)
        }
    }
}

fn number(field: &str, text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .map_err(|_| format!("{field}: {:?} is not a number", text.trim()))
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Parses a CSV point file.
pub fn parse_csv(text: &str) -> Result<Vec<Poi>, PointErrors> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut c = Collector::default();
    for (n, record) in reader.records().enumerate() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(n as u64 + 1, |p| p.line());
                c.error(format!("line {line}"), e.to_string());
                continue;
            }
        };
        let line = record.position().map_or(n as u64 + 1, |p| p.line());
        let location = format!("line {line}");
        if n == 0 && record.get(0).is_some_and(|f| f.eq_ignore_ascii_case("lat")) {
            continue; // header
        }
        if record.len() < 2 || record.len() > 4 {
            let problem = format!(
                "expected lat,lng[,name][,region], got {} columns",
                record.len()
            );
            c.error(location, problem);
            continue;
        }
        let at = number("lat", &record[0])
            .and_then(|lat| Ok((lat, number("lng", &record[1])?)))
            .and_then(|(lat, lng)| Coord::new(lat, lng).map_err(|e| e.to_string()));
        match at {
            Ok(at) => c.push(
                location,
                at,
                non_empty(record.get(2)),
                non_empty(record.get(3)),
            ),
            Err(problem) => c.error(location, problem),
        }
    }
    c.finish()
}

/// Parses a GeoJSON point file.
pub fn parse_geojson(text: &str) -> Result<Vec<Poi>, PointErrors> {
    let mut c = Collector::default();
    let features = match text.parse::<geojson::GeoJson>() {
        Ok(geojson::GeoJson::FeatureCollection(fc)) => fc.features,
        Ok(geojson::GeoJson::Feature(f)) => vec![f],
        Ok(_) => {
            c.error(
                "document".into(),
                "expected a FeatureCollection of Point features".into(),
            );
            return c.finish();
        }
        Err(e) => {
            c.error("document".into(), e.to_string());
            return c.finish();
        }
    };
    for (i, f) in features.iter().enumerate() {
        let location = format!("features[{i}]");
        let position = match f.geometry.as_ref().map(|g| &g.value) {
            Some(geojson::GeometryValue::Point { coordinates }) => coordinates.as_slice().to_vec(),
            _ => {
                c.error(location, "geometry: must be a Point".into());
                continue;
            }
        };
        let at = match position.as_slice() {
            // GeoJSON positions are [longitude, latitude(, altitude)].
            [lng, lat, ..] => Coord::new(*lat, *lng).map_err(|e| e.to_string()),
            _ => Err("geometry: a position needs a longitude and a latitude".into()),
        };
        let prop = |key: &str| -> Option<String> {
            match f.properties.as_ref()?.get(key)? {
                serde_json::Value::String(s) => non_empty(Some(s)),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let name = match &f.id {
            Some(geojson::feature::Id::String(s)) => non_empty(Some(s)),
            Some(geojson::feature::Id::Number(n)) => Some(n.to_string()),
            None => prop("name"),
        };
        match at {
            Ok(at) => c.push(location, at, name, prop("region")),
            Err(problem) => c.error(location, problem),
        }
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_header_names_and_regions() {
        let pts =
            parse_csv("lat,lng,name,region\n# a comment\n31.23,121.47,bund,huangpu\n22.5,114.05\n")
                .unwrap();
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[0].name.as_deref(), Some("bund"));
        assert_eq!(pts[0].region.as_deref(), Some("huangpu"));
        assert_eq!(pts[1].at, Coord::new(22.5, 114.05).unwrap());
        assert_eq!(pts[1].name, None);
    }

    #[test]
    fn csv_reports_the_line_of_every_bad_row() {
        let text = "1,2,a\nNaN,3\n91,0\nx,1\n5,6,a\n1\n0,181\n";
        let errs = parse_csv(text).unwrap_err();
        let got: Vec<String> = errs.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            [
                "line 2: lat: NaN is not a coordinate",
                "line 3: lat: 91 is outside -90..=90",
                "line 4: lat: \"x\" is not a number",
                "line 5: name \"a\" duplicates line 1",
                "line 6: expected lat,lng[,name][,region], got 1 columns",
                "line 7: lng: 181 is outside -180..=180",
            ]
        );
    }

    #[test]
    fn geojson_points() {
        let text = r#"{"type":"FeatureCollection","features":[
            {"type":"Feature","id":"a","geometry":{"type":"Point","coordinates":[121.47,31.23]},"properties":{"region":"huangpu"}},
            {"type":"Feature","geometry":{"type":"Point","coordinates":[114.05,22.5]},"properties":{"name":"b"}}]}"#;
        let pts = parse_geojson(text).unwrap();
        assert_eq!(pts[0].at, Coord::new(31.23, 121.47).unwrap());
        assert_eq!(
            (pts[0].name.as_deref(), pts[0].region.as_deref()),
            (Some("a"), Some("huangpu"))
        );
        assert_eq!(pts[1].name.as_deref(), Some("b"));

        let bad = r#"{"type":"FeatureCollection","features":[
            {"type":"Feature","id":"a","geometry":{"type":"Point","coordinates":[200,31.23]},"properties":null},
            {"type":"Feature","id":"b","geometry":{"type":"LineString","coordinates":[[0,0],[1,1]]},"properties":null},
            {"type":"Feature","id":"c","geometry":{"type":"Point","coordinates":[1,1]},"properties":null},
            {"type":"Feature","id":"c","geometry":{"type":"Point","coordinates":[1,2]},"properties":null}]}"#;
        let got: Vec<String> = parse_geojson(bad)
            .unwrap_err()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "features[0]: lng: 200 is outside -180..=180",
                "features[1]: geometry: must be a Point",
                "features[3]: name \"c\" duplicates features[2]",
            ]
        );
    }
}
