//! The tract engine: pure Rust, CPU, builds for every target.
//!
//! A model builds one optimized plan per distinct set of input shapes, caching the most
//! recently used ones: convolutional models (OCR) run about twice as fast on fixed shapes
//! as on symbolic ones. Each optimization packs the weights anew, as f32; the plans of one
//! model then share every packed matrix that came out the same ([`weights`]), and a further
//! shape takes the kernels its weights were packed for before ([`kernels`]), so it costs
//! the few matrices packed as the other operand rather than a whole copy (`rec_small` at six
//! widths: 18.8 MB instead of 73).
//!
//! The parsed ONNX graph is needed only to plan. A model whose bytes can be read again
//! ([`Onnx::reread`]) drops it after each plan and parses the file anew for the next new
//! shape: the graph is about as large as the file (OCR: 29 MiB over four models), and
//! parsing costs a fraction of planning (`rec_small`: 48 ms of 300). Only a model given as
//! bytes alone keeps its graph.
//!
//! A model loaded as varying along one axis (a transformer block over a sequence,
//! [`Engine::load_varying`]) gets a single plan with that dimension symbolic: on the legal
//! encoder it is as fast as per-length plans. Once it exists the parsed graph is dropped
//! too, since that one plan serves every input the model accepts.

mod conv_choice;
mod kernels;
mod op_times;
mod weights;

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use parking_lot::Mutex;

use ndarray::ArrayD;
use tract_onnx::prelude::tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;

use self::kernels::KernelChoices;
pub use self::op_times::{OpTime, TimeBy};
use self::weights::SharedWeights;
use super::{
    ElementType, Engine, EngineConfig, EngineError, Input, Model, Onnx, Placement, Provider, Reread,
};

/// Loads ONNX files with `tract-onnx`.
pub struct TractEngine {
    config: EngineConfig,
    /// One pool shared by all models of this engine, so `threads` bounds the whole process.
    executor: Option<Executor>,
}

impl TractEngine {
    pub fn new(config: EngineConfig) -> Self {
        kernels::choose();
        let executor = (config.threads > 1).then(|| Executor::multithread(config.threads));
        TractEngine { config, executor }
    }
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, name: &str, onnx: Onnx<'_>) -> Result<Arc<dyn Model>, EngineError> {
        Ok(Arc::new(self.load_model(name, onnx, None)?))
    }

    fn load_varying(
        &self,
        name: &str,
        onnx: Onnx<'_>,
        axis: usize,
    ) -> Result<Arc<dyn Model>, EngineError> {
        Ok(Arc::new(self.load_model(name, onnx, Some(axis))?))
    }
}

