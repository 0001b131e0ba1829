//! `edgerun profile`: measures each operating point of a service on this device, writes the
//! profile cache that `serve` adapts with, prints a table and draws the quality/latency
//! Pareto front. The measuring itself is [`crate::profiler`]'s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::GlobalArgs;
use super::settings::{Runtime, Warm};
use crate::bench::Table;
use crate::models::ModelDir;
use crate::plot::{ParetoPoint, pareto_svg};
use crate::policy::profile::{self, ProfileCache, ServiceProfile};
use crate::profiler::{ProfileSettings, Sample, profile_service};
use crate::serve::ServeConfig;
use crate::services::generate::{GenerateService, SAMPLE_PROMPTS};
use crate::services::legal::LegalService;
use crate::services::ocr::{OcrOptions, OcrService};
use crate::services::{Payload, Service};

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The service whose operating points to measure: ocr, legal or generate.
    #[arg(long, default_value = "ocr", value_name = "NAME")]
    pub service: String,
    /// `serve`'s configuration file: its [engine] settings are the ones profiled, and its
    /// `profile` path is written.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// OCR sample images (files) [default: the first --samples ICDAR 2015 scenes in
    /// $EDGERUN_DATA]; legal samples are the first --samples COLIEE R05 queries, generate
    /// samples --samples prompts with seeds 0, 1, ...
    #[arg(long, num_args = 1.., value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// How many ICDAR 2015 scenes to use when no --images are given.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub samples: usize,
    /// Passes over the samples per point.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub rounds: usize,
    /// The profile cache to write [default: the config's `profile`, else the cache folder's
    /// profile.json].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The Pareto chart [default: profile-ocr.svg beside the cache].
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
    let dir = ModelDir::open(&runtime.models_root, name)?;
    // Cold: the profiler's own first round warms every point up on the shapes it will see.
    let (service, samples, inputs): (Box<dyn Service>, Vec<Sample>, String) = match name {
        "ocr" => {
            let pipeline = Arc::new(runtime.ocr_pipeline(Warm::Cold)?);
            let service = OcrService::new(pipeline, OcrOptions::default(), config.max_pixels);
            let (samples, inputs) = sample_images(args)?;
            (Box::new(service), samples, inputs)
        }
        "legal" => {
            let corpus = config
                .services
                .get("legal")
                .and_then(|s| s.corpus.as_deref());
            let legal = Arc::new(runtime.legal(corpus, Warm::Cold)?);
            let (samples, inputs) = sample_queries(args.samples)?;
            (Box::new(LegalService::new(legal)), samples, inputs)
        }
        "generate" => {
            let generate = Arc::new(runtime.generate(Warm::Cold)?);
            let (samples, inputs) = sample_prompts(args.samples);
            (Box::new(GenerateService::new(generate)), samples, inputs)
        }
        other => anyhow::bail!(
            "no operating points to profile for service {other:?} (ocr, legal, generate)"
        ),
    };
    eprintln!(
        "profiling {name} on {} ({inputs}), {} rounds",
        crate::bench::Machine::current(),
        args.rounds
    );
    let points = profile_service(
        service.as_ref(),
        &samples,
        ProfileSettings {
            rounds: args.rounds,
        },
    )?;

    let key = runtime.profile_key();
    // Other services' profiles stay if they were measured with the same settings.
    let mut cache = match ProfileCache::load(&out) {
        Ok(cache) if cache.key == key && cache.format == profile::FORMAT => cache,
        _ => ProfileCache::new(key),
    };
    cache.services.insert(
        name.into(),
        ServiceProfile {
            manifest_sha256: dir.manifest_sha256().to_string(),
            quality_metric: dir.manifest().quality_metric.clone(),
            inputs,
            points: points.clone(),
        },
    );
    cache.save(&out)?;

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

/// The first `n` COLIEE R05 queries as JSON requests; and a description of them.
fn sample_queries(n: usize) -> Result<(Vec<Sample>, String)> {
    let queries = crate::data::coliee_queries(&["R05"])
        .context("the COLIEE R05 queries are not available (set EDGERUN_DATA)")?;
    let samples = queries
        .iter()
        .take(n)
        .map(|q| Sample {
            content_type: Some("application/json".into()),
            payload: Payload::Json(serde_json::json!({"query": q.text})),
        })
        .collect::<Vec<_>>();
    let inputs = format!("COLIEE R05 queries 1..{}", samples.len());
    Ok((samples, inputs))
}

/// Prompts for the generate service: a few words, seed = sample index.
fn sample_prompts(n: usize) -> (Vec<Sample>, String) {
    let samples = (0..n)
        .map(|i| Sample {
            content_type: Some("application/json".into()),
            payload: Payload::Json(serde_json::json!({
                "prompt": SAMPLE_PROMPTS[i % SAMPLE_PROMPTS.len()],
                "seed": i,
                "format": "json",
            })),
        })
        .collect();
    (samples, format!("{n} prompts"))
}

/// The sample requests: the given images, or ICDAR 2015 scenes; and a description of them.
fn sample_images(args: &ProfileArgs) -> Result<(Vec<Sample>, String)> {
    let (paths, inputs): (Vec<PathBuf>, String) = if args.images.is_empty() {
        let scenes = crate::data::ic15_e2e(args.samples).context(
            "no --images given and the ICDAR 2015 scenes are not available (set EDGERUN_DATA)",
        )?;
        let paths = scenes.into_iter().map(|s| s.path).collect();
        (paths, format!("ic15-e2e img_1..img_{}", args.samples))
    } else {
        let n = args.images.len();
        (args.images.clone(), format!("{n} images given"))
    };
    let samples = paths
        .iter()
        .map(|path| Sample::image_file(path))
        .collect::<Result<Vec<_>>>()?;
    Ok((samples, inputs))
}
