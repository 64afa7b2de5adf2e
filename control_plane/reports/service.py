"""The version report: what a candidate engine buys over the baseline, per GPU architecture (no HTTP here).

Two kinds of evidence meet here. ``trtexec`` figures are registered with each
engine: capacity measured on one GPU. Live figures come from the routers
(``stats.service``): what users got, per (version, pool, gpu_arch). Cost per
million inferences is

    hourly price x GPUs per replica / (inferences per second per replica x 3,600) x 10^6

from the live throughput per replica (requests served / ready replicas) where a
version served at least ``MIN_REQUESTS`` on the priced pool and its replicas are
known, else from ``trtexec``. Live throughput is what the replicas carried,
not what they could carry: it prices today's utilisation, trtexec prices a
full GPU. GPUs needed for the current traffic use trtexec's capacity, since the
live rate of an under-used replica would only give back the replicas running.
A figure without enough evidence is null with the reason, never zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.deployments import service as deployments_service
from control_plane.errors import InvalidInput
from control_plane.parity import service as parity_service
from control_plane.parity.schemas import PairParity
from control_plane.registry import service as registry_service
from control_plane.registry.models import Engine, Model, Pool, Version, VersionStatus
from control_plane.reports.schemas import (
    ArchitectureReport,
    Better,
    Figure,
    Metric,
    PoolCost,
    SkippedArchitecture,
    Source,
    VersionReport,
)
from control_plane.stats import service as stats_service
from control_plane.traffic import service as traffic_service
from router.stats import VersionWindow, percentile_ms

MIN_REQUESTS = 200  # as the live-figures panel and the rollout analysis: fewer, and a p99 is mostly noise
HOURS_PER_MONTH = 730  # 365 x 24 / 12
MAX_PARITY_WINDOW = 3600  # parity windows are kept an hour


@dataclass(frozen=True, slots=True)
class _Side:
    """One version's evidence on one architecture."""

    version: Version
    engine: Engine
    served: VersionWindow  # everything it served on the architecture's pools
    on_pool: dict[str, VersionWindow]  # by pool name
    ready: dict[str, int]  # ready replicas by pool name


def _none(reason: str, unit: str = "requests") -> Figure:
    return Figure(value=None, source=Source.NONE, basis="", sample_size=None, sample_unit=unit,
                  note=f"not enough data: {reason}")


def _trtexec(side: _Side, key: str, what: str) -> Figure:
    value = (side.engine.benchmark or {}).get(key)
    if value is None:
        return _none(f"no trtexec {what} registered with the {side.engine.gpu_arch} engine of version "
                     f"{side.version.version}", "trtexec runs")
    return Figure(value=float(value), source=Source.TRTEXEC, sample_size=1, sample_unit="trtexec runs",
                  basis=f"trtexec, as registered with the {side.engine.gpu_arch} engine of version "
                        f"{side.version.version}")


def _live(side: _Side, window: int, arch: str, *, value: float | None, needs: int = MIN_REQUESTS) -> Figure:
    n = side.served.requests
    if n == 0:
        return _none(f"version {side.version.version} served no requests on {arch} in the last {window} s")
    if n < needs or value is None:
        return _none(f"{n} requests served by version {side.version.version} on {arch} in the last {window} s; "
                     f"{needs} needed")
    return Figure(value=value, source=Source.LIVE, sample_size=n, sample_unit="requests",
                  basis=f"routers' windows, last {window} s, requests version {side.version.version} served on {arch}")


def _change(baseline: Figure, candidate: Figure) -> float | None:
    if baseline.value is None or candidate.value is None or baseline.value == 0:
        return None
    return (candidate.value - baseline.value) / baseline.value * 100


def _metric(metric: str, label: str, unit: str, better: Better, baseline: Figure, candidate: Figure) -> Metric:
    return Metric(metric=metric, label=label, unit=unit, better=better, baseline=baseline, candidate=candidate,
                  change_percent=_change(baseline, candidate))


