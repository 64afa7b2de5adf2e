"""Token endpoints."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.auth import service as auth_service
from control_plane.auth.schemas import TokenCreate, TokenCreated
from control_plane.deps import SessionDep, TokenWriter
from control_plane.errors import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1", tags=["tokens"], responses=ERROR_RESPONSES)


@router.post("/tokens", status_code=201, response_model=TokenCreated)
async def create_token(body: TokenCreate, session: SessionDep,
                       actor: TokenWriter) -> TokenCreated:
    token, plaintext = await auth_service.create(session, name=body.name, role=body.role.value, actor=actor)
    return TokenCreated(name=token.name, role=body.role, prefix=token.prefix, created_at=token.created_at,
                        token=plaintext)
