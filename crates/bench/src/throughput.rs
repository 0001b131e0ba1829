//! `edgerun bench throughput`: how many OCR images per second `edgerun serve` answers when
//! requests wait, against one request at a time. Each configuration (engine threads per
//! run, worker threads per service, requests in flight) is a fresh server (this binary,
//! with the benchmark's global flags) on its embedded broker, pinned to its default point
//! (`--no-adapt`), sent the same ICDAR 2015 scenes; images per second are taken at the
//! client, the median over rounds. Nothing here serves; it only starts, asks and times.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::server::{DEVICE, Server, ServerSpec};
use super::{Machine, Table, write_json};
use edgerun_runtime::latency::percentile;
use edgerun_runtime::mqtt::client::{Reply, RequestClient};
use edgerun_runtime::profiler::Sample;
use edgerun_runtime::telemetry::resident;

/// One way to run the OCR service.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Layout {
    /// Intra-op threads per engine run (`--threads`, fixed).
    pub threads: usize,
    /// Worker threads of the service (`--workers`).
    pub workers: usize,
    /// Requests the client keeps in flight.
    pub in_flight: usize,
}

impl Layout {
    /// One request at a time, every core on it: the single-stream figure the others are
    /// compared with.
    pub fn single_stream(cores: usize) -> Layout {
        Layout {
            threads: cores,
            workers: 1,
            in_flight: 1,
        }
    }

    /// The layouts measured on a machine with `cores` cores: one stream (with every core,
    /// then with one), one worker with all cores and requests waiting, a worker per core
    /// with one thread each, and a worker per core sharing every core (one request, then
    /// requests waiting).
    pub fn standard(cores: usize) -> Vec<Layout> {
        let cores = cores.max(1);
        let waiting = 2 * cores;
        let mut layouts = vec![Layout::single_stream(cores)];
        if cores > 1 {
            layouts.push(Layout::single_stream(1));
        }
        layouts.push(Layout {
            in_flight: waiting,
            ..Layout::single_stream(cores)
        });
        for workers in 2..=cores {
            layouts.push(Layout {
                threads: 1,
                workers,
                in_flight: waiting,
            });
        }
        if cores > 1 {
            // A worker per core with every core in the pool: a run alone uses them all, a
            // run that starts beside another takes one core (`engine::run_uses_pool`).
            for in_flight in [1, waiting] {
                layouts.push(Layout {
                    threads: cores,
                    workers: cores,
                    in_flight,
                });
            }
        }
        layouts
    }
}

