//! `edgerun bench adapt --service NAME`: the shipped server in a closed loop on this
//! machine, measured at the client.
//!
//! Each run starts `edgerun serve` (this binary, with the same global flags) on its
//! embedded broker, as a user would, and sends it one request after another over MQTT v5
//! with a response topic and correlation data, timing each from publish to answer. A CPU
//! hog (a child process spinning threads) starts and stops in the middle. The same
//! schedule runs three times: adaptive (the server chooses), every request pinned to the
//! best point (fixed-largest) and to the cheapest (fixed-smallest). Before the runs a
//! server starts from the given profile cache and the time until it is adaptive is
//! measured: with an empty cache, that is the zero-configuration start-up. Each run
//! reports the share of requests within the SLO (overall and while the hog ran), the mean
//! quality of the points that answered, the switches, and what the server's decisions
//! cost (from its telemetry). Nothing here decides or serves: that is the server's job.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::server::{DEVICE, Server, ServerSpec, policy_of};
use super::{Machine, Table, write_json};
use crate::plot::{Timeline, TimelineRun, TimelineSample, timeline_svg};
use edgerun_runtime::latency::LatencyStats;
use edgerun_runtime::models::PointSet;
use edgerun_runtime::mqtt::client::{Reply, RequestClient};
use edgerun_runtime::profiler::Sample;
use edgerun_runtime::services::Payload;
use edgerun_runtime::telemetry::{Monitor, Sampler};

#[derive(Debug, Clone)]
pub struct AdaptBenchSettings {
    pub service: String,
    /// Length of each run.
    pub duration: Duration,
    /// When the hog starts and stops, from the start of a run.
    pub hog: (Duration, Duration),
    /// Spinning threads of the hog.
    pub hog_threads: usize,
    /// The latency target given to the server (`--slo`); `None`: the manifest's.
    pub slo_ms: Option<f64>,
    /// The profile cache the servers keep their measurements in.
    pub profile: PathBuf,
    /// Global flags the servers are started with (threads, engine, models).
    pub global_args: Vec<String>,
    /// How long the first server may take to become adaptive.
    pub adaptive_within: Duration,
    pub out: PathBuf,
    pub svg: PathBuf,
}

/// One strategy's run.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptRun {
    pub strategy: String,
    pub requests: usize,
    /// Requests that got an error answer (or none in time); they count as late.
    pub failed: usize,
    pub within_slo: f64,
    pub within_slo_during_hog: f64,
    pub within_slo_without_hog: f64,
    pub mean_quality: f64,
    pub mean_quality_during_hog: f64,
    /// Changes of the point decided between consecutive requests.
    pub switches: usize,
    /// Requests that stepped down mid-request to meet the SLO.
    pub stepped_down: usize,
    pub switches_per_minute: f64,
    pub latency: LatencyStats,
    /// What the server's decisions cost per request (decide and observe), from its
    /// telemetry at the end of the run.
    pub decision_us: Option<DecisionCost>,
    /// Requests served per point name.
    pub served: Vec<(String, usize)>,
    pub timeline: Vec<RequestRecord>,
}

/// The server's decision cost, in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionCost {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// When the request was published, from the start of the run.
    pub t_s: f64,
    /// Publish to answer, at the client.
    pub latency_ms: f64,
    /// The point that answered (`None` for an error).
    pub point: Option<String>,
    /// The point decided, where the request stepped down from it.
    pub stepped_down_from: Option<String>,
    /// Why the server chose the point (`steady`, `overload`, `pinned`, ...).
    pub reason: Option<String>,
    /// The error code, for a failed request.
    pub error: Option<String>,
    pub cpu_load: Option<f64>,
    pub hog: bool,
    /// Threads the engine ran the request with.
    pub threads: Option<usize>,
}

