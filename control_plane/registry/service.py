"""Registry logic: models, versions, engines, pools and external endpoints (no HTTP here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from control_plane.audit import service as audit_service
from control_plane.auth.service import Actor
from control_plane.changes import Committer, bump
from control_plane.db import flush_or_raise, utcnow
from control_plane.errors import Conflict, InvalidInput, NotFound
from control_plane.registry.compatibility import trt_compatible
from control_plane.registry.endpoints import url_problem
from control_plane.registry.models import Engine, Model, Pool, PoolKind, Version, VersionStatus
from control_plane.registry.schemas import (
    DynamicBatching,
    EngineCreate,
    ModelCreate,
    ModelUpdate,
    PoolPut,
    Signature,
    VersionCreate,
    VersionUpdate,
)
from router.policy import Policy


@dataclass(frozen=True, slots=True)
class LivePolicy:
    """A model's live traffic revision, as far as the registry needs to know it."""

    revision: int
    policy: Policy


class LivePolicies(Protocol):
    """What the registry asks of traffic policies.

    ``traffic`` sits above the registry and implements this
    (``traffic.service.LIVE_POLICIES``); the app passes it in, so the registry
    never imports the layer above it.
    """

    async def live(self, session: AsyncSession, *, model_ids: Sequence[int]) -> dict[int, LivePolicy]: ...

    async def rebucket(self, session: AsyncSession, *, model: Model, actor: Actor, reason: str) -> None: ...


class RegisteredEndpoints(Protocol):
    """The backend URLs registered on a pool, as ("model/version", url) pairs.

    ``deployments`` sits above the registry and implements this
    (``deployments.service.REGISTERED_ENDPOINTS``); the app passes it in.
    """

    async def on_pool(self, session: AsyncSession, *, pool_id: int) -> list[tuple[str, str]]: ...


def model_state(model: Model) -> dict[str, Any]:
    return {"name": model.name, "description": model.description, "key_header": model.key_header,
            "salt": model.salt, "anonymous": model.anonymous, "replicas": dict(model.replicas)}


def version_state(version: Version) -> dict[str, Any]:
    return {"version": version.version, "precision": version.precision, "trt_version": version.trt_version,
            "status": version.status, "notes": version.notes, "warm": version.warm,
            "signature": version.signature, "dynamic_batching": version.dynamic_batching,
            "engines": [engine_state(e) for e in version.engines]}


def engine_state(engine: Engine) -> dict[str, Any]:
    return {"gpu_arch": engine.gpu_arch, "uri": engine.uri, "sha256": engine.sha256,
            "size_bytes": engine.size_bytes, "trt_version": engine.trt_version}


def pool_state(pool: Pool) -> dict[str, Any]:
    return {"name": pool.name, "gpu_arch": pool.gpu_arch, "kind": pool.kind, "namespace": pool.namespace,
            "node_selector": dict(pool.node_selector), "runtime_image": pool.runtime_image,
            "trt_version": pool.trt_version, "allowed_endpoints": list(pool.allowed_endpoints or []),
            "engine_credentials": pool.engine_credentials, "gpu_hourly_price": _price_text(pool.gpu_hourly_price),
            "currency": pool.currency, "gpus_per_replica": pool.gpus_per_replica}


def _price_text(price: Decimal | None) -> str | None:
    # Exact and JSON-safe for the audit log; 2.5 and the column's 2.5000 read the same, so no false "changed".
    return None if price is None else format(Decimal(price).normalize(), "f")


# --- models ---------------------------------------------------------------------------------

async def get_model(session: AsyncSession, *, name: str, for_update: bool = False) -> Model | None:
    """A model by name, or None."""
    query = select(Model).where(Model.name == name)
    if for_update:
        query = query.with_for_update()
    return (await session.scalars(query)).first()


async def get_model_or_raise(session: AsyncSession, *, name: str, for_update: bool = False) -> Model:
    """A model by name, or NotFound."""
    model = await get_model(session, name=name, for_update=for_update)
    if model is None:
        raise NotFound(f"model {name!r} not found", {"model": name})
    return model


