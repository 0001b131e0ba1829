//! The embedded MQTT broker that makes `edgerun serve` work with nothing else installed.
//!
//! It is the `mqtt5` crate's broker, chosen by measurement: its accepted sockets set
//! TCP_NODELAY, so a request round trip on loopback stays well under a millisecond, while
//! stock `rumqttd` 0.20 leaves Nagle's algorithm on and pins the round trip at ~44 ms (see
//! `edgerun bench mqtt` and the README). It binds loopback unless configured otherwise.

use std::net::SocketAddr;

use mqtt5::broker::MqttBroker;
use mqtt5::broker::config::{BrokerConfig, StorageBackend, StorageConfig};
use mqtt5::broker::server::BrokerShutdownHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the embedded MQTT broker on {addr}: {message}")]
pub struct BrokerError {
    addr: SocketAddr,
    message: String,
}

/// A running in-process broker; stops when [`EmbeddedBroker::stop`] is called.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    shutdown: BrokerShutdownHandle,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Binds `addr` (port 0 picks a free port) and starts serving on the current runtime.
    pub async fn start(
        addr: SocketAddr,
        max_packet_bytes: usize,
    ) -> Result<EmbeddedBroker, BrokerError> {
        let error = |e: &dyn std::fmt::Display| BrokerError {
            addr,
            message: e.to_string(),
        };
        // Sessions and retained messages live in memory: a device's broker must not write
        // files into whatever directory it was started from.
        let storage = StorageConfig {
            backend: StorageBackend::Memory,
            enable_persistence: false,
            ..StorageConfig::default()
        };
        let config = BrokerConfig::default()
            .with_bind_address(addr)
            .with_max_packet_size(max_packet_bytes)
            .with_storage(storage)
            .with_sys_topics_enabled(false);
        let mut broker = MqttBroker::with_config(config)
            .await
            .map_err(|e| error(&e))?;
        let bound = broker
            .local_addr()
            .ok_or_else(|| error(&"no TCP listener"))?;
        let shutdown = broker.shutdown_handle();
        let mut ready: watch::Receiver<bool> = broker.ready_receiver();
        let task = tokio::spawn(async move {
            if let Err(e) = broker.run().await {
                tracing::error!("embedded broker stopped: {e}");
            }
        });
        while !*ready.borrow() {
            if ready.changed().await.is_err() {
                return Err(error(&"broker task ended before it was ready"));
            }
        }
        if !bound.ip().is_loopback() {
            // The embedded broker accepts anonymous clients: fine on loopback, not beyond.
            tracing::warn!(
                "embedded MQTT broker on {bound} accepts anonymous clients from the network; \
                 use an existing broker with authentication for fleets"
            );
        }
        tracing::info!("embedded MQTT broker listening on {bound}");
        Ok(EmbeddedBroker {
            addr: bound,
            shutdown,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the broker down and waits for it.
    pub async fn stop(self) {
        self.shutdown.shutdown();
        let _ = self.task.await;
    }
}
