"""What the API answers a newcomer: no history noise, a stated rule for the default version,
refusals in plain words, and API docs that work without internet."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.control_plane.conftest import Api
from tests.services import LiveServer


def _put(api: Api, body: dict[str, Any], etag: str) -> httpx.Response:
    return api.as_("release-manager").put("/models/resnet50/traffic", json=body, headers={"If-Match": etag})


CANARY = {"default_version": "3", "reason": "widen", "rules": [
    {"name": "qa", "match": {"header": "x-tenant", "in": ["qa"]}, "version": "4"}],
    "splits": [{"version": "3", "weight": 90}, {"version": "4", "weight": 10}]}


# --- 5. a PUT identical to the live policy -----------------------------------------------------------

def test_a_put_identical_to_the_live_policy_writes_nothing_and_says_so(api: Api) -> None:
    api.canary(weight=5)
    first = _put(api, CANARY, '"1"')
    assert first.status_code == 200 and first.json()["created"] is True and first.json()["revision"] == 2
    history = api.get("/models/resnet50/traffic/revisions").json()
    audit = api.get("/audit", params={"model": "resnet50"}).json()
    snapshot = api.as_("router").get("/snapshot").headers["etag"]

    # The same policy, weights spelled differently and another reason: still the same routing.
    same = {**CANARY, "reason": "clicked apply twice",
            "splits": [{"version": "3", "weight": "90.00"}, {"version": "4", "weight": 10.0}]}
    again = _put(api, same, '"2"')
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["created"] is False and body["revision"] == 2 and again.headers["etag"] == '"2"'
    assert body["message"] == "identical to the live revision 2: nothing was written"
    assert body["reason"] == "widen"  # the live revision, as it is
    assert api.get("/models/resnet50/traffic/revisions").json() == history
    assert api.get("/audit", params={"model": "resnet50"}).json() == audit
    assert api.as_("router").get("/snapshot").headers["etag"] == snapshot

    # Optimistic concurrency still comes first: a stale If-Match is refused even for the same policy.
    assert _put(api, same, '"1"').status_code == 412
    # Anything that routes differently is a new revision: a rule, the default, the order of the splits.
    for changed in ({**CANARY, "rules": []}, {**CANARY, "default_version": "4"},
                    {**CANARY, "splits": list(reversed(CANARY["splits"]))}):
        etag = api.get("/models/resnet50/traffic").headers["etag"]
        written = _put(api, changed, etag)
        assert written.status_code == 200 and written.json()["created"] is True, written.text


def test_identical_puts_in_a_burst_leave_one_revision(api: Api) -> None:
    """Ten release managers pressing apply at once with the same policy: one revision, nine no-ops or 412s."""
    import concurrent.futures

    api.canary(weight=5)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: _put(api, CANARY, '"1"'), range(10)))
    created = [a for a in answers if a.status_code == 200 and a.json()["created"]]
    assert len(created) == 1
    assert all(a.status_code in (200, 412) for a in answers), [a.text for a in answers]
    assert all(not a.json()["created"] for a in answers if a.status_code == 200 and a is not created[0])
    assert [r["revision"] for r in api.get("/models/resnet50/traffic/revisions").json()] == [2, 1]


# --- 6. the default version's rule -------------------------------------------------------------------

def test_a_default_version_with_no_share_is_accepted_as_the_fallback_and_said_so(api: Api) -> None:
    api.canary(weight=5)
    response = _put(api, {"default_version": "3", "splits": [{"version": "3", "weight": 0},
                                                             {"version": "4", "weight": 100}]}, '"1"')
    assert response.status_code == 200, response.text
    assert response.json()["notes"] == [(
        "default version 3 has 0% of the split: it is the fallback only, serving requests whose version has no "
        "ready backend")]
    # With a share there is nothing to say.
    response = _put(api, {"default_version": "4", "splits": [{"version": "4", "weight": 100}]}, '"2"')
    assert response.status_code == 200 and response.json()["notes"] == []
    # And the rule is in the API's own documentation.
    schema = api.get("/../../openapi.json").json()["components"]["schemas"]["TrafficPut"]
    assert "fallback" in schema["properties"]["default_version"]["description"]


def test_a_default_version_that_cannot_run_is_refused(api: Api) -> None:
    api.canary(weight=5)
    api.version("resnet50", "5", archs=("sm_90",))  # no sm_90 pool
    response = _put(api, {"default_version": "5", "splits": [{"version": "3", "weight": 100}]}, '"1"')
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [{"field": "default_version", "reason": (
        "version '5' has no engine that any pool can run (needs a pool with the engine's gpu_arch and trt_version)")}]


# --- 7. refusals in plain words -------------------------------------------------------------------

SCHEMA_WORDS = re.compile(r"KeyMatchIn|HeaderMatchIn|pattern|\^\[|Extra inputs|Field required|String should")


@pytest.mark.parametrize(("rule", "field", "reason"), [
    ({"name": "QA team", "match": {"header": "x-tenant", "in": ["qa"]}, "version": "4"}, "rules[0].name",
     "use lowercase letters, digits and '-' (not first or last); at most 63 characters"),
    ({"name": "qa", "match": {"header": "x-tenant", "in": []}, "version": "4"}, "rules[0].match.in",
     "must not be empty"),
    ({"name": "qa", "match": {"key_in": []}, "version": "4"}, "rules[0].match.key_in", "must not be empty"),
    ({"name": "qa", "match": {"in": ["qa"]}, "version": "4"}, "rules[0].match.header", "required"),
    ({"name": "qa", "match": {"header": "x tenant", "in": ["qa"]}, "version": "4"}, "rules[0].match.header",
     "an HTTP header name: letters, digits and - (no spaces or ':')"),
    ({"name": "qa", "match": {"key_in": ["u1"], "extra": 1}, "version": "4"}, "rules[0].match.extra",
     "not a field of this object"),
])
def test_rule_refusals_name_the_field_as_sent_in_plain_words(api: Api, rule: dict[str, Any], field: str,
                                                             reason: str) -> None:
    api.canary(weight=5)
    response = _put(api, {**CANARY, "rules": [rule]}, '"1"')
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"] == [{"field": field, "reason": reason}]
    assert error["message"] == f"{field}: {reason}"
    assert not SCHEMA_WORDS.search(response.text), response.text


@pytest.mark.parametrize(("path", "body", "field", "reason"), [
    ("/models", {"name": "My Model"}, "name",
     "use lowercase letters, digits and '-' (not first or last); at most 63 characters"),
    ("/models/resnet50/versions", {"version": "4", "precision": "fp16", "trt_version": "ten",
                                   "engines": [{"gpu_arch": "ampere", "uri": "s3://e", "sha256": "x"}]},
     "engines[0].gpu_arch", "a GPU architecture such as sm_80, sm_86, sm_90 or sm_90a"),
    ("/models/resnet50/versions", {"version": "4", "precision": "fp16", "trt_version": "ten"},
     "trt_version", "a version such as 10.3 or 10.3.0"),
])
def test_registry_refusals_are_plain_words_too(api: Api, path: str, body: dict[str, Any], field: str,
                                               reason: str) -> None:
    api.model("resnet50")
    response = api.as_("publisher").post(path, json=body)
    assert response.status_code == 422
    assert {"field": field, "reason": reason} in response.json()["error"]["details"]
    assert not SCHEMA_WORDS.search(response.text), response.text


# --- 9. API docs without internet ------------------------------------------------------------------

@pytest.mark.parametrize(("page", "assets"), [
    ("/docs", ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css")),
    ("/redoc", ("/docs-assets/redoc.standalone.js",)),
])
def test_api_docs_load_their_assets_from_the_control_plane(cp_server: LiveServer, page: str,
                                                           assets: tuple[str, ...]) -> None:
    with httpx.Client(base_url=cp_server.url) as client:
        html = client.get(page).text
        for asset in assets:
            assert f'"{asset}"' in html or f"'{asset}'" in html, html
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 10_000
        external = [u for u in re.findall(r"(?:src|href)=[\"'](https?://[^\"']+)", html)]
        assert external == [], external
