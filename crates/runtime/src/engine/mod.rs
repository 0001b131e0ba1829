//! Engines turn an ONNX file into something that runs.
//!
//! An [`Engine`] loads ONNX bytes into a [`Model`]; a model runs on `ndarray` tensors and
//! returns `f32` tensors. Engines own the whole model -> optimized plan -> run pipeline,
//! including any per-shape plan caching, so callers never see engine types. This module must
//! not know about services, image formats or the model manifest: it takes verified bytes and
//! tensors, nothing else.
//!
//! Two backends exist: [`TractEngine`] (pure Rust, always built) and, with the cargo feature
//! `ort`, ONNX Runtime loaded from a shared library at run time. [`Backends`] is the engine
//! the rest of the program uses: it hands each model to the backend its configuration names,
//! or measures both (`auto`) and keeps the faster one.

#[cfg(feature = "ort")]
mod int8;
#[cfg(feature = "ort")]
mod ort;
#[cfg(feature = "ort")]
mod pool;
pub mod record;
mod select;
mod tract;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ndarray::{ArrayD, ArrayViewD};
use serde::{Deserialize, Serialize};

#[cfg(feature = "ort")]
pub use self::ort::OrtEngine;
pub use self::select::Backends;
pub use self::tract::{OpTime, TimeBy, TractEngine};

/// Whether tract runs go single-threaded for now, whatever `threads` says: the server sets
/// it while other processes load the cores (see [`crate::policy::threads`]). Process-wide,
/// like the CPU load it follows. ONNX Runtime sessions keep their configured thread count.
static SINGLE_THREADED: AtomicBool = AtomicBool::new(false);

/// Makes tract runs that start from now on single-threaded (`true`) or use the configured
/// threads again (`false`). A run already going keeps its threads.
pub fn set_single_threaded(single: bool) {
    SINGLE_THREADED.store(single, Ordering::Relaxed);
}

/// Whether [`set_single_threaded`] holds runs to one thread now.
pub fn single_threaded() -> bool {
    SINGLE_THREADED.load(Ordering::Relaxed)
}

/// tract runs going on now, in every model of the process.
static TRACT_RUNS: AtomicUsize = AtomicUsize::new(0);

/// One tract run in progress, counted in [`TRACT_RUNS`] until dropped.
pub(crate) struct RunInFlight {
    /// Runs that were already going when this one started.
    pub others: usize,
}

impl RunInFlight {
    pub(crate) fn start() -> RunInFlight {
        RunInFlight {
            others: TRACT_RUNS.fetch_add(1, Ordering::AcqRel),
        }
    }
}

impl Drop for RunInFlight {
    fn drop(&mut self) {
        TRACT_RUNS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a run uses the engine's thread pool: only when it is alone. A run that starts
/// while another is going takes one core of its own instead, so two requests served at
/// once (two workers) use the two cores without splitting each matrix product between
/// them: on 2 cores, two OCR workers sharing a 2-thread pool served 1.5-1.9x the images
/// per second of one request at a time (`bench throughput`, docs/benchmarks.md).
pub fn run_uses_pool(others_running: usize, held_single: bool) -> bool {
    others_running == 0 && !held_single
}

/// Why an engine could not load or run a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {model}: {message}")]
    Load { model: String, message: String },
    #[error("model {model} takes {expected} inputs, {given} given")]
    Arity {
        model: String,
        expected: usize,
        given: usize,
    },
    #[error("model {model} failed: {message}")]
    Run { model: String, message: String },
    /// The backend itself is unusable: ONNX Runtime missing, too old, or not built in.
    #[error("{0}")]
    Unavailable(String),
}

/// One input tensor, borrowed from the caller.
///
/// Image models take `f32`; token models (the legal encoders) take `i64` ids and masks.
#[derive(Debug, Clone)]
pub enum Input<'a> {
    F32(ArrayViewD<'a, f32>),
    I64(ArrayViewD<'a, i64>),
}

/// The element type of an input, for planning ahead without data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    F32,
    I64,
}

impl Input<'_> {
    pub fn element_type(&self) -> ElementType {
        match self {
            Input::F32(_) => ElementType::F32,
            Input::I64(_) => ElementType::I64,
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            Input::F32(a) => a.shape(),
            Input::I64(a) => a.shape(),
        }
    }
}

