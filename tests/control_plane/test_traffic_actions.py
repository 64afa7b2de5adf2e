"""Promote, roll back and re-apply through the API: the operations the UI's buttons run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.control_plane.conftest import Api


def _act(api: Api, action: str, body: dict[str, Any], etag: str | None, role: str = "release-manager",
         model: str = "resnet50") -> httpx.Response:
    headers = {"If-Match": etag} if etag is not None else {}
    return api.as_(role).post(f"/models/{model}/traffic/{action}", json=body, headers=headers)


def _splits(response: httpx.Response) -> dict[str, float]:
    return {s["version"]: s["weight"] for s in response.json()["splits"]}


def test_promote_rollback_reapply_write_audited_revisions(api: Api) -> None:
    api.canary(weight=5)  # revision 1: 3 95%, 4 5%
    promoted = _act(api, "promote", {"version": "4", "reason": "canary healthy"}, '"1"')
    assert promoted.status_code == 200, promoted.text
    assert promoted.headers["etag"] == '"2"'
    assert _splits(promoted) == {"3": 0.0, "4": 100.0} and promoted.json()["default_version"] == "4"

    api.traffic("resnet50", {"3": 90, "4": 10}, default="3")  # revision 3
    rolled = _act(api, "rollback", {"version": "4", "reason": "p99 up"}, '"3"')
    assert rolled.status_code == 200, rolled.text
    assert _splits(rolled) == {"3": 100.0, "4": 0.0} and rolled.json()["default_version"] == "3"

    reapplied = _act(api, "reapply", {"revision": 1, "reason": "back to the first canary"}, '"4"')
    assert reapplied.status_code == 200, reapplied.text
    assert _splits(reapplied) == {"3": 95.0, "4": 5.0} and reapplied.json()["reapplied_from"] == 1

    events = api.get("/audit", params={"model": "resnet50"}).json()
    reasons = [e["reason"] for e in events if e["target_type"] == "traffic"]  # newest first
    assert reasons == ["back to the first canary", "p99 up", "test", "canary healthy", "test"]
    assert api.get("/audit", params={"action": "traffic.reapply"}).json()[0]["actor"] == "test-release-manager"


def test_actions_need_if_match_a_role_and_valid_input(api: Api) -> None:
    api.canary(weight=5)
    assert _act(api, "promote", {"version": "4"}, None).status_code == 428
    stale = _act(api, "promote", {"version": "4"}, '"0"')
    assert stale.status_code == 412 and stale.json()["error"]["details"]["live_etag"] == '"1"'
    assert _act(api, "promote", {"version": "4"}, '"1"', role="viewer").status_code == 403
    assert _act(api, "promote", {"version": "4"}, '"1"', role="publisher").status_code == 403

    missing = _act(api, "promote", {"reason": "x"}, '"1"')
    assert missing.status_code == 422 and missing.json()["error"]["details"][0]["field"] == "version"
    unknown = _act(api, "promote", {"version": "9"}, '"1"')
    assert unknown.status_code == 422 and "has no version '9'" in unknown.text
    default = _act(api, "rollback", {"version": "3"}, '"1"')
    assert default.status_code == 422 and "is the default version" in default.text
    assert _act(api, "reapply", {"revision": 7}, '"1"').status_code == 404
    assert _act(api, "reapply", {"revision": 2**40}, '"1"').status_code == 422
    assert _act(api, "explode", {"version": "4"}, '"1"').status_code == 422
    # Nothing above was applied.
    assert api.get("/models/resnet50/traffic").headers["etag"] == '"1"'


def test_concurrent_promotes_from_one_revision_apply_once(api: Api) -> None:
    api.canary(weight=5)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: _act(api, "promote", {"version": "4", "reason": f"burst {i}"},
                                             '"1"').status_code, range(8)))
    assert sorted(codes) == [200] + [412] * 7, codes
    assert api.get("/models/resnet50/traffic").headers["etag"] == '"2"'
