"""ONNX blocks of the two anchors: embeddings, one graph per transformer layer, pooling, stitches.

The graphs are written with onnx.helper rather than traced, so that every block has the same
small, stable interface the Rust block executor composes:

  emb_<anchor>.onnx      input_ids i64 [b, s]                 -> hidden f32 [b, s, 384]
  <anchor>_layer<i>.onnx hidden f32 [b, s, 384], mask f32 [b, s] -> hidden
  stitch_<name>.onnx     hidden                               -> hidden (per-token Linear)
  pool.onnx              hidden, mask                         -> embedding f32 [b, 384] (mean, L2)

Weight storage is compressed, with the arithmetic left in f32:
  * dense weights: int8, symmetric, one scale per output column (Cast * scale folds into an
    f32 constant when the engine optimises the plan, so it costs nothing per request);
  * the word-embedding table (30522 x 384, most of each anchor's size): 4-bit, symmetric, one
    f16 scale per group of 32 values, two values per byte; rows are gathered first and
    unpacked after, so only the rows of the request's tokens are ever expanded.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import HEADS, HIDDEN, LN_EPS

OPSET = 17
IR_VERSION = 8
GROUP = 32


class Graph:
    """A tiny builder: named nodes, initializers and the graph's inputs/outputs."""

    def __init__(self, name):
        self.name, self.nodes, self.inits, self.count = name, [], [], 0

    def const(self, array, name=None):
        self.count += 1
        name = name or f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, **attrs):
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self.count}", **attrs))
        return out

    def model(self, inputs, outputs, rename_output):
        self.nodes.append(helper.make_node("Identity", [outputs[1]], [rename_output]))
        graph = helper.make_graph(self.nodes, self.name, inputs,
                                  [helper.make_tensor_value_info(rename_output, TensorProto.FLOAT, outputs[0])],
                                  self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgerun export/legal")
        m.ir_version = IR_VERSION
        onnx.checker.check_model(m)
        return m


def quantize_columns(w):
    """int8 weights with one scale per output column; returns (q, scale, dequantized)."""
    scale = np.abs(w).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32), (q.astype(np.float32) * scale).astype(np.float32)


