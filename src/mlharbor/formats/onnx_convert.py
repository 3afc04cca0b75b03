"""Conversion to ONNX at bundle build time, and the parity check that decides if ONNX serves.

scikit-learn goes through skl2onnx, XGBoost and LightGBM through onnxmltools. Classifiers are
converted without ZipMap, so ONNX Runtime returns a plain probability tensor.

Why pipelines are split: scikit-learn preprocesses in float64 and its trees then compare
``float32(x)`` with the thresholds. Converting a whole pipeline to float32 reproduces the
scaling with float32 rounding, which flips a few threshold comparisons. So the preprocessing
part is converted with float64 inputs, cast to float32 exactly as scikit-learn does, and joined
to the final estimator: the ONNX model then predicts bit-for-bit like the original.

skl2onnx converts ``SimpleImputer`` on string columns only when its ``missing_values`` is a
string, but scikit-learn's default (NaN) is what trained pipelines use: None and NaN in object
columns are missing. :func:`_convert_imputer` maps them: the ONNX runner feeds a missing string
value as :data:`mlharbor.formats.onnx.MISSING_STRING`, and the converted imputer replaces
exactly that marker with the fill value (or the learned most frequent value).

A converted model is served only when the parity check passes: labels identical to the native
model's own ``predict`` (not merely its most probable class: a threshold-tuned classifier
differs) and probabilities (or regression values) within the tolerance, on the input example
plus a sample of rows (training data when given, else rows synthesised from the signature).
Otherwise the bundle keeps the ONNX file for the record but serves natively.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlharbor.core.signature import Signature

_PARITY_ROWS = 500


def convert(format_name: str, obj: Any, signature: Signature, sample: Any) -> Any:
    """An ONNX ModelProto for ``obj``; raises when the format or model cannot be converted."""
    if format_name == "sklearn" or (format_name == "pickle"
                                    and type(obj).__module__.startswith("sklearn.")):
        return _convert_sklearn(obj, signature, sample)
    if format_name == "xgboost" or type(obj).__module__.startswith("xgboost"):
        return _convert_xgboost(obj, signature)
    if format_name == "lightgbm" or type(obj).__module__.startswith("lightgbm"):
        return _convert_lightgbm(obj, signature)
    raise NotImplementedError(
        f"mlharbor has no ONNX converter for {format_name} models "
        f"({type(obj).__module__}.{type(obj).__qualname__}); they are served natively")


def _imputer_shape(operator: Any) -> None:
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes

    calculate_sklearn_imputer_output_shapes(operator)


def _convert_imputer(scope: Any, operator: Any, container: Any) -> None:
    """skl2onnx's SimpleImputer converter, also for string inputs whose missing value is NaN.

    The string branch of skl2onnx's converter matches ``missing_values`` as a string; for NaN
    or None it is given a copy of the imputer whose ``missing_values`` is the marker the ONNX
    runner feeds for None/NaN, so fill values and learned statistics are used unchanged.
    """
    import copy

    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer

    from mlharbor.formats.onnx import MISSING_STRING

    imputer = operator.raw_operator
    missing = imputer.missing_values
    nan_like = missing is None or (isinstance(missing, float) and missing != missing)
    if nan_like and isinstance(operator.inputs[0].type, DoubleTensorType):
        _double_imputer(scope, operator, container)
        return
    if not (isinstance(operator.inputs[0].type, StringTensorType) and nan_like):
        convert_sklearn_imputer(scope, operator, container)
        return
    statistics = np.asarray(imputer.statistics_, dtype=object).tolist()
    if not all(isinstance(s, str) for s in statistics):
        raise NotImplementedError(
            f"a string SimpleImputer with non-string statistics {statistics!r} cannot convert")
    patched = copy.copy(imputer)
    patched.missing_values = MISSING_STRING
    operator.raw_operator = patched
    try:
        convert_sklearn_imputer(scope, operator, container)
    finally:
        operator.raw_operator = imputer


def _double_imputer(scope: Any, operator: Any, container: Any) -> None:
    """NaN -> learned statistics on float64 inputs, with standard ops (ONNX Runtime implements
    the ai.onnx.ml Imputer for float32 and int64 only): ``Where(IsNaN(x), statistics, x)``."""
    from onnx import TensorProto
    from skl2onnx.operator_converters.common import concatenate_variables

    imputer = operator.raw_operator
    statistics = np.asarray(imputer.statistics_, dtype=np.float64)
    if getattr(imputer, "add_indicator", False) or (
            np.isnan(statistics).any() and not getattr(imputer, "keep_empty_features", False)):
        raise NotImplementedError("a SimpleImputer with indicators or all-missing features")
    x = concatenate_variables(scope, operator.inputs, container)
    fill = scope.get_unique_variable_name("impute_fill")
    container.add_initializer(fill, TensorProto.DOUBLE, [1, statistics.size],
                              statistics.tolist())
    nan = scope.get_unique_variable_name("impute_isnan")
    container.add_node("IsNaN", [x], [nan], name=scope.get_unique_operator_name("IsNaN"))
    container.add_node("Where", [nan, fill, x], [operator.outputs[0].full_name],
                       name=scope.get_unique_operator_name("Where"))


def _custom() -> dict[str, Any]:
    """The converter overrides passed to every ``convert_sklearn`` call."""
    from sklearn.impute import SimpleImputer

    return {"custom_conversion_functions": {SimpleImputer: _convert_imputer},
            "custom_shape_calculators": {SimpleImputer: _imputer_shape}}


def _tensor_type(dtype: str, wide: bool) -> Any:
    from skl2onnx.common.data_types import (
        BooleanTensorType,
        DoubleTensorType,
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )

    if dtype == "string":
        return StringTensorType([None, 1])
    if dtype in ("int64", "int32"):
        return Int64TensorType([None, 1])
    if dtype == "bool":
        return BooleanTensorType([None, 1])
    return DoubleTensorType([None, 1]) if wide else FloatTensorType([None, 1])


def _convert_sklearn(obj: Any, signature: Signature, sample: Any) -> Any:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    own = _mlharbor_steps(obj)
    if own:  # no converter exists; say so instead of a converter's type-mismatch message
        raise NotImplementedError(
            f"the pipeline uses mlharbor's own step(s) {', '.join(own)} (dates read as text, "
            "or feature functions), which have no ONNX converter; the native model serves it")
    final = obj.steps[-1][1] if isinstance(obj, Pipeline) else obj
    options = {id(final): {"zipmap": False}} if is_classifier(final) else None
    has_ct = isinstance(obj, Pipeline) and any(
        isinstance(step, ColumnTransformer) for _, step in obj.steps)
    if signature.all_numeric and not has_ct:
        types = [("X", FloatTensorType([None, len(signature.inputs)]))]
        if isinstance(obj, Pipeline) and len(obj.steps) > 1:
            try:
                return _split_pipeline(obj, [("X", _wide_matrix(len(signature.inputs)))],
                                       sample, options)
            except Exception:
                pass  # fall back to one float32 graph; the parity check judges it
        return convert_sklearn(obj, initial_types=types, options=options, **_custom())
    column_types = [(c.name, _tensor_type(c.dtype, wide=True)) for c in signature.inputs]
    # scikit-learn casts integer columns to float64 before imputers and scalers, whose ONNX
    # converters refuse int64 inputs; the second attempt declares them as doubles too.
    as_double = [(c.name, _tensor_type("float64" if c.dtype in ("int64", "int32") else c.dtype,
                                       wide=True)) for c in signature.inputs]
    if isinstance(obj, Pipeline) and len(obj.steps) > 1:
        for attempt in (column_types, as_double):
            try:
                return _split_pipeline(obj, attempt, sample, options)
            except Exception:
                continue
    narrow = [(c.name, _tensor_type(c.dtype, wide=False)) for c in signature.inputs]
    return convert_sklearn(obj, initial_types=narrow, options=options, **_custom())


def _mlharbor_steps(estimator: Any) -> list[str]:
    """Names of mlharbor's own transformers inside ``estimator`` (pipelines, column
    transformers), sorted; they are Python code that skl2onnx cannot translate."""
    found: set[str] = set()

    def visit(est: Any) -> None:
        if type(est).__module__.startswith("mlharbor."):
            found.add(type(est).__qualname__)
        for _, step in getattr(est, "steps", None) or []:
            visit(step)
        for item in getattr(est, "transformers_", None) or getattr(est, "transformers", None) \
                or []:
            visit(item[1])

    visit(estimator)
    return sorted(found)


def _wide_matrix(n: int) -> Any:
    from skl2onnx.common.data_types import DoubleTensorType

    return DoubleTensorType([None, n])


def _split_pipeline(pipe: Any, types: list[Any], sample: Any, options: Any) -> Any:
    """Preprocessing in float64, cast to float32, then the final estimator (see module doc)."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    pre = pipe[:-1]
    final = pipe.steps[-1][1]
    width = int(np.asarray(pre.transform(sample)).shape[1])
    pre_onnx = convert_sklearn(pre, initial_types=types, **_custom())
    est_onnx = convert_sklearn(final, initial_types=[("features", FloatTensorType([None, width]))],
                               options=options, **_custom())
    out = pre_onnx.graph.output[0].name
    pre_onnx.graph.node.append(helper.make_node("Cast", [out], ["features32"],
                                                to=TensorProto.FLOAT))
    del pre_onnx.graph.output[:]
    pre_onnx.graph.output.append(
        helper.make_tensor_value_info("features32", TensorProto.FLOAT, [None, width]))
    est_onnx = onnx.compose.add_prefix(est_onnx, "est_")
    _align_opsets(pre_onnx, est_onnx)
    merged = onnx.compose.merge_models(pre_onnx, est_onnx,
                                       io_map=[("features32", "est_features")])
    outputs = list(merged.graph.output)
    del merged.graph.output[:]
    for value in outputs:
        plain = value.name.removeprefix("est_")
        merged.graph.node.append(helper.make_node("Identity", [value.name], [plain]))
        value.name = plain
        merged.graph.output.append(value)
    onnx.checker.check_model(merged)
    return merged


