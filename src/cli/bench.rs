//! `edgerun bench ...`: one subcommand per benchmark; this module only maps flags to the
//! benchmark's settings, the measuring lives in [`crate::bench`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::GlobalArgs;
use super::settings::{Runtime, Warm, engine_config};
use crate::bench::engines::EngineBenchSettings;
use crate::bench::ocr::{self, OcrBenchSettings, Reference};
use crate::engine::EngineConfig;
use crate::models;

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

pub fn run(global: &GlobalArgs, args: &BenchArgs) -> Result<ExitCode> {
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
        Benchmark::Engines(_) => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}
