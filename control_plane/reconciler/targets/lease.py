"""Leader election among reconciler replicas with a coordination.k8s.io/v1 Lease.

The client-go algorithm: the holder renews the Lease every few seconds; a
candidate takes it over only after it has watched the same record stay
unchanged for a whole lease duration (measured on its own monotonic clock,
so skewed wall clocks between nodes do not matter). Every write carries the
resourceVersion it read, so two candidates racing get one success and one
409 Conflict.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from control_plane.reconciler.targets.kubernetes import describe, raw_call

log = logging.getLogger(__name__)

LEASE_NAME = "grayroute-reconciler"


def _micro_time(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaseElector:
    def __init__(
        self,
        *,
        api_client: client.ApiClient,
        namespace: str,
        name: str = LEASE_NAME,
        identity: str | None = None,
        lease_seconds: float = 15.0,
        renew_seconds: float = 5.0,
        request_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.request_timeout = request_timeout
        self._clock = clock
        self._observed: tuple[str | None, str | None] | None = None  # (holder, renewTime)
        self._observed_at = 0.0
        self._renewed_at: float | None = None

    @property
    def is_leader(self) -> bool:
        """True while our last successful renewal is younger than the lease."""
        return self._renewed_at is not None and self._clock() - self._renewed_at < self.lease_seconds

    # ------------------------------------------------------------ blocking steps

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return raw_call(method, *args, timeout=self.request_timeout, **kwargs)

    def _spec(self, transitions: int, acquired: str | None) -> dict[str, Any]:
        now = _micro_time(datetime.now(UTC))
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, int(round(self.lease_seconds))),
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def try_acquire_or_renew(self) -> bool:
        """One election round. Returns whether we hold the Lease afterwards."""
        started = self._clock()
        try:
            lease = self._call(self.api.read_namespaced_lease, self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("reading lease %s/%s: %s", self.namespace, self.name, describe(exc))
                return self.is_leader
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(0, None),
            }
            try:
                self._call(self.api.create_namespaced_lease, self.namespace, body)
            except ApiException as create_exc:
                if create_exc.status != 409:
                    log.warning("creating lease: %s", describe(create_exc))
                return self.is_leader if create_exc.status != 409 else self._lost()
            return self._won(started)
        except Exception as exc:  # noqa: BLE001 - network trouble: keep the current view until the lease runs out
            log.warning("reading lease %s/%s: %s", self.namespace, self.name, describe(exc))
            return self.is_leader

        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"))
        if record != self._observed:
            self._observed, self._observed_at = record, started
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = not holder or started - self._observed_at >= duration
        if holder != self.identity and not expired:
            return self._lost()
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        lease["spec"] = self._spec(transitions, acquired)
        try:
            updated = self._call(self.api.replace_namespaced_lease, self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return self._lost()
            log.warning("renewing lease: %s", describe(exc))
            return self.is_leader
        except Exception as exc:  # noqa: BLE001
            log.warning("renewing lease: %s", describe(exc))
            return self.is_leader
        new_spec = updated.get("spec") or {}
        self._observed, self._observed_at = (new_spec.get("holderIdentity"), new_spec.get("renewTime")), started
        return self._won(started)

    def release(self) -> None:
        """Give the Lease up on a clean stop, so another replica takes over at once."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self._call(self.api.read_namespaced_lease, self.name, self.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = None
            lease["spec"]["leaseDurationSeconds"] = 1
            self._call(self.api.replace_namespaced_lease, self.name, self.namespace, lease)
        except Exception as exc:  # noqa: BLE001 - it will simply expire
            log.info("releasing lease: %s", describe(exc))

    def _won(self, started: float) -> bool:
        self._renewed_at = started
        return True

    def _lost(self) -> bool:
        self._renewed_at = None
        return False

    # ------------------------------------------------------------ async face

    async def run(self, on_change: Callable[[bool], None], stop: asyncio.Event) -> None:
        """Renew every ``renew_seconds`` (retry faster when not leader) until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        leading = False
        while not stop.is_set():
            now_leading = await loop.run_in_executor(None, self.try_acquire_or_renew)
            if now_leading != leading:
                leading = now_leading
                log.info("%s %s leadership", self.identity, "acquired" if leading else "lost")
                on_change(leading)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.renew_seconds)
            except TimeoutError:
                pass
        await loop.run_in_executor(None, self.release)