def _throughput_per_replica(side: _Side, pool: Pool, window: int) -> Figure:
    """Live where there is enough traffic on the priced pool and its replicas are known, else trtexec."""
    served = side.on_pool.get(pool.name, VersionWindow())
    replicas = side.ready.get(pool.name, 0)
    if served.requests >= MIN_REQUESTS and replicas > 0:
        return Figure(value=served.requests / window / replicas, source=Source.LIVE, sample_size=served.requests,
                      sample_unit="requests",
                      basis=f"{served.requests} requests in {window} s over {replicas} ready "
                            f"replica{'s' if replicas != 1 else ''} on pool {pool.name} (what they carried)")
    why = (f"{served.requests} requests on pool {pool.name} in the last {window} s ({MIN_REQUESTS} needed)"
           if served.requests < MIN_REQUESTS else f"no ready replicas known on pool {pool.name}")
    capacity = (side.engine.benchmark or {}).get("throughput")
    if capacity is None or capacity <= 0:
        return _none(f"{why}, and no trtexec throughput registered for {side.engine.gpu_arch}")
    return Figure(value=float(capacity), source=Source.TRTEXEC, sample_size=1, sample_unit="trtexec runs",
                  basis=f"trtexec throughput of the {side.engine.gpu_arch} engine (one engine per replica: "
                        "a full GPU's capacity)", note=f"live not used: {why}")


def _capacity(side: _Side) -> Figure:
    value = (side.engine.benchmark or {}).get("throughput")
    if value is None or value <= 0:
        return _none(f"no trtexec throughput registered with the {side.engine.gpu_arch} engine of version "
                     f"{side.version.version}", "trtexec runs")
    return Figure(value=float(value), source=Source.TRTEXEC, sample_size=1, sample_unit="trtexec runs",
                  basis=f"trtexec throughput of the {side.engine.gpu_arch} engine")


def _cost_per_million(tpr: Figure, pool: Pool) -> Figure:
    if tpr.value is None or tpr.value <= 0:
        return tpr.model_copy(update={"value": None, "source": Source.NONE})
    price = float(pool.gpu_hourly_price or 0)
    value = price * pool.gpus_per_replica / (tpr.value * 3600) * 1e6
    note = tpr.note
    if tpr.source == Source.LIVE:
        note = "prices the replicas' utilisation now: a version with a small share of traffic looks dear"
    return Figure(value=value, source=tpr.source, sample_size=tpr.sample_size, sample_unit=tpr.sample_unit,
                  note=note,
                  basis=f"{price:g} {pool.currency}/GPU-hour x {pool.gpus_per_replica} GPU/replica / "
                        f"({tpr.value:.4g} inferences/s per replica from {tpr.source.value} x 3,600) x 10^6")


def _gpus_needed(side: _Side, traffic: Figure, gpus_per_replica: int) -> Figure:
    capacity = (side.engine.benchmark or {}).get("throughput")
    if traffic.value is None:
        return traffic
    if capacity is None or capacity <= 0:
        return _none(f"no trtexec throughput registered with the {side.engine.gpu_arch} engine of version "
                     f"{side.version.version}")
    replicas = math.ceil(traffic.value / capacity)
    return Figure(value=float(replicas * gpus_per_replica), source=Source.COMPUTED,
                  sample_size=traffic.sample_size, sample_unit="requests",
                  basis=f"current traffic {traffic.value:.4g} req/s / trtexec throughput {capacity:g}/s per "
                        f"replica, rounded up to {replicas} replica{'s' if replicas != 1 else ''}, "
                        f"x {gpus_per_replica} GPU/replica")


def _monthly(gpus: Figure, pool: Pool) -> Figure:
    if gpus.value is None:
        return gpus
    price = float(pool.gpu_hourly_price or 0)
    return Figure(value=gpus.value * price * HOURS_PER_MONTH, source=Source.COMPUTED,
                  sample_size=gpus.sample_size, sample_unit=gpus.sample_unit,
                  basis=f"{gpus.value:g} GPUs x {price:g} {pool.currency}/GPU-hour x {HOURS_PER_MONTH} h")


