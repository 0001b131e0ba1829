//! What a device serves. Each service turns a decoded request into a result with the
//! engines it loaded; none of them knows how requests arrive (CLI, MQTT) or are queued.

pub mod deadline;
pub mod echo;
pub mod generate;
pub mod legal;
pub mod ocr;

use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

use crate::models::PointSet;

/// A request's payload, independent of the transport that carried it.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A JSON document (parameters, base64 data).
    Json(Value),
    /// Raw bytes, described by the content type (an image, say).
    Raw(Bytes),
}

/// A service's answer as a transport sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A JSON document.
    Json(Value),
    /// Media bytes (a PNG image) with the JSON the answer would otherwise carry beside them;
    /// MQTT sends the bytes as the payload and `meta` as a user property.
    Media {
        content_type: &'static str,
        bytes: Bytes,
        meta: Value,
    },
}

impl Output {
    /// The answer as one JSON document: media become `content_type` and `data_base64`
    /// fields beside the metadata (for clients that asked for JSON or cannot read
    /// properties).
    pub fn into_json(self) -> Value {
        match self {
            Output::Json(value) => value,
            Output::Media {
                content_type,
                bytes,
                mut meta,
            } => {
                let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
                if let Value::Object(map) = &mut meta {
                    map.insert("content_type".into(), content_type.into());
                    map.insert("data_base64".into(), data.into());
                }
                meta
            }
        }
    }

    /// The JSON part: the whole answer, or the metadata of media.
    pub fn json_mut(&mut self) -> &mut Value {
        match self {
            Output::Json(value) => value,
            Output::Media { meta, .. } => meta,
        }
    }
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
    /// A point the service does not have.
    pub fn unknown_point(point: &str, known: &[String]) -> ServiceError {
        ServiceError::new(
            "bad_request",
            format!("unknown point {point:?} (known: {})", known.join(", ")),
        )
    }

    pub fn new(code: &'static str, message: impl std::fmt::Display) -> ServiceError {
        ServiceError {
            code,
            message: message.to_string(),
        }
    }
}

/// The text of a raw `text/plain` request (or one without a content type): checks the
/// media type, the size (`what` names the text in the message: "the query") and UTF-8.
pub fn plain_text<'a>(
    content_type: Option<&str>,
    bytes: &'a [u8],
    max_bytes: usize,
    what: &str,
) -> Result<&'a str, ServiceError> {
    let media = content_type.map(|t| t.split(';').next().unwrap_or("").trim());
    match media {
        None | Some("text/plain") => {}
        Some("application/json") => {
            return Err(ServiceError::new(
                "bad_request",
                "payload is not valid JSON",
            ));
        }
        Some(other) => {
            return Err(ServiceError::new(
                "unsupported_media",
                format!("content type {other:?}: send text/plain or JSON"),
            ));
        }
    }
    if bytes.len() > max_bytes {
        return Err(ServiceError::new(
            "too_large",
            format!(
                "{what} is {} bytes; at most {max_bytes} are accepted",
                bytes.len()
            ),
        ));
    }
    std::str::from_utf8(bytes)
        .map_err(|e| ServiceError::new("bad_request", format!("{what} is not UTF-8: {e}")))
}

/// How the runtime asks for one request to be served.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serving<'a> {
    /// The operating point; the service's default if `None`.
    pub point: Option<&'a str>,
    /// When the answer is due. A service that can cut optional work short (see
    /// [`Service::meets_deadlines`]) does so to answer by then; the others ignore it.
    pub deadline: Option<Instant>,
}

impl<'a> Serving<'a> {
    /// At `point`, with no deadline: exactly that point's work.
    pub fn at(point: &'a str) -> Serving<'a> {
        Serving {
            point: Some(point),
            deadline: None,
        }
    }
}

/// The operating point a request was served at, as the service reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// The declared point whose work the answer is; `custom` where the request's own knobs
    /// made it none; `None` for a service without points.
    pub point: Option<String>,
    /// The point decided for the request, where the service stepped down from it to meet
    /// the deadline.
    pub stepped_down_from: Option<String>,
    /// Whether, before stepping down, the request ran work of the decided point that the
    /// served one does not include (encoder blocks before falling back to BM25, say): its
    /// time is then not what the served point costs.
    pub abandoned_work: bool,
}

