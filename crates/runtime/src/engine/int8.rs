//! Int8 arithmetic for the MatMuls whose weights a model stores as int8, for ONNX Runtime.
//!
//! `export/` stores large weight matrices as int8 with one f32 scale per output column, and
//! the graph turns them back into f32 (`Cast` then `Mul` by the scales) before an f32
//! `MatMul`. Both engines fold that at load, so the file is small but the arithmetic stays
//! f32, which is what bounds a transformer layer on one CPU core.
//!
//! This rewrite keeps the int8 weights int8 and quantizes the other operand (the
//! activations) per tensor at run time: `DynamicQuantizeLinear` -> `MatMulInteger` ->
//! `Cast` -> `Mul` by (activation scale x column scales). ONNX Runtime fuses that chain into
//! one int8 kernel (VNNI where the CPU has it). It changes numbers, so it is opt-in per
//! model (`[engine.ort] int8_matmul`) and its effect is measured by the benchmarks; tract
//! runs such graphs slower than f32, so it is ONNX Runtime's only.
//!
//! It rewrites ONNX protobuf only; it never runs anything.

use std::collections::{HashMap, HashSet};

use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

/// ONNX's element type codes used here.
const FLOAT: i64 = 1;
const INT8: i32 = 3;

/// `DynamicQuantizeLinear` needs opset 11 of the default domain.
const MIN_OPSET: i64 = 11;

/// `onnx` with every MatMul over int8-stored weights (`MatMul(x, Cast(int8) * scales)`, the
/// scales an initializer of one value or one per column) running in int8; returns the new
/// bytes and how many MatMuls changed. A model without such MatMuls (or of an older
/// opset) comes back unchanged, with 0.
pub fn quantize_matmuls(onnx: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut model = ModelProto::decode(onnx).map_err(|e| format!("not an ONNX model: {e}"))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let Some(graph) = model.graph.as_mut().filter(|_| opset >= MIN_OPSET) else {
        return Ok((onnx.to_vec(), 0));
    };
    let rewritten = rewrite(graph);
    if rewritten == 0 {
        return Ok((onnx.to_vec(), 0));
    }
    Ok((model.encode_to_vec(), rewritten))
}

/// What a MatMul's weight operand is made of, when it is int8 with column scales.
struct Int8Weight {
    /// The int8 initializer.
    values: String,
    /// The f32 scales (an initializer).
    scales: String,
}

fn rewrite(graph: &mut GraphProto) -> usize {
    let initializers: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let producers: HashMap<&str, &NodeProto> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let weights: Vec<Option<Int8Weight>> = graph
        .node
        .iter()
        .map(|n| int8_weight(n, &producers, &initializers))
        .collect();
    let rewritten = weights.iter().flatten().count();
    if rewritten == 0 {
        return 0;
    }
    let old_nodes = std::mem::take(&mut graph.node);
    // One quantization per distinct activation, shared by the MatMuls that read it (a
    // layer's query, key and value projections).
    let mut quantized: HashSet<String> = HashSet::new();
    for (node, weight) in old_nodes.into_iter().zip(weights) {
        let Some(weight) = weight else {
            graph.node.push(node);
            continue;
        };
        let activation = &node.input[0];
        let (q, scale, zero) = (
            format!("{activation}/int8"),
            format!("{activation}/int8_scale"),
            format!("{activation}/int8_zero"),
        );
        if quantized.insert(activation.clone()) {
            graph.node.push(op(
                "DynamicQuantizeLinear",
                &format!("{activation}/quantize"),
                &[activation],
                &[&q, &scale, &zero],
            ));
        }
        let out = &node.output[0];
        let (product, as_float, scales) = (
            format!("{out}/int32"),
            format!("{out}/f32"),
            format!("{out}/scales"),
        );
        graph.node.push(op(
            "MatMulInteger",
            &format!("{out}/matmul_int8"),
            &[&q, &weight.values, &zero],
            &[&product],
        ));
        let mut cast = op("Cast", &format!("{out}/cast"), &[&product], &[&as_float]);
        cast.attribute.push(AttributeProto {
            name: "to".into(),
            r#type: AttributeType::Int as i32,
            i: FLOAT,
            ..AttributeProto::default()
        });
        graph.node.push(cast);
        graph.node.push(op(
            "Mul",
            &format!("{out}/scales"),
            &[&scale, &weight.scales],
            &[&scales],
        ));
        graph.node.push(op(
            "Mul",
            &format!("{out}/rescale"),
            &[&as_float, &scales],
            &[out],
        ));
    }
    drop_unused_nodes(graph);
    rewritten
}