impl TractEngine {
    /// Where `name`'s time goes on `inputs`, per kind of operation or per node of the plan a
    /// request would use: median milliseconds over `runs` single-threaded runs, largest first.
    pub fn op_times(
        &self,
        name: &str,
        onnx: Onnx<'_>,
        inputs: &[Input<'_>],
        runs: usize,
        by: TimeBy,
    ) -> Result<Vec<OpTime>, EngineError> {
        self.load_model(name, onnx, None)?
            .op_times(inputs, runs, by)
    }

    fn load_model(
        &self,
        name: &str,
        onnx: Onnx<'_>,
        varying_axis: Option<usize>,
    ) -> Result<TractModel, EngineError> {
        let load_error = |e: TractError| EngineError::Load {
            model: name.to_string(),
            message: format!("{e:#}"),
        };
        let graph = parse(onnx.bytes).map_err(load_error)?;
        let input_count = graph.input_outlets().map_err(load_error)?.len();
        Ok(TractModel {
            name: name.to_string(),
            graph: Mutex::new(Some(graph)),
            reread: onnx.reread.cloned(),
            input_count,
            threads: self.config.threads,
            executor: self.executor.clone(),
            // No executor in the plan: each run picks one (see `run`).
            options: RunOptions::default(),
            plans: Mutex::new(PlanCache::new(self.config.max_plans_per_model)),
            building: Mutex::new(HashMap::new()),
            weights: Mutex::new(SharedWeights::default()),
            varying_axis,
        })
    }
}

type Plan = Arc<TypedRunnableModel>;

fn parse(onnx: &[u8]) -> TractResult<InferenceModel> {
    tract_onnx::onnx().model_for_read(&mut Cursor::new(onnx))
}

/// The kernels `plans` packed their weights for, for a further plan of their model to
/// follow ([`kernels`]: a weight is then packed once for every shape).
fn kernels_of(plans: &[Plan]) -> KernelChoices {
    let mut choices = KernelChoices::default();
    for plan in plans {
        for packed in weights::packed_weights(plan.model()) {
            if let Some(kernel) = packed.kernel {
                choices.record(packed.operand, packed.value.mn, packed.value.fact.k, kernel);
            }
        }
    }
    choices
}

/// The input element types and shapes a plan was built for.
type ShapeKey = Vec<(ElementType, Vec<usize>)>;

fn datum_type(element: ElementType) -> DatumType {
    match element {
        ElementType::F32 => f32::datum_type(),
        ElementType::I64 => i64::datum_type(),
    }
}

struct TractModel {
    name: String,
    /// The parsed ONNX graph, planned anew for each new shape. Dropped after a plan where
    /// [`TractModel::reread`] can give it back, and by a varying model once its one plan
    /// exists (that plan serves every input the model accepts): the parsed weights are as
    /// large as the file (legal: 36 MiB over 18 blocks, OCR 29 MiB over 4 models).
    graph: Mutex<Option<InferenceModel>>,
    /// Reads the ONNX bytes again, to parse them for a new shape once the graph is dropped.
    reread: Option<Reread>,
    input_count: usize,
    threads: usize,
    /// The engine's pool; `None` with one thread.
    executor: Option<Executor>,
    options: RunOptions,
    plans: Mutex<PlanCache>,
    /// A gate per shape being planned, so that a shape is planned once however many
    /// threads ask for it at once.
    building: Mutex<HashMap<ShapeKey, Arc<Mutex<()>>>>,
    /// The constants of the plans in `plans`, each held once.
    weights: Mutex<SharedWeights>,
    /// The axis along which every input varies in length: one plan, with that dimension
    /// symbolic, serves every length (measured on the legal encoder layers: 68 MiB for one
    /// plan against 182 MiB for plans at 3 lengths, at the same speed).
    varying_axis: Option<usize>,
}

/// The length of a varying axis in a plan's key: any.
const ANY_LENGTH: usize = 0;

impl TractModel {
    /// The plan for these input shapes: its cache key has the varying axis, if any, as
    /// [`ANY_LENGTH`].
    fn plan_for(&self, key: &ShapeKey) -> Result<Plan, EngineError> {
        let key = &self.plan_key(key);
        if let Some(plan) = self.plans.lock().get(key) {
            return Ok(plan);
        }
        // Built outside the cache's lock: optimising a large graph takes a while and other
        // shapes must not wait for it. A thread asking for a shape that another is planning
        // (a request and the background measurement often want the same new width) waits
        // for that plan rather than building a second one and throwing one away.
        let gate = self.building.lock().entry(key.clone()).or_default().clone();
        let built = {
            let _turn = gate.lock();
            // Bound apart: a guard in the `match` below would hold the cache through the
            // build, which reads the cache again.
            let planned_meanwhile = self.plans.lock().get(key);
            match planned_meanwhile {
                Some(plan) => Ok(plan),
                None => self.build_and_keep(key),
            }
        };
        // Ended, planned or not: a later thread finds the plan, or tries again.
        self.building.lock().remove(key);
        built
    }

    fn build_and_keep(&self, key: &ShapeKey) -> Result<Plan, EngineError> {
        let plan = self.build_plan(key).map_err(|e| EngineError::Run {
            model: self.name.clone(),
            message: format!("cannot build a plan for shapes {key:?}: {e:#}"),
        })?;
        self.plans.lock().insert(key.clone(), plan.clone());
        // A plan the cache just dropped may have held the only copy of some constants.
        self.weights.lock().forget_unused();
        if self.varying_axis.is_some() || self.reread.is_some() {
            self.graph.lock().take();
        }
        Ok(plan)
    }

