//! `edgerun bench memory`: what `edgerun serve` keeps resident, measured from outside. For
//! each configuration (each service alone, then all together) the server (this binary,
//! with the same global flags) starts on its embedded broker; its resident set is read from
//! `/proc` when its status first says `online`, then a mixed stream of the services'
//! benchmark requests runs with a few in flight, and the resident set and its peak are read
//! again. Nothing here serves; it only starts, asks and reads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::server::{DEVICE, Server, ServerSpec};
use super::{Machine, Table, write_json};
use edgerun_runtime::mqtt::client::Reply;
use edgerun_runtime::profiler::Sample;
use edgerun_runtime::services::Payload;
use edgerun_runtime::telemetry::{Resident, resident};

#[derive(Debug, Clone)]
pub struct MemorySettings {
    /// Each entry is one server's `--services`.
    pub configurations: Vec<Vec<String>>,
    /// Requests per configuration, cycled through its services' samples.
    pub requests: usize,
    /// Requests in flight at once.
    pub in_flight: usize,
    /// Extra `serve` flags (`--no-adapt`, say).
    pub serve_args: Vec<String>,
    /// The profile cache the servers adapt from (measured into on the first run).
    pub profile: PathBuf,
    pub global_args: Vec<String>,
    pub out: PathBuf,
}

/// One server's memory.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryRun {
    pub services: Vec<String>,
    /// Seconds from starting the server to its first `online` status.
    pub online_after_s: f64,
    /// Resident set at `online`, MiB.
    pub ready_rss_mib: f64,
    /// Resident set after the stream, MiB.
    pub after_rss_mib: f64,
    /// Peak resident set over the whole run, MiB.
    pub peak_rss_mib: f64,
    pub requests: usize,
    /// Requests answered with a result.
    pub answered: usize,
    /// Error answers by code (including `busy`) and unanswered ones (`lost`).
    pub errors: HashMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub machine: Machine,
    pub in_flight: usize,
    pub serve_args: Vec<String>,
    pub runs: Vec<MemoryRun>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs every configuration; `samples` holds each service's requests.
pub fn run(
    samples: &HashMap<String, Vec<Sample>>,
    settings: &MemorySettings,
) -> Result<MemoryReport> {
    let machine = Machine::current();
    eprintln!("machine: {machine}");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for services in &settings.configurations {
        eprintln!("serving {}", services.join(","));
        runs.push(tokio.block_on(measure(samples, services, settings))?);
    }
    let report = MemoryReport {
        machine,
        in_flight: settings.in_flight,
        serve_args: settings.serve_args.clone(),
        runs,
    };
    print!("{}", report_text(&report));
    write_json(&settings.out, &report)?;
    eprintln!("wrote {}", settings.out.display());
    Ok(report)
}

async fn measure(
    samples: &HashMap<String, Vec<Sample>>,
    services: &[String],
    settings: &MemorySettings,
) -> Result<MemoryRun> {
    // One request of each service in turn.
    let per_service: Vec<&Vec<Sample>> = services
        .iter()
        .map(|s| {
            samples
                .get(s)
                .with_context(|| format!("no requests for {s}"))
        })
        .collect::<Result<_>>()?;
    let longest = per_service.iter().map(|s| s.len()).max().unwrap_or(0);
    let stream: Vec<(&str, &Sample)> = (0..longest)
        .flat_map(|i| {
            services
                .iter()
                .zip(&per_service)
                .filter_map(move |(name, s)| s.get(i).map(|sample| (name.as_str(), sample)))
        })
        .collect();
    anyhow::ensure!(!stream.is_empty(), "no requests for {}", services.join(","));
    let spec = ServerSpec {
        services: services.join(","),
        slo: None,
        profile: settings.profile.clone(),
        global_args: settings.global_args.clone(),
        serve_args: settings.serve_args.clone(),
        log: settings.out.with_extension("serve.log"),
    };
    let started = Instant::now();
    let server = Server::spawn(&spec)?;
    let mut watcher = server.watch("memory-watch", "status").await?;
    let online_after_s = loop {
        let status = watcher
            .next_answer(Duration::from_secs(120))
            .await
            .context("the server never said online")?
            .1;
        if status["online"] == true {
            break started.elapsed().as_secs_f64();
        }
    };
    let read = || resident(Some(server.pid())).context("reading the server's memory");
    let ready: Resident = read()?;
    let mut client = server.connect("memory-client").await?;
    let (mut answered, mut errors) = (0, HashMap::<String, usize>::new());
    let mut waiting = std::collections::HashSet::new();
    let mut sent = 0;
    while sent < settings.requests || !waiting.is_empty() {
        while sent < settings.requests && waiting.len() < settings.in_flight {
            let (service, sample) = stream[sent % stream.len()];
            let payload = match &sample.payload {
                Payload::Json(value) => serde_json::to_vec(value)?,
                Payload::Raw(bytes) => bytes.to_vec(),
            };
            let id = sent.to_string();
            let topic = format!("edgerun/{DEVICE}/{service}/request");
            client
                .send(&topic, &id, payload, sample.content_type.as_deref(), None)
                .await?;
            waiting.insert(id);
            sent += 1;
        }
        match client.next_answer(Duration::from_secs(120)).await {
            Some((id, body)) => {
                if !waiting.remove(&id) {
                    continue;
                }
                match Reply::of(&body).error {
                    Some(error) => *errors.entry(error.code).or_default() += 1,
                    None => answered += 1,
                }
            }
            None => {
                *errors.entry("lost".into()).or_default() += waiting.len();
                break;
            }
        }
    }
    let after = read()?;
    client.disconnect().await;
    watcher.disconnect().await;
    server.stop();
    Ok(MemoryRun {
        services: services.to_vec(),
        online_after_s,
        ready_rss_mib: mib(ready.rss_kib),
        after_rss_mib: mib(after.rss_kib),
        peak_rss_mib: mib(after.peak_kib),
        requests: sent,
        answered,
        errors,
    })
}

pub fn report_text(report: &MemoryReport) -> String {
    let mut table = Table::new(&[
        "services",
        "online s",
        "RSS ready MiB",
        "RSS after MiB",
        "peak MiB",
        "answered",
        "errors",
    ]);
    for run in &report.runs {
        let mut errors: Vec<String> = run.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
        errors.sort();
        table.row(vec![
            run.services.join(","),
            format!("{:.2}", run.online_after_s),
            format!("{:.0}", run.ready_rss_mib),
            format!("{:.0}", run.after_rss_mib),
            format!("{:.0}", run.peak_rss_mib),
            format!("{}/{}", run.answered, run.requests),
            if errors.is_empty() {
                "-".into()
            } else {
                errors.join(", ")
            },
        ]);
    }
    format!(
        "memory of edgerun serve, {} in flight{}\n{table}",
        report.in_flight,
        if report.serve_args.is_empty() {
            String::new()
        } else {
            format!(", serve {}", report.serve_args.join(" "))
        }
    )
}