def _align_opsets(first: Any, second: Any) -> None:
    """Give both graphs the same (highest) opset per domain so they can be merged."""
    versions: dict[str, int] = {}
    for model in (first, second):
        for opset in model.opset_import:
            versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    ir_version = max(first.ir_version, second.ir_version)
    for model in (first, second):
        del model.opset_import[:]
        for domain, version in sorted(versions.items()):
            entry = model.opset_import.add()
            entry.domain, entry.version = domain, version
        model.ir_version = ir_version


def _convert_xgboost(obj: Any, signature: Signature) -> Any:
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = obj
    booster = obj.get_booster() if hasattr(obj, "get_booster") else obj
    if booster.feature_names is not None:
        # onnxmltools reads split features as "f<index>": drop names on a copy of the model.
        import copy

        model = copy.deepcopy(obj)
        inner = model.get_booster() if hasattr(model, "get_booster") else model
        inner.feature_names = None
        inner.feature_types = None
    types = [("X", FloatTensorType([None, len(signature.inputs)]))]
    return convert_xgboost(model, initial_types=types)


def _convert_lightgbm(obj: Any, signature: Signature) -> Any:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    types = [("X", FloatTensorType([None, len(signature.inputs)]))]
    return convert_lightgbm(obj, initial_types=types, zipmap=False)


