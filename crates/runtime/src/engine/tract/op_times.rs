//! Where a tract plan spends its time: each node of the plan a request would use, timed as it
//! runs, summed per kind of operation (tract's op names after optimisation, such as
//! `DirectSpatialConv` or `OptMatMul`) or listed node by node. For `bench engines`, which
//! shows it for the models tract runs much slower than ONNX Runtime; nothing on the serving
//! path calls it.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;
use tract_onnx::prelude::tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{SimpleState, eval};

use super::{Plan, TractModel, shape_key, to_tvalue};
use crate::engine::{EngineError, Input};
use crate::latency::LatencyStats;

/// How [`OpTime`]s group a plan's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBy {
    /// One entry per kind of operation.
    Op,
    /// One entry per node.
    Node,
}

/// One kind of operation in a plan, or one node, and the time it took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpTime {
    /// tract's name for the operation, as in the optimized plan.
    pub op: String,
    /// With [`TimeBy::Node`]: the node's name and its output shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Nodes counted in this entry.
    pub nodes: usize,
    /// Median over the runs of the milliseconds those nodes took in one run.
    pub ms: f64,
}

/// What an entry is keyed by: the op's name, and the node's with [`TimeBy::Node`].
type Key = (String, Option<String>);

fn key(node: &TypedNode, by: TimeBy) -> Key {
    let op = node.op().name().to_string();
    match by {
        TimeBy::Op => (op, None),
        TimeBy::Node => {
            let shape = node.outputs.first().map(|o| format!(" {:?}", o.fact.shape));
            (
                op,
                Some(format!("{}{}", node.name, shape.unwrap_or_default())),
            )
        }
    }
}

impl TractModel {
    /// Runs the plan for `inputs` `runs` times (after one untimed run), timing every node, on
    /// one thread. Largest time first.
    pub(super) fn op_times(
        &self,
        inputs: &[Input<'_>],
        runs: usize,
        by: TimeBy,
    ) -> Result<Vec<OpTime>, EngineError> {
        self.check_arity(inputs.len())?;
        let plan = self.plan_for(&shape_key(inputs))?;
        let run_error = |e: TractError| EngineError::Run {
            model: self.name.clone(),
            message: format!("{e:#}"),
        };
        let nodes = nodes_per_key(&plan, by);
        let mut per_run: HashMap<Key, Vec<f64>> = HashMap::new();
        for run in 0..=runs.max(1) {
            let times = multithread_tract_scope(Executor::SingleThread, || {
                time_one_run(&plan, inputs.iter().map(to_tvalue).collect(), by)
            })
            .map_err(run_error)?;
            if run > 0 {
                for key in nodes.keys() {
                    let ms = times.get(key).copied().unwrap_or(0.0);
                    per_run.entry(key.clone()).or_default().push(ms);
                }
            }
        }
        let mut found: Vec<OpTime> = per_run
            .into_iter()
            .map(|(key, times)| OpTime {
                nodes: nodes[&key],
                ms: LatencyStats::of(&times).median_ms,
                op: key.0,
                node: key.1,
            })
            .collect();
        found.sort_by(|a, b| {
            b.ms.total_cmp(&a.ms)
                .then_with(|| (&a.op, &a.node).cmp(&(&b.op, &b.node)))
        });
        Ok(found)
    }
}

/// How many of the plan's nodes each entry counts.
fn nodes_per_key(plan: &Plan, by: TimeBy) -> HashMap<Key, usize> {
    let mut nodes = HashMap::new();
    for &index in plan.order_without_consts() {
        *nodes
            .entry(key(&plan.model().nodes[index], by))
            .or_default() += 1;
    }
    nodes
}

/// Milliseconds per entry in one run of `plan`.
fn time_one_run(plan: &Plan, inputs: TVec<TValue>, by: TimeBy) -> TractResult<HashMap<Key, f64>> {
    let mut times: HashMap<Key, f64> = HashMap::new();
    let mut state = SimpleState::new(plan)?;
    state.run_plan_with_eval(inputs, |context, op_state, node, node_inputs| {
        let start = Instant::now();
        let outputs = eval(context, op_state, node, node_inputs);
        *times.entry(key(node, by)).or_default() += start.elapsed().as_secs_f64() * 1e3;
        outputs
    })?;
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, Onnx, TractEngine};

    /// The tiny recognizer at one width: every node of its plan is counted once, per node
    /// and per kind, and the two views agree on which kinds of operation there are.
    #[test]
    fn times_every_node_of_the_plan_once() {
        let path = crate::models::default_root().join("ocr/rec_tiny.onnx");
        let bytes = std::fs::read(path).unwrap();
        let engine = TractEngine::new(EngineConfig::default());
        let model = engine
            .load_model("rec_tiny.onnx", Onnx::bytes(&bytes), None)
            .unwrap();
        let input = ndarray::Array4::<f32>::zeros((1, 3, 48, 320)).into_dyn();
        let inputs = [Input::F32(input.view())];
        let by_op = model.op_times(&inputs, 2, TimeBy::Op).unwrap();
        let by_node = model.op_times(&inputs, 2, TimeBy::Node).unwrap();

        let plan = model.plan_for(&shape_key(&inputs)).unwrap();
        let planned = plan.order_without_consts().len();
        assert_eq!(by_op.iter().map(|t| t.nodes).sum::<usize>(), planned);
        assert_eq!(by_node.len(), planned);
        assert!(by_node.iter().all(|t| t.nodes == 1 && t.node.is_some()));
        assert!(by_op.iter().all(|t| t.node.is_none() && t.ms >= 0.0));
        assert!(by_op.windows(2).all(|w| w[0].ms >= w[1].ms));

        fn kinds(times: &[OpTime]) -> Vec<&str> {
            let mut kinds: Vec<&str> = times.iter().map(|t| t.op.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            kinds
        }
        assert_eq!(kinds(&by_op), kinds(&by_node));
        assert_eq!(kinds(&by_op).len(), by_op.len());
        // The recognizer's matrix products are there under tract's name for them.
        assert!(kinds(&by_op).contains(&"OptMatMul"), "{:?}", kinds(&by_op));
    }
}
