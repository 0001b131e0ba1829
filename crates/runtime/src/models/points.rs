//! A service's operating points as its manifest declares them: the one description of a
//! point that every service, the profiler and the controller share.
//!
//! A point has a name, the quality measured offline (with the manifest's metric) and the
//! service's own knobs, which only that service interprets. The manifest also names the
//! point a request gets when nothing chooses one, and the latency target the service
//! adapts to when the device's configuration sets none. This module reads and checks the
//! declaration; it neither runs points nor chooses among them.

use serde::Serialize;

use super::{Manifest, ManifestPoint, ModelError};

/// A service's declared operating points, checked: names are unique, the default point is
/// one of them, and the target is a positive number of milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointSet {
    /// What `quality` measures (dataset, metric, protocol).
    pub metric: Option<String>,
    /// The point served when neither a request nor a controller chooses.
    pub default_point: String,
    /// The latency target (queue wait included) the service adapts to by default.
    pub slo_ms: f64,
    /// In manifest order.
    pub points: Vec<ManifestPoint>,
}

impl PointSet {
    /// The manifest's point set; `None` for a service that declares no points.
    pub fn from_manifest(manifest: &Manifest) -> Result<Option<PointSet>, ModelError> {
        if manifest.points.is_empty() {
            return Ok(None);
        }
        let invalid = |message: String| ModelError::InvalidPoints {
            service: manifest.service.clone(),
            message,
        };
        for (i, point) in manifest.points.iter().enumerate() {
            if manifest.points[..i].iter().any(|p| p.name == point.name) {
                return Err(invalid(format!("point {:?} is declared twice", point.name)));
            }
            if point.quality.is_some_and(|q| !q.is_finite()) {
                return Err(invalid(format!(
                    "point {:?}: quality is not a number",
                    point.name
                )));
            }
        }
        let default_point = manifest
            .default_point
            .clone()
            .ok_or_else(|| invalid("no default_point".into()))?;
        if !manifest.points.iter().any(|p| p.name == default_point) {
            return Err(invalid(format!(
                "default_point {default_point:?} is not a declared point"
            )));
        }
        let slo_ms = manifest
            .slo_ms
            .ok_or_else(|| invalid("no slo_ms (the default latency target)".into()))?;
        if !(slo_ms.is_finite() && slo_ms > 0.0) {
            return Err(invalid(format!("slo_ms {slo_ms} is not a positive number")));
        }
        Ok(Some(PointSet {
            metric: manifest.quality_metric.clone(),
            default_point,
            slo_ms,
            points: manifest.points.clone(),
        }))
    }

    pub fn get(&self, name: &str) -> Option<&ManifestPoint> {
        self.points.iter().find(|p| p.name == name)
    }

    /// Every point's name, in manifest order (for "unknown point" messages).
    pub fn names(&self) -> Vec<String> {
        self.points.iter().map(|p| p.name.clone()).collect()
    }

    /// The points a controller may choose among: those with a measured quality, as
    /// (name, quality).
    pub fn measured(&self) -> Vec<(String, f64)> {
        self.points
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.quality?)))
            .collect()
    }

    /// The quality of `name`, if declared and measured.
    pub fn quality(&self, name: &str) -> Option<f64> {
        self.get(name)?.quality
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        toml::from_str(&format!(
            r#"service = "svc"
files = []
quality_metric = "accuracy"
{extra}
[[points]]
name = "fast"
quality = 0.4
depth = 1
[[points]]
name = "best"
quality = 0.6
depth = 2
[[points]]
name = "new"
depth = 3
"#
        ))
        .unwrap()
    }

    #[test]
    fn reads_points_default_and_target() {
        let set = PointSet::from_manifest(&manifest("default_point = \"best\"\nslo_ms = 40"))
            .unwrap()
            .unwrap();
        assert_eq!(set.default_point, "best");
        assert_eq!(set.slo_ms, 40.0);
        assert_eq!(set.metric.as_deref(), Some("accuracy"));
        assert_eq!(set.names(), ["fast", "best", "new"]);
        assert_eq!(
            set.measured(),
            [("fast".to_string(), 0.4), ("best".to_string(), 0.6)]
        );
        assert_eq!(
            set.get("best").unwrap().knobs["depth"].as_integer(),
            Some(2)
        );
        assert_eq!(set.quality("new"), None);
    }

    #[test]
    fn a_bad_declaration_is_a_clear_error() {
        for (extra, expected) in [
            ("slo_ms = 40", "no default_point"),
            (
                "default_point = \"huge\"\nslo_ms = 40",
                "\"huge\" is not a declared point",
            ),
            ("default_point = \"best\"", "no slo_ms"),
            (
                "default_point = \"best\"\nslo_ms = -1",
                "not a positive number",
            ),
        ] {
            let err = PointSet::from_manifest(&manifest(extra))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{extra}: {err}");
            assert!(err.starts_with("svc manifest: "), "{err}");
        }
        let none: Manifest = toml::from_str("service = \"echo\"\nfiles = []\n").unwrap();
        assert_eq!(PointSet::from_manifest(&none).unwrap(), None);
    }
}
