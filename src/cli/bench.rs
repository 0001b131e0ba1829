//! `edgerun bench ...`: one subcommand per benchmark; this module only maps flags to the
//! benchmark's settings, the measuring lives in [`crate::bench`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::GlobalArgs;
use super::settings::{Runtime, Warm, engine_config};
use crate::bench::adapt::AdaptBenchSettings;
use crate::bench::engines::EngineBenchSettings;
use crate::bench::memory::StreamLength;
use crate::bench::ocr::{self, OcrBenchSettings, Peer, Reference};
use crate::engine::{EngineConfig, TimeBy};
use crate::models::{self, ModelDir};
use crate::profiler::Sample;
use crate::serve::ServeConfig;
use crate::services::ocr::OcrPoint;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Benchmark,
}

#[derive(Debug, Subcommand)]
pub enum Benchmark {
    /// Word accuracy and latency of each OCR operating point, end-to-end OCR, and parity
    /// with the Python reference.
    Ocr(OcrBenchArgs),
    /// MQTT round trips (embedded broker, mosquitto) and OCR throughput over MQTT, against
    /// in-process calls.
    Mqtt(MqttBenchArgs),
    /// Offline quality of each OCR operating point in the manifest (end to end on ICDAR
    /// 2015); `python export/ocr.py --points-only` copies it into the manifest.
    Points(PointsBenchArgs),
    /// Statute retrieval on COLIEE R05 per operating point (F2, P, R, R@k, latency at each
    /// thread count) and per scoring variant tuned on a held-out year; JSON and a Pareto SVG.
    /// `python export/legal/export.py --points-only` copies points and settings into the
    /// manifest.
    Legal(LegalBenchArgs),
    /// Distilled generators at 1..4 steps against the 50-step guided teacher: evaluations,
    /// median and p95 latency per image and the wall-clock ratio, at each thread count.
    Generate(GenerateBenchArgs),
    /// The adaptive controller against fixed points on a stream of OCR requests while a CPU
    /// hog starts and stops: share within the SLO, mean quality, switches; JSON and a
    /// timeline SVG.
    Adapt(AdaptBenchArgs),
    /// `edgerun serve` from an empty profile cache: how long until every service adapts,
    /// with requests answered meanwhile.
    Startup(StartupBenchArgs),
    /// What `edgerun serve` keeps resident: RSS at `online` and after a mixed stream of
    /// requests, and its peak, for each service alone and for all together.
    Memory(MemoryBenchArgs),
    /// OCR images per second through `edgerun serve` with requests waiting (one worker
    /// with every core, a worker per core with one thread each) against one at a time.
    Throughput(ThroughputBenchArgs),
    /// Spin CPU threads until killed (the hog `bench adapt` starts).
    #[command(hide = true)]
    Burn(BurnArgs),
    /// Every model on tract and on ONNX Runtime (CPU) at 1 and 2 threads: median latency and
    /// the ratio (needs the `ort` feature and --ort-lib or ORT_DYLIB_PATH).
    Engines(EnginesBenchArgs),
}

