//! OCR as a remote service: request payloads in, JSON results out.
//!
//! A request is a raw PNG/JPEG (content type `image/png` or `image/jpeg`, or none) or JSON
//! `{"image_b64": "...", "crops": false, "rec": "cascade", "threshold": 0.9,
//! "ascii": false, "det": "tiny", "det_limit": 960}` where every field but the image is
//! optional.
//!
//! The knobs come from the operating point the request is served at (chosen by the
//! controller, pinned by the request, or the configured default). Explicit `rec`,
//! `threshold`, `det` or `det_limit` fields override the point's knobs; the answer then
//! names the point `custom`.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{DetectorKind, OcrOptions, OcrPipeline, OcrPoint, RecognizerChoice};
use crate::imaging;
use crate::models::PointSet;
use crate::services::{Handled, Output, Payload, Served, Service, ServiceError, Serving, WarmUp};

/// The name of a configuration that is none of the declared points.
pub const CUSTOM_POINT: &str = "custom";

/// The OCR service: a loaded pipeline and its default options.
pub struct OcrService {
    pipeline: Arc<OcrPipeline>,
    defaults: OcrOptions,
    /// The manifest's default point.
    default_point: String,
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
    det: Option<String>,
    det_limit: Option<u32>,
}

/// A request as the service reads it, before its image is decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct OcrRequest {
    /// The encoded image (PNG or JPEG), never empty.
    pub image: Vec<u8>,
    /// What to read it with: the point's options with the request's own knobs.
    pub options: OcrOptions,
    /// The request set a knob of its own, so it runs at no declared point.
    pub customised: bool,
    /// The image is one text crop: recognise it whole.
    pub crops: bool,
}

impl OcrRequest {
    /// Reads a request: raw PNG/JPEG bytes, or JSON with `image_b64` and optional knobs
    /// over `base`.
    pub fn parse(
        content_type: Option<&str>,
        payload: &Payload,
        base: OcrOptions,
    ) -> Result<OcrRequest, ServiceError> {
        let request = match payload {
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
                OcrRequest {
                    image: bytes.to_vec(),
                    options: base,
                    customised: false,
                    crops: false,
                }
            }
            Payload::Json(value) => {
                let request = JsonRequest::deserialize(value).map_err(|e| {
                    ServiceError::new("bad_request", format!("bad JSON request: {e}"))
                })?;
                let (options, customised) = options_for(base, &request)?;
                let image = base64::engine::general_purpose::STANDARD
                    .decode(request.image_b64.trim())
                    .map_err(|e| ServiceError::new("bad_request", format!("image_b64: {e}")))?;
                OcrRequest {
                    image,
                    options,
                    customised,
                    crops: request.crops,
                }
            }
        };
        if request.image.is_empty() {
            return Err(ServiceError::new("bad_request", "empty image"));
        }
        Ok(request)
    }
}

