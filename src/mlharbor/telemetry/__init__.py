"""Telemetry: Prometheus metrics on a per-app registry and structured JSON logs."""
