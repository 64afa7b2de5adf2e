"""Output parity: how a shadow version's answers differ from the primary's, in windows.

``compare`` reads two KServe v2 infer responses (JSON, or the binary-tensor
extension announced by ``Inference-Header-Content-Length``) and, per output
name, checks shape and datatype, then measures max and mean absolute error and
top-1 agreement along the last axis (for outputs with more than one element
per row). ``ParityRecorder`` adds the results into cells per (model, shadow
version, primary version, gpu_arch of each side) and hands closed windows to
``ParityReporter``, which sends them to Redis or the control plane on their
own channel, apart from the stats. Each window also keeps a histogram of the
per-request max abs error, so a rare large error is not averaged away.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis

from router.reporter import WindowReporter

if TYPE_CHECKING:  # numpy is imported on the first comparison: a router without a shadow never loads it
    import numpy as np

log = logging.getLogger("grayroute.router.parity")

REPORT_PATH = "/api/v1/parity/report"
REDIS_KEY_PREFIX = "grayroute:parity:"  # + model: a sorted set of windows scored by window_end
REDIS_TTL_SECONDS = 3600
# Upper bounds of the per-request max-abs-error histogram; the last bucket is everything above 1.
ERROR_BOUNDS = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)

_NUMPY_OF = {  # v2 datatype -> numpy dtype; BYTES is compared by shape only
    "BOOL": "bool", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}


class ParityError(Exception):
    """A response that cannot be read as v2 output tensors."""


@dataclass(frozen=True, slots=True)
class Tensor:
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray[Any, Any] | None  # None: a datatype that is not compared by value (BYTES)


def _header(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"inference-header-content-length":
            try:
                return int(value)
            except ValueError as exc:
                raise ParityError(f"bad Inference-Header-Content-Length {value!r}") from exc
    return None


def decode(body: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, Tensor]:
    """The output tensors of a v2 infer response, by name; raises ``ParityError``."""
    import numpy as np

    length = _header(headers)
    try:
        doc = orjson.loads(body if length is None else body[:length])
    except orjson.JSONDecodeError as exc:
        raise ParityError(f"response is not v2 JSON: {exc}") from exc
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list):
        raise ParityError("response has no 'outputs' list")
    offset = length or 0
    found: dict[str, Tensor] = {}
    for out in outputs:
        try:
            name, datatype, shape = str(out["name"]), str(out["datatype"]).upper(), tuple(int(d) for d in out["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ParityError(f"malformed output: {exc}") from exc
        dtype = _NUMPY_OF.get(datatype)
        size = (out.get("parameters") or {}).get("binary_data_size")
        values: np.ndarray[Any, Any] | None = None
        if size is not None:
            raw = body[offset:offset + int(size)]
            offset += int(size)
            if dtype is not None:
                if len(raw) != int(size) or len(raw) % np.dtype(dtype).itemsize:
                    raise ParityError(f"output {name!r}: binary data is truncated")
                values = np.frombuffer(raw, dtype=dtype)
        elif dtype is not None:
            values = np.asarray(out.get("data"), dtype=dtype).reshape(-1)
        if values is not None and values.size != math.prod(shape):
            raise ParityError(f"output {name!r}: {values.size} values for shape {list(shape)}")
        found[name] = Tensor(datatype, shape, values)
    return found


@dataclass(slots=True)
class OutputCell:
    """One output name's comparison figures within a window."""

    compared: int = 0
    shape_mismatch: int = 0
    dtype_mismatch: int = 0
    missing: int = 0
    max_abs_error: float = 0.0
    sum_abs_error: float = 0.0
    elements: int = 0
    top1_agree: int = 0
    top1_rows: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * (len(ERROR_BOUNDS) + 1))

    def add(self, primary: Tensor, shadow: Tensor | None) -> None:
        import numpy as np

        if shadow is None:
            self.missing += 1
            return
        if primary.shape != shadow.shape:
            self.shape_mismatch += 1
            return
        if primary.datatype != shadow.datatype:
            self.dtype_mismatch += 1
            return
        self.compared += 1
        if primary.values is None or shadow.values is None or primary.values.size == 0:
            return
        a = primary.values.astype(np.float64)
        b = shadow.values.astype(np.float64)
        diff = np.abs(a - b)
        worst = float(diff.max())
        self.max_abs_error = max(self.max_abs_error, worst)
        self.sum_abs_error += float(diff.sum())
        self.elements += int(diff.size)
        self.histogram[bisect_left(ERROR_BOUNDS, worst)] += 1
        last = primary.shape[-1] if primary.shape else 1
        if last > 1:
            rows_a = a.reshape(-1, last)
            rows_b = b.reshape(-1, last)
            self.top1_agree += int((rows_a.argmax(axis=1) == rows_b.argmax(axis=1)).sum())
            self.top1_rows += int(rows_a.shape[0])

    def as_report(self) -> dict[str, Any]:
        return {"compared": self.compared, "shape_mismatch": self.shape_mismatch,
                "dtype_mismatch": self.dtype_mismatch, "missing": self.missing,
                "max_abs_error": self.max_abs_error, "sum_abs_error": self.sum_abs_error,
                "elements": self.elements, "top1_agree": self.top1_agree, "top1_rows": self.top1_rows,
                "max_abs_histogram": list(self.histogram)}


