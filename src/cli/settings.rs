//! Runtime settings resolved from the command line: defaults applied, paths found, engines
//! built. Subcommands read these, never the raw arguments' defaults.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::ocr::OcrTuning;
use super::{GlobalArgs, RecArg};
use crate::engine::{Engine, EngineConfig, TractEngine};
use crate::models::{self, ModelDir};
use crate::services::ocr::{OcrOptions, OcrPipeline, RecognizerChoice};

/// What every subcommand runs with.
pub struct Runtime {
    pub models_root: PathBuf,
    pub engine: Arc<dyn Engine>,
    pub threads: usize,
}

impl Runtime {
    pub fn from_args(global: &GlobalArgs) -> Result<Runtime> {
        anyhow::ensure!(global.threads >= 1, "--threads must be at least 1");
        let config = EngineConfig {
            threads: global.threads,
            ..EngineConfig::default()
        };
        Ok(Runtime {
            models_root: global.models.clone().unwrap_or_else(models::default_root),
            engine: Arc::new(TractEngine::new(config)),
            threads: global.threads,
        })
    }

    /// Loads and warms up the OCR models.
    pub fn ocr_pipeline(&self) -> Result<OcrPipeline> {
        let dir = ModelDir::open(&self.models_root, "ocr")?;
        let pipeline = OcrPipeline::load(self.engine.as_ref(), &dir)
            .with_context(|| format!("loading OCR models from {}", dir.dir().display()))?;
        pipeline.warm_up()?;
        tracing::info!("ocr models: {}", pipeline.describe());
        Ok(pipeline)
    }
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
