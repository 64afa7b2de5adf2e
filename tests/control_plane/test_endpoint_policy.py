"""Where traffic may go: pool allow-lists for backends, engine URI schemes, and who may reshuffle users."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from control_plane.registry.endpoints import parse_pattern, url_problem
from tests.control_plane.conftest import Api
from tests.services import LiveServer

PRIVATE = ["10.0.0.0/8", "triton.internal:8000", "*.gpu.internal"]


def _endpoints(api: Api, urls: list[str], role: str = "publisher", version: str = "3") -> httpx.Response:
    return api.as_(role).put(f"/models/resnet50/versions/{version}/endpoints", json={"pool": "a100", "urls": urls})


def _fields(response: httpx.Response) -> list[str]:
    return [d["field"] for d in response.json()["error"]["details"]]


def test_a_publisher_cannot_point_a_version_at_the_control_plane(api: Api, cp_server: LiveServer) -> None:
    api.canary()
    api.pool(allowed_endpoints=PRIVATE)  # an admin's list: the GPU network only
    revision = api.as_("router").get("/snapshot").headers["etag"]
    response = _endpoints(api, ["http://10.0.0.1:8000", f"http://127.0.0.1:{cp_server.port}/some/prefix"])
    assert response.status_code == 403, response.text
    assert _fields(response) == ["urls[1]"]
    assert "allowed_endpoints" in response.json()["error"]["message"]
    # Nothing applied: no deployment, the snapshot unchanged, no audit event.
    assert api.get("/models/resnet50/deployments").json() == []
    assert api.as_("router").get("/snapshot").headers["etag"] == revision
    assert api.get("/audit", params={"action": "endpoints.put"}).json() == []


@pytest.mark.parametrize(("url", "admitted"), [
    ("http://10.1.2.3:8000", True),  # in the network, any port
    ("https://triton.internal:8000/v2", True),
    ("http://triton.internal:9000", False),  # the pattern names port 8000
    ("http://triton.internal", False),  # port 80
    ("http://a.gpu.internal:1234", True),
    ("http://x.a.gpu.internal", True),
    ("http://gpu.internal", False),  # the wildcard admits names under the domain only
    ("http://gpu.internal.evil.example", False),
    ("http://127.0.0.1:8000", False),
    ("http://[::1]:8000", False),
    ("http://11.0.0.1:8000", False),
])
def test_allow_list_patterns(api: Api, url: str, admitted: bool) -> None:
    api.canary()
    api.pool(allowed_endpoints=PRIVATE)
    response = _endpoints(api, [url])
    assert response.status_code == (200 if admitted else 403), response.text


def test_a_pool_without_an_allow_list_admits_no_endpoint(api: Api) -> None:
    api.canary()
    api.pool(allowed_endpoints=[])
    response = _endpoints(api, ["http://10.0.0.1:8000"], role="admin")
    assert response.status_code == 403 and _fields(response) == ["urls[0]"]
    assert _endpoints(api, [], role="publisher").status_code == 200  # emptying the list is always allowed


@pytest.mark.parametrize("url", ["http://user:secret@10.0.0.1:8000", "http://token@10.0.0.1:8000"])
def test_urls_with_credentials_are_refused(api: Api, url: str) -> None:
    api.canary()
    response = _endpoints(api, ["http://10.0.0.2:8000", url])
    assert response.status_code == 422, response.text
    assert _fields(response) == ["urls[1]"]
    assert "user:password" in response.json()["error"]["message"]


@pytest.mark.parametrize(("pattern", "reason"), [
    ("10.0.0.0/8:99999", "port"), ("http://10.0.0.1", "expected"), ("under_score.internal", "expected"),
    ("*", "expected"), ("[fd00::1]x", "expected"),
])
def test_bad_allow_list_patterns_are_refused_naming_the_entry(api: Api, pattern: str, reason: str) -> None:
    response = api.put("/pools/a100", json={"gpu_arch": "sm_80", "kind": "external", "trt_version": "10.3",
                                           "allowed_endpoints": ["10.0.0.0/8", pattern]})
    assert response.status_code == 422, response.text
    assert _fields(response) == ["allowed_endpoints[1]"]
    assert reason in response.json()["error"]["message"]


def test_allow_lists_are_for_external_pools_and_only_admins_set_them(api: Api) -> None:
    body = {"gpu_arch": "sm_80", "kind": "kubernetes", "trt_version": "10.3", "runtime_image": "triton:24.08",
            "allowed_endpoints": ["10.0.0.0/8"]}
    response = api.put("/pools/k8s", json=body)
    assert response.status_code == 422 and _fields(response) == ["allowed_endpoints"]
    external = {"gpu_arch": "sm_80", "kind": "external", "trt_version": "10.3", "allowed_endpoints": ["0.0.0.0/0"]}
    assert api.as_("publisher").put("/pools/a100", json=external).status_code == 403
    created = api.put("/pools/a100", json={**external, "allowed_endpoints": ["10.0.0.0/8", "[FD00::/8]"]})
    assert created.json()["allowed_endpoints"] == ["10.0.0.0/8", "[fd00::/8]"]
    event = api.get("/audit", params={"action": "pool.create"}).json()[0]
    assert event["after"]["allowed_endpoints"] == ["10.0.0.0/8", "[fd00::/8]"]


def test_an_allow_list_cannot_be_narrowed_past_registered_endpoints(api: Api) -> None:
    api.canary()
    pool = api.pool(allowed_endpoints=PRIVATE)
    assert _endpoints(api, ["http://10.0.0.1:8000"]).status_code == 200
    body = {k: pool[k] for k in ("gpu_arch", "kind", "trt_version")}
    narrowed = api.put("/pools/a100", json={**body, "allowed_endpoints": ["triton.internal:8000"]})
    assert narrowed.status_code == 409, narrowed.text
    assert narrowed.json()["error"]["details"] == {"field": "allowed_endpoints",
                                                   "outside": ["resnet50/3: http://10.0.0.1:8000"]}
    assert api.get("/pools/a100").json()["allowed_endpoints"] == PRIVATE
    # Once the endpoint is moved, the list can shrink.
    assert _endpoints(api, ["http://triton.internal:8000"]).status_code == 200
    assert api.put("/pools/a100", json={**body, "allowed_endpoints": ["triton.internal:8000"]}).status_code == 200


def test_concurrent_disallowed_registrations_are_all_refused_and_none_applied(api: Api) -> None:
    api.canary()
    api.pool(allowed_endpoints=PRIVATE)
    statuses: list[int] = []
    clients = [httpx.Client(base_url=api.base_url + "/api/v1", headers=api.as_("publisher").headers, timeout=30)
               for _ in range(8)]

    def put(client: httpx.Client, n: int) -> None:
        statuses.append(client.put("/models/resnet50/versions/4/endpoints",
                                   json={"pool": "a100", "urls": [f"http://127.0.0.1:{8000 + n}"]}).status_code)

    threads = [threading.Thread(target=put, args=(c, n)) for n, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert statuses == [403] * 8
    assert api.get("/models/resnet50/deployments").json() == []


# --- engine URIs -------------------------------------------------------------------------------

ENGINE: dict[str, Any] = {"gpu_arch": "sm_90", "sha256": "a" * 64}


@pytest.mark.parametrize(("uri", "status"), [
    ("s3://engines/resnet50/5/sm_90.plan", 201),
    ("gs://engines/resnet50/5/sm_90.plan", 201),
    ("https://artifacts.example/resnet50/5/sm_90.plan", 201),
    ("http://artifacts.example/resnet50/5/sm_90.plan", 422),  # not without GRAYROUTE_ALLOW_HTTP_ENGINE_URIS
    ("file:///etc/passwd", 422),
    ("ftp://artifacts.example/sm_90.plan", 422),
    ("https://user:secret@artifacts.example/sm_90.plan", 422),
])
def test_engine_uris_are_object_stores_or_https(api: Api, uri: str, status: int) -> None:
    api.canary()
    added = api.as_("publisher").post("/models/resnet50/versions/4/engines", json={**ENGINE, "uri": uri})
    assert added.status_code == status, added.text
    registered = api.as_("publisher").post("/models/resnet50/versions", json={
        "version": "5", "precision": "fp16", "trt_version": "10.3", "engines": [{**ENGINE, "uri": uri}]})
    assert registered.status_code == status, registered.text
    if status == 422:
        assert _fields(added) == ["uri"] and _fields(registered) == ["engines[0].uri"]


def test_http_engine_uris_where_the_deployment_allows_them(tmp_path: Any) -> None:
    from control_plane.app import create_app
    from control_plane.settings import Settings
    from tests.control_plane.conftest import ADMIN_TOKEN

    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", bootstrap_admin_token=ADMIN_TOKEN,
                        allow_http_engine_uris=True)
    server = LiveServer(create_app(settings)).start()
    try:
        with httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
            assert c.post("/models", json={"name": "m"}).status_code == 201
            response = c.post("/models/m/versions", json={
                "version": "1", "precision": "fp16", "trt_version": "10.3",
                "engines": [{**ENGINE, "uri": "http://artifacts.cluster.local/m/1/sm_90.plan"}]})
            assert response.status_code == 201, response.text
    finally:
        server.stop()


# --- who may reshuffle users ----------------------------------------------------------------------

@pytest.mark.parametrize("change", [{"salt": "new-salt"}, {"key_header": "x-session"}, {"anonymous": "default"}])
def test_only_release_managers_and_admins_change_what_reshuffles_users(api: Api, change: dict[str, str]) -> None:
    api.canary()
    refused = api.as_("publisher").patch("/models/resnet50", json={**change, "reason": "try"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["details"]["fields"] == list(change)
    assert list(change)[0] in refused.json()["error"]["message"]
    assert api.get("/audit", params={"action": "model.update"}).json() == []
    for role in ("release-manager", "admin"):
        response = api.as_(role).patch("/models/resnet50", json={**change, "reason": f"by {role}"})
        assert response.status_code == 200, response.text


def test_publishers_keep_the_model_fields_that_move_nobody(api: Api) -> None:
    api.canary()
    assert api.as_("publisher").patch("/models/resnet50", json={"description": "d"}).status_code == 200
    assert api.as_("release-manager").patch("/models/resnet50", json={"description": "d2"}).status_code == 403
    mixed = api.as_("release-manager").patch("/models/resnet50", json={"description": "d3", "salt": "s"})
    assert mixed.status_code == 403  # all or nothing
    assert api.get("/models/resnet50").json()["salt"] == "resnet50"


# --- the pattern language itself ---------------------------------------------------------------------

def test_patterns_never_mix_names_and_addresses() -> None:
    assert parse_pattern("*.internal").admits("a.internal", 80)
    assert not parse_pattern("*.internal").admits("127.0.0.1", 80)
    assert not parse_pattern("10.0.0.0/8").admits("10.example", 80)
    assert parse_pattern("[fd00::/8]:8000").admits("fd00::1", 8000)
    assert url_problem("http://[fd00::1]:8001", ["[fd00::/8]:8000"]) is not None
    assert url_problem("http://[fd00::1]:8000", ["[fd00::/8]:8000"]) is None
