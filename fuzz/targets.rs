//! The fuzz targets' bodies, shared by `cargo fuzz` (`fuzz_targets/`) and the replay of
//! the corpora on stable (`tests/fuzz_corpus.rs`, which includes this file).
//!
//! Each target takes arbitrary bytes, drives one parser of the runtime the way serving
//! does, and asserts what must hold of the result: a structured error with a code clients
//! know, or a value that satisfies the parser's promises. A panic is a finding.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use edgerun_runtime::engine::{EngineConfig, TractEngine};
use edgerun_runtime::imaging;
use edgerun_runtime::models::{Manifest, PointSet};
use edgerun_runtime::mqtt::envelope::{Body, Request};
use edgerun_runtime::serve::ServeConfig;
use edgerun_runtime::serve::replay::RequestKey;
use edgerun_runtime::services::generate::GenerateRequest;
use edgerun_runtime::services::legal::{Legal, LegalRequest};
use edgerun_runtime::services::ocr::{OcrOptions, OcrRequest};
use edgerun_runtime::services::{Output, ServiceError};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde_json::{Value, json};

/// A target's body: takes any bytes, panics on a finding.
pub type Target = fn(&[u8]);

/// Every target by name, as `cargo fuzz` and the corpus folders call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("ocr_request", ocr_request),
    ("legal_request", legal_request),
    ("generate_request", generate_request),
    ("image", image),
    ("config", config),
    ("legal_query", legal_query),
    ("manifest", manifest),
];

/// The codes a request may be refused with before any model runs.
const REQUEST_CODES: &[&str] = &["bad_request", "unsupported_media", "too_large"];

/// Payloads above this are not parsed as JSON (serving's `max_payload_bytes` is larger;
/// a smaller one keeps that branch within reach of the fuzzer).
const MAX_JSON_BYTES: usize = 4096;

/// A PUBLISH on a request topic made of fuzz input. The first byte picks the content
/// type, the second which properties are set; what follows up to the first NUL holds
/// their values separated by `|` (response topic, correlation data, `point`,
/// `deadline_ms`, content type), and the rest is the payload.
pub fn publish_of(data: &[u8]) -> Publish {
    let (selector, flags, rest) = match data {
        [s, f, rest @ ..] => (*s, *f, rest),
        _ => (0, 0, data),
    };
    let (meta, payload) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&[][..], rest),
    };
    let mut values = meta
        .split(|&b| b == b'|')
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let mut next = || values.next().unwrap_or_default();
    let (topic, correlation, point, deadline, custom_type) =
        (next(), next(), next(), next(), next());
    let content_type = match selector % 8 {
        0 => None,
        1 => Some("application/json".to_string()),
        2 => Some("image/png".into()),
        3 => Some("text/plain".into()),
        4 => Some("image/jpeg".into()),
        5 => Some("application/json; charset=utf-8".into()),
        6 => Some(custom_type),
        _ => Some("application/octet-stream".into()),
    };
    let mut properties = PublishProperties {
        content_type,
        ..PublishProperties::default()
    };
    if flags & 1 != 0 {
        properties.response_topic = Some(topic);
    }
    if flags & 2 != 0 {
        properties.correlation_data = Some(Bytes::from(correlation.into_bytes()));
    }
    if flags & 4 != 0 {
        properties.user_properties.push(("point".into(), point));
    }
    if flags & 8 != 0 {
        properties
            .user_properties
            .push(("deadline_ms".into(), deadline));
    }
    if flags & 16 != 0 {
        properties.message_expiry_interval = Some(u32::from(selector));
    }
    let mut publish = Publish::new(
        "edgerun/fuzz/ocr/request",
        QoS::AtLeastOnce,
        payload.to_vec(),
        Some(properties),
    );
    publish.pkid = 1;
    publish
}

/// The request serving would make of fuzz input.
fn request_of(service: &str, data: &[u8]) -> Request {
    Request::from_publish(service, &publish_of(data), Instant::now(), MAX_JSON_BYTES)
}

