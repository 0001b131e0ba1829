//! Runtime settings resolved from the command line: defaults applied, paths found, engines
//! built. Subcommands read these, never the raw arguments' defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::ocr::OcrTuning;
use super::registry;
use super::{DetArg, GlobalArgs, RecArg};
use crate::bench::Machine;
use crate::engine::{Backends, Engine, EngineConfig, Placement};
use crate::models::{self, ModelDir};
use crate::policy::profile;
use crate::policy::{Controller, Planning, ProfileCache, ProfileKey};
use crate::profiler::ProfileSettings;
use crate::serve::learn::Learning;
use crate::serve::{PointChoice, ServeConfig};
use crate::services::generate::Generate;
use crate::services::legal::Legal;
use crate::services::ocr::{DetectorKind, OcrOptions, OcrPipeline, RecognizerChoice};
use crate::services::{Service, WarmUp};
use crate::telemetry::memory_budget_mib;

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
            build: build_description(),
            arch: machine.arch.into(),
            cpu: machine.cpu,
            logical_cores: machine.logical_cores,
            threads: self.threads,
            backend,
            memory_class_mib: memory_budget_mib().map(profile::memory_class_mib),
        }
    }

    /// Loads the OCR models; `warm` prepares them for a typical request first (a server
    /// does, so its first request is not slow; a one-shot command would only waste the time).
    pub fn ocr_pipeline(&self, warm: Warm) -> Result<OcrPipeline> {
        let dir = ModelDir::open(&self.models_root, "ocr")?;
        let pipeline = OcrPipeline::load(self.engine.as_ref(), &dir)
            .with_context(|| format!("loading OCR models from {}", dir.dir().display()))?;
        if let Some(scope) = warm.scope() {
            pipeline.warm_up(scope)?;
        }
        log_placements(&pipeline.placements());
        Ok(pipeline)
    }
}

impl Runtime {
    /// Loads the legal retriever over the Civil Code that ships in `models/legal`, or over
    /// the copy at `corpus`.
    pub fn legal(&self, corpus: Option<&Path>, warm: Warm) -> Result<Legal> {
        let legal = Legal::load(&self.models_root, self.engine.as_ref(), corpus)
            .context("loading the legal service")?;
        if let Some(scope) = warm.scope() {
            legal.warm_up(scope)?;
        }
        Ok(legal)
    }
}

impl Runtime {
    /// Loads the text-to-image generators.
    pub fn generate(&self, warm: Warm) -> Result<Generate> {
        let generate = Generate::load(&self.models_root, self.engine.as_ref())
            .context("loading the generate service")?;
        if let Some(scope) = warm.scope() {
            generate.warm_up(scope)?;
        }
        log_placements(&generate.placements());
        Ok(generate)
    }
}

/// How this binary was built, as far as it changes what points cost: optimised or not,
/// and with which optional engines.
pub fn build_description() -> String {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let features = if cfg!(feature = "ort") { " +ort" } else { "" };
    format!("{profile}{features}")
}

/// Which models to plan when loading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warm {
    /// Every point's.
    Up,
    /// The default point's only (`serve`, which plans the rest once online).
    DefaultPoint,
    /// None: each is planned when first used.
    Cold,
}

impl Warm {
    fn scope(self) -> Option<WarmUp<'static>> {
        match self {
            Warm::Up => Some(WarmUp::EveryPoint),
            Warm::DefaultPoint => Some(WarmUp::DefaultPoint),
            Warm::Cold => None,
        }
    }
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

