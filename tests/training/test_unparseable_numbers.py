"""One bad cell never changes a numeric column's type (issue 12).

A single ``abc`` among temperatures used to make the column categorical: training passed and
the served model refused every temperature it had not seen. Now the cell is a data-check
finding naming the column, the count and the rows; training stops by default, or treats the
cells as missing with ``data.unparseable_numbers: coerce``. Declared-numeric columns give the
same finding (they used to crash in the imputer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mlharbor.core.errors import ConfigError
from mlharbor.data.checks import Thresholds, check_dataset
from mlharbor.data.numbers import MOSTLY_NUMERIC_SHARE, parse_numbers
from mlharbor.data.schema import infer_kind, infer_schema
from mlharbor.settings import Settings
from mlharbor.training.recipe import recipe_from_yaml
from tests.support import LiveServer, cli_env, run_cli

RECIPE = """\
data:
  path: temps.csv
  target: hot
EXTRA
candidates:
  - estimator: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: 10, max_depth: 4}
validation: {holdout: 0.25, folds: 3, seed: 1, bootstrap: 50}
register: {name: temps, alias: champion}
"""


def temperatures(rows: int = 300, bad: dict[int, str] | None = None) -> pd.DataFrame:
    """Temperatures and humidity predicting ``hot``; ``bad`` puts text at 0-based positions."""
    rng = np.random.default_rng(5)
    temperature = rng.normal(20, 5, rows).round(1)
    frame = pd.DataFrame({
        "temperature": temperature.astype(object),
        "humidity": rng.uniform(20, 90, rows).round(1),
        "hot": (temperature + rng.normal(0, 2, rows) > 21).astype(int),
    })
    for position, text in (bad or {}).items():
        frame.loc[position, "temperature"] = text
    return frame


def write_case(tmp_path: Path, extra: str, frame: pd.DataFrame) -> Path:
    frame.to_csv(tmp_path / "temps.csv", index=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("EXTRA", extra))
    return recipe


@pytest.mark.parametrize("extra", ["", "  features: {temperature: numeric}"],
                         ids=["inferred", "declared"])
def test_one_bad_cell_stops_training_with_one_clear_line(
    settings: Settings, tmp_path: Path, extra: str
) -> None:
    recipe = write_case(tmp_path, extra, temperatures(bad={41: "abc"}))
    result = run_cli("train", str(recipe), env={**cli_env(settings),
                                                "MLHARBOR_TRAINING__N_JOBS": "1"})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Numeric column 'temperature': 1 of 300 non-missing cells is not a number" in errors[0]
    assert "data row 42 ('abc')" in errors[0]  # file line 43: row 1 follows the header
    assert "unparseable_numbers: coerce" in errors[0]
    assert "Traceback" not in result.stderr and "ValueError" not in result.stderr
    assert "median" not in result.stderr


def test_coerce_trains_a_numeric_column_that_serves_unseen_numbers(
    settings: Settings, tmp_path: Path
) -> None:
    from mlharbor.bootstrap import open_registry
    from mlharbor.serving.app import create_serving_app

    recipe = write_case(tmp_path, "  unparseable_numbers: coerce",
                        temperatures(bad={41: "abc", 99: "?"}))
    result = run_cli("train", str(recipe), env={**cli_env(settings),
                                                "MLHARBOR_TRAINING__N_JOBS": "1"})
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stderr.split())  # the console wraps long warnings
    assert ("warning: Numeric column 'temperature': 2 of 300 non-missing cells are not a "
            "number: data rows 42 ('abc'), 100 ('?')") in shown
    assert "they are treated as missing" in shown

    registry = open_registry(settings)
    try:
        version = registry.get_version("temps@champion")
        assert version.lineage["schema"]["features"]["temperature"] == "numeric"
        warned = version.lineage["data_checks"]["warnings"]
        assert {"check": "not_a_number", "column": "temperature", "value": 2.0}.items() <= \
            next(w for w in warned if w["check"] == "not_a_number").items()
        profile = version.lineage["reference_profile"]["features"]["temperature"]
        assert profile["kind"] == "numeric"
        app = create_serving_app(settings, registry, ref="temps@champion", auth=False)
        with LiveServer(app) as server:
            rows: list[dict[str, Any]] = [{"temperature": t, "humidity": 50.0}
                                          for t in (-40.25, 21.0, 48.125)]  # never in training
            answer = httpx.post(f"{server.url}/v1/endpoints/temps/predict", json=rows,
                                timeout=30)
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["predictions"]) == 3
            refused = httpx.post(f"{server.url}/v1/endpoints/temps/predict",
                                 json=[{"temperature": "abc", "humidity": 50.0}], timeout=30)
            assert 400 <= refused.status_code < 500, refused.text
    finally:
        registry.close()


def test_the_option_is_validated_with_its_line() -> None:
    with pytest.raises(ConfigError) as caught:
        recipe_from_yaml(RECIPE.replace("EXTRA", "  unparseable_numbers: drop"),
                         source="recipe.yaml")
    message = str(caught.value)
    assert "recipe.yaml line 4, data.unparseable_numbers" in message
    assert "'fail' or 'coerce'" in message and "'drop'" in message
    assert recipe_from_yaml(RECIPE.replace("EXTRA", "")).data.unparseable_numbers == "fail"


def test_checks_count_coerced_cells_as_missing() -> None:
    frame = temperatures(rows=100, bad={3: "abc", 7: "  ", 50: "-"})
    schema = infer_schema(frame, "hot")
    assert schema.features["temperature"] == "numeric"
    strict = check_dataset(frame, schema, Thresholds())
    [finding] = [f for f in strict.violations if f.check == "not_a_number"]
    assert finding.column == "temperature" and finding.value == 2
    assert "2 of 99 non-missing cells are not a number: data rows 4 ('abc'), 51 ('-')" \
        in finding.message  # the blank cell is missing, not bad
    lenient = check_dataset(frame, schema, Thresholds(), unparseable_numbers="coerce")
    assert not lenient.violations
    missing = next(f for f in lenient.warnings if f.check == "missing_values")
    assert missing.value == pytest.approx(0.03)  # two coerced cells and the blank one


# -- the rule, as a property ----------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(-10**6, 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: f" {v:.3f} "),
)


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


JUNK = st.text(alphabet="abcdefinxyz/-.,_ ?#", min_size=1, max_size=6).filter(
    lambda s: s.strip() != "" and not _is_float_text(s) and s.strip().lower() != "nan")
CELL = st.one_of(
    st.tuples(st.just("number"), NUMBERS),
    st.tuples(st.just("junk"), JUNK),
    st.tuples(st.just("missing"), st.sampled_from([None, np.nan, "", "   "])),
)


@hsettings(derandomize=True, deadline=None, max_examples=300)
@given(st.lists(CELL, min_size=1, max_size=80),
       st.floats(0.0, 1.0))
def test_a_column_is_numeric_iff_the_rule_says_so(
    cells: list[tuple[str, Any]], junk_share: float
) -> None:
    # Most generated lists have either no junk or a lot; bias some toward the 95% boundary.
    if junk_share < 0.5:
        cells = [c if c[0] != "junk" or i % 20 == 0 else ("number", i)
                 for i, c in enumerate(cells)]
    series = pd.Series([value for _, value in cells], dtype=object)
    junk = sum(kind == "junk" for kind, _ in cells)
    numbers = sum(kind == "number" for kind, _ in cells)
    expected = numbers > 0 and numbers >= MOSTLY_NUMERIC_SHARE * (numbers + junk)

    parsed = parse_numbers(series)
    assert parsed.bad == junk
    assert parsed.present == numbers + junk
    assert parsed.mostly_numeric is expected
    assert (infer_kind(series) == "numeric") is expected
    assert list(parsed.bad_positions) == [i for i, (k, _) in enumerate(cells) if k == "junk"]
    assert int(parsed.values.notna().sum()) == numbers