async def list_models(session: AsyncSession) -> Sequence[Model]:
    """Every model, by name, with its versions loaded."""
    return (await session.scalars(select(Model).options(selectinload(Model.versions)).order_by(Model.name))).all()


async def _check_pools_exist(session: AsyncSession, names: Sequence[str], field: str) -> None:
    if not names:
        return
    known = set((await session.scalars(select(Pool.name).where(Pool.name.in_(names)))).all())
    missing = sorted(set(names) - known)
    if missing:
        raise InvalidInput(f"{field}: unknown pools {missing}",
                           [{"field": f"{field}.{n}", "reason": "no such pool"} for n in missing])


async def create_model(session: AsyncSession, *, body: ModelCreate, actor: Actor) -> Model:
    """Register a model; 409 when the name is taken."""
    if await get_model(session, name=body.name) is not None:
        raise Conflict(f"model {body.name!r} already exists", {"model": body.name})
    await _check_pools_exist(session, list(body.replicas), "replicas")
    model = Model(name=body.name, description=body.description, key_header=body.key_header,
                  salt=body.salt or body.name, anonymous=body.anonymous, replicas=dict(body.replicas),
                  created_by=actor.name)
    session.add(model)
    await flush_or_raise(session, Conflict(f"model {body.name!r} already exists", {"model": body.name}))
    await audit_service.record(session, actor=actor, action="model.create", target_type="model", target=model.name,
                               model=model.name, after=model_state(model))
    await session.commit()
    return model


async def update_model(session: AsyncSession, *, name: str, body: ModelUpdate, actor: Actor,
                       publisher: Committer, policies: LivePolicies) -> Model:
    """Change a model's settings; a new salt rebuckets everyone (a fresh allocation)."""
    model = await get_model_or_raise(session, name=name, for_update=True)
    before = model_state(model)
    changes = body.model_dump(exclude_unset=True, exclude={"reason"}, exclude_none=True)
    if "replicas" in changes:
        await _check_pools_exist(session, list(changes["replicas"]), "replicas")
    if changes.get("anonymous") == "default":
        current = (await policies.live(session, model_ids=[model.id])).get(model.id)
        if current is None or current.policy.default_version is None:
            raise InvalidInput.field("anonymous", "'default' needs a traffic policy with a default_version first")
    for field, value in changes.items():
        setattr(model, field, value)
    after = model_state(model)
    if after == before:
        return model
    if after["salt"] != before["salt"]:
        await policies.rebucket(session, model=model, actor=actor, reason=body.reason)
    await audit_service.record(session, actor=actor, action="model.update", target_type="model", target=name,
                               model=name, before=before, after=after, reason=body.reason)
    if any(after[k] != before[k] for k in ("key_header", "salt", "anonymous", "replicas")):
        await bump(session, model_id=model.id)
    await publisher.commit(session)
    return model


# --- versions and engines -------------------------------------------------------------------

async def get_version(session: AsyncSession, *, model: Model, version: str) -> Version | None:
    """A version of ``model`` with its engines, or None."""
    return (await session.scalars(
        select(Version).options(selectinload(Version.engines))
        .where(Version.model_id == model.id, Version.version == version)
    )).first()


async def get_version_or_raise(session: AsyncSession, *, model: Model, version: str) -> Version:
    """A version of ``model``, or NotFound."""
    found = await get_version(session, model=model, version=version)
    if found is None:
        raise NotFound(f"version {version!r} of model {model.name!r} not found",
                       {"model": model.name, "version": version})
    return found


async def list_versions(session: AsyncSession, *, model: Model) -> Sequence[Version]:
    """Every version of ``model``, oldest first, with engines."""
    return (await session.scalars(
        select(Version).options(selectinload(Version.engines)).where(Version.model_id == model.id)
        .order_by(Version.id)
    )).all()


def _check_engine_uris(engines: Sequence[EngineCreate], *, allow_http: bool, field: str) -> None:
    problems = [{"field": field.format(i=i), "reason": "http:// engine URIs are refused here (a plain-HTTP fetch can "
                                                      "be tampered with on the way); use s3://, gs:// or https://"}
                for i, e in enumerate(engines) if e.uri.startswith("http://") and not allow_http]
    if problems:
        raise InvalidInput(f"{problems[0]['field']}: {problems[0]['reason']}", problems)


