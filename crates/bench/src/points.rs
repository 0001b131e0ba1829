//! `edgerun bench points`: the offline quality of each OCR operating point declared in the
//! manifest, end to end on ICDAR 2015. Its JSON is what `export/ocr.py --points-only` copies
//! into the manifest as each point's `quality`; latency is printed for orientation only
//! (`edgerun profile` measures it properly, on the device that serves).

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::ocr::read_scenes;
use super::{Machine, Table, write_json};
use crate::data::{self, SceneImage};
use edgerun_runtime::latency::LatencyStats;
use edgerun_runtime::services::ocr::{OcrOptions, OcrPipeline, OcrPoint};

/// The metric stored as `quality_metric` in the manifest.
pub const OCR_QUALITY_METRIC: &str = "ICDAR 2015 end-to-end word accuracy: share of care words \
     read exactly (case-insensitive alphanumeric) by a detected box covering half of them, \
     on the first N images of ic15-e2e";

#[derive(Debug, Clone)]
pub struct PointsBenchSettings {
    pub e2e_images: usize,
    /// Measure only these points (all if empty); the others keep what `out` says of them.
    pub only: Vec<String>,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointQuality {
    pub name: String,
    /// End-to-end word accuracy (see [`OCR_QUALITY_METRIC`]).
    pub quality: f64,
    pub detection_recall: f64,
    pub heavy_share: f64,
    pub latency: LatencyStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct PointsReport {
    pub machine: Machine,
    pub metric: String,
    pub images: usize,
    pub points: Vec<PointQuality>,
}

/// Each point's quality and latency on `scenes`, reading them all at that point (the
/// pipeline's options as shipped, the point's knobs on top).
pub fn measure(
    pipeline: &OcrPipeline,
    points: &[OcrPoint],
    scenes: &[SceneImage],
) -> Result<Vec<PointQuality>> {
    let mut measured = Vec::new();
    for point in points {
        eprintln!("{}: {} images...", point.name, scenes.len());
        let options = point.apply(&OcrOptions::default());
        let (result, _) = read_scenes(pipeline, &options, scenes)?;
        measured.push(PointQuality {
            name: point.name.clone(),
            quality: result.word_accuracy,
            detection_recall: result.detection_recall,
            heavy_share: result.heavy_share,
            latency: result.latency,
        });
    }
    Ok(measured)
}

/// Measures every point in `points` on the first `e2e_images` ICDAR 2015 scenes.
pub fn run(
    pipeline: &OcrPipeline,
    points: &[OcrPoint],
    settings: &PointsBenchSettings,
) -> Result<PointsReport> {
    anyhow::ensure!(!points.is_empty(), "the OCR manifest declares no points");
    let scenes = data::ic15_e2e(settings.e2e_images)?;
    let machine = Machine::current();
    eprintln!("machine: {machine}");
    let chosen = if settings.only.is_empty() {
        points.to_vec()
    } else {
        select(points, &settings.only)?
    };
    let mut measured = measure(pipeline, &chosen, &scenes)?;
    if !settings.only.is_empty() {
        let earlier = earlier_report(&settings.out, scenes.len())?;
        measured = merged(points, earlier, measured);
    }
    let report = PointsReport {
        machine,
        metric: format!("{OCR_QUALITY_METRIC} (N = {})", scenes.len()),
        images: scenes.len(),
        points: measured,
    };
    let mut table = Table::new(&["point", "word acc", "det recall", "heavy", "p50 ms"]);
    for p in &report.points {
        table.row(vec![
            p.name.clone(),
            format!("{:.4}", p.quality),
            format!("{:.4}", p.detection_recall),
            format!("{:.3}", p.heavy_share),
            format!("{:.1}", p.latency.median_ms),
        ]);
    }
    print!("{table}");
    write_json(&settings.out, &report)?;
    eprintln!("wrote {}", settings.out.display());
    Ok(report)
}

/// The declared points of these names, in the order given; an unknown name is an error.
pub fn select(declared: &[OcrPoint], names: &[String]) -> Result<Vec<OcrPoint>> {
    names
        .iter()
        .map(|name| {
            declared
                .iter()
                .find(|p| &p.name == name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("the OCR manifest declares no point {name:?}"))
        })
        .collect()
}

/// The points of a report written earlier over the same number of images (none if there is
/// no such file).
fn earlier_report(path: &std::path::Path, images: usize) -> Result<Vec<PointQuality>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    /// What is read back of a [`PointsReport`].
    #[derive(Deserialize)]
    struct Earlier {
        images: usize,
        points: Vec<PointQuality>,
    }
    let report: Earlier =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        report.images == images,
        "{} measured {} images, not {images}: measure every point again",
        path.display(),
        report.images
    );
    Ok(report.points)
}

/// One entry per declared point that has one, in manifest order: the fresh measurement
/// where there is one, else the earlier one.
fn merged(
    points: &[OcrPoint],
    earlier: Vec<PointQuality>,
    fresh: Vec<PointQuality>,
) -> Vec<PointQuality> {
    points
        .iter()
        .filter_map(|p| {
            let find = |list: &[PointQuality]| list.iter().find(|q| q.name == p.name).cloned();
            find(&fresh).or_else(|| find(&earlier))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgerun_runtime::services::ocr::{DetectorKind, RecognizerChoice};

    fn point(name: &str) -> OcrPoint {
        OcrPoint {
            name: name.into(),
            quality: None,
            detector: DetectorKind::Tiny,
            det_limit: 960,
            recognizer: RecognizerChoice::Tiny,
        }
    }

    fn quality(name: &str, quality: f64) -> PointQuality {
        PointQuality {
            name: name.into(),
            quality,
            detection_recall: 0.0,
            heavy_share: 0.0,
            latency: LatencyStats::default(),
        }
    }

    #[test]
    fn fresh_measurements_replace_earlier_ones_in_manifest_order() {
        let points = [point("a"), point("b"), point("c"), point("d")];
        let earlier = vec![quality("gone", 0.9), quality("a", 0.1), quality("b", 0.2)];
        let fresh = vec![quality("c", 0.33), quality("b", 0.22)];
        let got: Vec<(String, f64)> = merged(&points, earlier, fresh)
            .into_iter()
            .map(|q| (q.name, q.quality))
            .collect();
        let want = [("a", 0.1), ("b", 0.22), ("c", 0.33)].map(|(n, q)| (n.to_string(), q));
        assert_eq!(
            got, want,
            "d has no measurement and a point no longer declared is dropped"
        );
    }
}
