"""Every integer the UI reads from a query or a form: odd digits are refused or ignored, never a 500."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.web.conftest import Api

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# Digits str.isdigit() accepts and int() refuses, numbers too long for any column, signs, blanks.
ODD = ["²", "١٢", "¹⁰", "9" * 40, "-1", "+3", " ", "0x10", "1_000"]


def _signed_in(client: httpx.Client, api: Api, model: str) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/login").text).group(1)  # type: ignore[union-attr]
    client.post("/ui/login", data={"csrf": token, "token": api.token("ivy", "release-manager")})
    return re.search(r'name="csrf" value="([^"]+)"',  # type: ignore[union-attr]
                     client.get(f"/ui/models/{model}").text).group(1)


@pytest.mark.parametrize("odd", ODD)
def test_integer_parameters_never_yield_a_server_error(api: Api, model: str, server: Any, odd: str) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False) as client:
        csrf = _signed_in(client, api, model)
        probes: list[tuple[str, str, dict[str, str] | None]] = [
            ("get", f"/ui/models/{model}/confirm/reapply?source={odd}", None),
            ("get", f"/ui/models/{model}?revisions_before={odd}", None),
            ("get", f"/ui/models/{model}?events_before={odd}", None),
            ("get", f"/ui/models/{model}/preview?weight:3=95&weight:4=5&revision={odd}", None),
            ("post", f"/ui/models/{model}/actions/reapply", {"csrf": csrf, "revision": "1", "source": odd}),
            ("post", f"/ui/models/{model}/actions/promote", {"csrf": csrf, "revision": odd, "version": "4"}),
            ("post", f"/ui/models/{model}/traffic", {"csrf": csrf, "revision": odd, "weight:3": "90",
                                                     "weight:4": "10", "default_version": "3"}),
            ("post", f"/ui/models/{model}/rules", {"csrf": csrf, "revision": odd, "rule-count": odd}),
        ]
        for method, path, data in probes:
            response = client.request(method, path, data=data)
            assert response.status_code < 500, (path, odd, response.status_code, response.text[:300])
    # None of them changed the policy: a revision that is not a number is no If-Match.
    assert api.weights(model) == {"3": 95.0, "4": 5.0}
