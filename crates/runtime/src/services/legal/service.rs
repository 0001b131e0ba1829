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
use crate::models::PointSet;
use crate::services::{
    Handled, Output, Payload, Served, Service, ServiceError, Serving, WarmUp, plain_text,
};

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

/// A request as the service reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalRequest {
    pub query: String,
    /// How many articles to return.
    pub k: usize,
}

impl LegalRequest {
    /// Reads a request: JSON `{"query": ..., "k": ...}` or the query as plain text.
    pub fn parse(
        content_type: Option<&str>,
        payload: &Payload,
    ) -> Result<LegalRequest, ServiceError> {
        match payload {
            Payload::Json(value) => {
                let request = JsonRequest::deserialize(value).map_err(|e| {
                    ServiceError::new("bad_request", format!("bad JSON request: {e}"))
                })?;
                Ok(LegalRequest {
                    query: request.query,
                    k: request.k.unwrap_or(DEFAULT_K),
                })
            }
            Payload::Raw(bytes) => {
                let text = plain_text(content_type, bytes, MAX_QUERY_BYTES, "the query")?;
                Ok(LegalRequest {
                    query: text.to_string(),
                    k: DEFAULT_K,
                })
            }
        }
    }
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

    fn answer(
        &self,
        content_type: Option<&str>,
        payload: &Payload,
        serving: Serving<'_>,
    ) -> Result<Handled, ServiceError> {
        let LegalRequest { query, k } = LegalRequest::parse(content_type, payload)?;
        let answer = self
            .legal
            .search_by(&query, k, serving.point, serving.deadline)
            .map_err(service_error)?;
        let served = Served {
            point: Some(answer.point.clone()),
            stepped_down_from: answer.stepped_down_from.clone(),
            abandoned_work: answer.abandoned_work,
        };
        Ok(Handled {
            output: Output::Json(serde_json::to_value(answer).expect("answers serialise")),
            served,
        })
    }

    fn meets_deadlines(&self) -> bool {
        true
    }

    fn points(&self) -> Option<&PointSet> {
        Some(self.legal.point_set())
    }

    fn warm_up(&self, scope: WarmUp<'_>) -> Result<(), ServiceError> {
        self.legal
            .warm_up(scope)
            .map_err(|e| ServiceError::new(e.code(), e))
    }

    fn release_outside(&self, scope: WarmUp<'_>) {
        self.legal.release_outside(scope)
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
            "default_point": self.legal.point_set().default_point,
            "settings": self.legal.settings(),
        })
    }
}
