//! The ONNX Runtime engine (cargo feature `ort`): CPU, CUDA and TensorRT execution providers.
//!
//! `libonnxruntime` is not linked: it is opened at run time from a configured path, so one
//! binary runs on boxes with or without it, and a missing or too old library is an error
//! message rather than a crash. ONNX Runtime allows one environment per process; it is
//! created on first use and shared by every [`OrtEngine`].
//!
//! Execution providers are registered with `error_on_failure`, so a provider that cannot load
//! (no GPU, CPU-only library, missing CUDA libraries) is reported in the model's
//! [`Placement`] instead of ONNX Runtime quietly running everything on the CPU.
//!
//! ort runs a session through `&mut`, so one session serves one request at a time. On the
//! CPU a model whose requests overlap (two workers) opens another session of itself rather
//! than making them take turns; its sessions share their packed weights.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use ndarray::ArrayD;
use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, TensorRef, ValueRef, ValueType};

use super::pool::Pool;
use super::{
    ElementType, Engine, EngineConfig, EngineError, Input, Model, Onnx, Placement, Provider, Reread,
};

/// Loads ONNX files into ONNX Runtime sessions.
pub struct OrtEngine {
    /// The library's path and build information, for logs and reports.
    library: String,
    settings: Arc<SessionSettings>,
}

/// What every session of this engine is opened with; models keep it to open more.
struct SessionSettings {
    environment: Environment,
    config: EngineConfig,
    tensorrt_cache: PathBuf,
}

impl OrtEngine {
    /// Opens the configured ONNX Runtime library (or `$ORT_DYLIB_PATH`, or the system's) and
    /// the process's environment.
    pub fn new(config: &EngineConfig) -> Result<OrtEngine, EngineError> {
        let library = config
            .ort
            .library
            .clone()
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"));
        let environment = environment(&library)?;
        Ok(OrtEngine {
            library: format!("{} ({})", library.display(), build_info()),
            settings: Arc::new(SessionSettings {
                environment,
                config: config.clone(),
                tensorrt_cache: config
                    .ort
                    .tensorrt_cache
                    .clone()
                    .unwrap_or_else(default_tensorrt_cache),
            }),
        })
    }

    /// The library this engine runs on: path and build information.
    pub fn library(&self) -> &str {
        &self.library
    }
}

impl SessionSettings {
    fn base_builder(&self) -> ort::Result<SessionBuilder> {
        Ok(Session::builder(&self.environment)?
            // `All` is ONNX Runtime's own default; ort's `Level3` stops at layout rewrites.
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(self.config.threads)?
            .with_inter_threads(1)?
            // Spinning worker threads burn a small board's cores and power between requests.
            .with_intra_op_spinning(false)?)
    }

    fn dispatch(&self, provider: Provider, model: &str) -> ExecutionProviderDispatch {
        match provider {
            Provider::Tensorrt => {
                // One engine file per model and shape profile; the timing cache is shared.
                let prefix = model.replace(['/', '.'], "_");
                ep::TensorRT::default()
                    .with_fp16(self.config.ort.tensorrt_fp16)
                    .with_engine_cache(true)
                    .with_engine_cache_path(self.tensorrt_cache.display())
                    .with_engine_cache_prefix(prefix)
                    .with_timing_cache(true)
                    .with_timing_cache_path(self.tensorrt_cache.display())
                    .build()
            }
            Provider::Cuda => ep::CUDA::default().build(),
            // ort's CPU provider turns ONNX Runtime's memory arena off unless asked; without
            // it every run maps fresh pages for its activations (measured: the 544x960
            // detector 80 ms instead of 60 ms at one thread).
            Provider::Cpu => ep::CPU::default().with_arena_allocator(true).build(),
        }
        .error_on_failure()
    }

