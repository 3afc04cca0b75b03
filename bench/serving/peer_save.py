"""Save the bench's model in a peer's own format; run with the peer venv's python.

    bench/.peers/mlflow/bin/python peer_save.py mlflow MODEL.pkl OUT_DIR
    BENTOML_HOME=... bench/.peers/bentoml/bin/python peer_save.py bentoml MODEL.pkl bench_rf

MODEL.pkl is the RandomForest run.py trained (same scikit-learn version in every venv).
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path


def main() -> None:
    kind, source, target = sys.argv[1:4]
    model = pickle.loads(Path(source).read_bytes())  # our own file, written by run.py
    if kind == "mlflow":
        import mlflow.sklearn
        import skops.io

        # MLflow 3's default sklearn format is skops: it refuses to load types not listed.
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
        # MLflow's default pyfunc predict function (``predict``), as users save models.
        mlflow.sklearn.save_model(model, target, skops_trusted_types=trusted)
    elif kind == "bentoml":
        import bentoml

        print(bentoml.sklearn.save_model(target, model).tag)
    else:
        raise SystemExit(f"unknown peer {kind}")


if __name__ == "__main__":
    main()
