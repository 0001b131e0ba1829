//! Where and as whom an MQTT client connects: the broker URL, the credentials and the TLS
//! settings (trusted CAs, a client certificate for mutual TLS).
//!
//! Parsing and resolution, shared by `serve` and `edgerun request`; no sockets here.
//! Passwords never need the command line (where `ps` shows them): they come from a file
//! (`password_file`) or the environment (`EDGERUN_MQTT_PASSWORD`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "EDGERUN_MQTT_PASSWORD";

/// A broker address parsed from `mqtt://host:port` (also `tcp://`, or a bare `host:port`;
/// port 1883 by default) or, over TLS, `mqtts://host:port` (also `ssl://`; port 8883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// TLS, checking the broker's certificate against `host`.
    pub tls: bool,
}

/// Why a broker URL or credentials cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectError {
    #[error("bad broker URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("password file {path}: {why}")]
    PasswordFile { path: String, why: String },
    #[error("a password ({0}) without a username")]
    PasswordWithoutUser(&'static str),
    #[error("TLS settings: {0}")]
    Tls(String),
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, ConnectError> {
        let bad = |why: &str| ConnectError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let (rest, tls) = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (rest, false),
            Some(("mqtts" | "ssl", rest)) => (rest, true),
            Some((scheme, _)) => return Err(bad(&format!("unknown scheme {scheme:?}"))),
            None => (url, false),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| bad("bad port"))?),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad("no host"));
        }
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// TLS settings for `mqtts://` brokers (the `[tls]` table of a configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of CA certificates to trust (a private CA), besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Trust the operating system's CA certificates too.
    pub system_roots: bool,
    /// PEM certificate (chain) and private key for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            ca_file: None,
            system_roots: true,
            cert_file: None,
            key_file: None,
        }
    }
}

impl TlsSettings {
    /// The rustls client configuration: the trusted CAs, and the client certificate if one
    /// is configured. The broker's certificate is checked against the URL's host name (or
    /// IP address) by rustls itself.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
        let tls = |m: String| ConnectError::Tls(m);
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(tls("cert_file and key_file go together".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        if self.system_roots {
            // Unreadable system certificates leave fewer roots, never an error: a private
            // CA in `ca_file` may be all the broker needs.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        if let Some(path) = &self.ca_file {
            let certs = read_certs(path)?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| tls(format!("ca_file {}: {e}", path.display())))?;
            }
        }
        if roots.is_empty() {
            return Err(tls("no CA certificates to trust (set ca_file)".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| tls(format!("key_file {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(read_certs(cert)?, key_der)
                    .map_err(|e| tls(format!("cert_file {}: {e}", cert.display())))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// The certificates of a PEM file; none is an error.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let bad = |m: String| ConnectError::Tls(format!("{}: {m}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificates".into()));
    }
    Ok(certs)
}

/// A username with its password, as MQTT CONNECT carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// The credentials to connect with: `username` with the first password of `password`
/// (a configuration file's), the file `password_file` (its first line), or the environment
/// variable [`PASSWORD_ENV`] (read through `env`). A username alone connects with an empty
/// password; a password without a username is an error.
pub fn credentials(
    username: Option<&str>,
    password: Option<&str>,
    password_file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Credentials>, ConnectError> {
    let from_file = match password_file {
        Some(path) => Some(read_password_file(path)?),
        None => None,
    };
    let (password, origin) = match (password, from_file, env(PASSWORD_ENV)) {
        (Some(p), _, _) => (Some(p.to_string()), "the configuration's"),
        (None, Some(p), _) => (Some(p), "password_file"),
        (None, None, Some(p)) => (Some(p), PASSWORD_ENV),
        (None, None, None) => (None, ""),
    };
    match (username, password) {
        (Some(user), password) => Ok(Some(Credentials {
            username: user.to_string(),
            password: password.unwrap_or_default(),
        })),
        (None, Some(_)) => Err(ConnectError::PasswordWithoutUser(origin)),
        (None, None) => Ok(None),
    }
}

/// The first line of a password file, without its line ending.
fn read_password_file(path: &Path) -> Result<String, ConnectError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConnectError::PasswordFile {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(ConnectError::PasswordFile {
            path: path.display().to_string(),
            why: "the first line is empty".into(),
        });
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_with_and_without_scheme_and_port() {
        let url = |h: &str, p, tls| BrokerUrl {
            host: h.into(),
            port: p,
            tls,
        };
        let parse = BrokerUrl::parse;
        assert_eq!(
            parse("mqtt://10.0.0.2:1884"),
            Ok(url("10.0.0.2", 1884, false))
        );
        assert_eq!(
            parse("tcp://broker.local"),
            Ok(url("broker.local", 1883, false))
        );
        assert_eq!(parse("localhost:1999"), Ok(url("localhost", 1999, false)));
        assert_eq!(
            parse("mqtts://broker.local"),
            Ok(url("broker.local", 8883, true))
        );
        assert_eq!(
            parse("ssl://10.0.0.2:9883"),
            Ok(url("10.0.0.2", 9883, true))
        );
        assert_eq!(url("b", 8883, true).to_string(), "mqtts://b:8883");
        for bad in [
            "mqtt://:1883",
            "mqtt://host:port",
            "http://host",
            "mqtt://h/x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_come_from_the_config_a_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let no_env = |_: &str| None;
        let env = |k: &str| (k == PASSWORD_ENV).then(|| "from-env".to_string());
        let creds = |p: &str| {
            Some(Credentials {
                username: "dev".into(),
                password: p.into(),
            })
        };
        assert_eq!(
            credentials(Some("dev"), Some("cfg"), Some(&file), env),
            Ok(creds("cfg"))
        );
        assert_eq!(
            credentials(Some("dev"), None, Some(&file), env),
            Ok(creds("s3cret"))
        );
        assert_eq!(
            credentials(Some("dev"), None, None, env),
            Ok(creds("from-env"))
        );
        assert_eq!(credentials(Some("dev"), None, None, no_env), Ok(creds("")));
        assert_eq!(credentials(None, None, None, no_env), Ok(None));
        assert_eq!(
            credentials(None, None, None, env),
            Err(ConnectError::PasswordWithoutUser(PASSWORD_ENV))
        );
        let missing = credentials(Some("dev"), None, Some(&dir.path().join("nope")), no_env);
        assert!(matches!(missing, Err(ConnectError::PasswordFile { .. })));
        std::fs::write(&file, "\n").unwrap();
        let empty = credentials(Some("dev"), None, Some(&file), no_env).unwrap_err();
        assert!(empty.to_string().contains("first line is empty"), "{empty}");
    }

    #[test]
    fn tls_settings_refuse_unusable_files_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let only_ca = |ca: &Path| TlsSettings {
            ca_file: Some(ca.to_path_buf()),
            system_roots: false,
            ..TlsSettings::default()
        };
        let error = |s: TlsSettings| s.client_config().unwrap_err().to_string();
        assert!(error(only_ca(&junk)).contains("no PEM certificates"));
        assert!(error(only_ca(&dir.path().join("missing.pem"))).contains("missing.pem"));
        let no_roots = TlsSettings {
            system_roots: false,
            ..TlsSettings::default()
        };
        assert_eq!(
            error(no_roots),
            "TLS settings: no CA certificates to trust (set ca_file)"
        );
        let half = TlsSettings {
            cert_file: Some(junk.clone()),
            ..TlsSettings::default()
        };
        assert_eq!(
            error(half),
            "TLS settings: cert_file and key_file go together"
        );
    }
}