@dataclass(slots=True)
class PairCell:
    """Mirroring counts and per-output figures of one (model, shadow, primary, archs) within a window."""

    mirrored: int = 0
    dropped: int = 0
    errors: int = 0
    timeouts: int = 0
    compared: int = 0
    unreadable: int = 0
    outputs: dict[str, OutputCell] = field(default_factory=dict)

    def as_report(self) -> dict[str, Any]:
        return {"mirrored": self.mirrored, "dropped": self.dropped, "errors": self.errors,
                "timeouts": self.timeouts, "compared": self.compared, "unreadable": self.unreadable,
                "outputs": {name: cell.as_report() for name, cell in self.outputs.items()}}


# (model, shadow version, primary version, primary gpu_arch, shadow gpu_arch)
PairKey = tuple[str, str, str, str, str]

_COUNTERS = ("mirrored", "dropped", "errors", "timeouts", "compared", "unreadable")


class ParityRecorder:
    """The current window, plus totals since start for Prometheus."""

    def __init__(self) -> None:
        self.window: dict[PairKey, PairCell] = {}
        self.window_start = time.time()
        self.totals: dict[tuple[PairKey, str], int] = {}

    def cell(self, key: PairKey) -> PairCell:
        cell = self.window.get(key)
        if cell is None:
            cell = self.window[key] = PairCell()
        return cell

    def count(self, key: PairKey, what: str) -> None:
        cell = self.cell(key)
        setattr(cell, what, getattr(cell, what) + 1)
        self.totals[key, what] = self.totals.get((key, what), 0) + 1

    def compare(self, key: PairKey, primary: tuple[bytes, list[tuple[bytes, bytes]]],
                shadow: tuple[bytes, list[tuple[bytes, bytes]]]) -> None:
        """Decode both answers and add their per-output figures to the window."""
        try:
            ours = decode(*primary)
            theirs = decode(*shadow)
        except (ParityError, ValueError, TypeError) as exc:
            log.debug("shadow answer not comparable: %s", exc)
            self.count(key, "unreadable")
            return
        cell = self.cell(key)
        for name, tensor in ours.items():
            out = cell.outputs.get(name)
            if out is None:
                out = cell.outputs[name] = OutputCell()
            before = out.shape_mismatch + out.dtype_mismatch + out.missing
            out.add(tensor, theirs.get(name))
            if out.shape_mismatch + out.dtype_mismatch + out.missing != before:
                self.totals[key, "mismatched"] = self.totals.get((key, "mismatched"), 0) + 1
        self.count(key, "compared")

    def take_window(self) -> tuple[float, float, dict[PairKey, PairCell]]:
        start, end = self.window_start, time.time()
        window, self.window, self.window_start = self.window, {}, end
        return start, end, window

    def total_rows(self) -> list[list[Any]]:
        """Counters since start as JSON-able rows ``[*pair key, outcome, count]`` (shared between workers)."""
        return [[*key, what, value] for (key, what), value in self.totals.items()]

    def prometheus(self) -> bytes:
        """Counters since start, as Prometheus text (appended to the router's /metrics)."""
        return shadow_prometheus([self.total_rows()])