impl RequestRecord {
    /// The point the server decided on.
    fn decided(&self) -> Option<&str> {
        self.stepped_down_from.as_deref().or(self.point.as_deref())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AdaptReport {
    pub machine: Machine,
    pub service: String,
    pub slo_ms: f64,
    pub duration_s: f64,
    pub hog_s: (f64, f64),
    pub hog_threads: usize,
    /// Threads the engine is configured with (a request records the threads it ran with).
    pub engine_threads: Option<usize>,
    /// Seconds from starting the first server to its status saying adaptive, and why it
    /// was not at once (no profile, another build, ...), if it was not.
    pub adaptive_after_s: f64,
    pub measured_because: Option<String>,
    /// The points the controller chose among, cheapest first.
    pub candidates: Vec<String>,
    pub runs: Vec<AdaptRun>,
}

/// How a run's requests pick their points.
#[derive(Debug, Clone)]
enum Strategy {
    Adaptive,
    Pinned(String),
}

/// Runs the three strategies on `samples` (cycled), judged by the SLO the server reports.
pub fn run(
    samples: &[Sample],
    points: &PointSet,
    settings: &AdaptBenchSettings,
) -> Result<AdaptReport> {
    anyhow::ensure!(!samples.is_empty(), "no sample requests");
    let machine = Machine::current();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    eprintln!(
        "machine: {machine}; starting {} until adaptive...",
        settings.service
    );
    let started = Instant::now();
    let (first, status, measured_because) = tokio.block_on(start_adaptive(settings))?;
    let adaptive_after_s = started.elapsed().as_secs_f64();
    first.stop();
    let policy = policy_of(&status, &settings.service);
    let slo_ms = policy["slo_ms"]
        .as_f64()
        .context("the status names no slo_ms")?;
    let candidates: Vec<String> = serde_json::from_value(policy["candidates"].clone())
        .context("the status names no candidates")?;
    let (cheapest, best) = match (candidates.first(), candidates.last()) {
        (Some(c), Some(b)) => (c.clone(), b.clone()),
        _ => anyhow::bail!("the controller has no candidates"),
    };
    eprintln!(
        "adaptive after {adaptive_after_s:.1} s; SLO {slo_ms:.0} ms; candidates {candidates:?}"
    );
    let mut runs = Vec::new();
    for (label, strategy) in [
        ("adaptive", Strategy::Adaptive),
        ("fixed-largest", Strategy::Pinned(best)),
        ("fixed-smallest", Strategy::Pinned(cheapest)),
    ] {
        eprintln!("{label}: {:.0} s...", settings.duration.as_secs_f64());
        let run = tokio.block_on(run_one(label, &strategy, samples, points, slo_ms, settings))?;
        runs.push(run);
        // Let the machine calm down before the next run.
        std::thread::sleep(Duration::from_secs(2));
    }
    let engine_threads = policy_of(&status, &settings.service)["threads"]
        .as_u64()
        .map(|t| t as usize);
    let report = AdaptReport {
        machine,
        service: settings.service.clone(),
        slo_ms,
        duration_s: settings.duration.as_secs_f64(),
        hog_s: (settings.hog.0.as_secs_f64(), settings.hog.1.as_secs_f64()),
        hog_threads: settings.hog_threads,
        engine_threads,
        adaptive_after_s,
        measured_because,
        candidates,
        runs,
    };
    print!("{}", report_text(&report));
    write_json(&settings.out, &report)?;
    draw(&report, &settings.svg)?;
    eprintln!(
        "wrote {} and {}",
        settings.out.display(),
        settings.svg.display()
    );
    Ok(report)
}

/// Starts a server as `settings` say and waits until its status says the service is
/// adaptive; returns it with that status, and why it measured first (if it did).
async fn start_adaptive(settings: &AdaptBenchSettings) -> Result<(Server, Value, Option<String>)> {
    let spec = ServerSpec {
        services: settings.service.clone(),
        slo: settings
            .slo_ms
            .map(|ms| format!("{}={ms}", settings.service)),
        profile: settings.profile.clone(),
        global_args: settings.global_args.clone(),
        serve_args: Vec::new(),
        // The servers' logs go beside the report, for when a run looks wrong.
        log: settings.out.with_extension("serve.log"),
    };
    let server = Server::spawn(&spec)?;
    let mut watcher = server.watch("bench-watch", "status").await?;
    let deadline = Instant::now() + settings.adaptive_within;
    let mut measured_because = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, status) = watcher
            .next_answer(left)
            .await
            .with_context(|| format!("not adaptive within {:?}", settings.adaptive_within))?;
        let policy = policy_of(&status, &settings.service);
        if status["online"] != true {
            continue;
        }
        if policy["adaptive"] == true {
            watcher.disconnect().await;
            return Ok((server, status, measured_because));
        }
        if measured_because.is_none() {
            measured_because = policy["why"].as_str().map(str::to_string);
        }
    }
}