impl<'a> From<ArrayViewD<'a, f32>> for Input<'a> {
    fn from(a: ArrayViewD<'a, f32>) -> Self {
        Input::F32(a)
    }
}

impl<'a> From<ArrayViewD<'a, i64>> for Input<'a> {
    fn from(a: ArrayViewD<'a, i64>) -> Self {
        Input::I64(a)
    }
}

/// A loaded model, ready to run from any thread.
pub trait Model: Send + Sync {
    /// Runs the model. Inputs are given in the order of the model's inputs; every output is
    /// returned as `f32`.
    fn run(&self, inputs: &[Input<'_>]) -> Result<Vec<ArrayD<f32>>, EngineError>;

    /// Prepares (and caches) the plan for these inputs ahead of the first request, so
    /// start-up rather than a user's request pays for optimisation.
    fn warm_up(&self, inputs: &[(ElementType, &[usize])]) -> Result<(), EngineError>;

    /// Where and how this model runs, for logs and the retained status.
    fn placement(&self) -> Placement;

    /// [`Placement::plans_per_shape`] without building the placement: callers ask it per
    /// request.
    fn plans_per_shape(&self) -> bool;

    /// How many instances of the model are open: ONNX Runtime on the CPU opens a session per
    /// request in flight at once; one tract plan serves any number of requests.
    fn instances(&self) -> usize {
        1
    }

    /// Drops what was built for the shapes run so far (tract's plans and the packed weights
    /// only they held) and a parsed graph that the model can read from its file again,
    /// because no request is expected to need them soon; the next run at any shape builds
    /// its plan again. Engines that keep nothing per shape keep everything.
    fn release(&self) {}
}

/// Where a loaded model runs: the backend, the execution providers it was given (in order of
/// preference) and anything the user should know, such as a provider that failed to load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    pub model: String,
    /// `tract` or `ort`.
    pub engine: &'static str,
    /// Execution providers registered for the model, best first (`cpu` for tract).
    pub providers: Vec<Provider>,
    pub threads: usize,
    /// Providers that could not be used and why, and how `auto` chose.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Placement {
    /// Whether the model builds a plan per input shape (tract; TensorRT builds engines per
    /// shape profile), so that callers with variable-length inputs should pad them to a few
    /// shapes. ONNX Runtime on CPU or CUDA runs any shape at no planning cost.
    pub fn plans_per_shape(&self) -> bool {
        self.engine == "tract" || self.providers.contains(&Provider::Tensorrt)
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let providers: Vec<&str> = self.providers.iter().map(|p| p.name()).collect();
        write!(
            f,
            "{}: {} ({}, {} thread(s))",
            self.model,
            self.engine,
            providers.join(" > "),
            self.threads
        )?;
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

/// Reads a model's ONNX bytes again, checked as they were the first time; an error says
/// why they cannot be had (file gone or changed).
pub type Reread = Arc<dyn Fn() -> Result<Vec<u8>, String> + Send + Sync>;

/// A model's verified ONNX bytes and, where they come from a file, how to read them again.
///
/// An engine that plans per input shape needs the parsed graph only while it plans. With a
/// way to read the bytes again it parses them anew for the next new shape instead of
/// keeping the graph, which is about as large as the file, for the life of the model
/// (tract: 29 MiB over the four OCR models).
#[derive(Clone, Copy)]
pub struct Onnx<'a> {
    pub bytes: &'a [u8],
    pub reread: Option<&'a Reread>,
}

impl<'a> Onnx<'a> {
    /// Bytes held in memory only: an engine keeps whatever it needs to plan again.
    pub fn bytes(bytes: &'a [u8]) -> Onnx<'a> {
        Onnx {
            bytes,
            reread: None,
        }
    }
}

/// Something that can load ONNX models.
pub trait Engine: Send + Sync {
    /// A short stable name (`tract`, `ort`) for configs, logs and reports.
    fn name(&self) -> &'static str;

    /// Parses and checks an ONNX model; per-shape plans are built lazily on first use.
    /// `name` identifies it in errors and logs.
    fn load(&self, name: &str, onnx: Onnx<'_>) -> Result<Arc<dyn Model>, EngineError>;

    /// [`Engine::load`] for a model whose inputs vary in length along `axis` of every
    /// input (a sequence) and nowhere else. An engine that plans per shape plans once for
    /// every length instead (tract: a symbolic dimension), so that one copy of the
    /// optimized weights serves all lengths; the others load it as usual.
    fn load_varying(
        &self,
        name: &str,
        onnx: Onnx<'_>,
        axis: usize,
    ) -> Result<Arc<dyn Model>, EngineError> {
        let _ = axis;
        self.load(name, onnx)
    }
}

/// Which engine runs a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Pure Rust, CPU, available in every build.
    #[default]
    Tract,
    /// ONNX Runtime (cargo feature `ort`), with the configured execution providers.
    Ort,
    /// Measure both on this device when the model is warmed up and keep the faster.
    Auto,
}

/// An ONNX Runtime execution provider, as named in configs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// NVIDIA TensorRT (Jetson, discrete GPUs): fastest, builds an engine per model first.
    Tensorrt,
    /// NVIDIA CUDA.
    Cuda,
    /// The CPU (tract always runs here).
    Cpu,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::Ort => "ort",
            Backend::Auto => "auto",
        }
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tract" => Ok(Backend::Tract),
            "ort" => Ok(Backend::Ort),
            "auto" => Ok(Backend::Auto),
            _ => Err(format!(
                "unknown backend {s:?} (expected tract, ort or auto)"
            )),
        }
    }
}

