"""The router against nginx with backends that are never the bottleneck: the three target ratios.

A script, not a test. Everything runs on 127.0.0.1 and stops by itself:

    python -m tests.bench.bench_router_nginx [--duration 10] [--rounds 3] [--baseline NAME=DIR ...]

Backends are never the bottleneck, so what is measured is the proxy: nginx ``return 200``
servers (one worker) for small requests; for large ones a small uvloop server that reads each
whole body without copying it (an inference server cannot answer before its input is in) and
answers a small JSON.

- small requests: a 200-byte KServe v2 JSON body, ``wrk -t1 -c32`` (a Lua script varies
  ``x-user-id``), nginx ``split_clients`` 95/5 over keep-alive upstreams (one worker) against
  ``grayroute router`` with the same 95/5 split (one worker), rounds alternating;
  target: router >= 0.5x nginx's throughput;
- large tensors: the binary-tensor extension (``Inference-Header-Content-Length``) at 0.6 MB
  (an image model's batch 1) and 4.8 MB (batch 8), one client sending requests one after
  another, direct / nginx / router in alternating rounds; the added p50 over direct;
  target: router's added p50 <= max(1.5x nginx's, nginx's + 0.1 ms);
- memory: the router's peak RSS while 64 clients send 4.8 MB requests at once;
  target: under 64 x body + 100 MB.

``--baseline NAME=DIR`` also runs the router of another checkout (e.g. the main branch) in the
same rounds, so before and after are measured side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from tests.bench.bench_router import PATH, Processes, processes, snapshot, wrk, wrk_script
from tests.services import free_port, wait_for_port

# 200 bytes on the wire, as a small tabular or text model's request
SMALL_BODY = ('{"id":"r","inputs":[{"name":"x","shape":[1,16],"datatype":"FP32",'
              '"data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6]}],'
              '"outputs":[{"name":"y"}],"parameters":{"p":"xxxxxxxxxxxx"}}')
SMALL_BODY = SMALL_BODY + " " * (200 - len(SMALL_BODY))
assert len(SMALL_BODY) == 200
ANSWER = '{"model_name":"resnet50","outputs":[{"name":"y","shape":[1,10],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0]}]}'

WRK_SCRIPT = wrk_script(SMALL_BODY, PATH)

_COMMON = """
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
daemon off;
worker_processes 1;
events {{ worker_connections 4096; }}
"""
_TEMPS = """
  client_body_temp_path {dir}/{name}.body; proxy_temp_path {dir}/{name}.proxy; fastcgi_temp_path {dir}/{name}.fcgi;
  uwsgi_temp_path {dir}/{name}.uwsgi; scgi_temp_path {dir}/{name}.scgi;
