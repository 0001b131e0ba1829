//! An engine that remembers what it ran: it wraps another engine and keeps a copy of every
//! run's inputs, by model name, so that a service's real requests can be replayed model by
//! model (engine benchmarks, conformance tests), and the input shapes each model was warmed
//! up for. Results pass through unchanged; this is a tool for measuring and testing, never
//! part of serving.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use ndarray::ArrayD;

use super::{ElementType, Engine, EngineError, Input, Model, Onnx, Placement};

/// One input tensor, owned, for replay.
#[derive(Debug, Clone)]
pub enum OwnedInput {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl OwnedInput {
    pub fn of(input: &Input<'_>) -> OwnedInput {
        match input {
            Input::F32(a) => OwnedInput::F32(a.to_owned()),
            Input::I64(a) => OwnedInput::I64(a.to_owned()),
        }
    }

    pub fn view(&self) -> Input<'_> {
        match self {
            OwnedInput::F32(a) => Input::F32(a.view()),
            OwnedInput::I64(a) => Input::I64(a.view()),
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            OwnedInput::F32(a) => a.shape(),
            OwnedInput::I64(a) => a.shape(),
        }
    }
}

/// Every run's inputs in order, by model name (`service/file.onnx` as models are loaded).
pub type Runs = BTreeMap<String, Vec<Vec<OwnedInput>>>;

/// The input shapes of every warm-up in order, by model name.
pub type WarmUps = BTreeMap<String, Vec<Vec<Vec<usize>>>>;

/// `inner`, keeping the inputs of every run of every model it loads.
pub struct Recorder<E> {
    inner: E,
    runs: Arc<Mutex<Runs>>,
    warm_ups: Arc<Mutex<WarmUps>>,
    releases: Arc<Mutex<Vec<String>>>,
}

impl<E: Engine> Recorder<E> {
    pub fn new(inner: E) -> Recorder<E> {
        Recorder {
            inner,
            runs: Arc::default(),
            warm_ups: Arc::default(),
            releases: Arc::default(),
        }
    }

    /// The inputs recorded so far; recording goes on.
    pub fn runs(&self) -> Runs {
        self.runs.lock().clone()
    }

    /// The warm-ups recorded so far; recording goes on.
    pub fn warm_ups(&self) -> WarmUps {
        self.warm_ups.lock().clone()
    }

    /// The names of the models released so far, in order; recording goes on.
    pub fn releases(&self) -> Vec<String> {
        self.releases.lock().clone()
    }
}

impl<E: Engine> Engine for Recorder<E> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn load(&self, name: &str, onnx: Onnx<'_>) -> Result<Arc<dyn Model>, EngineError> {
        Ok(self.recording(name, self.inner.load(name, onnx)?))
    }

    fn load_varying(
        &self,
        name: &str,
        onnx: Onnx<'_>,
        axis: usize,
    ) -> Result<Arc<dyn Model>, EngineError> {
        Ok(self.recording(name, self.inner.load_varying(name, onnx, axis)?))
    }
}

impl<E: Engine> Recorder<E> {
    fn recording(&self, name: &str, model: Arc<dyn Model>) -> Arc<dyn Model> {
        Arc::new(RecordingModel {
            name: name.to_string(),
            model,
            runs: self.runs.clone(),
            warm_ups: self.warm_ups.clone(),
            releases: self.releases.clone(),
        })
    }
}

struct RecordingModel {
    name: String,
    model: Arc<dyn Model>,
    runs: Arc<Mutex<Runs>>,
    warm_ups: Arc<Mutex<WarmUps>>,
    releases: Arc<Mutex<Vec<String>>>,
}

impl Model for RecordingModel {
    fn run(&self, inputs: &[Input<'_>]) -> Result<Vec<ArrayD<f32>>, EngineError> {
        let owned = inputs.iter().map(OwnedInput::of).collect();
        self.runs
            .lock()
            .entry(self.name.clone())
            .or_default()
            .push(owned);
        self.model.run(inputs)
    }

    fn warm_up(&self, inputs: &[(ElementType, &[usize])]) -> Result<(), EngineError> {
        let shapes = inputs.iter().map(|(_, shape)| shape.to_vec()).collect();
        self.warm_ups
            .lock()
            .entry(self.name.clone())
            .or_default()
            .push(shapes);
        self.model.warm_up(inputs)
    }

    fn placement(&self) -> Placement {
        self.model.placement()
    }

    fn instances(&self) -> usize {
        self.model.instances()
    }

    fn release(&self) {
        self.releases.lock().push(self.name.clone());
        self.model.release()
    }

    fn plans_per_shape(&self) -> bool {
        self.model.plans_per_shape()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, TractEngine};

    #[test]
    fn records_inputs_and_passes_results_through() {
        // The smallest model in the tree: the generator's text encoder (ids -> embeddings).
        let dir =
            crate::models::ModelDir::open(&crate::models::default_root(), "generate").unwrap();
        let recorder = Recorder::new(TractEngine::new(EngineConfig::default()));
        let plain = TractEngine::new(EngineConfig::default());
        let recorded = dir.load(&recorder, "text_encoder.onnx").unwrap();
        let direct = dir.load(&plain, "text_encoder.onnx").unwrap();
        let ids = ndarray::ArrayD::<i64>::from_elem(ndarray::IxDyn(&[1, 1]), 3);
        let inputs = [Input::I64(ids.view())];
        assert_eq!(recorded.run(&inputs).unwrap(), direct.run(&inputs).unwrap());
        let runs = recorder.runs();
        let keys: Vec<&String> = runs.keys().collect();
        assert_eq!(keys, ["generate/text_encoder.onnx"]);
        assert_eq!(runs["generate/text_encoder.onnx"].len(), 1);
        assert_eq!(runs["generate/text_encoder.onnx"][0][0].shape(), &[1, 1]);
    }
}
