"""`grayroute engine fetch`, the real command in a subprocess, against moto's S3 server and an HTTPS
artifact store with a private CA: verified downloads, and one clear line for every failure."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reconciler.object_stores import S3, Https, enforce_auth, https_store, moto_s3

GRAYROUTE = str(Path(sys.executable).parent / "grayroute")
ENGINE = os.urandom(3 << 20) + b"engine"  # several read chunks' worth of progress
SHA = hashlib.sha256(ENGINE).hexdigest()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as store:
        client = store.client(**store.credentials)
        client.create_bucket(Bucket="engines")
        client.put_object(Bucket="engines", Key="resnet50/4/sm_80.plan", Body=ENGINE)
        enforce_auth(store)  # from here on a wrong key is refused, as by S3
        yield store


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Https]:
    with https_store(tmp_path_factory.mktemp("https")) as store:
        store.files["resnet50/4/sm_80.plan"] = ENGINE
        yield store


def fetch(uri: str, dest: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Only what a pod would have: no inherited AWS_* or proxy settings from the machine running the tests.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GRAYROUTE_", "SSL_"))
            and "proxy" not in k.lower()}
    return subprocess.run([GRAYROUTE, "engine", "fetch", uri, "--dest", str(dest), *args],
                          env={**base, "HOME": str(dest.parent), **env}, capture_output=True, text=True, timeout=120)


def assert_one_line_failure(result: subprocess.CompletedProcess[str], dest: Path, *fragments: str) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("grayroute engine fetch failed: "), lines
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    # Nothing half-written is left where Triton would look.
    assert not dest.exists()
    assert not list(dest.parent.glob("*.part")) if dest.parent.exists() else True
    return lines[0]


def test_s3_fetch_verifies_and_places_the_engine(s3: S3, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "resnet50" / "1" / "model.plan"
    config = tmp_path / "models" / "resnet50" / "config.pbtxt"
    result = fetch("s3://engines/resnet50/4/sm_80.plan", dest, s3.env(), "--sha256", SHA,
                   "--size", str(len(ENGINE)), "--model-config", str(config), "--model-config-text", 'name: "resnet50"\n')
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == ENGINE
    assert config.read_text() == 'name: "resnet50"\n'
    assert "fetching s3://engines/resnet50/4/sm_80.plan (3.0 MiB)" in result.stdout
    assert f"sha256 {SHA[:12]}… verified" in result.stdout
    assert result.stderr == ""
    # A restarted init container finds the verified file and does not download again.
    again = fetch("s3://engines/resnet50/4/sm_80.plan", dest, s3.env(), "--sha256", SHA)
    assert again.returncode == 0 and "nothing to fetch" in again.stdout


def test_https_fetch_with_a_private_ca_and_a_bearer_token(https: Https, tmp_path: Path) -> None:
    dest = tmp_path / "model.plan"
    uri = f"{https.url}/engines/resnet50/4/sm_80.plan"
    env = {"GRAYROUTE_FETCH_BEARER_TOKEN": https.token}
    result = fetch(uri, dest, env, "--sha256", SHA, "--ca-file", str(https.ca_file))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == ENGINE
    # The CA can also come from the environment (SSL_CERT_FILE from a mounted Secret).
    dest.unlink()
    result = fetch(uri, dest, {**env, "SSL_CERT_FILE": str(https.ca_file)}, "--sha256", SHA)
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == ENGINE


def test_transient_errors_are_retried(https: Https, tmp_path: Path) -> None:
    dest = tmp_path / "model.plan"
    https.fail_next[:] = [503, 502]
    result = fetch(f"{https.url}/engines/resnet50/4/sm_80.plan", dest,
                   {"GRAYROUTE_FETCH_BEARER_TOKEN": https.token}, "--sha256", SHA, "--ca-file", str(https.ca_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("retrying in") >= 1
    assert dest.read_bytes() == ENGINE


def test_a_burst_of_pods_fetching_through_a_flaky_store_all_verify(https: Https, tmp_path: Path) -> None:
    # Eight replicas start at once while the store sheds load: each retries on its own and ends verified.
    from concurrent.futures import ThreadPoolExecutor

    https.requests.clear()
    https.fail_next[:] = [503, 502, 503, 504, 503, 502]
    uri = f"{https.url}/engines/resnet50/4/sm_80.plan"
    env = {"GRAYROUTE_FETCH_BEARER_TOKEN": https.token}
    dests = [tmp_path / f"pod-{i}" / "model.plan" for i in range(8)]
    with ThreadPoolExecutor(len(dests)) as pool:
        results = list(pool.map(lambda d: fetch(uri, d, env, "--sha256", SHA, "--ca-file", str(https.ca_file)),
                                dests))
    assert [r.returncode for r in results] == [0] * len(dests), [r.stderr for r in results]
    assert all(d.read_bytes() == ENGINE for d in dests)
    assert https.fail_next == [] and sum(r.stdout.count("retrying in") for r in results) >= 1


def test_wrong_checksum_is_one_line_and_the_termination_message(s3: S3, tmp_path: Path) -> None:
    dest, message = tmp_path / "models" / "model.plan", tmp_path / "termination-log"
    result = fetch("s3://engines/resnet50/4/sm_80.plan", dest, s3.env(), "--sha256", "0" * 64,
                   "--message-file", str(message))
    line = assert_one_line_failure(result, dest, "sha256 mismatch", f"got {SHA}", "0" * 64)
    assert message.read_text() == line.removeprefix("grayroute ") + "\n"


def test_wrong_size_is_refused_before_downloading(https: Https, tmp_path: Path) -> None:
    dest = tmp_path / "model.plan"
    https.requests.clear()
    result = fetch(f"{https.url}/engines/resnet50/4/sm_80.plan", dest,
                   {"GRAYROUTE_FETCH_BEARER_TOKEN": https.token},
                   "--sha256", SHA, "--size", "1234", "--ca-file", str(https.ca_file))
    assert_one_line_failure(result, dest, f"the object has {len(ENGINE)} bytes, 1234 were registered")
    assert not any(r.startswith("GET") and "sm_80" in r for r in https.requests[1:])


@pytest.mark.parametrize("store", ["s3", "https"])
def test_missing_object_is_one_line(store: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dest = tmp_path / "model.plan"
    if store == "s3":
        s3: S3 = request.getfixturevalue("s3")
        result = fetch("s3://engines/resnet50/5/sm_80.plan", dest, s3.env(), "--sha256", SHA)
    else:
        https: Https = request.getfixturevalue("https")
        result = fetch(f"{https.url}/engines/resnet50/5/sm_80.plan", dest,
                       {"GRAYROUTE_FETCH_BEARER_TOKEN": https.token}, "--sha256", SHA,
                       "--ca-file", str(https.ca_file))
    assert_one_line_failure(result, dest, "resnet50/5/sm_80.plan: no such object")


@pytest.mark.parametrize("case", ["s3-wrong-secret", "s3-unknown-key", "https-wrong-token", "https-no-token"])
def test_refused_credential_is_one_line(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dest = tmp_path / "model.plan"
    if case.startswith("s3"):
        s3: S3 = request.getfixturevalue("s3")
        wrong = ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"} if case == "s3-wrong-secret"
                 else {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000"})
        result = fetch("s3://engines/resnet50/4/sm_80.plan", dest, s3.env(**wrong), "--sha256", SHA)
    else:
        https: Https = request.getfixturevalue("https")
        env = {"GRAYROUTE_FETCH_BEARER_TOKEN": "stolen"} if case == "https-wrong-token" else {}
        result = fetch(f"{https.url}/engines/resnet50/4/sm_80.plan", dest, env, "--sha256", SHA,
                       "--ca-file", str(https.ca_file))
    assert_one_line_failure(result, dest, "access refused", "service account or credentials Secret")


def test_untrusted_certificate_is_one_line(https: Https, tmp_path: Path) -> None:
    dest = tmp_path / "model.plan"
    result = fetch(f"{https.url}/engines/resnet50/4/sm_80.plan", dest,
                   {"GRAYROUTE_FETCH_BEARER_TOKEN": https.token}, "--sha256", SHA)
    assert_one_line_failure(result, dest, "TLS certificate is not trusted")


@pytest.mark.parametrize(("args", "fragment"), [
    (["ftp://host/engine.plan", "--sha256", SHA], "unsupported URI"),
    (["s3://engines/x.plan", "--sha256", "xyz"], "expected 64 hex digits"),
])
def test_bad_arguments_are_one_line(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = fetch(args[0], tmp_path / "model.plan", {}, *args[1:])
    assert_one_line_failure(result, tmp_path / "model.plan", fragment)