#[derive(Debug, Args)]
pub struct EnginesBenchArgs {
    /// Timed runs per engine, model and thread count.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub runs: usize,
    /// Intra-op thread counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2], value_name = "N,...")]
    pub thread_counts: Vec<usize>,
    /// Where tract's time goes on its slowest models: node by node instead of per kind of
    /// operation.
    #[arg(long)]
    pub by_node: bool,
    #[arg(
        long,
        default_value = "bench-results/engines.json",
        value_name = "FILE"
    )]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct AdaptBenchArgs {
    /// The service to load with requests: ocr (ICDAR 2015 scenes), legal (COLIEE R05
    /// questions) or generate (prompts).
    #[arg(long, default_value = "ocr", value_name = "NAME")]
    pub service: String,
    /// Latency target given to the server [default: the service manifest's].
    #[arg(long, value_name = "MS")]
    pub slo_ms: Option<f64>,
    /// Seconds per run.
    #[arg(long, default_value_t = 90.0, value_name = "S")]
    pub duration: f64,
    /// When the hog starts and stops, in seconds from the start of each run.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    pub hog_start: f64,
    #[arg(long, default_value_t = 75.0, value_name = "S")]
    pub hog_stop: f64,
    /// Spinning threads of the hog [default: one per logical core].
    #[arg(long, value_name = "N")]
    pub hog_threads: Option<usize>,
    /// Requests the runs cycle through (scenes, questions or prompts).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub samples: usize,
    /// The profile cache the servers measure into and adapt from.
    #[arg(
        long,
        default_value = "bench-results/adapt-profile.json",
        value_name = "FILE"
    )]
    pub profile: PathBuf,
    /// Start from an empty profile cache (measures the zero-configuration start-up).
    #[arg(long)]
    pub fresh: bool,
    /// How long the first server may take to measure its points.
    #[arg(long, default_value_t = 300.0, value_name = "S")]
    pub adaptive_within: f64,
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MemoryBenchArgs {
    /// The services, each measured alone and then all together [default: serve's default set].
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub services: Option<Vec<String>>,
    /// Requests per server, cycled through the services' benchmark requests.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub requests: usize,
    /// Soak instead: stream to one server with all the services for this long (in place of
    /// --requests and of the per-service servers), and report the growth after the first
    /// minute.
    #[arg(long, value_name = "MINUTES")]
    pub soak_minutes: Option<f64>,
    /// Benchmark requests per service in the cycle.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub samples: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 6, value_name = "N")]
    pub in_flight: usize,
    /// Serve without adapting (no background measurement of the points).
    #[arg(long)]
    pub no_adapt: bool,
    /// A configuration file for the servers (`serve --config`).
    #[arg(long, value_name = "FILE")]
    pub serve_config: Option<PathBuf>,
    /// The profile cache the servers adapt from (measured into on the first run).
    #[arg(
        long,
        default_value = "bench-results/memory-profile.json",
        value_name = "FILE"
    )]
    pub profile: PathBuf,
    #[arg(long, default_value = "bench-results/memory.json", value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ThroughputBenchArgs {
    /// ICDAR 2015 end-to-end scenes per pass.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub images: usize,
    /// Timed passes per layout (after one warm-up pass); the median is reported.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub rounds: usize,
    #[arg(
        long,
        default_value = "bench-results/throughput.json",
        value_name = "FILE"
    )]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct StartupBenchArgs {
    /// The services to start [default: serve's default set].
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub services: Option<Vec<String>>,
    /// Requests per service the stream cycles through.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub samples: usize,
    /// The profile cache the server starts without (removed first) and measures into.
    #[arg(
        long,
        default_value = "bench-results/startup-profile.json",
        value_name = "FILE"
    )]
    pub profile: PathBuf,
    /// How long every service may take to become adaptive.
    #[arg(long, default_value_t = 300.0, value_name = "S")]
    pub within: f64,
    #[arg(
        long,
        default_value = "bench-results/startup.json",
        value_name = "FILE"
    )]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct BurnArgs {
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, default_value_t = 3600.0)]
    pub seconds: f64,
}

