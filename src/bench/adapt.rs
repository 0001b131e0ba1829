//! `edgerun bench adapt`: the controller in a closed loop on this machine.
//!
//! A stream of OCR requests (one after another, ICDAR 2015 scenes) runs for a fixed time
//! while a CPU hog (a child process spinning on every core) starts and stops in the middle.
//! The same schedule runs three times: with the adaptive controller, pinned to the best
//! point (fixed-largest) and pinned to the cheapest (fixed-smallest). Adaptive requests are
//! due at the SLO, so a service that steps down mid-request to meet it (OCR) does, and the
//! point it stepped down to is what counts. Each run reports the share of requests within
//! the SLO (overall and while the hog ran), the mean quality of the points served, the
//! switches, and what the controller's decisions cost.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Machine, Table, write_json};
use crate::latency::{LatencyStats, percentile};
use crate::plot::{Timeline, TimelineRun, TimelineSample, timeline_svg};
use crate::policy::{Conditions, Controller, Planning, PolicyConfig, ProfiledPoint, RequestPolicy};
use crate::profiler::Sample;
use crate::serve::ThreadUse;
use crate::services::{Service, Serving};
use crate::telemetry::{Monitor, Sampler};

#[derive(Debug, Clone)]
pub struct AdaptBenchSettings {
    /// Length of each run.
    pub duration: Duration,
    /// When the hog starts and stops, from the start of a run.
    pub hog: (Duration, Duration),
    /// Spinning threads of the hog.
    pub hog_threads: usize,
    /// The controller's settings (its SLO is the target every run is judged by).
    pub policy: PolicyConfig,
    /// The engine's threads, and whether they follow the CPU load as in `serve`.
    pub threads: ThreadUse,
    /// Requests the service runs at once.
    pub workers: usize,
    pub out: PathBuf,
    pub svg: PathBuf,
}

/// One strategy's run.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptRun {
    pub strategy: String,
    pub requests: usize,
    pub within_slo: f64,
    pub within_slo_during_hog: f64,
    pub within_slo_without_hog: f64,
    pub mean_quality: f64,
    pub mean_quality_during_hog: f64,
    /// Point changes between consecutive requests (of the point decided, not of the one a
    /// request stepped down to).
    pub switches: usize,
    /// Requests that stepped down mid-request to meet the SLO.
    pub stepped_down: usize,
    pub switches_per_minute: f64,
    pub latency: LatencyStats,
    /// Time spent choosing (telemetry to conditions, decide, observe), per request.
    pub decision_cost: Option<DecisionCost>,
    /// Requests served per point name.
    pub served: Vec<(String, usize)>,
    pub timeline: Vec<RequestRecord>,
}

