"""Tokens, roles and what each role may do."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.auth.models import Token
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


def authorize(actor: Actor, permission: Permission) -> None:
    if not actor.can(permission):
        raise Forbidden(f"role {actor.role.value!r} may not do this (needs {permission.value!r})",
                        {"role": actor.role.value, "permission": permission.value})


async def authenticate(session: AsyncSession, *, token: str) -> Actor:
    """The actor behind a bearer token; Unauthenticated for unknown or revoked ones."""
    actor = await authenticate_hash(session, token_hash=hash_token(token))
    if actor is None:
        raise Unauthenticated("unknown or revoked token")
    return actor


async def authenticate_hash(session: AsyncSession, *, token_hash: str) -> Actor | None:
    """The actor behind a token's hash (UI sessions keep only the hash), or None when unknown or revoked."""
    row = (await session.execute(
        select(Token.id, Token.name, Token.role).where(Token.token_hash == token_hash, Token.revoked_at.is_(None))
    )).first()
    return None if row is None else Actor(row.name, Role(row.role), row.id)