    /// A builder for `model` with those of `providers` that load (in order) and notes on
    /// those that do not.
    fn builder(
        &self,
        model: &str,
        providers: &[Provider],
        prepacked: &PrepackedWeights,
    ) -> Result<(SessionBuilder, Vec<Provider>, Vec<String>), EngineError> {
        let load_error = |message: String| EngineError::Load {
            model: model.to_string(),
            message,
        };
        let mut builder = self
            .base_builder()
            .and_then(|b| Ok(b.with_prepacked_weights(prepacked)?))
            .map_err(|e| load_error(e.to_string()))?;
        let mut loaded = Vec::new();
        let mut notes = Vec::new();
        for &provider in providers {
            builder = match builder.with_execution_providers([self.dispatch(provider, model)]) {
                Ok(builder) => {
                    loaded.push(provider);
                    builder
                }
                Err(e) => {
                    let note = format!("{} unavailable: {}", provider.name(), e.message());
                    tracing::warn!("{model}: {note}");
                    notes.push(note);
                    e.recover()
                }
            };
        }
        if loaded.is_empty() {
            return Err(load_error(format!(
                "none of the execution providers could be used ({}); add \"cpu\" to the \
                 providers to allow running on the CPU",
                notes.join("; ")
            )));
        }
        Ok((builder, loaded, notes))
    }
}

/// The one ONNX Runtime environment of this process, with the library it came from.
fn environment(library: &Path) -> Result<Environment, EngineError> {
    static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);
    let mut slot = ENVIRONMENT.lock();
    if let Some((loaded, environment)) = slot.as_ref() {
        return if loaded == library {
            Ok(environment.clone())
        } else {
            Err(EngineError::Unavailable(format!(
                "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
                loaded.display(),
                library.display()
            )))
        };
    }
    let unavailable = |message: String| {
        EngineError::Unavailable(format!(
            "ONNX Runtime cannot be loaded from {}: {message} (set [engine.ort] library, \
             --ort-lib or ORT_DYLIB_PATH to a libonnxruntime.so of version 1.31 or newer)",
            library.display()
        ))
    };
    let environment = ort::init_from(library)
        .map_err(|e| unavailable(e.to_string()))?
        .with_name("edgerun")
        .build()
        .map_err(|e| unavailable(e.to_string()))?;
    *slot = Some((library.to_path_buf(), environment.clone()));
    Ok(environment)
}

/// The loaded library's build information (branch, commit, build type) without its long
/// list of compiler flags.
fn build_info() -> String {
    let info = ort::info();
    info.split(", cmake").next().unwrap_or(info).to_string()
}

fn default_tensorrt_cache() -> PathBuf {
    crate::cache::dir().join("tensorrt")
}

impl Engine for OrtEngine {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn load(&self, name: &str, onnx: Onnx<'_>) -> Result<Arc<dyn Model>, EngineError> {
        let settings = &self.settings;
        let config = &settings.config;
        let load_error = |message: String| EngineError::Load {
            model: name.to_string(),
            message,
        };
        if config.ort.providers.contains(&Provider::Tensorrt) {
            std::fs::create_dir_all(&settings.tensorrt_cache).map_err(|e| {
                load_error(format!(
                    "TensorRT cache {}: {e}",
                    settings.tensorrt_cache.display()
                ))
            })?;
        }
        let prepacked = PrepackedWeights::new();
        let (mut builder, providers, mut notes) =
            settings.builder(name, &config.ort.providers, &prepacked)?;
        let int8 = config.ort.int8_matmul_for(name);
        let quantized = if int8 {
            let (bytes, count) = super::int8::quantize_matmuls(onnx.bytes).map_err(load_error)?;
            notes.push(format!("{count} MatMuls in int8"));
            Some(bytes)
        } else {
            None
        };
        let session = builder
            .commit_from_memory(quantized.as_deref().unwrap_or(onnx.bytes))
            .map_err(|e| load_error(e.to_string()))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|outlet| outlet.name().to_string())
            .collect();
        // GPU providers run one request at a time anyway, and a second session would hold a
        // second copy of the weights in device memory (or build a second TensorRT engine).
        let limit = if providers == [Provider::Cpu] {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            1
        };
        let source = match (onnx.reread, quantized) {
            (Some(reread), _) => OnnxSource::Reread {
                reread: reread.clone(),
                int8,
            },
            (None, Some(quantized)) => OnnxSource::Held(quantized),
            (None, None) => OnnxSource::Held(onnx.bytes.to_vec()),
        };
        Ok(Arc::new(OrtModel {
            placement: Placement {
                model: name.to_string(),
                engine: "ort",
                providers: providers.clone(),
                threads: config.threads,
                notes,
            },
            inputs,
            sessions: Pool::new(session, limit),
            another: AnotherSession {
                settings: settings.clone(),
                model: name.to_string(),
                providers,
                prepacked,
                onnx: source,
            },
        }))
    }
}

struct OrtModel {
    placement: Placement,
    inputs: Vec<String>,
    /// One session per request in flight, opened as requests overlap (up to one per core).
    sessions: Pool<Session>,
    another: AnotherSession,
}