#[derive(Debug, Args)]
pub struct GenerateBenchArgs {
    /// Thread counts to measure at.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2], value_name = "N,...")]
    pub thread_counts: Vec<usize>,
    /// Images per point.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub images: usize,
    #[arg(
        long,
        default_value = "bench-results/generate.json",
        value_name = "FILE"
    )]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct LegalBenchArgs {
    /// Thread counts to measure latency at (quality is the same at every count).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2], value_name = "N,...")]
    pub thread_counts: Vec<usize>,
    /// Another copy of the statute text (default: the Civil Code in models/legal).
    #[arg(long, value_name = "FILE")]
    pub corpus: Option<PathBuf>,
    /// Exam years to tune the scoring on [default: the training years H18..R04]. With an
    /// encoder fine-tuned on some years (`export.py --tune-layers`), name only years it held
    /// out: on its own training queries it is overconfident and the tuned gap too tight.
    #[arg(long, value_delimiter = ',', value_name = "YEAR,...")]
    pub tune_years: Vec<String>,
    #[arg(long, default_value = "bench-results/legal.json", value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, default_value = "bench-results/legal.svg", value_name = "FILE")]
    pub svg: PathBuf,
    /// Also write every query's raw signals under the L6 point (BM25, article and sentence
    /// cosines; JSON Lines, about 65 MB) for offline scoring research.
    #[arg(long, value_name = "FILE")]
    pub signals_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PointsBenchArgs {
    /// ICDAR 2015 end-to-end images per point.
    #[arg(long, default_value_t = 250, value_name = "N")]
    pub e2e_images: usize,
    /// Measure only this point (repeat for more); the report keeps what `--out` already
    /// says of the others.
    #[arg(long, value_name = "NAME")]
    pub point: Vec<String>,
    #[arg(
        long,
        default_value = "bench-results/points-ocr.json",
        value_name = "FILE"
    )]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct MqttBenchArgs {
    /// Sequential echo requests per broker.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub requests: usize,
    /// IIIT5K crops for the OCR throughput run.
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub crops: usize,
    /// OCR requests in flight.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub window: usize,
    /// Skip mosquitto.
    #[arg(long)]
    pub no_mosquitto: bool,
    #[arg(long, default_value = "bench-results/mqtt.json", value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct OcrBenchArgs {
    /// Crops per word dataset (default: all).
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// ICDAR 2015 end-to-end images to read (0 skips the end-to-end run).
    #[arg(long, default_value_t = 250, value_name = "N")]
    pub e2e_images: usize,
    /// Cascade thresholds to measure (the first is used end to end).
    #[arg(long, value_delimiter = ',', default_values_t = [0.9f32, 0.97], value_name = "P,...")]
    pub thresholds: Vec<f32>,
    /// Decode printable ASCII only.
    #[arg(long)]
    pub ascii: bool,
    /// Longest image side the detector sees.
    #[arg(long, default_value_t = 960, value_name = "PX")]
    pub det_limit: u32,
    /// Skip the Python reference (parity and speed ratio).
    #[arg(long)]
    pub no_reference: bool,
    /// Declared points to read the end-to-end images at, beside RapidOCR (`all`, `none`,
    /// or names).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "all",
        value_name = "NAME,..."
    )]
    pub points: Vec<String>,
    /// Skip RapidOCR (the pinned `rapidocr` wheel, run by export/rapidocr_peer.py).
    #[arg(long)]
    pub no_peer: bool,
    /// Python interpreter for the reference (needs export/requirements.txt).
    #[arg(long, default_value = "python3", value_name = "PATH")]
    pub python: PathBuf,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-results/ocr.json", value_name = "FILE")]
    pub out: PathBuf,
}

/// The declared OCR points named on the command line (`all`, `none` or names).
fn chosen_points(declared: &[OcrPoint], names: &[String]) -> Result<Vec<OcrPoint>> {
    match names {
        [all] if all == "all" => Ok(declared.to_vec()),
        [none] if none == "none" => Ok(Vec::new()),
        names => crate::bench::points::select(declared, names),
    }
}

/// What `load` builds from a runtime whose models run on each of `thread_counts` threads,
/// paired with the count.
fn per_thread_count<T>(
    global: &GlobalArgs,
    thread_counts: &[usize],
    load: impl Fn(&Runtime) -> Result<T>,
) -> Result<Vec<(usize, T)>> {
    thread_counts
        .iter()
        .map(|&threads| {
            anyhow::ensure!(threads >= 1, "thread counts must be at least 1");
            let runtime = Runtime::from_args(&GlobalArgs {
                threads: Some(threads),
                ..global.clone()
            })?;
            Ok((threads, load(&runtime)?))
        })
        .collect()
}

