//! The broker flags `serve` and `request` share: where, as whom, and with which TLS
//! settings to connect. Raw flags only; [`BrokerArgs::apply`] lays them over a
//! configuration, which resolves them (`ServeConfig::credentials`, `TlsSettings`).

use std::path::PathBuf;

use clap::Args;

use crate::serve::config::ServeConfig;

#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// An existing broker, `mqtt://host:port` or `mqtts://host:port` (TLS) [serve: none
    /// starts the embedded broker; request: the configuration's, or 127.0.0.1:1883].
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// Username for the broker.
    #[arg(long)]
    pub username: Option<String>,
    /// A file whose first line is the broker password (or set EDGERUN_MQTT_PASSWORD; the
    /// command line never carries it, where `ps` would show it).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// For mqtts:// brokers: a PEM file of CA certificates to trust besides the system's.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// For mutual TLS: the client's PEM certificate (with --key-file).
    #[arg(long, value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// For mutual TLS: the client's PEM private key.
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
}

impl BrokerArgs {
    /// Lays the flags given over `config`'s broker, credentials and TLS settings.
    pub fn apply(&self, config: &mut ServeConfig) {
        if let Some(broker) = &self.broker {
            config.broker = Some(broker.clone());
        }
        if let Some(username) = &self.username {
            config.username = Some(username.clone());
        }
        if let Some(file) = &self.password_file {
            config.password_file = Some(file.clone());
            config.password = None;
        }
        if let Some(ca) = &self.ca_file {
            config.tls.ca_file = Some(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            config.tls.cert_file = Some(cert.clone());
            config.tls.key_file = Some(key.clone());
        }
    }
}
