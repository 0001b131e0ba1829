//! How tract computes each convolution of a plan: its direct spatial kernel or im2col and a
//! matrix product. tract 0.23 takes the direct kernel for every group-1 f32 NCHW convolution
//! of up to 576 taps per output point (input channels times kernel area). On the OCR
//! detectors that kernel wins at few taps and loses at many (AMD EPYC, AVX2, one thread, each
//! node timed in `bench engines`):
//!
//! | convolution (det_tiny at 960x544) | taps | direct | im2col |
//! |---|---|---|---|
//! | 3x3/2, 3 -> 16 | 27 | 3.4 ms | 6.2 ms |
//! | 2x2, 8 -> 16 | 32 | 2.7 ms | 6.4 ms |
//! | 2x2, 16 -> 8 | 64 | 3.2 ms | 8.9 ms (with its pad) |
//! | 3x3/2, 32 -> 16 | 288 | 28.8 ms | 13.5 ms (with its pad) |
//! | 3x3, 64 -> 16 (the head) | 576 | 20.4 ms | 13.8 ms |
//!
//! So before tract's own code generation, the convolutions over more than
//! [`DIRECT_SPATIAL_MAX_TAPS`] taps are generated as im2col; tract then plans the rest as it
//! would. `EDGERUN_TRACT_CONV=tract` leaves every choice to tract, to measure against. This
//! module only chooses; it never computes a convolution itself.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::knobs::KnobScope;
use tract_onnx::tract_core::ops::cnn::Conv;

/// Whether `EDGERUN_TRACT_CONV=tract` asks to leave every choice to tract.
pub(super) fn left_to_tract() -> bool {
    std::env::var_os("EDGERUN_TRACT_CONV").is_some_and(|choice| choice == "tract")
}

/// The most taps per output point for which tract's direct spatial convolution is kept.
pub(super) const DIRECT_SPATIAL_MAX_TAPS: usize = 128;

/// Generates every group-1 convolution over more than [`DIRECT_SPATIAL_MAX_TAPS`] taps as
/// im2col and a matrix product, as tract would with its direct spatial kernel switched off.
/// `model` is decluttered and not yet optimized. Returns how many convolutions it generated.
pub(super) fn im2col_for_wide_convolutions(model: &mut TypedModel) -> TractResult<usize> {
    let without_direct = KnobScope::new([("TRACT_DISABLE_DIRECT_SPATIAL", "true")])?;
    let mut generated = 0;
    // A patch only adds nodes and retires the one it replaces, so the ids stay valid.
    for id in model.eval_order()? {
        let node = &model.nodes[id];
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        if conv.group != 1 || taps(conv) <= DIRECT_SPATIAL_MAX_TAPS {
            continue;
        }
        if let Some(patch) = without_direct.enter(|| conv.codegen(model, node))? {
            patch.apply(model)?;
            generated += 1;
        }
    }
    Ok(generated)
}

/// Input values each output point of `conv` reads.
fn taps(conv: &Conv) -> usize {
    conv.input_channels() * conv.pool_spec.kernel_shape.iter().product::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_names(plan: &TypedModel) -> Vec<String> {
        plan.eval_order()
            .unwrap()
            .into_iter()
            .map(|id| plan.nodes[id].op().name().to_string())
            .collect()
    }

    /// The tiny detector at 128x512 (its head then sees rows of 128 points, the shortest the
    /// direct kernel takes): tract alone makes five direct convolutions, this choice keeps
    /// the three narrow ones, and both plans answer alike.
    #[test]
    fn wide_convolutions_become_im2col_and_answer_alike() {
        let path = crate::models::default_root().join("ocr/det_tiny.onnx");
        let decluttered = tract_onnx::onnx()
            .model_for_path(path)
            .unwrap()
            .with_input_fact(0, f32::fact([1, 3, 128, 512]).into())
            .unwrap()
            .into_typed()
            .unwrap()
            .into_decluttered()
            .unwrap();
        let tracts = decluttered.clone().into_optimized().unwrap();
        let mut ours = decluttered;
        assert_eq!(im2col_for_wide_convolutions(&mut ours).unwrap(), 2);
        ours.optimize().unwrap();

        let direct = |plan: &TypedModel| {
            op_names(plan)
                .iter()
                .filter(|name| *name == "DirectSpatialConv")
                .count()
        };
        assert_eq!(direct(&tracts), 5);
        assert_eq!(direct(&ours), 3);

        let image = tract_ndarray::Array4::from_shape_fn((1, 3, 128, 512), |(_, c, y, x)| {
            ((c * 31 + y * 7 + x * 13) % 29) as f32 / 29.0 - 0.5
        });
        let run = |plan: TypedModel| {
            let outputs = plan
                .into_runnable()
                .unwrap()
                .run(tvec!(image.clone().into_tensor().into_tvalue()))
                .unwrap();
            outputs[0]
                .clone()
                .into_tensor()
                .into_plain_array::<f32>()
                .unwrap()
        };
        let (theirs, ours) = (run(tracts), run(ours));
        assert_eq!(ours.shape(), &[1, 1, 128, 512]);
        let largest_difference = theirs
            .iter()
            .zip(&ours)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // Probabilities; the two orders of summation differ in the last bits.
        assert!(largest_difference < 1e-4, "{largest_difference}");
    }
}