impl Served {
    /// Served at `point`, as asked.
    pub fn at(point: &str) -> Served {
        Served {
            point: Some(point.to_string()),
            ..Served::default()
        }
    }

    /// Served at `served`, decided at `decided`: a step down where the two differ, whose
    /// work was the served point's alone.
    pub fn stepped(served: &str, decided: &str) -> Served {
        Served {
            point: Some(served.to_string()),
            stepped_down_from: (served != decided).then(|| decided.to_string()),
            abandoned_work: false,
        }
    }
}

/// A service's answer to one request: what goes back to the client, and which point it
/// was computed at.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    pub output: Output,
    pub served: Served,
}

impl Handled {
    /// The output, its JSON part naming the point (`"point"`) and, after a step down, the
    /// point decided (`"stepped_down_from"`).
    pub fn into_output(mut self) -> Output {
        if let Value::Object(map) = self.output.json_mut() {
            // `abandoned_work` is for the server's learning, not the client.
            if let Some(point) = self.served.point {
                map.insert("point".into(), point.into());
            }
            if let Some(from) = self.served.stepped_down_from {
                map.insert("stepped_down_from".into(), from.into());
            }
        }
        self.output
    }

    /// The whole answer as one JSON document ([`Output::into_json`]).
    pub fn into_json(self) -> Value {
        self.into_output().into_json()
    }
}

/// Which models a service plans ahead of requests, for typical inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmUp<'a> {
    /// Only those its default point runs: `serve` comes online on these and prepares the
    /// rest in the background ([`Service::warm_up`]).
    DefaultPoint,
    /// Those of every declared point.
    EveryPoint,
    /// Those of these points and of the default one (a controller's candidates).
    Points(&'a [String]),
}

impl WarmUp<'_> {
    /// Whether the point named `point` is in scope, `default_point` being the service's.
    pub fn includes(&self, point: &str, default_point: &str) -> bool {
        match self {
            WarmUp::DefaultPoint => point == default_point,
            WarmUp::EveryPoint => true,
            WarmUp::Points(points) => point == default_point || points.iter().any(|p| p == point),
        }
    }
}

/// A service a device can serve to remote clients.
pub trait Service: Send + Sync {
    /// The name in topics and configs (`ocr`).
    fn name(&self) -> &'static str;

    /// Answers one request as `serving` asks; an unknown point is a `bad_request`. Runs on
    /// a worker thread; may take as long as inference takes. A service that produces
    /// media (an image) answers with the bytes unless the request asked for JSON.
    fn answer(
        &self,
        content_type: Option<&str>,
        payload: &Payload,
        serving: Serving<'_>,
    ) -> Result<Handled, ServiceError>;

    /// [`Service::answer`] as one JSON document (media in base64), for callers that are
    /// not a transport.
    fn handle(
        &self,
        content_type: Option<&str>,
        payload: &Payload,
        serving: Serving<'_>,
    ) -> Result<Value, ServiceError> {
        self.answer(content_type, payload, serving)
            .map(Handled::into_json)
    }

    /// Whether the service finishes requests by their deadline by stepping down to a
    /// cheaper declared point mid-request. Its controller can then plan on typical
    /// (median) latencies and leave the slow tail to the service.
    fn meets_deadlines(&self) -> bool {
        false
    }

    /// The operating points declared in the service's manifest; `None` for a service that
    /// is not elastic.
    fn points(&self) -> Option<&PointSet> {
        None
    }

    /// What the service offers, for the device's status.
    fn describe(&self) -> Value;

    /// Plans the models of `scope` for typical inputs, so that requests do not pay for it;
    /// models already planned cost nothing again. Nothing to do for a service without
    /// models.
    fn warm_up(&self, _scope: WarmUp<'_>) -> Result<(), ServiceError> {
        Ok(())
    }

    /// Drops the plans of every model that no point in `scope` runs (after measuring every
    /// point, those a controller will not choose); a request that pins another point plans
    /// its models again. Nothing to do for a service without models.
    fn release_outside(&self, _scope: WarmUp<'_>) {}
}
