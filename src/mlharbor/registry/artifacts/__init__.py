"""Artifact stores: content-addressed blobs on local disk or S3."""
