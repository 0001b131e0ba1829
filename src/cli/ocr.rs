//! `edgerun ocr IMAGE...`: prints one JSON object per image.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::settings::{Runtime, ocr_options};
use super::{GlobalArgs, RecArg};
use crate::imaging;

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
        let started = Instant::now();
        let decoded = std::fs::read(path)
            .map_err(|e| ("not_found", e.to_string()))
            .and_then(|bytes| {
                imaging::decode(&bytes, t.max_pixels).map_err(|e| (e.code(), e.to_string()))
            });
        let decode_ms = started.elapsed().as_secs_f64() * 1e3;
        let line = match decoded {
            Err((code, message)) => {
                failed = true;
                json!({"image": path, "error": {"code": code, "message": message}})
            }
            Ok(image) if args.crops => {
                let started = Instant::now();
                let mut readings = pipeline.recognize(&[&image], &options)?;
                let rec_ms = started.elapsed().as_secs_f64() * 1e3;
                let r = readings.remove(0);
                json!({
                    "image": path,
                    "text": r.text,
                    "confidence": r.confidence,
                    "recognizer": r.recognizer,
                    "timings": {"decode_ms": decode_ms, "rec_ms": rec_ms},
                })
            }
            Ok(image) => {
                let result = pipeline.read_image(&image, &options)?;
                let mut value =
                    json!({"image": path, "width": image.width(), "height": image.height()});
                let mut body = serde_json::to_value(&result)?;
                body["timings"]["decode_ms"] = json!(decode_ms);
                value
                    .as_object_mut()
                    .expect("object")
                    .extend(body.as_object().expect("object").clone());
                value
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
