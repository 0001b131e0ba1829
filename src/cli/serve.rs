//! `edgerun serve`: the main job. Loads the services and answers requests over MQTT until
//! interrupted; the serving itself lives in [`crate::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::GlobalArgs;
use super::ocr::OcrTuning;
use super::settings::{Runtime, Warm, ocr_options, point_choices};
use crate::serve::{self, ServeConfig, ServiceConfig};
use crate::services::Service;
use crate::services::echo::EchoService;
use crate::services::generate::GenerateService;
use crate::services::legal::LegalService;
use crate::services::ocr::OcrService;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This device's id in topics (default: the host name).
    #[arg(long)]
    pub device: Option<String>,
    /// First topic level.
    #[arg(long)]
    pub prefix: Option<String>,
    /// An existing broker, `mqtt://host:port`; without one an embedded broker is started.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// Serve only these services (default: the configuration's, or echo, ocr and, where its
    /// corpus is present, legal).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub services: Option<Vec<String>>,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    /// Address of the embedded broker (default 127.0.0.1:1883).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Port of the embedded broker on its address (0: any free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Queue capacity of every service.
    #[arg(long)]
    pub queue: Option<usize>,
    /// Worker threads of every service.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Payload size limit in bytes.
    #[arg(long)]
    pub max_payload_bytes: Option<usize>,
    /// Seconds between telemetry messages.
    #[arg(long)]
    pub telemetry_interval: Option<f64>,
    /// OCR latency target in milliseconds: makes OCR adaptive (needs `edgerun profile` run
    /// once on this device with the same engine settings).
    #[arg(long, value_name = "MS")]
    pub slo_ms: Option<f64>,
    /// The profile cache written by `edgerun profile` [default: the cache folder's].
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// OCR defaults for requests that do not set them.
    #[command(flatten)]
    pub ocr: OcrTuning,
}

impl ServeArgs {
    /// The file's settings with the flags applied on top.
    fn resolve(&self) -> Result<ServeConfig> {
        let mut config = match &self.config {
            Some(path) => ServeConfig::from_file(path)?,
            None => ServeConfig::default(),
        };
        let set = |target: &mut String, value: &Option<String>| {
            if let Some(v) = value {
                *target = v.clone();
            }
        };
        set(&mut config.device, &self.device);
        set(&mut config.prefix, &self.prefix);
        config.broker = self.broker.clone().or(config.broker);
        if let Some(names) = &self.services {
            let mut chosen = std::collections::BTreeMap::new();
            for name in names {
                if !KNOWN_SERVICES.contains(&name.as_str()) {
                    anyhow::bail!(
                        "unknown service {name:?} (known: {})",
                        KNOWN_SERVICES.join(", ")
                    );
                }
                let settings = config.services.remove(name).unwrap_or_default();
                chosen.insert(name.clone(), settings);
            }
            config.services = chosen;
        }
        config.username = self.username.clone().or(config.username);
        config.password = self.password.clone().or(config.password);
        if let Some(bind) = self.bind {
            config.embedded_bind = bind;
        }
        if let Some(port) = self.port {
            config.embedded_bind.set_port(port);
        }
        for service in config.services.values_mut() {
            let ServiceConfig { queue, workers, .. } = service;
            *queue = self.queue.unwrap_or(*queue);
            *workers = self.workers.unwrap_or(*workers);
        }
        config.max_payload_bytes = self.max_payload_bytes.unwrap_or(config.max_payload_bytes);
        if let Some(max_pixels) = self.ocr.max_pixels {
            config.max_pixels = max_pixels;
        }
        config.telemetry_interval_s = self
            .telemetry_interval
            .unwrap_or(config.telemetry_interval_s);
        if let Some(slo_ms) = self.slo_ms {
            config.policy.entry("ocr".into()).or_default().slo_ms = slo_ms;
        }
        config.profile = self.profile.clone().or(config.profile);
        config.validate()?;
        Ok(config)
    }
}

