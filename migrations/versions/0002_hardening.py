"""endpoint allow-lists per pool; server-side UI sessions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

pools.allowed_endpoints: the hosts an external pool's backends may use. Each
external pool starts with exactly the host:port pairs of the endpoints
registered on it, so nothing that routes today stops and nothing new is
admitted; an admin widens the list with PUT /pools/{pool}. browser_sessions
lets signing out end a UI session on the server; cookies issued before the
upgrade carry no session id, so their holders sign in again.
"""
from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pools') as batch_op:
        batch_op.add_column(sa.Column('allowed_endpoints', sa.JSON(), nullable=False, server_default='[]'))
    _allow_what_is_registered()
    op.create_table('browser_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['token_id'], ['tokens.id'], name=op.f('fk_browser_sessions_token_id_tokens'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_browser_sessions'))
    )
    op.create_index(op.f('ix_browser_sessions_token_id'), 'browser_sessions', ['token_id'], unique=False)


def _allow_what_is_registered() -> None:
    pools = sa.table('pools', sa.column('id', sa.Integer()), sa.column('kind', sa.String()),
                     sa.column('allowed_endpoints', sa.JSON()))
    deployments = sa.table('deployments', sa.column('pool_id', sa.Integer()), sa.column('endpoints', sa.JSON()))
    bind = op.get_bind()
    allowed: dict[int, set[str]] = {}
    for pool_id, endpoints in bind.execute(
            sa.select(pools.c.id, deployments.c.endpoints).join(deployments, deployments.c.pool_id == pools.c.id)
            .where(pools.c.kind == 'external')):
        for endpoint in endpoints or ():
            parts = urlsplit(endpoint['url'])
            if not parts.hostname:
                continue
            host = f'[{parts.hostname}]' if ':' in parts.hostname else parts.hostname
            allowed.setdefault(pool_id, set()).add(f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}")
    for pool_id, patterns in allowed.items():
        bind.execute(pools.update().where(pools.c.id == pool_id).values(allowed_endpoints=sorted(patterns)))


def downgrade() -> None:
    op.drop_index(op.f('ix_browser_sessions_token_id'), table_name='browser_sessions')
    op.drop_table('browser_sessions')
    with op.batch_alter_table('pools') as batch_op:
        batch_op.drop_column('allowed_endpoints')