#[derive(Debug, Clone)]
pub struct ThroughputSettings {
    pub layouts: Vec<Layout>,
    /// Timed passes over the images per layout (after one warm-up pass).
    pub rounds: usize,
    /// The benchmark's global flags, without `--threads` (each layout sets its own).
    pub global_args: Vec<String>,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayoutRun {
    pub layout: Layout,
    /// The point the answers name.
    pub point: Option<String>,
    /// Median over rounds.
    pub images_per_s: f64,
    pub rounds_images_per_s: Vec<f64>,
    /// Against the single-stream layout of the same run.
    pub speedup: f64,
    /// Error answers (none expected: the queue is deeper than what is in flight).
    pub errors: usize,
    /// The server's peak resident set, MiB: what the layout costs while busy (each worker
    /// holds a request's activations; with ONNX Runtime, a session and its arena each).
    pub peak_rss_mib: f64,
    /// Its resident set once idle for a second after the last pass, MiB (an idle server
    /// returns its free heap; ONNX Runtime's arenas keep theirs).
    pub idle_rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    pub machine: Machine,
    pub engine_flags: Vec<String>,
    pub images: usize,
    pub runs: Vec<LayoutRun>,
}

/// The global flags without `--threads N` / `--threads=N` / `--fixed-threads`, which each
/// layout sets itself.
pub fn without_thread_flags(global: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut skip_value = false;
    for arg in global {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if arg == "--threads" {
            skip_value = true;
        } else if !arg.starts_with("--threads=") && arg != "--fixed-threads" {
            kept.push(arg.clone());
        }
    }
    kept
}

pub fn run(images: &[Sample], settings: &ThroughputSettings) -> Result<ThroughputReport> {
    anyhow::ensure!(!images.is_empty(), "no images to send");
    let machine = Machine::current();
    eprintln!("machine: {machine}");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut runs: Vec<LayoutRun> = Vec::new();
    for layout in &settings.layouts {
        eprintln!("{layout:?}");
        runs.push(tokio.block_on(measure(images, *layout, settings))?);
    }
    // The first layout is the single stream with every core.
    let base = runs.first().map(|r| r.images_per_s);
    for run in &mut runs {
        run.speedup = base.map_or(f64::NAN, |b| run.images_per_s / b);
    }
    let report = ThroughputReport {
        machine,
        engine_flags: settings.global_args.clone(),
        images: images.len(),
        runs,
    };
    print!("{}", report_text(&report));
    write_json(&settings.out, &report)?;
    eprintln!("wrote {}", settings.out.display());
    Ok(report)
}

async fn measure(
    images: &[Sample],
    layout: Layout,
    settings: &ThroughputSettings,
) -> Result<LayoutRun> {
    let mut global_args = settings.global_args.clone();
    global_args.extend([
        "--threads".into(),
        layout.threads.to_string(),
        "--fixed-threads".into(),
    ]);
    let spec = ServerSpec {
        services: "ocr".into(),
        slo: None,
        profile: settings.out.with_extension("profile.json"),
        global_args,
        serve_args: vec![
            "--no-adapt".into(),
            "--workers".into(),
            layout.workers.to_string(),
            "--queue".into(),
            (layout.in_flight + 4).to_string(),
        ],
        log: settings.out.with_extension("serve.log"),
    };
    let server = Server::spawn(&spec)?;
    let watcher = server.until_online("throughput-watch").await?;
    let mut client = server.connect("throughput-client").await?;
    let (mut point, mut errors) = (None, 0);
    let mut rounds = Vec::new();
    // Pass 0 warms up. Each pass's correlation ids are new, or the server's answer cache
    // would answer a repeated pass without computing it.
    for number in 0..=settings.rounds.max(1) {
        let started = Instant::now();
        let pass = Pass {
            number,
            in_flight: layout.in_flight,
        };
        pass.send_all(&mut client, images, &mut point, &mut errors)
            .await?;
        if number == 0 {
            continue;
        }
        rounds.push(images.len() as f64 / started.elapsed().as_secs_f64());
    }
    tokio::time::sleep(IDLE).await;
    let memory = resident(Some(server.pid())).context("reading the server's resident set")?;
    client.disconnect().await;
    watcher.disconnect().await;
    server.stop();
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(LayoutRun {
        layout,
        point,
        images_per_s: percentile(&sorted, 50.0),
        rounds_images_per_s: rounds,
        speedup: f64::NAN,
        errors,
        peak_rss_mib: memory.peak_kib as f64 / 1024.0,
        idle_rss_mib: memory.rss_kib as f64 / 1024.0,
    })
}

/// How long the server idles after the last pass before its resident set is read.
const IDLE: Duration = Duration::from_secs(1);

/// One pass over the images.
struct Pass {
    number: usize,
    in_flight: usize,
}

impl Pass {
    /// Sends every image once, keeping `in_flight` waiting, until all are answered.
    async fn send_all(
        &self,
        client: &mut RequestClient,
        images: &[Sample],
        point: &mut Option<String>,
        errors: &mut usize,
    ) -> Result<()> {
        let in_flight = self.in_flight;
        let topic = format!("edgerun/{DEVICE}/ocr/request");
        let (mut sent, mut answered) = (0, 0);
        while answered < images.len() {
            while sent < images.len() && sent - answered < in_flight.max(1) {
                let sample = &images[sent];
                let payload = sample.wire_bytes();
                client
                    .send(
                        &topic,
                        &format!("{}-{sent}", self.number),
                        payload,
                        sample.content_type.as_deref(),
                        None,
                    )
                    .await?;
                sent += 1;
            }
            let (_, body) = client
                .next_answer(Duration::from_secs(120))
                .await
                .context("an OCR request went unanswered for 120 s")?;
            let reply = Reply::of(&body);
            if reply.error.is_some() {
                *errors += 1;
            }
            if reply.point.is_some() {
                *point = reply.point;
            }
            answered += 1;
        }
        Ok(())
    }
}

pub fn report_text(report: &ThroughputReport) -> String {
    let mut table = Table::new(&[
        "threads x workers",
        "in flight",
        "point",
        "images/s",
        "x single stream",
        "errors",
        "peak RSS MiB",
        "idle RSS MiB",
    ]);
    for run in &report.runs {
        table.row(vec![
            format!("{} x {}", run.layout.threads, run.layout.workers),
            run.layout.in_flight.to_string(),
            run.point.clone().unwrap_or_else(|| "-".into()),
            format!("{:.2}", run.images_per_s),
            format!("{:.2}", run.speedup),
            run.errors.to_string(),
            format!("{:.0}", run.peak_rss_mib),
            format!("{:.0}", run.idle_rss_mib),
        ]);
    }
    format!(
        "OCR throughput of edgerun serve, {} ICDAR 2015 scenes{}\n{table}",
        report.images,
        if report.engine_flags.is_empty() {
            String::new()
        } else {
            format!(", {}", report.engine_flags.join(" "))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cores_get_two_single_streams_one_worker_with_a_queue_and_workers_per_core() {
        let layouts = Layout::standard(2);
        let as_tuples: Vec<_> = layouts
            .iter()
            .map(|l| (l.threads, l.workers, l.in_flight))
            .collect();
        assert_eq!(
            as_tuples,
            [
                (2, 1, 1),
                (1, 1, 1),
                (2, 1, 4),
                (1, 2, 4),
                (2, 2, 1),
                (2, 2, 4)
            ]
        );
    }

    #[test]
    fn each_layout_sets_its_own_threads() {
        let global: Vec<String> = ["--backend", "ort", "--threads", "2", "--threads=3"]
            .into_iter()
            .chain(["--fixed-threads", "--ort-lib", "x.so"])
            .map(String::from)
            .collect();
        assert_eq!(
            without_thread_flags(&global),
            ["--backend", "ort", "--ort-lib", "x.so"]
        );
    }
}