async fn run_one(
    label: &str,
    strategy: &Strategy,
    samples: &[Sample],
    points: &PointSet,
    slo_ms: f64,
    settings: &AdaptBenchSettings,
) -> Result<AdaptRun> {
    let (server, _, _) = start_adaptive(settings).await?;
    let mut client = server.connect(&format!("bench-{label}")).await?;
    let watcher = server
        .watch(&format!("bench-{label}-telemetry"), "telemetry")
        .await?;
    let monitor = Monitor::start(Sampler::live(), Duration::from_millis(250));
    let topic = format!("edgerun/{DEVICE}/{}/request", settings.service);
    // Answers later than this count as lost (and late).
    let patience = Duration::from_secs_f64((slo_ms * 20.0 / 1e3).max(10.0));
    let start = Instant::now();
    let mut hog: Option<Child> = None;
    let mut records = Vec::new();
    let result: Result<()> = async {
        let mut next = 0usize;
        while start.elapsed() < settings.duration {
            let t = start.elapsed();
            let in_hog = t >= settings.hog.0 && t < settings.hog.1;
            match (&mut hog, in_hog) {
                (None, true) => hog = Some(start_hog(settings.hog_threads)?),
                (Some(child), false) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    hog = None;
                }
                _ => {}
            }
            let sample = &samples[next % samples.len()];
            let id = next.to_string();
            next += 1;
            let (payload, properties) = request_bytes(sample, strategy);
            let sent = Instant::now();
            client
                .send_with(
                    &topic,
                    &id,
                    payload,
                    sample.content_type.as_deref(),
                    properties,
                )
                .await?;
            let answer = loop {
                match client
                    .next_answer(patience.saturating_sub(sent.elapsed()))
                    .await
                {
                    Some((answer_id, body)) if answer_id == id => break Some(body),
                    Some(_) => continue, // a late answer to an earlier request
                    None => break None,
                }
            };
            let latency_ms = sent.elapsed().as_secs_f64() * 1e3;
            let reply = answer.as_ref().map(Reply::of);
            records.push(RequestRecord {
                t_s: t.as_secs_f64(),
                latency_ms,
                point: reply.as_ref().and_then(|r| r.point.clone()),
                stepped_down_from: reply.as_ref().and_then(|r| r.stepped_down_from.clone()),
                reason: reply.as_ref().and_then(|r| r.reason().map(str::to_string)),
                error: match &reply {
                    None => Some("no answer".into()),
                    Some(r) => r.error.as_ref().map(|e| e.code.clone()),
                },
                cpu_load: monitor.latest().cpu.utilisation,
                hog: in_hog,
                threads: reply.as_ref().and_then(|r| r.policy.as_ref()?.threads),
            });
        }
        Ok(())
    }
    .await;
    if let Some(mut child) = hog {
        let _ = child.kill();
        let _ = child.wait();
    }
    result?;
    let decision_us = last_decision_cost(watcher, &settings.service).await;
    client.disconnect().await;
    server.stop();
    Ok(summarise(
        label,
        records,
        points,
        slo_ms,
        settings,
        decision_us,
    ))
}

