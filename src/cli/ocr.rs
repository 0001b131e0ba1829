//! `edgerun ocr IMAGE...`: prints one JSON object per image.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};

use super::settings::{Runtime, ocr_options};
use super::{GlobalArgs, RecArg};
use crate::imaging;
use crate::services::ocr::{OcrOptions, OcrPipeline};

#[derive(Debug, Args)]
pub struct OcrArgs {
    /// PNG or JPEG files.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Treat each image as one cropped word or line: skip detection.
    #[arg(long)]
    pub crops: bool,
    #[command(flatten)]
    pub tuning: OcrTuning,
}

/// OCR knobs shared by `ocr` and the service.
#[derive(Debug, Clone, Args)]
pub struct OcrTuning {
    /// Recognizer: tiny, small, or a cascade (tiny, then small for unsure crops).
    #[arg(long, value_enum, default_value_t = RecArg::Cascade)]
    pub rec: RecArg,
    /// Cascade confidence threshold: tiny readings below it go to the small recognizer.
    #[arg(long, default_value_t = 0.9, value_name = "P")]
    pub threshold: f32,
    /// Longest image side the detector sees, in pixels.
    #[arg(long, default_value_t = 960, value_name = "PX")]
    pub det_limit: u32,
    /// Decode printable ASCII only.
    #[arg(long)]
    pub ascii: bool,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = imaging::DEFAULT_MAX_PIXELS, value_name = "N")]
    pub max_pixels: u64,
}

/// Runs OCR on each image; a failed image prints an error object and sets exit code 1.
pub fn run(global: &GlobalArgs, args: &OcrArgs) -> Result<ExitCode> {
    let runtime = Runtime::from_args(global)?;
    let pipeline = runtime.ocr_pipeline()?;
    let t = &args.tuning;
    let options = ocr_options(t.rec, t.threshold, t.det_limit, t.ascii);
    let mut failed = false;
    let stdout = std::io::stdout();
    for path in &args.images {
        let line = match read_one(&pipeline, &options, path, args.crops, t.max_pixels) {
            Ok(result) => result,
            Err(Failure { code, message }) => {
                failed = true;
                json!({"image": path, "error": {"code": code, "message": message}})
            }
        };
        let mut out = stdout.lock();
        serde_json::to_writer(&mut out, &line)?;
        writeln!(out)?;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Why one image could not be read, with a stable error code.
struct Failure {
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(code: &'static str, err: impl std::fmt::Display) -> Failure {
        Failure {
            code,
            message: err.to_string(),
        }
    }
}

fn read_one(
    pipeline: &OcrPipeline,
    options: &OcrOptions,
    path: &Path,
    crops: bool,
    max_pixels: u64,
) -> Result<Value, Failure> {
    let started = Instant::now();
    let bytes = std::fs::read(path).map_err(|e| Failure::new("not_found", e))?;
    let image = imaging::decode(&bytes, max_pixels).map_err(|e| Failure::new(e.code(), e))?;
    let decode_ms = started.elapsed().as_secs_f64() * 1e3;
    let internal = |e| Failure::new("internal", e);
    if crops {
        let started = Instant::now();
        let reading = pipeline
            .recognize(&[&image], options)
            .map_err(internal)?
            .remove(0);
        let rec_ms = started.elapsed().as_secs_f64() * 1e3;
        return Ok(json!({
            "image": path,
            "text": reading.text,
            "confidence": reading.confidence,
            "recognizer": reading.recognizer,
            "timings": {"decode_ms": decode_ms, "rec_ms": rec_ms},
        }));
    }
    let result = pipeline.read_image(&image, options).map_err(internal)?;
    let mut timings = json!(result.timings);
    timings["decode_ms"] = json!(decode_ms);
    Ok(json!({
        "image": path,
        "width": image.width(),
        "height": image.height(),
        "items": result.items,
        "heavy_calls": result.heavy_calls,
        "timings": timings,
    }))
}
