"""Rollouts: the rollout resource, its verdicts, the controller's leader lease, and the traffic hold on models.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('live_model_id', sa.Integer(), nullable=True),
    sa.Column('candidate', sa.String(length=63), nullable=False),
    sa.Column('baseline', sa.String(length=63), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('step_index', sa.Integer(), nullable=False),
    sa.Column('steps', sa.JSON(), nullable=False),
    sa.Column('step_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('start_revision', sa.Integer(), nullable=False),
    sa.Column('start_policy', sa.JSON(), nullable=False),
    sa.Column('analysis', sa.JSON(), nullable=False),
    sa.Column('gates', sa.JSON(), nullable=False),
    sa.Column('gate_evidence', sa.JSON(), nullable=False),
    sa.Column('override_gates', sa.Boolean(), nullable=False),
    sa.Column('shadow', sa.JSON(), nullable=True),
    sa.Column('started_by', sa.String(length=128), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_rollouts_model_id_models'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollouts')),
    sa.UniqueConstraint('live_model_id', name=op.f('uq_rollouts_live_model_id'))
    )
    op.create_index(op.f('ix_rollouts_model_id'), 'rollouts', ['model_id'], unique=False)
    op.create_table('rollout_verdicts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('step_index', sa.Integer(), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('per_arch', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name=op.f('fk_rollout_verdicts_rollout_id_rollouts'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollout_verdicts'))
    )
    op.create_index(op.f('ix_rollout_verdicts_rollout_id'), 'rollout_verdicts', ['rollout_id'], unique=False)
    op.create_table('controller_leases',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_controller_leases'))
    )
    with op.batch_alter_table('models') as batch:
        batch.add_column(sa.Column('traffic_held_by', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.drop_column('traffic_held_by')
    op.drop_table('controller_leases')
    op.drop_index(op.f('ix_rollout_verdicts_rollout_id'), table_name='rollout_verdicts')
    op.drop_table('rollout_verdicts')
    op.drop_index(op.f('ix_rollouts_model_id'), table_name='rollouts')
    op.drop_table('rollouts')
