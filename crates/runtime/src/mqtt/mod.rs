//! MQTT transport: the embedded broker, the topic layout, and the request/response envelope.
//!
//! This module speaks MQTT and nothing else: it turns a PUBLISH into a [`envelope::Request`]
//! (which service, which payload, where to answer) and back. It must not know what services
//! compute, how requests are queued, or which operating point answers them.

pub mod broker;
pub mod client;
pub mod connect;
pub mod envelope;
pub mod topics;

pub use broker::EmbeddedBroker;
pub use connect::{BrokerUrl, Credentials, TlsSettings};
pub use envelope::{Reply, Request};
pub use topics::Topics;
