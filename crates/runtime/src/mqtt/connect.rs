//! Where and as whom an MQTT client connects: the broker URL and the credentials.
//!
//! Pure parsing and resolution, shared by `serve` and `edgerun request`; no sockets here.
//! Passwords never need the command line (where `ps` shows them): they come from a file
//! (`password_file`) or the environment (`EDGERUN_MQTT_PASSWORD`).

use std::path::Path;

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "EDGERUN_MQTT_PASSWORD";

/// A broker address parsed from `mqtt://host:port` (also `tcp://`, or a bare `host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
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
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, ConnectError> {
        let bad = |why: &str| ConnectError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => rest,
            Some(("mqtts" | "ssl", _)) => {
                return Err(bad(
                    "TLS brokers (mqtts://) are not supported by this build yet; reach the \
                     broker over mqtt:// (a TLS-terminating proxy or a VPN)",
                ));
            }
            Some((scheme, _)) => return Err(bad(&format!("unknown scheme {scheme:?}"))),
            None => url,
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| bad("bad port"))?),
            None => (rest, 1883),
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad("no host"));
        }
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
        })
    }
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
        let url = |h: &str, p| BrokerUrl {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            BrokerUrl::parse("mqtt://10.0.0.2:1884"),
            Ok(url("10.0.0.2", 1884))
        );
        assert_eq!(
            BrokerUrl::parse("tcp://broker.local"),
            Ok(url("broker.local", 1883))
        );
        assert_eq!(
            BrokerUrl::parse("localhost:1999"),
            Ok(url("localhost", 1999))
        );
        for bad in [
            "mqtt://:1883",
            "mqtt://host:port",
            "http://host",
            "mqtt://h/x",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
        let tls = BrokerUrl::parse("mqtts://broker:8883")
            .unwrap_err()
            .to_string();
        assert!(tls.contains("not supported by this build yet"), "{tls}");
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
}
