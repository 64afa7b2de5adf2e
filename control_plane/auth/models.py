"""API tokens and the UI sessions signed in with them; only SHA-256 digests of either secret are stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.db import Base, utcnow


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    # SHA-256 hex: tokens carry 256 random bits, so a fast hash is enough and keeps auth cheap.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters, so people can tell tokens apart without the secret.
    prefix: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class BrowserSession(Base):
    """A UI sign-in. Signing out deletes it, so a copy of the cookie taken earlier stops working."""

    __tablename__ = "browser_sessions"

    # SHA-256 of the random id the signed cookie carries.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