def _cost_pool(pools: Sequence[Pool], sides: Sequence[_Side]) -> Pool | None:
    priced = [p for p in pools if p.gpu_hourly_price is not None and p.currency]
    if not priced:
        return None

    def carried(pool: Pool) -> int:
        return sum(s.on_pool.get(pool.name, VersionWindow()).requests for s in sides)

    return sorted(priced, key=lambda p: (-carried(p), p.name))[0]


def _merged(windows: Iterable[VersionWindow]) -> VersionWindow:
    total = VersionWindow()
    for window in windows:
        total.add(window)
    return total


def _architecture(arch: str, *, pools: Sequence[Pool], base: _Side, cand: _Side, traffic: VersionWindow,
                  window: int, parity: list[PairParity], shadowed: bool, parity_window: int) -> ArchitectureReport:
    sides = (base, cand)
    metrics = [
        _metric(f"trtexec_{key}", f"trtexec {label}", unit, better, *(_trtexec(s, key, label) for s in sides))
        for key, label, unit, better in (("p50_ms", "p50 latency", "ms", Better.LOWER),
                                         ("p99_ms", "p99 latency", "ms", Better.LOWER),
                                         ("throughput", "throughput", "inferences/s", Better.HIGHER),
                                         ("gpu_mem_mb", "GPU memory", "MB", Better.LOWER))
    ]

    def live(side: _Side, key: str) -> Figure:
        w = side.served
        value: float | None = {
            "p50_ms": percentile_ms(w.buckets, 0.50), "p99_ms": percentile_ms(w.buckets, 0.99),
            "error_rate": w.errors / w.requests if w.requests else None,
        }.get(key)
        if key == "requests_per_second":  # a count over the window: any request is evidence of the rate
            return _live(side, window, arch, value=w.requests / window, needs=1)
        return _live(side, window, arch, value=value)

    metrics += [
        _metric(f"live_{key}", f"live {label}", unit, better, *(live(s, key) for s in sides))
        for key, label, unit, better in (("p50_ms", "p50 latency", "ms", Better.LOWER),
                                         ("p99_ms", "p99 latency", "ms", Better.LOWER),
                                         ("requests_per_second", "requests/s", "req/s", Better.NEITHER),
                                         ("error_rate", "error rate", "share", Better.LOWER))
    ]
    if traffic.requests:
        traffic_figure = Figure(value=traffic.requests / window, source=Source.LIVE, sample_size=traffic.requests,
                                sample_unit="requests",
                                basis=f"requests every version of the model served on {arch} in the last {window} s")
    else:
        traffic_figure = _none(f"no requests served on {arch} in the last {window} s")
    cost_pool = _cost_pool(pools, sides)
    cost_note = None
    if cost_pool is None:
        cost_note = (f"no pool of {arch}" if not pools else
                     f"no price set on the pools of {arch} ({', '.join(p.name for p in pools)}); an admin sets "
                     "gpu_hourly_price and currency on a pool")
        unpriced = _none(cost_note, "requests")
        gpus_per_replica = pools[0].gpus_per_replica if pools else 1
        gpus = [_gpus_needed(s, traffic_figure, gpus_per_replica) for s in sides]
        metrics += [_metric("cost_per_million", "cost per million inferences", "", Better.LOWER, unpriced, unpriced),
                    _metric("gpus_needed", "GPUs for the current traffic", "GPUs", Better.LOWER, *gpus),
                    _metric("monthly_cost", "monthly cost of those GPUs", "", Better.LOWER, unpriced, unpriced)]
    else:
        tpr = [_throughput_per_replica(s, cost_pool, window) for s in sides]
        capacity = [_capacity(s) for s in sides]
        gpus = [_gpus_needed(s, traffic_figure, cost_pool.gpus_per_replica) for s in sides]
        currency = cost_pool.currency or ""
        metrics += [
            _metric("throughput_per_replica", "throughput per replica (for cost)", "inferences/s", Better.HIGHER,
                    *tpr),
            _metric("cost_per_million", "cost per million inferences", currency, Better.LOWER,
                    *(_cost_per_million(t, cost_pool) for t in tpr)),
            # beside it, both at full capacity: a canary's replicas carry only its share, so its live cost
            # says more about the split than about the engine
            _metric("cost_per_million_at_capacity", "cost per million at trtexec throughput", currency,
                    Better.LOWER, *(_cost_per_million(c, cost_pool) for c in capacity)),
            _metric("gpus_needed", "GPUs for the current traffic", "GPUs", Better.LOWER, *gpus),
            _metric("monthly_cost", "monthly cost of those GPUs", currency, Better.LOWER,
                    *(_monthly(g, cost_pool) for g in gpus)),
        ]
    pairs = [p for p in parity if p.primary_gpu_arch == arch]
    parity_note = None
    if not pairs:
        parity_note = (f"shadowed, but no comparisons on {arch} in the last {parity_window} s" if shadowed else
                       "not shadowed: the live policy mirrors no requests between these two versions")
    return ArchitectureReport(
        gpu_arch=arch, pools=[p.name for p in pools],
        cost_pool=PoolCost(pool=cost_pool.name, gpu_hourly_price=float(cost_pool.gpu_hourly_price or 0),
                           currency=cost_pool.currency or "", gpus_per_replica=cost_pool.gpus_per_replica)
        if cost_pool else None,
        cost_note=cost_note, traffic=traffic_figure, metrics=metrics, parity=pairs, parity_note=parity_note)