/// What the controller costs per request, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionCost {
    pub median_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl DecisionCost {
    fn of(samples_us: &[f64]) -> Option<DecisionCost> {
        let mut sorted = samples_us.to_vec();
        sorted.sort_by(f64::total_cmp);
        let max_us = *sorted.last()?;
        Some(DecisionCost {
            median_us: percentile(&sorted, 50.0),
            p99_us: percentile(&sorted, 99.0),
            max_us,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub t_s: f64,
    pub latency_ms: f64,
    /// The point that served the request.
    pub point: String,
    /// The point decided, where the request stepped down from it.
    pub stepped_down_from: Option<String>,
    pub cpu_load: Option<f64>,
    pub hog: bool,
    /// Adaptive runs: the telemetry factor and the learned slowdown when it was chosen.
    pub conditions: Option<f64>,
    pub slowdown: Option<f64>,
    /// Threads the engine ran the request with.
    pub threads: usize,
}

impl RequestRecord {
    /// The point the controller decided on.
    fn decided(&self) -> &str {
        self.stepped_down_from.as_deref().unwrap_or(&self.point)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AdaptReport {
    pub machine: Machine,
    pub slo_ms: f64,
    pub policy: PolicyConfig,
    pub duration_s: f64,
    pub hog_s: (f64, f64),
    pub hog_threads: usize,
    /// Threads the engine is configured with (a request records the threads it ran with).
    pub engine_threads: usize,
    pub points: Vec<ProfiledPoint>,
    pub runs: Vec<AdaptRun>,
}

/// How a run picks its points.
enum Strategy {
    Adaptive,
    Fixed(String),
}

/// Runs the three strategies on `service` with `samples` and the profiled `points`.
pub fn run(
    service: &dyn Service,
    samples: &[Sample],
    points: &[ProfiledPoint],
    settings: &AdaptBenchSettings,
) -> Result<AdaptReport> {
    anyhow::ensure!(!samples.is_empty(), "no sample requests");
    let planning = Planning::for_service(service.meets_deadlines());
    let probe = Controller::new(
        settings.policy.clone(),
        points.to_vec(),
        planning,
        Instant::now(),
    )?;
    let candidates = probe.state().candidates;
    let (cheapest, best) = (
        candidates
            .first()
            .cloned()
            .expect("a controller has points"),
        candidates.last().cloned().expect("a controller has points"),
    );
    let machine = Machine::current();
    eprintln!(
        "machine: {machine}; SLO {:.0} ms; candidates {candidates:?}",
        settings.policy.slo_ms
    );
    let mut runs = Vec::new();
    for (label, strategy) in [
        ("adaptive", Strategy::Adaptive),
        ("fixed-largest", Strategy::Fixed(best.clone())),
        ("fixed-smallest", Strategy::Fixed(cheapest.clone())),
    ] {
        eprintln!("{label}: {:.0} s...", settings.duration.as_secs_f64());
        runs.push(run_one(
            label, &strategy, service, samples, points, settings,
        )?);
    }
    let report = AdaptReport {
        machine,
        slo_ms: settings.policy.slo_ms,
        policy: settings.policy.clone(),
        duration_s: settings.duration.as_secs_f64(),
        hog_s: (settings.hog.0.as_secs_f64(), settings.hog.1.as_secs_f64()),
        hog_threads: settings.hog_threads,
        engine_threads: settings.threads.configured,
        points: points.to_vec(),
        runs,
    };
    print!("{}", report_text(&report));
    write_json(&settings.out, &report)?;
    draw(&report, &candidates, &settings.svg)?;
    eprintln!(
        "wrote {} and {}",
        settings.out.display(),
        settings.svg.display()
    );
    Ok(report)
}

fn run_one(
    label: &str,
    strategy: &Strategy,
    service: &dyn Service,
    samples: &[Sample],
    points: &[ProfiledPoint],
    settings: &AdaptBenchSettings,
) -> Result<AdaptRun> {
    let quality = |name: &str| points.iter().find(|p| p.name == name).map(|p| p.quality);
    let monitor = Monitor::start(Sampler::live(), Duration::from_millis(250));
    let start = Instant::now();
    let planning = Planning::for_service(service.meets_deadlines());
    let mut controller =
        Controller::new(settings.policy.clone(), points.to_vec(), planning, start)?;
    let mut hog: Option<Child> = None;
    let mut records = Vec::new();
    let mut decision_us = Vec::new();
    let mut next = 0usize;
    let result = (|| -> Result<()> {
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
            next += 1;
            let chosen = Instant::now();
            // Every strategy runs on the same runtime, so fixed points follow the load too.
            let snapshot = monitor.latest();
            let threads = settings.threads.follow(&snapshot.cpu);
            let point = match strategy {
                Strategy::Adaptive => {
                    controller.set_conditions(Conditions::from_snapshot(
                        &snapshot,
                        threads,
                        settings.threads.configured,
                        settings.workers,
                    ));
                    controller.decide(&RequestPolicy::default(), chosen)?.point
                }
                Strategy::Fixed(name) => name.clone(),
            };
            let choosing = chosen.elapsed();
            let state = matches!(strategy, Strategy::Adaptive).then(|| controller.state());
            let serving = Serving {
                point: Some(&point),
                deadline: matches!(strategy, Strategy::Adaptive)
                    .then(|| chosen + Duration::from_secs_f64(settings.policy.slo_ms / 1e3)),
            };
            let answer = service
                .handle(sample.content_type.as_deref(), &sample.payload, serving)
                .with_context(|| format!("{label}: request {next} at {point}"))?;
            let latency_ms = chosen.elapsed().as_secs_f64() * 1e3;
            let served_at = answer["point"].as_str().unwrap_or(&point).to_string();
            let stepped_down_from = (served_at != point).then(|| point.clone());
            if let Strategy::Adaptive = strategy {
                let observing = Instant::now();
                // A request that stepped down did the served point's work.
                controller.observe(&served_at, latency_ms);
                decision_us.push((choosing + observing.elapsed()).as_secs_f64() * 1e6);
            }
            records.push(RequestRecord {
                t_s: t.as_secs_f64(),
                latency_ms,
                point: served_at,
                stepped_down_from,
                cpu_load: monitor.latest().cpu.utilisation,
                hog: in_hog,
                conditions: state.as_ref().map(|s| s.conditions.factor()),
                slowdown: state.as_ref().map(|s| s.slowdown),
                threads,
            });
        }
        Ok(())
    })();
    if let Some(mut child) = hog {
        let _ = child.kill();
        let _ = child.wait();
    }
    result?;
    // Let the machine calm down before the next run.
    std::thread::sleep(Duration::from_secs(2));

    let slo = settings.policy.slo_ms;
    let share_within = |filter: &dyn Fn(&RequestRecord) -> bool| {
        let chosen: Vec<&RequestRecord> = records.iter().filter(|r| filter(r)).collect();
        let within = chosen.iter().filter(|r| r.latency_ms <= slo).count();
        within as f64 / chosen.len().max(1) as f64
    };
    let switches = records
        .windows(2)
        .filter(|w| w[0].decided() != w[1].decided())
        .count();
    let stepped_down = records
        .iter()
        .filter(|r| r.stepped_down_from.is_some())
        .count();
    let mut served: Vec<(String, usize)> = Vec::new();
    for r in &records {
        match served.iter_mut().find(|(name, _)| *name == r.point) {
            Some((_, n)) => *n += 1,
            None => served.push((r.point.clone(), 1)),
        }
    }
    let latencies: Vec<f64> = records.iter().map(|r| r.latency_ms).collect();
    let mean_quality = |filter: &dyn Fn(&RequestRecord) -> bool| {
        let qualities: Vec<f64> = records
            .iter()
            .filter(|r| filter(r))
            .filter_map(|r| quality(&r.point))
            .collect();
        qualities.iter().sum::<f64>() / qualities.len().max(1) as f64
    };
    Ok(AdaptRun {
        strategy: label.to_string(),
        requests: records.len(),
        within_slo: share_within(&|_| true),
        within_slo_during_hog: share_within(&|r| r.hog),
        within_slo_without_hog: share_within(&|r| !r.hog),
        mean_quality: mean_quality(&|_| true),
        mean_quality_during_hog: mean_quality(&|r| r.hog),
        switches,
        stepped_down,
        switches_per_minute: switches as f64 / (settings.duration.as_secs_f64() / 60.0),
        latency: LatencyStats::of(&latencies),
        decision_cost: DecisionCost::of(&decision_us),
        served,
        timeline: records,
    })
}

/// Starts the hog: this binary's hidden `bench burn`, a separate process so that telemetry
/// sees it as other load, as it would a neighbour on a real device.
fn start_hog(threads: usize) -> Result<Child> {
    let exe = std::env::current_exe().context("finding this binary to start the CPU hog")?;
    Command::new(exe)
        .args(["bench", "burn", "--threads", &threads.to_string()])
        .stdin(std::process::Stdio::null())
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
            run.decision_cost.as_ref().map_or("-".into(), |d| {
                format!("{:.1}/{:.1}", d.median_us, d.p99_us)
            }),
        ]);
    }
    format!(
        "machine: {}\nSLO {:.0} ms, hog {:.0}-{:.0} s of {:.0} s ({} threads)\n{table}",
        report.machine,
        report.slo_ms,
        report.hog_s.0,
        report.hog_s.1,
        report.duration_s,
        report.hog_threads
    )
}

fn draw(report: &AdaptReport, candidates: &[String], path: &std::path::Path) -> Result<()> {
    // Pinned points off the front still get a row on the chart.
    let mut names: Vec<String> = candidates.to_vec();
    for run in &report.runs {
        for (name, _) in &run.served {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
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
                    point: names.iter().position(|n| *n == r.point).unwrap_or(0),
                    cpu_load: r.cpu_load,
                    fewer_threads: r.threads < report.engine_threads,
                })
                .collect(),
        })
        .collect();
    timeline_svg(
        path,
        &Timeline {
            title: "ocr under a CPU hog: adaptive vs fixed points",
            slo_ms: report.slo_ms,
            point_names: &names,
            runs: &runs,
            shaded: &[report.hog_s],
            shaded_label: "CPU hog",
        },
    )
}
