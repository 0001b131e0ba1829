//! A requesting client: sends requests with a response topic and correlation data and
//! hands back the answers. Used by `edgerun request`, the benchmarks and the tests; a
//! serving device never needs it.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties, Subscribe};
use rumqttc::v5::{AsyncClient, ClientError, Event, MqttOptions, Request};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::connect::{BrokerUrl, ConnectError, Credentials, TlsSettings};
use rumqttc::{TlsConfiguration, Transport};

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailed {
    /// The broker refused us or could not be reached (the first error, not retried).
    #[error("cannot connect to the broker: {0}")]
    Connection(String),
    #[error("no answer to the reply-topic subscription within 10 s")]
    NotSubscribed,
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Settings(#[from] ConnectError),
}

/// An MQTT v5 client that asks and collects answers.
pub struct RequestClient {
    client: AsyncClient,
    answers: mpsc::UnboundedReceiver<(Option<Bytes>, Value)>,
    reply_topic: String,
}

/// An answer: the request's correlation id and the JSON body.
pub type Answer = (String, Value);

/// What an answer says about how it was served: read from its JSON, or from a media
/// answer's `meta`. Fields an answer lacks are `None`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Reply {
    /// The declared point whose work the answer is.
    pub point: Option<String>,
    /// The point decided, where the service stepped down from it to meet the deadline.
    pub stepped_down_from: Option<String>,
    /// Which device answered.
    pub device: Option<String>,
    pub policy: Option<ReplyPolicy>,
    pub error: Option<ReplyError>,
}

/// Why the server chose the point.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ReplyPolicy {
    /// The controller's reason, `{"kind": "steady", ...}`.
    pub reason: Option<Value>,
    pub predicted_ms: Option<f64>,
    pub waited_ms: Option<f64>,
    /// Engine threads the request ran with.
    pub threads: Option<usize>,
}

/// A failed request's error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReplyError {
    pub code: String,
    pub message: String,
}

impl Reply {
    /// The reply of an answer body as [`RequestClient::next_answer`] gives it; an answer
    /// of another shape reads as empty.
    pub fn of(body: &Value) -> Reply {
        let json = match body.get("meta") {
            Some(meta) if body.get("content_type").is_some() => meta,
            _ => body,
        };
        serde_json::from_value(json.clone()).unwrap_or_default()
    }

    /// The kind of the controller's reason (`steady`, `overload`, `pinned`, ...).
    pub fn reason(&self) -> Option<&str> {
        self.policy.as_ref()?.reason.as_ref()?.get("kind")?.as_str()
    }
}

/// A JSON answer as it is; a media answer (a PNG) as `{"content_type", "meta",
/// "payload_base64"}`, with `meta` parsed from its user property; `null` for anything else.
fn answer_body(payload: &[u8], properties: Option<&PublishProperties>) -> Value {
    let content_type = properties.and_then(|p| p.content_type.as_deref());
    match content_type {
        Some(media) if !media.starts_with("application/json") => {
            let meta = properties
                .and_then(|p| p.user_properties.iter().find(|(k, _)| k == "meta"))
                .and_then(|(_, v)| serde_json::from_str(v).ok())
                .unwrap_or(Value::Null);
            serde_json::json!({
                "content_type": media,
                "meta": meta,
                "payload_base64": base64::engine::general_purpose::STANDARD.encode(payload),
            })
        }
        _ => serde_json::from_slice(payload).unwrap_or(Value::Null),
    }
}

impl RequestClient {
    /// Connects (TCP_NODELAY on) and subscribes to its own reply topic.
    pub async fn connect(addr: SocketAddr, name: &str) -> Result<RequestClient, ConnectFailed> {
        let url = BrokerUrl {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: false,
        };
        RequestClient::connect_to(&url, name, None, &TlsSettings::default()).await
    }

    /// Connects to `url` as `name`, with `credentials` if given (and `tls` for an
    /// `mqtts://` URL), and subscribes to its own reply topic, `replies/{name}`.
    pub async fn connect_to(
        url: &BrokerUrl,
        name: &str,
        credentials: Option<&Credentials>,
        tls: &TlsSettings,
    ) -> Result<RequestClient, ConnectFailed> {
        let mut options = MqttOptions::new(name, url.host.clone(), url.port);
        if let Some(c) = credentials {
            options.set_credentials(c.username.clone(), c.password.clone());
        }
        if url.tls {
            let config = tls.client_config()?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        options.set_keep_alive(Duration::from_secs(10));
        options.set_max_packet_size(Some(64 << 20));
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut eventloop) = AsyncClient::new(options, 4096);
        let reply_topic = format!("replies/{name}");
        let (tx, answers) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let topic = reply_topic.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    // Reconnected to a broker that lost our session (it restarted, say):
                    // subscribe again before anything queued while away goes out, or the
                    // answers to it would be dropped.
                    Ok(Event::Incoming(Packet::ConnAck(ack)))
                        if subscribed_tx.is_none() && !ack.session_present =>
                    {
                        let filter = Filter::new(topic.clone(), QoS::AtLeastOnce);
                        let subscribe = Request::Subscribe(Subscribe::new(filter, None));
                        eventloop.pending.push_front(subscribe);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let body = answer_body(&p.payload, p.properties.as_ref());
                        let correlation = p.properties.and_then(|p| p.correlation_data);
                        if tx.send((correlation, body)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    // Before the first subscription: a refused or unreachable broker is the
                    // caller's error. After it: reconnect.
                    Err(e) => match subscribed_tx.take() {
                        Some(tx) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                        None => tokio::time::sleep(Duration::from_millis(50)).await,
                    },
                }
            }
        });
        client
            .subscribe(reply_topic.clone(), QoS::AtLeastOnce)
            .await?;
        match tokio::time::timeout(Duration::from_secs(10), subscribed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(why))) => return Err(ConnectFailed::Connection(why)),
            Ok(Err(_)) | Err(_) => return Err(ConnectFailed::NotSubscribed),
        }
        Ok(RequestClient {
            client,
            answers,
            reply_topic,
        })
    }

    /// Sends a request whose answer will carry `id` as correlation data.
    pub async fn send(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        content_type: Option<&str>,
        expiry_s: Option<u32>,
    ) -> Result<(), ClientError> {
        let properties = PublishProperties {
            message_expiry_interval: expiry_s,
            ..self.request_properties(id, content_type)
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await
    }

    /// Like [`RequestClient::send`], with user properties (`point`, `deadline_ms`, ...).
    pub async fn send_with(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        content_type: Option<&str>,
        user_properties: Vec<(String, String)>,
    ) -> Result<(), ClientError> {
        let properties = PublishProperties {
            user_properties,
            ..self.request_properties(id, content_type)
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await
    }

    fn request_properties(&self, id: &str, content_type: Option<&str>) -> PublishProperties {
        PublishProperties {
            response_topic: Some(self.reply_topic.clone()),
            correlation_data: Some(Bytes::from(id.to_string())),
            content_type: content_type.map(str::to_string),
            ..PublishProperties::default()
        }
    }

    /// The next answer, or `None` after `timeout`.
    pub async fn next_answer(&mut self, timeout: Duration) -> Option<Answer> {
        let (correlation, body) = tokio::time::timeout(timeout, self.answers.recv())
            .await
            .ok()??;
        let id = correlation
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        Some((id, body))
    }

    /// The underlying client, for publishing what `send` would not (retained, no reply).
    pub fn raw(&self) -> &AsyncClient {
        &self.client
    }

    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}
