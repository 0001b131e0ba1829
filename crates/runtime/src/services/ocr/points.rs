//! OCR's operating points: named settings of the knobs that trade quality for time, the
//! detector (tiny or small) and its size limit, and the recognizer (tiny, a cascade at some
//! threshold, small).
//!
//! The points and their measured quality are declared in `models/ocr/manifest.toml`; this
//! module only reads the knobs and applies them to request options. Choosing among the
//! points is [`crate::policy`]'s job.

use serde::Deserialize;

use super::{DetectorKind, OcrError, OcrOptions, RecognizerChoice, RecognizerKind};
use crate::models::ManifestPoint;

/// One OCR operating point.
#[derive(Debug, Clone, PartialEq)]
pub struct OcrPoint {
    pub name: String,
    /// Quality measured offline (see the manifest's `quality_metric`); `None` until measured.
    pub quality: Option<f64>,
    pub detector: DetectorKind,
    pub det_limit: u32,
    pub recognizer: RecognizerChoice,
}

/// The knobs as written in the manifest: `det = "small"` (`"tiny"` if absent),
/// `det_limit = 960`, `rec = "cascade"`, `threshold = 0.9` (cascade only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Knobs {
    det: Option<String>,
    det_limit: u32,
    rec: String,
    threshold: Option<f32>,
}

impl OcrPoint {
    /// Reads a manifest point's knobs; unknown or missing knobs are an error, so a typo in
    /// the manifest cannot silently serve another configuration.
    pub fn from_manifest(point: &ManifestPoint) -> Result<OcrPoint, OcrError> {
        let bad = |message: String| {
            OcrError::InvalidOption(format!("manifest point {:?}: {message}", point.name))
        };
        let knobs: Knobs = toml::Value::Table(point.knobs.clone())
            .try_into()
            .map_err(|e| bad(e.to_string()))?;
        let recognizer = match (knobs.rec.as_str(), knobs.threshold) {
            ("tiny", None) => RecognizerChoice::Tiny,
            ("small", None) => RecognizerChoice::Small,
            ("cascade", Some(threshold)) => RecognizerChoice::Cascade { threshold },
            ("cascade", None) => return Err(bad("a cascade needs a threshold".into())),
            (rec @ ("tiny" | "small"), Some(_)) => {
                return Err(bad(format!("{rec} takes no threshold")));
            }
            (other, _) => return Err(bad(format!("unknown rec {other:?} (tiny, small, cascade)"))),
        };
        let detector = match knobs.det.as_deref() {
            None => DetectorKind::Tiny,
            Some(name) => DetectorKind::from_name(name)
                .ok_or_else(|| bad(format!("unknown det {name:?} (tiny, small)")))?,
        };
        let ocr_point = OcrPoint {
            name: point.name.clone(),
            quality: point.quality,
            detector,
            det_limit: knobs.det_limit,
            recognizer,
        };
        ocr_point
            .apply(&OcrOptions::default())
            .validate()
            .map_err(|e| bad(e.to_string()))?;
        Ok(ocr_point)
    }

    /// The models (files in `models/ocr`) this point runs: its detector, and its
    /// recognizer or both for a cascade.
    pub fn model_files(&self) -> Vec<&'static str> {
        let recognizers: &[RecognizerKind] = match self.recognizer {
            RecognizerChoice::Tiny => &[RecognizerKind::Tiny],
            RecognizerChoice::Small => &[RecognizerKind::Small],
            RecognizerChoice::Cascade { .. } => &[RecognizerKind::Tiny, RecognizerKind::Small],
        };
        std::iter::once(self.detector.file())
            .chain(recognizers.iter().map(|r| r.file()))
            .collect()
    }

    /// `base` with this point's knobs.
    pub fn apply(&self, base: &OcrOptions) -> OcrOptions {
        OcrOptions {
            detector: self.detector,
            det_limit: self.det_limit,
            recognizer: self.recognizer,
            ..base.clone()
        }
    }
}

/// All points of a manifest, in manifest order.
pub fn from_manifest(points: &[ManifestPoint]) -> Result<Vec<OcrPoint>, OcrError> {
    let points = points
        .iter()
        .map(OcrPoint::from_manifest)
        .collect::<Result<Vec<_>, _>>()?;
    for (i, p) in points.iter().enumerate() {
        if points[..i].iter().any(|q| q.name == p.name) {
            return Err(OcrError::InvalidOption(format!(
                "manifest point {:?} is declared twice",
                p.name
            )));
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_points(text: &str) -> Vec<ManifestPoint> {
        #[derive(Deserialize)]
        struct Doc {
            points: Vec<ManifestPoint>,
        }
        toml::from_str::<Doc>(text).unwrap().points
    }

    #[test]
    fn reads_knobs_and_applies_them() {
        let points = from_manifest(&manifest_points(
            r#"
[[points]]
name = "tiny@640"
quality = 0.5
det_limit = 640
rec = "tiny"
[[points]]
name = "cascade0.9@960"
det_limit = 960
rec = "cascade"
threshold = 0.9
[[points]]
name = "det_small-small@1280"
det = "small"
det_limit = 1280
rec = "small"
"#,
        ))
        .unwrap();
        assert_eq!(points[0].recognizer, RecognizerChoice::Tiny);
        assert_eq!(points[0].detector, DetectorKind::Tiny, "tiny when absent");
        assert_eq!(points[2].detector, DetectorKind::Small);
        let small = points[2].apply(&OcrOptions::default());
        assert_eq!(
            (small.detector, small.det_limit, small.recognizer),
            (DetectorKind::Small, 1280, RecognizerChoice::Small)
        );
        assert_eq!(points[0].quality, Some(0.5));
        assert_eq!(points[1].quality, None, "unmeasured quality");
        let options = points[1].apply(&OcrOptions {
            ascii_only: true,
            ..OcrOptions::default()
        });
        assert_eq!(options.det_limit, 960);
        assert_eq!(
            options.recognizer,
            RecognizerChoice::Cascade { threshold: 0.9 }
        );
        assert!(options.ascii_only, "other options are kept");
        let files: Vec<Vec<&str>> = points.iter().map(OcrPoint::model_files).collect();
        assert_eq!(
            files,
            [
                vec!["det_tiny.onnx", "rec_tiny.onnx"],
                vec!["det_tiny.onnx", "rec_tiny.onnx", "rec_small.onnx"],
                vec!["det_small.onnx", "rec_small.onnx"],
            ]
        );
    }

    #[test]
    fn bad_knobs_are_errors() {
        for (text, expected) in [
            ("det_limit = 640\nrec = \"huge\"", "unknown rec \"huge\""),
            ("det_limit = 640\nrec = \"cascade\"", "needs a threshold"),
            (
                "det_limit = 640\nrec = \"tiny\"\ncolour = 1",
                "unknown field",
            ),
            ("det_limit = 4\nrec = \"tiny\"", "det_limit 4"),
            (
                "det = \"huge\"\ndet_limit = 640\nrec = \"tiny\"",
                "unknown det \"huge\"",
            ),
            ("rec = \"tiny\"", "missing field `det_limit`"),
        ] {
            let doc = format!("[[points]]\nname = \"p\"\n{text}\n");
            let err = from_manifest(&manifest_points(&doc))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let twice = "[[points]]\nname = \"p\"\ndet_limit = 640\nrec = \"tiny\"\n".repeat(2);
        let err = from_manifest(&manifest_points(&twice)).unwrap_err();
        assert!(err.to_string().contains("declared twice"), "{err}");
    }
}
