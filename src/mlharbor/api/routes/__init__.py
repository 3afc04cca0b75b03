"""Control-plane route groups."""
