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

from control_plane.audit import service as audit_service
from control_plane.auth.models import BrowserSession, Token
from control_plane.db import utcnow
from control_plane.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated

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
            details["fields"] = [*fields]  # `list` is this module's service verb
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


async def create(session: AsyncSession, *, name: str, role: str, actor: Actor) -> tuple[Token, str]:
    """Create a token; returns the row and the plaintext, which is never stored."""
    try:
        role_value = Role(role)
    except ValueError:
        raise InvalidInput.field("role", f"must be one of {[r.value for r in Role]}") from None
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = Token(name=name, role=role_value.value, token_hash=hash_token(plaintext), prefix=plaintext[:10],
                  created_by=actor.name)
    session.add(token)
    await session.flush()
    await audit_service.record(session, actor=actor, action="token.create", target_type="token", target=name,
                               after={"name": name, "role": role_value.value, "prefix": token.prefix})
    await session.commit()
    return token, plaintext


async def list(session: AsyncSession) -> Sequence[Token]:  # noqa: A001 - the service verb
    """Every token, newest first (hashes stay in the database)."""
    return (await session.scalars(select(Token).order_by(Token.id.desc()))).all()


async def revoke(session: AsyncSession, *, token_id: int, actor: Actor) -> Token:
    """Revoke a token at once: its next request is refused, and UI sessions signed in with it end."""
    token = await session.get(Token, token_id)
    if token is None:
        raise NotFound(f"token {token_id} not found", {"token": token_id})
    if token.id == actor.token_id:
        # Locking yourself out is never what was meant; another admin can do it.
        raise Conflict("that is the token this request uses; revoke it with another admin token",
                       {"token": token_id})
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        await audit_service.record(session, actor=actor, action="token.revoke", target_type="token",
                                   target=token.name, before={"role": token.role, "prefix": token.prefix},
                                   after={"revoked": True})
        await session.commit()
    return token


async def ensure_bootstrap(session: AsyncSession, *, plaintext: str, role: Role = Role.ADMIN) -> None:
    """Make a token provisioned outside grayroute (e.g. from a Kubernetes Secret) valid (idempotent)."""
    digest = hash_token(plaintext)
    if (await session.execute(select(Token.id).where(Token.token_hash == digest))).first() is None:
        name = f"bootstrap-{role.value}"
        session.add(Token(name=name, role=role.value, token_hash=digest, prefix=plaintext[:10],
                          created_by=SYSTEM.name))
        await audit_service.record(session, actor=SYSTEM, action="token.bootstrap", target_type="token",
                                   target=name, after={"role": role.value})
        await session.commit()
