"""API tokens: created, listed and revoked by admins, audited."""