SHADOW_DUMP_KEY = "shadow"  # where a worker's shadow counters sit in the metrics it shares


def shadow_prometheus(row_sets: list[list[list[Any]]]) -> bytes:
    """``grayroute_shadow_total`` from the counters of one or several workers, summed."""
    totals: dict[tuple[str, ...], int] = {}
    for rows in row_sets:
        for row in rows:
            if isinstance(row, list) and len(row) == 7 and isinstance(row[6], int):
                key = tuple(str(v) for v in row[:6])
                totals[key] = totals.get(key, 0) + row[6]
    if not totals:
        return b""
    lines = ["# HELP grayroute_shadow_total Mirrored requests by outcome "
             "(mirrored, dropped, errors, timeouts, compared, unreadable, mismatched)",
             "# TYPE grayroute_shadow_total counter"]
    for labels, value in sorted(totals.items()):
        model, shadow, primary, primary_arch, shadow_arch, what = (_label(v) for v in labels)
        lines.append(f'grayroute_shadow_total{{model="{model}",shadow_version="{shadow}",'
                     f'primary_version="{primary}",primary_gpu_arch="{primary_arch}",'
                     f'shadow_gpu_arch="{shadow_arch}",outcome="{what}"}} {value}')
    return ("\n".join(lines) + "\n").encode()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def build_report(router_id: str, start: float, end: float, window: dict[PairKey, PairCell]) -> dict[str, Any] | None:
    if not window:
        return None
    return {
        "router": router_id, "window_start": start, "window_end": end, "error_bounds": list(ERROR_BOUNDS),
        "windows": [{"model": k[0], "shadow_version": k[1], "primary_version": k[2], "primary_gpu_arch": k[3],
                     "shadow_gpu_arch": k[4], **cell.as_report()} for k, cell in window.items()],
    }


class ParityReporter(WindowReporter[dict[str, Any]]):
    """Sends each closed parity window to Redis, or to the control plane when Redis is unavailable; spooled
    like the stats (``WindowReporter``) while neither takes it."""

    what = "parity"

    def __init__(self, *, recorder: ParityRecorder, router_id: str, interval: float,
                 redis: aioredis.Redis | None, control_plane: str | None, token: str | None) -> None:
        super().__init__(router_id=router_id, interval=interval, redis=redis, control_plane=control_plane,
                         token=token, path=REPORT_PATH)
        self.recorder = recorder

    def build(self) -> dict[str, Any] | None:
        return build_report(self.router_id, *self.recorder.take_window())

    def report(self, item: dict[str, Any]) -> dict[str, Any]:
        return item

    async def to_redis(self, item: dict[str, Any]) -> None:
        assert self.redis is not None
        end = item["window_end"]
        by_model: dict[str, list[dict[str, Any]]] = {}
        for window in item["windows"]:
            by_model.setdefault(window["model"], []).append(window)
        async with self.redis.pipeline(transaction=False) as pipe:
            for model, windows in by_model.items():
                key = REDIS_KEY_PREFIX + model
                member = orjson.dumps({**item, "windows": windows})
                pipe.zadd(key, {member: end})
                pipe.zremrangebyscore(key, "-inf", end - REDIS_TTL_SECONDS)
                pipe.expire(key, REDIS_TTL_SECONDS)
            await pipe.execute()
