"""A local engine server: the embedded stand-in for Triton running one TensorRT engine.

Speaks the KServe v2 / Open Inference Protocol over HTTP with JSON tensors and
runs the small ONNX classifier on the CPU with onnxruntime. It is a bare ASGI
app under uvicorn and imports nothing from the control plane's ORM side, so a
process stays small (the reconciler starts one per deployment replica).

    python -m control_plane.reconciler.engine_server --model M --version V --precision fp16 --port P
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from control_plane.reconciler import onnx_model
from control_plane.reconciler.warmup import sample_shape

log = logging.getLogger("grayroute.engine_server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_NUMPY_OF = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
}


class InferenceError(Exception):
    """A request the model cannot serve; answered with 400 and a v2 error body."""


class Engine:
    """One loaded model version: the onnxruntime session and its v2 metadata."""

    def __init__(self, *, model: str, version: str, precision: str, model_dir: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.model = model
        self.version = version
        self.precision = precision
        self.variant = onnx_model.variant_for(precision)
        path = onnx_model.ensure(model_dir, self.variant)
        options = ort.SessionOptions()
        # Several engine servers share a small machine; one thread each keeps them fair.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()
        self.ready = False
        self.warmups = 0

    def warmup_request(self) -> dict[str, Any]:
        """One v2 request of zeros shaped like the model's declared inputs (-1 becomes 1), the sample
        Triton's ``model_warmup`` sends on the Kubernetes target."""
        inputs = []
        for tensor in self.metadata()["inputs"]:
            shape = sample_shape(tensor["shape"])
            inputs.append({"name": tensor["name"], "datatype": tensor["datatype"], "shape": shape,
                           "data": [0] * int(np.prod(shape))})
        return {"inputs": inputs}

    def warm_up(self) -> None:
        """Run one inference through the request path before reporting ready, as Triton's warm-up does."""
        started = time.perf_counter()
        request = self.warmup_request()
        self.handle_infer(request)
        self.warmups += 1
        shapes = ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in request["inputs"])
        print(f"warm-up inference ({shapes}) took {1000 * (time.perf_counter() - started):.1f} ms; ready",
              file=sys.stderr, flush=True)
        self.ready = True

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            (out,) = self.session.run([onnx_model.OUTPUT_NAME], {onnx_model.INPUT_NAME: batch})
        return np.asarray(out)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.model,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": onnx_model.INPUT_NAME, "datatype": "FP32", "shape": [-1, onnx_model.FEATURES]}],
            "outputs": [{"name": onnx_model.OUTPUT_NAME, "datatype": "FP32", "shape": [-1, onnx_model.CLASSES]}],
            "parameters": {"precision": self.precision, "variant": self.variant},
        }

    def handle_infer(self, body: dict[str, Any]) -> dict[str, Any] | tuple[dict[str, Any], bytes]:
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise InferenceError("request needs a non-empty 'inputs' list")
        tensor = next((t for t in inputs if isinstance(t, dict) and t.get("name") == onnx_model.INPUT_NAME), None)
        if tensor is None:
            tensor = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], dict) else None
        if tensor is None:
            raise InferenceError(f"missing input tensor {onnx_model.INPUT_NAME!r}")
        datatype = str(tensor.get("datatype", "FP32")).upper()
        if datatype not in _NUMPY_OF:
            raise InferenceError(f"unsupported datatype {datatype!r}")
        shape = tensor.get("shape")
        data = tensor.get("data")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InferenceError("'shape' must be a list of non-negative integers")
        if data is None:
            raise InferenceError("'data' is required (binary tensors are not supported)")
        try:
            array: np.ndarray[Any, Any] = np.asarray(data, dtype=_NUMPY_OF[datatype]).reshape(shape)
        except (ValueError, TypeError) as exc:
            raise InferenceError(f"'data' does not match shape {shape}: {exc}") from None
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2 or array.shape[1] != onnx_model.FEATURES:
            raise InferenceError(f"expected shape [N, {onnx_model.FEATURES}], got {list(array.shape)}")
        out = self.infer(array.astype(np.float32))
        output: dict[str, Any] = {"name": onnx_model.OUTPUT_NAME, "datatype": "FP32", "shape": list(out.shape)}
        raw: bytes | None = None
        if _wants_binary(body):
            raw = out.astype("<f4").tobytes()
            output["parameters"] = {"binary_data_size": len(raw)}
        else:
            output["data"] = out.reshape(-1).tolist()
        response: dict[str, Any] = {"model_name": self.model, "model_version": self.version, "outputs": [output]}
        if "id" in body:
            response["id"] = body["id"]
        return (response, raw) if raw is not None else response


def _wants_binary(body: dict[str, Any]) -> bool:
    """The binary tensor extension: outputs as raw bytes after a JSON header (Triton's HTTP protocol)."""
    if (body.get("parameters") or {}).get("binary_data_output"):
        return True
    outputs = body.get("outputs")
    return isinstance(outputs, list) and any(
        isinstance(o, dict) and (o.get("parameters") or {}).get("binary_data") for o in outputs)