def _engine(body: EngineCreate, default_trt: str) -> Engine:
    return Engine(gpu_arch=body.gpu_arch, uri=body.uri, sha256=body.sha256, size_bytes=body.size_bytes,
                  trt_version=body.trt_version or default_trt,
                  benchmark=body.benchmark.model_dump(exclude_none=True) if body.benchmark else None)


def _check_signature(signature: Signature | None, batching: DynamicBatching | None) -> None:
    """Rules across fields that Triton would otherwise refuse at load time, inside a pod."""
    problems: list[dict[str, str]] = []
    if signature is not None:
        for side in ("inputs", "outputs"):
            tensors = getattr(signature, side)
            names = [t.name for t in tensors]
            for i, tensor in enumerate(tensors):
                if names.index(tensor.name) != i:
                    problems.append({"field": f"signature.{side}[{i}].name",
                                     "reason": f"{tensor.name!r} is named twice"})
                if signature.max_batch_size > 0 and (not tensor.shape or tensor.shape[0] != -1):
                    problems.append({"field": f"signature.{side}[{i}].shape",
                                     "reason": "with max_batch_size > 0 the first dimension is the batch and "
                                               "must be -1"})
                elif not tensor.shape and side == "inputs":
                    problems.append({"field": f"signature.{side}[{i}].shape", "reason": "needs a dimension"})
    if batching is not None:
        limit = signature.max_batch_size if signature is not None else 0
        if limit == 0:
            problems.append({"field": "dynamic_batching",
                             "reason": "needs a signature with max_batch_size > 0 (there is nothing to batch)"})
        else:
            for i, size in enumerate(batching.preferred_batch_size):
                if size > limit:
                    problems.append({"field": f"dynamic_batching.preferred_batch_size[{i}]",
                                     "reason": f"{size} exceeds max_batch_size {limit}"})
    if problems:
        raise InvalidInput("; ".join(f"{p['field']}: {p['reason']}" for p in problems), problems)


async def create_version(session: AsyncSession, *, model_name: str, body: VersionCreate, actor: Actor,
                         publisher: Committer, allow_http_engines: bool = False) -> Version:
    """Register a version with its engines; 409 when the label is taken."""
    _check_engine_uris(body.engines, allow_http=allow_http_engines, field="engines[{i}].uri")
    _check_signature(body.signature, body.dynamic_batching)
    model = await get_model_or_raise(session, name=model_name, for_update=True)
    if await get_version(session, model=model, version=body.version) is not None:
        raise Conflict(f"version {body.version!r} of model {model.name!r} already exists",
                       {"model": model.name, "version": body.version})
    archs = [e.gpu_arch for e in body.engines]
    duplicates = sorted({a for a in archs if archs.count(a) > 1})
    if duplicates:
        raise InvalidInput(f"engines: more than one engine for {duplicates}",
                           [{"field": f"engines[{archs.index(a)}].gpu_arch", "reason": "duplicate architecture"}
                            for a in duplicates])
    version = Version(model_id=model.id, version=body.version, precision=body.precision,
                      trt_version=body.trt_version, source_uri=body.source_uri, source_sha256=body.source_sha256,
                      notes=body.notes, warm=body.warm, registered_by=actor.name,
                      signature=body.signature.model_dump(mode="json") if body.signature else None,
                      dynamic_batching=(body.dynamic_batching.model_dump(mode="json")
                                        if body.dynamic_batching else None),
                      engines=[_engine(e, body.trt_version) for e in body.engines])
    session.add(version)
    await flush_or_raise(session, Conflict(f"version {body.version!r} of model {model.name!r} already exists"))
    await audit_service.record(session, actor=actor, action="version.create", target_type="version",
                               target=f"{model.name}/{version.version}", model=model.name,
                               after=version_state(version))
    if body.warm:
        await bump(session, model_id=model.id)  # wakes reconcilers: a warm version deploys now
    await publisher.commit(session)
    return version


