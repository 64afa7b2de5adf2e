"""The router in front of a real GPU model: ResNet-50 on PyTorch, direct against through ``grayroute router``.

A script, not a test (CI has no GPU). It needs a CUDA machine with PyTorch (torchvision if
present; otherwise ResNet-50 is built here) and aiohttp, plus the router's own dependencies:

    python -m tests.bench.bench_gpu [--rounds 5] [--per-round 40] [--baseline NAME=DIR ...] [--out DIR]
                                    [--nginx PATH] [--null-ms MS]

- the model server: a small KServe v2 server (aiohttp) serving ``resnet50_fp32`` and
  ``resnet50_fp16`` (random weights, nothing downloaded; eager mode, cuDNN autotuning),
  binary tensors in and out (``Inference-Header-Content-Length``);
- the router: one worker, a 95/5 split between two versions served by that server;
- the reference hop: nginx (when installed) proxying to the same server, bodies buffered in memory;
- one client, requests one after another, batch 1 and 8, rounds alternating between direct,
  nginx, router (and each ``--baseline``, the router of another checkout) so drift hits each alike;
- ``--null-ms MS`` replaces the model by a sleep: the same comparison without a GPU;
- printed: p50, p99, throughput, and the router's added p50 as a share of direct
  inference latency (target: under 5%).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SIZES = (1, 8)
PRECISIONS = ("fp32", "fp16")


# --- the model server (runs in its own process) ---------------------------------------------------

def _resnet50() -> object:
    import torch
    from torch import nn

    try:
        from torchvision.models import resnet50

        return resnet50(weights=None)
    except ImportError:
        pass

    class Bottleneck(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                               nn.MaxPool2d(3, 2, 1)]
    inplanes = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            down = None
            if s != 1 or inplanes != planes * 4:
                down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, s, bias=False), nn.BatchNorm2d(planes * 4))
            layers.append(Bottleneck(inplanes, planes, s, down))
            inplanes = planes * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers)


def serve(port: int, null_ms: float = 0.0) -> None:
    from aiohttp import web

    if null_ms:
        _serve_null(port, null_ms)
        return
    import torch

    torch.backends.cudnn.benchmark = True
    base = _resnet50().eval()  # type: ignore[attr-defined]
    models = {"resnet50_fp32": (base.cuda(), torch.float32),
              "resnet50_fp16": (_resnet50().eval().cuda().half(), torch.float16)}  # type: ignore[attr-defined]
    with torch.inference_mode():
        for model, dtype in models.values():
            for batch in SIZES:  # cuDNN picks its kernels per shape here, not in the first timed request
                for _ in range(5):
                    model(torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype))
        torch.cuda.synchronize()

    async def infer(request: web.Request) -> web.Response:
        name = request.match_info["model"]
        model, dtype = models[name]
        body = await request.read()
        header_length = int(request.headers["Inference-Header-Content-Length"])
        header = json.loads(body[:header_length])
        shape = header["inputs"][0]["shape"]
        data = torch.frombuffer(bytearray(body[header_length:]), dtype=dtype).view(*shape)
        with torch.inference_mode():
            out = model(data.cuda(non_blocking=True)).float().cpu()  # .cpu() waits for the GPU
        raw = out.numpy().tobytes()
        answer = json.dumps({"model_name": name, "outputs": [{
            "name": "logits", "datatype": "FP32", "shape": list(out.shape),
            "parameters": {"binary_data_size": len(raw)}}]}).encode()
        return web.Response(body=answer + raw, headers={
            "Inference-Header-Content-Length": str(len(answer)), "Content-Type": "application/octet-stream"})

    _run_kserve(port, infer)


def _run_kserve(port: int, infer: Any) -> None:
    """A KServe v2 server around ``infer``: readiness, and binary-tensor inference."""
    from aiohttp import web

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text='{"ready":true}', content_type="application/json")

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{model}/ready", ready)
    app.router.add_post("/v2/models/{model}/infer", infer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _serve_null(port: int, null_ms: float) -> None:
    """The same server with the model replaced by a sleep: what a proxy hop costs with no GPU in the picture."""
    import asyncio

    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        header_length = int(request.headers["Inference-Header-Content-Length"])
        batch = json.loads(body[:header_length])["inputs"][0]["shape"][0]
        await asyncio.sleep(null_ms / 1000)
        raw = bytes(batch * 1000 * 4)
        answer = json.dumps({"model_name": request.match_info["model"], "outputs": [{
            "name": "logits", "datatype": "FP32", "shape": [batch, 1000],
            "parameters": {"binary_data_size": len(raw)}}]}).encode()
        return web.Response(body=answer + raw, headers={
            "Inference-Header-Content-Length": str(len(answer)), "Content-Type": "application/octet-stream"})

    _run_kserve(port, infer)


# The reference hop: nginx proxying to the same server, the request body buffered in memory as the
# router's large-body benchmark configures it (one worker, keep-alive upstream).
NGINX_CONF = """
pid {dir}/nginx.pid;
error_log {dir}/nginx.error.log warn;
daemon off;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  client_max_body_size 0;
  client_body_buffer_size 16m;
  keepalive_requests 1000000;
  upstream engine {{ server 127.0.0.1:{server}; keepalive 16; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://engine; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffer_size 64k; proxy_buffers 64 64k; }}
  }}
}}
"""


# --- the client ------------------------------------------------------------------------------------

def tensor_request(model: str, batch: int, user: int) -> tuple[bytes, bytes]:
    dtype, width = ("FP32", 4) if model.endswith("fp32") else ("FP16", 2)
    header = json.dumps({"inputs": [{"name": "input", "shape": [batch, 3, 224, 224], "datatype": dtype,
                                     "parameters": {"binary_data_size": batch * 3 * 224 * 224 * width}}]}).encode()
    body = header + bytes(batch * 3 * 224 * 224 * width)  # zeros: finite in both precisions, same work
    head = (b"POST /v2/models/%s/infer HTTP/1.1\r\nhost: bench\r\ncontent-type: application/octet-stream\r\n"
            b"inference-header-content-length: %d\r\nx-user-id: user-%d\r\ncontent-length: %d\r\n\r\n"
            % (model.encode(), len(header), user, len(body)))
    return head, body


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, head: bytes, body: bytes) -> int:
        self.sock.sendall(head)
        self.sock.sendall(body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        end = data.index(b"\r\n\r\n") + 4
        length = 0
        for line in data[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(data) < end + length:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return int(data[9:12])


def wait_for_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def snapshot(server: int) -> bytes:
    from router.routing import allocate, bucket_counts

    allocation = [list(r) for r in allocate(None, bucket_counts([("1", 95), ("2", 5)]))]
    endpoint = {"endpoints": [{"url": f"http://127.0.0.1:{server}", "pool": "h200", "gpu_arch": "sm_90"}]}
    return json.dumps({"revision": 1, "models": {name: {
        "salt": name, "default_version": "1",
        "splits": [{"version": "1", "weight": 95}, {"version": "2", "weight": 5}],
        "allocation": allocation, "versions": {"1": endpoint, "2": endpoint},
    } for name in ("resnet50_fp32", "resnet50_fp16")}}).encode()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--baseline", nargs="*", default=[], metavar="NAME=DIR",
                        help="other checkouts whose routers run beside this one (before/after in one run)")
    parser.add_argument("--out", type=Path, help="also write the table and a JSON of all figures here")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "",
                        help="nginx binary for the reference hop (default: on PATH; empty: no nginx row)")
    parser.add_argument("--null-ms", type=float, default=0.0,
                        help="replace the model by a sleep of this many ms (no GPU needed): the hop alone")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.null_ms)
        return 0
    if args.null_ms:
        gpu, torch_version = f"no GPU (the model is a {args.null_ms} ms sleep)", "-"
    else:
        import torch

        gpu, torch_version = torch.cuda.get_device_name(0), torch.__version__
    work = Path(tempfile.mkdtemp(prefix="grayroute-gpu-"))
    started: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
    try:
        server = free_port()
        started.append(subprocess.Popen([sys.executable, "-m", "tests.bench.bench_gpu", "--serve", str(server),
                                         "--null-ms", str(args.null_ms)], cwd=ROOT, env=env))
        (work / "snapshot.json").write_bytes(snapshot(server))
        targets: dict[str, int] = {"direct": server}
        if args.nginx:
            port = free_port()
            (work / "nginx.conf").write_text(NGINX_CONF.format(dir=work, server=server, port=port))
            started.append(subprocess.Popen([args.nginx, "-c", str(work / "nginx.conf"), "-p", str(work)]))
            targets["nginx"] = port
        sources = [("router", ROOT)]
        for item in args.baseline:
            name, _, directory = item.rpartition("=")
            sources.append((f"router, {name or 'baseline'}", Path(directory).resolve()))
        for name, source in sources:
            port = free_port()
            path = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
            started.append(subprocess.Popen(
                [sys.executable, "-m", "router", "--port", str(port), "--workers", "1", "--snapshot-file",
                 str(work / "snapshot.json"), "--log-level", "warning"], cwd=source, env={**env, "PYTHONPATH": path}))
            targets[name] = port
        for port in targets.values():
            wait_for_port(port)
        time.sleep(1.0)
        lines = [f"machine: {gpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
                 f"{torch_version}; ResNet-50 eager, random weights; one client, sequential requests; "
                 f"{args.rounds} alternating rounds of {args.per_round}; router: one worker, 95/5 split",
                 "",
                 f"{'model':<8} {'batch':>5} {'MB':>5}  {'target':<20} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} "
                 f"{'img/s':>7} {'added p50':>10} {'of direct':>9}"]
        figures: list[dict[str, object]] = []
        for precision in PRECISIONS:
            model = f"resnet50_{precision}"
            for batch in SIZES:
                requests = [tensor_request(model, batch, user) for user in range(16)]
                clients = {name: Client(port) for name, port in targets.items()}
                for client in clients.values():
                    for head, body in requests[:5]:
                        if client.exchange(head, body) != 200:
                            raise RuntimeError("warm-up request failed")
                times: dict[str, list[float]] = {name: [] for name in targets}
                for _ in range(args.rounds):
                    for name, client in clients.items():
                        for i in range(args.per_round):
                            head, body = requests[i % len(requests)]
                            t0 = time.perf_counter()
                            status = client.exchange(head, body)
                            times[name].append((time.perf_counter() - t0) * 1000)
                            if status != 200:
                                raise RuntimeError(f"{name} answered {status}")
                direct50 = pct(times["direct"], 0.5)
                for name, values in times.items():
                    p50, p99 = pct(values, 0.5), pct(values, 0.99)
                    rps = 1000 / (sum(values) / len(values))
                    added = p50 - direct50
                    share = added / direct50 * 100
                    figures.append({"model": model, "batch": batch, "target": name, "p50_ms": p50, "p99_ms": p99,
                                    "rps": rps, "added_p50_ms": added, "added_share": share})
                    verdict = "" if name == "nginx" else f" [{'met' if share < 5 else 'MISSED'}]"
                    extra = "" if name == "direct" else f"{added:>10.3f} {share:>8.1f}%{verdict}"
                    lines.append(f"{precision:<8} {batch:>5} {len(requests[0][1]) / 1e6:>5.1f}  {name:<20} "
                                 f"{p50:>8.3f} {p99:>8.3f} {rps:>7.1f} {rps * batch:>7.1f} {extra}")
    finally:
        for process in reversed(started):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_gpu.txt").write_text(text + "\n")
        (args.out / "bench_gpu.json").write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
