"""Traffic revisions carry an optional shadow: the version that gets a mirrored share of requests.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # {"version": "4", "percent": 5.0}, or NULL when nothing is mirrored
    op.add_column('traffic_revisions', sa.Column('shadow', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('traffic_revisions', 'shadow')