/// The services this build can serve.
const KNOWN_SERVICES: &[&str] = &["ocr", "legal", "generate", "echo"];

pub fn run(global: &GlobalArgs, args: &ServeArgs) -> Result<ExitCode> {
    let config = args.resolve()?;
    let runtime = Runtime::new(global, config.engine.clone())?;
    let mut services: Vec<Arc<dyn Service>> = Vec::new();
    for name in config.services.keys() {
        match name.as_str() {
            "ocr" => services.push(Arc::new(OcrService::new(
                Arc::new(runtime.ocr_pipeline(Warm::Up)?),
                ocr_options(&args.ocr)?,
                config.max_pixels,
            ))),
            "legal" => {
                let corpus = config.services[name].corpus.as_deref();
                let legal = runtime.legal(corpus, Warm::Up)?;
                services.push(Arc::new(LegalService::new(Arc::new(legal))));
            }
            "generate" => services.push(Arc::new(GenerateService::new(Arc::new(
                runtime.generate(Warm::Up)?,
            )))),
            "echo" => services.push(Arc::new(EchoService)),
            other => {
                anyhow::bail!(
                    "unknown service {other:?} in the configuration (known: {})",
                    KNOWN_SERVICES.join(", ")
                )
            }
        }
    }
    let choices = point_choices(&runtime, &config, &services);
    let (device, prefix) = (config.device.clone(), config.prefix.clone());
    let server = serve::start(config, services, choices)?;
    match server.embedded_broker {
        Some(addr) => eprintln!(
            "edgerun: serving as {prefix}/{device} on the embedded broker at mqtt://{addr}"
        ),
        None => eprintln!("edgerun: serving as {prefix}/{device}"),
    }
    wait_for_signal_or_failure(&server)?;
    if server.is_finished() {
        // The server stopped by itself: that is a failure, with its reason.
        server.wait()?;
        anyhow::bail!("the server stopped");
    }
    eprintln!("edgerun: shutting down");
    server.shutdown()?;
    Ok(ExitCode::SUCCESS)
}

/// Blocks until SIGINT or SIGTERM, or until the server stops by itself.
fn wait_for_signal_or_failure(server: &serve::ServerHandle) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut check = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                result = tokio::signal::ctrl_c() => return result,
                _ = terminate.recv() => return Ok(()),
                _ = check.tick() => if server.is_finished() { return Ok(()) },
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn resolve(args: &[&str]) -> anyhow::Result<ServeConfig> {
        let cli = Cli::try_parse_from(args)?;
        let Command::Serve(serve) = cli.command else {
            panic!("not serve");
        };
        serve.resolve()
    }

    #[test]
    fn the_services_flag_picks_the_services() {
        let config = resolve(&["edgerun", "serve", "--services", "ocr,echo"]).unwrap();
        let names: Vec<&str> = config.services.keys().map(String::as_str).collect();
        assert_eq!(names, ["echo", "ocr"]);
        let err = resolve(&["edgerun", "serve", "--services", "ocr,vision"]).unwrap_err();
        assert!(err.to_string().contains("vision"), "{err}");
    }

    #[test]
    fn slo_and_profile_flags_make_ocr_adaptive() {
        let config = resolve(&["edgerun", "serve"]).unwrap();
        assert!(config.policy.is_empty());
        let config = resolve(&[
            "edgerun",
            "serve",
            "--slo-ms",
            "300",
            "--profile",
            "/tmp/p.json",
        ])
        .unwrap();
        assert_eq!(config.policy["ocr"].slo_ms, 300.0);
        assert_eq!(config.policy["ocr"].up_window_s, 5.0);
        assert_eq!(config.profile, Some(PathBuf::from("/tmp/p.json")));
        let err = resolve(&["edgerun", "serve", "--slo-ms=-3"]).unwrap_err();
        assert!(err.to_string().contains("slo_ms"), "{err}");
    }
}