/// The request as published: a JSON sample gets the pin as its `point` field, a raw one
/// as a user property.
fn request_bytes(sample: &Sample, strategy: &Strategy) -> (Vec<u8>, Vec<(String, String)>) {
    let pin = match strategy {
        Strategy::Adaptive => None,
        Strategy::Pinned(point) => Some(point.clone()),
    };
    match &sample.payload {
        Payload::Json(value) => {
            let mut value = value.clone();
            if let (Some(point), Value::Object(map)) = (&pin, &mut value) {
                map.insert("point".into(), point.clone().into());
            }
            (
                serde_json::to_vec(&value).expect("JSON serialises"),
                Vec::new(),
            )
        }
        Payload::Raw(bytes) => {
            let properties = pin.map(|p| ("point".to_string(), p)).into_iter().collect();
            (bytes.to_vec(), properties)
        }
    }
}

/// The decision cost in the server's latest telemetry (published every second).
async fn last_decision_cost(mut watcher: RequestClient, service: &str) -> Option<DecisionCost> {
    let mut latest = None;
    let until = Instant::now() + Duration::from_millis(2500);
    while let Some((_, telemetry)) = watcher
        .next_answer(until.saturating_duration_since(Instant::now()))
        .await
    {
        let cost = telemetry["services"][service]["decision_us"].clone();
        if let Ok(cost) = serde_json::from_value::<DecisionCost>(cost) {
            latest = Some(cost);
        }
    }
    watcher.disconnect().await;
    latest
}

fn summarise(
    label: &str,
    records: Vec<RequestRecord>,
    points: &PointSet,
    slo_ms: f64,
    settings: &AdaptBenchSettings,
    decision_us: Option<DecisionCost>,
) -> AdaptRun {
    let within = |r: &RequestRecord| r.error.is_none() && r.latency_ms <= slo_ms;
    let share_within = |filter: &dyn Fn(&RequestRecord) -> bool| {
        let chosen: Vec<&RequestRecord> = records.iter().filter(|r| filter(r)).collect();
        chosen.iter().filter(|r| within(r)).count() as f64 / chosen.len().max(1) as f64
    };
    let mean_quality = |filter: &dyn Fn(&RequestRecord) -> bool| {
        let qualities: Vec<f64> = records
            .iter()
            .filter(|r| filter(r))
            .filter_map(|r| points.quality(r.point.as_deref()?))
            .collect();
        qualities.iter().sum::<f64>() / qualities.len().max(1) as f64
    };
    let switches = records
        .windows(2)
        .filter(|w| w[0].decided() != w[1].decided())
        .count();
    let mut served: Vec<(String, usize)> = Vec::new();
    for point in records.iter().filter_map(|r| r.point.as_ref()) {
        match served.iter_mut().find(|(name, _)| name == point) {
            Some((_, n)) => *n += 1,
            None => served.push((point.clone(), 1)),
        }
    }
    let latencies: Vec<f64> = records.iter().map(|r| r.latency_ms).collect();
    AdaptRun {
        strategy: label.to_string(),
        requests: records.len(),
        failed: records.iter().filter(|r| r.error.is_some()).count(),
        within_slo: share_within(&|_| true),
        within_slo_during_hog: share_within(&|r| r.hog),
        within_slo_without_hog: share_within(&|r| !r.hog),
        mean_quality: mean_quality(&|_| true),
        mean_quality_during_hog: mean_quality(&|r| r.hog),
        switches,
        stepped_down: records
            .iter()
            .filter(|r| r.stepped_down_from.is_some())
            .count(),
        switches_per_minute: switches as f64 / (settings.duration.as_secs_f64() / 60.0),
        latency: LatencyStats::of(&latencies),
        decision_us,
        served,
        timeline: records,
    }
}

