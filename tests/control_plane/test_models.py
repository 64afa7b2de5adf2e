"""Models: create, read, update, and every way a request can be wrong."""

from __future__ import annotations

from tests.control_plane.conftest import Api


def test_create_and_read_model_with_defaults(api: Api) -> None:
    created = api.model("resnet50", description="image classifier")
    assert created["key_header"] == "x-user-id"
    assert created["salt"] == "resnet50"
    assert created["anonymous"] == "weighted"
    assert created["created_by"] == "test-publisher"

    fetched = api.get("/models/resnet50").json()
    assert fetched["description"] == "image classifier"
    assert [m["name"] for m in api.get("/models").json()] == ["resnet50"]


def test_model_name_must_be_dns_safe_and_error_names_the_field(api: Api) -> None:
    response = api.as_("publisher").post("/models", json={"name": "ResNet_50!"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["details"][0]["field"] == "name"
    assert "lowercase letters, digits and '-'" in error["details"][0]["reason"]


def test_unknown_fields_are_refused_not_ignored(api: Api) -> None:
    response = api.as_("publisher").post("/models", json={"name": "m", "salty": "x"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "salty"


def test_malformed_json_is_a_400_not_a_500(api: Api) -> None:
    response = api.as_("publisher").post("/models", content=b"{not json",
                                         headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed"


def test_duplicate_model_is_a_conflict(api: Api) -> None:
    api.model("bert")
    response = api.as_("publisher").post("/models", json={"name": "bert"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_unknown_model_is_404_with_json_error(api: Api) -> None:
    response = api.get("/models/nope")
    assert response.status_code == 404
    assert response.json()["error"]["details"] == {"model": "nope"}


def test_replica_budget_must_name_existing_pools(api: Api) -> None:
    response = api.as_("publisher").post("/models", json={"name": "m", "replicas": {"h100": 4}})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "replicas.h100"
    api.pool("h100", gpu_arch="sm_90")
    assert api.as_("publisher").post("/models", json={"name": "m", "replicas": {"h100": 4}}).status_code == 201


def test_changing_the_salt_rebuckets_with_a_fresh_layout(api: Api) -> None:
    api.canary(weight=5)
    api.traffic("resnet50", {"3": 90, "4": 10}, default="3")
    # After 95/5 -> 90/10 the candidate owns two ranges; a new salt restarts contiguous.
    assert api.get("/models/resnet50/traffic").json()["allocation"] == [[0, 9000, "3"], [9000, 10000, "4"]]
    api.traffic("resnet50", {"3": 85, "4": 10, "5": 5} if False else {"4": 20, "3": 80}, default="3")
    before = api.get("/models/resnet50/traffic").json()
    assert before["allocation"] == [[0, 8000, "3"], [8000, 10000, "4"]]

    response = api.as_("release-manager").patch("/models/resnet50", json={"salt": "resnet50-v2", "reason": "reshuffle"})
    assert response.status_code == 200, response.text
    after = api.get("/models/resnet50/traffic").json()
    assert after["revision"] == before["revision"] + 1
    assert after["allocation"] == [[0, 2000, "4"], [2000, 10000, "3"]]  # split-list order
    events = api.get("/audit", params={"model": "resnet50", "action": "traffic.rebucket"}).json()
    assert len(events) == 1 and events[0]["reason"] == "reshuffle"
