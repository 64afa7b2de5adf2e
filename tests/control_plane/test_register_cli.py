"""`grayroute register` from a CI pipeline: creates, hashes, and is safe to re-run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from control_plane.cli import main
from tests.control_plane.conftest import Api
from tests.services import LiveServer


def test_register_creates_model_version_and_hashes_engine_files(
    api: Api, cp_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GRAYROUTE_TOKEN", api.tokens["publisher"])
    monkeypatch.setenv("GRAYROUTE_CONTROL_PLANE_URL", cp_server.url)
    engine = tmp_path / "sm_80.plan"
    engine.write_bytes(b"\x00engine-bytes" * 1000)
    argv = ["register", "resnet50", "7", "--precision", "int8", "--trt-version", "10.3",
            "--engine", "sm_80=s3://engines/resnet50/7/sm_80.plan", "--file", f"sm_80={engine}",
            "--benchmark", "sm_80=p50_ms=1.1,p99_ms=2.0"]
    assert main(argv) == 0
    version = api.get("/models/resnet50/versions/7").json()
    assert version["precision"] == "int8" and version["registered_by"] == "test-publisher"
    [registered] = version["engines"]
    assert registered["sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert registered["size_bytes"] == engine.stat().st_size
    assert registered["benchmark"] == {"p50_ms": 1.1, "p99_ms": 2.0}

    # Re-running the pipeline, now with a second architecture, only adds what is new.
    assert main([*argv, "--engine", "sm_90=s3://engines/resnet50/7/sm_90.plan", "--sha256", f"sm_90={'e' * 64}"]) == 0
    assert "sm_80: already registered" in capsys.readouterr().out
    assert [e["gpu_arch"] for e in api.get("/models/resnet50/versions/7").json()["engines"]] == ["sm_80", "sm_90"]

    # A different engine under a registered architecture is refused: engines are immutable.
    with pytest.raises(SystemExit, match=r"differs from what is registered: the sm_90 engine's sha256 is eeeeeeeeeeee…, this run has ffffffffffff…"):
        main([*argv[:7], "--engine", "sm_90=s3://x", "--sha256", f"sm_90={'f' * 64}"])


def test_register_reports_api_errors_by_field(
    api: Api, cp_server: LiveServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRAYROUTE_TOKEN", api.tokens["publisher"])
    monkeypatch.setenv("GRAYROUTE_CONTROL_PLANE_URL", cp_server.url)
    with pytest.raises(SystemExit, match=r"engines\[0\].gpu_arch"):
        main(["register", "resnet50", "1", "--precision", "fp16", "--trt-version", "10.3",
              "--engine", "ampere=s3://x", "--sha256", f"ampere={'a' * 64}"])
    monkeypatch.setenv("GRAYROUTE_TOKEN", api.tokens["viewer"])
    with pytest.raises(SystemExit, match="403"):
        main(["register", "bert", "1", "--precision", "fp16", "--trt-version", "10.3"])