async def _resolve(session: AsyncSession, *, model: Model, baseline: str | None, candidate: str | None,
                   default_version: str | None, weights: dict[str, float],
                   assigned: dict[str, int]) -> tuple[Version, Version]:
    if baseline is not None and baseline == candidate:
        raise InvalidInput.field("candidate", f"is the baseline ({baseline}); compare two different versions")
    if baseline is None:
        if default_version is None:
            raise InvalidInput.field("baseline", "the model has no traffic policy, so no default version; "
                                                 "name a baseline")
        baseline = default_version
    base = await registry_service.get_version_or_raise(session, model=model, version=baseline)
    if candidate is None:
        others = [v for v in await registry_service.list_versions(session, model=model)
                  if v.version != baseline and v.status != VersionStatus.RETIRED]
        if not others:
            raise InvalidInput.field("candidate", f"model {model.name!r} has no version besides {baseline} "
                                                  "to compare with")
        # the most traffic now, then the largest share of the split, then the newest
        candidate = max(others, key=lambda v: (assigned.get(v.version, 0), weights.get(v.version, 0.0),
                                               v.id)).version
    if candidate == baseline:
        raise InvalidInput.field("candidate", f"is the baseline ({baseline}); compare two different versions")
    cand = await registry_service.get_version_or_raise(session, model=model, version=candidate)
    return base, cand


