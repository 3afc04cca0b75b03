"""Security: identities and API keys, the policy table (RBAC), ASGI authentication, transport
limits, envelope encryption of artifacts and Ed25519 signing of versions.

Sits low in the import graph (beside formats, data, telemetry): it never imports the registry,
the API or the CLI. Those edges hand it what it needs (a SQLAlchemy engine, an audit sink) and
the composition root (``mlharbor.bootstrap``) wires it in.
"""
