"""Alembic migrations: the owner of the database schema."""
