"""Control-plane HTTP API."""
