"""Bearer tokens (stored hashed) and roles."""