/// OCR options from the common OCR flags: the knobs of `--point` (the manifest's default
/// point without it), with explicit `--rec`, `--threshold`, `--det` and `--det-limit` on
/// top.
pub fn ocr_options(tuning: &OcrTuning, pipeline: &OcrPipeline) -> Result<OcrOptions> {
    let name = tuning
        .point
        .as_deref()
        .unwrap_or(&pipeline.point_set().default_point);
    let point = pipeline
        .points()
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown OCR point {name:?} (known: {})",
                pipeline.point_set().names().join(", ")
            )
        })?;
    let mut options = point.apply(&OcrOptions {
        ascii_only: tuning.ascii,
        batch_size: tuning.batch,
        ..OcrOptions::default()
    });
    let threshold = tuning.threshold.unwrap_or(match options.recognizer {
        RecognizerChoice::Cascade { threshold } => threshold,
        _ => 0.9,
    });
    options.recognizer = match tuning.rec {
        Some(rec) => recognizer_choice(rec, threshold),
        None if tuning.threshold.is_some() => RecognizerChoice::Cascade { threshold },
        None => options.recognizer,
    };
    options.detector = match tuning.det {
        Some(DetArg::Tiny) => DetectorKind::Tiny,
        Some(DetArg::Small) => DetectorKind::Small,
        None => options.detector,
    };
    options.det_limit = tuning.det_limit.unwrap_or(options.det_limit);
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
/// the profile cache where the cache fits this device, build and settings; where it does
/// not (or has no such service yet), the default point while `serve` measures the points
/// in the background; the default point for good where the service has no points or its
/// adaptation is turned off. The reason is logged and published in the status.
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
        let choice = point_choice(runtime, config, &profile_path, &key, service.as_ref());
        match &choice {
            PointChoice::Adaptive(c) => tracing::info!(
                "{name}: adaptive over {:?} (measured before), starting at {}",
                c.state().candidates,
                c.current()
            ),
            PointChoice::Learn(l) => tracing::info!("{name}: {}", l.why_measuring()),
            PointChoice::Fixed { why } => tracing::info!("{name}: default point: {why}"),
        }
        choices.insert(name.to_string(), choice);
    }
    choices
}