async def build(session: AsyncSession, *, stats_store: stats_service.StatsStore,
                parity_store: parity_service.ParityStore, model_name: str, baseline: str | None,
                candidate: str | None, window: int, now: float | None = None) -> VersionReport:
    """Baseline against candidate per GPU architecture both have an engine for."""
    now = time.time() if now is None else now
    model = await registry_service.get_model_or_raise(session, name=model_name)
    if window > stats_store.retention:
        raise InvalidInput.field("window", f"figures are kept {stats_store.retention} s; ask for that or less")
    current = await traffic_service.get_current(session, model=model)
    cells = await stats_service.cells(stats_store, model=model.name, window=window, now=now)
    assigned: dict[str, int] = {}
    for (version, _, _, _), cell in cells.items():
        assigned[version] = assigned.get(version, 0) + cell.requests
    base, cand = await _resolve(session, model=model, baseline=baseline, candidate=candidate,
                                default_version=current.policy.default_version if current else None,
                                weights=current.policy.weights() if current else {}, assigned=assigned)
    pools = await registry_service.list_pools(session)
    ready: dict[tuple[str, str], int] = {
        (v.version, p.name): d.ready_replicas
        for d, v, p in await deployments_service.list_deployments(session, model=model)}
    parity_window = min(window, MAX_PARITY_WINDOW)
    labels = {base.version, cand.version}
    merged_parity = await parity_service.get(parity_store, model=model.name, window=parity_window, now=now)
    parity = [p for p in merged_parity.pairs if {p.shadow_version, p.primary_version} == labels]
    shadow = current.policy.shadow if current else None
    shadowed = shadow is not None and shadow.version in labels

    def side(version: Version, engine: Engine, arch_pools: Sequence[Pool]) -> _Side:
        names = {p.name for p in arch_pools}
        on_pool = {name: _merged(c for (_, served, pool, arch), c in cells.items()
                                 if served == version.version and pool == name and arch == engine.gpu_arch)
                   for name in names}
        return _Side(version=version, engine=engine, served=_merged(on_pool.values()), on_pool=on_pool,
                     ready={name: ready.get((version.version, name), 0) for name in names})

    base_engines = {e.gpu_arch: e for e in base.engines}
    cand_engines = {e.gpu_arch: e for e in cand.engines}
    architectures = []
    for arch in sorted(base_engines.keys() & cand_engines.keys()):
        arch_pools = [p for p in pools if p.gpu_arch == arch]
        traffic = _merged(c for (_, served, _, cell_arch), c in cells.items() if served and cell_arch == arch)
        architectures.append(_architecture(
            arch, pools=arch_pools, base=side(base, base_engines[arch], arch_pools),
            cand=side(cand, cand_engines[arch], arch_pools), traffic=traffic, window=window, parity=parity,
            shadowed=shadowed, parity_window=parity_window))
    skipped = [SkippedArchitecture(gpu_arch=arch, reason=f"only version {owner.version} has an engine for {arch}")
               for arch, owner in sorted([(a, base) for a in base_engines.keys() - cand_engines.keys()]
                                         + [(a, cand) for a in cand_engines.keys() - base_engines.keys()],
                                         key=lambda item: item[0])]
    return VersionReport(model=model.name, baseline=base.version, candidate=cand.version,
                         baseline_precision=str(base.precision), candidate_precision=str(cand.precision),
                         window_seconds=window, min_requests=MIN_REQUESTS,
                         generated_at=datetime.fromtimestamp(now, UTC), shadowed=shadowed,
                         architectures=architectures, skipped=skipped)


CSV_COLUMNS = ("gpu_arch", "metric", "label", "unit", "baseline_version", "baseline", "baseline_source",
               "baseline_sample_size", "baseline_sample_unit", "baseline_note", "candidate_version", "candidate",
               "candidate_source", "candidate_sample_size", "candidate_sample_unit", "candidate_note",
               "change_percent")


def rows(report: VersionReport) -> list[dict[str, Any]]:
    """One row per architecture x metric (the CSV export); missing figures stay empty, never 0."""
    out = []
    for arch in report.architectures:
        for m in arch.metrics:
            row: dict[str, Any] = {"gpu_arch": arch.gpu_arch, "metric": m.metric, "label": m.label, "unit": m.unit,
                                   "baseline_version": report.baseline, "candidate_version": report.candidate,
                                   "change_percent": "" if m.change_percent is None else f"{m.change_percent:.2f}"}
            for name, figure in (("baseline", m.baseline), ("candidate", m.candidate)):
                row[name] = "" if figure.value is None else repr(figure.value)
                row[f"{name}_source"] = figure.source.value
                row[f"{name}_sample_size"] = "" if figure.sample_size is None else figure.sample_size
                row[f"{name}_sample_unit"] = figure.sample_unit
                row[f"{name}_note"] = figure.note or ""
            out.append(row)
    return out