    fn plan_key(&self, key: &ShapeKey) -> ShapeKey {
        let mut key = key.clone();
        if let Some(axis) = self.varying_axis {
            for (_, shape) in &mut key {
                if let Some(length) = shape.get_mut(axis) {
                    *length = ANY_LENGTH;
                }
            }
        }
        key
    }

    /// The parsed graph: the one kept, or the bytes read and parsed again.
    fn graph(&self) -> TractResult<InferenceModel> {
        if let Some(graph) = self.graph.lock().clone() {
            return Ok(graph);
        }
        match &self.reread {
            Some(reread) => parse(&reread().map_err(|e| anyhow::anyhow!(e))?),
            None => anyhow::bail!(
                "the model was planned once for every length along its varying axis, and \
                 these shapes differ on another axis"
            ),
        }
    }

    fn build_plan(&self, key: &ShapeKey) -> TractResult<Plan> {
        let mut model = self.graph()?;
        let length = model.symbols.sym("S");
        for (index, (element, shape)) in key.iter().enumerate() {
            let dims: TVec<TDim> = shape
                .iter()
                .enumerate()
                .map(|(axis, &d)| match self.varying_axis {
                    Some(varying) if axis == varying => length.to_dim(),
                    _ => d.to_dim(),
                })
                .collect();
            model = model.with_input_fact(
                index,
                InferenceFact::dt_shape(self::datum_type(*element), dims),
            )?;
        }
        let mut plan = model.into_typed()?.into_decluttered()?;
        if !conv_choice::left_to_tract() {
            conv_choice::im2col_for_wide_convolutions(&mut plan)?;
        }
        let earlier = self.plans.lock().all();
        kernels_of(&earlier).follow_while(|| plan.optimize())?;
        let (shared, held) = {
            let mut weights = self.weights.lock();
            let shared = weights.share(&mut plan, earlier.iter().map(|p| p.model()))?;
            (shared, weights.held_bytes())
        };
        tracing::debug!(
            model = %self.name,
            ?key,
            shared_bytes = shared,
            held_bytes = held,
            plans = earlier.len() + 1,
            "planned"
        );
        plan.into_runnable_with_options(&self.options)
    }

