"""``grayroute reconcile``: run the reconcile loop against Kubernetes or local processes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from control_plane.reconciler.engine_server import Fault
from control_plane.reconciler.loop import Reconciler
from control_plane.settings import Settings

if TYPE_CHECKING:
    from control_plane.traffic.publisher import Notifier
    from control_plane.reconciler.targets import Target
    from control_plane.reconciler.targets.lease import LeaseElector

log = logging.getLogger(__name__)

_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", choices=["kubernetes", "local"], default="local",
                        help="where deployments run (default: local engine-server processes)")
    parser.add_argument("--namespace", help="Kubernetes namespace for the Lease and for pools without one "
                        "(default: the pod's own namespace, else 'default')")
    parser.add_argument("--drain-seconds", type=float, default=600.0,
                        help="how long a version that left the active set stays up (default 600)")
    parser.add_argument("--resync-seconds", type=float, default=30.0,
                        help="full pass interval when nothing wakes the loop (default 30)")
    parser.add_argument("--health-port", type=int, help="serve GET /healthz on this port")
    parser.add_argument("--health-host", default="0.0.0.0", help="address for the health endpoint")
    parser.add_argument("--workers", type=int, default=32, help="concurrent Kubernetes API requests")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds per Kubernetes API request")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--no-leader-election", action="store_true",
                        help="skip the Lease (only when a single replica runs)")
    parser.add_argument("--fetch-image", help="image of the init container that downloads engines")
    parser.add_argument("--state-dir", type=Path, help="local target: model cache and logs (default: settings)")


def run(args: argparse.Namespace) -> int:
    from control_plane.settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except (SettingsError, ValueError) as exc:
        raise SystemExit(f"grayroute: configuration error: {exc}") from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args, settings))
    return 0


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    with contextlib.suppress(OSError):
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


def local_faults(settings: Settings) -> dict[str, Fault]:
    """``GRAYROUTE_LOCAL_FAULTS`` as the local target takes it."""
    return {key: Fault(f.error_rate, f.extra_latency_ms) for key, f in settings.local_faults.items()}


async def main(args: argparse.Namespace, settings: Settings, stop: asyncio.Event | None = None) -> None:
    from control_plane.db import create_engine, session_factory
    from control_plane.traffic.publisher import SnapshotPublisher, notifier_for
    from control_plane.reconciler import health
    from control_plane.reconciler.service import DatabaseStore

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)

    engine = create_engine(settings)
    sessions = session_factory(engine)
    notifier = notifier_for(settings.redis_url)
    await notifier.start()
    publisher = SnapshotPublisher(sessions, notifier)
    elector: LeaseElector | None = None
    target: Target
    if args.target == "kubernetes":
        from control_plane.reconciler.targets.kubernetes import KubernetesTarget, load_api_client
        from control_plane.reconciler.targets.lease import LeaseElector

        namespace = _namespace(args)
        api_client = await asyncio.to_thread(load_api_client, pool_size=args.workers, kubeconfig=args.kubeconfig)
        extra = {"fetch_image": args.fetch_image} if args.fetch_image else {}
        target = KubernetesTarget(api_client=api_client, namespace=namespace, workers=args.workers,
                                  request_timeout=args.request_timeout, **extra)
        if not args.no_leader_election:
            elector = LeaseElector(api_client=api_client, namespace=namespace)
    else:
        from control_plane.reconciler.targets.local import LocalTarget

        target = LocalTarget(state_dir=args.state_dir or settings.state_dir, faults=local_faults(settings))

    reconciler = Reconciler(store=DatabaseStore(sessions, publisher), target=target, elector=elector,
                            drain_seconds=args.drain_seconds, resync_seconds=args.resync_seconds)
    server = None
    if args.health_port is not None:
        server = await health.serve(args.health_host, args.health_port, reconciler.health)
    follower = asyncio.create_task(_follow_changes(notifier, reconciler, stop))
    try:
        await reconciler.run(stop)
    finally:
        stop.set()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        if server is not None:
            server.close()
            await server.wait_closed()
        await target.close()
        await notifier.close()
        await engine.dispose()


async def _follow_changes(notifier: Notifier, reconciler: Reconciler, stop: asyncio.Event) -> None:
    """Every published snapshot revision (a routing change anywhere) wakes the loop."""
    seen = 0
    while not stop.is_set():
        try:
            latest = await notifier.wait_for_revision_after(seen, 5.0)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the periodic resync still covers us
            await asyncio.sleep(1.0)
            continue
        if latest > seen:
            seen = latest
            reconciler.wake()
