"""The Python API takes back the objects it hands out, and never echoes a whole repr.

``register_model(...)`` returns a result whose ``.version`` is a ``ModelVersion``; that object
(and the result itself) is accepted wherever the registry takes a version: ``set_alias``,
``get_version``, ``download``, ``load_predictor``. Anything else is refused with a short message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from mlharbor.core.errors import InvalidInputError, InvalidNameError, describe_value
from mlharbor.core.refs import ModelRef, as_ref
from mlharbor.settings import Settings


@pytest.fixture
def registry(settings: Settings) -> Iterator[Any]:
    from mlharbor.bootstrap import open_registry

    reg = open_registry(settings)
    yield reg
    reg.close()


@pytest.fixture
def registered(registry: Any, settings: Settings) -> tuple[Any, Any, Any]:
    """Two versions of ``churn`` (plain LogisticRegressions) and one of ``other``."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from mlharbor.registry.bundles import register_model

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    y = (x.a > 0).astype(int)
    first = register_model(registry, "churn", LogisticRegression().fit(x, y),
                           settings=settings, sample_input=x.head(5))
    second = register_model(registry, "churn", LogisticRegression(C=0.1).fit(x, y),
                            settings=settings, sample_input=x.head(5))
    other = register_model(registry, "other", LogisticRegression().fit(x, y),
                           settings=settings, sample_input=x.head(5))
    return first, second, other


def test_set_alias_takes_the_version_register_model_returned(
    registry: Any, registered: tuple[Any, Any, Any]
) -> None:
    first, second, _other = registered
    # The returned ModelVersion carries a manifest: its repr alone is kilobytes.
    assert len(repr(second.version)) > 1000
    move = registry.set_alias("churn", "champion", second.version)
    assert move.to_version == 2
    assert registry.get_version("churn@champion").version == 2
    # The registration result itself, a reference text and another alias are accepted too.
    assert registry.set_alias("churn", "champion", first).to_version == 1
    assert registry.set_alias("churn", "challenger", "churn:2").to_version == 2
    assert registry.set_alias("churn", "champion", "churn@challenger").to_version == 2
    assert registry.set_alias("churn", "champion", "1").to_version == 1


def test_reads_take_versions_and_results(
    registry: Any, registered: tuple[Any, Any, Any], settings: Settings
) -> None:
    from mlharbor.registry.bundles import load_predictor

    _first, second, _other = registered
    assert registry.get_version(second.version).ref == "churn:2"
    assert registry.get_version(second).ref == "churn:2"
    assert registry.download(second).is_dir()
    assert registry.download(second.version) == registry.download("churn:2")
    rows = [{"a": 0.5, "b": -1.0, "c": 2.0}]
    by_object = load_predictor(registry, second.version, settings).predict(rows)
    by_text = load_predictor(registry, "churn:2", settings).predict(rows)
    assert list(by_object) == list(by_text)
    assert registry.update_version(second, description="checked").description == "checked"


def test_a_version_of_another_model_is_refused(
    registry: Any, registered: tuple[Any, Any, Any]
) -> None:
    _first, _second, other = registered
    with pytest.raises(InvalidInputError) as err:
        registry.set_alias("churn", "champion", other.version)
    assert "other:1" in str(err.value) and "'churn'" in str(err.value)
    assert len(str(err.value)) < 300


@pytest.mark.parametrize("bad", [
    object(),
    np.zeros((1000, 30)),
    {"version": 3, "blob": "x" * 5000},
    [1] * 5000,
    2.0,
    True,
    0,
    -4,
    None,
])
def test_bad_objects_get_a_short_message(
    registry: Any, registered: tuple[Any, Any, Any], bad: object
) -> None:
    with pytest.raises(InvalidInputError) as err:
        registry.set_alias("churn", "champion", bad)
    assert len(str(err.value)) < 300, str(err.value)
    assert "version" in str(err.value)
    with pytest.raises(InvalidInputError) as err:
        registry.get_version(bad)
    assert len(str(err.value)) < 300, str(err.value)


def test_long_text_is_cut_in_messages(registry: Any) -> None:
    with pytest.raises(InvalidNameError) as name_err:
        registry.get_version("bad name " * 1000)
    assert len(str(name_err.value)) < 300
    with pytest.raises(InvalidInputError) as ref_err:
        ModelRef.parse("churn:" + "x" * 5000)
    assert len(str(ref_err.value)) < 300


def test_as_ref_forms(registered: tuple[Any, Any, Any]) -> None:
    first, _second, _other = registered
    assert as_ref(first) == ModelRef("churn", "version", version=1)
    assert as_ref(first.version) == as_ref("churn:1")
    ref = ModelRef.parse("churn@champion")
    assert as_ref(ref) is ref


def test_describe_value_is_short_for_anything() -> None:
    import pandas as pd

    assert describe_value("abc") == "'abc'"
    assert describe_value(np.zeros((10, 3))) == "ndarray of shape (10, 3)"
    assert describe_value(pd.DataFrame({"a": range(1000)})) == "DataFrame of shape (1000, 1)"
    assert describe_value(object()) == "object"

    class Loud:
        def __repr__(self) -> str:
            return "Loud(" + "y" * 10_000 + ")"

        def __len__(self) -> int:
            raise RuntimeError("no length")

    for value in (Loud(), "z" * 10_000, list(range(10_000)), {i: i for i in range(5000)}):
        assert len(describe_value(value)) <= 90


@pytest.mark.parametrize("cell", ["q" * 10_000, list(range(10_000)), {"k": "v" * 10_000}])
def test_request_cells_are_shown_short(cell: object) -> None:
    """A huge cell in a request (a string, a list, an object) is echoed short, and a column
    with thousands of known categories lists a few of them."""
    import pandas as pd

    from mlharbor.core.errors import SchemaError
    from mlharbor.core.signature import infer_signature

    categories = [f"zip{i:05d}" for i in range(5000)]
    frame = pd.DataFrame({"zip": categories[:3], "amount": [1.0, 2.0, 3.0]})
    signature = infer_signature(frame, categories={"zip": categories})
    messages = []
    for row in ({"zip": cell, "amount": 1.0}, {"zip": "zip00001", "amount": cell}):
        with pytest.raises(SchemaError) as err:
            signature.validator().columns(row)
        messages.append(str(err.value))
        assert len(messages[-1]) < 600, messages[-1][:2000]
    if isinstance(cell, str):  # an unseen category: a few of the known ones, and the count
        assert "unseen category" in messages[0] and "(5000 in all)" in messages[0]