fn point_choice(
    runtime: &Runtime,
    config: &ServeConfig,
    profile_path: &Path,
    key: &ProfileKey,
    service: &dyn Service,
) -> PointChoice {
    let name = service.name();
    let fixed = |why: String| PointChoice::Fixed { why };
    let Some(points) = service.points() else {
        return fixed("not adaptive: no operating points".into());
    };
    let settings = config.policy.get(name).cloned().unwrap_or_default();
    if !settings.adaptive {
        return fixed(format!(
            "adaptation turned off ([policy.{name}] adaptive = false)"
        ));
    }
    let policy = settings.resolve(points.slo_ms);
    let planning = Planning::for_service(service.meets_deadlines());
    let dir = match ModelDir::open(&runtime.models_root, name) {
        Ok(dir) => dir,
        Err(e) => return fixed(format!("{e}")),
    };
    let stored = ProfileCache::load(profile_path).and_then(|cache| {
        cache
            .valid_for(profile_path, key, name, dir.manifest_sha256())
            .map(|p| p.points.clone())
    });
    let reason = match stored {
        Ok(measured) => match Controller::new(policy.clone(), measured, planning, Instant::now()) {
            Ok(controller) => return PointChoice::Adaptive(Box::new(controller)),
            Err(e) => format!("the stored profile is unusable: {e}"),
        },
        Err(e) => e.to_string(),
    };
    let samples = registry::entry(name).and_then(|entry| entry.samples(runtime));
    match samples {
        Ok((samples, inputs)) if !samples.is_empty() => PointChoice::Learn(Box::new(Learning {
            policy,
            samples,
            inputs,
            settings: ProfileSettings {
                rounds: config.profile_rounds,
                progress: false,
                skip_dominated: true,
                memory_budget_mib: memory_budget_mib(),
            },
            cache: profile_path.to_path_buf(),
            key: key.clone(),
            manifest_sha256: dir.manifest_sha256().to_string(),
            reason,
        })),
        Ok(_) => fixed(format!("{reason}, and no sample requests to measure with")),
        Err(e) => fixed(format!(
            "{reason}, and its sample requests cannot be read: {e:#}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::PointSet;
    use crate::policy::{ProfiledPoint, ServiceProfile};
    use crate::serve::config::AdaptSettings;
    use crate::services::{Handled, Payload, ServiceError, Serving};

    /// Stands in for the OCR service: its name and the manifest's points are what matter.
    struct Named(Option<PointSet>);

    impl Service for Named {
        fn name(&self) -> &'static str {
            "ocr"
        }
        fn answer(
            &self,
            _: Option<&str>,
            _: &Payload,
            _: Serving<'_>,
        ) -> Result<Handled, ServiceError> {
            Err(ServiceError::new("internal", "not served in this test"))
        }
        fn points(&self) -> Option<&PointSet> {
            self.0.as_ref()
        }
        fn describe(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    fn learning(choice: &PointChoice) -> &Learning {
        match choice {
            PointChoice::Learn(l) => l,
            PointChoice::Adaptive(c) => panic!("adaptive at {}", c.current()),
            PointChoice::Fixed { why } => panic!("fixed: {why}"),
        }
    }

    #[test]
    fn a_service_adapts_from_a_profile_of_this_setup_and_measures_itself_otherwise() {
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
        let manifest = ModelDir::open(&runtime.models_root, "ocr").unwrap();
        let points = PointSet::from_manifest(manifest.manifest()).unwrap();
        let services: Vec<Arc<dyn Service>> = vec![Arc::new(Named(points))];
        let choose = |config: &ServeConfig| point_choices(&runtime, config, &services);

        // No profile: measure in the background, with the manifest's target and the
        // shipped sample scenes.
        let choices = choose(&config);
        let learn = learning(&choices["ocr"]);
        assert!(learn.reason.contains("no profile at"), "{}", learn.reason);
        assert_eq!(learn.policy.slo_ms, 1200.0);
        assert_eq!(learn.samples.len(), 2);
        assert_eq!(learn.inputs, "models/ocr scene_1.png, scene_2.png");

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
            PointChoice::Adaptive(c) => {
                assert_eq!(c.current(), "tiny@640");
                assert_eq!(c.config().slo_ms, 1200.0);
            }
            _ => panic!("not adaptive"),
        }
        // A configured target wins over the manifest's.
        config.policy.insert(
            "ocr".into(),
            AdaptSettings {
                slo_ms: Some(250.0),
                ..AdaptSettings::default()
            },
        );
        match &choose(&config)["ocr"] {
            PointChoice::Adaptive(c) => assert_eq!(c.config().slo_ms, 250.0),
            _ => panic!("not adaptive"),
        }

        // Measured with another thread count: refused with the reason, measured again.
        cache.key.threads = 4;
        cache.save(config.profile.as_ref().unwrap()).unwrap();
        let choices = choose(&config);
        let learn = learning(&choices["ocr"]);
        assert!(
            learn.reason.contains("with other settings"),
            "{}",
            learn.reason
        );
        assert!(learn.reason.contains("threads: 4"), "{}", learn.reason);
        assert_eq!(learn.policy.slo_ms, 250.0);
        // ... and so is one from another build.
        cache.key.threads = 1;
        cache.key.build = "debug".into();
        cache.save(config.profile.as_ref().unwrap()).unwrap();
        let choices = choose(&config);
        let learn = learning(&choices["ocr"]);
        assert!(
            learn.reason.contains("build: \"debug\""),
            "{}",
            learn.reason
        );

        config.policy.get_mut("ocr").unwrap().adaptive = false;
        match &choose(&config)["ocr"] {
            PointChoice::Fixed { why } => assert!(why.contains("adaptive = false"), "{why}"),
            _ => panic!("adaptive although turned off"),
        }
        let services: Vec<Arc<dyn Service>> = vec![Arc::new(Named(None))];
        match &point_choices(&runtime, &config, &services)["ocr"] {
            PointChoice::Fixed { why } => assert!(why.contains("no operating points"), "{why}"),
            _ => panic!("adaptive without points"),
        }
    }
}
