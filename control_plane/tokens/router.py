"""Token endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from control_plane.deps import SessionDep, TokenWriter
from control_plane.errors import ERROR_RESPONSES
from control_plane.tokens import service as tokens_service
from control_plane.tokens.schemas import TokenCreate, TokenCreated, TokenRead

router = APIRouter(prefix="/api/v1", tags=["tokens"], responses=ERROR_RESPONSES)


@router.post("/tokens", status_code=201, response_model=TokenCreated)
async def create_token(body: TokenCreate, session: SessionDep,
                       actor: TokenWriter) -> TokenCreated:
    token, plaintext = await tokens_service.create(session, name=body.name, role=body.role.value, actor=actor)
    return TokenCreated(id=token.id, name=token.name, role=body.role, prefix=token.prefix,
                        created_at=token.created_at, token=plaintext)


@router.get("/tokens", response_model=list[TokenRead])
async def list_tokens(session: SessionDep, _actor: TokenWriter) -> list[TokenRead]:
    return [TokenRead.model_validate(t) for t in await tokens_service.list(session)]


@router.post("/tokens/{token_id}/revoke", response_model=TokenRead)
async def revoke_token(token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep,
                       actor: TokenWriter) -> TokenRead:
    return TokenRead.model_validate(await tokens_service.revoke(session, token_id=token_id, actor=actor))
