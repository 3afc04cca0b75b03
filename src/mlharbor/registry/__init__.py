"""Registry: models, versions, aliases and their artifacts."""
