"""The UI's signed session cookie, its CSRF token, and who is signed in.

The cookie holds a random session id (never the token, nor its hash), a CSRF
synchronizer token and one-shot flash messages. It is signed with
``settings.secret_key`` and expires after ``settings.session_max_age_seconds``.
The id is looked up on every request (``auth_service.authenticate_browser_session``):
signing out deletes it on the server, so a copied cookie stops working, and
revoking the token signs its browser sessions out at once.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from control_plane.settings import Settings

COOKIE = "grayroute_ui"
CSRF_FIELD = "csrf"
_SIGNING_SALT = "grayroute.web.session"


class CsrfRejected(Exception):
    """A state-changing request without the session's CSRF token."""


class LoginRequired(Exception):
    """No signed-in person (or their token was revoked)."""


class UISession:
    """The decoded cookie; remembers whether it must be written back."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self.dirty = False

    @property
    def session_id(self) -> str | None:
        value = self._data.get("s")
        return value if isinstance(value, str) else None

    @property
    def csrf(self) -> str:
        """The synchronizer token; created on first use."""
        value = self._data.get("c")
        if not isinstance(value, str):
            value = secrets.token_urlsafe(32)
            self._data["c"] = value
            self.dirty = True
        return value

    def sign_in(self, session_id: str) -> None:
        # A fresh CSRF token on sign-in: one seen before signing in is worth nothing after.
        self._data = {"s": session_id, "c": secrets.token_urlsafe(32)}
        self.dirty = True

    def sign_out(self) -> None:
        self._data = {"c": secrets.token_urlsafe(32)}
        self.dirty = True

    def flash(self, kind: str, text: str) -> None:
        self._data.setdefault("f", []).append([kind, text])
        self.dirty = True

    def pop_flashes(self) -> list[tuple[str, str]]:
        flashes = self._data.pop("f", None)
        if not flashes:
            return []
        self.dirty = True
        return [(str(kind), str(text)) for kind, text in flashes]

    def check_csrf(self, submitted: object) -> None:
        expected = self._data.get("c")
        if not isinstance(expected, str) or not isinstance(submitted, str) or not hmac.compare_digest(
                expected.encode(), submitted.encode()):
            raise CsrfRejected

    def save(self, response: Response, settings: Settings) -> None:
        if not self.dirty:
            return
        response.set_cookie(
            COOKIE, _serializer(settings).dumps(self._data), max_age=settings.session_max_age_seconds,
            path="/ui", httponly=True, secure=settings.cookie_secure,
            # Lax, not Strict: a link to a model page pasted in chat should open signed in; every
            # change is a POST that needs the CSRF token anyway.
            samesite="lax",
        )


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret_key.get_secret_value(), salt=_SIGNING_SALT)


def load(request: Request, settings: Settings) -> UISession:
    """The session from the request's cookie; an empty one when absent, tampered with or expired."""
    raw = request.cookies.get(COOKIE)
    if raw:
        try:
            data = _serializer(settings).loads(raw, max_age=settings.session_max_age_seconds)
        except BadSignature:
            data = None
        if isinstance(data, dict):
            return UISession(data)
    session = UISession({})
    session.dirty = bool(raw)  # replace a bad cookie
    return session