    fn check_arity(&self, given: usize) -> Result<(), EngineError> {
        if given == self.input_count {
            Ok(())
        } else {
            Err(EngineError::Arity {
                model: self.name.clone(),
                expected: self.input_count,
                given,
            })
        }
    }
}

fn shape_key(inputs: &[Input<'_>]) -> ShapeKey {
    inputs
        .iter()
        .map(|input| (input.element_type(), input.shape().to_vec()))
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
        let run = super::RunInFlight::start();
        let executor = match &self.executor {
            Some(pool) if super::run_uses_pool(run.others, super::single_threaded()) => {
                pool.clone()
            }
            _ => Executor::SingleThread,
        };
        let outputs = multithread_tract_scope(executor, || {
            plan.run(inputs.iter().map(to_tvalue).collect())
        })
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

    fn warm_up(&self, inputs: &[(ElementType, &[usize])]) -> Result<(), EngineError> {
        self.check_arity(inputs.len())?;
        let key = inputs.iter().map(|(e, s)| (*e, s.to_vec())).collect();
        self.plan_for(&key).map(drop)
    }

    fn plans_per_shape(&self) -> bool {
        self.varying_axis.is_none()
    }

    fn release(&self) {
        // Dropped outside the lock; a run in flight keeps its plan until it finishes.
        let dropped = self.plans.lock().clear();
        if dropped > 0 {
            self.weights.lock().forget_unused();
            tracing::debug!(model = %self.name, plans = dropped, "plans released");
        }
        // A graph is kept from loading until the first plan; a model that was never
        // planned would hold it for good (det_small: 10 MiB of weights as f32).
        if self.reread.is_some() && self.graph.lock().take().is_some() {
            tracing::debug!(model = %self.name, "parsed graph released");
        }
    }

    fn placement(&self) -> Placement {
        let notes = match self.varying_axis {
            Some(axis) => vec![format!("one plan for every length along axis {axis}")],
            None => Vec::new(),
        };
        Placement {
            model: self.name.clone(),
            engine: "tract",
            providers: vec![Provider::Cpu],
            threads: self.threads,
            notes,
        }
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

    /// Drops every plan; returns how many there were.
    fn clear(&mut self) -> usize {
        let count = self.plans.len();
        self.plans.clear();
        count
    }

    /// Every plan in the cache.
    fn all(&self) -> Vec<Plan> {
        self.plans.values().map(|(plan, _)| plan.clone()).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn plan() -> Plan {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1])).unwrap();
        model.select_output_outlets(&[x]).unwrap();
        model.into_runnable().unwrap()
    }

    fn key(width: usize) -> ShapeKey {
        vec![(ElementType::F32, vec![1, width])]
    }

    #[test]
    fn plan_cache_drops_the_least_recently_used() {
        let mut cache = PlanCache::new(2);
        cache.insert(key(1), plan());
        cache.insert(key(2), plan());
        assert!(cache.get(&key(1)).is_some()); // 1 is now more recent than 2
        cache.insert(key(3), plan());
        assert!(cache.get(&key(2)).is_none());
        assert!(cache.get(&key(1)).is_some());
        assert!(cache.get(&key(3)).is_some());
        assert_eq!(cache.plans.len(), 2);
    }

    #[test]
    fn runs_a_real_model_and_checks_arity() {
        // The tiny recognizer at its narrowest width: one plan, cached across runs.
        let bytes = rec_tiny_onnx();
        let model = TractEngine::new(EngineConfig::default())
            .load("rec_tiny.onnx", Onnx::bytes(&bytes))
            .unwrap();
        let input = ndarray::Array4::<f32>::zeros((1, 3, 48, 320)).into_dyn();
        let out = model.run(&[Input::F32(input.view())]).unwrap();
        assert_eq!(out[0].shape(), &[1, 40, 6906]);
        // Softmax output: each step sums to 1.
        let sum: f32 = out[0].index_axis(ndarray::Axis(1), 0).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        let err = model.run(&[]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "model rec_tiny.onnx takes 1 inputs, 0 given"
        );
        let err = TractEngine::new(EngineConfig::default())
            .load("junk.onnx", Onnx::bytes(b"not a model"))
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("cannot load model junk.onnx"),
            "{err}"
        );
    }

    /// Released plans give their packed weights back; the next run plans again and answers
    /// as before.
    #[test]
    fn released_plans_hold_nothing_and_plan_again() {
        let onnx = rec_tiny_onnx();
        let engine = TractEngine::new(EngineConfig::default());
        let model = load_rec_tiny(&engine, &onnx);
        let image = |width: usize| {
            ndarray::Array4::from_shape_fn((1, 3, 48, width), |(_, c, y, x)| {
                ((c * 5 + y * 3 + x) % 17) as f32 / 17.0 - 0.5
            })
            .into_dyn()
        };
        let before = model.run(&[Input::F32(image(320).view())]).unwrap();
        model.run(&[Input::F32(image(416).view())]).unwrap();
        assert_eq!(model.plans.lock().all().len(), 2);
        assert!(model.weights.lock().held_bytes() > 4 << 20);
        model.release();
        assert_eq!(model.plans.lock().all().len(), 0);
        // Only small tensors the kept graph shares remain (3.3 KB on x86_64), not packings.
        let left = model.weights.lock().held_bytes();
        assert!(left < 64 << 10, "{left} bytes left");
        let after = model.run(&[Input::F32(image(320).view())]).unwrap();
        assert_eq!(after, before);
        assert_eq!(model.plans.lock().all().len(), 1);
    }

