"""The shadow in a traffic policy: stored in revisions, validated field by field, audited, in the snapshot."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from router.snapshot import parse_snapshot
from tests.control_plane.conftest import Api


def _body(shadow: Any, splits: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    splits = splits or {"3": 100}
    return {"default_version": "3", "splits": [{"version": v, "weight": w} for v, w in splits.items()],
            "shadow": shadow, "reason": "shadow 4", **extra}


def _put(api: Api, body: dict[str, Any], etag: str, role: str = "release-manager"):  # type: ignore[no-untyped-def]
    return api.as_(role).put("/models/resnet50/traffic", json=body, headers={"If-Match": etag})


def test_shadow_is_stored_read_audited_and_in_the_snapshot(api: Api) -> None:
    api.canary(weight=0)  # revision 1: 3 takes everything, 4 registered
    response = _put(api, _body({"version": "4", "percent": "12.34"}), '"1"')
    assert response.status_code == 200, response.text
    assert response.json()["shadow"] == {"version": "4", "percent": 12.34}
    read = api.get("/models/resnet50/traffic").json()
    assert read["shadow"] == {"version": "4", "percent": 12.34} and read["revision"] == 2
    # the reconciler plans from referenced versions: a shadow-only version becomes active like a split
    assert api.get("/models/resnet50/versions/4").json()["status"] == "active"

    event = next(e for e in api.get("/audit", params={"model": "resnet50"}).json() if e["target_type"] == "traffic")
    assert event["reason"] == "shadow 4"
    assert event["after"]["shadow"] == {"version": "4", "percent": 12.34}

    snapshot = parse_snapshot(api.as_("router").get("/snapshot").content)
    model = snapshot.models["resnet50"]
    assert model.shadow is not None and (model.shadow.version, model.shadow.percent) == ("4", 12.34)
    assert "4" in model.policy().referenced_versions()

    # a version with a shadow cannot be retired; taking the shadow away frees it
    assert api.as_("release-manager").post("/models/resnet50/versions/4/retire").status_code == 409
    cleared = _put(api, _body(None), '"2"')
    assert cleared.status_code == 200 and cleared.json()["shadow"] is None
    assert parse_snapshot(api.as_("router").get("/snapshot").content).models["resnet50"].shadow is None
    # the shadow may also carry traffic
    both = _put(api, _body({"version": "4", "percent": 5}, {"3": 90, "4": 10}), '"3"')
    assert both.status_code == 200, both.text


def test_quick_actions_keep_the_shadow(api: Api) -> None:
    api.canary(weight=5)
    assert _put(api, _body({"version": "4", "percent": 1}, {"3": 95, "4": 5}), '"1"').status_code == 200
    rolled = api.as_("release-manager").post("/models/resnet50/traffic/rollback", json={"version": "4"},
                                             headers={"If-Match": '"2"'})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["shadow"] == {"version": "4", "percent": 1.0}


@pytest.mark.parametrize(("shadow", "field", "reason_part"), [
    ({"version": "9", "percent": 5}, "shadow.version", "has no version '9'"),
    ({"version": "4", "percent": 5.005}, "shadow.percent", "2 decimal places"),
    ({"version": "4", "percent": 0}, "shadow.percent", "greater than 0"),
    ({"version": "4", "percent": 100.01}, "shadow.percent", "less than or equal to 100"),
    ({"version": "4", "percent": "lots"}, "shadow.percent", "valid decimal"),
    ({"version": "4"}, "shadow.percent", "required"),
    ({"percent": 5}, "shadow.version", "required"),
    ({"version": "4", "percent": 5, "mode": "x"}, "shadow.mode", "not a field"),
    ("4", "shadow", ""),
])
def test_bad_shadows_are_refused_naming_the_field(api: Api, shadow: Any, field: str, reason_part: str) -> None:
    api.canary(weight=5)
    before = api.get("/models/resnet50/traffic").json()
    response = _put(api, _body(shadow, {"3": 95, "4": 5}), '"1"')
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    matching = [d for d in details if d["field"] == field]
    assert matching, details
    assert reason_part in matching[0]["reason"], details
    assert api.get("/models/resnet50/traffic").json() == before  # nothing applied


def test_retired_shadow_and_roles(api: Api) -> None:
    api.canary(weight=5)
    api.version("resnet50", "5")
    assert api.as_("release-manager").post("/models/resnet50/versions/5/retire").status_code == 200
    response = _put(api, _body({"version": "5", "percent": 5}, {"3": 95, "4": 5}), '"1"')
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [{"field": "shadow.version", "reason": "version '5' is retired"}]
    for role in ("viewer", "router", "publisher"):
        assert _put(api, _body({"version": "4", "percent": 5}, {"3": 95, "4": 5}), '"1"', role).status_code == 403
    assert api.get("/models/resnet50/traffic").json()["revision"] == 1


def test_concurrent_shadow_writes_from_one_revision_apply_once(api: Api) -> None:
    api.canary(weight=5)
    results: list[int] = []

    def write(percent: int) -> None:
        results.append(_put(api, _body({"version": "4", "percent": percent}, {"3": 95, "4": 5}), '"1"').status_code)

    threads = [threading.Thread(target=write, args=(p,)) for p in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count(200) == 1 and all(r in (200, 412) for r in results), results
    assert api.get("/models/resnet50/traffic").json()["revision"] == 2
