"""Which engine runs on which pool: the TensorRT compatibility rule.

One home for it, so the API never accepts what the reconciler would refuse:
``registry.service.runnable_pools`` (traffic validation, external endpoints)
and ``reconciler.desired`` (placement) both ask here.
"""

from __future__ import annotations


def _trt_key(version: str) -> tuple[int | str, ...]:
    """major.minor.patch; a TensorRT engine runs only on the release it was built with.

    Build numbers (a fourth component, as in Triton's "10.3.0.26") do not
    change the engine format, so they are ignored; "10.3" equals "10.3.0".
    """
    parts: list[int | str] = [int(p) if p.isdigit() else p for p in version.strip().split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def trt_compatible(engine_trt: str, pool_trt: str) -> bool:
    return _trt_key(engine_trt) == _trt_key(pool_trt)
