"""Batch scoring through the Python API: answers equal the registered model's own predict, bad
rows go to the errors file or stop the job, reruns resume, the ledger records the dataset, the
prediction log sees the rows, S3 inputs, and the Dask engine gives what local gives."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlharbor.core.errors import ConflictError, InvalidInputError, SchemaError
from mlharbor.pipelines.batchscore import BatchOptions, score_batch
from mlharbor.settings import Settings

FEATURES = [f"f{i}" for i in range(5)]


@pytest.fixture(scope="module")
def scored_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model

    root = tmp_path_factory.mktemp("batch")
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(3000, 5)).round(3), columns=FEATURES)
    y = ((x.f0 + x.f1 - x.f2) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(x, y)
    settings = Settings(home=root / "home")
    registry = open_registry(settings)
    register_model(registry, "churn", model, settings=settings, sample_input=x.head(20))
    registry.close()
    table = x.assign(id=np.arange(len(x)) + 1000)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), root / "rows.parquet",
                   row_group_size=250)
    (root / "csv").mkdir()
    table.iloc[:600].to_csv(root / "csv" / "a.csv", index=False)
    table.iloc[600:1000].to_csv(root / "csv" / "b.csv", index=False)
    return {"root": root, "settings": settings, "model": model, "x": x, "table": table}


@pytest.fixture
def registry(scored_home: dict[str, Any]) -> Iterator[Any]:
    from mlharbor.bootstrap import open_registry

    reg = open_registry(scored_home["settings"])
    yield reg
    reg.close()


def _read(output: Path) -> Any:
    import pyarrow.dataset as ds

    parts = sorted(output.glob("part-*.parquet"))
    return ds.dataset([str(p) for p in parts], format="parquet").to_table().to_pandas()


def _expect_model_answers(frame: Any, scored_home: dict[str, Any]) -> None:
    rows = scored_home["table"].set_index("id").loc[frame["id"].to_numpy()]
    model = scored_home["model"]
    assert frame["prediction"].tolist() == model.predict(rows[FEATURES]).tolist()
    proba = model.predict_proba(rows[FEATURES])
    assert np.allclose(frame["probability_1"], proba[:, 1], atol=1e-5)
    assert set(frame["model_version"]) == {"churn:1"}


def test_parquet_parts_equal_the_model_own_predict(scored_home: dict[str, Any], registry: Any,
                                                   tmp_path: Path) -> None:
    root = scored_home["root"]
    options = BatchOptions(str(root / "rows.parquet"), tmp_path / "out", id_column="id",
                           part_rows=1000, workers=2)
    summary = score_batch(registry, scored_home["settings"], "churn:1", options, actor="t")
    assert (summary.parts, summary.rows, summary.scored, summary.errors) == (3, 3000, 3000, 0)
    frame = _read(tmp_path / "out")
    assert frame["id"].tolist() == list(range(1000, 4000))  # input order, part by part
    _expect_model_answers(frame, scored_home)
    # the ledger says which version scored which dataset (the file's own sha256 fingerprint)
    from mlharbor.data.loading import load_table

    last = _audit(registry)[-1]
    assert last.resource == "model/churn/version/1" and last.outcome == "success"
    assert last.details["fingerprint"] == load_table(root / "rows.parquet").fingerprint
    assert last.details["rows"] == 3000


def _audit(registry: Any) -> list[Any]:
    from mlharbor.registry import audit

    with registry.store.db.engine.connect() as conn:
        return [e for e in audit.iter_events(conn) if e.action == "model.batch_predict"]


def test_a_rerun_skips_done_parts_and_gives_the_same_result(
        scored_home: dict[str, Any], registry: Any, tmp_path: Path) -> None:
    root = scored_home["root"]
    out = tmp_path / "out"
    options = BatchOptions(str(root / "rows.parquet"), out, id_column="id", part_rows=1000)
    score_batch(registry, scored_home["settings"], "churn:1", options, actor="t")
    first = _read(out)
    manifest = json.loads((out / "_manifest.json").read_text())
    del manifest["done"]["1"]  # as if the run died after parts 0 and 2
    (out / "part-00001.parquet").unlink()
    (out / ".part-00001.parquet.dead.tmp").write_bytes(b"half a part")
    (out / "_manifest.json").write_text(json.dumps(manifest))
    again = score_batch(registry, scored_home["settings"], "churn:1", options, actor="t")
    assert again.parts_skipped == 2 and again.rows == 3000
    assert not list(out.glob(".*.tmp"))
    assert _read(out).equals(first)
    other = BatchOptions(str(root / "csv"), out, id_column="id")
    with pytest.raises(ConflictError, match="holds the results of another job"):
        score_batch(registry, scored_home["settings"], "churn:1", other, actor="t")


def _csv_with_bad_rows(root: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    text = (root / "csv" / "a.csv").read_text().splitlines()
    text[3] = text[3].replace(text[3].split(",")[1], "abc", 1)  # data row 2: f1 is text
    text[10] = ",".join(["", *text[10].split(",")[1:]])  # data row 9: f0 is missing
    (folder / "a.csv").write_text("\n".join(text) + "\n")
    (folder / "b.csv").write_text((root / "csv" / "b.csv").read_text())
    return folder


def test_refused_rows_go_to_the_errors_file_and_the_rest_scores(
        scored_home: dict[str, Any], registry: Any, tmp_path: Path) -> None:
    folder = _csv_with_bad_rows(scored_home["root"], tmp_path)
    options = BatchOptions(str(folder / "*.csv"), tmp_path / "out", id_column="id",
                           on_error="file", errors=tmp_path / "bad.csv")
    summary = score_batch(registry, scored_home["settings"], "churn:1", options, actor="t")
    assert (summary.rows, summary.scored, summary.errors) == (1000, 998, 2)
    with (tmp_path / "bad.csv").open() as handle:
        bad = list(csv.DictReader(handle))
    assert [(b["file"], b["row"], b["id"], b["column"]) for b in bad] == [
        ("a.csv", "2", "1002", "f1"), ("a.csv", "9", "1009", "f0")]
    assert "received str 'abc'" in bad[0]["reason"] and "missing value" in bad[1]["reason"]
    frame = _read(tmp_path / "out")
    assert 1002 not in set(frame["id"]) and len(frame) == 998
    _expect_model_answers(frame, scored_home)


def test_stop_on_the_first_refused_row(scored_home: dict[str, Any], registry: Any,
                                       tmp_path: Path) -> None:
    folder = _csv_with_bad_rows(scored_home["root"], tmp_path)
    options = BatchOptions(str(folder), tmp_path / "out", on_error="stop")
    with pytest.raises(SchemaError, match=r"row 2 of .*a\.csv was refused: Column 'f1'"):
        score_batch(registry, scored_home["settings"], "churn:1", options, actor="t")
    assert not list((tmp_path / "out").glob("part-00000.parquet"))
    assert _audit(registry)[-1].outcome == "failure"


def test_log_writes_the_scored_rows_to_the_prediction_log(
        scored_home: dict[str, Any], registry: Any, tmp_path: Path) -> None:
    from mlharbor.monitoring.service import open_prediction_log

    settings = Settings(home=scored_home["settings"].home,
                        monitoring={"log_uri": str(tmp_path / "predlog"),
                                    "compaction": "thread"})
    options = BatchOptions(str(scored_home["root"] / "csv"), tmp_path / "out", log=True)
    summary = score_batch(registry, settings, "churn:1", options, actor="t")
    assert summary.logged == 1000 and summary.log_dropped == 0
    assert not list((tmp_path / "out" / "_log").glob("*.parquet"))
    log = open_prediction_log(settings)
    try:
        table = log.scan("churn")
    finally:
        log.close()
    assert table.num_rows == 1000


@pytest.mark.s3
def test_s3_inputs(scored_home: dict[str, Any], registry: Any, tmp_path: Path,
                   moto_server: str, s3_bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    for name in ("a.csv", "b.csv"):
        client.upload_file(str(scored_home["root"] / "csv" / name), s3_bucket, f"in/{name}")
    settings = Settings(home=scored_home["settings"].home, s3_endpoint_url=moto_server)
    options = BatchOptions(f"s3://{s3_bucket}/in/*.csv", tmp_path / "out", id_column="id")
    summary = score_batch(registry, settings, "churn:1", options, actor="t")
    assert summary.parts == 2 and summary.scored == 1000
    _expect_model_answers(_read(tmp_path / "out"), scored_home)


@pytest.mark.slow
@pytest.mark.xdist_group("dask")
def test_dask_engine_gives_what_local_gives(scored_home: dict[str, Any], registry: Any,
                                            tmp_path: Path, dask_scheduler: str) -> None:
    source = str(scored_home["root"] / "rows.parquet")
    local = BatchOptions(source, tmp_path / "local", id_column="id", part_rows=500)
    # with a memory budget, each worker sizes its own batches after a probe in its process
    remote = BatchOptions(source, tmp_path / "dask", id_column="id", part_rows=500,
                          engine="dask", scheduler=dask_scheduler, memory_budget=4 << 30)
    score_batch(registry, scored_home["settings"], "churn:1", local, actor="t")
    summary = score_batch(registry, scored_home["settings"], "churn:1", remote, actor="t")
    assert summary.engine == "dask" and summary.parts == 6
    assert _read(tmp_path / "dask").equals(_read(tmp_path / "local"))
    tiny = BatchOptions(source, tmp_path / "tiny", engine="dask", scheduler=dask_scheduler,
                        memory_budget=1 << 20)
    with pytest.raises(InvalidInputError, match="cannot hold the model and one batch"):
        score_batch(registry, scored_home["settings"], "churn:1", tiny, actor="t")
    assert not list((tmp_path / "tiny").glob("part-*"))
