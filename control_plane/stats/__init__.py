"""Per-version figures reported by routers, merged across routers for the UI and rollouts."""
