//! The embedded MQTT broker that makes `edgerun serve` work with nothing else installed.
//!
//! It is the `mqtt5` crate's broker, chosen by measurement: its accepted sockets set
//! TCP_NODELAY, so a request round trip on loopback stays well under a millisecond, while
//! stock `rumqttd` 0.20 leaves Nagle's algorithm on and pins the round trip at ~44 ms (see
//! `edgerun bench mqtt` and the README). It binds loopback unless configured otherwise, and
//! refuses to listen beyond loopback without authentication (a password file of
//! `user:argon2-hash` lines, made with `edgerun passwd`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mqtt5::broker::MqttBroker;
use mqtt5::broker::auth::PasswordAuthProvider;
use mqtt5::broker::config::{AuthConfig, BrokerConfig, StorageBackend, StorageConfig};
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
    /// Binds `addr` (port 0 picks a free port) and starts serving on the current runtime;
    /// with `password_file`, only the users it lists may connect. Beyond loopback a
    /// password file is required.
    pub async fn start(
        addr: SocketAddr,
        max_packet_bytes: usize,
        password_file: Option<&Path>,
    ) -> Result<EmbeddedBroker, BrokerError> {
        let error = |e: &dyn std::fmt::Display| BrokerError {
            addr,
            message: e.to_string(),
        };
        if !addr.ip().is_loopback() && password_file.is_none() {
            return Err(error(
                &"it accepts anonymous clients, so it listens beyond loopback only \
                 with authentication: set embedded_password_file (`edgerun passwd FILE USER`)",
            ));
        }
        let auth = match password_file {
            Some(path) => {
                // Read here so that a missing or empty file is an error now, not a broker
                // that silently admits nobody.
                let users = read_users(path).map_err(|e| error(&e))?;
                tracing::info!("embedded broker: {users} users from {}", path.display());
                AuthConfig::default()
                    .with_password_file(path.to_path_buf())
                    .with_allow_anonymous(false)
            }
            None => AuthConfig::default(),
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
            .with_auth(auth)
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

/// How many users a password file lists; unreadable or empty is an error.
fn read_users(path: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("password file {}: {e}", path.display()))?;
    let users = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .count();
    if users == 0 {
        return Err(format!("password file {} lists no users", path.display()));
    }
    Ok(users)
}

/// Adds `user` with `password` to the embedded broker's password file at `path` (created
/// if missing), replacing the user's old line; the password is stored as an Argon2 hash.
pub fn add_user(path: &Path, user: &str, password: &str) -> Result<PathBuf, String> {
    if user.is_empty() || user.contains([':', '\n']) || password.is_empty() {
        return Err("the user must be non-empty without ':', the password non-empty".into());
    }
    let hash = PasswordAuthProvider::hash_password(password).map_err(|e| e.to_string())?;
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| l.split_once(':').is_none_or(|(u, _)| u.trim() != user))
        .map(str::to_string)
        .collect();
    lines.push(format!("{user}:{hash}"));
    std::fs::write(path, lines.join("\n") + "\n")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}
