"""Versions and engines: registration, engines per architecture, warm, retire."""

from __future__ import annotations

from tests.control_plane.conftest import Api


def test_register_version_with_engines_and_benchmarks(api: Api) -> None:
    api.model("resnet50")
    response = api.as_("publisher").post("/models/resnet50/versions", json={
        "version": "4", "precision": "int8", "trt_version": "10.3.0", "source_uri": "s3://onnx/resnet50-4.onnx",
        "source_sha256": "b" * 64, "notes": "INT8 calibrated on 5k images",
        "engines": [{"gpu_arch": "sm_80", "uri": "s3://e/4/sm_80.plan", "sha256": "c" * 64, "size_bytes": 3 << 30,
                     "benchmark": {"p50_ms": 1.2, "p99_ms": 2.5, "throughput": 2400, "gpu_mem_mb": 900}},
                    {"gpu_arch": "sm_90", "uri": "s3://e/4/sm_90.plan", "sha256": "d" * 64,
                     "trt_version": "10.4.0"}],
    })
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["status"] == "registered"
    assert version["registered_by"] == "test-publisher"
    engines = {e["gpu_arch"]: e for e in version["engines"]}
    assert engines["sm_80"]["trt_version"] == "10.3.0"  # inherited from the version
    assert engines["sm_80"]["size_bytes"] == 3 << 30  # engines pass 2 GiB
    assert engines["sm_80"]["benchmark"]["p99_ms"] == 2.5
    assert engines["sm_90"]["trt_version"] == "10.4.0"
    assert api.get("/models/resnet50/versions/4").json() == version


def test_version_field_rules(api: Api) -> None:
    api.model("resnet50")
    cases = [
        ({"precision": "fp64"}, "precision"),
        ({"trt_version": "ten"}, "trt_version"),
        ({"version": "has space"}, "version"),
        ({"engines": [{"gpu_arch": "ampere", "uri": "s3://x", "sha256": "a" * 64}]}, "engines[0].gpu_arch"),
        ({"engines": [{"gpu_arch": "sm_80", "uri": "s3://x", "sha256": "xyz"}]}, "engines[0].sha256"),
        ({"engines": [{"gpu_arch": "sm_80", "uri": "not a uri", "sha256": "a" * 64}]}, "engines[0].uri"),
        ({"engines": [{"gpu_arch": "sm_80", "uri": "s3://x", "sha256": "a" * 64, "size_bytes": -1}]},
         "engines[0].size_bytes"),
    ]
    for override, field in cases:
        body = {"version": "1", "precision": "fp16", "trt_version": "10.3", **override}
        response = api.as_("publisher").post("/models/resnet50/versions", json=body)
        assert response.status_code == 422, (override, response.text)
        assert field in [d["field"] for d in response.json()["error"]["details"]], (override, response.text)


def test_two_engines_for_one_architecture_are_refused(api: Api) -> None:
    api.model("resnet50")
    engine = {"gpu_arch": "sm_80", "uri": "s3://x", "sha256": "a" * 64}
    response = api.as_("publisher").post("/models/resnet50/versions", json={
        "version": "1", "precision": "fp16", "trt_version": "10.3", "engines": [engine, engine]})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "engines[0].gpu_arch"
    assert api.get("/models/resnet50/versions").json() == []  # nothing half-written


def test_duplicate_version_conflicts_and_unknown_model_is_404(api: Api) -> None:
    api.model("resnet50")
    api.version("resnet50", "1")
    body = {"version": "1", "precision": "fp16", "trt_version": "10.3"}
    assert api.as_("publisher").post("/models/resnet50/versions", json=body).status_code == 409
    assert api.as_("publisher").post("/models/nope/versions", json=body).status_code == 404
    assert api.get("/models/resnet50/versions/9").status_code == 404


def test_add_engine_for_another_architecture(api: Api) -> None:
    api.model("resnet50")
    api.version("resnet50", "1", archs=("sm_80",))
    engine = {"gpu_arch": "sm_90", "uri": "s3://e/1/sm_90.plan", "sha256": "e" * 64}
    response = api.as_("publisher").post("/models/resnet50/versions/1/engines", json=engine)
    assert response.status_code == 201, response.text
    assert response.json()["trt_version"] == "10.3"
    assert api.as_("publisher").post("/models/resnet50/versions/1/engines", json=engine).status_code == 409
    archs = [e["gpu_arch"] for e in api.get("/models/resnet50/versions/1").json()["engines"]]
    assert archs == ["sm_80", "sm_90"]


def test_patch_notes_and_warm(api: Api) -> None:
    api.model("resnet50")
    api.version("resnet50", "1")
    response = api.as_("release-manager").patch("/models/resnet50/versions/1", json={"warm": True, "notes": "pre-warm"})
    assert response.status_code == 200, response.text
    assert response.json()["warm"] is True and response.json()["notes"] == "pre-warm"


def test_retire_is_refused_while_the_version_has_traffic(api: Api) -> None:
    api.canary(weight=5)
    response = api.as_("release-manager").post("/models/resnet50/versions/4/retire")
    assert response.status_code == 409
    assert response.json()["error"]["details"]["uses"] == ["has 5.0% of traffic"]
    response = api.as_("release-manager").post("/models/resnet50/versions/3/retire")
    assert response.status_code == 409
    assert "is the default version" in response.json()["error"]["details"]["uses"]

    api.traffic("resnet50", {"3": 100, "4": 0}, default="3",
                rules=[{"name": "qa", "match": {"header": "x-tenant", "in": ["qa"]}, "version": "4"}])
    response = api.as_("release-manager").post("/models/resnet50/versions/4/retire")
    assert response.status_code == 409
    assert response.json()["error"]["details"]["uses"] == ["is the target of rule 'qa'"]

    api.traffic("resnet50", {"3": 100}, default="3")
    response = api.as_("release-manager").post("/models/resnet50/versions/4/retire")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "retired"
    # A retired version cannot come back into the policy.
    again = api.traffic("resnet50", {"3": 90, "4": 10}, default="3")
    assert again.status_code == 422
    assert again.json()["error"]["details"] == [{"field": "splits[1].version", "reason": "version '4' is retired"}]


def test_status_moves_to_active_when_routed(api: Api) -> None:
    api.canary(weight=5)
    statuses = {v["version"]: v["status"] for v in api.get("/models/resnet50/versions").json()}
    assert statuses == {"3": "active", "4": "active"}
