"""The small ONNX classifier that local engine servers run instead of a TensorRT engine.

Input ``input`` FP32 [N, 16] -> two dense layers -> softmax ``probabilities`` FP32 [N, 4].
Every variant shares one set of deterministic weights; the fp16 variant casts to
half precision and computes there, so versions of different precision disagree
in the last digits exactly the way TensorRT engines of different precision do.
The model is generated in code (nothing is downloaded) and cached on disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
FEATURES = 16
CLASSES = 4
_HIDDEN = 32
_SEED = 20240607
# Bumped whenever the graph changes, so a stale cache file is never reused.
_GRAPH_REVISION = 1

# Precisions with a CPU variant; the others run on the closest one (int8, fp8
# and bf16 engines are lower precision than fp32, so they run the fp16 graph).
_VARIANT_OF = {"fp32": "fp32", "fp16": "fp16", "bf16": "fp16", "int8": "fp16", "fp8": "fp16"}


def variant_for(precision: str) -> str:
    """The graph variant (``fp32`` or ``fp16``) that stands in for an engine precision."""
    return _VARIANT_OF.get(precision.lower(), "fp32")


def _weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_SEED)
    w1 = (rng.standard_normal((FEATURES, _HIDDEN)) * 0.35).astype(np.float32)
    b1 = (rng.standard_normal(_HIDDEN) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((_HIDDEN, CLASSES)) * 0.35).astype(np.float32)
    b2 = (rng.standard_normal(CLASSES) * 0.1).astype(np.float32)
    return w1, b1, w2, b2


def build(variant: str) -> bytes:
    """Serialize the classifier graph for ``variant`` (``fp32`` or ``fp16``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if variant not in ("fp32", "fp16"):
        raise ValueError(f"unknown variant {variant!r}")
    half = variant == "fp16"
    dtype = np.float16 if half else np.float32
    w1, b1, w2, b2 = (w.astype(dtype) for w in _weights())
    x = "x16" if half else INPUT_NAME
    nodes = []
    if half:
        nodes.append(helper.make_node("Cast", [INPUT_NAME], ["x16"], to=TensorProto.FLOAT16))
    nodes += [
        helper.make_node("MatMul", [x, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["l1"]),
        helper.make_node("Softmax", ["l1"], ["p" if half else OUTPUT_NAME], axis=-1),
    ]
    if half:
        nodes.append(helper.make_node("Cast", ["p"], [OUTPUT_NAME], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        f"grayroute-classifier-{variant}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", CLASSES])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="grayroute")
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def ensure(directory: Path, variant: str) -> Path:
    """Path of the cached model file for ``variant``, generating it on first use.

    Written to a temporary file and renamed, so concurrent engine servers never
    read a half-written model.
    """
    path = directory / f"classifier-{variant}-r{_GRAPH_REVISION}.onnx"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    data = build(variant)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".classifier-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
