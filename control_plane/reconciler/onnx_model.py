"""The small ONNX classifier that local engine servers run instead of a TensorRT engine.

Input ``input`` FP32 [N, 16] -> two dense layers -> softmax ``probabilities`` FP32 [N, 4].
Every variant shares one set of deterministic weights; the fp16 variant casts to
half precision and computes there, so versions of different precision disagree
in the last digits exactly the way TensorRT engines of different precision do.
The int8 variant is the fp32 graph quantized statically by onnxruntime's tools
with a deliberately bad calibration set (inputs a quarter of the range traffic
has), so activations clip and it disagrees visibly, as a TensorRT INT8 engine
calibrated on unrepresentative data does. The model is generated in code
(nothing is downloaded) and cached on disk.
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

# Precisions with a CPU variant; the others run on the closest one (fp8 and bf16
# engines are lower precision than fp32, so they run the fp16 graph).
_VARIANT_OF = {"fp32": "fp32", "fp16": "fp16", "bf16": "fp16", "int8": "int8", "fp8": "fp16"}
VARIANTS = ("fp32", "fp16", "int8")
# The int8 calibration set: inputs uniform in +-0.25 where traffic spans +-1 (the
# demo's generator) or more, so the quantized ranges are four times too narrow.
_CALIBRATION_SCALE = 0.25
_CALIBRATION_BATCHES = 8


def variant_for(precision: str) -> str:
    """The graph variant (``fp32``, ``fp16`` or ``int8``) that stands in for an engine precision."""
    return _VARIANT_OF.get(precision.lower(), "fp32")


def _weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_SEED)
    w1 = (rng.standard_normal((FEATURES, _HIDDEN)) * 0.35).astype(np.float32)
    b1 = (rng.standard_normal(_HIDDEN) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((_HIDDEN, CLASSES)) * 0.35).astype(np.float32)
    b2 = (rng.standard_normal(CLASSES) * 0.1).astype(np.float32)
    return w1, b1, w2, b2


def build(variant: str) -> bytes:
    """Serialize the classifier graph for ``variant`` (``fp32``, ``fp16`` or ``int8``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}")
    if variant == "int8":
        return _quantized(build("fp32"))
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


def calibration_batches() -> list[np.ndarray]:
    """The (deliberately unrepresentative) inputs the int8 variant is calibrated on."""
    rng = np.random.default_rng(_SEED + 1)
    return [(rng.uniform(-1, 1, size=(8, FEATURES)) * _CALIBRATION_SCALE).astype(np.float32)
            for _ in range(_CALIBRATION_BATCHES)]


def _quantized(fp32_model: bytes) -> bytes:
    """The fp32 graph quantized statically (QDQ, int8 activations and weights on the MatMuls).

    MinMax calibration on a fixed data set makes the result deterministic byte for byte.
    """
    import logging

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Narrow(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
        def __init__(self) -> None:
            self._batches = iter(calibration_batches())

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    # The quantizer logs a "consider pre-processing" advice on the root logger; the graph needs none.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="grayroute-int8-") as work:
            source, target = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
            source.write_bytes(fp32_model)
            quantize_static(str(source), str(target), _Narrow(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul"], activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
            return target.read_bytes()
    finally:
        root.setLevel(level)


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
