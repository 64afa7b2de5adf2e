"""``grayroute router``: options and entry point (the main CLI wires them in)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pydantic import ValidationError

from router.settings import RouterSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes sharing the port (default 1)")
    parser.add_argument("--control-plane", default=None, metavar="URL",
                        help="control plane base URL, for the snapshot and stats reports")
    parser.add_argument("--snapshot-file", type=Path, default=None, metavar="PATH",
                        help="where the last good snapshot is kept; read at start if the control plane is down")
    parser.add_argument("--max-body-bytes", type=int, default=None, help="request body limit (default 64 MiB)")
    parser.add_argument("--max-response-bytes", type=int, default=None,
                        help="largest backend answer the router buffers (default 256 MiB)")
    parser.add_argument("--max-line-bytes", type=int, default=None,
                        help="longest request line (414 above) or header line (431 above) (default 8 KiB)")
    parser.add_argument("--max-header-bytes", type=int, default=None,
                        help="request line and headers together (431 above, default 64 KiB)")
    parser.add_argument("--max-headers", type=int, default=None, help="header count (431 above, default 100)")
    parser.add_argument("--header-timeout", type=float, default=None, metavar="SECONDS",
                        help="time a client has to send a request's head (408 past it, default 10)")
    parser.add_argument("--body-timeout", type=float, default=None, metavar="SECONDS",
                        help="time a client has to send a request's body after its head (408 past it, default 60)")
    parser.add_argument("--max-client-connections", type=int, default=None, metavar="N",
                        help="client connections per worker; beyond it new ones get 503 at once (default 4096)")
    parser.add_argument("--forward-header", action="append", default=None, metavar="NAME",
                        dest="forward_headers", choices=["authorization", "cookie"], type=str.lower,
                        help="pass this client credential header to backends (stripped by default); repeatable")
    parser.add_argument("--upstream-timeout", type=float, default=None, metavar="SECONDS",
                        help="time a backend has to answer (default 60)")
    parser.add_argument("--connect-timeout", type=float, default=None, metavar="SECONDS",
                        help="time to open a backend connection (default 1)")
    parser.add_argument("--max-connections", type=int, default=None, metavar="N",
                        help="open connections per backend (default 64); more requests wait for one")
    parser.add_argument("--max-pending", type=int, default=None, metavar="N",
                        help="requests waiting for a connection, per backend (default 256); more get a 503")
    parser.add_argument("--queue-timeout", type=float, default=None, metavar="SECONDS",
                        help="longest wait for a backend connection before a 503 with Retry-After (default 1)")
    parser.add_argument("--retry-budget", type=float, default=None, metavar="SHARE",
                        help="retries as a share of requests, for failures before anything was sent (default 0.2)")
    parser.add_argument("--max-ejected-share", type=float, default=None, metavar="SHARE",
                        help="most of a version's backends ejected at once for failing (default 0.5; never the last)")
    parser.add_argument("--stats-spool", type=int, default=None, metavar="N",
                        help="stats reports kept in memory while Redis and the control plane are down (default 720)")
    parser.add_argument("--poll-interval", type=float, default=None, metavar="SECONDS",
                        help="HTTP polling period while Redis is unreachable (default 1)")
    parser.add_argument("--stats-interval", type=float, default=None, metavar="SECONDS",
                        help="period of per-version stats reports (default 5)")
    parser.add_argument("--shadow-max-inflight", type=int, default=None, metavar="N",
                        help="shadow mirrors in flight at once; more are dropped and counted (default 32)")
    parser.add_argument("--shadow-max-bytes", type=int, default=None, metavar="BYTES",
                        help="largest request or primary answer that is mirrored (default 1 MiB)")
    parser.add_argument("--shadow-timeout", type=float, default=None, metavar="SECONDS",
                        help="time a shadow backend has to answer (default 10)")
    parser.add_argument("--router-id", default=None, help="name in stats reports (default host:pid; with several workers, each adds :pid)")
    parser.add_argument("--http", default=None, choices=["lean", "uvicorn"],
                        help="HTTP server under the app: the lean built-in one (default) or uvicorn")
    parser.add_argument("--log-level", default="info", type=str.lower, choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = RouterSettings.load(
            host=args.host,
            port=args.port,
            workers=args.workers,
            control_plane=args.control_plane,
            snapshot_file=args.snapshot_file,
            max_body_bytes=args.max_body_bytes,
            max_response_bytes=args.max_response_bytes,
            max_line_bytes=args.max_line_bytes,
            max_header_bytes=args.max_header_bytes,
            max_headers=args.max_headers,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            max_client_connections=args.max_client_connections,
            forward_headers=tuple(args.forward_headers) if args.forward_headers else None,
            upstream_timeout=args.upstream_timeout,
            connect_timeout=args.connect_timeout,
            max_connections=args.max_connections,
            max_pending=args.max_pending,
            queue_timeout=args.queue_timeout,
            retry_budget=args.retry_budget,
            max_ejected_share=args.max_ejected_share,
            stats_spool=args.stats_spool,
            poll_interval=args.poll_interval,
            stats_interval=args.stats_interval,
            shadow_max_inflight=args.shadow_max_inflight,
            shadow_max_bytes=args.shadow_max_bytes,
            shadow_timeout=args.shadow_timeout,
            router_id=args.router_id,
            http=args.http,
            log_level=args.log_level,
        )
    except ValidationError as exc:
        problems = "; ".join(
            "".join(f"{part}: " for part in error["loc"][:1]) + error["msg"].removeprefix("Value error, ")
            for error in exc.errors()
        )
        logging.getLogger("grayroute.router").error("invalid router settings: %s", problems)  # one line
        return 2
    from router.server import serve  # uvicorn only when actually serving

    return serve(settings)


def main() -> int:
    """``python -m router``: the same command without the control plane's CLI."""
    parser = argparse.ArgumentParser(prog="grayroute router")
    add_arguments(parser)
    return run(parser.parse_args())
