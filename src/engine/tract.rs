//! The tract engine: pure Rust, CPU, builds for every target.
//!
//! tract is about twice as fast on a fixed input shape as on a symbolic one, so a model keeps
//! the parsed ONNX graph and builds one optimized plan per distinct set of input shapes,
//! caching the most recently used ones.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ndarray::ArrayD;
use tract_onnx::prelude::tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

use super::{Engine, EngineConfig, EngineError, Input, Model};

/// Loads ONNX files with `tract-onnx`.
pub struct TractEngine {
    config: EngineConfig,
    /// One pool shared by all models of this engine, so `threads` bounds the whole process.
    executor: Option<Executor>,
}

impl TractEngine {
    pub fn new(config: EngineConfig) -> Self {
        let executor = (config.threads > 1).then(|| Executor::multithread(config.threads));
        TractEngine { config, executor }
    }
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, path: &Path) -> Result<Arc<dyn Model>, EngineError> {
        let load_error = |e: TractError| EngineError::Load {
            path: path.display().to_string(),
            message: format!("{e:#}"),
        };
        let graph = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(load_error)?;
        let input_count = graph.input_outlets().map_err(load_error)?.len();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(Arc::new(TractModel {
            name,
            graph,
            input_count,
            threads: self.config.threads,
            options: RunOptions {
                executor: self.executor.clone(),
                ..RunOptions::default()
            },
            plans: Mutex::new(PlanCache::new(self.config.max_plans_per_model)),
        }))
    }
}

type Plan = Arc<TypedRunnableModel>;

/// The input shapes (and element types) a plan was built for.
type ShapeKey = Vec<(DatumType, Vec<usize>)>;

struct TractModel {
    name: String,
    graph: InferenceModel,
    input_count: usize,
    threads: usize,
    options: RunOptions,
    plans: Mutex<PlanCache>,
}

impl TractModel {
    fn plan_for(&self, key: &ShapeKey) -> Result<Plan, EngineError> {
        if let Some(plan) = self.plans.lock().expect("plan cache poisoned").get(key) {
            return Ok(plan);
        }
        // Built outside the lock: optimising a large graph takes a while and other shapes
        // must not wait for it. Two threads racing on one new shape both build; one wins.
        let plan = self.build_plan(key).map_err(|e| EngineError::Run {
            model: self.name.clone(),
            message: format!("cannot build a plan for shapes {key:?}: {e:#}"),
        })?;
        self.plans
            .lock()
            .expect("plan cache poisoned")
            .insert(key.clone(), plan.clone());
        Ok(plan)
    }

    fn build_plan(&self, key: &ShapeKey) -> TractResult<Plan> {
        let mut model = self.graph.clone();
        for (index, (datum_type, shape)) in key.iter().enumerate() {
            model = model.with_input_fact(index, InferenceFact::dt_shape(*datum_type, shape))?;
        }
        model
            .into_optimized()?
            .into_runnable_with_options(&self.options)
    }

    fn check_arity(&self, given: usize) -> Result<(), EngineError> {
        if given == self.input_count {
            Ok(())
        } else {
            Err(EngineError::BadInput {
                model: self.name.clone(),
                index: given,
                message: format!(
                    "count: the model takes {} inputs, {given} given",
                    self.input_count
                ),
            })
        }
    }
}

fn shape_key(inputs: &[Input<'_>]) -> ShapeKey {
    inputs
        .iter()
        .map(|input| match input {
            Input::F32(a) => (f32::datum_type(), a.shape().to_vec()),
            Input::I64(a) => (i64::datum_type(), a.shape().to_vec()),
        })
        .collect()
}

fn to_tvalue(input: &Input<'_>) -> TValue {
    match input {
        Input::F32(a) => a.to_owned().into_tensor().into_tvalue(),
        Input::I64(a) => a.to_owned().into_tensor().into_tvalue(),
    }
}

impl Model for TractModel {
    fn run(&self, inputs: &[Input<'_>]) -> Result<Vec<ArrayD<f32>>, EngineError> {
        self.check_arity(inputs.len())?;
        let plan = self.plan_for(&shape_key(inputs))?;
        let run_error = |e: TractError| EngineError::Run {
            model: self.name.clone(),
            message: format!("{e:#}"),
        };
        let outputs = plan
            .run(inputs.iter().map(to_tvalue).collect())
            .map_err(run_error)?;
        outputs
            .into_iter()
            .map(|value| {
                let tensor = value.into_tensor();
                let tensor = if tensor.datum_type() == f32::datum_type() {
                    tensor
                } else {
                    tensor.cast_to::<f32>()?.into_owned()
                };
                tensor.into_plain_array::<f32>()
            })
            .collect::<TractResult<Vec<_>>>()
            .map_err(run_error)
    }

    fn warm_up(&self, shapes: &[&[usize]]) -> Result<(), EngineError> {
        self.check_arity(shapes.len())?;
        let key = shapes
            .iter()
            .map(|s| (f32::datum_type(), s.to_vec()))
            .collect();
        self.plan_for(&key).map(drop)
    }

    fn describe(&self) -> String {
        format!("tract (cpu, {} thread(s))", self.threads)
    }
}

/// The most recently used plans of one model.
struct PlanCache {
    capacity: usize,
    clock: u64,
    plans: HashMap<ShapeKey, (Plan, u64)>,
}

impl PlanCache {
    fn new(capacity: usize) -> Self {
        PlanCache {
            capacity: capacity.max(1),
            clock: 0,
            plans: HashMap::new(),
        }
    }

    fn get(&mut self, key: &ShapeKey) -> Option<Plan> {
        self.clock += 1;
        let clock = self.clock;
        self.plans.get_mut(key).map(|(plan, used)| {
            *used = clock;
            plan.clone()
        })
    }

    fn insert(&mut self, key: ShapeKey, plan: Plan) {
        self.clock += 1;
        self.plans.insert(key, (plan, self.clock));
        while self.plans.len() > self.capacity {
            let oldest = self
                .plans
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| key.clone());
            match oldest {
                Some(key) => self.plans.remove(&key),
                None => break,
            };
        }
    }
}
