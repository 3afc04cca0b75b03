"""Code that runs inside serverless images: one prediction core, one adapter per platform."""
