//! Choosing a backend per model: the configured one, or (`auto`) the faster one measured on
//! this device.
//!
//! `auto` loads a model into both engines and decides when the model is first warmed up (or,
//! failing that, first run): each engine runs the model on zeros of those shapes, the median
//! of a few runs is compared, and the slower copy is dropped. The measurement and the choice
//! are kept in the model's [`Placement`] notes.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};

use crate::latency::percentile;

use super::{
    Backend, ElementType, Engine, EngineConfig, EngineError, Input, Model, Onnx, Placement,
    TractEngine,
};

/// The engine the program uses: routes every model to its configured backend.
pub struct Backends {
    config: EngineConfig,
    tract: TractEngine,
    /// ONNX Runtime, when some model may use it; else why it cannot be used.
    ort: Result<Arc<dyn Engine>, String>,
    /// The ONNX Runtime library's path and build information, when it is loaded.
    ort_library: Option<String>,
}

impl Backends {
    /// Builds the engines the configuration needs. A backend named `ort` that cannot be
    /// loaded is an error now; under `auto` it is only a note, and tract runs the model.
    pub fn new(config: EngineConfig) -> Result<Backends, EngineError> {
        let (ort, ort_library) = if config.uses_ort() {
            match open_ort(&config) {
                Ok((engine, library)) => (Ok(engine), Some(library)),
                Err(reason) => (Err(reason), None),
            }
        } else {
            (Err("no model is configured to use ort".to_string()), None)
        };
        let ort_required =
            config.backend == Backend::Ort || config.models.values().any(|b| *b == Backend::Ort);
        if let (true, Err(reason)) = (ort_required, &ort) {
            return Err(EngineError::Unavailable(reason.clone()));
        }
        if let (Err(reason), true) = (&ort, config.uses_ort()) {
            tracing::warn!("backend auto will use tract only: {reason}");
        }
        Ok(Backends {
            tract: TractEngine::new(config.clone()),
            config,
            ort,
            ort_library,
        })
    }

    /// The ONNX Runtime library in use (path and build information), if one is loaded.
    pub fn ort_library(&self) -> Option<&str> {
        self.ort_library.as_deref()
    }
}

/// The ONNX Runtime engine and a description of its library.
#[cfg(feature = "ort")]
fn open_ort(config: &EngineConfig) -> Result<(Arc<dyn Engine>, String), String> {
    let engine = super::OrtEngine::new(config).map_err(|e| e.to_string())?;
    let library = engine.library().to_string();
    tracing::info!("ort engine: {library}");
    Ok((Arc::new(engine), library))
}

#[cfg(not(feature = "ort"))]
fn open_ort(_: &EngineConfig) -> Result<(Arc<dyn Engine>, String), String> {
    Err(
        "this edgerun was built without ONNX Runtime support; rebuild with \
         `cargo build --release --features ort`"
            .to_string(),
    )
}

impl Engine for Backends {
    fn name(&self) -> &'static str {
        self.config.backend.name()
    }

    fn load(&self, name: &str, onnx: Onnx<'_>) -> Result<Arc<dyn Model>, EngineError> {
        self.load_with(name, onnx, None)
    }

    fn load_varying(
        &self,
        name: &str,
        onnx: Onnx<'_>,
        axis: usize,
    ) -> Result<Arc<dyn Model>, EngineError> {
        self.load_with(name, onnx, Some(axis))
    }
}

impl Backends {
    /// Loads `name` with the engine configured for it (`varying_axis` as for
    /// [`Engine::load_varying`]).
    fn load_with(
        &self,
        name: &str,
        onnx: Onnx<'_>,
        varying_axis: Option<usize>,
    ) -> Result<Arc<dyn Model>, EngineError> {
        let load = |engine: &dyn Engine| match varying_axis {
            Some(axis) => engine.load_varying(name, onnx, axis),
            None => engine.load(name, onnx),
        };
        match (self.config.backend_for(name), &self.ort) {
            (Backend::Tract, _) => load(&self.tract),
            (Backend::Ort, Ok(ort)) => load(ort.as_ref()),
            (Backend::Ort, Err(reason)) => Err(EngineError::Unavailable(reason.clone())),
            (Backend::Auto, Ok(ort)) => Ok(Arc::new(AutoModel {
                name: name.to_string(),
                candidates: vec![load(&self.tract)?, load(ort.as_ref())?],
                chosen: Mutex::new(None),
            })),
            (Backend::Auto, Err(reason)) => {
                let model = load(&self.tract)?;
                Ok(Arc::new(Noted {
                    model,
                    note: format!("auto: tract only ({reason})"),
                }))
            }
        }
    }
}

/// Runs on each engine this many times per shape when choosing.
const TIMED_RUNS: usize = 5;

/// A model loaded into both engines until one is chosen.
struct AutoModel {
    name: String,
    candidates: Vec<Arc<dyn Model>>,
    chosen: Mutex<Option<(Arc<dyn Model>, String)>>,
}

