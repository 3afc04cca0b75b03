"""The distributed-engine seam: run many independent tasks locally or on a Dask cluster.

Batch scoring and distributed training talk to :class:`Engine`, never to Dask directly, so a Ray
or Spark backend can be added behind the same three methods without touching them::

    from mlharbor.compute import open_engine

    with open_engine(backend="dask", scheduler="tcp://127.0.0.1:8786") as engine:
        for index, result in engine.map_unordered(fn, items):
            ...
        with engine.joblib():          # scikit-learn's own parallel loops run on the engine
            search.fit(X, y)

Dask is imported only when a Dask engine is opened (``pip install 'mlharbor[dask]'``).
"""

from __future__ import annotations

from mlharbor.compute.engine import BACKENDS, Engine, open_engine

__all__ = ["BACKENDS", "Engine", "open_engine"]
