#!/usr/bin/env python3
"""Generate the localml example model repository and its expected outputs.

Rerun (from the repository root) with:

    python3 examples/make_models.py

Requirements: ``pip install onnx==1.23.2 onnxruntime==1.32.0 numpy``.

Everything is deterministic (fixed ``numpy.random.RandomState`` seeds, which
numpy keeps stream-compatible across releases) and idempotent: every file is
overwritten on each run.  All models use opset 17 of the default ONNX domain
and ``ir_version`` 8, and every model has a leading symbolic dimension named
``batch``.

Model repository (Triton layout, ``examples/models/<name>/<version>/model.onnx``):

* ``image_classifier`` (version 1) -- small FP32 CNN.
  ``image`` FLOAT [batch,3,32,32] -> Conv(8 filters 3x3, pad 1) -> Relu
  -> Conv(16 filters 3x3, stride 2, pad 1) -> Relu -> GlobalAveragePool
  -> Flatten -> Gemm(16->10) -> Softmax -> ``probabilities`` FLOAT [batch,10].
  Also gets ``config.yaml`` (max_batch_size 8, 2 instances, [cuda, cpu]).
* ``image_scorer`` (version 1) -- an image model with a ``task:`` in its
  config.yaml (the web page turns a photo into its input): ``image`` FLOAT
  [batch,12,16,3] (NHWC, BGR, ImageNet mean/std) -> Flatten -> Gemm(576->5)
  -> ``scores`` FLOAT [batch,5], one per label of ``1/labels.txt``.  Linear in
  every pixel, so its output changes with the layout, the channel order and
  the scaling of its input.
* ``text_classifier`` (versions 1 and 2, same graph, different weights) --
  ``token_ids`` INT64 [batch,16] -> Gather on a [1000,32] FLOAT embedding
  table -> ReduceMean(axes=[1], keepdims=0) -> Gemm(32->4)
  -> ``logits`` FLOAT [batch,4].
* ``tensor_stats`` (version 1) -- several outputs of different datatypes from
  ``values`` FLOAT [batch,8]: ``sum`` FLOAT [batch] (ReduceSum, axes given as
  an input tensor), ``max`` FLOAT [batch] (ReduceMax, axes attribute),
  ``argmax`` INT64 [batch] (ArgMax) and ``doubled`` DOUBLE [batch,8]
  (Cast to double, Mul by 2.0).
* ``datatypes`` (version 1) -- one Identity per datatype: inputs
  ``in_<t>`` -> outputs ``out_<t>``, each [batch,4], for t in bool, uint8,
  uint16, uint32, uint64, int8, int16, int32, int64, fp16, fp32, fp64, string.

Catalog variant (``examples/variants/<name>/<version>/<variant>/model.onnx``,
pushed with ``localml models push --variant``, not a repository of its own):

* ``text_classifier`` version 2, ``int8`` -- onnxruntime's dynamic
  quantization (``quantize_dynamic``, QInt8 weights) of version 2: the same
  inputs and outputs, a quarter of the embedding table's bytes.  Its outputs
  for the same inputs are in ``examples/variants/text_classifier.v2.int8.json``.

Expected outputs (``examples/expected/<model>.json``, and
``text_classifier.v1.json`` / ``text_classifier.v2.json``) hold fixed,
seeded inputs with batch size 2 and the outputs computed by onnxruntime's
Python API (InferenceSession, CPUExecutionProvider), in this schema::

    {"model": "<name>", "version": "1",
     "inputs":  [{"name": ..., "datatype": "FP32", "shape": [...], "data": [...]}],
     "outputs": [{"name": ..., "datatype": "FP32", "shape": [...], "data": [...]}]}

Datatypes are Open Inference Protocol names (BOOL, UINT8, ..., FP16, FP32,
FP64, BYTES); data is flattened row-major; floats are written with Python's
float repr (exact round trip; FP16/FP32 values are the exact widened value),
strings as UTF-8 JSON strings, bools as true/false.

At the end the script reloads every model with onnxruntime, prints its I/O
signature, re-runs the JSON inputs and compares against the JSON outputs,
checks the results against a plain-numpy reference implementation of each
graph, and checks the total size stays under 2 MB.  It exits non-zero on any
mismatch.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
BATCH = 2  # batch size of the expected-output examples

EXAMPLES = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.join(EXAMPLES, "models")
EXPECTED_DIR = os.path.join(EXAMPLES, "expected")
VARIANTS_DIR = os.path.join(EXAMPLES, "variants")
SIZE_LIMIT = 2 * 1024 * 1024

IMAGE_CONFIG = """\
# Optional per-model configuration (all keys optional).
max_batch_size: 8
instances: 2
execution_providers: [cuda, cpu]
"""

SCORER_CONFIG = """\
# An image model with a task: the web page resizes a photo to 16x12 and builds
# the input tensor as said here (docs/models.md, "task").
max_batch_size: 8
task:
  kind: image-classification
  width: 16
  height: 12
  layout: NHWC
  channels: BGR
  scale: 0.00392156862745098
  mean: [0.406, 0.456, 0.485]
  std: [0.225, 0.224, 0.229]
  labels: labels.txt