async def update_version(session: AsyncSession, *, model_name: str, version: str, body: VersionUpdate,
                         actor: Actor, publisher: Committer) -> Version:
    """Change notes or the warm flag."""
    model = await get_model_or_raise(session, name=model_name)
    found = await get_version_or_raise(session, model=model, version=version)
    if found.status == VersionStatus.RETIRED and body.warm:
        raise Conflict(f"version {version!r} is retired and cannot be kept warm")
    before = version_state(found)
    if body.notes is not None:
        found.notes = body.notes
    if body.warm is not None:
        found.warm = body.warm
    after = version_state(found)
    if after == before:
        return found
    await audit_service.record(session, actor=actor, action="version.update", target_type="version",
                               target=f"{model.name}/{version}", model=model.name, before=before, after=after)
    if before["warm"] != after["warm"]:
        await bump(session, model_id=model.id)
    await publisher.commit(session)
    return found


async def retire_version(session: AsyncSession, *, model_name: str, version: str, actor: Actor,
                         publisher: Committer, policies: LivePolicies) -> Version:
    """Retire a version; 409 while the live policy still routes to it."""
    model = await get_model_or_raise(session, name=model_name, for_update=True)
    found = await get_version_or_raise(session, model=model, version=version)
    if found.status == VersionStatus.RETIRED:
        return found
    current = (await policies.live(session, model_ids=[model.id])).get(model.id)
    if current is not None:
        uses = current.policy.uses_of(version)
        if uses:
            raise Conflict(f"version {version!r} still {', '.join(uses)}; move its traffic first",
                           {"version": version, "uses": uses})
    before = version_state(found)
    found.status = VersionStatus.RETIRED
    found.warm = False
    found.retired_at = utcnow()
    await audit_service.record(session, actor=actor, action="version.retire", target_type="version",
                               target=f"{model.name}/{version}", model=model.name, before=before,
                               after=version_state(found))
    await bump(session, model_id=model.id)
    await publisher.commit(session)
    return found


async def add_engine(session: AsyncSession, *, model_name: str, version: str, body: EngineCreate, actor: Actor,
                     publisher: Committer, allow_http_engines: bool = False) -> Engine:
    """Add the engine for another GPU architecture; 409 when that architecture has one."""
    _check_engine_uris([body], allow_http=allow_http_engines, field="uri")
    model = await get_model_or_raise(session, name=model_name)
    found = await get_version_or_raise(session, model=model, version=version)
    if found.status == VersionStatus.RETIRED:
        raise Conflict(f"version {version!r} is retired")
    if any(e.gpu_arch == body.gpu_arch for e in found.engines):
        raise Conflict(f"version {version!r} already has an engine for {body.gpu_arch}",
                       {"gpu_arch": body.gpu_arch})
    engine = _engine(body, found.trt_version)
    found.engines.append(engine)
    await flush_or_raise(session, Conflict(f"version {version!r} already has an engine for {body.gpu_arch}"))
    await audit_service.record(session, actor=actor, action="engine.create", target_type="engine",
                               target=f"{model.name}/{version}/{engine.gpu_arch}", model=model.name,
                               after=engine_state(engine))
    await bump(session, model_id=model.id)  # a new architecture may be deployable now
    await publisher.commit(session)
    return engine


async def runnable_pools(session: AsyncSession, *, version: Version) -> list[Pool]:
    """Pools with an engine of ``version`` built for their architecture and TensorRT version."""
    if not version.engines:
        return []
    archs = {e.gpu_arch for e in version.engines}
    pools = (await session.scalars(select(Pool).where(Pool.gpu_arch.in_(archs)))).all()
    # The reconciler's rule, so the API never accepts what the reconciler would refuse ("10.3" == "10.3.0").
    return [p for p in pools if any(e.gpu_arch == p.gpu_arch and trt_compatible(e.trt_version, p.trt_version)
                                    for e in version.engines)]


# --- pools ----------------------------------------------------------------------------------

async def get_pool_or_raise(session: AsyncSession, *, name: str) -> Pool:
    """A pool by name, or NotFound."""
    pool = (await session.scalars(select(Pool).where(Pool.name == name))).first()
    if pool is None:
        raise NotFound(f"pool {name!r} not found", {"pool": name})
    return pool