def parity_rows(signature: Signature, example: list[dict[str, Any]], training: Any,
                seed: int = 0) -> list[dict[str, Any]]:
    """Rows to compare runtimes on: the example, plus training rows or synthesised ones."""
    rows = list(example)
    if training is not None:
        validator = signature.validator()
        cols = validator.columns(training)
        count = len(next(iter(cols.values()))) if cols else 0
        take = np.random.default_rng(seed).permutation(count)[:_PARITY_ROWS]
        rows += [{name: _py(cols[name][i]) for name in signature.names} for i in take]
        return rows
    rng = np.random.default_rng(seed)
    for _ in range(min(_PARITY_ROWS, 200)):
        base = example[int(rng.integers(len(example)))] if example else {}
        row: dict[str, Any] = {}
        for col in signature.inputs:
            value = base.get(col.name)
            if col.dtype == "string":
                cats = col.categories or ([value] if value is not None else ["a"])
                row[col.name] = cats[int(rng.integers(len(cats)))]
            elif col.dtype == "bool":
                row[col.name] = bool(rng.integers(2))
            elif col.dtype in ("int64", "int32"):
                row[col.name] = int((value or 0) + rng.integers(-3, 4))
            else:
                centre = float(value) if value is not None and value == value else 0.0
                row[col.name] = centre + float(rng.normal(0, max(1.0, abs(centre) * 0.2)))
        rows.append(row)
    return rows


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def check_parity(native: Any, onnx_runner: Any, rows: list[dict[str, Any]], task: str,
                 tolerance: float) -> dict[str, Any]:
    """Compare what ONNX would serve with the native model on ``rows``: passed/failed, how
    much and why.

    The reference is the native model's own ``predict`` and ``predict_proba``; the ONNX side
    is :meth:`OrtRunner.outputs`, exactly what serving answers. Labels are compared as well as
    probabilities: a threshold-tuned or custom ``predict`` can differ from the most probable
    class while every probability matches, and then ONNX must not serve.
    """
    result: dict[str, Any] = {"rows": len(rows), "tolerance": tolerance}
    if task == "classification":
        p_native = np.asarray(native.predict_proba(rows), dtype=np.float64)
        served = onnx_runner.outputs(rows)
        p_onnx = np.asarray(served.probabilities, dtype=np.float64)
        if p_native.shape != p_onnx.shape:
            return dict(result, status="failed",
                        reason=f"probability shapes differ: {p_native.shape} vs {p_onnx.shape}")
        labels_native = np.asarray(native.predict(rows))
        labels_onnx = np.asarray(served.predictions)
        if labels_native.shape != labels_onnx.shape:
            return dict(result, status="failed", label_mismatches=len(rows),
                        reason=f"label shapes differ: predict gives {labels_native.shape}, "
                        f"ONNX {labels_onnx.shape}")
        differ = np.flatnonzero(labels_native != labels_onnx)
        diff = float(np.max(np.abs(p_native - p_onnx))) if p_native.size else 0.0
        result.update(max_abs_diff=diff, label_mismatches=int(differ.size))
        if differ.size:
            first = int(differ[0])
            return dict(result, status="failed", first_label_mismatch=first,
                        reason=f"{differ.size} of {len(rows)} labels differ from the model's "
                        f"own predict (row {first}: predict gives {_py(labels_native[first])!r}"
                        f", ONNX {_py(labels_onnx[first])!r}); served natively")
        if diff > tolerance:
            return dict(result, status="failed",
                        reason=f"probabilities differ by up to {diff:.3g} > {tolerance:g}")
        return dict(result, status="passed", reason="labels identical to predict, "
                    "probabilities within tolerance")
    v_native = np.asarray(native.predict(rows), dtype=np.float64).reshape(len(rows), -1)
    v_onnx = np.asarray(onnx_runner.predict(rows), dtype=np.float64).reshape(len(rows), -1)
    if v_native.shape != v_onnx.shape:
        return dict(result, status="failed", reason="prediction shapes differ")
    scale = np.maximum(1.0, np.abs(v_native))
    rel = float(np.max(np.abs(v_native - v_onnx) / scale)) if v_native.size else 0.0
    result.update(max_rel_diff=rel)
    if rel > tolerance:
        return dict(result, status="failed",
                    reason=f"predictions differ by up to {rel:.3g} (relative) > {tolerance:g}")
    return dict(result, status="passed", reason="predictions within tolerance")
