//! `echo`: answers every request with what it received, computing nothing (and it must
//! stay that way: benchmarks subtract it as the cost of the transport). A health check
//! for a deployment, and the baseline that measures what MQTT itself costs.

use serde_json::{Value, json};

use super::{Handled, Output, Payload, Served, Service, ServiceError, Serving};

pub struct EchoService;

impl Service for EchoService {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn answer(
        &self,
        content_type: Option<&str>,
        payload: &Payload,
        serving: Serving<'_>,
    ) -> Result<Handled, ServiceError> {
        if let Some(point) = serving.point {
            return Err(ServiceError::unknown_point(point, &[]));
        }
        let body = match payload {
            Payload::Json(value) => json!({"echo": value}),
            Payload::Raw(bytes) => json!({"bytes": bytes.len(), "content_type": content_type}),
        };
        Ok(Handled {
            output: Output::Json(body),
            served: Served::default(),
        })
    }

    fn describe(&self) -> Value {
        json!({"points": ["echo"]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_json_and_sizes_raw_payloads() {
        let answer = EchoService
            .handle(None, &Payload::Json(json!({"a": 1})), Serving::default())
            .unwrap();
        assert_eq!(answer, json!({"echo": {"a": 1}}));
        let raw = Payload::Raw(bytes::Bytes::from_static(b"abc"));
        let answer = EchoService
            .handle(Some("x/y"), &raw, Serving::default())
            .unwrap();
        assert_eq!(answer, json!({"bytes": 3, "content_type": "x/y"}));
        let err = EchoService
            .handle(None, &raw, Serving::at("fast"))
            .unwrap_err();
        assert_eq!(err.code, "bad_request");
    }
}
