//! `edgerun bench points`: the offline quality of each OCR operating point declared in the
//! manifest, end to end on ICDAR 2015. Its JSON is what `export/ocr.py --points-only` copies
//! into the manifest as each point's `quality`; latency is printed for orientation only
//! (`edgerun profile` measures it properly, on the device that serves).

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::ocr::read_scenes;
use super::{Machine, Table, write_json};
use crate::data;
use edgerun_runtime::latency::LatencyStats;
use edgerun_runtime::services::ocr::{OcrOptions, OcrPipeline, OcrPoint};

/// The metric stored as `quality_metric` in the manifest.
pub const OCR_QUALITY_METRIC: &str = "ICDAR 2015 end-to-end word accuracy: share of care words \
     read exactly (case-insensitive alphanumeric) by a detected box covering half of them, \
     on the first N images of ic15-e2e";

#[derive(Debug, Clone)]
pub struct PointsBenchSettings {
    pub e2e_images: usize,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
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
    let mut measured = Vec::new();
    for point in points {
        eprintln!("{}: {} images...", point.name, scenes.len());
        let options = point.apply(&OcrOptions::default());
        let (result, _) = read_scenes(pipeline, &options, &scenes)?;
        measured.push(PointQuality {
            name: point.name.clone(),
            quality: result.word_accuracy,
            detection_recall: result.detection_recall,
            heavy_share: result.heavy_share,
            latency: result.latency,
        });
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
