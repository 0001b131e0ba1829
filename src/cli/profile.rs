//! `edgerun profile`: measures each operating point of a service on this device, writes the
//! profile cache that `serve` adapts with, prints a table and draws the quality/latency
//! Pareto front. The measuring itself is [`crate::profiler`]'s.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::GlobalArgs;
use super::registry;
use super::settings::{Runtime, Warm};
use crate::bench::Table;
use crate::models::ModelDir;
use crate::plot::{ParetoPoint, pareto_svg};
use crate::policy::profile::{self, ServiceProfile};
use crate::profiler::{ProfileSettings, Sample, profile_service};
use crate::serve::ServeConfig;

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The service whose operating points to measure: ocr, legal or generate.
    #[arg(long, default_value = "ocr", value_name = "NAME")]
    pub service: String,
    /// `serve`'s configuration file: its [engine] settings are the ones profiled, and its
    /// `profile` path is written.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// OCR sample images (files) [default: the sample scenes shipped in models/ocr, which
    /// `serve` measures with by itself]; legal and generate measure with their shipped
    /// sample questions and prompts.
    #[arg(long, num_args = 1.., value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Passes over the samples per point.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub rounds: usize,
    /// The profile cache to write [default: the config's `profile`, else the cache folder's
    /// profile.json].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The Pareto chart [default: profile-<service>.svg beside the cache].
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

pub fn run(global: &GlobalArgs, args: &ProfileArgs) -> Result<ExitCode> {
    let config = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => ServeConfig::default(),
    };
    let out = args
        .out
        .clone()
        .or(config.profile.clone())
        .unwrap_or_else(profile::default_path);
    let runtime = Runtime::new(global, config.engine.clone())?;
    let name = args.service.as_str();
    let entry = registry::entry(name)?;
    let dir = ModelDir::open(&runtime.models_root, name)?;
    // Cold: the profiler's own first round warms every point up on the shapes it will see.
    let service = entry.build(&runtime, &config, Warm::Cold)?;
    let (samples, inputs) = if args.images.is_empty() {
        entry.samples(&runtime)?
    } else {
        anyhow::ensure!(name == "ocr", "--images are samples for ocr, not {name}");
        let samples = args
            .images
            .iter()
            .map(|path| Sample::image_file(path))
            .collect::<Result<Vec<_>>>()?;
        (samples, format!("{} images given", args.images.len()))
    };
    eprintln!(
        "profiling {name} on {} ({inputs}), {} rounds",
        crate::bench::Machine::current(),
        args.rounds
    );
    let settings = ProfileSettings {
        rounds: args.rounds,
        progress: true,
        skip_dominated: false,
        memory_budget_mib: crate::telemetry::memory_budget_mib(),
    };
    let points = profile_service(service.as_ref(), &samples, settings, None)?;
    // Other services' profiles stay if they were measured with the same settings.
    let measured = ServiceProfile {
        manifest_sha256: dir.manifest_sha256().to_string(),
        quality_metric: dir.manifest().quality_metric.clone(),
        inputs,
        points: points.clone(),
    };
    profile::store(&out, &runtime.profile_key(), name, measured)?;

    let mut table = Table::new(&[
        "point",
        "quality",
        "p50 ms",
        "p95 ms",
        "peak RSS MiB",
        "front",
    ]);
    for p in &points {
        table.row(vec![
            p.name.clone(),
            format!("{:.4}", p.quality),
            format!("{:.1}", p.p50_ms),
            format!("{:.1}", p.p95_ms),
            p.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
            if p.on_front { "yes" } else { "" }.into(),
        ]);
    }
    print!("{table}");
    let svg = args
        .svg
        .clone()
        .unwrap_or_else(|| out.with_file_name(format!("profile-{name}.svg")));
    let chart: Vec<ParetoPoint> = points
        .iter()
        .map(|p| ParetoPoint {
            name: p.name.clone(),
            latency_ms: p.p50_ms,
            latency_p95_ms: p.p95_ms,
            quality: p.quality,
            on_front: p.on_front,
        })
        .collect();
    let metric = dir
        .manifest()
        .quality_metric
        .as_deref()
        .and_then(|m| m.split(':').next())
        .unwrap_or("quality");
    pareto_svg(
        &svg,
        &format!("{name}: quality vs latency on this device"),
        metric,
        &chart,
    )?;
    eprintln!("wrote {} and {}", out.display(), svg.display());
    Ok(ExitCode::SUCCESS)
}
