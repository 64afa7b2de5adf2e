"""grayroute control plane: registry, traffic policies, audit, auth, snapshot and reconciler."""
