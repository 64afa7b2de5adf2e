"""The `grayroute` command as a person runs it: a subprocess, its exit code and what it prints.

Every failure a person can fix is one line on stderr, a non-zero exit and no
traceback; commands that open the database say which one.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.control_plane.conftest import Api
from tests.services import LiveServer, free_port


def grayroute(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
    return subprocess.run([sys.executable, "-m", "control_plane.cli", *args], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=120, check=False)


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    # "database: …" says which database a command opened; the failure itself is the one line after it
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("database: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- 1. which database, and what to do when it is missing or not migrated ----------------------------

def test_a_command_in_an_empty_folder_names_the_missing_database_and_creates_nothing(tmp_path: Path) -> None:
    result = grayroute("token", "create", "--name", "ci", "--role", "publisher", cwd=tmp_path)
    line = one_line_failure(result)
    assert f"no database at {tmp_path.resolve() / 'grayroute.db'}" in line
    assert "GRAYROUTE_DATABASE_URL" in line and "grayroute db upgrade" in line
    assert not (tmp_path / "grayroute.db").exists(), "an empty database file was left behind"


def test_a_database_that_is_not_migrated_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sqlite3.connect(path).execute("CREATE TABLE unrelated (id INTEGER)").connection.close()
    result = grayroute("token", "list", cwd=tmp_path, env={"GRAYROUTE_DATABASE_URL": f"sqlite+aiosqlite:///{path}"})
    line = one_line_failure(result)
    assert f"the database SQLite file {path.resolve()} is not migrated" in line
    assert "schema at no revision" in line and "run `grayroute db upgrade`" in line


def test_an_unreachable_postgres_is_one_line_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://grayroute:hunter2secret@127.0.0.1:{free_port()}/grayroute"
    result = grayroute("token", "list", cwd=tmp_path,
                       env={"GRAYROUTE_DATABASE_URL": url, "GRAYROUTE_SECRET_KEY": "k" * 32,
                            "GRAYROUTE_DB_TIMEOUT_SECONDS": "2"})
    line = one_line_failure(result)
    assert line.startswith("grayroute: cannot reach the database postgresql+asyncpg://grayroute:***@127.0.0.1:")
    assert "hunter2secret" not in result.stderr + result.stdout


def test_the_demos_database_is_found_from_the_folder_it_ran_in(tmp_path: Path) -> None:
    demo_db = tmp_path / ".grayroute-demo" / "grayroute.db"
    demo_db.parent.mkdir()
    upgrade = grayroute("db", "upgrade", cwd=tmp_path, env={"GRAYROUTE_DATABASE_URL": f"sqlite+aiosqlite:///{demo_db}"})
    assert upgrade.returncode == 0, upgrade.stderr
    created = grayroute("token", "create", "--name", "ci", "--role", "publisher", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("gr_")
    assert f"database: SQLite file {demo_db.resolve()}" in created.stderr
    assert not (tmp_path / "grayroute.db").exists()


def test_tokens_can_be_listed_and_revoked_from_the_cli(tmp_path: Path) -> None:
    env = {"GRAYROUTE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}"}
    assert grayroute("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    ci = grayroute("token", "create", "--name", "ci", "--role", "publisher", cwd=tmp_path, env=env)
    alice = grayroute("token", "create", "--name", "alice", "--role", "release-manager", cwd=tmp_path, env=env)
    assert ci.returncode == alice.returncode == 0

    listed = grayroute("token", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["ci"][2] == "publisher" and rows["alice"][2] == "release-manager"
    assert ci.stdout.strip().startswith(rows["ci"][3]), "the prefix tells tokens apart"
    assert rows["ci"][-1] == "-" and ci.stdout.strip() not in listed.stdout, "never the secret itself"

    revoked = grayroute("token", "revoke", rows["ci"][0], cwd=tmp_path, env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked token" in revoked.stdout and "ci" in revoked.stdout
    again = {line.split()[1]: line.split() for line in
             grayroute("token", "list", cwd=tmp_path, env=env).stdout.splitlines()[1:]}
    assert again["ci"][-1] != "-" and again["alice"][-1] == "-"

    assert one_line_failure(grayroute("token", "revoke", "9999", cwd=tmp_path, env=env)) == \
        "grayroute: token 9999 not found"


def test_pools_import_carries_a_gpu_price_and_refuses_one_without_its_currency(tmp_path: Path) -> None:
    import json

    env = {"GRAYROUTE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cp.db'}"}
    assert grayroute("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    pool = {"name": "h100", "gpu_arch": "sm_90", "kind": "local", "trt_version": "10.3"}
    (tmp_path / "pools.json").write_text(json.dumps([{**pool, "gpu_hourly_price": "4.10", "currency": "USD",
                                                      "gpus_per_replica": 2}]))
    imported = grayroute("pools", "import", "pools.json", cwd=tmp_path, env=env)
    assert imported.returncode == 0 and "1 pools imported, 1 changed" in imported.stdout, imported.stderr
    (tmp_path / "pools.json").write_text(json.dumps([{**pool, "gpu_hourly_price": "3"}]))
    line = one_line_failure(grayroute("pools", "import", "pools.json", cwd=tmp_path, env=env))
    assert line == "grayroute: currency: required with gpu_hourly_price (an ISO 4217 code such as USD)", line
    with sqlite3.connect(tmp_path / "cp.db") as db:  # the refused import changed nothing
        assert db.execute("SELECT gpu_hourly_price, currency, gpus_per_replica FROM pools").fetchall() == [
            (4.1, "USD", 2)]


# --- 4. discoverability ---------------------------------------------------------------------------

def test_version_and_help_texts_say_what_a_newcomer_needs(tmp_path: Path) -> None:
    version = grayroute("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == "grayroute 0.1.0"
    serve = " ".join(grayroute("serve", "--help", cwd=tmp_path).stdout.split())  # unwrapped
    assert "address to listen on (default: 127.0.0.1;" in serve and "port to listen on (default: 8080)" in serve
    assert "log every request" in serve
    pools = grayroute("pools", "import", "--help", cwd=tmp_path).stdout
    assert '"gpu_arch": "sm_80"' in pools and "trt_version" in pools and "required" in pools
    register = grayroute("register", "--help", cwd=tmp_path).stdout
    assert "GRAYROUTE_TOKEN" in register and "GRAYROUTE_CONTROL_PLANE_URL" in register
    tokens = grayroute("token", "--help", cwd=tmp_path).stdout
    assert all(word in tokens for word in ("create", "list", "revoke"))


# --- 2. network and HTTP errors of `register` --------------------------------------------------------

REGISTER = ("register", "resnet50", "3", "--precision", "int8", "--trt-version", "10.3",
            "--engine", "sm_80=s3://engines/resnet50/3/sm_80.plan", "--sha256", f"sm_80={'a' * 64}")


def test_register_with_nothing_listening_is_one_line_with_the_url(tmp_path: Path) -> None:
    port = free_port()
    result = grayroute(*REGISTER, "--control-plane", f"http://127.0.0.1:{port}", cwd=tmp_path,
                       env={"GRAYROUTE_TOKEN": "gr_whatever"})
    line = one_line_failure(result)
    assert line.startswith(f"grayroute register: cannot reach the control plane at "
                           f"http://127.0.0.1:{port}/api/v1/models/resnet50: ")


def test_register_http_errors_are_one_line_with_status_and_the_servers_message(
    api: Api, cp_server: LiveServer, tmp_path: Path,
) -> None:
    result = grayroute(*REGISTER, "--control-plane", cp_server.url, cwd=tmp_path,
                       env={"GRAYROUTE_TOKEN": api.tokens["viewer"]})
    line = one_line_failure(result)
    assert f"POST {cp_server.url}/api/v1/models → 403 Forbidden: " in line
    assert "viewer" in line  # the server's own message, not a generic one


# --- 3. a re-run that differs from what is registered ------------------------------------------------

@pytest.mark.parametrize(("flag", "value", "named"), [
    ("--precision", "fp16", "precision 'int8' is registered, this run has 'fp16'"),
    ("--trt-version", "10.4", "TensorRT version '10.3' is registered, this run has '10.4'"),
    ("--sha256", f"sm_80={'b' * 64}", "the sm_80 engine's sha256 is aaaaaaaaaaaa…, this run has bbbbbbbbbbbb…"),
])
def test_a_rerun_that_differs_is_refused_naming_the_difference(
    api: Api, cp_server: LiveServer, tmp_path: Path, flag: str, value: str, named: str,
) -> None:
    env = {"GRAYROUTE_TOKEN": api.tokens["publisher"], "GRAYROUTE_CONTROL_PLANE_URL": cp_server.url}
    assert grayroute(*REGISTER, cwd=tmp_path, env=env).returncode == 0
    same = grayroute(*REGISTER, cwd=tmp_path, env=env)
    assert same.returncode == 0 and "sm_80: already registered" in same.stdout

    args = list(REGISTER)
    args[args.index(flag) + 1] = value
    # A new architecture in the same run must not be added when the run is refused.
    args += ["--engine", "sm_90=s3://engines/resnet50/3/sm_90.plan", "--sha256", f"sm_90={'c' * 64}"]
    line = one_line_failure(grayroute(*args, cwd=tmp_path, env=env))
    assert "resnet50/3 differs from what is registered" in line and named in line
    version = api.get("/models/resnet50/versions/3").json()
    assert (version["precision"], version["trt_version"]) == ("int8", "10.3")
    assert [(e["gpu_arch"], e["sha256"]) for e in version["engines"]] == [("sm_80", "a" * 64)]
