"""Lower-risk hardening: token strength, the demo key off loopback, the router role, headers, driver logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from control_plane.auth.service import hash_token
from control_plane.settings import Settings, token_strength_bits
from tests.control_plane.conftest import ADMIN_TOKEN, Api
from tests.services import LiveServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("weak", ["bootstrap-admin-token", "gr_short", "a" * 64, "0123456789abcdef"])
@pytest.mark.parametrize("variable", ["bootstrap_admin_token", "router_token"])
def test_provisioned_tokens_need_128_bits(weak: str, variable: str) -> None:
    with pytest.raises(ValidationError, match="too weak"):
        Settings(**{variable: weak})  # type: ignore[arg-type]


@pytest.mark.parametrize("strong", [
    "gr_" + "Zk3vQ9tLm2Xw8RbN4yHc7Pd1Fs6Gj0Ae",  # the shape `grayroute token create` prints
    "3f9a1c0e7b2d4a6f8e1c3b5d7f9a0c2e",  # openssl rand -hex 16: exactly 128 random bits
    "q2Vx8LmN0pRt4sUw6yZa1bCd3eF5gH7j9k=",  # openssl rand -base64 24
])
def test_generated_tokens_pass(strong: str) -> None:
    assert token_strength_bits(strong) >= 128
    assert Settings(router_token=strong).router_token is not None  # type: ignore[arg-type]


def _grayroute(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
    return subprocess.run([sys.executable, "-m", "control_plane.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**clean, **env})


def test_serve_refuses_a_weak_router_token_in_one_line(tmp_path: Path) -> None:
    result = _grayroute("serve", env={"GRAYROUTE_ROUTER_TOKEN": "router-token",
                                      "GRAYROUTE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"})
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("grayroute: configuration error: GRAYROUTE_ROUTER_TOKEN: too weak"), result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "grayroute.example"])
def test_serve_refuses_the_demo_key_off_loopback(tmp_path: Path, host: str) -> None:
    result = _grayroute("serve", "--host", host, "--port", "1",
                        env={"GRAYROUTE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"})
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "demo secret key" in result.stderr, result.stderr


def test_routers_report_stats_but_cannot_read_them(api: Api) -> None:
    api.canary()
    assert api.as_("router").get("/models/resnet50/stats").status_code == 403
    for role in ("viewer", "release-manager", "publisher", "admin"):
        assert api.as_(role).get("/models/resnet50/stats").status_code == 200


@pytest.mark.parametrize("path", ["/ui/static/app.css", "/ui/static/favicon.svg", "/docs", "/openapi.json",
                                  "/api/v1/models"])
def test_static_files_and_docs_carry_the_security_headers(cp_server: LiveServer, path: str) -> None:
    response = httpx.get(cp_server.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp
    if path != "/docs":
        assert "script-src 'self';" in csp  # only the docs page may run its CDN's and its inline script


def test_database_driver_debug_logs_carry_no_token_hash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from control_plane.app import create_app

    caplog.set_level(logging.DEBUG)  # as GRAYROUTE_LOG_LEVEL=DEBUG does for the whole process
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", bootstrap_admin_token=ADMIN_TOKEN)
    server = LiveServer(create_app(settings)).start()
    try:
        with httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
            created = c.post("/tokens", json={"name": "ci", "role": "publisher"}).json()
            assert c.get("/models", headers={"Authorization": f"Bearer {created['token']}"}).status_code == 200
            assert c.post(f"/tokens/{created['id']}/revoke").status_code == 200
            assert c.get("/tokens").status_code == 200
    finally:
        server.stop()
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # DEBUG was on, so the check below means something
    for secret in (ADMIN_TOKEN, created["token"]):
        assert hash_token(secret) not in logged
        assert secret not in logged