impl AutoModel {
    /// Calls `f` with the chosen engine's model and the note on why, or (not measured yet)
    /// with the first candidate and no note.
    fn with_current<R>(&self, f: impl FnOnce(&dyn Model, Option<&str>) -> R) -> R {
        match self.chosen.lock().as_ref() {
            Some((model, note)) => f(model.as_ref(), Some(note)),
            None => f(self.candidates[0].as_ref(), None),
        }
    }

    /// The chosen engine's model, choosing now (on these shapes) if not yet done.
    fn choose(&self, shapes: &[(ElementType, &[usize])]) -> Result<Arc<dyn Model>, EngineError> {
        // Held while measuring: concurrent first requests wait rather than measure twice.
        let mut chosen = self.chosen.lock();
        if let Some((model, _)) = chosen.as_ref() {
            return Ok(model.clone());
        }
        let inputs = zero_inputs(shapes);
        let views: Vec<Input<'_>> = inputs.iter().map(OwnedInput::view).collect();
        let mut timings = Vec::new();
        for candidate in &self.candidates {
            candidate.warm_up(shapes)?;
            timings.push(median_ms(candidate.as_ref(), &views)?);
        }
        let best = (0..timings.len())
            .min_by(|&a, &b| timings[a].total_cmp(&timings[b]))
            .expect("two candidates");
        let measured: Vec<String> = self
            .candidates
            .iter()
            .zip(&timings)
            .map(|(model, ms)| format!("{} {ms:.2} ms", model.placement().engine))
            .collect();
        let shape_list: Vec<&[usize]> = shapes.iter().map(|(_, s)| *s).collect();
        let note = format!(
            "auto chose {}: {} (median of {TIMED_RUNS} at {shape_list:?})",
            self.candidates[best].placement().engine,
            measured.join(" vs "),
        );
        tracing::info!("{}: {note}", self.name);
        let model = self.candidates[best].clone();
        *chosen = Some((model.clone(), note));
        Ok(model)
    }
}

fn median_ms(model: &dyn Model, inputs: &[Input<'_>]) -> Result<f64, EngineError> {
    let mut times = Vec::with_capacity(TIMED_RUNS);
    for _ in 0..TIMED_RUNS {
        let start = Instant::now();
        model.run(inputs)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(percentile(&times, 50.0))
}

impl Model for AutoModel {
    fn run(&self, inputs: &[Input<'_>]) -> Result<Vec<ArrayD<f32>>, EngineError> {
        let shapes: Vec<(ElementType, &[usize])> = inputs
            .iter()
            .map(|input| (input.element_type(), input.shape()))
            .collect();
        self.choose(&shapes)?.run(inputs)
    }

    fn warm_up(&self, inputs: &[(ElementType, &[usize])]) -> Result<(), EngineError> {
        self.choose(inputs)?.warm_up(inputs)
    }

    fn placement(&self) -> Placement {
        self.with_current(|model, note| {
            let mut placement = model.placement();
            placement
                .notes
                .push(note.unwrap_or("auto: not measured yet").to_string());
            placement
        })
    }

    fn plans_per_shape(&self) -> bool {
        self.with_current(|model, _| model.plans_per_shape())
    }

    fn instances(&self) -> usize {
        self.with_current(|model, _| model.instances())
    }

    fn release(&self) {
        for model in &self.candidates {
            model.release();
        }
    }
}

/// A model with a note for its placement.
struct Noted {
    model: Arc<dyn Model>,
    note: String,
}

impl Model for Noted {
    fn run(&self, inputs: &[Input<'_>]) -> Result<Vec<ArrayD<f32>>, EngineError> {
        self.model.run(inputs)
    }

    fn warm_up(&self, inputs: &[(ElementType, &[usize])]) -> Result<(), EngineError> {
        self.model.warm_up(inputs)
    }

    fn placement(&self) -> Placement {
        let mut placement = self.model.placement();
        placement.notes.push(self.note.clone());
        placement
    }

    fn plans_per_shape(&self) -> bool {
        self.model.plans_per_shape()
    }

    fn instances(&self) -> usize {
        self.model.instances()
    }

    fn release(&self) {
        self.model.release()
    }
}

/// An input tensor owned by the engine layer, for warming up and measuring.
pub(super) enum OwnedInput {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl OwnedInput {
    pub(super) fn view(&self) -> Input<'_> {
        match self {
            OwnedInput::F32(a) => Input::F32(a.view()),
            OwnedInput::I64(a) => Input::I64(a.view()),
        }
    }
}

/// Placeholder inputs of the given shapes: zeros for images, ones for token ids and masks (a
/// valid token and a full mask, so attention does not divide by zero).
pub(super) fn zero_inputs(shapes: &[(ElementType, &[usize])]) -> Vec<OwnedInput> {
    shapes
        .iter()
        .map(|(element, shape)| match element {
            ElementType::F32 => OwnedInput::F32(ArrayD::zeros(IxDyn(shape))),
            ElementType::I64 => OwnedInput::I64(ArrayD::ones(IxDyn(shape))),
        })
        .collect()
}
