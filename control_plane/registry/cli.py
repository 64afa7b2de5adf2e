"""``grayroute register``: publish a version and its engines from a CI pipeline, through the API.

Idempotent, so a re-run of the same pipeline is harmless: an existing version
is reused, an engine already registered with the same sha256 is skipped, and
a re-run that differs from what is registered (precision, TensorRT version, an
architecture's sha256) is refused before anything is written, naming each
difference (versions and engines are immutable; register a new version).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import httpx

from control_plane.settings import ClientSettings

_CHUNK = 8 << 20

DESCRIPTION = "Register a model version and its engines through the API (idempotent: safe to re-run from CI)."
EPILOG = """\
environment:
  GRAYROUTE_TOKEN              a token of role publisher (or admin); required
  GRAYROUTE_CONTROL_PLANE_URL  the control plane's base URL (default http://127.0.0.1:8080)

A re-run with the same precision, TensorRT version and engine sha256s changes
nothing; one that differs from what is registered is refused, naming the
difference (versions and engines are immutable: register a new version).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name (created if missing)")
    parser.add_argument("version", help="version label, e.g. a build number")
    parser.add_argument("--precision", required=True, choices=["fp32", "fp16", "int8", "bf16", "fp8"])
    parser.add_argument("--trt-version", required=True, help="TensorRT version the engines were built with")
    parser.add_argument("--engine", action="append", default=[], metavar="ARCH=URI",
                        help="an engine's GPU architecture and artifact URI, e.g. sm_80=s3://engines/r50/4/sm_80.plan")
    parser.add_argument("--file", action="append", default=[], metavar="ARCH=PATH",
                        help="the local engine file for ARCH: its sha256 and size are computed")
    parser.add_argument("--sha256", action="append", default=[], metavar="ARCH=HEX",
                        help="the engine's sha256 when the file is not at hand")
    parser.add_argument("--benchmark", action="append", default=[], metavar="ARCH=KEY=VALUE,...",
                        help="trtexec figures, e.g. sm_80=p50_ms=1.2,p99_ms=2.5,throughput=2400,gpu_mem_mb=900")
    parser.add_argument("--source-uri", default="", help="the ONNX the engines were built from")
    parser.add_argument("--onnx", type=Path, metavar="PATH",
                        help="the local ONNX file: its inputs, outputs and sha256 are recorded with the version")
    parser.add_argument("--max-batch-size", type=int, metavar="N",
                        help="the engines' largest batch (their optimization profile's maximum); required with "
                             "--onnx when the first dimensions are dynamic (0: they are not a batch)")
    parser.add_argument("--batch-delay-us", type=int, metavar="US",
                        help="turn on Triton's dynamic batching, waiting up to US microseconds to fill a batch")
    parser.add_argument("--preferred-batch-size", type=int, action="append", default=[], metavar="N",
                        help="a batch size the dynamic batcher aims for (repeatable)")
    parser.add_argument("--notes", default="")
    parser.add_argument("--control-plane", help="base URL (default: $GRAYROUTE_CONTROL_PLANE_URL, else "
                                                "http://127.0.0.1:8080)")


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        arch, sep, rest = value.partition("=")
        if not sep or not arch or not rest:
            raise SystemExit(f"grayroute register: {flag} {value!r}: expected ARCH=VALUE")
        pairs[arch] = rest
    return pairs


