//! Image generation as a remote service.
//!
//! A request is JSON `{"prompt": "EDGE", "seed": 7, "format": "png"}` (`seed` optional,
//! default 0; `format` `png`, the default, or `json`) or the prompt itself as UTF-8 text
//! (content type `text/plain`). A PNG answer is the image bytes with content type
//! `image/png` and the metadata (point, seed, evaluations, timings) as the MQTT v5 user
//! property `meta`; a JSON answer carries the same metadata and the PNG in base64.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Generate, GenerateError};
use crate::models::PointSet;
use crate::services::{
    Handled, Output, Payload, Served, Service, ServiceError, Serving, WarmUp, plain_text,
};

/// A prompt payload longer than this (bytes) is refused before it is read: prompts are a
/// few characters.
pub const MAX_PROMPT_BYTES: usize = 256;

pub struct GenerateService {
    generate: Arc<Generate>,
}

/// How a generated image is answered.
#[derive(Debug, Default, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The PNG bytes as the payload, the metadata as a user property.
    #[default]
    Png,
    /// One JSON document with the PNG in base64.
    Json,
}

/// A request as the service reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub prompt: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub format: Format,
}

impl GenerateRequest {
    /// Reads a request: JSON `{"prompt": ..., "seed": ..., "format": ...}` or the prompt
    /// as plain text.
    pub fn parse(
        content_type: Option<&str>,
        payload: &Payload,
    ) -> Result<GenerateRequest, ServiceError> {
        match payload {
            Payload::Json(value) => GenerateRequest::deserialize(value)
                .map_err(|e| ServiceError::new("bad_request", format!("bad JSON request: {e}"))),
            Payload::Raw(bytes) => {
                let prompt = plain_text(content_type, bytes, MAX_PROMPT_BYTES, "the prompt")?;
                Ok(GenerateRequest {
                    prompt: prompt.to_string(),
                    seed: 0,
                    format: Format::Png,
                })
            }
        }
    }
}

impl GenerateService {
    pub fn new(generate: Arc<Generate>) -> GenerateService {
        GenerateService { generate }
    }
}

fn service_error(e: GenerateError) -> ServiceError {
    ServiceError::new(e.code(), e)
}

impl Service for GenerateService {
    fn name(&self) -> &'static str {
        "generate"
    }

    fn answer(
        &self,
        content_type: Option<&str>,
        payload: &Payload,
        serving: Serving<'_>,
    ) -> Result<Handled, ServiceError> {
        let request = GenerateRequest::parse(content_type, payload)?;
        let generated = self
            .generate
            .generate_by(
                &request.prompt,
                serving.point,
                request.seed,
                serving.deadline,
            )
            .map_err(service_error)?;
        // Stopping early leaves exactly the served point's steps done.
        let served = Served {
            point: Some(generated.point.clone()),
            stepped_down_from: generated.stepped_down_from.clone(),
            abandoned_work: false,
        };
        let meta = json!({
            "prompt": generated.prompt,
            "seed": generated.seed,
            "evaluations": generated.evaluations,
            "width": generated.image.width(),
            "height": generated.image.height(),
            "total_ms": generated.total_ms,
        });
        let output = Output::Media {
            content_type: "image/png",
            bytes: Bytes::from(generated.png()),
            meta,
        };
        let output = match request.format {
            Format::Png => output,
            Format::Json => Output::Json(output.into_json()),
        };
        Ok(Handled { output, served })
    }

    fn meets_deadlines(&self) -> bool {
        true
    }

    fn points(&self) -> Option<&PointSet> {
        Some(self.generate.point_set())
    }

    fn warm_up(&self, scope: WarmUp<'_>) -> Result<(), ServiceError> {
        self.generate
            .warm_up(scope)
            .map_err(|e| ServiceError::new(e.code(), e))
    }

    fn release_outside(&self, scope: WarmUp<'_>) {
        self.generate.release_outside(scope)
    }

    fn describe(&self) -> Value {
        let points: Vec<Value> = self
            .generate
            .points()
            .iter()
            .map(|p| json!({"name": p.name, "quality": p.quality, "evaluations": p.evaluations()}))
            .collect();
        let s = self.generate.settings();
        json!({
            "points": points,
            "default_point": self.generate.point_set().default_point,
            "alphabet": s.alphabet,
            "prompt_length": [s.min_len, s.max_len],
            "size": [s.width, s.height],
        })
    }
}
