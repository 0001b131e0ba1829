//! Runtime settings resolved from the command line: defaults applied, paths found, engines
//! built. Subcommands read these, never the raw arguments' defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::ocr::OcrTuning;
use super::{GlobalArgs, RecArg};
use crate::bench::Machine;
use crate::engine::{Backends, Engine, EngineConfig, Placement};
use crate::models::{self, ModelDir};
use crate::policy::profile;
use crate::policy::{Controller, Planning, PolicyConfig, ProfileCache, ProfileKey};
use crate::serve::{PointChoice, ServeConfig};
use crate::services::Service;
use crate::services::generate::Generate;
use crate::services::legal::{self, Legal};
use crate::services::ocr::{OcrOptions, OcrPipeline, RecognizerChoice};

/// What every subcommand runs with.
pub struct Runtime {
    pub models_root: PathBuf,
    pub engine: Arc<dyn Engine>,
    pub threads: usize,
    pub engine_config: EngineConfig,
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
            engine: Arc::new(Backends::new(config.clone())?),
            threads,
            engine_config: config,
        })
    }

    /// What a profile measured with these settings on this machine is keyed by.
    pub fn profile_key(&self) -> ProfileKey {
        let machine = Machine::current();
        let config = &self.engine_config;
        let mut backend = config.backend.name().to_string();
        if config.uses_ort() {
            let providers: Vec<&str> = config.ort.providers.iter().map(|p| p.name()).collect();
            backend += &format!(" [{}]", providers.join(","));
        }
        for (model, choice) in &config.models {
            backend += &format!("; {model}={}", choice.name());
        }
        if config.uses_ort() && !config.ort.int8_matmul.is_empty() {
            backend += &format!("; int8 MatMuls: {}", config.ort.int8_matmul.join(","));
        }
        ProfileKey {
            edgerun_version: env!("CARGO_PKG_VERSION").into(),
            arch: machine.arch.into(),
            cpu: machine.cpu,
            logical_cores: machine.logical_cores,
            threads: self.threads,
            backend,
        }
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

impl Runtime {
    /// Loads the legal retriever over the corpus at `corpus` (the COLIEE Civil Code under the
    /// data folder when `None`).
    pub fn legal(&self, corpus: Option<&Path>, warm: Warm) -> Result<Legal> {
        let corpus = corpus.map_or_else(legal::default_corpus, Path::to_path_buf);
        let legal = Legal::load(&self.models_root, self.engine.as_ref(), &corpus)
            .with_context(|| format!("loading the legal service (corpus {})", corpus.display()))?;
        if warm == Warm::Up {
            legal.warm_up()?;
        }
        Ok(legal)
    }
}

impl Runtime {
    /// Loads the text-to-image generators.
    pub fn generate(&self, warm: Warm) -> Result<Generate> {
        let generate = Generate::load(&self.models_root, self.engine.as_ref())
            .context("loading the generate service")?;
        if warm == Warm::Up {
            generate.warm_up()?;
        }
        log_placements(&generate.placements());
        Ok(generate)
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
    if global.fixed_threads {
        config.adapt_threads = false;
    }
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
    if let Some(models) = &global.ort_int8 {
        config.ort.int8_matmul = models.clone();
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

/// How each served service chooses its operating point: a controller over the points in
/// the profile cache where the configuration gives the service a latency target and the
/// cache fits this device, build and settings; otherwise its default point, with the reason
/// (logged, and published in the status).
pub fn point_choices(
    runtime: &Runtime,
    config: &ServeConfig,
    services: &[Arc<dyn Service>],
) -> BTreeMap<String, PointChoice> {
    let profile_path = config.profile.clone().unwrap_or_else(profile::default_path);
    let key = runtime.profile_key();
    let mut choices = BTreeMap::new();
    for service in services {
        let name = service.name();
        let choice = match config.policy.get(name) {
            None => PointChoice::Fixed {
                why: format!("no [policy.{name}] latency target configured"),
            },
            Some(policy) => {
                match controller_for(runtime, &profile_path, &key, service.as_ref(), policy) {
                    Ok(controller) => {
                        tracing::info!(
                            "{name}: adaptive over {:?}, starting at {}",
                            controller.state().candidates,
                            controller.current()
                        );
                        PointChoice::Adaptive(Box::new(controller))
                    }
                    Err(why) => {
                        tracing::warn!("{name}: serving its default point: {why:#}");
                        PointChoice::Fixed {
                            why: format!("{why:#}"),
                        }
                    }
                }
            }
        };
        choices.insert(name.to_string(), choice);
    }
    choices
}

fn controller_for(
    runtime: &Runtime,
    profile_path: &std::path::Path,
    key: &ProfileKey,
    service: &dyn Service,
    policy: &PolicyConfig,
) -> Result<Controller> {
    let dir = ModelDir::open(&runtime.models_root, service.name())?;
    let cache = ProfileCache::load(profile_path)?;
    let profile = cache.valid_for(profile_path, key, service.name(), dir.manifest_sha256())?;
    Ok(Controller::new(
        policy.clone(),
        profile.points.clone(),
        Planning::for_service(service.meets_deadlines()),
        std::time::Instant::now(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ProfiledPoint, ServiceProfile};
    use crate::services::{Payload, ServiceError, Serving};

    /// Stands in for the OCR service: only its name matters here.
    struct Named;

    impl Service for Named {
        fn name(&self) -> &'static str {
            "ocr"
        }
        fn handle(
            &self,
            _: Option<&str>,
            _: &Payload,
            _: Serving<'_>,
        ) -> Result<serde_json::Value, ServiceError> {
            Ok(serde_json::Value::Null)
        }
        fn describe(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    fn why_fixed(choice: &PointChoice) -> String {
        match choice {
            PointChoice::Fixed { why } => why.clone(),
            PointChoice::Adaptive(c) => panic!("adaptive at {}", c.current()),
        }
    }

    #[test]
    fn a_service_adapts_only_with_a_target_and_a_profile_of_this_setup() {
        let engine_config = EngineConfig::default();
        let runtime = Runtime {
            models_root: models::default_root(),
            engine: Arc::new(Backends::new(engine_config.clone()).unwrap()),
            threads: 1,
            engine_config,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServeConfig {
            profile: Some(dir.path().join("profile.json")),
            ..ServeConfig::default()
        };
        let services: Vec<Arc<dyn Service>> = vec![Arc::new(Named)];
        let choose = |config: &ServeConfig| point_choices(&runtime, config, &services);

        let why = why_fixed(&choose(&config)["ocr"]);
        assert!(why.contains("no [policy.ocr] latency target"), "{why}");

        config.policy.insert("ocr".into(), PolicyConfig::default());
        let why = why_fixed(&choose(&config)["ocr"]);
        assert!(why.contains("run `edgerun profile`"), "{why}");

        let manifest = ModelDir::open(&runtime.models_root, "ocr").unwrap();
        let mut cache = ProfileCache::new(runtime.profile_key());
        cache.services.insert(
            "ocr".into(),
            ServiceProfile {
                manifest_sha256: manifest.manifest_sha256().into(),
                quality_metric: None,
                inputs: "test".into(),
                points: vec![ProfiledPoint::new("tiny@640", 0.3, 10.0, 12.0)],
            },
        );
        cache.save(config.profile.as_ref().unwrap()).unwrap();
        match &choose(&config)["ocr"] {
            PointChoice::Adaptive(c) => assert_eq!(c.current(), "tiny@640"),
            PointChoice::Fixed { why } => panic!("fixed: {why}"),
        }

        cache.key.threads = 4;
        cache.save(config.profile.as_ref().unwrap()).unwrap();
        let why = why_fixed(&choose(&config)["ocr"]);
        assert!(why.contains("other settings"), "{why}");
    }
}
