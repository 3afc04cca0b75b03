"""``mlharbor predict`` as a user runs it: bad input gets one line and an exit code and writes
nothing; a job killed mid-way resumes to exactly what an uninterrupted run gives."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlharbor.settings import Settings
from tests.support import VENV_BIN, cli_env, free_port, run_cli

FEATURES = [f"f{i}" for i in range(5)]
ROWS, PART_ROWS = 100_000, 2_500  # 40 parts: a kill always lands mid-job


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model

    root = tmp_path_factory.mktemp("predict-cli")
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(400, 5)), columns=FEATURES)
    settings = Settings(home=root / "home")
    registry = open_registry(settings)
    register_model(registry, "churn", RandomForestClassifier(
        n_estimators=10, max_depth=6, random_state=0).fit(x, (x.f0 > 0).astype(int)),
        settings=settings, sample_input=x.head(20))
    registry.close()
    big = pd.DataFrame(rng.normal(size=(ROWS, 5)), columns=FEATURES)
    pq.write_table(pa.Table.from_pandas(big.assign(id=np.arange(len(big))),
                                        preserve_index=False),
                   root / "big.parquet", row_group_size=PART_ROWS)
    return {"root": root, "env": cli_env(settings), "settings": settings}


@pytest.mark.parametrize(("args", "code", "words"), [
    (["churn:1", "--input", "{root}/nope.parquet"], 3, "does not exist"),
    (["churn:1", "--input", "{root}/*.nothing"], 3, "matched no CSV or Parquet files"),
    (["churn:9", "--input", "{root}/big.parquet"], 3, "churn"),
    (["churn:1", "--input", "{root}/big.parquet", "--engine", "dask", "--scheduler",
      "tcp://127.0.0.1:{port}"], 8, "cannot reach the Dask scheduler"),
    (["churn:1", "--input", "{root}/big.parquet", "--engine", "spark"], 2,
     "unknown compute engine"),
    (["churn:1", "--input", "{root}/big.parquet", "--on-error", "skip"], 2, "--on-error"),
    (["churn:1", "--input", "{root}/big.parquet", "--memory-budget", "lots"], 2,
     "is not a size"),
])
def test_bad_input_is_one_line_an_exit_code_and_nothing_written(
        home: dict[str, Any], tmp_path: Path, args: list[str], code: int, words: str) -> None:
    filled = [a.format(root=home["root"], port=free_port()) for a in args]
    out = tmp_path / "out"
    done = run_cli("predict", *filled, "--output", str(out), env=home["env"])
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("error: ") and words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_an_output_under_a_file_is_refused(home: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = run_cli("predict", "churn:1", "--input", str(home["root"] / "big.parquet"),
                   "--output", str(blocker / "out"), env=home["env"])
    assert done.returncode == 2 and "is not writable" in done.stderr


@pytest.mark.slow
def test_killed_mid_job_resumes_to_the_uninterrupted_result(home: dict[str, Any],
                                                             tmp_path: Path) -> None:
    import pyarrow.dataset as ds

    source = str(home["root"] / "big.parquet")
    out = tmp_path / "killed"
    args = ["predict", "churn:1", "--input", source, "--output", str(out), "--id-column",
            "id", "--workers", "1", "--part-rows", str(PART_ROWS)]
    env = {**os.environ, **home["env"]}
    proc = subprocess.Popen([str(VENV_BIN / "mlharbor"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = out / "_manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):  # not there yet, or being replaced
            if json.loads(manifest.read_text())["done"]:
                break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    done_before = json.loads(manifest.read_text())["done"]
    parts = len(json.loads(manifest.read_text())["parts"])
    assert 0 < len(done_before) < parts, "the job must die mid-way for this test to mean it"
    again = run_cli(*args, env=home["env"])
    assert again.returncode == 0, again.stderr
    assert f"{len(done_before)} already done" in again.stdout
    # the same job uninterrupted, through the Python API (the code the command runs)
    from mlharbor.bootstrap import open_registry
    from mlharbor.pipelines.batchscore import BatchOptions, score_batch

    whole = tmp_path / "whole"
    registry = open_registry(home["settings"])
    try:
        score_batch(registry, home["settings"], "churn:1", BatchOptions(
            source, whole, id_column="id", workers=1, part_rows=PART_ROWS), actor="test")
    finally:
        registry.close()

    def table(folder: Path) -> Any:
        files = sorted(str(p) for p in folder.glob("part-*.parquet"))
        return ds.dataset(files, format="parquet").to_table()

    assert table(out).equals(table(whole))
    assert table(out).num_rows == ROWS


def test_an_s3_output_is_refused_with_the_reason_and_nothing_created(
        home: dict[str, Any], tmp_path: Path) -> None:
    done = run_cli("predict", "churn:1", "--input", str(home["root"] / "big.parquet"),
                   "--output", "s3://bucket/scored", env=home["env"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "s3:// is not supported yet" in done.stderr and "aws s3 sync" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # no local folder named "s3:" either