"""
BACKENDS_CONF = _COMMON + """
http {{
  access_log off;""" + _TEMPS + """
  client_max_body_size 0;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{b3}; location / {{ default_type application/json; return 200 '{answer}'; }} }}
  server {{ listen 127.0.0.1:{b4}; location / {{ default_type application/json; return 200 '{answer}'; }} }}
}}
"""
# The reference proxy: request bodies buffered in memory (client_body_buffer_size), as the router does.
PROXY_CONF = _COMMON + """
http {{
  access_log off;""" + _TEMPS + """
  client_max_body_size 0;
  client_body_buffer_size 8m;
  keepalive_requests 1000000;
  upstream v3 {{ server 127.0.0.1:{b3}; keepalive 128; keepalive_requests 1000000; }}
  upstream v4 {{ server 127.0.0.1:{b4}; keepalive 128; keepalive_requests 1000000; }}
  upstream s3 {{ server 127.0.0.1:{s3}; keepalive 128; keepalive_requests 1000000; }}
  upstream s4 {{ server 127.0.0.1:{s4}; keepalive 128; keepalive_requests 1000000; }}
  split_clients "resnet50${{http_x_user_id}}" $version {{ 95% v3; * v4; }}
  split_clients "resnet50${{http_x_user_id}}" $sink {{ 95% s3; * s4; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://$version; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{large_port};
    location / {{ proxy_pass http://$sink; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


class _Sink(asyncio.BufferedProtocol):
    """A backend that reads each whole body (as an inference server must) and answers a small JSON."""

    def __init__(self) -> None:
        self.buffer = bytearray(1 << 20)
        self.head = b""
        self.left = 0  # body bytes still to read; 0: reading a head
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        view = memoryview(self.buffer)[:nbytes]
        while len(view):
            if self.left > 0:  # body bytes: counted, never copied
                take = min(self.left, len(view))
                self.left -= take
                view = view[take:]
                if self.left == 0:
                    self._answer()
                continue
            self.head += bytes(view)
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.head[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            view = memoryview(self.head[end + 4:])
            self.head = b""
            self.left = length
            if length == 0:
                self._answer()

    def _answer(self) -> None:
        assert self.transport is not None
        self.transport.write(_SINK_ANSWER)


_SINK_ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(ANSWER), ANSWER.encode()))


def sink(port: int) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Sink, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    uvloop.run(main())


def tensor_request(size: int, user: int) -> tuple[bytes, bytes]:
    """A binary-extension infer request of ``size`` bytes in all: (head, body)."""
    header_json = orjson.dumps({"inputs": [{"name": "input", "shape": [size // 602112 or 1, 3, 224, 224],
                                            "datatype": "FP32", "parameters": {"binary_data_size": 0}}]})
    tensor = os.urandom(64) * ((size - len(header_json)) // 64)
    body = header_json + tensor
    head = (b"POST %s HTTP/1.1\r\nhost: bench\r\ncontent-type: application/octet-stream\r\n"
            b"inference-header-content-length: %d\r\nx-user-id: user-%d\r\ncontent-length: %d\r\n\r\n"
            % (PATH.encode(), len(header_json), user, len(body)))
    return head, body


class Client:
    """One keep-alive connection, one request at a time; the same cost against every target."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""

    def exchange(self, head: bytes, body: bytes) -> int:
        self.sock.sendall(head)
        self.sock.sendall(body)
        data = self.pending
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
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
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        self.pending = data[end + length:]
        return int(data[9:12])

    def close(self) -> None:
        self.sock.close()


def large_latencies(targets: dict[str, int], size: int, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Milliseconds per request, rounds alternating between targets so noise hits each alike."""
    requests = [tensor_request(size, user) for user in range(16)]
    clients = {name: Client(port) for name, port in targets.items()}
    results: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for name, client in clients.items():  # warm: connections, buffers, the router's pool
            for head, body in requests[:4]:
                if client.exchange(head, body) != 200:
                    raise RuntimeError(f"{name} did not answer 200")
        for _ in range(rounds):
            for name, client in clients.items():
                for i in range(per_round):
                    head, body = requests[i % len(requests)]
                    started = time.perf_counter()
                    status = client.exchange(head, body)
                    results[name].append((time.perf_counter() - started) * 1000)
                    if status != 200:
                        raise RuntimeError(f"{name} answered {status}")
    finally:
        for client in clients.values():
            client.close()
    return results


def rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_under_burst(port: int, pid: int, clients: int, size: int, waves: int) -> tuple[float, float]:
    """(RSS before, peak RSS) in MB while ``clients`` connections each send ``waves`` requests of ``size``."""
    before = rss_kib(pid, "VmRSS") / 1024
    head, body = tensor_request(size, 1)
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients)

    def one(index: int) -> None:
        try:
            client = Client(port)
            try:
                for _ in range(waves):
                    barrier.wait()
                    client.exchange(head.replace(b"user-1", b"user-%d" % index), body)
            finally:
                client.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} burst clients failed: {errors[0]!r}")
    return before, rss_kib(pid, "VmHWM") / 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (wrk and large requests)")
    parser.add_argument("--per-round", type=int, default=100, help="large requests per target and round")
    parser.add_argument("--baseline", nargs="*", default=[], metavar="NAME=DIR",
                        help="other checkouts whose routers run beside this one (before/after in one run)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["small", "large", "memory"])
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="also sample the router with py-spy under wrk load; raw samples to FILE, a summary printed")
    parser.add_argument("--sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink(args.sink)
        return 0
    if shutil.which("wrk") is None:
        print("wrk not found", file=sys.stderr)
        return 1
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    python = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
    work = Path(tempfile.mkdtemp(prefix="grayroute-bench-"))
    load = os.getloadavg()
    routers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}  # over the return-200 backends
    large_routers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}  # over the body-reading sinks
    out: list[str] = []
    try:
        (work / "post.lua").write_text(WRK_SCRIPT)
        with processes() as procs:
            b3, b4, s3, s4, proxy_port, large_port = (free_port() for _ in range(6))
            (work / "backends.conf").write_text(BACKENDS_CONF.format(dir=work, name="backends", b3=b3, b4=b4,
                                                                     answer=ANSWER))
            (work / "proxy.conf").write_text(PROXY_CONF.format(dir=work, name="proxy", b3=b3, b4=b4, s3=s3, s4=s4,
                                                               port=proxy_port, large_port=large_port))
            procs.start(nginx, "-c", str(work / "backends.conf"), "-p", str(work))
            for port in (s3, s4):
                procs.start(python, "-m", "tests.bench.bench_router_nginx", "--sink", str(port))
            proxy = procs.start(nginx, "-c", str(work / "proxy.conf"), "-p", str(work))
            snap, large_snap = work / "snapshot.json", work / "large.json"
            snap.write_bytes(snapshot(1, b3, b4))
            large_snap.write_bytes(snapshot(1, s3, s4))
            for port in (b3, b4, s3, s4, proxy_port, large_port):
                wait_for_port(port)
            sources = [("grayroute router", Path.cwd())]
            for item in args.baseline:
                name, _, directory = item.rpartition("=")
                sources.append((f"router, {name or 'baseline'}", Path(directory).resolve()))
            for name, source in sources:
                routers[name] = start_router(procs, python, source, snap, env)
                large_routers[name] = start_router(procs, python, source, large_snap, env)
            for port, _ in [*routers.values(), *large_routers.values()]:
                wait_for_port(port)
            time.sleep(1.0)
            out.append(f"machine: {os.cpu_count()} cores ({platform.machine()}), shared and busy: load average "
                       f"{load[0]:.1f} at start; Python {platform.python_version()}; one nginx worker, one router "
                       "worker; load generator on the same cores")

            if "small" not in args.skip:
                small(args, work / "post.lua", b3, proxy_port, proxy.pid, routers, out)
            if args.profile:
                port, router = routers["grayroute router"]
                profile(args.profile, work / "post.lua", port, router.pid, out)
            if "large" not in args.skip:
                large(args, s3, large_port, large_routers, out)
            if "memory" not in args.skip:
                print("memory (64 concurrent 4.8 MB requests)…", file=sys.stderr)
                size = 4_816_896
                out.append("")
                for name, (port, router) in large_routers.items():
                    before, peak = peak_rss_under_burst(port, router.pid, 64, size, waves=4)
                    bound = 64 * size / 1e6 + 100
                    out.append(f"RSS, {name}: {before:.0f} MB idle, peak {peak:.0f} MB with 64 x 4.8 MB requests "
                               f"in flight; bound 64 x body + 100 MB = {bound:.0f} MB "
                               f"[{'met' if peak < bound else 'MISSED'}]")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("\n".join(out))
    return 0


def start_router(procs: Processes, python: str, source: Path, snap: Path,
                 env: dict[str, str]) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    # the checkout's own router package first (a baseline checkout is not installed)
    router_env = {**env, "PYTHONPATH": os.pathsep.join([str(source), env.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [python, "-m", "router", "--port", str(port), "--workers", "1", "--snapshot-file", str(snap),
         "--log-level", "warning"], cwd=source, env=router_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.started.append(process)
    return port, process


def small(args: argparse.Namespace, script: Path, direct_port: int, proxy_port: int, proxy_pid: int,
          routers: dict[str, tuple[int, subprocess.Popen[bytes]]], out: list[str]) -> None:
    print("small requests (wrk -t1 -c32)…", file=sys.stderr)
    targets = [("direct to backend", direct_port, 0), ("nginx split_clients", proxy_port, proxy_pid)] + [
        (name, port, router.pid) for name, (port, router) in routers.items()]
    for _, port, _ in targets:
        wrk(port, script, 2, 32, 1)  # warm-up
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in targets}
    for _ in range(args.rounds):
        for name, port, pid in targets:
            runs[name].append(wrk(port, script, args.duration, 32, 1, pid or None))
            print(f"  {name}: {runs[name][-1]['rps']:.0f} req/s", file=sys.stderr)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    nginx_rps = med["nginx split_clients"]["rps"]
    out.append("")
    out.append(f"small requests: 200-byte KServe v2 JSON, wrk -t1 -c32 -d{args.duration}s, 95/5 split, "
               f"median of {args.rounds} alternating rounds")
    out.append(f"{'target':<28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs nginx':>9} {'CPU us/req':>11} {'errors':>7}")
    for name, r in med.items():
        cpu = f"{r['cpu_us']:>11.1f}" if r["cpu_us"] else f"{'':>11}"
        out.append(f"{name:<28} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                   f"{r['rps'] / nginx_rps:>8.2f}x {cpu} {int(r['errors']):>7}")
    for name in routers:
        ratio = med[name]["rps"] / nginx_rps
        out.append(f"RATIO small, {name}: {ratio:.2f}x nginx's throughput (target >= 0.50) "
                   f"[{'met' if ratio >= 0.5 else 'MISSED'}]")


def profile(raw: Path, script: Path, port: int, pid: int, out: list[str], seconds: int = 6) -> None:
    """Where the router's time goes under wrk load: py-spy's samples, summed per function (self time)."""
    spy = shutil.which("py-spy")
    if spy is None:
        out.append("\n(profile skipped: py-spy not found)")
        return
    print("profile (py-spy)…", file=sys.stderr)
    load = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{seconds + 3}s", "-s", str(script), f"http://127.0.0.1:{port}/"],
                            stdout=subprocess.DEVNULL)
    try:
        time.sleep(1)
        subprocess.run([spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "--native", "-f", "raw",
                        "-o", str(raw)], capture_output=True, timeout=seconds + 60, check=False)
    finally:
        load.wait()
    if not raw.exists():
        out.append("\n(profile failed: py-spy wrote nothing)")
        return
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any("thread_run" in f or "Thread._bootstrap" in f for f in frames):
            continue  # idle helper threads, not the event loop
        total += int(count)
        leaf = frames[-1].split(" (")[0]
        if leaf.startswith(("write", "writev", "read", "epoll_pwait", "sendmsg", "recv")):
            leaf = f"syscall {leaf} <- {frames[-2].split(' (')[0]}"
        elif ".py:" not in frames[-1]:
            leaf = "C code (interpreter, uvloop, httptools)"
        own[leaf] = own.get(leaf, 0) + int(count)
    out.append("")
    out.append(f"router profile under wrk -t1 -c32 (py-spy --native, {total} samples, self time):")
    for name, count in sorted(own.items(), key=lambda item: -item[1])[:12]:
        out.append(f"  {count / total * 100:5.1f}%  {name}")


def large(args: argparse.Namespace, direct_port: int, proxy_port: int,
          routers: dict[str, tuple[int, subprocess.Popen[bytes]]], out: list[str]) -> None:
    targets = {"direct to backend": direct_port, "nginx split_clients": proxy_port,
               **{name: port for name, (port, _) in routers.items()}}
    for label, size in (("0.6 MB", 602_112 + 512), ("4.8 MB", 4_816_896 + 512)):
        print(f"large requests ({label}, one sequential client)…", file=sys.stderr)
        results = large_latencies(targets, size, args.rounds, args.per_round)
        direct = results["direct to backend"]
        d50, d99 = pct(direct, 0.5), pct(direct, 0.99)
        out.append("")
        out.append(f"large requests, {label} binary tensor (Inference-Header-Content-Length), one client, "
                   f"{args.rounds} alternating rounds of {args.per_round}")
        out.append(f"{'target':<28} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10}")
        for name, lat in results.items():
            out.append(f"{name:<28} {pct(lat, 0.5):>8.3f} {pct(lat, 0.99):>8.3f} "
                       f"{pct(lat, 0.5) - d50:>10.3f} {pct(lat, 0.99) - d99:>10.3f}")
        nginx_added = pct(results["nginx split_clients"], 0.5) - d50
        allowed = max(1.5 * nginx_added, nginx_added + 0.1)
        for name in routers:
            added = pct(results[name], 0.5) - d50
            ratio = added / nginx_added if nginx_added > 0 else float("inf")
            out.append(f"RATIO large {label}, {name}: added p50 {added:.3f} ms = {ratio:.2f}x nginx's "
                       f"{nginx_added:.3f} ms (target <= {allowed:.3f} ms) [{'met' if added <= allowed else 'MISSED'}]")


if __name__ == "__main__":
    sys.exit(main())
