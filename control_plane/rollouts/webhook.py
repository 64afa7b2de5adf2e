"""Rollout events posted to a webhook (``GRAYROUTE_WEBHOOK_URL``), in the background, retried, never blocking.

Events wait in a bounded queue; one task posts them in order, retrying each
with backoff for about a minute. A full queue drops the oldest event (and logs
it): the audit log, not the webhook, is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
ATTEMPTS = 6
FIRST_BACKOFF_SECONDS = 0.5


class Webhook:
    def __init__(self, url: str | None, *, timeout_seconds: float = 5.0) -> None:
        self.url = url
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._timeout = timeout_seconds
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.dropped = 0

    def send(self, event: str, **fields: Any) -> None:
        """Queue an event; returns at once (never awaits the network)."""
        if self.url is None:
            return
        payload = {"event": event, "at": time.time(), **fields}
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            log.warning("webhook queue full: dropped the oldest event")
        self._queue.put_nowait(payload)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self.url is not None
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            while not self._queue.empty():
                payload = self._queue.get_nowait()
                await self._post(client, payload)

    async def _post(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
        assert self.url is not None
        backoff = FIRST_BACKOFF_SECONDS
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await client.post(self.url, json=payload)
                if response.status_code < 500 and response.status_code != 429:
                    self.delivered += 1
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < ATTEMPTS:
                await asyncio.sleep(backoff)
                backoff *= 2
        self.dropped += 1
        log.warning("webhook %s: gave up on event %s after %d attempts (%s)", self.url, payload.get("event"),
                    ATTEMPTS, problem)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
