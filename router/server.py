"""Runs the router: one uvicorn worker per process, several processes on one port.

Each worker binds its own ``SO_REUSEPORT`` socket so the kernel spreads
connections evenly (a shared accept socket lets one busy worker take most of
them). A worker that dies takes the supervisor down with it: the orchestrator
restarts the whole router, which is simpler to reason about than a half-dead one.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from types import FrameType

import uvicorn

from router.app import RouterApp
from router.settings import RouterSettings

log = logging.getLogger("grayroute.router")


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
KEPT_FREE_HEAP = 64 << 20
HEAP_ALLOCATIONS_UP_TO = 32 << 20  # glibc's largest allowed threshold


def keep_freed_heap() -> bool:
    """Keep up to ``KEPT_FREE_HEAP`` of freed memory for the next large body instead of returning it.

    A large body arrives as 256 KB reads, each a new bytes object. glibc's
    defaults give the heap's top back to the kernel once 128 KB-2x the largest
    freed piece sits free, so every large request faulted its memory in again,
    page by page: half the router's CPU for a 4.8 MB body (measured). Kept, the
    next body reuses it. The price is up to 64 MB held after a burst of large
    requests; peak memory is unchanged. A no-op where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False  # musl's mallopt takes the call and does nothing; say so
    return bool(mallopt(_M_TRIM_THRESHOLD, KEPT_FREE_HEAP)) and bool(mallopt(_M_MMAP_THRESHOLD, HEAP_ALLOCATIONS_UP_TO))


def run_worker(settings: RouterSettings) -> None:
    """Serve in this process until SIGINT/SIGTERM."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not keep_freed_heap():
        log.info("not glibc: freed heap is returned to the kernel as the C library decides")
    sock = _listen(settings.host, settings.port, reuse_port=settings.workers > 1)
    if settings.http == "lean":
        import uvloop

        from router.http import LeanServer

        async def main() -> None:
            await LeanServer(
                RouterApp(settings),
                max_body=settings.max_body_bytes,
                max_line=settings.max_line_bytes,
                max_head=settings.max_header_bytes,
                max_headers=settings.max_headers,
                header_timeout=settings.header_timeout,
                body_timeout=settings.body_timeout,
                max_connections=settings.max_client_connections,
            ).serve(sock)

        uvloop.run(main())
        return
    config = uvicorn.Config(
        RouterApp(settings),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the router is the edge; X-Forwarded-* are passed on, not interpreted
        log_level=settings.log_level,
        backlog=2048,
        timeout_keep_alive=75,  # longer than typical load-balancer idle timeouts
        limit_concurrency=settings.max_client_connections,  # the only client limit uvicorn shares with the lean server
    )
    uvicorn.Server(config).run(sockets=[sock])


def serve(settings: RouterSettings) -> int:
    if settings.workers == 1:
        run_worker(settings)
        return 0
    metrics_dir = Path(tempfile.mkdtemp(prefix="grayroute-router-metrics-"))
    worker_settings = settings.model_copy(update={"metrics_dir": metrics_dir})
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=run_worker, args=(worker_settings,), name=f"grayroute-router-{i}")
        for i in range(settings.workers)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.start()
    code = 0
    try:
        while not stopping:
            if any(w.exitcode is not None for w in workers):
                log.error("a router worker exited; stopping the others")
                code = 1
                break
            time.sleep(0.2)
    finally:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                worker.terminate()  # SIGTERM: uvicorn drains and runs shutdown
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code
