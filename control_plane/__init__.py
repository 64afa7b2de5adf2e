"""grayroute control plane: one package per domain, in layers (README "Layout").

Bottom up; each layer imports only the layers below it, and
``tests/test_architecture.py`` checks it with import-linter::

    settings, db, errors   configuration, the database session, the error tree
    changes                the routing change counter (snapshot revision) and the Committer protocol
    auth, deps             actors, roles, token lookup; the routes' injected dependencies
    audit                  who changed what, before and after
    tokens                 token administration (audited)
    registry               models, versions, engines, pools; the TensorRT compatibility rule
    deployments            status per (version, pool), external endpoints
    traffic                policies, revisions, preview, the snapshot and its publisher
    stats, parity          merged router figures; shadow output parity
    rollouts               staged rollouts: the step analysis, the API, the leader-elected controller
    reconciler             desired state, deployment targets
    app, cli, demo, migrate  wiring (with ``web``)

Below all of them, ``router`` (the data plane) provides the shared kernel:
``router.routing``, ``router.policy``, ``router.snapshot``, ``router.stats``.
A lower layer that needs an answer from a higher one declares a protocol and
the wiring passes the implementation in (``changes.Committer``,
``registry.service.LivePolicies``). Traffic learns that a rollout holds a
model's policy from the model's ``traffic_held_by`` column, which rollouts set.
"""
