"""``GET /healthz`` for the reconciler process: a few lines of asyncio, no web framework."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable


async def serve(host: str, port: int, check: Callable[[], tuple[bool, dict[str, object]]]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            path = line[1] if len(line) > 1 else ""
            if len(line) >= 2 and line[0] in ("GET", "HEAD") and path.split("?")[0] == "/healthz":
                ok, body = check()
                code, payload = (200, "OK") if ok else (503, "Service Unavailable"), json.dumps(body).encode()
            else:
                code, payload = (404, "Not Found"), b'{"error":"not found"}'
            writer.write(
                f"HTTP/1.1 {code[0]} {code[1]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
