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
use crate::bench::ocr::{self, OcrBenchSettings, Reference};
use crate::engine::EngineConfig;
use crate::models::{self, ModelDir};
use crate::policy::ProfileCache;
use crate::policy::profile;
use crate::profiler::{ProfileSettings, Sample, profile_service};
use crate::serve::{ServeConfig, ThreadUse};
use crate::services::ocr::{OcrOptions, OcrService};
use std::sync::Arc;
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
    #[arg(
        long,
        default_value = "bench-results/engines.json",
        value_name = "FILE"
    )]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct AdaptBenchArgs {
    /// `serve`'s configuration file: its [engine] settings, [policy.ocr] and profile path.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Latency target [default: the config's, else 1.25 x the best point's profiled p95].
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
    /// ICDAR 2015 scenes the requests cycle through (and the profile uses if it must be
    /// measured first).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub samples: usize,
    /// The profile cache [default: the config's `profile`, else the cache folder's].
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    #[arg(long, default_value = "bench-results/adapt.json", value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, default_value = "bench-results/adapt.svg", value_name = "FILE")]
    pub svg: PathBuf,
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
    /// The statute text (default: the COLIEE Civil Code under EDGERUN_DATA).
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
    /// Python interpreter for the reference (needs export/requirements.txt).
    #[arg(long, default_value = "python3", value_name = "PATH")]
    pub python: PathBuf,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-results/ocr.json", value_name = "FILE")]
    pub out: PathBuf,
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
                out: a.out.clone(),
            };
            crate::bench::points::run(&pipeline, pipeline.points(), &settings)?;
        }
        Benchmark::Engines(_)
        | Benchmark::Burn(_)
        | Benchmark::Adapt(_)
        | Benchmark::Legal(_)
        | Benchmark::Generate(_) => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench adapt`: the profile from the cache when it fits, else measured now.
fn adapt(global: &GlobalArgs, args: &AdaptBenchArgs) -> Result<ExitCode> {
    anyhow::ensure!(
        0.0 <= args.hog_start && args.hog_start < args.hog_stop && args.duration > 0.0,
        "the hog must start before it stops"
    );
    let config = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => ServeConfig::default(),
    };
    let runtime = Runtime::new(global, config.engine.clone())?;
    let dir = ModelDir::open(&runtime.models_root, "ocr")?;
    let pipeline = Arc::new(runtime.ocr_pipeline(Warm::Up)?);
    let service = OcrService::new(pipeline, OcrOptions::default(), config.max_pixels);
    let samples = crate::data::ic15_e2e(args.samples)?
        .iter()
        .map(|scene| Sample::image_file(&scene.path))
        .collect::<Result<Vec<_>>>()?;
    let profile_path = args
        .profile
        .clone()
        .or(config.profile.clone())
        .unwrap_or_else(profile::default_path);
    let key = runtime.profile_key();
    let cached = ProfileCache::load(&profile_path).and_then(|cache| {
        cache
            .valid_for(&profile_path, &key, "ocr", dir.manifest_sha256())
            .map(|p| p.points.clone())
    });
    let points = match cached {
        Ok(points) => points,
        Err(why) => {
            eprintln!("{why}; profiling now");
            profile_service(&service, &samples, ProfileSettings { rounds: 2 })?
        }
    };
    let mut policy = config.policy.get("ocr").cloned().unwrap_or_default();
    policy.slo_ms = match (args.slo_ms, config.policy.get("ocr")) {
        (Some(slo), _) => slo,
        (None, Some(configured)) => configured.slo_ms,
        (None, None) => {
            let best = points
                .iter()
                .filter(|p| p.on_front)
                .max_by(|a, b| a.quality.total_cmp(&b.quality))
                .context("the profile has no point on the front")?;
            (best.p95_ms * 1.25).round()
        }
    };
    let workers = config.services.get("ocr").map_or(1, |s| s.workers);
    let settings = AdaptBenchSettings {
        duration: Duration::from_secs_f64(args.duration),
        hog: (
            Duration::from_secs_f64(args.hog_start),
            Duration::from_secs_f64(args.hog_stop),
        ),
        hog_threads: args
            .hog_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        policy,
        threads: ThreadUse {
            configured: runtime.threads,
            adapt: runtime.engine_config.adapts_threads(),
        },
        workers,
        out: args.out.clone(),
        svg: args.svg.clone(),
    };
    crate::bench::adapt::run(&service, &samples, &points, &settings)?;
    Ok(ExitCode::SUCCESS)
}
