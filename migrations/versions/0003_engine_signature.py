"""engine I/O signature, dynamic batching, pool engine credentials

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

A version may carry its network's inputs/outputs and max_batch_size (Triton's
config and warm-up sample are made from them) and a dynamic-batching setting;
a pool names where its engine fetches take credentials from.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('versions', sa.Column('signature', sa.JSON(), nullable=True))
    op.add_column('versions', sa.Column('dynamic_batching', sa.JSON(), nullable=True))
    op.add_column('pools', sa.Column('engine_credentials', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pools') as batch:
        batch.drop_column('engine_credentials')
    with op.batch_alter_table('versions') as batch:
        batch.drop_column('dynamic_batching')
        batch.drop_column('signature')
