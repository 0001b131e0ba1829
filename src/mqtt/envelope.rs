//! Requests and replies as they travel over MQTT. Only the envelope is read here (reply
//! topic, correlation, expiry, content type); the payload's meaning is the service's.
//!
//! MQTT v5 clients name the reply topic and correlation data as PUBLISH properties. MQTT
//! 3.1.1 clients have no properties, so a JSON request may carry `reply_to` (topic) and `id`
//! (echoed in the reply) instead.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde_json::Value;

pub use crate::services::Payload as Body;

/// Where and how to answer a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub topic: String,
    /// MQTT v5 correlation data, echoed as a property.
    pub correlation: Option<Bytes>,
    /// MQTT 3.1.1 fallback: the request's JSON `id`, echoed in the reply body.
    pub id: Option<Value>,
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
                correlation: properties.and_then(|p| p.correlation_data.clone()),
                id: None,
            }),
            None => json_reply(&mut body),
        }
        .filter(|reply| is_publishable(&reply.topic));
        let expires_at = properties
            .and_then(|p| p.message_expiry_interval)
            .map(|secs| now + Duration::from_secs(secs as u64));
        Request {
            service: service.to_string(),
            content_type,
            body,
            reply,
            received_at: now,
            expires_at,
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
    })
}

impl Reply {
    /// The reply's JSON body: `value` with the 3.1.1 `id` added when there is one.
    pub fn body(&self, mut value: Value) -> Vec<u8> {
        if let (Some(id), Value::Object(map)) = (&self.id, &mut value) {
            map.insert("id".into(), id.clone());
        }
        serde_json::to_vec(&value).expect("JSON values always serialize")
    }

    /// PUBLISH properties of the reply: correlation data echoed, JSON content type.
    pub fn properties(&self) -> PublishProperties {
        PublishProperties {
            correlation_data: self.correlation.clone(),
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
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