def _digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def engines_from(args: argparse.Namespace) -> list[dict[str, Any]]:
    uris, files = _pairs(args.engine, "--engine"), _pairs(args.file, "--file")
    sums, figures = _pairs(args.sha256, "--sha256"), _pairs(args.benchmark, "--benchmark")
    engines = []
    for arch, uri in uris.items():
        engine: dict[str, Any] = {"gpu_arch": arch, "uri": uri}
        if arch in files:
            path = Path(files[arch])
            if not path.is_file():
                raise SystemExit(f"grayroute register: --file {arch}={path}: no such file")
            print(f"hashing {path} …", file=sys.stderr)
            engine["sha256"], engine["size_bytes"] = _digest(path)
        elif arch in sums:
            engine["sha256"] = sums[arch].lower()
        else:
            raise SystemExit(f"grayroute register: engine {arch} needs --file {arch}=PATH or --sha256 {arch}=HEX")
        if arch in figures:
            try:
                engine["benchmark"] = {k: float(v) for k, _, v in (kv.partition("=") for kv in figures[arch].split(","))}
            except ValueError:
                raise SystemExit(f"grayroute register: --benchmark {arch}: numbers expected") from None
        engines.append(engine)
    unknown = (set(files) | set(sums) | set(figures)) - set(uris)
    if unknown:
        raise SystemExit(f"grayroute register: no --engine given for {sorted(unknown)}")
    return engines


# ONNX TensorProto element types -> KServe v2 datatypes.
_DATATYPE_OF_ONNX = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "BYTES",
    9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16",
}


def _tensors(values: Any, path: Path) -> list[dict[str, Any]]:
    tensors = []
    for value in values:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise SystemExit(f"grayroute register: --onnx {path}: {value.name!r} is a {kind}, not a tensor")
        tensor = value.type.tensor_type
        datatype = _DATATYPE_OF_ONNX.get(tensor.elem_type)
        if datatype is None:
            raise SystemExit(f"grayroute register: --onnx {path}: {value.name!r} has element type "
                             f"{tensor.elem_type}, which Triton cannot serve")
        if not tensor.HasField("shape"):
            raise SystemExit(f"grayroute register: --onnx {path}: {value.name!r} has no known rank")
        # A named (dim_param) or unset dimension is dynamic.
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim]
        tensors.append({"name": value.name, "datatype": datatype, "shape": shape})
    return tensors


def signature_from_onnx(path: Path, max_batch_size: int | None) -> dict[str, Any]:
    """Inputs, outputs and max_batch_size of the ONNX graph at ``path``, as the API takes them."""
    import onnx

    if not path.is_file():
        raise SystemExit(f"grayroute register: --onnx {path}: no such file")
    try:
        # Weights may live in external files; the signature needs only the graph.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types for a bad file
        raise SystemExit(f"grayroute register: --onnx {path}: not an ONNX model ({type(exc).__name__})") from None
    weights = {i.name for i in model.graph.initializer}
    inputs = _tensors([v for v in model.graph.input if v.name not in weights], path)
    outputs = _tensors(model.graph.output, path)
    if not inputs or not outputs:
        raise SystemExit(f"grayroute register: --onnx {path}: the graph has no inputs or no outputs")
    batchable = all(t["shape"] and t["shape"][0] == -1 for t in inputs + outputs)
    if max_batch_size is None:
        if batchable:
            raise SystemExit(f"grayroute register: --onnx {path}: the first dimension of every tensor is dynamic; "
                             "give --max-batch-size N (the engines' largest batch, or 0 if it is not a batch)")
        max_batch_size = 0
    elif max_batch_size > 0 and not batchable:
        fixed = next(t["name"] for t in inputs + outputs if not t["shape"] or t["shape"][0] != -1)
        raise SystemExit(f"grayroute register: --max-batch-size {max_batch_size}: {fixed!r} has a fixed first "
                         "dimension, so the model cannot batch (use --max-batch-size 0)")
    return {"inputs": inputs, "outputs": outputs, "max_batch_size": max_batch_size}


def version_extras(args: argparse.Namespace) -> dict[str, Any]:
    """The signature, source checksum and batching options of a new version."""
    extras: dict[str, Any] = {}
    if args.onnx is not None:
        extras["signature"] = signature_from_onnx(args.onnx, args.max_batch_size)
        extras["source_sha256"] = _digest(args.onnx)[0]
    elif args.max_batch_size is not None:
        raise SystemExit("grayroute register: --max-batch-size describes the --onnx model; give --onnx too")
    if args.batch_delay_us is not None or args.preferred_batch_size:
        extras["dynamic_batching"] = {"max_queue_delay_microseconds": args.batch_delay_us or 0,
                                      "preferred_batch_size": args.preferred_batch_size}
    return extras


