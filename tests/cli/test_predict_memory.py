"""``mlharbor predict --memory-budget``: a dataset ten times the budget scores with the process's
peak RSS under the budget, and a budget too small for the model and one batch is refused
before anything is written, naming the smallest budget that works.

The budget is set just above that smallest budget (what the refusal names, measured by the
command itself on this machine), so the test holds wherever the interpreter's floor lies, and
the dataset is sized from it: ten hard links to one Parquet file of wide rows whose values come
from a small set, so it is quick to write and small on disk while every byte of it is decoded
in the scoring process (the fingerprint still hashes each name).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlharbor.settings import Settings
from tests.peak_rss import run_measured
from tests.support import VENV_BIN, cli_env, run_cli

COLUMNS = 128
LINKS = 10
HEADROOM = 48 << 20  # above the smallest budget: room for batches of more than 256 rows


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registered logistic regression over ``COLUMNS`` float features (served by ONNX)."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model

    root = tmp_path_factory.mktemp("predict-memory")
    rng = np.random.default_rng(3)
    names = [f"f{i}" for i in range(COLUMNS)]
    x = pd.DataFrame(rng.normal(size=(600, COLUMNS)), columns=names)
    model = LogisticRegression(max_iter=500).fit(x, (x.f0 - x.f1 > 0).astype(int))
    settings = Settings(home=root / "home")
    registry = open_registry(settings)
    registered = register_model(registry, "wide", model, settings=settings,
                                sample_input=x.head(20))
    registry.close()
    assert registered.runtime == "onnx", registered.summary()
    small = root / "small.parquet"
    _write(small, names, rows=2_000)
    return {"root": root, "env": cli_env(settings), "names": names, "model": model,
            "small": small}


def _write(path: Path, names: list[str], rows: int, chunk: int = 16_384) -> None:
    """``rows`` rows of values drawn from 16 per column (dictionary-encoded on disk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    levels = rng.normal(size=(len(names), 16))
    schema = pa.schema([(n, pa.float64()) for n in names])
    with pq.ParquetWriter(path, schema) as out:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            codes = rng.integers(0, 16, size=(len(names), n), dtype=np.int8)
            out.write_table(pa.table({name: levels[i][codes[i]] for i, name in
                                      enumerate(names)}, schema=schema))


def _smallest_budget(wide: dict[str, Any], tmp_path: Path) -> int:
    out = tmp_path / "refused"
    done = run_cli("predict", "wide:1", "--input", str(wide["small"]), "--output", str(out),
                   "--workers", "1", "--memory-budget", "1MB", env=wide["env"])
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "cannot hold the model and one batch" in done.stderr
    assert not out.exists()
    match = re.search(r"Give --memory-budget (\d+)MiB or more", done.stderr)
    assert match, done.stderr
    return int(match.group(1)) << 20


def test_a_budget_below_the_model_and_one_batch_is_refused_and_names_what_works(
        wide: dict[str, Any], tmp_path: Path) -> None:
    smallest = _smallest_budget(wide, tmp_path)
    out = tmp_path / "out"
    done = run_cli("predict", "wide:1", "--input", str(wide["small"]), "--output", str(out),
                   "--workers", "1", "--memory-budget", f"{smallest}", env=wide["env"])
    assert done.returncode == 0, done.stderr
    assert "scored 2,000 of 2,000 rows" in done.stdout


@pytest.mark.slow
def test_ten_times_the_budget_scores_under_the_budget(wide: dict[str, Any],
                                                      tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    budget = _smallest_budget(wide, tmp_path) + HEADROOM
    rows_per_file = -(-budget * 10 // (LINKS * COLUMNS * 8))
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "part-0.parquet", wide["names"], rows_per_file)
    for i in range(1, LINKS):
        os.link(folder / "part-0.parquet", folder / f"part-{i}.parquet")
    decoded = LINKS * rows_per_file * COLUMNS * 8
    assert decoded >= 10 * budget

    out = tmp_path / "out"
    done = run_measured([str(VENV_BIN / "mlharbor"), "predict", "wide:1", "--input",
                         str(folder), "--output", str(out), "--workers", "1",
                         "--memory-budget", str(budget)], env=wide["env"], timeout=300)
    assert done.returncode == 0, done.stderr
    peak = done.peak_rss
    total = LINKS * rows_per_file
    assert f"scored {total:,} of {total:,} rows" in done.stdout
    assert peak < budget, (f"peak RSS {peak / 2**20:.0f} MiB over the budget "
                           f"{budget / 2**20:.0f} MiB for {decoded / 2**20:.0f} MiB of data")
    # and the answers are the model's own, on the first rows of a part
    # (the first 500 rows whatever the row groups: an output row group's size follows the
    # batch the budget allows, 256 rows on some runs)
    first = next(pq.ParquetFile(out / "part-00003.parquet").iter_batches(batch_size=500))
    inputs = next(pq.ParquetFile(folder / "part-3.parquet").iter_batches(batch_size=500))
    assert first.num_rows == inputs.num_rows == 500
    proba = wide["model"].predict_proba(inputs.to_pandas())
    assert np.allclose(first.column("probability_1").to_numpy(), proba[:, 1], atol=1e-5)
