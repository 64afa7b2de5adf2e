"""Token administration: create, list, revoke, bootstrap; every change audited (no HTTP here).

Above ``audit`` in the layers, so it can record; who a token belongs to and
what its role may do is ``auth``'s.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit import service as audit_service
from control_plane.auth.models import Token
from control_plane.auth.service import SYSTEM, TOKEN_PREFIX, Actor, Role, hash_token
from control_plane.db import utcnow
from control_plane.errors import Conflict, InvalidInput, NotFound


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
