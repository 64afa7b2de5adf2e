"""Real Postgres and Redis for the test session, on loopback in a temporary directory.

The test command (README) installs Debian's ``postgresql`` and ``redis-server``;
this module starts private instances of them so tests never touch a system
service. Set ``GRAYROUTE_TEST_POSTGRES_URL`` / ``GRAYROUTE_TEST_REDIS_URL`` to
use already-running servers instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _pg_bin(name: str) -> str:
    found = shutil.which(name) if name != "postgres" else None
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    if found:
        return found
    raise RuntimeError(f"{name} not found: install Debian's postgresql (the README's test command does)")


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # Postgres refuses to run as root; the test command runs as root on CI.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@dataclass
class PostgresServer:
    """A throwaway Postgres cluster; ``url`` is an asyncpg SQLAlchemy URL."""

    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://grayroute@127.0.0.1:{self.port}/grayroute"

    @classmethod
    def start(cls) -> PostgresServer:
        directory = Path(tempfile.mkdtemp(prefix="grayroute-pg-"))
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres", "postgres")
        data = directory / "data"
        subprocess.run(
            _as_postgres_user([_pg_bin("initdb"), "-D", str(data), "-U", "grayroute", "-A", "trust", "-E", "UTF8"]),
            check=True, capture_output=True,
        )
        server = cls(directory, free_port())
        server.resume()
        subprocess.run(
            _as_postgres_user([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "grayroute", "grayroute"]),
            check=True, capture_output=True,
        )
        return server

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres_user([_pg_bin("pg_ctl"), "-D", str(self.directory / "data"), *args]),
                       check=True, capture_output=True)

    def stop(self) -> None:
        try:
            self.pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server, keeping its data and port (an outage)."""
        self.pg_ctl("stop", "-m", "fast")

    def resume(self) -> None:
        """Start the paused server again on the same port."""
        self.pg_ctl("start", "-w", "-l", str(self.directory / "log"),
                    "-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
                          "-c synchronous_commit=off -c max_connections=300")


@dataclass
class RedisServer:
    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls) -> RedisServer:
        server = cls(Path(tempfile.mkdtemp(prefix="grayroute-redis-")), free_port())
        server.launch()
        return server

    def launch(self) -> None:
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [redis, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


class LiveServer:
    """An ASGI app served by uvicorn on a loopback port, in a thread with its own event loop."""

    def __init__(self, app: object, port: int | None = None) -> None:
        import threading

        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"live-server-{self.port}", daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
