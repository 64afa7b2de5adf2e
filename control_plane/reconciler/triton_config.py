"""Triton's ``config.pbtxt`` for one deployed engine: pure text generation, no I/O.

Written in protobuf text format against Triton's ``ModelConfig`` schema
(model_config.proto). With a registered signature it names every input and
output, the batch limit, and a ``model_warmup`` sample of the right shape and
datatype, so ``--strict-readiness`` reports the model ready only after one
inference has run on the GPU. Without one, Triton's auto-complete reads the
tensors from the plan itself and nothing is warmed up (nothing to shape a
sample from).
"""

from __future__ import annotations

from control_plane.reconciler.desired import Batching, IoSignature, Tensor
from control_plane.reconciler.warmup import sample_shape, triton_dims

PLATFORM = "tensorrt_plan"
WARMUP_NAME = "grayroute-warmup"

# KServe v2 datatype -> Triton's DataType enum. BYTES is Triton's TYPE_STRING.
TRITON_TYPE = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
    "BF16": "TYPE_BF16", "BYTES": "TYPE_STRING",
}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ints(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _tensor(t: Tensor, *, batched: bool) -> list[str]:
    dims = triton_dims(t.shape, batched=batched)
    lines = ["  {", f"    name: {_quote(t.name)}", f"    data_type: {TRITON_TYPE[t.datatype]}"]
    if dims:
        lines.append(f"    dims: {_ints(dims)}")
    else:
        # One value per batch item: Triton needs a dimension, reshaped away.
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    lines.append("  }")
    return lines


def _block(keyword: str, items: list[list[str]]) -> list[str]:
    out = [f"{keyword} ["]
    for i, item in enumerate(items):
        out += item[:-1] + [item[-1] + ("," if i < len(items) - 1 else "")]
    return out + ["]"]


def render(model: str, signature: IoSignature | None, batching: Batching | None = None,
           *, instances: int = 1) -> str:
    """The text of ``config.pbtxt`` for ``model``."""
    lines = [f"name: {_quote(model)}", f"platform: {_quote(PLATFORM)}"]
    batched = signature is not None and signature.max_batch_size > 0
    if signature is not None:
        lines.append(f"max_batch_size: {signature.max_batch_size}")
        lines += _block("input", [_tensor(t, batched=batched) for t in signature.inputs])
        lines += _block("output", [_tensor(t, batched=batched) for t in signature.outputs])
    lines += ["instance_group [", "  {", f"    count: {instances}", "    kind: KIND_GPU", "  }", "]"]
    if batching is not None and batched:
        lines.append("dynamic_batching {")
        if batching.preferred_batch_size:
            lines.append(f"  preferred_batch_size: {_ints(list(batching.preferred_batch_size))}")
        lines += [f"  max_queue_delay_microseconds: {batching.max_queue_delay_microseconds}", "}"]
    if signature is not None:
        lines += ["model_warmup [", "  {", f"    name: {_quote(WARMUP_NAME)}", "    batch_size: 1"]
        for t in signature.inputs:
            dims = triton_dims(sample_shape(t.shape), batched=batched) or [1]
            lines += ["    inputs {", f"      key: {_quote(t.name)}", "      value {",
                      f"        data_type: {TRITON_TYPE[t.datatype]}", f"        dims: {_ints(dims)}",
                      "        zero_data: true", "      }", "    }"]
        lines += ["  }", "]"]
    return "\n".join(lines) + "\n"
