//! `edgerun bench engines`: every model in `models/` on tract and on ONNX Runtime (CPU), at 1
//! and 2 intra-op threads, on the inputs of a typical request (recorded while the services
//! serve one: an ICDAR 2015 scene, a legal question, a prompt). Runs of the two engines
//! alternate, so background load on the machine hits both alike; the ratio is tract's median
//! over ort's. Where tract is more than [`PROFILE_ABOVE`] times slower on one thread, the
//! bench also times each node of tract's plan and shows where the time goes, per kind of
//! operation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{Machine, Table, peak_rss_mib, percentile, write_json};
use crate::data;
use edgerun_runtime::engine::record::{OwnedInput, Recorder};
use edgerun_runtime::engine::{
    Backend, Backends, EngineConfig, Input, Model, Onnx, OpTime, Provider, TimeBy, TractEngine,
};
use edgerun_runtime::models::{self, ModelDir};
use edgerun_runtime::services::generate::Generate;
use edgerun_runtime::services::legal::Legal;
use edgerun_runtime::services::ocr::{DetectorKind, OcrOptions, OcrPipeline, RecognizerChoice};

pub struct EngineBenchSettings {
    pub models_root: PathBuf,
    /// The ONNX Runtime library and anything else from the command line.
    pub config: EngineConfig,
    pub thread_counts: Vec<usize>,
    /// Timed runs per engine, model and thread count.
    pub runs: usize,
    /// How the profile of tract's slowest models groups its nodes.
    pub tract_times_by: TimeBy,
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct EngineBenchReport {
    pub machine: Machine,
    pub ort_library: String,
    pub runs: usize,
    pub rows: Vec<EngineRow>,
    pub peak_rss_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct EngineRow {
    pub model: String,
    pub input_shape: Vec<usize>,
    pub threads: usize,
    pub tract_ms: f64,
    pub ort_ms: f64,
    /// tract's median latency over ort's (above 1: ort is faster).
    pub tract_over_ort: f64,
    /// Where tract's time goes, per kind of operation or per node, largest first: only on
    /// one thread and where `tract_over_ort` is above [`PROFILE_ABOVE`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tract_ops: Vec<OpTime>,
}

/// tract over ort above which a model's tract plan is profiled (the bar for showing
/// where the time goes).
pub const PROFILE_ABOVE: f64 = 1.5;

pub fn run(settings: &EngineBenchSettings) -> Result<EngineBenchReport> {
    let machine = Machine::current();
    eprintln!("machine: {machine}");
    eprintln!("recording the model inputs of a typical request per service...");
    let typical = typical_inputs(&settings.models_root)?;
    let mut rows = Vec::new();
    let mut ort_library = None;
    for &threads in &settings.thread_counts {
        let engines = |backend| -> Result<Backends> {
            let config = EngineConfig {
                threads,
                backend,
                ort: edgerun_runtime::engine::OrtConfig {
                    providers: vec![Provider::Cpu],
                    ..settings.config.ort.clone()
                },
                ..settings.config.clone()
            };
            Ok(Backends::new(config)?)
        };
        let (tract, ort) = (engines(Backend::Tract)?, engines(Backend::Ort)?);
        ort_library = ort.ort_library().map(str::to_string);
        for (dir, file, inputs) in &typical {
            let name = format!("{}/{file}", dir.manifest().service);
            let shape = inputs
                .first()
                .map(|i| i.shape().to_vec())
                .unwrap_or_default();
            eprintln!("{name} {shape:?}, {threads} thread(s)...");
            let tract = dir.load(&tract, file)?;
            let ort = dir.load(&ort, file)?;
            let (tract_ms, ort_ms) = alternate(tract.as_ref(), ort.as_ref(), inputs, settings)
                .with_context(|| name.clone())?;
            let tract_over_ort = tract_ms / ort_ms;
            let tract_ops = if threads == 1 && tract_over_ort > PROFILE_ABOVE {
                eprintln!("{name}: timing each node of tract's plan...");
                let bytes = dir.read_verified(file)?;
                let inputs: Vec<Input<'_>> = inputs.iter().map(OwnedInput::view).collect();
                TractEngine::new(EngineConfig {
                    threads: 1,
                    ..settings.config.clone()
                })
                .op_times(
                    &name,
                    Onnx::bytes(&bytes),
                    &inputs,
                    settings.runs,
                    settings.tract_times_by,
                )
                .with_context(|| name.clone())?
            } else {
                Vec::new()
            };
            rows.push(EngineRow {
                model: name,
                input_shape: shape,
                threads,
                tract_ms,
                ort_ms,
                tract_over_ort,
                tract_ops,
            });
        }
    }
    let report = EngineBenchReport {
        machine,
        ort_library: ort_library.unwrap_or_default(),
        runs: settings.runs,
        rows,
        peak_rss_mib: peak_rss_mib(),
    };
    print!("{}", report_text(&report));
    write_json(&settings.out, &report)?;
    eprintln!("wrote {}", settings.out.display());
    Ok(report)
}

/// Every model of every service in `root` with the inputs of its first run in a typical
/// request, recorded while the services run on tract: ICDAR 2015 scenes through both
/// detectors and both recognizers, one question through every legal encoder point, one prompt through every
/// generate point.
fn typical_inputs(root: &Path) -> Result<Vec<(ModelDir, String, Vec<OwnedInput>)>> {
    let recorder = Recorder::new(TractEngine::new(EngineConfig::default()));
    let ocr = OcrPipeline::load(&recorder, &ModelDir::open(root, "ocr")?)?;
    // The first scene has no legible text; the second does. Each detector sees both, and
    // the tiny one runs first, so its crops are the ones recorded for the recognizers.
    for detector in DetectorKind::ALL {
        let both_recognizers = OcrOptions {
            detector,
            recognizer: RecognizerChoice::Cascade { threshold: 1.01 },
            ..OcrOptions::default()
        };
        for scene in data::ic15_e2e(2)? {
            ocr.read_image(&super::ocr::load(&scene.path)?, &both_recognizers)?;
        }
    }
    let legal = Legal::load(root, &recorder, None)?;
    for point in legal.points().iter().filter(|p| p.space.is_some()) {
        legal.embed(&point.name, "Is a contract made under duress voidable?")?;
    }
    let generate = Generate::load(root, &recorder)?;
    for point in generate.points() {
        generate.generate("E", Some(&point.name), 1)?;
    }
    let runs = recorder.runs();

    let mut found = Vec::new();
    for (dir, file) in models::all_onnx_files(root)? {
        let name = format!("{}/{file}", dir.manifest().service);
        let Some(first) = runs.get(&name).and_then(|r| r.first()) else {
            bail!("{name} does not run in a typical request of its service");
        };
        found.push((dir, file, first.clone()));
    }
    Ok(found)
}

/// Median milliseconds of tract and ort, runs alternating, after one warm-up run each.
fn alternate(
    tract: &dyn Model,
    ort: &dyn Model,
    inputs: &[OwnedInput],
    settings: &EngineBenchSettings,
) -> Result<(f64, f64)> {
    let inputs: Vec<Input<'_>> = inputs.iter().map(OwnedInput::view).collect();
    let models: [&dyn Model; 2] = [tract, ort];
    let mut times = [Vec::new(), Vec::new()];
    for model in models {
        model.run(&inputs)?;
    }
    for _ in 0..settings.runs {
        for (model, times) in models.iter().zip(&mut times) {
            let start = Instant::now();
            model.run(&inputs)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        percentile(times, 50.0)
    };
    Ok((median(&mut times[0]), median(&mut times[1])))
}

pub fn report_text(report: &EngineBenchReport) -> String {
    let mut table = Table::new(&[
        "model",
        "input",
        "threads",
        "tract ms",
        "ort ms",
        "tract/ort",
    ]);
    for row in &report.rows {
        table.row(vec![
            row.model.clone(),
            format!("{:?}", row.input_shape),
            row.threads.to_string(),
            format!("{:.2}", row.tract_ms),
            format!("{:.2}", row.ort_ms),
            format!("{:.2}x", row.tract_over_ort),
        ]);
    }
    let mut text = format!(
        "engines on {} (ort: {}; median of {} runs)\n{table}",
        report.machine, report.ort_library, report.runs
    );
    for row in report.rows.iter().filter(|row| !row.tract_ops.is_empty()) {
        text.push_str(&ops_text(row));
    }
    text
}

/// The kinds of operation (or nodes) that take most of tract's time on one model: enough of
/// them to cover 95% of it, at most eight (twelve nodes).
fn ops_text(row: &EngineRow) -> String {
    let total: f64 = row.tract_ops.iter().map(|op| op.ms).sum();
    let by_node = row.tract_ops.iter().any(|op| op.node.is_some());
    let mut table = Table::new(&["tract op", "nodes", "ms", "share"]);
    let mut covered = 0.0;
    for op in row.tract_ops.iter().take(if by_node { 12 } else { 8 }) {
        if covered >= 0.95 * total {
            break;
        }
        covered += op.ms;
        let name = match &op.node {
            Some(node) => format!("{} {node}", op.op),
            None => op.op.clone(),
        };
        table.row(vec![
            name,
            op.nodes.to_string(),
            format!("{:.2}", op.ms),
            format!("{:.1}%", 100.0 * op.ms / total),
        ]);
    }
    format!(
        "\nwhere tract's time goes on {} {:?} ({:.2}x ort; nodes timed one by one: {total:.2} ms)\n{table}",
        row.model, row.input_shape, row.tract_over_ort
    )
}