pub fn run(global: &GlobalArgs, args: &BenchArgs) -> Result<ExitCode> {
    match &args.which {
        Benchmark::Burn(a) => {
            crate::bench::adapt::burn(a.threads, a.seconds);
            return Ok(ExitCode::SUCCESS);
        }
        Benchmark::Adapt(a) => return adapt(global, a),
        Benchmark::Startup(a) => return startup(global, a),
        Benchmark::Memory(a) => return memory(global, a),
        Benchmark::Throughput(a) => return throughput(global, a),
        Benchmark::Generate(a) => {
            let generators = per_thread_count(global, &a.thread_counts, |r| r.generate(Warm::Up))?;
            crate::bench::generate::run(&crate::bench::generate::GenerateBenchSettings {
                generators,
                images: a.images,
                out: a.out.clone(),
            })?;
            return Ok(ExitCode::SUCCESS);
        }
        Benchmark::Legal(a) => {
            let retrievers = per_thread_count(global, &a.thread_counts, |r| {
                r.legal(a.corpus.as_deref(), Warm::Up)
            })?;
            crate::bench::legal::run(&crate::bench::legal::LegalBenchSettings {
                retrievers,
                tune_years: if a.tune_years.is_empty() {
                    crate::data::COLIEE_TRAIN_YEARS
                        .iter()
                        .map(|y| y.to_string())
                        .collect()
                } else {
                    a.tune_years.clone()
                },
                out: a.out.clone(),
                svg: a.svg.clone(),
                signals_out: a.signals_out.clone(),
            })?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    if let Benchmark::Engines(a) = &args.which {
        // Builds its own engines per thread count; only the flags' ONNX Runtime settings apply.
        anyhow::ensure!(a.runs >= 1, "--runs must be at least 1");
        anyhow::ensure!(
            a.thread_counts.iter().all(|&t| t >= 1),
            "thread counts must be at least 1"
        );
        let settings = EngineBenchSettings {
            models_root: global.models.clone().unwrap_or_else(models::default_root),
            config: engine_config(global, EngineConfig::default())?,
            thread_counts: a.thread_counts.clone(),
            runs: a.runs,
            tract_times_by: if a.by_node { TimeBy::Node } else { TimeBy::Op },
            out: a.out.clone(),
        };
        crate::bench::engines::run(&settings)?;
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = Runtime::from_args(global)?;
    match &args.which {
        Benchmark::Ocr(a) => {
            let pipeline = runtime.ocr_pipeline(Warm::Up)?;
            let settings = OcrBenchSettings {
                samples: a.samples,
                e2e_images: a.e2e_images,
                thresholds: a.thresholds.clone(),
                ascii_only: a.ascii,
                det_limit: a.det_limit,
                threads: runtime.threads,
                reference: (!a.no_reference).then(|| Reference {
                    python: a.python.clone(),
                    script: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("export/reference_ocr.py"),
                    models: runtime.models_root.join("ocr"),
                }),
                points: chosen_points(pipeline.points(), &a.points)?,
                peer: (!a.no_peer).then(|| Peer {
                    python: a.python.clone(),
                    script: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("export/rapidocr_peer.py"),
                    tiny_detector: runtime.models_root.join("ocr/det_tiny.onnx"),
                }),
                out: a.out.clone(),
            };
            ocr::run(&pipeline, &settings)?;
        }
        Benchmark::Mqtt(a) => {
            let settings = crate::bench::mqtt::MqttBenchSettings {
                requests: a.requests,
                crops: a.crops,
                window: a.window,
                mosquitto: !a.no_mosquitto,
                out: a.out.clone(),
            };
            crate::bench::mqtt::run(
                std::sync::Arc::new(runtime.ocr_pipeline(Warm::Up)?),
                &settings,
            )?;
        }
        Benchmark::Points(a) => {
            let pipeline = runtime.ocr_pipeline(Warm::Up)?;
            let settings = crate::bench::points::PointsBenchSettings {
                e2e_images: a.e2e_images,
                only: a.point.clone(),
                out: a.out.clone(),
            };
            crate::bench::points::run(&pipeline, pipeline.points(), &settings)?;
        }
        Benchmark::Engines(_)
        | Benchmark::Burn(_)
        | Benchmark::Adapt(_)
        | Benchmark::Startup(_)
        | Benchmark::Memory(_)
        | Benchmark::Throughput(_)
        | Benchmark::Legal(_)
        | Benchmark::Generate(_) => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench adapt`: `edgerun serve` children under a CPU hog, loaded with the service's
/// benchmark requests.
fn adapt(global: &GlobalArgs, args: &AdaptBenchArgs) -> Result<ExitCode> {
    anyhow::ensure!(
        0.0 <= args.hog_start && args.hog_start < args.hog_stop && args.duration > 0.0,
        "the hog must start before it stops"
    );
    let runtime = Runtime::from_args(global)?;
    let dir = ModelDir::open(&runtime.models_root, &args.service)?;
    let points = crate::models::PointSet::from_manifest(dir.manifest())?
        .with_context(|| format!("{} has no operating points to adapt", args.service))?;
    let samples = bench_requests(&runtime, &args.service, args.samples)?;
    if args.fresh && args.profile.exists() {
        std::fs::remove_file(&args.profile)
            .with_context(|| format!("removing {}", args.profile.display()))?;
    }
    let name = &args.service;
    let settings = AdaptBenchSettings {
        service: name.clone(),
        duration: Duration::from_secs_f64(args.duration),
        hog: (
            Duration::from_secs_f64(args.hog_start),
            Duration::from_secs_f64(args.hog_stop),
        ),
        hog_threads: args
            .hog_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        slo_ms: args.slo_ms,
        profile: args.profile.clone(),
        global_args: global_args(),
        adaptive_within: Duration::from_secs_f64(args.adaptive_within),
        out: args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("bench-results/adapt-{name}.json"))),
        svg: args
            .svg
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("bench-results/adapt-{name}.svg"))),
    };
    crate::bench::adapt::run(&samples, &points, &settings)?;
    Ok(ExitCode::SUCCESS)
}

/// `bench memory`: each service's server alone, then one with all of them.
fn memory(global: &GlobalArgs, args: &MemoryBenchArgs) -> Result<ExitCode> {
    let runtime = Runtime::from_args(global)?;
    let services = match &args.services {
        Some(names) => names.clone(),
        None => ServeConfig::default().services.into_keys().collect(),
    };
    let mut samples = std::collections::HashMap::new();
    for name in &services {
        samples.insert(name.clone(), bench_requests(&runtime, name, args.samples)?);
    }
    let mut configurations: Vec<Vec<String>> = services.iter().map(|s| vec![s.clone()]).collect();
    if services.len() > 1 {
        configurations.push(services.clone());
    }
    let length = match args.soak_minutes {
        Some(minutes) => {
            anyhow::ensure!(
                minutes.is_finite() && minutes > 0.0,
                "--soak-minutes must be positive"
            );
            configurations = vec![services.clone()];
            StreamLength::Lasting(Duration::from_secs_f64(minutes * 60.0))
        }
        None => StreamLength::Requests(args.requests),
    };
    crate::bench::memory::run(
        &samples,
        &crate::bench::memory::MemorySettings {
            configurations,
            length,
            in_flight: args.in_flight.max(1),
            serve_args: serve_args(args),
            profile: args.profile.clone(),
            global_args: global_args(),
            out: args.out.clone(),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `bench throughput`: OCR through `serve` in each standard layout for this machine.
fn throughput(global: &GlobalArgs, args: &ThroughputBenchArgs) -> Result<ExitCode> {
    use crate::bench::throughput::{Layout, ThroughputSettings, without_thread_flags};
    let runtime = Runtime::from_args(global)?;
    let images = bench_requests(&runtime, "ocr", args.images)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    crate::bench::throughput::run(
        &images,
        &ThroughputSettings {
            layouts: Layout::standard(cores),
            rounds: args.rounds,
            global_args: without_thread_flags(&global_args()),
            out: args.out.clone(),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The `serve` flags `bench memory` passes on.
fn serve_args(args: &MemoryBenchArgs) -> Vec<String> {
    let mut serve = Vec::new();
    if args.no_adapt {
        serve.push("--no-adapt".to_string());
    }
    if let Some(config) = &args.serve_config {
        serve.extend(["--config".to_string(), config.display().to_string()]);
    }
    serve
}

/// The flags the benchmarks' servers are started with: this process's global flags
/// (threads, engine, models), everything before the `bench` subcommand.
fn global_args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .take_while(|a| a != "bench")
        .collect()
}

/// The first `n` benchmark requests of `service`: ICDAR 2015 scenes, COLIEE R05
/// questions, or one prompt per character of the generator's alphabet.
fn bench_requests(runtime: &Runtime, service: &str, n: usize) -> Result<Vec<Sample>> {
    let json = |body: serde_json::Value| Sample {
        content_type: Some("application/json".into()),
        payload: crate::services::Payload::Json(body),
    };
    Ok(match service {
        "ocr" => crate::data::ic15_e2e(n)?
            .iter()
            .map(|scene| Sample::image_file(&scene.path))
            .collect::<Result<_>>()?,
        "legal" => crate::data::coliee_queries(&["R05"])?
            .iter()
            .take(n)
            .map(|q| json(serde_json::json!({"query": q.text})))
            .collect(),
        "generate" => {
            let alphabet = runtime.generate(Warm::Cold)?.settings().alphabet.clone();
            alphabet
                .chars()
                .take(n)
                .enumerate()
                .map(|(seed, c)| {
                    json(serde_json::json!({"prompt": c.to_string(), "seed": seed, "format": "json"}))
                })
                .collect()
        }
        "echo" => vec![json(serde_json::json!({"ping": 1}))],
        other => anyhow::bail!("no benchmark requests for {other:?} (ocr, legal, generate, echo)"),
    })
}

/// `bench startup`: the server from an empty cache, with the services' benchmark requests
/// in turn.
fn startup(global: &GlobalArgs, args: &StartupBenchArgs) -> Result<ExitCode> {
    let runtime = Runtime::from_args(global)?;
    let services = match &args.services {
        Some(names) => names.clone(),
        None => ServeConfig::default().services.into_keys().collect(),
    };
    let mut per_service = Vec::new();
    for name in &services {
        let samples = bench_requests(&runtime, name, args.samples)?;
        per_service.push(
            samples
                .into_iter()
                .map(|s| (name.clone(), s))
                .collect::<Vec<_>>(),
        );
    }
    // Interleaved: one request of each service in turn.
    let longest = per_service.iter().map(Vec::len).max().unwrap_or(0);
    let requests: Vec<_> = (0..longest)
        .flat_map(|i| per_service.iter().filter_map(move |s| s.get(i).cloned()))
        .collect();
    let elastic = services
        .iter()
        .filter(|name| {
            ModelDir::open(&runtime.models_root, name)
                .ok()
                .and_then(|dir| {
                    models::PointSet::from_manifest(dir.manifest())
                        .ok()
                        .flatten()
                })
                .is_some()
        })
        .cloned()
        .collect();
    crate::bench::startup::run(
        &requests,
        &crate::bench::startup::StartupSettings {
            elastic,
            services,
            profile: args.profile.clone(),
            global_args: global_args(),
            within: Duration::from_secs_f64(args.within),
            out: args.out.clone(),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
