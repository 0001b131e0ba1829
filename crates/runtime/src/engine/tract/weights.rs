//! One copy of each constant across the plans of one tract model.
//!
//! tract optimizes a graph per input shape, and each optimization packs the weights anew:
//! a recognizer planned at eleven crop widths held eleven packed copies of the same
//! weights (13 MiB each for `rec_small`). Packing depends on the matrix kernel, not on the
//! input shape, so most of those copies are byte for byte the same. [`SharedWeights`] walks
//! a freshly optimized plan and points every constant that an earlier plan already holds at
//! that plan's copy, so the new plan's own copies are freed. A constant that differs in one
//! byte (another kernel, another layout) is kept as it is: sharing never changes a value.
//!
//! This must not change a graph's structure: it only swaps one immutable buffer for an equal
//! one.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tract_linalg::mmm::{EagerPackedInput, MMMInputValue};
use tract_linalg::pack::PackedFormat;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};

use super::kernels::Operand;

/// A fast hasher: every constant of a plan is hashed whole (20 MiB for `rec_small`).
type FastHash = foldhash::fast::RandomState;

/// The constants the live plans of one model hold, each once.
#[derive(Default)]
pub(super) struct SharedWeights {
    /// Packed weight matrices baked into matrix products.
    packed: HashSet<PackedWeights, FastHash>,
    /// Constant tensors of the graph (biases, packed kernels not baked, lookup tables).
    tensors: HashSet<Arc<Tensor>, FastHash>,
    /// Whether the plans built so far are remembered. A model's first plan is not hashed
    /// until a second one is built, so that models with a single plan (most of them, and
    /// every varying one) pay nothing at start-up.
    primed: bool,
}

impl SharedWeights {
    /// Points every constant of `model` that a plan in `earlier` holds at that plan's copy
    /// and remembers the others for later plans. `earlier` are the model's live plans.
    /// Returns the bytes `model` no longer holds on its own.
    pub(super) fn share<'m>(
        &mut self,
        model: &mut TypedModel,
        earlier: impl IntoIterator<Item = &'m TypedModel>,
    ) -> TractResult<usize> {
        if !self.primed {
            let mut earlier = earlier.into_iter().peekable();
            if earlier.peek().is_none() {
                return Ok(0);
            }
            for plan in earlier {
                self.remember(plan);
            }
            self.primed = true;
        }
        let mut saved = 0;
        for node in model.nodes_mut() {
            if let Some(matmul) = node.op_as_mut::<OptMatMul>() {
                for micro_op in &mut matmul.micro_ops {
                    if let ProtoFusedSpec::AddMatMul { a, b, .. } = micro_op {
                        saved += self.share_operand(a) + self.share_operand(b);
                    }
                }
            } else if let Some(konst) = node.op_as::<Const>() {
                let tensor = konst.val();
                let shared = match self.tensors.get(&**tensor) {
                    Some(shared) if !Arc::ptr_eq(shared, tensor) => shared.clone(),
                    Some(_) => continue,
                    None => {
                        self.tensors.insert(tensor.clone());
                        continue;
                    }
                };
                saved += plain_bytes(&shared);
                // The output fact keeps the value too: both must point at the shared copy.
                let exotic = node.outputs[0].fact.exotic_fact.clone();
                node.op = Box::new(Const::new_with_opt_exotic_fact(shared.clone(), exotic)?);
                for output in &mut node.outputs {
                    if output.fact.konst.is_some() {
                        output.fact.konst = Some(shared.clone());
                    }
                }
            }
        }
        Ok(saved)
    }

    /// Takes in the constants of a plan built before sharing started, as they are.
    fn remember(&mut self, plan: &TypedModel) {
        for packed in packed_weights(plan) {
            self.packed.insert(PackedWeights(packed.value.clone()));
        }
        for node in &plan.nodes {
            if let Some(konst) = node.op_as::<Const>() {
                self.tensors.insert(konst.val().clone());
            }
        }
    }

    fn share_operand(&mut self, operand: &mut MatMulOperand) -> usize {
        let Some(packed) = eager_packed(operand) else {
            return 0;
        };
        let packed = PackedWeights(packed.clone());
        match self.packed.get(&packed) {
            Some(shared) if !Arc::ptr_eq(&shared.0.packed, &packed.0.packed) => {
                let saved = shared.0.packed.len();
                *operand =
                    MatMulOperand::Const(Box::new(shared.0.clone()) as Box<dyn MMMInputValue>);
                saved
            }
            Some(_) => 0,
            None => {
                self.packed.insert(packed);
                0
            }
        }
    }

    /// Forgets the constants no live plan holds any more (after a plan was evicted).
    pub(super) fn forget_unused(&mut self) {
        self.packed.retain(|p| Arc::strong_count(&p.0.packed) > 1);
        self.tensors.retain(|t| Arc::strong_count(t) > 1);
    }

    /// The bytes of the constants held once for every plan (0 while the model has had a
    /// single plan: they are not counted until a second plan is built).
    pub(super) fn held_bytes(&self) -> usize {
        let packed: usize = self.packed.iter().map(|p| p.0.packed.len()).sum();
        let tensors: usize = self.tensors.iter().map(|t| plain_bytes(t)).sum();
        packed + tensors
    }
}

