"""The warm-up sample of a model: one request of the right shape and datatype, made from its inputs.

Triton's ``model_warmup`` (Kubernetes target) and the local engine servers
(local target) use the same sample, so "ready" means the same on both: the
engine has run one inference. Dynamic dimensions (-1) become 1, the smallest
size every optimization profile accepts.
"""

from __future__ import annotations

from collections.abc import Sequence


def sample_shape(shape: Sequence[int]) -> list[int]:
    """The full shape of the warm-up tensor (batch dimension included, as the v2 protocol sends it)."""
    return [1 if d < 0 else int(d) for d in shape]


def triton_dims(shape: Sequence[int], *, batched: bool) -> list[int]:
    """Triton's ``dims``: the shape without the batch dimension when the model batches."""
    return [int(d) for d in (shape[1:] if batched else shape)]
