"""A version's I/O signature and batching, and a pool's engine credentials: stored, validated, registered from ONNX."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from control_plane.cli import main
from tests.control_plane.conftest import Api
from tests.control_plane.test_bad_input import assert_error
from tests.services import LiveServer

SIGNATURE = {
    "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
               {"name": "pixel_values", "datatype": "FP16", "shape": [-1, 3, 224, 224]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}],
    "max_batch_size": 16,
}


def post_version(api: Api, **extra: Any) -> Any:
    return api.as_("publisher").post("/models/resnet50/versions", json={
        "version": "9", "precision": "fp16", "trt_version": "10.3", **extra})


def test_signature_and_batching_are_stored_shown_and_audited(api: Api) -> None:
    api.model()
    batching = {"max_queue_delay_microseconds": 100, "preferred_batch_size": [8, 16]}
    response = post_version(api, signature=SIGNATURE, dynamic_batching=batching)
    assert response.status_code == 201, response.text
    read = api.get("/models/resnet50/versions/9").json()
    assert read["signature"] == SIGNATURE and read["dynamic_batching"] == batching
    [event] = api.get("/audit", params={"model": "resnet50", "action": "version.create"}).json()
    assert event["after"]["signature"] == SIGNATURE
    # A version registered without one says so.
    api.version("resnet50", "10")
    assert api.get("/models/resnet50/versions/10").json()["signature"] is None


@pytest.mark.parametrize(("change", "field"), [
    ({"inputs": [{"name": "x", "datatype": "FP33", "shape": [-1]}]}, "signature.inputs[0].datatype"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 0]}]}, "signature.inputs[0].shape"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}, "signature.inputs[0].shape[0]"),
    ({"inputs": [{"name": "bad name", "datatype": "FP32", "shape": [-1]}]}, "signature.inputs[0].name"),
    ({"inputs": []}, "signature.inputs"),
    ({"outputs": [{"name": "y", "datatype": "FP32", "shape": [-1], "unit": "ms"}]}, "signature.outputs[0].unit"),
    ({"max_batch_size": -1}, "signature.max_batch_size"),
    # Rules across fields, checked by the service with the same field paths.
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                 {"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}, "signature.inputs[1].name"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4]}]}, "signature.inputs[0].shape"),
    ({"outputs": [{"name": "y", "datatype": "FP32", "shape": [1000]}]}, "signature.outputs[0].shape"),
])
def test_bad_signatures_are_422s_naming_the_field(api: Api, change: dict[str, Any], field: str) -> None:
    api.model()
    response = post_version(api, signature={**SIGNATURE, **change})
    assert_error(response, 422, field)
    assert api.get("/models/resnet50/versions/9").status_code == 404  # nothing half-applied


@pytest.mark.parametrize(("signature", "batching", "field"), [
    (None, {"max_queue_delay_microseconds": 100}, "dynamic_batching"),
    ({**SIGNATURE, "max_batch_size": 0, "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}]}, {}, "dynamic_batching"),
    (SIGNATURE, {"preferred_batch_size": [8, 32]}, "dynamic_batching.preferred_batch_size[1]"),
    (SIGNATURE, {"max_queue_delay_microseconds": -5}, "dynamic_batching.max_queue_delay_microseconds"),
])
def test_batching_needs_a_batch(api: Api, signature: dict[str, Any] | None, batching: dict[str, Any],
                                field: str) -> None:
    api.model()
    assert_error(post_version(api, signature=signature, dynamic_batching=batching), 422, field)


def test_pool_credentials_are_names_exactly_one_and_kubernetes_only(api: Api) -> None:
    base = {"gpu_arch": "sm_80", "kind": "kubernetes", "trt_version": "10.3",
            "runtime_image": "nvcr.io/nvidia/tritonserver:24.08-py3"}
    admin = api.as_("admin")
    response = admin.put("/pools/a100", json={**base, "engine_credentials": {"service_account": "engine-reader"}})
    assert response.status_code == 201, response.text
    assert response.json()["engine_credentials"] == {"service_account": "engine-reader"}
    response = admin.put("/pools/a100", json={**base, "engine_credentials": {"secret": "s3-keys"}})
    assert response.json()["engine_credentials"] == {"secret": "s3-keys"}
    [event] = api.get("/audit", params={"action": "pool.update"}).json()
    assert event["before"]["engine_credentials"] == {"service_account": "engine-reader"}
    assert event["after"]["engine_credentials"] == {"secret": "s3-keys"}

    for bad, field in (({"service_account": "a", "secret": "b"}, "engine_credentials"),
                       ({}, "engine_credentials"),
                       ({"secret": "AWS_SECRET_ACCESS_KEY=abc"}, "engine_credentials.secret"),
                       ({"access_key": "AKIA..."}, "engine_credentials.access_key")):
        assert_error(admin.put("/pools/a100", json={**base, "engine_credentials": bad}), 422, field)
    assert_error(admin.put("/pools/ext", json={"gpu_arch": "sm_80", "kind": "external", "trt_version": "10.3",
                                               "engine_credentials": {"secret": "s3-keys"}}),
                 422, "engine_credentials")
    assert api.get("/pools/a100").json()["engine_credentials"] == {"secret": "s3-keys"}


# --------------------------------------------------------------------------- register --onnx


def onnx_file(path: Path, *, batch: str | int = "batch") -> Path:
    """A real two-input ONNX graph: token ids (INT64, dynamic length) and an FP16 image, one FP32 output."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, "sequence"])
    image = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT16, [batch, 3, 8, 8])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [192, 10], [0.0] * 1920)
    nodes = [
        helper.make_node("Cast", ["pixel_values"], ["image32"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["image32"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["scores"]),
        helper.make_node("ReduceSum", ["input_ids"], ["ids_sum"], keepdims=1),
        helper.make_node("Cast", ["ids_sum"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["scores", "ids_f"], ["logits"]),
    ]
    # The weight is also listed as a graph input, as older exporters do: it is not a model input.
    w_input = helper.make_tensor_value_info("w", TensorProto.FLOAT, [192, 10])
    graph = helper.make_graph(nodes, "g", [ids, image, w_input], [logits], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def publisher_env(api: Api, cp_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("GRAYROUTE_TOKEN", api.tokens["publisher"])
    monkeypatch.setenv("GRAYROUTE_CONTROL_PLANE_URL", cp_server.url)
    return ["register", "bert", "3", "--precision", "fp16", "--trt-version", "10.3",
            "--engine", "sm_80=s3://engines/bert/3/sm_80.plan", "--sha256", f"sm_80={'c' * 64}"]


def test_register_onnx_records_the_signature(api: Api, publisher_env: list[str], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    model = onnx_file(tmp_path / "bert.onnx")
    assert main([*publisher_env, "--onnx", str(model), "--max-batch-size", "32",
                 "--batch-delay-us", "250", "--preferred-batch-size", "16"]) == 0
    version = api.get("/models/bert/versions/3").json()
    assert version["signature"] == {
        "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
                   {"name": "pixel_values", "datatype": "FP16", "shape": [-1, 3, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "max_batch_size": 32,
    }
    assert version["dynamic_batching"] == {"max_queue_delay_microseconds": 250, "preferred_batch_size": [16]}
    assert version["source_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert "signature: input_ids INT64[-1, -1]" in capsys.readouterr().out


def test_register_onnx_with_a_fixed_batch_records_no_batching(api: Api, publisher_env: list[str],
                                                              tmp_path: Path) -> None:
    model = onnx_file(tmp_path / "fixed.onnx", batch=1)
    assert main([*publisher_env, "--onnx", str(model)]) == 0
    signature = api.get("/models/bert/versions/3").json()["signature"]
    assert signature["max_batch_size"] == 0
    assert signature["inputs"][1]["shape"] == [1, 3, 8, 8]


@pytest.mark.parametrize(("extra", "message"), [
    ([], "give --max-batch-size N"),
    (["--max-batch-size", "8", "--onnx-fixed"], "has a fixed first dimension"),
    (["--not-onnx"], "not an ONNX model"),
    (["--missing"], "no such file"),
])
def test_register_onnx_mistakes_are_one_line(api: Api, publisher_env: list[str], tmp_path: Path,
                                             extra: list[str], message: str) -> None:
    path = onnx_file(tmp_path / "m.onnx")
    if "--onnx-fixed" in extra:
        path = onnx_file(tmp_path / "fixed.onnx", batch=1)
    elif "--not-onnx" in extra:
        path = tmp_path / "notes.txt"
        path.write_text("not a model")
    elif "--missing" in extra:
        path = tmp_path / "nowhere.onnx"
    flags = [f for f in extra if not f.startswith("--onnx-") and f not in ("--not-onnx", "--missing")]
    with pytest.raises(SystemExit, match=message) as raised:
        main([*publisher_env, "--onnx", str(path), *flags])
    assert "\n" not in str(raised.value)
    assert api.get("/models/bert/versions/3").status_code == 404
