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
use mqtt5::broker::config::{AuthConfig, BrokerConfig, StorageBackend, StorageConfig, TlsConfig};
use mqtt5::broker::server::BrokerShutdownHandle;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the embedded MQTT broker on {addr}: {message}")]
pub struct BrokerError {
    addr: SocketAddr,
    message: String,
}

/// A TLS listener of the embedded broker, beside its plain one (the `[embedded_tls]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedTls {
    /// Where it listens, e.g. `0.0.0.0:8883`.
    pub bind: SocketAddr,
    /// The broker's PEM certificate (chain) and private key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA certificates that client certificates must chain to.
    pub ca_file: Option<PathBuf>,
    /// Admit only clients with a certificate from `ca_file` (mutual TLS).
    #[serde(default)]
    pub require_client_cert: bool,
}

impl EmbeddedTls {
    /// Whether the listener authenticates its clients by themselves (client certificates).
    fn authenticates(&self) -> bool {
        self.require_client_cert && self.ca_file.is_some()
    }
}

/// A running in-process broker; stops when [`EmbeddedBroker::stop`] is called.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    shutdown: BrokerShutdownHandle,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Binds `addr` (port 0 picks a free port), and `tls`'s address if given, and starts
    /// serving on the current runtime; with `password_file`, only the users it lists may
    /// connect. Beyond loopback a password file is required, except on a TLS listener that
    /// requires client certificates.
    pub async fn start(
        addr: SocketAddr,
        max_packet_bytes: usize,
        password_file: Option<&Path>,
        tls: Option<&EmbeddedTls>,
    ) -> Result<EmbeddedBroker, BrokerError> {
        let error = |e: &dyn std::fmt::Display| BrokerError {
            addr,
            message: e.to_string(),
        };
        if let Some(why) = unauthenticated_exposure(addr, password_file, tls) {
            return Err(error(&why));
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
        let mut config = BrokerConfig::default()
            .with_bind_address(addr)
            .with_max_packet_size(max_packet_bytes)
            .with_storage(storage)
            .with_auth(auth)
            .with_sys_topics_enabled(false);
        if let Some(tls) = tls {
            let mut listener = TlsConfig::new(tls.cert_file.clone(), tls.key_file.clone())
                .with_bind_address(tls.bind)
                .with_require_client_cert(tls.require_client_cert);
            if let Some(ca) = &tls.ca_file {
                listener = listener.with_ca_file(ca.clone());
            }
            config = config.with_tls(listener);
            tracing::info!("embedded MQTT broker: TLS on {}", tls.bind);
        }
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

/// Why listening as configured would admit anonymous clients from the network, if it would:
/// a listener beyond loopback needs a password file, unless it is TLS with client
/// certificates required.
pub fn unauthenticated_exposure(
    addr: SocketAddr,
    password_file: Option<&Path>,
    tls: Option<&EmbeddedTls>,
) -> Option<String> {
    if password_file.is_some() {
        return None;
    }
    let advice = "set embedded_password_file (`edgerun passwd FILE USER`)";
    if !addr.ip().is_loopback() {
        return Some(format!(
            "the embedded broker accepts anonymous clients, so it listens on {addr} (beyond \
             loopback) only with authentication: {advice}"
        ));
    }
    match tls {
        Some(tls) if !tls.bind.ip().is_loopback() && !tls.authenticates() => Some(format!(
            "the embedded broker's TLS listener on {} admits anyone without client \
             certificates: {advice}, or require_client_cert with a ca_file",
            tls.bind
        )),
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_or_authenticated_listeners_are_opened() {
        let loopback: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let anywhere: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        let users = Some(Path::new("/etc/edgerun/broker-users"));
        let tls = |bind: &str, mutual: bool| EmbeddedTls {
            bind: bind.parse().unwrap(),
            cert_file: "broker.pem".into(),
            key_file: "broker.key".into(),
            ca_file: mutual.then(|| "clients-ca.pem".into()),
            require_client_cert: mutual,
        };
        assert_eq!(unauthenticated_exposure(loopback, None, None), None);
        assert_eq!(unauthenticated_exposure(anywhere, users, None), None);
        let open = unauthenticated_exposure(anywhere, None, None).unwrap();
        assert!(
            open.contains("listens on 0.0.0.0:1883 (beyond loopback)"),
            "{open}"
        );
        let public_tls = tls("0.0.0.0:8883", false);
        let open = unauthenticated_exposure(loopback, None, Some(&public_tls)).unwrap();
        assert!(open.contains("TLS listener on 0.0.0.0:8883"), "{open}");
        let mutual = tls("0.0.0.0:8883", true);
        assert_eq!(
            unauthenticated_exposure(loopback, None, Some(&mutual)),
            None
        );
        let local_tls = tls("127.0.0.1:8883", false);
        assert_eq!(
            unauthenticated_exposure(loopback, None, Some(&local_tls)),
            None
        );
    }
}
