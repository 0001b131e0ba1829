//! `edgerun serve`: the main job. Loads the services and answers requests over MQTT until
//! interrupted; the serving itself lives in [`crate::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::GlobalArgs;
use super::broker::BrokerArgs;
use super::registry;
use super::settings::{Runtime, Warm, point_choices};
use crate::serve::{self, ServeConfig, ServiceConfig};

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
    #[command(flatten)]
    pub connection: BrokerArgs,
    /// Serve only these services (default: the configuration's, or all of them: echo, ocr,
    /// legal and generate).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub services: Option<Vec<String>>,
    /// The embedded broker's users (made with `edgerun passwd`); required to listen
    /// beyond loopback. This device connects as --username.
    #[arg(long, value_name = "FILE")]
    pub embedded_password_file: Option<PathBuf>,
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
    /// Latency targets per service in milliseconds, e.g. `ocr=400,legal=30,generate=40`
    /// [default: each manifest's `slo_ms`]. Every service with operating points adapts to
    /// its target by itself.
    #[arg(long, value_delimiter = ',', value_name = "NAME=MS,...", value_parser = parse_slo)]
    pub slo: Vec<(String, f64)>,
    /// Serve every service's default point: no adaptation, and no measuring at start-up.
    #[arg(long, conflicts_with = "slo")]
    pub no_adapt: bool,
    /// The profile cache, where `serve` keeps what it measured of each point on this
    /// device [default: the cache folder's profile.json].
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Refuse images with more pixels than this (default 48 million).
    #[arg(long, value_name = "N")]
    pub max_pixels: Option<u64>,
}

/// One `NAME=MS` of `--slo`.
fn parse_slo(text: &str) -> Result<(String, f64), String> {
    let (name, ms) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=MS"))?;
    let ms: f64 = ms
        .trim()
        .parse()
        .map_err(|_| format!("{ms:?} in {text:?} is not a number of milliseconds"))?;
    Ok((name.trim().to_string(), ms))
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
        self.connection.apply(&mut config);
        if let Some(names) = &self.services {
            let mut chosen = std::collections::BTreeMap::new();
            for name in names {
                registry::entry(name)?;
                let settings = config.services.remove(name).unwrap_or_default();
                chosen.insert(name.clone(), settings);
            }
            config.services = chosen;
        }
        if let Some(file) = &self.embedded_password_file {
            config.embedded_password_file = Some(file.clone());
        }
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
        if let Some(max_pixels) = self.max_pixels {
            config.max_pixels = max_pixels;
        }
        config.telemetry_interval_s = self
            .telemetry_interval
            .unwrap_or(config.telemetry_interval_s);
        if self.no_adapt {
            for name in config.services.keys() {
                config.policy.entry(name.clone()).or_default().adaptive = false;
            }
        }
        for (name, slo_ms) in &self.slo {
            if !config.services.contains_key(name) {
                anyhow::bail!("--slo {name}={slo_ms}: {name:?} is not served");
            }
            config.policy.entry(name.clone()).or_default().slo_ms = Some(*slo_ms);
        }
        config.profile = self.profile.clone().or(config.profile);
        config.validate()?;
        Ok(config)
    }
}

/// The configuration with the global engine flags (`--threads`, `--backend`, ...) applied
/// too, and the runtime built from it: the lanes' thread policy and the controllers'
/// conditions read the engine from the configuration, so it must be the engine that runs.
fn resolve_with_runtime(global: &GlobalArgs, args: &ServeArgs) -> Result<(ServeConfig, Runtime)> {
    let mut config = args.resolve()?;
    let runtime = Runtime::new(global, config.engine.clone())?;
    config.engine = runtime.engine_config.clone();
    Ok((config, runtime))
}

pub fn run(global: &GlobalArgs, args: &ServeArgs) -> Result<ExitCode> {
    let (config, runtime) = resolve_with_runtime(global, args)?;
    let services = registry::build_all(
        config.services.keys(),
        &runtime,
        &config,
        Warm::DefaultPoint,
    )?;
    // Each service loaded on a thread of its own, in an arena of its own, and trimmed its
    // top before it ended; this returns the free pages left inside those arenas.
    crate::allocator::return_free_memory();
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
    fn global_engine_flags_reach_the_served_configuration() {
        let cli = Cli::try_parse_from(["edgerun", "--threads", "2", "serve"]).unwrap();
        let Command::Serve(serve) = &cli.command else {
            panic!("not serve");
        };
        let (config, runtime) = resolve_with_runtime(&cli.global, serve).unwrap();
        assert_eq!((config.engine.threads, runtime.threads), (2, 2));
        assert!(
            config.engine.adapts_threads(),
            "two tract threads follow the load"
        );
    }

    #[test]
    fn slo_flag_sets_targets_per_service() {
        let config = resolve(&["edgerun", "serve"]).unwrap();
        assert!(config.policy.is_empty(), "the manifests' targets");
        let config = resolve(&[
            "edgerun",
            "serve",
            "--services",
            "ocr,generate,echo",
            "--slo",
            "ocr=300,generate=45.5",
            "--profile",
            "/tmp/p.json",
        ])
        .unwrap();
        assert_eq!(config.policy["ocr"].slo_ms, Some(300.0));
        assert_eq!(config.policy["generate"].slo_ms, Some(45.5));
        assert_eq!(config.policy["ocr"].resolve(1.0).up_window_s, 5.0);
        assert_eq!(config.profile, Some(PathBuf::from("/tmp/p.json")));
        let err = resolve(&["edgerun", "serve", "--slo", "ocr=-3"]).unwrap_err();
        assert!(err.to_string().contains("slo_ms"), "{err}");
        let err = resolve(&["edgerun", "serve", "--services", "ocr", "--slo", "legal=30"]);
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("\"legal\" is not served")
        );
        let err = resolve(&["edgerun", "serve", "--slo", "ocr:30"]).unwrap_err();
        assert!(err.to_string().contains("is not NAME=MS"), "{err}");
        let config =
            resolve(&["edgerun", "serve", "--services", "ocr,echo", "--no-adapt"]).unwrap();
        assert!(config.policy.values().all(|p| !p.adaptive));
        assert_eq!(config.policy.len(), 2);
    }
}
