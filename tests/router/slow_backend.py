"""A backend that accepts connections slowly, the way an overloaded engine server does.

A ``ThreadingHTTPServer`` with a listen backlog of 5 and a fixed time per answer,
speaking enough KServe v2 for the router (health, model readiness and metadata,
``infer``). Its accept loop shares one interpreter lock with every connection's
thread, so a burst of new connections overflows the accept queue: the kernel then
drops SYNs and the client's connect waits for a retransmission, as it does
against a saturated Triton. It runs as its own process so a test can kill it
(SIGKILL: connections drop, the port refuses) and start it again on the same port.

    python -m tests.router.slow_backend --port 9001 --version 3 [--delay-ms 2]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.services import wait_for_port

ROOT = Path(__file__).resolve().parents[2]


class SlowAcceptServer(ThreadingHTTPServer):
    request_queue_size = 5  # the listen backlog
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as engine servers do
    server: SlowAccepting

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def _answer(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-backend-version", self.server.version)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        path = self.path.split("?")[0]
        if path in ("/v2/health/ready", "/v2/health/live") or path.endswith("/ready"):
            self._answer(200, b"")
        elif path.startswith("/v2/models/"):
            self._answer(200, json.dumps({"name": self.server.model, "versions": [self.server.version],
                                          "platform": "tensorrt_plan", "inputs": [], "outputs": []}).encode())
        else:
            self._answer(404, b'{"error":"not found"}')

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if not self.path.split("?")[0].endswith("/infer"):
            self._answer(404, b'{"error":"not found"}')
            return
        time.sleep(self.server.delay)
        self._answer(200, b'{"model_name":"%s","model_version":"%s","outputs":[{"name":"y","datatype":"FP32",'
                          b'"shape":[1],"data":[1.0]}]}' % (self.server.model.encode(), self.server.version.encode()))


class SlowAccepting(SlowAcceptServer):
    def __init__(self, port: int, version: str, model: str, delay: float) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.version = version
        self.model = model
        self.delay = delay


class SlowBackend:
    """The server above as a child process: ``start``, ``kill`` (SIGKILL) and ``start`` again."""

    def __init__(self, port: int, version: str, *, delay_ms: float = 2.0, model: str = "resnet50") -> None:
        self.port = port
        self.version = version
        self.delay_ms = delay_ms
        self.model = model
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SlowBackend:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.router.slow_backend", "--port", str(self.port), "--version", self.version,
             "--model", self.model, "--delay-ms", str(self.delay_ms)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--delay-ms", type=float, default=2.0)
    args = parser.parse_args()
    server = SlowAccepting(args.port, args.version, args.model, args.delay_ms / 1000)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
