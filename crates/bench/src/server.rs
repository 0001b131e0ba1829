//! An `edgerun serve` child for the closed-loop benchmarks: this binary, started as a user
//! would start it (with the benchmark's global flags), on an embedded broker of its own,
//! with a status watcher and clients for it. The benchmarks measure it from outside; this
//! module only starts, watches and stops it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;

use edgerun_runtime::mqtt::client::RequestClient;

/// The device id the benchmarks' servers use.
pub const DEVICE: &str = "bench";

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// `--services`, comma-separated.
    pub services: String,
    /// `--slo NAME=MS,...`, if any.
    pub slo: Option<String>,
    /// The profile cache it measures into and adapts from.
    pub profile: PathBuf,
    /// Global flags before `serve` (threads, engine, models).
    pub global_args: Vec<String>,
    /// More `serve` flags.
    pub serve_args: Vec<String>,
    /// Where its log goes (appended).
    pub log: PathBuf,
}

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    pub broker: SocketAddr,
}

impl Server {
    pub fn spawn(spec: &ServerSpec) -> Result<Server> {
        // A free port: bound, read and released (the server binds it a moment later).
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let exe = std::env::current_exe().context("finding this binary to start the server")?;
        let mut command = Command::new(exe);
        command.args(&spec.global_args).args([
            "serve",
            "--services",
            &spec.services,
            "--device",
            DEVICE,
            "--port",
            &port.to_string(),
            "--telemetry-interval",
            "1",
        ]);
        command.arg("--profile").arg(&spec.profile);
        command.args(&spec.serve_args);
        if let Some(slo) = &spec.slo {
            command.args(["--slo", slo]);
        }
        if let Some(dir) = spec.log.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting edgerun serve")?;
        Ok(Server {
            child,
            broker: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client of the server's broker, once it listens.
    pub async fn connect(&self, name: &str) -> Result<RequestClient> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(self.broker).is_ok() {
                return Ok(RequestClient::connect(self.broker, name).await?);
            }
            anyhow::ensure!(Instant::now() < until, "the server's broker never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client subscribed to the server's `topic` (`status`, `telemetry`): every message,
    /// in order, as [`RequestClient::next_answer`] gives them.
    pub async fn watch(&self, name: &str, topic: &str) -> Result<RequestClient> {
        let watcher = self.connect(name).await?;
        watcher
            .raw()
            .subscribe(format!("edgerun/{DEVICE}/{topic}"), QoS::AtLeastOnce)
            .await?;
        Ok(watcher)
    }

    /// Waits (at most 120 s) for the server's first retained status that says `online`;
    /// the watcher of its status, for what follows.
    pub async fn until_online(&self, name: &str) -> Result<RequestClient> {
        let mut watcher = self.watch(name, "status").await?;
        loop {
            let status = watcher
                .next_answer(Duration::from_secs(120))
                .await
                .context("the server never said online")?
                .1;
            if status["online"] == true {
                return Ok(watcher);
            }
        }
    }

    /// SIGTERM, so that it goes offline cleanly; killed (on drop) if it takes too long.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `service`'s policy in a status message (`Null` if absent).
pub fn policy_of<'s>(status: &'s Value, service: &str) -> &'s Value {
    &status["services"][service]["policy"]
}
