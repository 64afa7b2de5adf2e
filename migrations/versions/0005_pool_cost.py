"""Pools may carry a GPU hourly price, so version reports can put a cost on each engine.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # All optional: a pool without a price reports no cost, never a zero one.
    with op.batch_alter_table('pools') as batch:
        batch.add_column(sa.Column('gpu_hourly_price', sa.Numeric(12, 4), nullable=True))
        batch.add_column(sa.Column('currency', sa.String(3), nullable=True))
        batch.add_column(sa.Column('gpus_per_replica', sa.Integer(), nullable=False, server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('pools') as batch:
        batch.drop_column('gpus_per_replica')
        batch.drop_column('currency')
        batch.drop_column('gpu_hourly_price')
