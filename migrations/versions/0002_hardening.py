"""endpoint allow-lists per pool; server-side UI sessions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

pools.allowed_endpoints starts empty for every pool: after this upgrade an
admin lists, per external pool, the hosts its backends may use before a
publisher can register (or change) endpoints there. Endpoints registered
before stay as they are. browser_sessions lets signing out end a UI session
on the server; cookies issued before the upgrade carry no session id, so
their holders sign in again.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pools') as batch_op:
        batch_op.add_column(sa.Column('allowed_endpoints', sa.JSON(), nullable=False, server_default='[]'))
    op.create_table('browser_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['token_id'], ['tokens.id'], name=op.f('fk_browser_sessions_token_id_tokens'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_browser_sessions'))
    )
    op.create_index(op.f('ix_browser_sessions_token_id'), 'browser_sessions', ['token_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_browser_sessions_token_id'), table_name='browser_sessions')
    op.drop_table('browser_sessions')
    with op.batch_alter_table('pools') as batch_op:
        batch_op.drop_column('allowed_endpoints')