async def list_pools(session: AsyncSession) -> Sequence[Pool]:
    """Every pool, by name."""
    return (await session.scalars(select(Pool).order_by(Pool.name))).all()


async def _upsert_pool(session: AsyncSession, *, name: str, body: PoolPut, actor: Actor,
                       registered: RegisteredEndpoints) -> tuple[Pool, bool, bool]:
    """(pool, created, changed)."""
    pool = (await session.scalars(select(Pool).where(Pool.name == name).with_for_update())).first()
    if body.kind == PoolKind.KUBERNETES and not body.runtime_image:
        raise InvalidInput.field("runtime_image", "required for kubernetes pools (the Triton image to run)")
    if body.allowed_endpoints and body.kind != PoolKind.EXTERNAL:
        raise InvalidInput.field("allowed_endpoints", "only external pools take endpoints "
                                                      "(the reconciler manages the others)")
    if body.engine_credentials is not None and body.kind != PoolKind.KUBERNETES:
        raise InvalidInput.field("engine_credentials", f"only kubernetes pools fetch engines; a {body.kind.value} "
                                                       "pool has nothing to give them to")
    # A price without its currency cannot be read; a currency without a price says nothing.
    if body.gpu_hourly_price is not None and body.currency is None:
        raise InvalidInput.field("currency", "required with gpu_hourly_price (an ISO 4217 code such as USD)")
    if body.currency is not None and body.gpu_hourly_price is None:
        raise InvalidInput.field("gpu_hourly_price", "required with currency (what one GPU-hour costs)")
    values = body.model_dump()
    values["engine_credentials"] = (body.engine_credentials.model_dump(exclude_none=True)
                                    if body.engine_credentials else None)
    if pool is None:
        pool = Pool(name=name, **values)
        session.add(pool)
        # Another PUT may have created it between our read and our insert.
        await flush_or_raise(session, Conflict(f"pool {name!r} was created concurrently; retry", {"pool": name}))
        await audit_service.record(session, actor=actor, action="pool.create", target_type="pool", target=name,
                                   after=pool_state(pool))
        return pool, True, True
    before = pool_state(pool)
    if body.allowed_endpoints != before["allowed_endpoints"]:
        await _check_registered_endpoints_stay_allowed(session, pool=pool, allowed=body.allowed_endpoints,
                                                       registered=registered)
    for field, value in values.items():
        setattr(pool, field, value)
    after = pool_state(pool)
    if before != after:
        await audit_service.record(session, actor=actor, action="pool.update", target_type="pool", target=name,
                                   before=before, after=after)
    return pool, False, before != after


async def _check_registered_endpoints_stay_allowed(session: AsyncSession, *, pool: Pool, allowed: list[str],
                                                   registered: RegisteredEndpoints) -> None:
    # Every registered endpoint stays within its pool's list, so the list always says where traffic goes.
    outside = sorted(f"{what}: {url}" for what, url in await registered.on_pool(session, pool_id=pool.id)
                     if url_problem(url, allowed) is not None)
    if outside:
        raise Conflict(f"allowed_endpoints would exclude endpoints registered on pool {pool.name!r}: "
                       f"{', '.join(outside[:5])}{' …' if len(outside) > 5 else ''}; replace those first",
                       {"field": "allowed_endpoints", "outside": outside})


async def put_pool(session: AsyncSession, *, name: str, body: PoolPut, actor: Actor, publisher: Committer,
                   registered: RegisteredEndpoints) -> tuple[Pool, bool]:
    """Create or replace a pool; returns (pool, created)."""
    pool, created, changed = await _upsert_pool(session, name=name, body=body, actor=actor, registered=registered)
    if changed:
        await bump(session)
    await publisher.commit(session)
    return pool, created


async def import_pools(session: AsyncSession, *, pools: dict[str, PoolPut], actor: Actor,
                       publisher: Committer, registered: RegisteredEndpoints) -> int:
    """Upsert many pools in one transaction (Helm install); returns how many changed."""
    changed = 0
    for name, body in pools.items():
        _, _, did_change = await _upsert_pool(session, name=name, body=body, actor=actor, registered=registered)
        changed += did_change
    if changed:
        await bump(session)
    await publisher.commit(session)
    return changed
