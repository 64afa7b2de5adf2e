"""Tokens, roles and what each role may do."""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.auth.models import BrowserSession, Token
from control_plane.db import utcnow
from control_plane.errors import Forbidden, Unauthenticated

TOKEN_PREFIX = "gr_"


class Role(enum.StrEnum):
    ADMIN = "admin"
    PUBLISHER = "publisher"
    RELEASE_MANAGER = "release-manager"
    VIEWER = "viewer"
    ROUTER = "router"


class Permission(enum.StrEnum):
    READ = "read"  # every GET of the API and UI
    SNAPSHOT = "snapshot"  # GET /snapshot
    MODELS_WRITE = "models:write"  # create models, change their settings
    VERSIONS_WRITE = "versions:write"  # register versions and engines
    VERSIONS_OPERATE = "versions:operate"  # notes, warm, retire
    ENDPOINTS_WRITE = "endpoints:write"  # external pools' backend URLs
    POOLS_WRITE = "pools:write"
    TRAFFIC_WRITE = "traffic:write"
    TOKENS_WRITE = "tokens:write"
    STATS_REPORT = "stats:report"  # routers push their windows


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.PUBLISHER: frozenset({Permission.READ, Permission.SNAPSHOT, Permission.MODELS_WRITE,
                               Permission.VERSIONS_WRITE, Permission.VERSIONS_OPERATE, Permission.ENDPOINTS_WRITE}),
    Role.RELEASE_MANAGER: frozenset({Permission.READ, Permission.SNAPSHOT, Permission.TRAFFIC_WRITE,
                                     Permission.VERSIONS_OPERATE}),
    Role.VIEWER: frozenset({Permission.READ, Permission.SNAPSHOT}),
    Role.ROUTER: frozenset({Permission.SNAPSHOT, Permission.STATS_REPORT}),
}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is making a request."""

    name: str
    role: Role
    token_id: int | None = None

    def can(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]


SYSTEM = Actor("system", Role.ADMIN)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authorize(actor: Actor, permission: Permission, *, fields: Sequence[str] = ()) -> None:
    """Forbidden unless the actor's role grants ``permission``; ``fields`` names what needed it."""
    if not actor.can(permission):
        what = f"change {', '.join(fields)}" if fields else "do this"
        details: dict[str, object] = {"role": actor.role.value, "permission": permission.value}
        if fields:
            details["fields"] = list(fields)
        raise Forbidden(f"role {actor.role.value!r} may not {what} (needs {permission.value!r})", details)


async def authenticate(session: AsyncSession, *, token: str) -> Actor:
    """The actor behind a bearer token; Unauthenticated for unknown or revoked ones."""
    actor = await authenticate_hash(session, token_hash=hash_token(token))
    if actor is None:
        raise Unauthenticated("unknown or revoked token")
    return actor


async def authenticate_hash(session: AsyncSession, *, token_hash: str) -> Actor | None:
    """The actor behind a token's hash, or None when unknown or revoked."""
    row = (await session.execute(
        select(Token.id, Token.name, Token.role).where(Token.token_hash == token_hash, Token.revoked_at.is_(None))
    )).first()
    return None if row is None else Actor(row.name, Role(row.role), row.id)


async def start_browser_session(session: AsyncSession, *, actor: Actor, max_age_seconds: int) -> str:
    """Sign a browser in as ``actor`` (authenticated by its token); returns the id its cookie carries."""
    # Sessions past their lifetime are worthless (the cookie expired too): sweep them on the way.
    await session.execute(delete(BrowserSession).where(
        BrowserSession.created_at < utcnow() - timedelta(seconds=max_age_seconds)))
    session_id = secrets.token_urlsafe(32)
    session.add(BrowserSession(id=hash_token(session_id), token_id=actor.token_id))
    await session.commit()
    return session_id


async def authenticate_browser_session(session: AsyncSession, *, session_id: str,
                                       max_age_seconds: int) -> Actor | None:
    """The actor of a signed-in browser, or None when it signed out, expired or its token was revoked."""
    row = (await session.execute(
        select(Token.id, Token.name, Token.role).join(BrowserSession, BrowserSession.token_id == Token.id)
        .where(BrowserSession.id == hash_token(session_id), Token.revoked_at.is_(None),
               BrowserSession.created_at >= utcnow() - timedelta(seconds=max_age_seconds))
    )).first()
    return None if row is None else Actor(row.name, Role(row.role), row.id)


async def end_browser_session(session: AsyncSession, *, session_id: str) -> None:
    """Sign a browser out on the server: its cookie, wherever copied, is refused from now on."""
    await session.execute(delete(BrowserSession).where(BrowserSession.id == hash_token(session_id)))
    await session.commit()
