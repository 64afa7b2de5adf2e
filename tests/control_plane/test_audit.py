"""Audit completeness: every mutation leaves an event with actor, before and after."""

from __future__ import annotations

from tests.control_plane.conftest import Api


def test_every_mutation_is_audited_with_actor_and_states(api: Api) -> None:
    api.canary(weight=5)  # pool, model, 2 versions, traffic
    api.as_("publisher").post("/models/resnet50/versions/3/engines",
                              json={"gpu_arch": "sm_90", "uri": "s3://e/3/sm_90.plan", "sha256": "f" * 64})
    api.as_("release-manager").patch("/models/resnet50/versions/4", json={"warm": True})
    api.as_("publisher").put("/models/resnet50/versions/3/endpoints",
                             json={"pool": "a100", "urls": ["http://10.0.0.1:8000"]})
    api.traffic("resnet50", {"3": 100, "4": 0}, default="3", reason="roll back")
    api.as_("release-manager").post("/models/resnet50/versions/4/retire")
    api.as_("publisher").patch("/models/resnet50", json={"description": "changed"})
    api.pool("a100", trt_version="10.3", namespace="gpu")  # an update

    events = api.get("/audit", params={"limit": 100}).json()
    actions = [e["action"] for e in reversed(events)]
    assert actions == ["pool.create", "model.create", "version.create", "version.create", "traffic.update",
                       "engine.create", "version.update", "endpoints.put", "traffic.update", "version.retire",
                       "model.update", "pool.update"]
    by_action = {e["action"]: e for e in events}
    rollback = [e for e in events if e["action"] == "traffic.update"][0]
    assert rollback["actor"] == "test-release-manager" and rollback["actor_role"] == "release-manager"
    assert rollback["reason"] == "roll back"
    assert rollback["before"]["splits"] == [{"version": "3", "weight": 95.0}, {"version": "4", "weight": 5.0}]
    assert rollback["after"]["splits"] == [{"version": "3", "weight": 100.0}, {"version": "4", "weight": 0.0}]
    assert by_action["version.retire"]["before"]["status"] == "active"
    assert by_action["version.retire"]["after"]["status"] == "retired"
    assert by_action["pool.update"]["before"]["namespace"] is None
    assert by_action["pool.update"]["after"]["namespace"] == "gpu"
    assert all(e["at"] and e["actor"] for e in events)


def test_refused_changes_leave_no_event(api: Api) -> None:
    api.canary()
    count = len(api.get("/audit").json())
    etag = api.get("/models/resnet50/traffic").headers["etag"]
    bad = {"default_version": "3", "splits": [{"version": "3", "weight": 50}]}
    assert api.as_("release-manager").put("/models/resnet50/traffic", json=bad,
                                          headers={"If-Match": etag}).status_code == 422
    assert api.as_("viewer").post("/models", json={"name": "x"}).status_code == 403
    assert len(api.get("/audit").json()) == count


def test_audit_filters_and_paging(api: Api) -> None:
    api.canary()
    api.model("bert")
    assert {e["model"] for e in api.get("/audit", params={"model": "bert"}).json()} == {"bert"}
    page = api.get("/audit", params={"limit": 2}).json()
    older = api.get("/audit", params={"limit": 2, "before_id": page[-1]["id"]}).json()
    assert len(page) == 2 and all(e["id"] < page[-1]["id"] for e in older)
    assert api.get("/audit", params={"limit": 0}).status_code == 422
