//! The server's configuration: a TOML file, overridden by command-line flags. Parsing and
//! validation only; nothing here opens sockets or loads models.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::replay::ReplayLimits;
use crate::engine::EngineConfig;
use crate::mqtt::broker::{EmbeddedTls, unauthenticated_exposure};
use crate::mqtt::{BrokerUrl, Credentials, TlsSettings};
use crate::policy::PolicyConfig;

/// `edgerun serve`'s settings. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// This device's id in topics; defaults to the host name.
    pub device: String,
    /// First topic level of everything this device publishes or subscribes.
    pub prefix: String,
    /// `mqtt://host:port` of an existing broker; none starts the embedded one.
    pub broker: Option<String>,
    pub username: Option<String>,
    /// The password in the file itself; prefer `password_file` or `EDGERUN_MQTT_PASSWORD`.
    pub password: Option<String>,
    /// A file whose first line is the password (mode 0600, owned by the service user).
    pub password_file: Option<PathBuf>,
    /// Trusted CAs and the client certificate for an `mqtts://` broker.
    pub tls: TlsSettings,
    /// Where the embedded broker listens (loopback unless configured otherwise).
    pub embedded_bind: SocketAddr,
    /// The embedded broker's users (`user:argon2-hash` lines, `edgerun passwd`); required
    /// beyond loopback. This device connects to it as `username` too.
    pub embedded_password_file: Option<PathBuf>,
    /// A TLS listener of the embedded broker besides `embedded_bind`.
    pub embedded_tls: Option<EmbeddedTls>,
    /// Requests with bigger payloads are answered `too_large`.
    pub max_payload_bytes: usize,
    /// Decoded images with more pixels are answered `too_large`.
    pub max_pixels: u64,
    pub telemetry_interval_s: f64,
    /// Services to load, by name, with their queue and worker settings.
    pub services: BTreeMap<String, ServiceConfig>,
    /// Engines: threads, backend (globally and per model), ONNX Runtime providers.
    pub engine: EngineConfig,
    /// Where telemetry reads `/proc` and `/sys` (another root replays a captured tree).
    pub telemetry_root: PathBuf,
    /// The profile cache: where `serve` keeps what it measured of each service's points,
    /// and `edgerun profile` writes (default: the cache folder's profile.json).
    pub profile: Option<PathBuf>,
    /// How each service adapts (every elastic service does unless told otherwise; the
    /// latency target defaults to its manifest's).
    pub policy: BTreeMap<String, AdaptSettings>,
    /// Passes over the sample requests per point when `serve` measures the points itself
    /// (after a warm-up pass).
    pub profile_rounds: usize,
    /// Recent answers kept to answer a request's copies (redeliveries, retries) again.
    pub answer_cache: ReplayLimits,
}

/// A service's adaptation as configured; what is left out takes the service manifest's
/// target and the controller's defaults ([`PolicyConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptSettings {
    /// `false` serves the default point (or a request's pin) always.
    pub adaptive: bool,
    /// Latency target per request (queue wait included), in milliseconds.
    pub slo_ms: Option<f64>,
    /// Points of lower quality are never chosen.
    pub min_quality: Option<f64>,
    /// Seconds a better point must fit before stepping up.
    pub up_window_s: Option<f64>,
    /// Stepping up needs the better point predicted within this share of the budget.
    pub headroom: Option<f64>,
    /// Weight of the newest observation in the slowdown average.
    pub ewma_alpha: Option<f64>,
}

impl Default for AdaptSettings {
    fn default() -> Self {
        AdaptSettings {
            adaptive: true,
            slo_ms: None,
            min_quality: None,
            up_window_s: None,
            headroom: None,
            ewma_alpha: None,
        }
    }
}

impl AdaptSettings {
    /// The controller's settings, with `manifest_slo_ms` where no target is configured.
    pub fn resolve(&self, manifest_slo_ms: f64) -> PolicyConfig {
        let defaults = PolicyConfig::default();
        PolicyConfig {
            slo_ms: self.slo_ms.unwrap_or(manifest_slo_ms),
            min_quality: self.min_quality,
            up_window_s: self.up_window_s.unwrap_or(defaults.up_window_s),
            headroom: self.headroom.unwrap_or(defaults.headroom),
            ewma_alpha: self.ewma_alpha.unwrap_or(defaults.ewma_alpha),
        }
    }
}

/// The largest payload limit: MQTT packets carry at most 256 MB, and the client accepts
/// twice the limit so that oversized requests can still be answered `too_large`.
pub const MAX_PAYLOAD_LIMIT: usize = 100 << 20;

/// Per-service settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Requests waiting beyond this many are answered `busy` at once.
    pub queue: usize,
    /// Threads running inference for this service.
    pub workers: usize,
    /// `legal` only: the statute text to serve (default: the COLIEE Civil Code under the
    /// data folder, `EDGERUN_DATA`).
    pub corpus: Option<PathBuf>,
    /// `ocr` only: decode printable ASCII only.
    pub ascii: bool,
    /// `ocr` only: crops per recognizer run.
    pub batch: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            queue: 16,
            workers: 1,
            corpus: None,
            ascii: false,
            batch: 1,
        }
    }
}