def _fail(response: httpx.Response) -> None:
    try:
        error = response.json()["error"]
        message = error["message"]
        fields = [f"{d['field']}: {d['reason']}" for d in error.get("details") or []
                  if isinstance(d, dict) and "field" in d]
        if fields and not all(f in message for f in fields):
            message = "; ".join(fields)
    except (ValueError, KeyError, TypeError):
        message = " ".join(response.text.split())[:300] or response.reason_phrase
    raise SystemExit(f"grayroute register: {response.request.method} {response.request.url} → "
                     f"{response.status_code} {response.reason_phrase}: {message}")


def _differences(registered: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What a re-run asks for that the registered version does not have."""
    return [f"{name} {registered[key]!r} is registered, this run has {wanted!r}"
            for name, key, wanted in (("precision", "precision", args.precision),
                                      ("TensorRT version", "trt_version", args.trt_version))
            if registered.get(key) != wanted]


def run(args: argparse.Namespace) -> int:
    try:
        return _register(args)
    except httpx.HTTPError as exc:
        # Network failures (refused, DNS, TLS, timeouts): one line naming the URL, never a traceback.
        try:
            url = str(exc.request.url)
        except RuntimeError:  # raised before a request existed
            url = args.control_plane or ClientSettings().control_plane_url
        reason = str(exc) or type(exc).__name__
        raise SystemExit(f"grayroute register: cannot reach the control plane at {url}: {reason}") from None


def _register(args: argparse.Namespace) -> int:
    settings = ClientSettings()
    if settings.token is None:
        raise SystemExit("grayroute register: set GRAYROUTE_TOKEN to a publisher token")
    engines = engines_from(args)
    extras = version_extras(args)
    base = (args.control_plane or settings.control_plane_url).rstrip("/") + "/api/v1"
    headers = {"Authorization": f"Bearer {settings.token.get_secret_value()}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as api:
        response = api.get(f"/models/{args.model}")
        if response.status_code == 404:
            response = api.post("/models", json={"name": args.model})
            if response.status_code != 201:
                _fail(response)
            print(f"created model {args.model}")
        elif response.status_code != 200:
            _fail(response)

        response = api.get(f"/models/{args.model}/versions/{args.version}")
        if response.status_code == 404:
            response = api.post(f"/models/{args.model}/versions", json={
                "version": args.version, "precision": args.precision, "trt_version": args.trt_version,
                "source_uri": args.source_uri, "notes": args.notes, "engines": engines, **extras})
            if response.status_code != 201:
                _fail(response)
            print(f"registered {args.model}/{args.version} with engines for "
                  f"{', '.join(e['gpu_arch'] for e in engines) or 'no architecture yet'}")
            if "signature" in extras:
                sig = extras["signature"]
                print("signature: " + ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in sig["inputs"])
                      + " -> " + ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in sig["outputs"])
                      + f", max_batch_size {sig['max_batch_size']}")
            return 0
        if response.status_code != 200:
            _fail(response)
        registered = response.json()
        existing = {e["gpu_arch"]: e for e in registered["engines"]}
        differences = _differences(registered, args) + [
            f"the {e['gpu_arch']} engine's sha256 is {existing[e['gpu_arch']]['sha256'][:12]}…, this run has "
            f"{e['sha256'][:12]}…" for e in engines
            if e["gpu_arch"] in existing and existing[e["gpu_arch"]]["sha256"] != e["sha256"]]
        if differences:
            # Checked before adding anything, so a refused re-run changes nothing.
            raise SystemExit(f"grayroute register: {args.model}/{args.version} differs from what is registered: "
                             f"{'; '.join(differences)}; versions and engines are immutable, register a new version")
        for engine in engines:
            if engine["gpu_arch"] in existing:
                print(f"{engine['gpu_arch']}: already registered")
                continue
            response = api.post(f"/models/{args.model}/versions/{args.version}/engines", json=engine)
            if response.status_code != 201:
                _fail(response)
            print(f"{engine['gpu_arch']}: engine added")
    return 0