    /// A further width packs no weight again: it takes the kernels the first width's
    /// weights were packed for ([`kernels::KernelChoices`]), where tract would choose by
    /// width (on an AMD EPYC, 8x8 tiles for the last layers at 128 columns and 16x5 at 160),
    /// and answers as a model planned at that width alone.
    #[test]
    fn a_further_width_packs_no_weight_again() {
        let onnx = rec_tiny_onnx();
        let engine = TractEngine::new(EngineConfig::default());
        let model = load_rec_tiny(&engine, &onnx);
        model.run(&[Input::F32(rec_input(128).view())]).unwrap();
        let first = weights::constant_bytes(model.plans.lock().all()[0].model());
        let wider = model.run(&[Input::F32(rec_input(160).view())]).unwrap();
        // Only small constants of the shape itself are new (12 bytes on x86_64); with
        // tract's kernel per width, 169 KB of weights were packed again (AMD EPYC).
        let added = model.weights.lock().held_bytes() - first;
        assert!(added < 1024, "{added} bytes added");
        let alone = load_rec_tiny(&engine, &onnx)
            .run(&[Input::F32(rec_input(160).view())])
            .unwrap();
        assert_eq!(wider[0].shape(), &[1, 20, 6906]);
        assert_eq!(wider[0], alone[0]);
    }

    /// Plans at four crop widths share their packed weights: the further widths add the few
    /// matrices that became the other operand of their product (tract makes the larger outer
    /// dimension the left one), and answer as a model planned at that width alone. Measured
    /// on a Zen 4 EPYC: 4.5 MiB for two plans, 5.1 for four, against 4 x 4.5 without
    /// sharing; with `EDGERUN_TRACT_KERNELS=tract` (kernels chosen per width, as before they
    /// followed the first plan's) 7.0 and 7.6, and on an AVX-512 Xeon 4.6 and 5.3.
    #[test]
    fn plans_of_one_model_share_their_weights() {
        let onnx = rec_tiny_onnx();
        let engine = TractEngine::new(EngineConfig::default());
        let shared = load_rec_tiny(&engine, &onnx);
        let image = |width: usize| {
            ndarray::Array4::from_shape_fn((1, 3, 48, width), |(_, c, y, x)| {
                ((c * 13 + y * 7 + x * 3) % 23) as f32 / 23.0 - 0.5
            })
            .into_dyn()
        };
        shared.run(&[Input::F32(image(320).view())]).unwrap();
        // A single plan has nothing to share with and is not hashed.
        assert_eq!(shared.weights.lock().held_bytes(), 0);
        shared.run(&[Input::F32(image(416).view())]).unwrap();
        let two_plans = shared.weights.lock().held_bytes();
        // The tiny recognizer's weights packed as f32 are about 4.5 MiB (a 4.4 MB file):
        // two plans hold one copy and the matrices packed as the other operand at the
        // second width, fewer than a second copy.
        assert!((4 << 20..8 << 20).contains(&two_plans), "{two_plans} bytes");
        let mut last = Vec::new();
        for width in [544, 704] {
            last = shared.run(&[Input::F32(image(width).view())]).unwrap();
        }
        // Which operand a matrix is depends on the width, and a weight that no earlier plan
        // packed as such takes tract's kernel for this width, so what two more widths add
        // varies by CPU; what must hold is that four plans keep well under four copies.
        let four_plans = shared.weights.lock().held_bytes();
        let unshared: usize = shared
            .plans
            .lock()
            .all()
            .iter()
            .map(|plan| weights::constant_bytes(plan.model()))
            .sum();
        assert!(
            four_plans * 10 < unshared * 6,
            "four plans hold {four_plans} bytes, {unshared} on their own"
        );
        let alone = load_rec_tiny(&engine, &onnx)
            .run(&[Input::F32(image(704).view())])
            .unwrap();
        assert_eq!(last[0].shape(), &[1, 88, 6906]);
        assert_eq!(last[0], alone[0]);
    }