/// The bytes of the constants `plan` holds on its own: what it would hold unshared.
#[cfg(test)]
pub(super) fn constant_bytes(plan: &TypedModel) -> usize {
    let mut alone = SharedWeights::default();
    alone.remember(plan);
    alone.held_bytes()
}

/// A weight matrix that a matrix product of a plan holds packed.
pub(super) struct PackedWeight<'p> {
    pub operand: Operand,
    pub value: &'p EagerPackedInput,
    /// The kernel the product runs, for which the weight is packed; `None` for a product
    /// that picks one of several at run time (by its `n`).
    pub kernel: Option<&'p str>,
}

/// Every weight matrix `plan` holds packed for a matrix product.
pub(super) fn packed_weights(plan: &TypedModel) -> impl Iterator<Item = PackedWeight<'_>> {
    plan.nodes
        .iter()
        .filter_map(|node| node.op_as::<OptMatMul>())
        .flat_map(|matmul| {
            matmul.micro_ops.iter().flat_map(move |micro_op| {
                let ProtoFusedSpec::AddMatMul { a, b, .. } = micro_op else {
                    return Vec::new();
                };
                [(Operand::Left, a), (Operand::Right, b)]
                    .into_iter()
                    .filter_map(|(operand, value)| {
                        Some(PackedWeight {
                            operand,
                            value: eager_packed(value)?,
                            kernel: (matmul.mmm.len() == 1).then(|| matmul.mmm[0].name()),
                        })
                    })
                    .collect()
            })
        })
}

/// The packed matrix a matrix product holds as a constant operand. Only eagerly packed
/// values: their clone shares the packed buffer (an `Arc`), where another kind of value
/// might copy its data and hold more instead of less.
fn eager_packed(operand: &MatMulOperand) -> Option<&EagerPackedInput> {
    match operand {
        MatMulOperand::Const(value) => value.downcast_ref::<EagerPackedInput>(),
        MatMulOperand::Input(_) => None,
    }
}

/// A packed weight matrix, equal to another when the kernel would read the same values.
///
/// Packing pads each panel to an alignment and leaves the padding uninitialised, so two
/// packings of one matrix differ in bytes no kernel reads: only each panel's `k` records of
/// `r` values are compared and hashed.
struct PackedWeights(EagerPackedInput);

impl PackedWeights {
    /// The bytes a kernel reads, panel by panel.
    fn panels(&self) -> impl Iterator<Item = &[u8]> {
        let input = &self.0;
        let bytes: &[u8] = &input.packed;
        let read = match input.fact.format.downcast_ref::<PackedFormat>() {
            Some(format) => (input.fact.k * format.r * format.dt.size_of()).min(input.panel_bytes),
            // A format whose layout we do not know: every byte counts.
            None => input.panel_bytes,
        };
        bytes
            .chunks(input.panel_bytes.max(1))
            .map(move |panel| &panel[..read.min(panel.len())])
    }
}

impl PartialEq for PackedWeights {
    fn eq(&self, other: &Self) -> bool {
        self.0.fact == other.0.fact
            && self.0.panel_bytes == other.0.panel_bytes
            && self.0.mn == other.0.mn
            && self.0.packed.len() == other.0.packed.len()
            && self.panels().eq(other.panels())
    }
}

impl Eq for PackedWeights {}

impl Hash for PackedWeights {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.fact.hash(state);
        self.0.panel_bytes.hash(state);
        self.0.mn.hash(state);
        for panel in self.panels() {
            state.write(panel);
        }
    }
}

/// The size of a plain tensor's values; exotic storage (already packed) counts as none.
fn plain_bytes(tensor: &Tensor) -> usize {
    if tensor.is_plain() {
        tensor.len() * tensor.datum_type().size_of()
    } else {
        0
    }
}