def quantize_rows_int4(table):
    """4-bit groups of GROUP values per row; returns (packed uint8, f16 scales, dequantized)."""
    rows, cols = table.shape
    groups = table.reshape(rows, cols // GROUP, GROUP)
    scale = (np.abs(groups).max(axis=2) / 7.0).astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
    q = np.clip(np.round(groups / safe[..., None]), -7, 7).astype(np.int16) + 8
    q = q.reshape(rows, cols)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    deq = ((q.reshape(rows, cols // GROUP, GROUP) - 8) * scale.astype(np.float32)[..., None])
    return packed, scale, deq.reshape(rows, cols).astype(np.float32)


def dense(g, x, w, b, quantize):
    if quantize:
        q, scale, _ = quantize_columns(w)
        wf = g.op("Mul", [g.op("Cast", [g.const(q)], to=TensorProto.FLOAT), g.const(scale)])
    else:
        wf = g.const(w.astype(np.float32))
    return g.op("Add", [g.op("MatMul", [x, wf]), g.const(b.astype(np.float32))])


def layer_norm(g, x, w, b):
    return g.op("LayerNormalization", [x, g.const(w.astype(np.float32)), g.const(b.astype(np.float32))],
                axis=-1, epsilon=LN_EPS)


def hidden_info(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "seq", HIDDEN])


def mask_info():
    return helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "seq"])


def embeddings_block(weights, quantize=True):
    g = Graph("embeddings")
    ids = "input_ids"
    if quantize:
        packed, scale, _ = quantize_rows_int4(weights["emb.word"])
        rows = g.op("Cast", [g.op("Gather", [g.const(packed), ids], axis=0)], to=TensorProto.FLOAT)
        high = g.op("Floor", [g.op("Div", [rows, g.const(np.float32(16))])])
        low = g.op("Sub", [rows, g.op("Mul", [high, g.const(np.float32(16))])])
        pairs = g.op("Concat", [g.op("Unsqueeze", [low, g.const(np.array([-1]))]),
                                g.op("Unsqueeze", [high, g.const(np.array([-1]))])], axis=-1)
        centred = g.op("Sub", [pairs, g.const(np.float32(8))])
        grouped = g.op("Reshape", [centred, g.const(np.array([0, 0, HIDDEN // GROUP, GROUP]))])
        scales = g.op("Cast", [g.op("Gather", [g.const(scale), ids], axis=0)], to=TensorProto.FLOAT)
        scaled = g.op("Mul", [grouped, g.op("Unsqueeze", [scales, g.const(np.array([-1]))])])
        word = g.op("Reshape", [scaled, g.const(np.array([0, 0, HIDDEN]))])
    else:
        word = g.op("Gather", [g.const(weights["emb.word"].astype(np.float32)), ids], axis=0)
    seq = g.op("Gather", [g.op("Shape", [ids]), g.const(np.array([1]))], axis=0)
    positions = g.op("Slice", [g.const(weights["emb.pos"].astype(np.float32)), g.const(np.array([0])), seq,
                               g.const(np.array([0]))])
    x = g.op("Add", [g.op("Add", [word, positions]), g.const(weights["emb.type"][0].astype(np.float32))])
    out = layer_norm(g, x, weights["emb.ln_w"], weights["emb.ln_b"])
    inputs = [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "seq"])]
    return g.model(inputs, (["batch", "seq", HIDDEN], out), "hidden_out")


def layer_block(weights, i, quantize=True):
    g = Graph(f"layer{i}")
    w = lambda n: weights[f"layer{i}.{n}"]
    x, mask = "hidden", "mask"
    head_dim = HIDDEN // HEADS
    split = g.const(np.array([0, 0, HEADS, head_dim]))

    def heads(t, perm):
        return g.op("Transpose", [g.op("Reshape", [t, split])], perm=perm)

    q = heads(dense(g, x, w("q_w"), w("q_b"), quantize), [0, 2, 1, 3])
    k = heads(dense(g, x, w("k_w"), w("k_b"), quantize), [0, 2, 3, 1])
    v = heads(dense(g, x, w("v_w"), w("v_b"), quantize), [0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.float32(1.0 / np.sqrt(head_dim)))])
    # Padding positions get -10000 before the softmax, as BERT's extended attention mask does.
    bias = g.op("Mul", [g.op("Sub", [g.const(np.float32(1)), mask]), g.const(np.float32(-10000))])
    bias = g.op("Unsqueeze", [bias, g.const(np.array([1, 2]))])
    probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const(np.array([0, 0, HIDDEN]))])
    a = layer_norm(g, g.op("Add", [dense(g, ctx, w("o_w"), w("o_b"), quantize), x]), w("ln1_w"), w("ln1_b"))
    h = dense(g, a, w("i_w"), w("i_b"), quantize)
    erf = g.op("Erf", [g.op("Mul", [h, g.const(np.float32(1 / np.sqrt(2)))])])
    h = g.op("Mul", [g.op("Mul", [h, g.const(np.float32(0.5))]), g.op("Add", [erf, g.const(np.float32(1))])])
    out = layer_norm(g, g.op("Add", [dense(g, h, w("f_w"), w("f_b"), quantize), a]), w("ln2_w"), w("ln2_b"))
    return g.model([hidden_info(x), mask_info()], (["batch", "seq", HIDDEN], out), "hidden_out")


def stitch_block(weight, bias, quantize=True):
    g = Graph("stitch")
    out = dense(g, "hidden", weight, bias, quantize)
    return g.model([hidden_info("hidden")], (["batch", "seq", HIDDEN], out), "hidden_out")


def pool_block():
    g = Graph("pool")
    m = g.op("Unsqueeze", ["mask", g.const(np.array([-1]))])
    summed = g.op("ReduceSum", [g.op("Mul", ["hidden", m]), g.const(np.array([1]))], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", ["mask", g.const(np.array([1]))], keepdims=1),
                         g.const(np.float32(1e-9))])
    mean = g.op("Div", [summed, count])
    norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [mean, mean]), g.const(np.array([1]))], keepdims=1)])
    out = g.op("Div", [mean, g.op("Max", [norm, g.const(np.float32(1e-12))])])
    return g.model([hidden_info("hidden"), mask_info()], (["batch", HIDDEN], out), "embedding")


def dequantized(weights):
    """The weights exactly as the quantized blocks compute with them (for torch training)."""
    out = dict(weights)
    out["emb.word"] = quantize_rows_int4(weights["emb.word"])[2]
    for name, w in weights.items():
        if name.endswith("_w") and w.ndim == 2:
            out[name] = quantize_columns(w)[2]
    return out