impl FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tensorrt" | "trt" => Ok(Provider::Tensorrt),
            "cuda" => Ok(Provider::Cuda),
            "cpu" => Ok(Provider::Cpu),
            _ => Err(format!(
                "unknown execution provider {s:?} (expected tensorrt, cuda or cpu)"
            )),
        }
    }
}

/// Engine settings: the `[engine]` table of `serve`'s config file, or the global flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Threads used inside one model run (intra-op). 1 keeps latency predictable on small
    /// boards where other work shares the cores.
    pub threads: usize,
    /// At most this many optimized plans (one per distinct input shape) are kept per model;
    /// the least recently used is dropped beyond it (tract only).
    pub max_plans_per_model: usize,
    /// The backend for every model not named in `models`.
    pub backend: Backend,
    /// Per-model backend, keyed `service/file` (`"ocr/det_tiny.onnx" = "ort"`).
    pub models: BTreeMap<String, Backend>,
    /// ONNX Runtime settings, used when some model runs on `ort` or `auto`.
    pub ort: OrtConfig,
    /// With `threads` > 1 and every model on tract, `serve` runs models single-threaded
    /// while other processes keep the cores busy (a parallel run waits for its slowest
    /// thread, and a thread sharing its core with other load is slow). `false` keeps
    /// `threads` always.
    pub adapt_threads: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: 1,
            max_plans_per_model: 24,
            backend: Backend::Tract,
            models: BTreeMap::new(),
            ort: OrtConfig::default(),
            adapt_threads: true,
        }
    }
}

impl EngineConfig {
    /// The backend configured for a model named `service/file`.
    pub fn backend_for(&self, model: &str) -> Backend {
        self.models.get(model).copied().unwrap_or(self.backend)
    }

    /// Whether any model may run on ONNX Runtime.
    pub fn uses_ort(&self) -> bool {
        self.backend != Backend::Tract || self.models.values().any(|b| *b != Backend::Tract)
    }