"""
SCORER_LABELS = ["sky", "grass", "sand", "water", "stone"]

# numpy dtype -> (Open Inference Protocol datatype, ONNX TensorProto type)
NP_TO_OIP = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(object): "BYTES",
}
OIP_TO_NP = {v: k for k, v in NP_TO_OIP.items()}


# --------------------------------------------------------------------------
# Model construction helpers
# --------------------------------------------------------------------------

def init(name, array):
    return numpy_helper.from_array(np.ascontiguousarray(array), name=name)


def make_model(graph, doc):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="localml-examples",
        producer_version="1",
        doc_string=doc,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def save_model(model, name, version):
    path = os.path.join(MODELS_DIR, name, str(version), "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save_model(model, path)
    return path


def image_classifier_weights(seed=1):
    rs = np.random.RandomState(seed)
    return {
        "conv1_w": (rs.randn(8, 3, 3, 3) * 0.3).astype(np.float32),
        "conv1_b": (rs.randn(8) * 0.05).astype(np.float32),
        "conv2_w": (rs.randn(16, 8, 3, 3) * 0.2).astype(np.float32),
        "conv2_b": (rs.randn(16) * 0.05).astype(np.float32),
        "fc_w": (rs.randn(16, 10) * 1.0).astype(np.float32),
        "fc_b": (rs.randn(10) * 0.1).astype(np.float32),
    }


def build_image_classifier(w):
    nodes = [
        helper.make_node("Conv", ["image", "conv1_w", "conv1_b"], ["c1"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "conv2_w", "conv2_b"], ["c2"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "image_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=[init(k, v) for k, v in w.items()],
    )
    return make_model(graph, "Tiny CNN: 3x32x32 image -> 10-class probabilities.")


def image_scorer_weights(seed=4):
    rs = np.random.RandomState(seed)
    return {
        "w": (rs.randn(12 * 16 * 3, 5) * 0.05).astype(np.float32),
        "b": (rs.randn(5) * 0.1).astype(np.float32),
    }


def build_image_scorer(w):
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "image_scorer",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 12, 16, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 5])],
        initializer=[init(k, v) for k, v in w.items()],
    )
    return make_model(graph, "Linear scores of a 12x16 BGR image (NHWC), one per label.")


def text_classifier_weights(seed):
    rs = np.random.RandomState(seed)
    return {
        "embedding": rs.randn(1000, 32).astype(np.float32),
        "fc_w": (rs.randn(32, 4) * 0.5).astype(np.float32),
        "fc_b": (rs.randn(4) * 0.1).astype(np.float32),
    }


def build_text_classifier(w, version):
    nodes = [
        helper.make_node("Gather", ["embedding", "token_ids"], ["embedded"], axis=0),
        # opset 17: ReduceMean takes axes as an attribute (input from opset 18).
        helper.make_node("ReduceMean", ["embedded"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("Gemm", ["pooled", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "text_classifier",
        [helper.make_tensor_value_info("token_ids", TensorProto.INT64, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[init(k, v) for k, v in w.items()],
    )
    return make_model(
        graph, f"Bag-of-embeddings text classifier (version {version}): "
               "16 token ids in [0,1000) -> 4 logits.")


def build_tensor_stats():
    nodes = [
        # ReduceSum takes axes as an input tensor since opset 13.
        helper.make_node("ReduceSum", ["values", "reduce_axes"], ["sum"], keepdims=0),
        # ReduceMax still takes axes as an attribute at opset 17.
        helper.make_node("ReduceMax", ["values"], ["max"], axes=[1], keepdims=0),
        helper.make_node("ArgMax", ["values"], ["argmax"], axis=1, keepdims=0),
        helper.make_node("Cast", ["values"], ["values_f64"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["values_f64", "two"], ["doubled"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tensor_stats",
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("max", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("argmax", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("doubled", TensorProto.DOUBLE, ["batch", 8]),
        ],
        initializer=[
            init("reduce_axes", np.array([1], dtype=np.int64)),
            init("two", np.array(2.0, dtype=np.float64)),
        ],
    )
    return make_model(graph, "Row statistics with outputs of several datatypes.")


# (suffix, ONNX element type, numpy dtype)
DATATYPES = [
    ("bool", TensorProto.BOOL, np.bool_),
    ("uint8", TensorProto.UINT8, np.uint8),
    ("uint16", TensorProto.UINT16, np.uint16),
    ("uint32", TensorProto.UINT32, np.uint32),
    ("uint64", TensorProto.UINT64, np.uint64),
    ("int8", TensorProto.INT8, np.int8),
    ("int16", TensorProto.INT16, np.int16),
    ("int32", TensorProto.INT32, np.int32),
    ("int64", TensorProto.INT64, np.int64),
    ("fp16", TensorProto.FLOAT16, np.float16),
    ("fp32", TensorProto.FLOAT, np.float32),
    ("fp64", TensorProto.DOUBLE, np.float64),
    ("string", TensorProto.STRING, object),
]


def build_datatypes():
    nodes, inputs, outputs = [], [], []
    for suffix, elem, _ in DATATYPES:
        nodes.append(helper.make_node("Identity", [f"in_{suffix}"], [f"out_{suffix}"],
                                      name=f"identity_{suffix}"))
        inputs.append(helper.make_tensor_value_info(f"in_{suffix}", elem, ["batch", 4]))
        outputs.append(helper.make_tensor_value_info(f"out_{suffix}", elem, ["batch", 4]))
    graph = helper.make_graph(nodes, "datatypes", inputs, outputs)
    return make_model(graph, "Identity for every supported tensor datatype.")


# --------------------------------------------------------------------------
# Fixed example inputs (batch size 2)
# --------------------------------------------------------------------------

def image_inputs():
    rs = np.random.RandomState(101)
    return {"image": rs.rand(BATCH, 3, 32, 32).astype(np.float32)}


def scorer_inputs():
    rs = np.random.RandomState(105)
    return {"image": (rs.rand(BATCH, 12, 16, 3) * 4 - 2).astype(np.float32)}


def text_inputs():
    rs = np.random.RandomState(102)
    ids = rs.randint(0, 1000, size=(BATCH, 16)).astype(np.int64)
    ids[0, 0], ids[1, -1] = 0, 999  # exercise both ends of the vocabulary
    return {"token_ids": ids}


def stats_inputs():
    rs = np.random.RandomState(103)
    return {"values": (rs.randn(BATCH, 8) * 3.0).astype(np.float32)}


def datatypes_inputs():
    rs = np.random.RandomState(104)
    shape = (BATCH, 4)

    def ints(dtype, extremes):
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -1000), min(info.max, 1000)
        a = rs.randint(lo, hi + 1, size=shape).astype(dtype)
        flat = a.reshape(-1)
        for i, v in enumerate(extremes):
            flat[i] = v
        return a

    u64 = np.uint64
    return {
        "in_bool": np.array([[True, False, False, True], [False, True, True, False]]),
        "in_uint8": ints(np.uint8, [0, 255]),
        "in_uint16": ints(np.uint16, [0, 65535]),
        "in_uint32": ints(np.uint32, [0, 4294967295]),
        # 2**53 + 1 is not representable as a double; 2**64 - 1 is the max.
        "in_uint64": ints(np.uint64, [u64(0), u64(2**53 + 1), u64(2**64 - 1)]),
        "in_int8": ints(np.int8, [-128, 127]),
        "in_int16": ints(np.int16, [-32768, 32767]),
        "in_int32": ints(np.int32, [-2147483648, 2147483647]),
        "in_int64": ints(np.int64, [-(2**63), 2**63 - 1, -(2**53 + 1)]),
        # multiples of 1/8 in [-8, 8): exactly representable in FP16
        "in_fp16": (rs.randint(-64, 64, size=shape) / 8.0).astype(np.float16),
        "in_fp32": rs.randn(*shape).astype(np.float32),
        "in_fp64": rs.randn(*shape).astype(np.float64),
        "in_string": np.array(
            [["héllo", "", "world", "日本語"], ["tab\there", "quote\"s", "🚀 rocket", "ASCII"]],
            dtype=object),
    }


# --------------------------------------------------------------------------
# Independent numpy reference implementations (float64)
# --------------------------------------------------------------------------

def np_conv2d(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def ref_image_classifier(w, inputs):
    f = {k: v.astype(np.float64) for k, v in w.items()}
    x = inputs["image"].astype(np.float64)
    x = np.maximum(np_conv2d(x, f["conv1_w"], f["conv1_b"], 1, 1), 0)
    x = np.maximum(np_conv2d(x, f["conv2_w"], f["conv2_b"], 2, 1), 0)
    x = x.mean(axis=(2, 3))
    z = x @ f["fc_w"] + f["fc_b"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return {"probabilities": e / e.sum(axis=1, keepdims=True)}


def ref_image_scorer(w, inputs):
    x = inputs["image"].astype(np.float64).reshape(BATCH, -1)
    return {"scores": x @ w["w"].astype(np.float64) + w["b"].astype(np.float64)}


def ref_text_classifier(w, inputs):
    emb = w["embedding"].astype(np.float64)[inputs["token_ids"]]
    pooled = emb.mean(axis=1)
    return {"logits": pooled @ w["fc_w"].astype(np.float64) + w["fc_b"]}


def ref_tensor_stats(_, inputs):
    v = inputs["values"]
    return {
        "sum": v.astype(np.float64).sum(axis=1),
        "max": v.max(axis=1),
        "argmax": v.argmax(axis=1).astype(np.int64),
        "doubled": v.astype(np.float64) * 2.0,
    }


def ref_datatypes(_, inputs):
    return {"out_" + k[len("in_"):]: v for k, v in inputs.items()}


# --------------------------------------------------------------------------
# JSON encoding
# --------------------------------------------------------------------------

def to_json_tensor(name, array):
    array = np.asarray(array)
    datatype = NP_TO_OIP[array.dtype]
    flat = array.reshape(-1)
    if datatype == "BYTES":
        data = [str(s) for s in flat]
    elif datatype == "BOOL":
        data = [bool(x) for x in flat]
    elif datatype.startswith("FP"):
        data = [float(x) for x in flat]  # exact widening to double
    else:
        data = [int(x) for x in flat]
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def from_json_tensor(t):
    dtype = OIP_TO_NP[t["datatype"]]
    if t["datatype"] == "BYTES":
        arr = np.array(t["data"], dtype=object)
    else:
        arr = np.array(t["data"], dtype=dtype)
    return arr.reshape(t["shape"])


def write_expected(filename, model, version, inputs, outputs, directory=EXPECTED_DIR):
    doc = {
        "model": model,
        "version": str(version),
        "inputs": [to_json_tensor(k, v) for k, v in inputs.items()],
        "outputs": [to_json_tensor(k, v) for k, v in outputs.items()],
    }
    # One tensor per line; ensure_ascii=False keeps strings as literal UTF-8.
    dump = lambda o: json.dumps(o, ensure_ascii=False, allow_nan=False)  # noqa: E731
    lines = [
        "{" + f'"model": {dump(doc["model"])}, "version": {dump(doc["version"])},',
        ' "inputs": [\n  ' + ",\n  ".join(dump(t) for t in doc["inputs"]) + "],",
        ' "outputs": [\n  ' + ",\n  ".join(dump(t) for t in doc["outputs"]) + "]}",
    ]
    path = os.path.join(directory, filename)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    assert json.loads(open(path, encoding="utf-8").read()) == doc
    return path


# --------------------------------------------------------------------------
# Running with onnxruntime
# --------------------------------------------------------------------------

def make_int8_variant(src, name, version):
    """The int8 variant of a model: onnxruntime's dynamic quantization (weights stored
    as int8, activations quantized at run time), with the same inputs and outputs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir = os.path.join(VARIANTS_DIR, name, str(version), "int8")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "model.onnx")
    quantize_dynamic(src, out, weight_type=QuantType.QInt8)
    return out