/// Every service: echo, OCR, legal retrieval and image generation (all ship in `models/`).
fn default_services() -> BTreeMap<String, ServiceConfig> {
    ["echo", "ocr", "legal", "generate"]
        .into_iter()
        .map(|name| (name.to_string(), ServiceConfig::default()))
        .collect()
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            device: default_device(),
            prefix: "edgerun".into(),
            broker: None,
            username: None,
            password: None,
            password_file: None,
            tls: TlsSettings::default(),
            embedded_password_file: None,
            embedded_tls: None,
            embedded_bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_payload_bytes: 8 << 20,
            max_pixels: crate::imaging::DEFAULT_MAX_PIXELS,
            telemetry_interval_s: 10.0,
            services: default_services(),
            engine: EngineConfig::default(),
            telemetry_root: PathBuf::from("/"),
            profile: None,
            policy: BTreeMap::new(),
            profile_rounds: 2,
            answer_cache: ReplayLimits::default(),
        }
    }
}

fn default_device() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edge".into())
}

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServeConfig {
    pub fn from_file(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        ServeConfig::parse(&text, &path.display().to_string())
    }

    /// Reads a configuration's TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ServeConfig, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_string(),
            source: Box::new(source),
        })
    }

    /// The broker to join, if one is configured (none: the embedded broker).
    pub fn broker_url(&self) -> Result<Option<BrokerUrl>, ConfigError> {
        let Some(url) = &self.broker else {
            return Ok(None);
        };
        let url = BrokerUrl::parse(url).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(Some(url))
    }

    /// The credentials to connect with: `username` and the password from the configuration,
    /// `password_file`, or the environment (`EDGERUN_MQTT_PASSWORD`).
    pub fn credentials(&self) -> Result<Option<Credentials>, ConfigError> {
        crate::mqtt::connect::credentials(
            self.username.as_deref(),
            self.password.as_deref(),
            self.password_file.as_deref(),
            |key| std::env::var(key).ok(),
        )
        .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let topic_safe = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#', '$']);
        if !topic_safe(&self.device) || !topic_safe(&self.prefix) {
            return invalid("device and prefix must be non-empty and free of / + # $".into());
        }
        if self.device == crate::mqtt::topics::FLEET {
            return invalid("\"fleet\" addresses the whole fleet; choose another device id".into());
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > MAX_PAYLOAD_LIMIT {
            return invalid(format!(
                "max_payload_bytes must lie in 1..={MAX_PAYLOAD_LIMIT}"
            ));
        }
        if self.services.is_empty() {
            return invalid("no services configured".into());
        }
        for (name, service) in &self.services {
            if service.queue == 0 || service.workers == 0 {
                return invalid(format!(
                    "service {name}: queue and workers must be at least 1"
                ));
            }
            if service.corpus.is_some() && name != "legal" {
                return invalid(format!("service {name}: corpus is a legal setting"));
            }
            if (service.ascii || service.batch != 1) && name != "ocr" {
                return invalid(format!("service {name}: ascii and batch are ocr settings"));
            }
            if service.batch == 0 {
                return invalid(format!("service {name}: batch must be at least 1"));
            }
        }
        for (name, policy) in &self.policy {
            if !self.services.contains_key(name) {
                return invalid(format!("policy for {name:?}, which is not served"));
            }
            // Any positive stand-in for a target left to the manifest.
            policy
                .resolve(1.0)
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("policy.{name}: {e}")))?;
        }
        if self.profile_rounds == 0 {
            return invalid("profile_rounds must be at least 1".into());
        }
        if !(0.01..=86_400.0).contains(&self.telemetry_interval_s) {
            return invalid("telemetry_interval_s must lie in 0.01..=86400".into());
        }
        if let Some(url) = self.broker_url()?
            && url.tls
        {
            self.tls
                .client_config()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        self.credentials()?;
        if self.broker.is_none() {
            if let Some(why) = unauthenticated_exposure(
                self.embedded_bind,
                self.embedded_password_file.as_deref(),
                self.embedded_tls.as_ref(),
            ) {
                return invalid(why);
            }
            if self.embedded_password_file.is_some() && self.username.is_none() {
                return invalid(
                    "with embedded_password_file, set username (and its password) for this \
                     device's own connection"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c: ServeConfig = toml::from_str("").unwrap();
        assert_eq!(c.prefix, "edgerun");
        assert_eq!(c.embedded_bind.to_string(), "127.0.0.1:1883");
        assert_eq!(c.services["ocr"].queue, 16);
        assert_eq!(c.max_payload_bytes, 8 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn file_settings_and_broker_urls() {
        let c: ServeConfig = toml::from_str(
            r#"device = "pi-7"
broker = "mqtt://10.0.0.2:1884"
[services.ocr]
queue = 4
workers = 2
"#,
        )
        .unwrap();
        assert_eq!(c.device, "pi-7");
        assert_eq!(c.services["ocr"].workers, 2);
        let url = c.broker_url().unwrap().unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.tls),
            ("10.0.0.2", 1884, false)
        );
        let c = ServeConfig {
            broker: Some("broker.local".into()),
            ..ServeConfig::default()
        };
        let url = c.broker_url().unwrap().unwrap();
        assert_eq!((url.host.as_str(), url.port), ("broker.local", 1883));
    }

    #[test]
    fn the_packaged_config_is_the_defaults() {
        let text = include_str!("../../../../deploy/package.toml");
        let c: ServeConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::to_value(ServeConfig::default()).unwrap()
        );
        // Each commented key is one the configuration knows: uncommented, it still parses.
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") || l.starts_with('['))
            .map(|l| l.split(" #").next().unwrap().to_string() + "\n")
            .collect();
        let c: ServeConfig = toml::from_str(&uncommented).unwrap();
        assert_eq!(c.broker.as_deref(), Some("mqtts://broker.plant:8883"));
        assert_eq!(c.policy["legal"].slo_ms, Some(30.0));
    }

    #[test]
    fn the_example_deployment_config_is_valid() {
        use crate::engine::{Backend, Provider};
        let c: ServeConfig =
            toml::from_str(include_str!("../../../../deploy/edgerun.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.device, "orin-07");
        assert_eq!(c.services["legal"].corpus, None);
        assert_eq!(c.services["legal"].workers, 2);
        assert_eq!(c.engine.threads, 2);
        assert_eq!(c.engine.backend, Backend::Ort);
        assert_eq!(
            c.engine.ort.providers,
            [Provider::Tensorrt, Provider::Cuda, Provider::Cpu]
        );
        assert!(c.engine.ort.tensorrt_fp16);
        assert_eq!(c.engine.backend_for("ocr/rec_small.onnx"), Backend::Auto);
        assert_eq!(c.engine.backend_for("ocr/det_tiny.onnx"), Backend::Ort);
        let ocr = c.policy["ocr"].resolve(500.0);
        assert_eq!(
            (ocr.slo_ms, ocr.min_quality, ocr.up_window_s),
            (250.0, Some(0.3), 5.0)
        );
        assert_eq!(ocr.headroom, 0.9, "defaults fill the rest");
        let legal = c.policy["legal"].resolve(30.0);
        assert_eq!(
            (legal.slo_ms, legal.min_quality),
            (30.0, Some(0.62)),
            "the manifest's"
        );
        assert!(c.policy["legal"].adaptive);
        assert_eq!(c.telemetry_root, PathBuf::from("/"));
        let bad = "[engine]\nbackend = \"gpu\"\n";
        let err = toml::from_str::<ServeConfig>(bad).unwrap_err().to_string();
        assert!(err.contains("unknown variant `gpu`"), "{err}");
    }

    #[test]
    fn the_embedded_broker_leaves_loopback_only_with_authentication() {
        let open = ServeConfig {
            embedded_bind: SocketAddr::from(([0, 0, 0, 0], 1883)),
            ..ServeConfig::default()
        };
        let err = open.validate().unwrap_err().to_string();
        assert!(
            err.contains("listens on 0.0.0.0:1883 (beyond loopback)"),
            "{err}"
        );
        let no_user = ServeConfig {
            embedded_password_file: Some("/etc/edgerun/broker-users".into()),
            ..open.clone()
        };
        let err = no_user.validate().unwrap_err().to_string();
        assert!(err.contains("set username"), "{err}");
        let guarded = ServeConfig {
            username: Some("cam-1".into()),
            ..no_user
        };
        guarded.validate().unwrap();
        // Joining another broker, the embedded one's settings do not apply.
        let joined = ServeConfig {
            broker: Some("mqtt://10.0.0.2".into()),
            ..open
        };
        joined.validate().unwrap();
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(toml::from_str::<ServeConfig>("colour = 3").is_err());
        for (policy, expected) in [
            ("[policy.vision]\nslo_ms = 100\n", "not served"),
            (
                "[policy.ocr]\nslo_ms = -1\n",
                "slo_ms must be a positive number",
            ),
        ] {
            let c: ServeConfig = toml::from_str(policy).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{policy}: {err}");
        }
        let c = ServeConfig {
            device: "a/b".into(),
            ..ServeConfig::default()
        };
        assert!(c.validate().is_err());
        let c = ServeConfig {
            broker: Some("mqtt://host:notaport".into()),
            ..ServeConfig::default()
        };
        assert!(c.validate().is_err());
        for bad in [
            ServeConfig {
                device: "fleet".into(),
                ..ServeConfig::default()
            },
            ServeConfig {
                telemetry_interval_s: f64::INFINITY,
                ..ServeConfig::default()
            },
            ServeConfig {
                telemetry_interval_s: 1e-10,
                ..ServeConfig::default()
            },
            ServeConfig {
                max_payload_bytes: usize::MAX,
                ..ServeConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
