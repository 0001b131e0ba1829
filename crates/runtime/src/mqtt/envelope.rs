//! Requests and replies as they travel over MQTT. Only the envelope is read here (reply
//! topic, correlation, expiry, content type); the payload's meaning is the service's.
//!
//! MQTT v5 clients name the reply topic and correlation data as PUBLISH properties. MQTT
//! 3.1.1 clients have no properties, so a JSON request may carry `reply_to` (topic) and `id`
//! (echoed in the reply) instead.
//!
//! A request may also steer the controller: pin an operating point (`point`) or bring its own
//! latency target (`deadline_ms`), as JSON fields or as MQTT v5 user properties of the same
//! names. They are taken out of the body here, so services never see them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde_json::Value;

use crate::services::Output;
pub use crate::services::Payload as Body;

/// Where and how to answer a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub topic: String,
    /// MQTT v5 correlation data, echoed as a property.
    pub correlation: Option<Bytes>,
    /// MQTT 3.1.1 fallback: the request's JSON `id`, echoed in the reply body.
    pub id: Option<Value>,
    /// The request named its reply topic in the JSON body (the 3.1.1 fallback), so the
    /// client may not read properties: everything goes in the body.
    pub in_body: bool,
}

/// One request, taken off the wire.
#[derive(Debug, Clone)]
pub struct Request {
    pub service: String,
    pub content_type: Option<String>,
    pub body: Body,
    /// `None` when the sender gave no way to answer (nothing can be sent back).
    pub reply: Option<Reply>,
    pub received_at: Instant,
    /// From the MQTT v5 message expiry interval: after this, computing is pointless.
    pub expires_at: Option<Instant>,
    /// What the request asks of the controller, or why that cannot be understood.
    pub steering: Result<Steering, String>,
}

/// A request's wishes about its operating point.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Steering {
    /// Serve exactly this operating point.
    pub point: Option<String>,
    /// This request's own latency target in milliseconds, instead of the service's SLO.
    pub deadline_ms: Option<f64>,
}

