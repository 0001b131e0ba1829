//! The services this build serves, in one table: how each is built from `serve`'s
//! configuration, and which sample requests (shipped in `models/`, so that a device needs
//! nothing else) measure its operating points. `serve`, `profile` and `bench` find a
//! service here by name and never match names themselves.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::settings::{Runtime, Warm};
use crate::models::ModelDir;
use crate::profiler::Sample;
use crate::serve::ServeConfig;
use crate::services::echo::EchoService;
use crate::services::generate::{GenerateService, SAMPLE_PROMPTS};
use crate::services::legal::{LegalService, SAMPLE_QUERIES};
use crate::services::ocr::{OcrOptions, OcrService};
use crate::services::{Payload, Service};

/// Sample requests and what they are ("8 sample questions").
pub type Samples = (Vec<Sample>, String);

/// One service of the table.
pub struct ServiceEntry {
    pub name: &'static str,
    /// Loads the service as `serve` configures it; `warm` prepares its models first.
    build: fn(&Runtime, &ServeConfig, Warm) -> Result<Arc<dyn Service>>,
    /// Requests to measure its points with, and what they are; none for a service
    /// without points.
    samples: fn(&Runtime) -> Result<Samples>,
}

impl ServiceEntry {
    pub fn build(
        &self,
        runtime: &Runtime,
        config: &ServeConfig,
        warm: Warm,
    ) -> Result<Arc<dyn Service>> {
        (self.build)(runtime, config, warm)
            .with_context(|| format!("loading the {} service", self.name))
    }

    pub fn samples(&self, runtime: &Runtime) -> Result<Samples> {
        (self.samples)(runtime)
    }
}

/// Every service, in the order they are measured in (quickest first, so that most become
/// adaptive early).
pub const SERVICES: &[ServiceEntry] = &[
    ServiceEntry {
        name: "echo",
        build: |_, _, _| Ok(Arc::new(EchoService)),
        samples: |_| Ok((Vec::new(), String::new())),
    },
    ServiceEntry {
        name: "legal",
        build: |runtime, config, warm| {
            let corpus = config
                .services
                .get("legal")
                .and_then(|s| s.corpus.as_deref());
            Ok(Arc::new(LegalService::new(Arc::new(
                runtime.legal(corpus, warm)?,
            ))))
        },
        samples: |_| {
            let samples = SAMPLE_QUERIES
                .iter()
                .map(|q| json_sample(serde_json::json!({"query": q})))
                .collect();
            Ok((
                samples,
                format!("{} sample questions", SAMPLE_QUERIES.len()),
            ))
        },
    },
    ServiceEntry {
        name: "generate",
        build: |runtime, _, warm| {
            Ok(Arc::new(GenerateService::new(Arc::new(
                runtime.generate(warm)?,
            ))))
        },
        samples: |_| {
            let samples = SAMPLE_PROMPTS
                .iter()
                .enumerate()
                .map(|(seed, prompt)| {
                    json_sample(
                        serde_json::json!({"prompt": prompt, "seed": seed, "format": "json"}),
                    )
                })
                .collect();
            Ok((samples, format!("{} prompts", SAMPLE_PROMPTS.len())))
        },
    },
    ServiceEntry {
        name: "ocr",
        build: |runtime, config, warm| {
            let pipeline = Arc::new(runtime.ocr_pipeline(warm)?);
            let settings = config.services.get("ocr").cloned().unwrap_or_default();
            let defaults = OcrOptions {
                ascii_only: settings.ascii,
                batch_size: settings.batch,
                ..OcrOptions::default()
            };
            Ok(Arc::new(OcrService::new(
                pipeline,
                defaults,
                config.max_pixels,
            )))
        },
        samples: |runtime| {
            let dir = ModelDir::open(&runtime.models_root, "ocr")?;
            let files: Vec<&str> = dir
                .manifest()
                .files
                .iter()
                .filter(|f| f.role == "profile_sample")
                .map(|f| f.file.as_str())
                .collect();
            let samples = files
                .iter()
                .map(|file| {
                    Ok(Sample {
                        content_type: None,
                        payload: Payload::Raw(dir.read_verified(file)?.into()),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((samples, format!("models/ocr {}", files.join(", "))))
        },
    },
];

/// The services called `names`, in that order, each loaded on a thread of its own: loading
/// is mostly planning and warming models, one core each, so on a multi-core device the
/// services are ready in about the time of the slowest rather than of all together.
pub fn build_all<'n>(
    names: impl IntoIterator<Item = &'n String>,
    runtime: &Runtime,
    config: &ServeConfig,
    warm: Warm,
) -> Result<Vec<Arc<dyn Service>>> {
    let entries = names
        .into_iter()
        .map(|name| entry(name))
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|scope| {
        let loading: Vec<_> = entries
            .iter()
            .map(|entry| {
                scope.spawn(move || {
                    let service = entry.build(runtime, config, warm);
                    // This thread's arena keeps what loading freed (model bytes, planning
                    // scratch) at its top, which only this thread can trim.
                    crate::allocator::return_free_memory();
                    service
                })
            })
            .collect();
        loading
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// The service called `name`.
pub fn entry(name: &str) -> Result<&'static ServiceEntry> {
    SERVICES
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow::anyhow!("unknown service {name:?} (known: {})", names().join(", ")))
}

pub fn names() -> Vec<&'static str> {
    SERVICES.iter().map(|s| s.name).collect()
}

fn json_sample(body: serde_json::Value) -> Sample {
    Sample {
        content_type: Some("application/json".into()),
        payload: Payload::Json(body),
    }
}