/// The int8 weight behind `node`'s second input, if `node` is a MatMul over one.
fn int8_weight(
    node: &NodeProto,
    producers: &HashMap<&str, &NodeProto>,
    initializers: &HashMap<&str, &TensorProto>,
) -> Option<Int8Weight> {
    if node.op_type != "MatMul" || !node.domain.is_empty() || node.input.len() != 2 {
        return None;
    }
    let mul = producers.get(node.input[1].as_str())?;
    if mul.op_type != "Mul" || mul.input.len() != 2 {
        return None;
    }
    let columns = |t: &TensorProto| t.dims.last().copied();
    for (cast_output, scales) in [(0, 1), (1, 0)] {
        let Some(cast) = producers.get(mul.input[cast_output].as_str()) else {
            continue;
        };
        let values = cast
            .input
            .first()
            .and_then(|i| initializers.get(i.as_str()));
        let scale = initializers.get(mul.input[scales].as_str());
        let (Some(values), Some(scale)) = (values, scale) else {
            continue;
        };
        let per_column = match scale.dims.as_slice() {
            [] | [1] => true,
            [n] => Some(*n) == columns(values),
            _ => false,
        };
        if cast.op_type == "Cast"
            && values.data_type == INT8
            && values.dims.len() == 2
            && scale.data_type == FLOAT as i32
            && per_column
        {
            return Some(Int8Weight {
                values: values.name.clone(),
                scales: scale.name.clone(),
            });
        }
    }
    None
}

fn op(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op_type.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..NodeProto::default()
    }
}

/// Removes the nodes nothing reads any more (the weights' Cast and Mul), repeatedly.
fn drop_unused_nodes(graph: &mut GraphProto) {
    loop {
        let read: HashSet<&str> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter())
            .chain(graph.output.iter().map(|o| &o.name))
            .map(String::as_str)
            .collect();
        let keep: Vec<bool> = graph
            .node
            .iter()
            .map(|n| n.output.iter().any(|o| read.contains(o.as_str())))
            .collect();
        if keep.iter().all(|&k| k) {
            return;
        }
        let mut keep = keep.into_iter();
        graph.node.retain(|_| keep.next().unwrap_or(true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> Vec<u8> {
        let dir = crate::models::default_root().join("legal");
        std::fs::read(dir.join("l6_layer0.onnx")).expect("models/legal/l6_layer0.onnx")
    }

    fn op_counts(onnx: &[u8]) -> HashMap<String, usize> {
        let model = ModelProto::decode(onnx).unwrap();
        let mut counts = HashMap::new();
        for node in model.graph.unwrap().node {
            *counts.entry(node.op_type).or_default() += 1;
        }
        counts
    }

    #[test]
    fn a_transformer_layer_gets_int8_matmuls() {
        let original = layer();
        let before = op_counts(&original);
        assert_eq!(before["MatMul"], 8);
        assert_eq!(before["Cast"], 6, "one per int8 weight");
        let (rewritten, count) = quantize_matmuls(&original).unwrap();
        assert_eq!(count, 6, "Q, K, V, output, FFN up and down");
        let after = op_counts(&rewritten);
        // The two attention products (activation x activation) stay f32.
        assert_eq!(after["MatMul"], 2);
        assert_eq!(after["MatMulInteger"], 6);
        // Q, K and V share the quantized hidden state: 4 distinct activations.
        assert_eq!(after["DynamicQuantizeLinear"], 4);
        // The weights' Casts are gone; one Cast per int32 product is new.
        assert_eq!(after["Cast"], 6);
    }

    #[test]
    fn graphs_without_int8_weights_are_returned_as_they_are() {
        let dir = crate::models::default_root().join("legal");
        let pool = std::fs::read(dir.join("pool.onnx")).unwrap();
        let (same, count) = quantize_matmuls(&pool).unwrap();
        assert_eq!(count, 0);
        assert_eq!(same, pool);
        assert!(quantize_matmuls(b"not a model").is_err());
    }
}