@dataclass(frozen=True)
class Fault:
    """Injected faults, for demos and tests of rollouts: a share of requests answered 500, and added latency."""

    error_rate: float = 0.0
    extra_latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"error_rate must be a fraction in [0, 1], got {self.error_rate}")
        if not 0 <= self.extra_latency_ms <= 60_000:
            raise ValueError(f"extra_latency_ms must be in [0, 60000], got {self.extra_latency_ms}")

    def arguments(self) -> list[str]:
        """The engine server's command-line flags for this fault."""
        return ["--error-rate", str(self.error_rate), "--extra-latency-ms", str(self.extra_latency_ms)]


class App:
    """The v2 HTTP surface over one :class:`Engine`."""

    def __init__(self, engine: Engine, where: str = "", *, fault: Fault | None = None) -> None:
        self.engine = engine
        self.where = where
        self.fault = fault or Fault()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        parts = [p for p in scope["path"].split("/") if p]
        status, payload = await self._route(method, parts, receive)
        headers = [(b"content-type", b"application/json")]
        if isinstance(payload, tuple):
            header = json.dumps(payload[0], separators=(",", ":")).encode()
            body = header + payload[1]
            headers = [(b"content-type", b"application/octet-stream"),
                       (b"inference-header-content-length", str(len(header)).encode())]
        else:
            body = json.dumps(payload, separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Warm-up runs before the server reports ready; it is quick but CPU bound.
                started = time.perf_counter()
                await asyncio.get_running_loop().run_in_executor(None, self.engine.warm_up)
                log.info("%s version %s (%s) ready on %s: warm-up took %.0f ms", self.engine.model,
                         self.engine.version, self.engine.precision, self.where,
                         (time.perf_counter() - started) * 1000)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                log.info("%s version %s on %s stopping", self.engine.model, self.engine.version, self.where)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, method: str, parts: list[str], receive: Receive
                     ) -> tuple[int, dict[str, Any] | tuple[dict[str, Any], bytes]]:
        engine = self.engine
        if not parts or parts[0] != "v2":
            return 404, {"error": "not found"}
        rest = parts[1:]
        if method == "GET" and rest == []:
            return 200, {"name": "grayroute-engine-server", "version": "1", "extensions": []}
        if method == "GET" and rest in (["health", "live"], ["health", "ready"]):
            ready = rest[1] == "live" or engine.ready
            return (200 if ready else 503), {"live": True} if rest[1] == "live" else {"ready": ready}
        if len(rest) < 2 or rest[0] != "models":
            return 404, {"error": "not found"}
        name, tail = rest[1], rest[2:]
        if name != engine.model:
            return 404, {"error": f"unknown model {name!r}"}
        if len(tail) >= 2 and tail[0] == "versions":
            if tail[1] != engine.version:
                return 404, {"error": f"unknown version {tail[1]!r} of model {name!r}"}
            tail = tail[2:]
        if method == "GET" and tail == []:
            return 200, engine.metadata()
        if method == "GET" and tail == ["ready"]:
            log.debug("readiness probe: %s", "ready" if engine.ready else "not ready")  # every few seconds
            return (200 if engine.ready else 503), {"name": name, "ready": engine.ready}
        if method == "POST" and tail == ["infer"]:
            raw = await _read_body(receive)
            try:
                body = json.loads(raw)
            except ValueError:
                return 400, {"error": "body is not JSON"}
            if not isinstance(body, dict):
                return 400, {"error": "body must be a JSON object"}
            if self.fault.extra_latency_ms:
                await asyncio.sleep(self.fault.extra_latency_ms / 1000)
            if self.fault.error_rate and random.random() < self.fault.error_rate:
                return 500, {"error": "injected fault (--error-rate)"}
            try:
                return 200, await asyncio.get_running_loop().run_in_executor(None, engine.handle_infer, body)
            except InferenceError as exc:
                return 400, {"error": str(exc)}
        return 404, {"error": "not found"}


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _exit_with_parent(parent_pid: int) -> None:
    """End this process when the reconciler that started it is gone, so none is orphaned."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                log.warning("the reconciler that started this server is gone; exiting")
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine_server", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model-dir", type=Path, default=Path(".grayroute") / "models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is no longer the parent")
    parser.add_argument("--error-rate", type=float, default=0.0,
                        help="fault injection: the share of inference requests answered 500 (default: 0)")
    parser.add_argument("--extra-latency-ms", type=float, default=0.0,
                        help="fault injection: milliseconds added to every inference request (default: 0)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="debug: every readiness probe too")
    args = parser.parse_args(argv)
    try:
        fault = Fault(args.error_rate, args.extra_latency_ms)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    if args.parent_pid:
        _exit_with_parent(args.parent_pid)
    log.info("loading %s version %s (%s)", args.model, args.version, args.precision)
    engine = Engine(
        model=args.model,
        version=args.version,
        precision=args.precision,
        model_dir=args.model_dir,
        threads=args.threads,
    )
    if fault != Fault():
        log.warning("fault injection: %.1f%% of requests answered 500, %.0f ms added", fault.error_rate * 100,
                    fault.extra_latency_ms)
    uvicorn.run(App(engine, f"{args.host}:{args.port}", fault=fault), host=args.host, port=args.port, log_level="warning", lifespan="on", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
