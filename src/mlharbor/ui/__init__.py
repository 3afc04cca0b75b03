"""The monitoring dashboard at ``/ui``: one HTML page, vendored uPlot, the monitoring JSON API."""
