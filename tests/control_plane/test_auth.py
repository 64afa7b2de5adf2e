"""Authentication and the role matrix: each role against each mutating endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from control_plane.auth.service import hash_token
from control_plane.settings import Settings
from tests.control_plane.conftest import ROLES, Api

ENGINE = {"gpu_arch": "sm_80", "uri": "s3://e/x.plan", "sha256": "a" * 64}

# (method, path, body, roles allowed). Bodies are valid, so an allowed role never sees 401/403.
MUTATIONS: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("POST", "/models", {"name": "m-{role}"}, {"admin", "publisher"}),
    ("PATCH", "/models/resnet50", {"description": "by {role}"}, {"admin", "publisher"}),
    ("POST", "/models/resnet50/versions", {"version": "v-{role}", "precision": "fp16", "trt_version": "10.3"},
     {"admin", "publisher"}),
    ("POST", "/models/resnet50/versions/5/engines", {**ENGINE, "gpu_arch": "sm_{n}"}, {"admin", "publisher"}),
    ("PATCH", "/models/resnet50/versions/5", {"notes": "by {role}"}, {"admin", "publisher", "release-manager"}),
    ("POST", "/models/resnet50/versions/r{n}/retire", None, {"admin", "publisher", "release-manager"}),
    ("PUT", "/models/resnet50/versions/3/endpoints", {"pool": "a100", "urls": ["http://10.0.0.1:8000"]},
     {"admin", "publisher"}),
    ("PUT", "/pools/pool-{n}", {"gpu_arch": "sm_80", "kind": "external", "trt_version": "10.3"}, {"admin"}),
    ("PUT", "/models/resnet50/traffic", {"default_version": "3", "splits": [{"version": "3", "weight": 100}]},
     {"admin", "release-manager"}),
    ("POST", "/tokens", {"name": "t-{role}", "role": "viewer"}, {"admin"}),
    ("POST", "/tokens/{token}/revoke", None, {"admin"}),
]


def _fill(body: dict[str, Any] | None, role: str, n: int) -> dict[str, Any] | None:
    if body is None:
        return None
    import json

    return json.loads(json.dumps(body).replace("{role}", role).replace("{n}", str(n)))


@pytest.mark.parametrize(("method", "path", "body", "allowed"), MUTATIONS, ids=[f"{m} {p}" for m, p, _, _ in MUTATIONS])
def test_role_matrix(api: Api, method: str, path: str, body: dict[str, Any] | None, allowed: set[str]) -> None:
    api.canary(weight=5)
    api.version("resnet50", "5")
    for n, role in enumerate(ROLES, start=60):
        if path.endswith("/retire"):
            api.version("resnet50", f"r{n}")  # each role tries to retire a version of its own
        if "{token}" in path:  # each role tries to revoke a throwaway token
            throwaway = api.post("/tokens", json={"name": f"revocable-{role}", "role": "viewer"}).json()["id"]
        headers = {}
        if path.endswith("/traffic"):
            headers["If-Match"] = api.get("/models/resnet50/traffic").headers["etag"]
        target = path.replace("{n}", str(n)).replace("{token}", str(throwaway) if "{token}" in path else "")
        response = api.as_(role).request(method, target, json=_fill(body, role, n), headers=headers)
        if role in allowed:
            assert response.is_success, (role, response.text)
        else:
            assert response.status_code == 403, (role, response.text)
            assert response.json()["error"]["code"] == "forbidden"


def test_missing_or_unknown_token_is_401(api: Api) -> None:
    assert api.as_(None).get("/models").status_code == 401
    assert api.as_(None).post("/models", json={"name": "x"}).status_code == 401
    response = api.as_(None).get("/models", headers={"Authorization": "Bearer gr_not-a-real-token"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_reads_are_open_to_every_human_role_but_not_routers(api: Api) -> None:
    api.canary()
    for role in ("admin", "publisher", "release-manager", "viewer"):
        assert api.as_(role).get("/models/resnet50/traffic").status_code == 200
    assert api.as_("router").get("/models").status_code == 403
    assert api.as_("router").get("/snapshot").status_code == 200


def test_token_is_shown_once_and_only_its_hash_is_stored(api: Api, cp_settings: Settings) -> None:
    response = api.post("/tokens", json={"name": "ci-pipeline", "role": "publisher"})
    assert response.status_code == 201
    token = response.json()["token"]
    assert token.startswith("gr_") and len(token) > 40

    async def stored() -> list[Any]:
        engine = create_async_engine(cp_settings.database_url, poolclass=NullPool)
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT * FROM tokens WHERE name = 'ci-pipeline'"))).mappings().all()
        await engine.dispose()
        return list(rows)

    rows = asyncio.run(stored())
    assert len(rows) == 1
    assert rows[0]["token_hash"] == hash_token(token)
    assert token not in {str(v) for v in rows[0].values()}
    # The new token works with its role.
    created = api.as_(None).post("/models", json={"name": "from-ci"}, headers={"Authorization": f"Bearer {token}"})
    assert created.status_code == 201
    assert created.json()["created_by"] == "ci-pipeline"


def test_unknown_role_is_refused(api: Api) -> None:
    response = api.post("/tokens", json={"name": "x", "role": "superuser"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "role"


def test_provisioned_router_token_is_registered_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from control_plane.app import create_app
    from tests.services import LiveServer

    router_token = "gr_provisioned-router-token-from-a-kubernetes-secret"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", router_token=router_token)
    server = LiveServer(create_app(settings)).start()
    try:
        headers = {"Authorization": f"Bearer {router_token}"}
        assert httpx.get(server.url + "/api/v1/snapshot", headers=headers).status_code == 200
        assert httpx.get(server.url + "/api/v1/models", headers=headers).status_code == 403  # role router only
    finally:
        server.stop()


def test_admin_lists_and_revokes_tokens(api: Api) -> None:
    created = api.post("/tokens", json={"name": "leaked-ci-token", "role": "publisher"}).json()
    token = created["token"]
    listed = {t["name"]: t for t in api.get("/tokens").json()}
    assert listed["leaked-ci-token"]["prefix"] == token[:10]
    assert all("token" not in t and "token_hash" not in t for t in listed.values())
    assert api.as_("publisher").get("/tokens").status_code == 403

    as_leaked = {"Authorization": f"Bearer {token}"}
    assert api.as_(None).get("/models", headers=as_leaked).status_code == 200
    response = api.post(f"/tokens/{created['id']}/revoke")
    assert response.status_code == 200 and response.json()["revoked_at"]
    assert api.as_(None).get("/models", headers=as_leaked).status_code == 401
    assert api.post(f"/tokens/{created['id']}/revoke").status_code == 200  # idempotent
    assert api.post("/tokens/999999/revoke").status_code == 404
    own = next(t for t in api.get("/tokens").json() if t["prefix"] == api.tokens["admin"][:10])
    assert api.post(f"/tokens/{own['id']}/revoke").status_code == 409  # no locking yourself out
    assert api.get("/audit", params={"action": "token.revoke"}).json()[0]["target"] == "leaked-ci-token"
