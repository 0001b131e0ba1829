//! `edgerun bench mqtt`: what MQTT costs. Request round trips through the embedded broker
//! and through mosquitto (TCP_NODELAY) with the `echo` service, against calling the service
//! in-process; and OCR crop throughput over MQTT against in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde::Serialize;
use serde_json::json;

use super::{LatencyStats, Machine, Table, write_json};
use crate::data;
use edgerun_runtime::mqtt::client::RequestClient;
use edgerun_runtime::serve::{self, ServeConfig, ServiceConfig};
use edgerun_runtime::services::echo::EchoService;
use edgerun_runtime::services::ocr::{OcrOptions, OcrPipeline, OcrService, RecognizerChoice};
use edgerun_runtime::services::{Payload, Service, Serving};

#[derive(Debug, Clone)]
pub struct MqttBenchSettings {
    /// Sequential echo requests per broker.
    pub requests: usize,
    /// OCR crops sent for the throughput run.
    pub crops: usize,
    /// Requests in flight during the throughput run.
    pub window: usize,
    /// Run against mosquitto too (needs the `mosquitto` binary).
    pub mosquitto: bool,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundTrip {
    pub broker: String,
    pub requests: usize,
    pub round_trip: LatencyStats,
    pub p99_ms: f64,
    /// Round trip minus the in-process call, at the median.
    pub overhead_p50_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub broker: String,
    pub crops: usize,
    pub window: usize,
    pub mqtt_per_s: f64,
    pub in_process_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MqttBenchReport {
    pub machine: Machine,
    pub in_process_echo_ms: LatencyStats,
    pub round_trips: Vec<RoundTrip>,
    pub throughput: Vec<Throughput>,
}

pub fn run(pipeline: Arc<OcrPipeline>, settings: &MqttBenchSettings) -> Result<MqttBenchReport> {
    let machine = Machine::current();
    eprintln!("machine: {machine}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let echo_payload = serde_json::to_vec(&json!({"ping": "x".repeat(200)}))?;
    let in_process = in_process_echo(&echo_payload, settings.requests)?;
    // Word crops as JSON crop requests (recognition only, the tiny recognizer).
    let crops = data::iiit5k()?
        .into_iter()
        .take(settings.crops)
        .map(|c| {
            let png = std::fs::read(&c.path).with_context(|| c.path.display().to_string())?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(png);
            Ok(serde_json::to_vec(
                &json!({"image_b64": b64, "crops": true}),
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let ocr = Arc::new(OcrService::new(
        pipeline,
        OcrOptions {
            recognizer: RecognizerChoice::Tiny,
            ..OcrOptions::default()
        },
        edgerun_runtime::imaging::DEFAULT_MAX_PIXELS,
    ));
    let in_process_per_s = in_process_ocr(ocr.as_ref(), &crops)?;

    let mut round_trips = Vec::new();
    let mut throughput = Vec::new();
    let mut brokers: Vec<(&str, Option<Mosquitto>)> = vec![("embedded (mqtt5)", None)];
    if settings.mosquitto {
        brokers.push(("mosquitto", Some(Mosquitto::start()?)));
    }
    for (name, mosquitto) in &brokers {
        eprintln!(
            "{name}: {} echo round trips, {} OCR crops...",
            settings.requests,
            crops.len()
        );
        let config = ServeConfig {
            device: "bench".into(),
            broker: mosquitto.as_ref().map(|m| format!("mqtt://{}", m.addr)),
            embedded_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            services: [
                ("echo".to_string(), ServiceConfig::default()),
                (
                    "ocr".to_string(),
                    ServiceConfig {
                        queue: settings.window.max(1) * 2,
                        workers: 1,
                        ..Default::default()
                    },
                ),
            ]
            .into(),
            ..ServeConfig::default()
        };
        let services: Vec<Arc<dyn Service>> = vec![Arc::new(EchoService), ocr.clone()];
        let server = serve::start(config, services, Default::default())?;
        let addr = match (server.embedded_broker, mosquitto) {
            (Some(addr), _) => addr,
            (None, Some(m)) => m.addr,
            (None, None) => bail!("no broker address"),
        };
        let (latency, rate) = runtime.block_on(async {
            let mut client = RequestClient::connect(addr, "bench-client").await?;
            tokio::time::sleep(Duration::from_millis(300)).await; // the server subscribes
            let latency = echo_round_trips(&mut client, &echo_payload, settings.requests).await?;
            let rate = ocr_throughput(&mut client, &crops, settings.window).await?;
            client.disconnect().await;
            anyhow::Ok((latency, rate))
        })?;
        server.shutdown()?;
        let stats = LatencyStats::of(&latency);
        round_trips.push(RoundTrip {
            broker: name.to_string(),
            requests: latency.len(),
            p99_ms: percentile(&latency, 99.0),
            overhead_p50_ms: stats.median_ms - in_process.median_ms,
            round_trip: stats,
        });
        throughput.push(Throughput {
            broker: name.to_string(),
            crops: crops.len(),
            window: settings.window,
            mqtt_per_s: rate,
            in_process_per_s,
        });
    }
    let report = MqttBenchReport {
        machine,
        in_process_echo_ms: in_process,
        round_trips,
        throughput,
    };
    print_report(&report);
    write_json(&settings.out, &report)?;
    eprintln!("wrote {}", settings.out.display());
    Ok(report)
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    edgerun_runtime::latency::percentile(&sorted, p)
}

fn in_process_echo(payload: &[u8], n: usize) -> Result<LatencyStats> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        // What the server does per request besides MQTT: parse the JSON, run the service.
        let value = serde_json::from_slice(payload)?;
        let answer = EchoService.handle(
            Some("application/json"),
            &Payload::Json(value),
            Serving::default(),
        )?;
        std::hint::black_box(serde_json::to_vec(&answer)?);
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(LatencyStats::of(&samples))
}

/// Crops per second calling the service directly, after one pass that builds every plan
/// (the MQTT runs that follow find them built too).
fn in_process_ocr(service: &dyn Service, crops: &[Vec<u8>]) -> Result<f64> {
    // Parsing the JSON is part of the in-process work too, as it is over MQTT.
    let run = || -> Result<()> {
        for crop in crops {
            let payload = Payload::Json(serde_json::from_slice(crop)?);
            service.handle(Some("application/json"), &payload, Serving::default())?;
        }
        Ok(())
    };
    run()?;
    let started = Instant::now();
    run()?;
    Ok(crops.len() as f64 / started.elapsed().as_secs_f64())
}

async fn echo_round_trips(
    client: &mut RequestClient,
    payload: &[u8],
    n: usize,
) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let id = format!("e{i}");
        let started = Instant::now();
        client
            .send(
                "edgerun/bench/echo/request",
                &id,
                payload.to_vec(),
                Some("application/json"),
                None,
            )
            .await?;
        match client.next_answer(Duration::from_secs(10)).await {
            Some((got, _)) if got == id => {}
            other => bail!("echo {id}: unexpected answer {other:?}"),
        }
        if i >= 50 {
            // The first 50 warm the connection up.
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(samples)
}

/// Crops per second with `window` requests in flight; every crop must come back read.
async fn ocr_throughput(
    client: &mut RequestClient,
    crops: &[Vec<u8>],
    window: usize,
) -> Result<f64> {
    let started = Instant::now();
    let (mut sent, mut done) = (0, 0);
    while done < crops.len() {
        while sent < crops.len() && sent - done < window.max(1) {
            client
                .send(
                    "edgerun/bench/ocr/request",
                    &format!("c{sent}"),
                    crops[sent].clone(),
                    Some("application/json"),
                    None,
                )
                .await?;
            sent += 1;
        }
        match client.next_answer(Duration::from_secs(30)).await {
            Some((_, body)) if body.get("error").is_none() => done += 1,
            other => bail!("OCR crop: unexpected answer {other:?}"),
        }
    }
    Ok(crops.len() as f64 / started.elapsed().as_secs_f64())
}

/// A loopback port nothing listens on now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Debian's mosquitto on a loopback port with TCP_NODELAY, stopped when dropped; for the
/// benchmark and the tests.
pub struct Mosquitto {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Mosquitto {
    /// On a free port.
    pub fn start() -> Result<Mosquitto> {
        Self::start_with(free_port()?, &[])
    }

    pub fn start_on(port: u16) -> Result<Mosquitto> {
        Self::start_with(port, &[])
    }

    /// On a free port, with `extra` lines appended to the configuration (limits, logging).
    pub fn with_extra(extra: &str) -> Result<Mosquitto> {
        let port = free_port()?;
        let dir = Self::dir_for(port);
        let conf = format!(
            "{}{extra}\n",
            Self::base_conf(port, "allow_anonymous true\n")
        );
        Self::with_conf(port, dir, &conf)
    }

    fn dir_for(port: u16) -> PathBuf {
        std::env::temp_dir().join(format!("edgerun-mosquitto-{}-{port}", std::process::id()))
    }

    fn base_conf(port: u16, access: &str) -> String {
        format!("listener {port} 127.0.0.1\n{access}persistence false\nset_tcp_nodelay true\n")
    }

    /// On a free port, admitting only `users` (name, password), from a password file made
    /// with `mosquitto_passwd`.
    pub fn with_users(users: &[(&str, &str)]) -> Result<Mosquitto> {
        Self::start_with(free_port()?, users)
    }

    fn start_with(port: u16, users: &[(&str, &str)]) -> Result<Mosquitto> {
        let dir = Self::dir_for(port);
        std::fs::create_dir_all(&dir)?;
        let mut access = "allow_anonymous true\n".to_string();
        if !users.is_empty() {
            let passwords = dir.join("passwords");
            std::fs::write(&passwords, "")?;
            for (user, password) in users {
                let made = Command::new("mosquitto_passwd")
                    .arg("-b")
                    .arg(&passwords)
                    .args([user, password])
                    .status()
                    .context("running mosquitto_passwd")?;
                if !made.success() {
                    bail!("mosquitto_passwd failed for {user}");
                }
            }
            access = format!(
                "allow_anonymous false\npassword_file {}\n",
                passwords.display()
            );
        }
        let conf = Self::base_conf(port, &access);
        Self::with_conf(port, dir, &conf)
    }

    /// With the configuration `conf` (written into `dir`, which is removed when dropped),
    /// ready once `port` accepts connections: for listeners of one's own (TLS, several
    /// ports).
    pub fn with_conf(port: u16, dir: PathBuf, conf: &str) -> Result<Mosquitto> {
        std::fs::create_dir_all(&dir)?;
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf)?;
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto (apt-get install mosquitto, or pass --no-mosquitto)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(Mosquitto { addr, child, dir });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("mosquitto did not start on {addr}")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn print_report(report: &MqttBenchReport) {
    println!("MQTT benchmark on {}", report.machine);
    println!(
        "in-process echo (parse + service + serialise): p50 {:.4} ms",
        report.in_process_echo_ms.median_ms
    );
    let mut table = Table::new(&[
        "broker",
        "requests",
        "rtt p50 ms",
        "rtt p99 ms",
        "overhead p50 ms",
    ]);
    for r in &report.round_trips {
        table.row(vec![
            r.broker.clone(),
            r.requests.to_string(),
            format!("{:.3}", r.round_trip.median_ms),
            format!("{:.3}", r.p99_ms),
            format!("{:.3}", r.overhead_p50_ms),
        ]);
    }
    println!("{table}");
    let mut table = Table::new(&[
        "broker",
        "OCR crops",
        "in flight",
        "MQTT crops/s",
        "in-process crops/s",
        "ratio",
    ]);
    for t in &report.throughput {
        table.row(vec![
            t.broker.clone(),
            t.crops.to_string(),
            t.window.to_string(),
            format!("{:.1}", t.mqtt_per_s),
            format!("{:.1}", t.in_process_per_s),
            format!("{:.2}", t.mqtt_per_s / t.in_process_per_s),
        ]);
    }
    println!("{table}");
}
