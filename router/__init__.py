"""grayroute data plane: routing decisions and the KServe v2 proxy.

Never imports ``control_plane``: the hot process carries no ORM (an
import-linter contract in pyproject.toml keeps it so).

The shared kernel: ``routing``, ``policy``, ``snapshot`` and ``stats`` are
imported by the control plane on purpose, so routers, the control plane's
allocation, preview and route explanations, and the reconciler run one
implementation of the contract (``docs/routing.md``). What both sides agree
on is defined there once: the policy value (``policy.Policy``), the snapshot
schema, the Redis key names and the default key header (``snapshot``), the
stats report shapes and histogram bounds (``stats``). Keep these modules free
of router runtime concerns.

Modules, from the request inwards::

    server    processes: one worker per process, SO_REUSEPORT when several share a port
    http      the lean HTTP/1.1 server under the app (uvloop + httptools); uvicorn on request
    app       the raw ASGI app: parse the path, decide, proxy, answer
    routing   the routing spec (buckets, allocations, ``decide``)          [shared kernel]
    policy    a model's traffic policy as one typed value                   [shared kernel]
    snapshot  the snapshot schema, Redis key names, default key header       [shared kernel]
    table     the compiled snapshot: models, version groups (ejection cap, panic), ready sets
    upstream  keep-alive HTTP/1.1 client for backends: bounded pools, health, probing
    budget    the retry budget: retries stay under a share of requests
    config    where snapshots come from: file, control plane HTTP, Redis
    metrics   per-request accounting, rendered for Prometheus on scrape
    stats     histogram bounds and report shapes shared with the control plane [shared kernel]
    reporter  ships per-version windows to Redis or the control plane, spooling while both are down
    settings  the only reader of the environment

Hot-path choices, each measured (``tests/bench/bench_router.py`` and ad-hoc A/B
runs on the 2-core development machine; CPU time of the router process per
proxied request, same app and load):

- HTTP server: the lean built-in one ~50-54 us, uvicorn (uvloop + httptools)
  ~64-72 us, granian ~105 us (its runtime threads compete with the backends
  on 2 cores). The lean server writes each response in one syscall and skips
  uvicorn's per-header validation; ``--http uvicorn`` stays available.
- upstream client: asyncio protocol + httptools, ~2.6x less router CPU than
  the same app on aiohttp's client (an earlier httpx prototype managed a few
  hundred req/s at 32 connections).
- metrics: plain dict counters, ~0.3-0.6 us per request against ~4-5 us for a
  labelled ``prometheus_client`` counter plus histogram; rendered on scrape.
- ``decide``: a per-bucket owner table and set-probe rule pre-check, ~0.5 us.
- ``gc.freeze()`` after start keeps full collections off the long-lived heap.
"""