    /// A reread that gives `onnx` back `readable` times, then fails as a file changed on
    /// disk would, and the count of its calls.
    fn counted_reread(onnx: &[u8], readable: usize) -> (Reread, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let (onnx, counter) = (onnx.to_vec(), reads.clone());
        let reread: Reread = Arc::new(move || {
            if counter.fetch_add(1, Ordering::SeqCst) < readable {
                Ok(onnx.clone())
            } else {
                Err("models/ocr/rec_tiny.onnx changed on disk".to_string())
            }
        });
        (reread, reads)
    }

    /// A model that can read its bytes again keeps no graph between plans: each new shape
    /// reads and parses them once, a known shape reads nothing, and the answers are those
    /// of a model that kept its graph. A reread that fails fails that plan, saying why.
    #[test]
    fn a_rereadable_model_parses_again_for_each_new_shape() {
        let onnx = rec_tiny_onnx();
        let (reread, reads) = counted_reread(&onnx, 2);
        let engine = TractEngine::new(EngineConfig::default());
        let source = Onnx {
            bytes: &onnx,
            reread: Some(&reread),
        };
        let dropping = engine.load_model("rec_tiny.onnx", source, None).unwrap();
        let keeping = load_rec_tiny(&engine, &onnx);
        let image = |width: usize| {
            ndarray::Array4::from_shape_fn((1, 3, 48, width), |(_, c, y, x)| {
                ((c * 5 + y * 3 + x) % 19) as f32 / 19.0 - 0.5
            })
            .into_dyn()
        };
        let reads_now = || reads.load(Ordering::SeqCst);
        for (width, reads_after) in [(320, 0), (416, 1), (320, 1), (544, 2)] {
            let input = image(width);
            let a = dropping.run(&[Input::F32(input.view())]).unwrap();
            let b = keeping.run(&[Input::F32(input.view())]).unwrap();
            assert_eq!(a[0], b[0], "width {width}");
            assert_eq!(reads_now(), reads_after, "after width {width}");
            assert!(dropping.graph.lock().is_none());
        }
        assert!(keeping.graph.lock().is_some());
        let err = dropping
            .run(&[Input::F32(image(704).view())])
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "model rec_tiny.onnx failed: cannot build a plan for shapes \
             [(F32, [1, 3, 48, 704])]: models/ocr/rec_tiny.onnx changed on disk"
        );
        // The plans it has still serve.
        assert_eq!(
            dropping.run(&[Input::F32(image(416).view())]).unwrap()[0].shape(),
            &[1, 52, 6906]
        );
    }

    /// The tiny recognizer's ONNX bytes.
    fn rec_tiny_onnx() -> Vec<u8> {
        std::fs::read(crate::models::default_root().join("ocr/rec_tiny.onnx")).unwrap()
    }

    /// The tiny recognizer loaded from `onnx` on `engine`, keeping its graph.
    fn load_rec_tiny(engine: &TractEngine, onnx: &[u8]) -> TractModel {
        engine
            .load_model("rec_tiny.onnx", Onnx::bytes(onnx), None)
            .unwrap()
    }

    /// The tiny recognizer's bytes, and the model loaded from them with a reread that
    /// always succeeds, with the count of its rereads.
    fn rereadable_rec_tiny() -> (Vec<u8>, TractModel, Arc<AtomicUsize>) {
        let onnx = rec_tiny_onnx();
        let (reread, reads) = counted_reread(&onnx, usize::MAX);
        let source = Onnx {
            bytes: &onnx,
            reread: Some(&reread),
        };
        let model = TractEngine::new(EngineConfig::default())
            .load_model("rec_tiny.onnx", source, None)
            .unwrap();
        (onnx, model, reads)
    }

    /// A deterministic input to the recognizer at `width` columns.
    fn rec_input(width: usize) -> ArrayD<f32> {
        ndarray::Array4::from_shape_fn((1, 3, 48, width), |(_, c, y, x)| {
            ((c * 7 + y + x * 3) % 23) as f32 / 23.0 - 0.5
        })
        .into_dyn()
    }

    /// A model released before its first plan drops the graph it parsed at load when it
    /// can read its bytes again, and reads them once for the next plan, answering as a
    /// model that kept its graph; a model given as bytes alone keeps its graph.
    #[test]
    fn a_model_never_planned_releases_its_graph_if_it_can_read_it_again() {
        let (onnx, rereadable, reads) = rereadable_rec_tiny();
        let held = load_rec_tiny(&TractEngine::new(EngineConfig::default()), &onnx);
        rereadable.release();
        held.release();
        assert!(rereadable.graph.lock().is_none());
        assert!(held.graph.lock().is_some());
        let input = rec_input(320);
        let a = rereadable.run(&[Input::F32(input.view())]).unwrap();
        let b = held.run(&[Input::F32(input.view())]).unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(a[0].shape(), &[1, 40, 6906]);
        assert_eq!(a[0], b[0]);
    }

    /// Threads that ask at once for a shape not yet planned get one plan between them: the
    /// model reads and plans its bytes once, and every thread gets the same answer.
    #[test]
    fn threads_asking_for_one_new_shape_at_once_plan_it_once() {
        let (_, model, reads) = rereadable_rec_tiny();
        // Drop the graph parsed at load, so that every plan built reads the bytes once.
        model.release();
        let input = rec_input(160);
        let threads = 4;
        let start = std::sync::Barrier::new(threads);
        let answers: Vec<ArrayD<f32>> = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        model.run(&[Input::F32(input.view())]).unwrap().remove(0)
                    })
                })
                .collect();
            runs.into_iter().map(|run| run.join().unwrap()).collect()
        });
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(model.plans.lock().plans.len(), 1);
        assert!(model.building.lock().is_empty());
        assert_eq!(answers[0].shape(), &[1, 20, 6906]);
        assert!(answers.iter().all(|a| *a == answers[0]));
    }

    /// A legal encoder layer: one plan for every sequence length when loaded as varying,
    /// with the outputs of per-length plans.
    #[test]
    fn a_varying_model_plans_once_and_answers_as_per_length_plans() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/legal/l3_layer0.onnx"
        );
        let onnx = std::fs::read(path).unwrap();
        let engine = TractEngine::new(EngineConfig::default());
        let varying = engine
            .load_model("legal/l3_layer0.onnx", Onnx::bytes(&onnx), Some(1))
            .unwrap();
        let fixed = engine
            .load_model("legal/l3_layer0.onnx", Onnx::bytes(&onnx), None)
            .unwrap();
        assert!(!varying.plans_per_shape() && fixed.plans_per_shape());
        assert_eq!(
            varying.placement().notes,
            ["one plan for every length along axis 1"]
        );
        for len in [7usize, 20, 37] {
            let hidden = ndarray::Array3::from_shape_fn((1, len, 384), |(_, t, h)| {
                ((t * 31 + h * 7) % 17) as f32 / 17.0 - 0.5
            })
            .into_dyn();
            let mask = ndarray::Array2::<f32>::ones((1, len)).into_dyn();
            let inputs = [Input::F32(hidden.view()), Input::F32(mask.view())];
            let a = varying.run(&inputs).unwrap().remove(0);
            let b = fixed.run(&inputs).unwrap().remove(0);
            assert_eq!(a.shape(), [1, len, 384]);
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-4, "length {len}: differs by {diff}");
        }
        let plans = |m: &TractModel| m.plans.lock().plans.len();
        assert_eq!((plans(&varying), plans(&fixed)), (1, 3));
        // The varying model kept only its plan; the other one keeps its graph for new shapes.
        assert!(varying.graph.lock().is_none() && fixed.graph.lock().is_some());
        let two = ndarray::Array3::<f32>::zeros((2, 5, 384)).into_dyn();
        let mask = ndarray::Array2::<f32>::ones((2, 5)).into_dyn();
        let err = varying
            .run(&[Input::F32(two.view()), Input::F32(mask.view())])
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "model legal/l3_layer0.onnx failed: cannot build a plan for shapes \
             [(F32, [2, 0, 384]), (F32, [2, 0])]: the model was planned once for every \
             length along its varying axis, and these shapes differ on another axis"
        );
    }
}
