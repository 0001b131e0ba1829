//! `edgerun bench memory`: what `edgerun serve` keeps resident, measured from outside. For
//! each configuration (each service alone, then all together) the server (this binary,
//! with the same global flags) starts on its embedded broker; its resident set is read from
//! `/proc` when its status first says `online`, then a mixed stream of the services'
//! benchmark requests runs with a few in flight, and the resident set and its peak are read
//! again. A soak (`--soak-minutes`) streams for a given time instead and reports how far
//! the resident set grew after its first minute. Nothing here serves; it only starts, asks
//! and reads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::server::{DEVICE, Server, ServerSpec};
use super::{Machine, Table, write_json};
use edgerun_runtime::mqtt::client::Reply;
use edgerun_runtime::profiler::Sample;
use edgerun_runtime::telemetry::{Resident, resident};

#[derive(Debug, Clone)]
pub struct MemorySettings {
    /// Each entry is one server's `--services`.
    pub configurations: Vec<Vec<String>>,
    /// How long each configuration streams.
    pub length: StreamLength,
    /// Requests in flight at once.
    pub in_flight: usize,
    /// Extra `serve` flags (`--no-adapt`, say).
    pub serve_args: Vec<String>,
    /// The profile cache the servers adapt from (measured into on the first run).
    pub profile: PathBuf,
    pub global_args: Vec<String>,
    pub out: PathBuf,
}

/// How long a server is asked.
#[derive(Debug, Clone, Copy)]
pub enum StreamLength {
    /// This many requests, cycled through its services' samples.
    Requests(usize),
    /// As many as fit in this time (a soak).
    Lasting(Duration),
}

/// How long the server idles after the stream before the resident set is read again.
const SETTLE: Duration = Duration::from_secs(1);

/// How often the resident set is read during a stream.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Memory that grows in the first minute is warm-up (allocator arenas, plan caches,
/// the answer cache filling); growth is measured from there.
pub const WARM_UP_S: f64 = 60.0;

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
    /// The part of it mapped from files (the binary's code and constants), MiB: shared
    /// and clean, so the kernel can drop it under pressure; the rest is the heap.
    pub after_file_mib: f64,
    /// Peak resident set over the whole run, MiB.
    pub peak_rss_mib: f64,
    pub requests: usize,
    /// Requests answered with a result.
    pub answered: usize,
    /// Error answers by code (including `busy`) and unanswered ones (`lost`).
    pub errors: HashMap<String, usize>,
    /// Seconds into the stream and the resident set then, MiB, every few seconds.
    pub timeline: Vec<(f64, f64)>,
    /// How far the resident set grew from the first reading after the warm-up to the end,
    /// percent; absent when the stream was shorter than twice the warm-up.
    pub growth_after_warm_up_pct: Option<f64>,
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

/// Growth from the first reading at or after `warm_up_s` to the last, percent; `None` when
/// the timeline does not reach twice the warm-up.
pub fn growth_after_warm_up(timeline: &[(f64, f64)], warm_up_s: f64) -> Option<f64> {
    let &(end_s, end) = timeline.last()?;
    if end_s < 2.0 * warm_up_s {
        return None;
    }
    let &(_, start) = timeline.iter().find(|(s, _)| *s >= warm_up_s)?;
    Some(100.0 * (end - start) / start)
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
    let watcher = server.until_online("memory-watch").await?;
    let online_after_s = started.elapsed().as_secs_f64();
    let read = || resident(Some(server.pid())).context("reading the server's memory");
    let ready: Resident = read()?;
    let mut client = server.connect("memory-client").await?;
    let (mut answered, mut errors) = (0, HashMap::<String, usize>::new());
    let mut waiting = std::collections::HashSet::new();
    let mut sent = 0;
    let streaming = Instant::now();
    let mut timeline = vec![(0.0, mib(read()?.rss_kib))];
    let more = |sent: usize| match settings.length {
        StreamLength::Requests(n) => sent < n,
        StreamLength::Lasting(d) => streaming.elapsed() < d,
    };
    while more(sent) || !waiting.is_empty() {
        if streaming.elapsed().as_secs_f64() >= timeline.len() as f64 * SAMPLE_EVERY.as_secs_f64() {
            timeline.push((streaming.elapsed().as_secs_f64(), mib(read()?.rss_kib)));
        }
        while more(sent) && waiting.len() < settings.in_flight {
            let (service, sample) = stream[sent % stream.len()];
            let payload = sample.wire_bytes();
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
    // The server's workers go idle after the last answer; read once they have.
    tokio::time::sleep(SETTLE).await;
    let after = read()?;
    timeline.push((streaming.elapsed().as_secs_f64(), mib(after.rss_kib)));
    client.disconnect().await;
    watcher.disconnect().await;
    server.stop();
    Ok(MemoryRun {
        services: services.to_vec(),
        online_after_s,
        ready_rss_mib: mib(ready.rss_kib),
        after_rss_mib: mib(after.rss_kib),
        after_file_mib: mib(after.file_kib),
        peak_rss_mib: mib(after.peak_kib),
        requests: sent,
        answered,
        errors,
        growth_after_warm_up_pct: growth_after_warm_up(&timeline, WARM_UP_S),
        timeline,
    })
}

pub fn report_text(report: &MemoryReport) -> String {
    let mut table = Table::new(&[
        "services",
        "online s",
        "RSS ready MiB",
        "RSS after MiB",
        "of it files MiB",
        "peak MiB",
        "growth after 1 min",
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
            format!("{:.0}", run.after_file_mib),
            format!("{:.0}", run.peak_rss_mib),
            run.growth_after_warm_up_pct
                .map_or("-".into(), |g| format!("{g:+.1}%")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_measured_from_the_end_of_the_warm_up() {
        let timeline = [
            (0.0, 100.0),
            (30.0, 180.0),
            (60.0, 200.0),
            (90.0, 205.0),
            (125.0, 210.0),
        ];
        let growth = growth_after_warm_up(&timeline, 60.0).unwrap();
        assert!((growth - 5.0).abs() < 1e-9, "{growth}");
        assert_eq!(
            growth_after_warm_up(&timeline[..4], 60.0),
            None,
            "too short"
        );
        assert_eq!(growth_after_warm_up(&[], 60.0), None);
    }
}
