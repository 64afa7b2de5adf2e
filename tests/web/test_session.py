"""UI sessions end on the server: a cookie copied before signing out is refused after it."""

from __future__ import annotations

import re
import threading

import httpx

from tests.services import LiveServer
from tests.web.conftest import Api


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def _signed_in(server: LiveServer, token: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=30)
    page = client.get("/ui/login")
    response = client.post("/ui/login", data={"token": token, "csrf": _csrf(page.text), "next": "/ui/"})
    assert response.status_code == 303 and response.headers["location"] == "/ui/", response.text[:300]
    return client


def test_a_cookie_copied_before_logout_gets_401_after_it(api: Api, server: LiveServer, model: str) -> None:
    browser = _signed_in(server, api.token("mallory-victim", "viewer"))
    stolen = dict(browser.cookies)
    with httpx.Client(base_url=server.url, cookies=stolen, timeout=30) as thief:
        assert thief.get(f"/ui/models/{model}/preview").status_code == 200
        overview = browser.get("/ui/")
        assert overview.status_code == 200
        signed_out = browser.post("/ui/logout", data={"csrf": _csrf(overview.text)})
        assert signed_out.status_code == 303
        assert thief.get(f"/ui/models/{model}/preview").status_code == 401
        page = thief.get("/ui/")
        assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
    # Signing in again starts a new session; the old one stays dead.
    again = _signed_in(server, api.token("mallory-victim", "viewer"))
    assert again.get(f"/ui/models/{model}/preview").status_code == 200
    with httpx.Client(base_url=server.url, cookies=stolen, timeout=30) as thief:
        assert thief.get(f"/ui/models/{model}/preview").status_code == 401
    browser.close()
    again.close()


def test_signing_out_ends_only_that_session_under_concurrent_use(api: Api, server: LiveServer, model: str) -> None:
    token = api.token("two-browsers", "viewer")
    laptop, phone = _signed_in(server, token), _signed_in(server, token)
    statuses: list[int] = []

    def poll() -> None:
        for _ in range(20):
            statuses.append(phone.get(f"/ui/models/{model}/preview").status_code)

    pollers = [threading.Thread(target=poll) for _ in range(3)]
    for poller in pollers:
        poller.start()
    overview = laptop.get("/ui/")
    assert laptop.post("/ui/logout", data={"csrf": _csrf(overview.text)}).status_code == 303
    for poller in pollers:
        poller.join()
    assert set(statuses) == {200}  # the other browser never noticed
    assert laptop.get(f"/ui/models/{model}/preview").status_code == 401
    laptop.close()
    phone.close()


def test_the_cookie_carries_no_token_material(api: Api, server: LiveServer) -> None:
    from itsdangerous import URLSafeTimedSerializer

    from control_plane.auth.service import hash_token
    from tests.web.conftest import SECRET_KEY

    token = api.token("cookie-check", "viewer")
    client = _signed_in(server, token)
    data = URLSafeTimedSerializer(SECRET_KEY, salt="grayroute.web.session").loads(client.cookies["grayroute_ui"])
    assert set(data) <= {"s", "c", "f"}
    assert hash_token(token) not in str(data) and token not in str(data)
    client.close()
