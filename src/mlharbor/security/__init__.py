"""Security: identities and API keys, the policy table (RBAC), ASGI authentication, transport
limits, envelope encryption of artifacts and Ed25519 signing of versions.

Sits low in the import graph (beside formats, data, telemetry): it never imports the registry,
the API or the CLI. Those edges hand it what it needs (a SQLAlchemy engine, an audit sink) and
the composition root (``mlharbor.bootstrap``) wires it in.

How a surface plugs in:

* HTTP (Starlette/FastAPI): ``middleware.add_auth(app, identities=..., audit=..., settings=...)``
  then ``middleware.add_transport(app, settings)``; any other ASGI app:
  ``middleware.secure_asgi(app, ...)``. The serving app (its own cached-key auth) takes the
  same transport guard from ``middleware.guard_transport(app, settings, body_limit=False)``:
  its HTTP layer enforces the body limit on every route itself. Identities come from
  ``bootstrap.open_identities(registry)``, the audit sink is ``registry.store.record``.
* New routes: one :class:`routemap.RouteRule` per (method, path template) in
  ``routemap.RULES`` (or ``extra_rules=``): the action from ``policy.ACTIONS`` and a resource
  finder (``model_param("name")``, ``endpoint_param("model")``). A path no rule matches is
  answered 404 before the app sees it, and ``tests/api/test_auth_policy.py`` fails.
* Inside a route (GraphQL resolvers, dashboard forms): ``request.state.principal`` holds the
  :class:`policy.Principal`; ``policy.require(principal, action, resource)`` raises 401/403
  errors. The registry gets ``actor_of(request)`` (the principal's name) for the audit trail.
"""
