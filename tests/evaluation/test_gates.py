from __future__ import annotations

import pytest

from mlharbor.core.errors import ConfigError
from mlharbor.evaluation.gates import Evidence, evaluate_gates, parse_gate


def _evidence(**overrides: object) -> Evidence:
    base: dict[str, object] = {
        "primary": "f1",
        "holdout": {"f1": 0.70, "rmse": 3.0},
        "cv_mean": {"f1": 0.72},
        "baseline_holdout": {"f1": 0.0},
        "baseline_test": {"significantly_better": True, "p_value": 0.0},
    }
    base.update(overrides)
    return Evidence(**base)  # type: ignore[arg-type]


def test_parse_forms() -> None:
    gate = parse_gate("F1 >= 0.80", "classification")
    assert (gate.kind, gate.metric, gate.op, gate.value) == ("threshold", "f1", ">=", 0.8)
    assert parse_gate("cv.rmse < 12.5", "regression").scope == "cv"
    assert parse_gate("significantly better than baseline", "classification").significant
    margin = parse_gate("not worse than champion by more than 0.01", "classification")
    assert (margin.kind, margin.value) == ("champion_margin", 0.01)


@pytest.mark.parametrize("text", ["f1 >> 0.8", "accuracy", "better than the rest", "rmse < 3"])
def test_unreadable_gates_list_the_forms(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_gate(text, "classification")
    assert text.split()[0] in str(info.value)


def test_verdicts() -> None:
    gates = [parse_gate(t, "classification") for t in (
        "f1 >= 0.8", "cv.f1 > 0.7", "better than baseline",
        "not worse than champion by more than 0.01", "better than champion")]
    no_champion = evaluate_gates(gates, _evidence())
    assert [v.passed for v in no_champion] == [False, True, True, True, True]
    assert "0.7000" in no_champion[0].detail
    assert "no champion" in no_champion[3].detail
    with_champion = evaluate_gates(gates, _evidence(champion_holdout={"f1": 0.715},
                                                    champion_ref="churn:1"))
    assert [v.passed for v in with_champion] == [False, True, True, False, False]
    close = evaluate_gates(gates[3:4], _evidence(champion_holdout={"f1": 0.705}))
    assert close[0].passed
    broken = evaluate_gates(gates[3:4], _evidence(champion_error="KeyError: 'x'"))
    assert not broken[0].passed and "could not be scored" in broken[0].detail


def test_lower_is_better_threshold_and_margin() -> None:
    gates = [parse_gate("rmse <= 3.5", "regression"),
             parse_gate("not worse than champion by more than 0.1", "regression")]
    verdicts = evaluate_gates(gates, _evidence(primary="rmse", champion_holdout={"rmse": 2.95}))
    assert [v.passed for v in verdicts] == [True, True]
    worse = evaluate_gates(gates[1:], _evidence(primary="rmse", champion_holdout={"rmse": 2.5}))
    assert not worse[0].passed
