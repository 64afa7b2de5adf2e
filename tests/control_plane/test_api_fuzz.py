"""Bounded fuzzing of the live REST API from its own OpenAPI document.

Every operation gets generated requests, valid and invalid, as admin (against
seeded data, so paths like /models/resnet50/versions/4 exist) and as a viewer
(the 403 paths). Whatever is sent, the answer is never a 5xx, an error has the
shape ``{"error": {"code", "message", "details"}}``, and the status code,
content type and body match the OpenAPI document.

Each operation runs a few examples so the test stays near a minute on two
cores; GRAYROUTE_FUZZ_EXAMPLES raises that for a longer hunt.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import HypothesisException
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from control_plane.settings import Settings
from router.stats import REDIS_KEY_PREFIX
from tests.control_plane.conftest import Api

EXAMPLES = int(os.environ.get("GRAYROUTE_FUZZ_EXAMPLES", "20"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# What api.canary() creates: fixing path parameters (and the live ETag) to it reaches the services, not
# just the 404s and 412s.
SEEDED_PATH = {"model": "resnet50", "version": "4", "pool": "a100"}
SEEDED_HEADERS = {"If-Match": '"1"'}


def error_shape_problem(response: Any) -> str | None:
    """Why an error answer breaks the documented shape, or None when it holds."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return "error body is not JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(body) != {"error"}:
        return "body is not {'error': {...}}"
    if not {"code", "message", "details"} <= set(error):
        return f"error lacks {sorted({'code', 'message', 'details'} - set(error))}"
    if not isinstance(error["code"], str) or not isinstance(error["message"], str) or not error["message"]:
        return "code and message must be non-empty strings"
    if response.status_code in (400, 422) and error["code"] == "invalid":
        details = error["details"]
        if not (isinstance(details, list) and details
                and all(isinstance(d, dict) and {"field", "reason"} <= set(d) for d in details)):
            return "422 details must list {field, reason}"
    return None


def fuzz(schema: schemathesis.BaseSchema, base_url: str, token: str, *, modes: tuple[schemathesis.GenerationMode, ...],
         path_parameters: dict[str, str] | None = None,
         fixed_headers: dict[str, str] | None = None) -> tuple[list[str], dict[str, Counter[int]]]:
    """Run every operation; returns (failures, the status codes each operation answered)."""
    failures: list[str] = []
    answered: dict[str, Counter[int]] = defaultdict(Counter)
    headers = {"Authorization": f"Bearer {token}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        fixed = {k: v for k, v in (path_parameters or {}).items() if "{" + k + "}" in operation.path}
        for mode in modes:
            try:
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None,
                                                 headers=fixed_headers)
            except Exception:  # noqa: BLE001 - an operation with nothing to negate has no negative strategy
                continue

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case: schemathesis.Case) -> None:
                response = case.call(base_url=base_url, headers=headers, timeout=30)
                answered[label][response.status_code] += 1
                problem = error_shape_problem(response)
                if problem:
                    failures.append(f"{label}: {problem}\n{case.as_curl_command(headers=headers)}\n{response.text[:500]}")
                try:
                    case.validate_response(response, checks=CHECKS, headers=headers)
                except Exception as exc:  # noqa: BLE001 - collect every failure, then report them all
                    failures.append(f"{label} ({mode.value}): {exc}")

            try:
                run()
            except HypothesisException:  # e.g. Unsatisfiable: no negative variant of this operation exists
                pass
    return failures, answered


@pytest.fixture
def openapi(cp_server: Any, cp_settings: Settings) -> Iterator[schemathesis.BaseSchema]:
    yield schemathesis.openapi.from_url(cp_server.url + "/openapi.json")
    # Fuzzed stats reports live in Redis, which the per-test reset leaves alone.
    client = redis.Redis.from_url(cp_settings.redis_url)
    for key in client.scan_iter(REDIS_KEY_PREFIX + "*"):
        client.delete(key)
    client.close()


def _throwaway_token(api: Api) -> dict[str, str]:
    # Revocation is fuzzed on a token of its own: the role tokens outlive this test.
    created = api.post("/tokens", json={"name": "fuzz-revocable", "role": "viewer"}).json()
    return {"token_id": str(created["id"])}


def test_admin_fuzz_never_5xx_and_errors_keep_their_shape(api: Api, openapi: schemathesis.BaseSchema) -> None:
    api.canary()
    revocable = _throwaway_token(api)
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    failures, seeded = fuzz(openapi, api.base_url, api.tokens["admin"], modes=modes,
                            path_parameters={**SEEDED_PATH, **revocable}, fixed_headers=SEEDED_HEADERS)
    more, unseeded = fuzz(openapi, api.base_url, api.tokens["admin"], modes=(schemathesis.GenerationMode.POSITIVE,),
                          path_parameters=revocable)
    failures += more
    operations = {f"{o.ok().method.upper()} {o.ok().path}" for o in openapi.get_all_operations()}
    # Every operation, the mutating ones included, was reached past authentication.
    reached = {label for runs in (seeded, unseeded) for label, codes in runs.items() if set(codes) - {401}}
    assert reached == operations, f"never exercised: {sorted(operations - reached)}"
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:10])
    # Whatever the fuzzer did, the seeded model still answers.
    assert httpx.get(f"{api.base_url}/api/v1/models/resnet50",
                     headers={"Authorization": f"Bearer {api.tokens['admin']}"}).status_code == 200


def test_viewer_fuzz_gets_403_not_5xx(api: Api, openapi: schemathesis.BaseSchema) -> None:
    api.canary()
    failures, answered = fuzz(openapi, api.base_url, api.tokens["viewer"],
                              modes=(schemathesis.GenerationMode.POSITIVE,),
                              path_parameters={**SEEDED_PATH, **_throwaway_token(api)})
    assert any(403 in codes for codes in answered.values())
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:10])
