//! `edgerun ocr IMAGE...`: prints one JSON object per image. A bad image is reported in
//! its own object and never stops the others; the reading itself is the service's job.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};

use super::settings::{Runtime, Warm, ocr_options};
use super::{DetArg, GlobalArgs, RecArg};
use crate::imaging;
use crate::services::ocr::{CUSTOM_POINT, OcrError, OcrOptions, OcrPipeline};

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
    /// Operating point (see `models/ocr/manifest.toml`) [default: the manifest's
    /// default_point]; --rec, --threshold, --det and --det-limit override its knobs.
    #[arg(long, value_name = "NAME")]
    pub point: Option<String>,
    /// Recognizer: tiny, small, or a cascade (tiny, then small for unsure crops).
    #[arg(long, value_enum)]
    pub rec: Option<RecArg>,
    /// Cascade confidence threshold: tiny readings below it go to the small recognizer.
    #[arg(long, value_name = "P")]
    pub threshold: Option<f32>,
    /// Detector: tiny, or small (finds more words, about 5x the time per pixel).
    #[arg(long, value_enum)]
    pub det: Option<DetArg>,
    /// Longest image side the detector sees, in pixels.
    #[arg(long, value_name = "PX")]
    pub det_limit: Option<u32>,
    /// Decode printable ASCII only.
    #[arg(long)]
    pub ascii: bool,
    /// Crops per recognizer run (crops of similar width are batched together).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch: usize,
    /// Refuse images with more pixels than this (default 48 million).
    #[arg(long, value_name = "N")]
    pub max_pixels: Option<u64>,
    /// Refuse image files larger than this many bytes.
    #[arg(long, default_value_t = 64 << 20, value_name = "N")]
    pub max_bytes: u64,
}

/// Runs OCR on each image; a failed image prints an error object and sets exit code 1.
pub fn run(global: &GlobalArgs, args: &OcrArgs) -> Result<ExitCode> {
    let runtime = Runtime::from_args(global)?;
    let pipeline = runtime.ocr_pipeline(Warm::Cold)?;
    let t = &args.tuning;
    let options = ocr_options(t, &pipeline)?;
    // The declared point these knobs are, else `custom`.
    let point = pipeline
        .points()
        .iter()
        .find(|p| p.apply(&options) == options)
        .map_or(CUSTOM_POINT, |p| p.name.as_str());
    let mut failed = false;
    let stdout = std::io::stdout();
    for path in &args.images {
        let line = match read_one(&pipeline, &options, path, args.crops, t) {
            Ok(mut result) => {
                result["point"] = json!(point);
                result
            }
            Err(Failure { code, message }) => {
                failed = true;
                json!({"image": path.to_string_lossy(), "error": {"code": code, "message": message}})
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

/// Reads a file of at most `max_bytes`, so a device file or a huge file cannot exhaust memory.
fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, Failure> {
    let io_failure = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => Failure::new("not_found", e),
        _ => Failure::new("unreadable", e),
    };
    let file = std::fs::File::open(path).map_err(io_failure)?;
    let metadata = file.metadata().map_err(io_failure)?;
    if !metadata.is_file() {
        return Err(Failure::new("bad_request", "not a regular file"));
    }
    if metadata.len() > max_bytes {
        return Err(Failure::new(
            "too_large",
            format!(
                "file has {} bytes, above the limit of {max_bytes}",
                metadata.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(max_bytes)
        .read_to_end(&mut bytes)
        .map_err(io_failure)?;
    Ok(bytes)
}

fn read_one(
    pipeline: &OcrPipeline,
    options: &OcrOptions,
    path: &Path,
    crops: bool,
    tuning: &OcrTuning,
) -> Result<Value, Failure> {
    let started = Instant::now();
    let bytes = read_file(path, tuning.max_bytes)?;
    let image = imaging::decode(
        &bytes,
        tuning.max_pixels.unwrap_or(imaging::DEFAULT_MAX_PIXELS),
    )
    .map_err(|e| Failure::new(e.code(), e))?;
    let decode_ms = started.elapsed().as_secs_f64() * 1e3;
    let ocr_failure = |e: OcrError| Failure::new(e.code(), e);
    if crops {
        let started = Instant::now();
        let reading = pipeline
            .recognize(&[&image], options)
            .map_err(ocr_failure)?
            .remove(0);
        let rec_ms = started.elapsed().as_secs_f64() * 1e3;
        return Ok(json!({
            "image": path.to_string_lossy(),
            "text": reading.text,
            "confidence": reading.confidence,
            "recognizer": reading.recognizer,
            "timings": {"decode_ms": decode_ms, "rec_ms": rec_ms},
        }));
    }
    let result = pipeline.read_image(&image, options).map_err(ocr_failure)?;
    let mut timings = json!(result.timings);
    timings["decode_ms"] = json!(decode_ms);
    Ok(json!({
        "image": path.to_string_lossy(),
        "width": image.width(),
        "height": image.height(),
        "items": result.items,
        "heavy_calls": result.heavy_calls,
        "timings": timings,
    }))
}
