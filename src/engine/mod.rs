//! Engines turn an ONNX file into something that runs.
//!
//! An [`Engine`] loads ONNX bytes into a [`Model`]; a model runs on `ndarray` tensors and
//! returns `f32` tensors. Engines own the whole model -> optimized plan -> run pipeline,
//! including any per-shape plan caching, so callers never see engine types. This module must
//! not know about services, image formats or the model manifest: it takes verified bytes and
//! tensors, nothing else.

mod tract;

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

pub use self::tract::TractEngine;

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

    /// Human-readable description for logs and status: engine and where it runs.
    fn describe(&self) -> String;
}

/// Something that can load ONNX models.
pub trait Engine: Send + Sync {
    /// A short stable name (`tract`, `ort`) for configs, logs and reports.
    fn name(&self) -> &'static str;

    /// Parses and checks an ONNX model; per-shape plans are built lazily on first use.
    /// `name` identifies it in errors and logs.
    fn load(&self, name: &str, onnx: &[u8]) -> Result<Arc<dyn Model>, EngineError>;
}

/// Engine settings shared by every engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Threads used inside one model run (intra-op). 1 keeps latency predictable on small
    /// boards where other work shares the cores.
    pub threads: usize,
    /// At most this many optimized plans (one per distinct input shape) are kept per model;
    /// the least recently used is dropped beyond it.
    pub max_plans_per_model: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: 1,
            max_plans_per_model: 24,
        }
    }
}
