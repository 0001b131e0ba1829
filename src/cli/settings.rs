//! Runtime settings resolved from the command line: defaults applied, paths found, engines
//! built. Subcommands read these, never the raw arguments' defaults.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::ocr::OcrTuning;
use super::{GlobalArgs, RecArg};
use crate::engine::{Backends, Engine, EngineConfig, Placement};
use crate::models::{self, ModelDir};
use crate::services::ocr::{OcrOptions, OcrPipeline, RecognizerChoice};

/// What every subcommand runs with.
pub struct Runtime {
    pub models_root: PathBuf,
    pub engine: Arc<dyn Engine>,
    pub threads: usize,
}

impl Runtime {
    /// The runtime with the default engine settings and the flags applied.
    pub fn from_args(global: &GlobalArgs) -> Result<Runtime> {
        Runtime::new(global, EngineConfig::default())
    }

    /// The runtime with `config` (from a file) and the flags applied on top.
    pub fn new(global: &GlobalArgs, config: EngineConfig) -> Result<Runtime> {
        let config = engine_config(global, config)?;
        let threads = config.threads;
        Ok(Runtime {
            models_root: global.models.clone().unwrap_or_else(models::default_root),
            engine: Arc::new(Backends::new(config)?),
            threads,
        })
    }

    /// Loads the OCR models; `warm` prepares them for a typical request first (a server
    /// does, so its first request is not slow; a one-shot command would only waste the time).
    pub fn ocr_pipeline(&self, warm: Warm) -> Result<OcrPipeline> {
        let dir = ModelDir::open(&self.models_root, "ocr")?;
        let pipeline = OcrPipeline::load(self.engine.as_ref(), &dir)
            .with_context(|| format!("loading OCR models from {}", dir.dir().display()))?;
        if warm == Warm::Up {
            pipeline.warm_up()?;
        }
        log_placements(&pipeline.placements());
        Ok(pipeline)
    }
}

/// Whether to warm models up when loading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warm {
    Up,
    Cold,
}

/// Engine settings: `config` (from a file or the defaults) with the flags applied on top.
pub fn engine_config(global: &GlobalArgs, mut config: EngineConfig) -> Result<EngineConfig> {
    config.threads = global.threads.unwrap_or(config.threads);
    anyhow::ensure!(config.threads >= 1, "--threads must be at least 1");
    config.backend = global.backend.unwrap_or(config.backend);
    if let Some(library) = &global.ort_lib {
        config.ort.library = Some(library.clone());
    }
    if let Some(providers) = &global.providers {
        anyhow::ensure!(!providers.is_empty(), "--providers needs at least one");
        config.ort.providers = providers.clone();
    }
    if let Some(dir) = &global.tensorrt_cache {
        config.ort.tensorrt_cache = Some(dir.clone());
    }
    Ok(config)
}

/// The recognizer the flags ask for.
pub fn recognizer_choice(rec: RecArg, threshold: f32) -> RecognizerChoice {
    match rec {
        RecArg::Tiny => RecognizerChoice::Tiny,
        RecArg::Small => RecognizerChoice::Small,
        RecArg::Cascade => RecognizerChoice::Cascade { threshold },
    }
}

/// OCR options from the common OCR flags.
pub fn ocr_options(tuning: &OcrTuning) -> Result<OcrOptions> {
    let options = OcrOptions {
        det_limit: tuning.det_limit,
        recognizer: recognizer_choice(tuning.rec, tuning.threshold),
        ascii_only: tuning.ascii,
        batch_size: tuning.batch,
        ..OcrOptions::default()
    };
    options.validate()?;
    Ok(options)
}

/// Says where each model runs; a provider that failed to load is a warning.
fn log_placements(placements: &[Placement]) {
    for placement in placements {
        if placement.notes.iter().any(|n| n.contains("unavailable")) {
            tracing::warn!("{placement}");
        } else {
            tracing::info!("{placement}");
        }
    }
}
