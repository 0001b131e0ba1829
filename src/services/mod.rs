//! What a device serves. Each service turns a decoded request into a result with the
//! engines it loaded; none of them knows how requests arrive (CLI, MQTT) or are queued.

pub mod echo;
pub mod ocr;

use bytes::Bytes;
use serde_json::Value;

/// The input shape each model of `service` sees in a typical request, by file name: what
/// benchmarks and `auto` measure on.
pub fn typical_input_shapes(service: &str) -> &'static [(&'static str, &'static [usize])] {
    match service {
        "ocr" => ocr::TYPICAL_INPUT_SHAPES,
        _ => &[],
    }
}

/// A request's payload, independent of the transport that carried it.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A JSON document (parameters, base64 data).
    Json(Value),
    /// Raw bytes, described by the content type (an image, say).
    Raw(Bytes),
}

/// A failed request, with a stable code clients can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    /// `bad_request`, `unsupported_media`, `too_large`, `internal`, ...
    pub code: &'static str,
    pub message: String,
}

impl ServiceError {
    pub fn new(code: &'static str, message: impl std::fmt::Display) -> ServiceError {
        ServiceError {
            code,
            message: message.to_string(),
        }
    }
}

/// A service a device can serve to remote clients.
pub trait Service: Send + Sync {
    /// The name in topics and configs (`ocr`).
    fn name(&self) -> &'static str;

    /// Answers one request. Runs on a worker thread; may take as long as inference takes.
    fn handle(&self, content_type: Option<&str>, payload: &Payload) -> Result<Value, ServiceError>;

    /// What the service offers (its operating points), for the device's status.
    fn describe(&self) -> Value;
}
