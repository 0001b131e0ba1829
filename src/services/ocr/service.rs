//! OCR as a remote service: request payloads in, JSON results out.
//!
//! A request is a raw PNG/JPEG (content type `image/png` or `image/jpeg`, or none) or JSON
//! `{"image_b64": "...", "crops": false, "rec": "cascade", "threshold": 0.9,
//! "ascii": false, "det_limit": 960}` where every field but the image is optional and
//! defaults to the service's configuration.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{OcrOptions, OcrPipeline, RecognizerChoice};
use crate::imaging;
use crate::services::{Payload, Service, ServiceError};

/// The OCR service: a loaded pipeline and its default options.
pub struct OcrService {
    pipeline: Arc<OcrPipeline>,
    defaults: OcrOptions,
    max_pixels: u64,
}

/// The optional parameters of a JSON request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    image_b64: String,
    #[serde(default)]
    crops: bool,
    rec: Option<String>,
    threshold: Option<f32>,
    ascii: Option<bool>,
    det_limit: Option<u32>,
}

impl OcrService {
    pub fn new(pipeline: Arc<OcrPipeline>, defaults: OcrOptions, max_pixels: u64) -> OcrService {
        OcrService {
            pipeline,
            defaults,
            max_pixels,
        }
    }

    fn options_for(&self, request: &JsonRequest) -> Result<OcrOptions, ServiceError> {
        let mut options = self.defaults.clone();
        let threshold = request.threshold.unwrap_or(match self.defaults.recognizer {
            RecognizerChoice::Cascade { threshold } => threshold,
            _ => 0.9,
        });
        options.recognizer = match request.rec.as_deref() {
            None if request.threshold.is_some() => RecognizerChoice::Cascade { threshold },
            None => self.defaults.recognizer,
            Some("tiny") => RecognizerChoice::Tiny,
            Some("small") => RecognizerChoice::Small,
            Some("cascade") => RecognizerChoice::Cascade { threshold },
            Some(other) => {
                return Err(ServiceError::new(
                    "bad_request",
                    format!("unknown recognizer {other:?} (tiny, small, cascade)"),
                ));
            }
        };
        options.ascii_only = request.ascii.unwrap_or(options.ascii_only);
        options.det_limit = request.det_limit.unwrap_or(options.det_limit);
        options
            .validate()
            .map_err(|e| ServiceError::new(e.code(), e))?;
        Ok(options)
    }
}

/// `tiny`, `small` or `cascade@0.9`: the operating point a result came from.
pub fn point_name(choice: RecognizerChoice) -> String {
    match choice {
        RecognizerChoice::Tiny => "tiny".into(),
        RecognizerChoice::Small => "small".into(),
        RecognizerChoice::Cascade { threshold } => format!("cascade@{threshold}"),
    }
}

impl Service for OcrService {
    fn name(&self) -> &'static str {
        "ocr"
    }

    fn handle(&self, content_type: Option<&str>, payload: &Payload) -> Result<Value, ServiceError> {
        let started = Instant::now();
        let (bytes, options, crops) = match payload {
            Payload::Raw(bytes) => {
                let media = content_type.map(|t| t.split(';').next().unwrap_or("").trim());
                if media == Some("application/json") || bytes.first() == Some(&b'{') {
                    // JSON that the transport could not parse.
                    return Err(ServiceError::new(
                        "bad_request",
                        "payload is not valid JSON",
                    ));
                }
                match media {
                    None | Some("image/png" | "image/jpeg" | "application/octet-stream") => {}
                    Some(other) => {
                        return Err(ServiceError::new(
                            "unsupported_media",
                            format!("content type {other:?}: send image/png, image/jpeg or JSON"),
                        ));
                    }
                }
                if bytes.first() == Some(&b'{') {
                    return Err(ServiceError::new(
                        "bad_request",
                        "payload is not valid JSON",
                    ));
                }
                (bytes.to_vec(), self.defaults.clone(), false)
            }
            Payload::Json(value) => {
                let request = JsonRequest::deserialize(value).map_err(|e| {
                    ServiceError::new("bad_request", format!("bad JSON request: {e}"))
                })?;
                let options = self.options_for(&request)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(request.image_b64.trim())
                    .map_err(|e| ServiceError::new("bad_request", format!("image_b64: {e}")))?;
                (bytes, options, request.crops)
            }
        };
        if bytes.is_empty() {
            return Err(ServiceError::new("bad_request", "empty image"));
        }
        let image =
            imaging::decode(&bytes, self.max_pixels).map_err(|e| ServiceError::new(e.code(), e))?;
        let decode_ms = started.elapsed().as_secs_f64() * 1e3;
        let failed = |e: super::OcrError| ServiceError::new(e.code(), e);
        let point = point_name(options.recognizer);
        if crops {
            let reading = self
                .pipeline
                .recognize(&[&image], &options)
                .map_err(failed)?
                .remove(0);
            return Ok(json!({
                "point": point,
                "text": reading.text,
                "confidence": reading.confidence,
                "recognizer": reading.recognizer,
                "timings": {"decode_ms": decode_ms, "total_ms": started.elapsed().as_secs_f64() * 1e3},
            }));
        }
        let result = self.pipeline.read_image(&image, &options).map_err(failed)?;
        let mut timings = json!(result.timings);
        timings["decode_ms"] = json!(decode_ms);
        Ok(json!({
            "point": point,
            "width": image.width(),
            "height": image.height(),
            "items": result.items,
            "heavy_calls": result.heavy_calls,
            "timings": timings,
        }))
    }

    fn describe(&self) -> Value {
        json!({
            "points": ["tiny", "small", "cascade"],
            "default_point": point_name(self.defaults.recognizer),
            "payloads": ["image/png", "image/jpeg", "application/json"],
            "models": self.pipeline.placements(),
        })
    }
}
