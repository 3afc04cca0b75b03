"""Model formats: one module per format behind :class:`ModelFormat`, a catalog, bundles, ONNX.

Importing this package is cheap: each format imports its framework only when used. Start from
:func:`mlharbor.formats.catalog.get_format`, :func:`mlharbor.formats.builder.build_bundle` and
:func:`mlharbor.formats.predictor.load_bundle`.
"""

from __future__ import annotations

__all__: list[str] = []