impl Request {
    /// Builds a request from a PUBLISH on a request topic of `service`. Payloads above
    /// `max_json_bytes` are not parsed (they are refused anyway, and parsing them would
    /// stall the connection): such a request can only be answered through v5 properties.
    pub fn from_publish(
        service: &str,
        publish: &Publish,
        now: Instant,
        max_json_bytes: usize,
    ) -> Request {
        let properties = publish.properties.as_ref();
        let content_type = properties.and_then(|p| p.content_type.clone());
        let looks_like_json = publish.payload.len() <= max_json_bytes
            && content_type
                .as_deref()
                .map(|t| t.starts_with("application/json"))
                .unwrap_or_else(|| publish.payload.first() == Some(&b'{'));
        let mut body = if looks_like_json {
            // Invalid JSON stays raw; the service answers `bad_request` with the reason.
            match serde_json::from_slice::<Value>(&publish.payload) {
                Ok(value) => Body::Json(value),
                Err(_) => Body::Raw(publish.payload.clone()),
            }
        } else {
            Body::Raw(publish.payload.clone())
        };
        let reply = match properties.and_then(|p| p.response_topic.clone()) {
            Some(topic) => Some(Reply {
                topic,
                // Copied: the client library hands it out as a slice of the packet's
                // buffer, and a key kept for replays would otherwise keep the whole
                // request (an image) resident for as long as the key lives.
                correlation: properties
                    .and_then(|p| p.correlation_data.as_deref())
                    .map(Bytes::copy_from_slice),
                id: None,
                in_body: false,
            }),
            None => json_reply(&mut body),
        }
        .filter(|reply| is_publishable(&reply.topic));
        let expires_at = properties
            .and_then(|p| p.message_expiry_interval)
            .map(|secs| now + Duration::from_secs(secs as u64));
        let user_properties = properties.map_or(&[][..], |p| &p.user_properties[..]);
        let steering = steering(&mut body, user_properties);
        Request {
            service: service.to_string(),
            content_type,
            body,
            reply,
            received_at: now,
            expires_at,
            steering,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// Whether an answer may be published on `topic`: not empty, no wildcards or NUL, not a
/// `$` system topic. Anything else would be refused by the client library or the broker.
fn is_publishable(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 65_535
        && !topic.starts_with('$')
        && !topic.contains(['+', '#', '\0'])
}

/// The MQTT 3.1.1 fallback: `{"reply_to": "...", "id": ...}` in a JSON body. Both fields
/// are taken out of the body: they are the transport's, and services never see them.
fn json_reply(body: &mut Body) -> Option<Reply> {
    let Body::Json(Value::Object(map)) = body else {
        return None;
    };
    let topic = match map.remove("reply_to")? {
        Value::String(topic) => topic,
        _ => return None,
    };
    Some(Reply {
        topic,
        correlation: None,
        id: map.remove("id"),
        in_body: true,
    })
}

/// Takes `point` and `deadline_ms` out of a JSON body, or reads them from user properties
/// (the body wins where both are given).
fn steering(body: &mut Body, user_properties: &[(String, String)]) -> Result<Steering, String> {
    let property = |name: &str| {
        user_properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| Value::String(value.clone()))
    };
    let (mut point, mut deadline) = (property("point"), property("deadline_ms"));
    if let Body::Json(Value::Object(map)) = body {
        point = map.remove("point").or(point);
        deadline = map.remove("deadline_ms").or(deadline);
    }
    let point = match point {
        None => None,
        Some(Value::String(name)) if !name.is_empty() => Some(name),
        Some(other) => return Err(format!("point must be a point's name, not {other}")),
    };
    let deadline_ms = match deadline {
        None => None,
        Some(value) => {
            let ms = match &value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match ms {
                Some(ms) if ms.is_finite() && ms > 0.0 => Some(ms),
                _ => {
                    return Err(format!(
                        "deadline_ms must be a positive number, not {value}"
                    ));
                }
            }
        }
    };
    Ok(Steering { point, deadline_ms })
}

impl Reply {
    /// The reply's JSON body: `value` with the 3.1.1 `id` added when there is one.
    pub fn body(&self, mut value: Value) -> Vec<u8> {
        if let (Some(id), Value::Object(map)) = (&self.id, &mut value) {
            map.insert("id".into(), id.clone());
        }
        serde_json::to_vec(&value).expect("JSON values always serialize")
    }

    /// PUBLISH properties of a JSON reply: correlation data echoed, JSON content type.
    pub fn properties(&self) -> PublishProperties {
        PublishProperties {
            correlation_data: self.correlation.clone(),
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
        }
    }

    /// Payload and properties for `output`. Media go out as raw bytes with their content
    /// type and the metadata as the user property `meta`, except to a 3.1.1 client (one
    /// that named its reply topic in the body): it cannot read properties, so it gets the
    /// JSON form with the bytes in base64.
    pub fn encode(&self, output: Output) -> (Vec<u8>, PublishProperties) {
        match output {
            Output::Media {
                content_type,
                bytes,
                meta,
            } if !self.in_body => {
                let properties = PublishProperties {
                    correlation_data: self.correlation.clone(),
                    content_type: Some(content_type.into()),
                    user_properties: vec![("meta".into(), meta.to_string())],
                    ..PublishProperties::default()
                };
                (bytes.to_vec(), properties)
            }
            other => (self.body(other.into_json()), self.properties()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;
    use serde_json::json;

    fn publish(payload: &[u8], properties: Option<PublishProperties>) -> Publish {
        let mut p = Publish::new(
            "edgerun/d/ocr/request",
            QoS::AtLeastOnce,
            payload.to_vec(),
            properties,
        );
        p.pkid = 1;
        p
    }

    #[test]
    fn v5_properties_give_the_reply_and_expiry() {
        let props = PublishProperties {
            response_topic: Some("me/replies".into()),
            correlation_data: Some(Bytes::from_static(b"c-42")),
            content_type: Some("image/png".into()),
            message_expiry_interval: Some(3),
            ..PublishProperties::default()
        };
        let now = Instant::now();
        let r = Request::from_publish("ocr", &publish(b"\x89PNG", Some(props)), now, 1 << 20);
        assert_eq!(r.service, "ocr");
        assert_eq!(r.content_type.as_deref(), Some("image/png"));
        assert!(matches!(r.body, Body::Raw(ref b) if b.as_ref() == b"\x89PNG"));
        let reply = r.reply.clone().unwrap();
        assert_eq!(reply.topic, "me/replies");
        assert_eq!(reply.correlation.as_deref(), Some(&b"c-42"[..]));
        assert!(!r.is_expired(now + Duration::from_secs(2)));
        assert!(r.is_expired(now + Duration::from_secs(3)));
        assert_eq!(reply.properties().correlation_data, reply.correlation);
    }

    #[test]
    fn correlation_data_does_not_keep_the_packet_buffer_alive() {
        // As the client library decodes it: every field a slice of one read buffer.
        let packet = Bytes::from(vec![7u8; 1 << 20]);
        let props = PublishProperties {
            response_topic: Some("me/replies".into()),
            correlation_data: Some(packet.slice(16..24)),
            ..PublishProperties::default()
        };
        let mut p = publish(b"", Some(props));
        p.payload = packet.slice(64..);
        let r = Request::from_publish("ocr", &p, Instant::now(), 1 << 20);
        let correlation = r.reply.unwrap().correlation.unwrap();
        assert_eq!(correlation.as_ref(), &[7u8; 8]);
        let buffer = packet.as_ptr_range();
        assert!(!buffer.contains(&correlation.as_ptr()));
    }

    #[test]
    fn v311_json_fallback_carries_reply_to_and_id() {
        let r = Request::from_publish(
            "ocr",
            &publish(br#"{"image_b64": "", "reply_to": "me/r", "id": 7}"#, None),
            Instant::now(),
            1 << 20,
        );
        let reply = r.reply.unwrap();
        assert_eq!(
            (reply.topic.as_str(), reply.id.clone()),
            ("me/r", Some(json!(7)))
        );
        let body: Value = serde_json::from_slice(&reply.body(json!({"text": "x"}))).unwrap();
        assert_eq!(body, json!({"text": "x", "id": 7}));
        // The service sees only its own fields.
        assert!(matches!(r.body, Body::Json(ref v) if *v == json!({"image_b64": ""})));
        assert!(r.expires_at.is_none());
    }

    #[test]
    fn steering_comes_from_json_fields_or_user_properties() {
        let now = Instant::now();
        let r = Request::from_publish(
            "ocr",
            &publish(
                br#"{"image_b64": "", "point": "tiny@640", "deadline_ms": 250}"#,
                None,
            ),
            now,
            1 << 20,
        );
        let expected = Steering {
            point: Some("tiny@640".into()),
            deadline_ms: Some(250.0),
        };
        assert_eq!(r.steering, Ok(expected.clone()));
        assert!(matches!(r.body, Body::Json(ref v) if *v == json!({"image_b64": ""})));
        let props = PublishProperties {
            user_properties: vec![
                ("point".into(), "tiny@640".into()),
                ("deadline_ms".into(), "250".into()),
            ],
            ..PublishProperties::default()
        };
        let r = Request::from_publish("ocr", &publish(b"\x89PNG", Some(props)), now, 1 << 20);
        assert_eq!(r.steering, Ok(expected));
        let r = Request::from_publish("ocr", &publish(b"\x89PNG", None), now, 1 << 20);
        assert_eq!(r.steering, Ok(Steering::default()));
        for bad in [
            r#"{"deadline_ms": -5}"#,
            r#"{"deadline_ms": "soon"}"#,
            r#"{"point": 3}"#,
        ] {
            let r = Request::from_publish("ocr", &publish(bad.as_bytes(), None), now, 1 << 20);
            assert!(r.steering.is_err(), "{bad}");
        }
    }

    #[test]
    fn unpublishable_reply_topics_count_as_no_reply() {
        for topic in ["", "a/#", "a/+/b", "$SYS/x", "a\0b"] {
            let payload = serde_json::to_vec(&json!({"reply_to": topic})).unwrap();
            let r = Request::from_publish("ocr", &publish(&payload, None), Instant::now(), 1 << 20);
            assert!(r.reply.is_none(), "{topic:?}");
        }
    }

    #[test]
    fn no_reply_and_broken_json_are_kept_for_the_service_to_judge() {
        let r = Request::from_publish("ocr", &publish(b"{not json", None), Instant::now(), 1 << 20);
        assert!(r.reply.is_none());
        assert!(matches!(r.body, Body::Raw(_)));
    }
}
