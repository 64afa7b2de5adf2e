"""Deployment status per (version, pool): the reconciler writes it, the API reads it (and writes it for external pools)."""