    /// Whether runs go single-threaded under load ([`set_single_threaded`]): asked for,
    /// more than one thread, and every model on tract (ONNX Runtime sessions keep their
    /// thread count, so a mix would follow the load only in part).
    pub fn adapts_threads(&self) -> bool {
        self.adapt_threads && self.threads > 1 && !self.uses_ort()
    }
}

/// ONNX Runtime settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrtConfig {
    /// `libonnxruntime.so`; none means `$ORT_DYLIB_PATH`, then the system's library path.
    pub library: Option<PathBuf>,
    /// Execution providers in order of preference. A provider that cannot load is reported
    /// (log and status) and skipped; if `cpu` is not listed, a model none of whose providers
    /// load fails instead of silently running on the CPU.
    pub providers: Vec<Provider>,
    /// Where TensorRT keeps built engines and its timing cache, so a restart reuses them.
    /// None: `$CACHE_DIRECTORY/tensorrt` (set by systemd's `CacheDirectory=`), else
    /// `$XDG_CACHE_HOME/edgerun/tensorrt`, else `~/.cache/edgerun/tensorrt`.
    pub tensorrt_cache: Option<PathBuf>,
    /// Let TensorRT use fp16 kernels (Jetson GPUs are much faster in fp16).
    pub tensorrt_fp16: bool,
    /// Models (`service/file`, or a prefix such as `legal/`) whose MatMuls over int8-stored
    /// weights run in int8, their activations quantized per tensor at run time. Faster on
    /// one CPU core, and slightly different numbers: measure with the service's benchmark.
    pub int8_matmul: Vec<String>,
}

impl OrtConfig {
    /// Whether `model` (`service/file`) runs its int8-weight MatMuls in int8.
    pub fn int8_matmul_for(&self, model: &str) -> bool {
        self.int8_matmul
            .iter()
            .any(|prefix| !prefix.is_empty() && model.starts_with(prefix.as_str()))
    }
}

impl Default for OrtConfig {
    fn default() -> Self {
        OrtConfig {
            library: None,
            providers: vec![Provider::Cpu],
            tensorrt_cache: None,
            tensorrt_fp16: true,
            int8_matmul: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_uses_the_pool_only_when_alone_and_not_held_to_one_thread() {
        assert!(run_uses_pool(0, false));
        assert!(!run_uses_pool(1, false));
        assert!(!run_uses_pool(3, false));
        assert!(!run_uses_pool(0, true));
    }

    fn placement(engine: &'static str, providers: &[Provider]) -> Placement {
        Placement {
            model: "m.onnx".into(),
            engine,
            providers: providers.to_vec(),
            threads: 1,
            notes: Vec::new(),
        }
    }

    #[test]
    fn threads_follow_the_load_only_with_several_threads_all_on_tract() {
        let config = |threads, backend| EngineConfig {
            threads,
            backend,
            ..EngineConfig::default()
        };
        assert!(config(2, Backend::Tract).adapts_threads());
        assert!(
            !config(1, Backend::Tract).adapts_threads(),
            "nothing to give up"
        );
        assert!(
            !config(2, Backend::Ort).adapts_threads(),
            "ort keeps its threads"
        );
        assert!(!config(2, Backend::Auto).adapts_threads());
        let mut mixed = config(2, Backend::Tract);
        mixed
            .models
            .insert("ocr/det_tiny.onnx".into(), Backend::Ort);
        assert!(!mixed.adapts_threads());
        let fixed = EngineConfig {
            adapt_threads: false,
            ..config(2, Backend::Tract)
        };
        assert!(!fixed.adapts_threads());
    }

    #[test]
    fn only_tract_and_tensorrt_plan_per_shape() {
        assert!(placement("tract", &[Provider::Cpu]).plans_per_shape());
        assert!(placement("ort", &[Provider::Tensorrt, Provider::Cpu]).plans_per_shape());
        assert!(!placement("ort", &[Provider::Cpu]).plans_per_shape());
        assert!(!placement("ort", &[Provider::Cuda, Provider::Cpu]).plans_per_shape());
    }
}
