"""Shadow traffic: mirror a sampled share of answered requests to the shadow version, then compare.

Sampling follows the design: the routing key's bucket under the salt
``salt + 0x1F + "shadow"`` (so the same users are mirrored every time, and
independently of which split they are in); anonymous requests at random.

The client never waits for a mirror: ``Mirror.offer`` runs after the
primary's answer is sent and only starts a background task. At most
``max_inflight`` mirrors run at once and none whose request or primary answer
is over ``max_bytes``; the rest are dropped and counted. Shadow failures are
counted, never surfaced, and never mark a backend as failed (the shadow
version may also carry real traffic). A shadow answer over ``max_bytes`` is
cut off and counted as an error, so memory held by mirrors is bounded by
``max_inflight x 3 x max_bytes`` (request, primary answer, shadow answer).
"""

from __future__ import annotations

import asyncio
import logging
import random

from router import errors
from router.parity import PairKey, ParityRecorder
from router.routing import BUCKETS, bucket_of
from router.upstream import Backend, Body, Headers, Response

log = logging.getLogger("grayroute.router.shadow")

SHADOW_HEADER = (b"x-grayroute-shadow", b"1")


class ShadowTarget:
    """One model's shadow: which version, and which share of keys."""

    __slots__ = ("salt", "threshold", "version")

    def __init__(self, salt: str, version: str, percent: float) -> None:
        self.version = version
        self.salt = salt + "\x1f" + "shadow"
        self.threshold = round(percent * 100)  # buckets below it are mirrored

    def sampled(self, key: str | None) -> bool:
        if key is None:
            return random.random() * BUCKETS < self.threshold
        return bucket_of(self.salt, key) < self.threshold


class Mirror:
    """Starts mirrors within the in-flight bound and records their outcome in ``parity``."""

    def __init__(self, parity: ParityRecorder, *, max_inflight: int, max_bytes: int, timeout: float) -> None:
        self.parity = parity
        self.max_inflight = max_inflight
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(self, key: PairKey, backend: Backend | None, method: str, target: bytes, headers: Headers,
              body: Body, primary: Response) -> None:
        """Mirror one answered request if the bound allows; never raises, never waits.

        ``body`` is the request's own pieces, kept by reference until the mirror ends
        (the bound above counts them): nothing is copied for the mirror.
        """
        if (backend is None or self.inflight >= self.max_inflight
                or sum(len(part) for part in body) > self.max_bytes or primary.size > self.max_bytes):
            self.parity.count(key, "dropped")
            return
        self.inflight += 1
        task = asyncio.get_running_loop().create_task(
            self._run(key, backend, method, target, [*headers, SHADOW_HEADER], body, primary))
        self._tasks.add(task)  # a strong reference until it ends
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: PairKey, backend: Backend, method: str, target: bytes, headers: Headers,
                   body: Body, primary: Response) -> None:
        try:
            self.parity.count(key, "mirrored")
            try:
                answer = await backend.request(method, target, headers, body, self.timeout, self.max_bytes)
            except errors.UpstreamTimeout:
                self.parity.count(key, "timeouts")
                return
            except errors.Overloaded:
                self.parity.count(key, "errors")  # the shadow backend sheds load: a mirror never waits for room
                return
            except errors.UpstreamError:
                self.parity.count(key, "errors")
                return
            if answer.status != 200:
                self.parity.count(key, "errors")
                return
            self.parity.compare(key, (primary.body, primary.headers), (answer.body, answer.headers))
        except Exception:  # a mirror must never take anything else down
            log.exception("shadow mirror failed")
        finally:
            self.inflight -= 1

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
