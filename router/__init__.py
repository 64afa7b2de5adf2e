"""grayroute data plane: routing decisions and the KServe v2 proxy.

Never imports ``control_plane``: the hot process carries no ORM.

Modules, from the request inwards::

    server    processes: one worker per process, SO_REUSEPORT when several share a port
    http      the lean HTTP/1.1 server under the app (uvloop + httptools); uvicorn on request
    app       the raw ASGI app: parse the path, decide, proxy, answer
    routing   the routing spec (buckets, allocations, ``decide``)
    table     the compiled snapshot: models, version groups, ready sets
    upstream  keep-alive HTTP/1.1 client for backends; ejection and probing
    config    where snapshots come from: file, control plane HTTP, Redis
    metrics   per-request accounting, rendered for Prometheus on scrape
    stats     histogram bounds and report shapes shared with the control plane
    reporter  ships per-version windows to Redis or the control plane
    settings  the only reader of the environment

Hot-path choices, each measured (``tests/bench/bench_router.py``; 2 cores):

- a lean built-in HTTP server over uvicorn over granian: uvicorn spent ~65 us
  of CPU per proxied request against granian's ~105 us (its runtime threads
  compete with the backends on 2 cores); the lean server ~20% less than uvicorn
  (one write per response, no per-header validation).
- an asyncio-protocol client with httptools over aiohttp: ~95 us against
  ~250 us of router CPU per request with the same app (httpx managed only a
  few hundred req/s at 32 connections).
- plain dict counters over ``prometheus_client`` per request: ~0.4 us against
  ~4-5 us for a labelled counter plus histogram.
- ``decide`` reads a per-bucket owner table and pre-checks rules: ~0.6-0.7 us.
"""