def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def run(path, inputs):
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def describe(sess):
    def fmt(a):
        return f"{a.name}: {a.type} {list(a.shape)}"
    ins = "; ".join(fmt(a) for a in sess.get_inputs())
    outs = "; ".join(fmt(a) for a in sess.get_outputs())
    return f"  inputs : {ins}\n  outputs: {outs}"


def arrays_match(got, want, exact):
    """Compare two arrays; returns (ok, message)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False, f"shape {got.shape} != {want.shape}"
    if got.dtype == object or want.dtype == object:
        ok = [str(a) for a in got.reshape(-1)] == [str(b) for b in want.reshape(-1)]
        return ok, "" if ok else "string data differs"
    if got.dtype.kind in "biu" or want.dtype.kind in "biu" or exact:
        ok = got.dtype == want.dtype and np.array_equal(got, want)
        return ok, "" if ok else f"data differs ({got.dtype} vs {want.dtype})"
    g, w = got.astype(np.float64), want.astype(np.float64)
    ok = np.allclose(g, w, rtol=1e-5, atol=1e-6)
    return ok, "" if ok else f"max abs diff {np.max(np.abs(g - w)):.3g}"


def main():
    # ---- build models -------------------------------------------------------
    img_w = image_classifier_weights(seed=1)
    txt_w = {1: text_classifier_weights(seed=2), 2: text_classifier_weights(seed=3)}
    scorer_w = image_scorer_weights(seed=4)

    # (model name, version, onnx model, inputs, expected filename, reference fn, weights)
    entries = [
        ("image_classifier", 1, build_image_classifier(img_w), image_inputs(),
         "image_classifier.json", ref_image_classifier, img_w),
        ("image_scorer", 1, build_image_scorer(scorer_w), scorer_inputs(),
         "image_scorer.json", ref_image_scorer, scorer_w),
        ("text_classifier", 1, build_text_classifier(txt_w[1], 1), text_inputs(),
         "text_classifier.v1.json", ref_text_classifier, txt_w[1]),
        ("text_classifier", 2, build_text_classifier(txt_w[2], 2), text_inputs(),
         "text_classifier.v2.json", ref_text_classifier, txt_w[2]),
        ("tensor_stats", 1, build_tensor_stats(), stats_inputs(),
         "tensor_stats.json", ref_tensor_stats, None),
        ("datatypes", 1, build_datatypes(), datatypes_inputs(),
         "datatypes.json", ref_datatypes, None),
    ]

    config_path = os.path.join(MODELS_DIR, "image_classifier", "config.yaml")
    os.makedirs(os.path.dirname(config_path), exist_ok=True)
    with open(config_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(IMAGE_CONFIG)
    scorer_dir = os.path.join(MODELS_DIR, "image_scorer")
    os.makedirs(os.path.join(scorer_dir, "1"), exist_ok=True)
    with open(os.path.join(scorer_dir, "config.yaml"), "w", encoding="utf-8", newline="\n") as f:
        f.write(SCORER_CONFIG)
    # Beside model.onnx, so `localml models push` sends it with the version.
    with open(os.path.join(scorer_dir, "1", "labels.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(SCORER_LABELS) + "\n")
    text_config = os.path.join(MODELS_DIR, "text_classifier", "config.yaml")
    os.makedirs(os.path.dirname(text_config), exist_ok=True)
    with open(text_config, "w", encoding="utf-8", newline="\n") as f:
        f.write("# Serve both versions on disk (the default serves only the latest).\n"
                "version_policy: all\n")

    # ---- write models and expected outputs ----------------------------------
    written = []
    for name, version, model, inputs, expected, _, _ in entries:
        path = save_model(model, name, version)
        outputs = run(path, inputs)
        written.append((name, version, path,
                        write_expected(expected, name, version, inputs, outputs)))

    # ---- the int8 variant of text_classifier v2 ------------------------------
    failures = []
    fp32_path = next(p for (n, v, p, _) in written if n == "text_classifier" and v == 2)
    int8_path = make_int8_variant(fp32_path, "text_classifier", 2)
    int8_out = run(int8_path, text_inputs())
    write_expected("text_classifier.v2.int8.json", "text_classifier", 2,
                   text_inputs(), int8_out, directory=VARIANTS_DIR)
    fp32_out = run(fp32_path, text_inputs())
    same_io = [(i.name, i.type) for i in session(int8_path).get_inputs()] == \
        [(i.name, i.type) for i in session(fp32_path).get_inputs()]
    diff = float(np.max(np.abs(int8_out["logits"] - fp32_out["logits"])))
    print(f"text_classifier v2 int8: {os.path.getsize(int8_path)} bytes "
          f"(fp32 {os.path.getsize(fp32_path)}), max |int8 - fp32| logit {diff:.4f}")
    if not same_io or diff > 0.1:
        failures.append(f"int8 variant: same inputs {same_io}, max logit difference {diff}")

    # ---- self-check ---------------------------------------------------------
    print("Self-check (onnxruntime %s, CPUExecutionProvider)" % ort.__version__)
    for (name, version, path, json_path), entry in zip(written, entries):
        ref_fn, weights = entry[5], entry[6]
        sess = session(path)
        print(f"{name} v{version} ({os.path.relpath(path, EXAMPLES)})")
        print(describe(sess))
        with open(json_path, encoding="utf-8") as f:
            doc = json.load(f)
        if doc["model"] != name or doc["version"] != str(version):
            failures.append(f"{json_path}: wrong model/version header")
        feeds = {t["name"]: from_json_tensor(t) for t in doc["inputs"]}
        if sorted(feeds) != sorted(i.name for i in sess.get_inputs()):
            failures.append(f"{json_path}: input names do not match the model")
            continue
        out_names = [o.name for o in sess.get_outputs()]
        got = dict(zip(out_names, sess.run(out_names, feeds)))
        if [t["name"] for t in doc["outputs"]] != out_names:
            failures.append(f"{json_path}: output names do not match the model")
            continue
        ref = ref_fn(weights, feeds)
        for t in doc["outputs"]:
            want = from_json_tensor(t)
            # 1) onnxruntime rerun vs JSON (bit-exact: same runtime, same inputs)
            ok, msg = arrays_match(got[t["name"]], want, exact=True)
            if not ok:
                failures.append(f"{name} v{version} {t['name']}: ORT vs JSON: {msg}")
            # 2) JSON vs independent numpy reference (tolerance for floats)
            ok, msg = arrays_match(want.astype(ref[t["name"]].dtype)
                                   if want.dtype.kind == "f" else want,
                                   ref[t["name"]], exact=False)
            if not ok:
                failures.append(f"{name} v{version} {t['name']}: JSON vs numpy reference: {msg}")

    total = 0
    for root in (MODELS_DIR, EXPECTED_DIR):
        for dirpath, _, files in os.walk(root):
            total += sum(os.path.getsize(os.path.join(dirpath, fn)) for fn in files)
    print(f"total size of models/ + expected/: {total} bytes ({total / 1024:.1f} KiB)")
    if total >= SIZE_LIMIT:
        failures.append(f"total size {total} bytes exceeds {SIZE_LIMIT}")

    if failures:
        print("SELF-CHECK FAILED:")
        for f in failures:
            print("  " + f)
        sys.exit(1)
    print("self-check OK")


if __name__ == "__main__":
    main()