/// `base` (a point's options) with the request's explicit knobs; whether it set any.
fn options_for(
    base: OcrOptions,
    request: &JsonRequest,
) -> Result<(OcrOptions, bool), ServiceError> {
    let customised = request.rec.is_some()
        || request.threshold.is_some()
        || request.det.is_some()
        || request.det_limit.is_some();
    let mut options = base;
    let threshold = request.threshold.unwrap_or(match options.recognizer {
        RecognizerChoice::Cascade { threshold } => threshold,
        _ => 0.9,
    });
    options.recognizer = match request.rec.as_deref() {
        None if request.threshold.is_some() => RecognizerChoice::Cascade { threshold },
        None => options.recognizer,
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
    if let Some(name) = request.det.as_deref() {
        options.detector = DetectorKind::from_name(name).ok_or_else(|| {
            ServiceError::new(
                "bad_request",
                format!("unknown detector {name:?} (tiny, small)"),
            )
        })?;
    }
    options.det_limit = request.det_limit.unwrap_or(options.det_limit);
    options
        .validate()
        .map_err(|e| ServiceError::new(e.code(), e))?;
    Ok((options, customised))
}

impl OcrService {
    /// The service over `pipeline`; `defaults` gives what no point sets (ASCII only, batch
    /// size, ...), and requests are served at the manifest's default point unless they or
    /// a controller choose another.
    pub fn new(pipeline: Arc<OcrPipeline>, defaults: OcrOptions, max_pixels: u64) -> OcrService {
        let default_point = pipeline.point_set().default_point.clone();
        OcrService {
            pipeline,
            defaults,
            default_point,
            max_pixels,
        }
    }

    /// The declared point `name` (the default point when `None`); `None` when the
    /// defaults match no declared point.
    fn at_point(&self, name: Option<&str>) -> Result<Option<&OcrPoint>, ServiceError> {
        let Some(name) = name else {
            return Ok(self.point(&self.default_point));
        };
        let point = self
            .point(name)
            .ok_or_else(|| ServiceError::unknown_point(name, &self.pipeline.point_set().names()))?;
        Ok(Some(point))
    }

    fn point(&self, name: &str) -> Option<&OcrPoint> {
        self.pipeline.points().iter().find(|p| p.name == name)
    }
}

impl Service for OcrService {
    fn name(&self) -> &'static str {
        "ocr"
    }

    fn answer(
        &self,
        content_type: Option<&str>,
        payload: &Payload,
        serving: Serving<'_>,
    ) -> Result<Handled, ServiceError> {
        let started = Instant::now();
        let mut point = self.at_point(serving.point)?;
        let base = point.map_or_else(|| self.defaults.clone(), |p| p.apply(&self.defaults));
        let request = OcrRequest::parse(content_type, payload, base)?;
        if request.customised {
            point = None;
        }
        let OcrRequest {
            image: bytes,
            options,
            crops,
            ..
        } = request;
        let image =
            imaging::decode(&bytes, self.max_pixels).map_err(|e| ServiceError::new(e.code(), e))?;
        let decode_ms = started.elapsed().as_secs_f64() * 1e3;
        let failed = |e: super::OcrError| ServiceError::new(e.code(), e);
        if crops {
            let reading = self
                .pipeline
                .recognize(&[&image], &options)
                .map_err(failed)?
                .remove(0);
            let body = json!({
                "text": reading.text,
                "confidence": reading.confidence,
                "recognizer": reading.recognizer,
                "timings": {"decode_ms": decode_ms, "total_ms": started.elapsed().as_secs_f64() * 1e3},
            });
            return Ok(Handled {
                output: Output::Json(body),
                served: Served::at(point.map_or(CUSTOM_POINT, |p| &p.name)),
            });
        }
        let (result, served) = match point {
            // Still a declared point (no knob overridden): it may step down to meet the deadline.
            Some(point) => {
                let (result, served) = self
                    .pipeline
                    .read_image_at(&image, point, &options, serving.deadline)
                    .map_err(failed)?;
                (result, Some((served, point)))
            }
            None => (
                self.pipeline.read_image(&image, &options).map_err(failed)?,
                None,
            ),
        };
        let mut timings = json!(result.timings);
        timings["decode_ms"] = json!(decode_ms);
        let body = json!({
            "width": image.width(),
            "height": image.height(),
            "items": result.items,
            "heavy_calls": result.heavy_calls,
            "timings": timings,
        });
        let served = match served {
            Some((served, decided)) => Served::stepped(&served.name, &decided.name),
            None => Served::at(CUSTOM_POINT),
        };
        Ok(Handled {
            output: Output::Json(body),
            served,
        })
    }

    fn meets_deadlines(&self) -> bool {
        true
    }

    fn points(&self) -> Option<&PointSet> {
        Some(self.pipeline.point_set())
    }

    fn warm_up(&self, scope: WarmUp<'_>) -> Result<(), ServiceError> {
        self.pipeline
            .warm_up(scope)
            .map_err(|e| ServiceError::new(e.code(), e))
    }

    fn release_outside(&self, scope: WarmUp<'_>) {
        self.pipeline.release_outside(scope)
    }

    fn describe(&self) -> Value {
        let points: Vec<Value> = self
            .pipeline
            .points()
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "quality": p.quality,
                    "detector": p.detector,
                    "det_limit": p.det_limit,
                    "recognizer": p.recognizer,
                })
            })
            .collect();
        json!({
            "points": points,
            "default_point": self.default_point,
            "payloads": ["image/png", "image/jpeg", "application/json"],
            "models": self.pipeline.placements(),
        })
    }
}
