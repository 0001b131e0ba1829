//! Legal retrieval as a remote service.
//!
//! A request is JSON `{"query": "...", "k": 5}` (`k` optional, default 5) or the question
//! itself as UTF-8 text (content type `text/plain`). The answer names the point, the
//! ranked articles (id, heading, score, snippet, whether the score-gap rule selected it)
//! and timings.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Legal, LegalError, MAX_QUERY_BYTES};
use crate::policy::PointSpec;
use crate::services::{Payload, Service, ServiceError, Serving, plain_text};

/// Articles returned when a request does not say.
pub const DEFAULT_K: usize = 5;

pub struct LegalService {
    legal: Arc<Legal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    query: String,
    k: Option<usize>,
}

impl LegalService {
    pub fn new(legal: Arc<Legal>) -> LegalService {
        LegalService { legal }
    }
}

fn service_error(e: LegalError) -> ServiceError {
    ServiceError::new(e.code(), e)
}

impl Service for LegalService {
    fn name(&self) -> &'static str {
        "legal"
    }

    fn handle(
        &self,
        content_type: Option<&str>,
        payload: &Payload,
        serving: Serving<'_>,
    ) -> Result<Value, ServiceError> {
        let (query, k) = match payload {
            Payload::Json(value) => {
                let request = JsonRequest::deserialize(value).map_err(|e| {
                    ServiceError::new("bad_request", format!("bad JSON request: {e}"))
                })?;
                (request.query, request.k.unwrap_or(DEFAULT_K))
            }
            Payload::Raw(bytes) => {
                let text = plain_text(content_type, bytes, MAX_QUERY_BYTES, "the query")?;
                (text.to_string(), DEFAULT_K)
            }
        };
        let answer = self
            .legal
            .search(&query, k, serving.point)
            .map_err(service_error)?;
        Ok(serde_json::to_value(answer).expect("answers serialise"))
    }

    fn points(&self) -> Vec<PointSpec> {
        self.legal.point_specs()
    }

    fn describe(&self) -> Value {
        let points: Vec<Value> = self
            .legal
            .points()
            .iter()
            .map(|p| json!({"name": p.name, "quality": p.quality, "space": p.space, "blocks": p.chain.len()}))
            .collect();
        json!({
            "articles": self.legal.articles().len(),
            "points": points,
            "default_point": self.legal.point(None).map(|p| p.name.clone()).ok(),
            "settings": self.legal.settings(),
        })
    }
}