/// Starts the hog: this binary's hidden `bench burn`, a separate process so that telemetry
/// sees it as other load, as it would a neighbour on a real device.
fn start_hog(threads: usize) -> Result<Child> {
    let exe = std::env::current_exe().context("finding this binary to start the CPU hog")?;
    Command::new(exe)
        .args(["bench", "burn", "--threads", &threads.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .context("starting the CPU hog")
}

/// `bench burn`: spins `threads` threads until killed (or `seconds` pass).
pub fn burn(threads: usize, seconds: f64) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads.max(1))
        .map(|i| {
            std::thread::spawn(move || {
                let mut x = 1.0f64 + i as f64;
                while Instant::now() < until {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x * 1.000_000_1 + 1e-9);
                    }
                }
                x
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

pub fn report_text(report: &AdaptReport) -> String {
    let mut table = Table::new(&[
        "strategy",
        "requests",
        "failed",
        "within SLO",
        "during hog",
        "without hog",
        "mean quality",
        "during hog",
        "stepped down",
        "switches/min",
        "p50 ms",
        "p95 ms",
        "decide µs p50/p99",
    ]);
    for run in &report.runs {
        table.row(vec![
            run.strategy.clone(),
            run.requests.to_string(),
            run.failed.to_string(),
            format!("{:.1}%", run.within_slo * 100.0),
            format!("{:.1}%", run.within_slo_during_hog * 100.0),
            format!("{:.1}%", run.within_slo_without_hog * 100.0),
            format!("{:.4}", run.mean_quality),
            format!("{:.4}", run.mean_quality_during_hog),
            format!(
                "{:.1}%",
                100.0 * run.stepped_down as f64 / run.requests.max(1) as f64
            ),
            format!("{:.1}", run.switches_per_minute),
            format!("{:.0}", run.latency.median_ms),
            format!("{:.0}", run.latency.p95_ms),
            run.decision_us
                .as_ref()
                .map_or("-".into(), |d| format!("{:.1}/{:.1}", d.p50, d.p99)),
        ]);
    }
    let largest = report.runs.iter().find(|r| r.strategy == "fixed-largest");
    let adaptive = report.runs.iter().find(|r| r.strategy == "adaptive");
    let ratio = match (adaptive, largest) {
        (Some(a), Some(l)) if l.mean_quality_during_hog > 0.0 => format!(
            "\nadaptive's quality under the hog: {:.3} of fixed-largest's\n",
            a.mean_quality_during_hog / l.mean_quality_during_hog
        ),
        _ => String::new(),
    };
    format!(
        "machine: {}\n{}: SLO {:.0} ms (at the client), hog {:.0}-{:.0} s of {:.0} s ({} threads); adaptive {:.1} s after start\n{table}{ratio}",
        report.machine,
        report.service,
        report.slo_ms,
        report.hog_s.0,
        report.hog_s.1,
        report.duration_s,
        report.hog_threads,
        report.adaptive_after_s,
    )
}

fn draw(report: &AdaptReport, path: &std::path::Path) -> Result<()> {
    // Pinned points off the front still get a row on the chart.
    let mut names: Vec<String> = report.candidates.clone();
    for run in &report.runs {
        for (name, _) in &run.served {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    let configured = report.engine_threads.unwrap_or(1);
    let runs: Vec<TimelineRun> = report
        .runs
        .iter()
        .map(|run| TimelineRun {
            label: run.strategy.clone(),
            samples: run
                .timeline
                .iter()
                .map(|r| TimelineSample {
                    t_s: r.t_s,
                    latency_ms: r.latency_ms,
                    point: r
                        .point
                        .as_ref()
                        .and_then(|p| names.iter().position(|n| n == p))
                        .unwrap_or(0),
                    cpu_load: r.cpu_load,
                    fewer_threads: r.threads.is_some_and(|t| t < configured),
                })
                .collect(),
        })
        .collect();
    timeline_svg(
        path,
        &Timeline {
            title: &format!(
                "{} under a CPU hog: adaptive vs fixed points",
                report.service
            ),
            slo_ms: report.slo_ms,
            point_names: &names,
            runs: &runs,
            shaded: &[report.hog_s],
            shaded_label: "CPU hog",
        },
    )
}