/// The MQTT request envelope: reply topic, correlation, 3.1.1 `reply_to`/`id`, steering.
pub fn envelope(data: &[u8]) {
    let request = request_of("ocr", data);
    if let Ok(steering) = &request.steering {
        if let Some(ms) = steering.deadline_ms {
            assert!(ms.is_finite() && ms > 0.0, "deadline {ms}");
        }
        assert_ne!(steering.point.as_deref(), Some(""), "an empty point name");
    }
    if let Body::Json(Value::Object(map)) = &request.body {
        for taken in ["point", "deadline_ms"] {
            assert!(!map.contains_key(taken), "{taken} left for the service");
        }
    }
    let Some(reply) = &request.reply else {
        assert!(RequestKey::of(&request).is_none());
        return;
    };
    let topic = &reply.topic;
    assert!(!topic.is_empty() && !topic.starts_with('$'), "{topic:?}");
    assert!(!topic.contains(['+', '#', '\0']), "{topic:?}");
    assert_eq!(
        RequestKey::of(&request).is_some(),
        reply.correlation.is_some() || reply.id.is_some()
    );
    let (payload, properties) = reply.encode(Output::Json(json!({"text": "x"})));
    let body: Value = serde_json::from_slice(&payload).expect("a reply is JSON");
    assert_eq!(body["text"], "x");
    if let Some(id) = &reply.id {
        assert_eq!(&body["id"], id);
    }
    assert_eq!(properties.correlation_data, reply.correlation);
}

fn assert_refused(error: &ServiceError) {
    assert!(REQUEST_CODES.contains(&error.code), "{error}");
}

/// OCR's request parser: raw images and JSON with base64 and knobs.
pub fn ocr_request(data: &[u8]) {
    let request = request_of("ocr", data);
    match OcrRequest::parse(
        request.content_type.as_deref(),
        &request.body,
        OcrOptions::default(),
    ) {
        Ok(parsed) => {
            assert!(!parsed.image.is_empty());
            parsed.options.validate().expect("parsed options are valid");
        }
        Err(error) => assert_refused(&error),
    }
}

/// The legal service's request parser: JSON query and `k`, or plain text.
pub fn legal_request(data: &[u8]) {
    let request = request_of("legal", data);
    if let Err(error) = LegalRequest::parse(request.content_type.as_deref(), &request.body) {
        assert_refused(&error);
    }
}

/// The generator's request parser: JSON prompt, seed and format, or plain text.
pub fn generate_request(data: &[u8]) {
    let request = request_of("generate", data);
    if let Err(error) = GenerateRequest::parse(request.content_type.as_deref(), &request.body) {
        assert_refused(&error);
    }
}

/// Image decoding with its limits (a small one, so that the limit is within reach).
pub fn image(data: &[u8]) {
    const MAX_PIXELS: u64 = 1 << 16;
    match imaging::decode(data, MAX_PIXELS) {
        Ok(image) => {
            let pixels = u64::from(image.width()) * u64::from(image.height());
            assert!(pixels > 0 && pixels <= MAX_PIXELS, "{pixels} pixels");
        }
        Err(error) => assert!(REQUEST_CODES.contains(&error.code()), "{error}"),
    }
}

/// The TOML configuration: parsed, validated, and what parses survives a round trip.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = ServeConfig::parse(text, "fuzz.toml") else {
        return;
    };
    let _ = config.validate();
    let _ = config.broker_url();
    if let Ok(written) = toml::to_string(&config) {
        let again = ServeConfig::parse(&written, "written.toml").expect("written config parses");
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&config).unwrap(),
            "round trip through {written}"
        );
    }
}

/// The shipped legal models and Civil Code, loaded once per process.
fn legal() -> &'static Legal {
    static LEGAL: OnceLock<Legal> = OnceLock::new();
    LEGAL.get_or_init(|| {
        let engine = TractEngine::new(EngineConfig::default());
        let root = edgerun_runtime::models::default_root();
        Legal::load(&root, &engine, None).expect("the shipped legal models load")
    })
}

/// A legal query through the tokenizer and the BM25 point of the real search.
pub fn legal_query(data: &[u8]) {
    let query = String::from_utf8_lossy(data);
    let legal = legal();
    let _ = legal.tokenize(&query);
    match legal.search_by(&query, 5, Some("bm25"), None) {
        Ok(answer) => {
            assert!(answer.hits.len() <= 5);
            assert_eq!(answer.point, "bm25");
        }
        Err(error) => assert!(REQUEST_CODES.contains(&error.code()), "{error}"),
    }
}

/// A service manifest: parsed, then its operating points checked.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(manifest) = Manifest::parse(text) {
        let _ = PointSet::from_manifest(&manifest);
    }
}