/// What opening another session of a loaded model takes.
struct AnotherSession {
    settings: Arc<SessionSettings>,
    model: String,
    /// The providers the first session loaded with.
    providers: Vec<Provider>,
    /// Shared by all sessions of the model: weights packed once.
    prepacked: PrepackedWeights,
    onnx: OnnxSource,
}

/// Where another session's ONNX bytes come from.
enum OnnxSource {
    /// Read again from the model folder (checked against the manifest), and rewritten to
    /// int8 MatMuls if the first session was: nothing is held between sessions.
    Reread { reread: Reread, int8: bool },
    /// Bytes given only in memory, as the first session read them.
    Held(Vec<u8>),
}

impl AnotherSession {
    fn open(&self) -> Result<Session, String> {
        let bytes = match &self.onnx {
            OnnxSource::Held(bytes) => Cow::Borrowed(&bytes[..]),
            OnnxSource::Reread { reread, int8 } => {
                let bytes = reread()?;
                match int8 {
                    true => Cow::Owned(super::int8::quantize_matmuls(&bytes)?.0),
                    false => Cow::Owned(bytes),
                }
            }
        };
        let (mut builder, _, _) = self
            .settings
            .builder(&self.model, &self.providers, &self.prepacked)
            .map_err(|e| e.to_string())?;
        let session = builder
            .commit_from_memory(&bytes)
            .map_err(|e| e.to_string())?;
        tracing::debug!(model = %self.model, "opened another session for overlapping requests");
        Ok(session)
    }
}

impl OrtModel {
    fn run_error(&self, e: impl std::fmt::Display) -> EngineError {
        EngineError::Run {
            model: self.placement.model.clone(),
            message: e.to_string(),
        }
    }
}

/// The caller's buffer when it is contiguous (ONNX Runtime reads it in place), else a copy.
fn session_input<'a>(input: &'a Input<'_>) -> ort::Result<SessionInputValue<'a>> {
    Ok(match input {
        Input::F32(a) if a.is_standard_layout() => TensorRef::from_array_view(a.view())?.into(),
        Input::F32(a) => Tensor::from_array(a.as_standard_layout().into_owned())?.into(),
        Input::I64(a) if a.is_standard_layout() => TensorRef::from_array_view(a.view())?.into(),
        Input::I64(a) => Tensor::from_array(a.as_standard_layout().into_owned())?.into(),
    })
}

fn to_f32(value: ValueRef<'_>) -> ort::Result<ArrayD<f32>> {
    match value.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Int64,
            ..
        } => Ok(value.try_extract_array::<i64>()?.mapv(|v| v as f32)),
        _ => Ok(value.try_extract_array::<f32>()?.to_owned()),
    }
}

impl Model for OrtModel {
    fn run(&self, inputs: &[Input<'_>]) -> Result<Vec<ArrayD<f32>>, EngineError> {
        if inputs.len() != self.inputs.len() {
            return Err(EngineError::Arity {
                model: self.placement.model.clone(),
                expected: self.inputs.len(),
                given: inputs.len(),
            });
        }
        let values = inputs
            .iter()
            .map(session_input)
            .collect::<ort::Result<Vec<_>>>()
            .map_err(|e| self.run_error(e))?;
        let mut session = self.sessions.take(
            || self.another.open(),
            |why| {
                tracing::warn!(
                    "{}: cannot open another session ({why}); requests take turns",
                    self.placement.model
                )
            },
        );
        let outputs = session
            .run(values.as_slice())
            .map_err(|e| self.run_error(e))?;
        outputs
            .values()
            .map(to_f32)
            .collect::<ort::Result<Vec<_>>>()
            .map_err(|e| self.run_error(e))
    }

    /// ONNX Runtime plans once per session; the first run at a shape still allocates, so
    /// warming up runs the model once on zeros.
    fn warm_up(&self, inputs: &[(ElementType, &[usize])]) -> Result<(), EngineError> {
        let owned = super::select::zero_inputs(inputs);
        let views: Vec<Input<'_>> = owned.iter().map(|input| input.view()).collect();
        self.run(&views).map(drop)
    }

    fn placement(&self) -> Placement {
        self.placement.clone()
    }

    fn plans_per_shape(&self) -> bool {
        self.placement.plans_per_shape()
    }

    fn instances(&self) -> usize {
        self.sessions.opened()
    }
}
