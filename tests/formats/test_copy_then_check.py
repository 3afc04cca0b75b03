"""Trust is checked on the bytes the bundle holds, and loading runs the bytes that were hashed.

Each test swaps a file at the moment the old code was vulnerable: the source between the first
read and the copy into the bundle, the bundle's copy between the check and the load, and the
bundle file between ``verify_bundle`` and deserialization. A swapped-in pickle writes a marker
file when unpickled; it must never appear, and a swap must never end up recorded as pinned.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlharbor.core.errors import IntegrityError, UnsafeArtifactError
from mlharbor.formats import predictor as predictor_module
from mlharbor.formats.base import ModelFormat, TrustOptions
from mlharbor.formats.builder import build_bundle
from mlharbor.formats.bundle import ModelBytes, read_manifest
from mlharbor.formats.pickle import PickleFormat
from mlharbor.formats.predictor import load_bundle
from mlharbor.formats.python import PythonFormat
from tests.formats.cases import PYTHON_MODEL


class Exploit:
    """Unpickling this object writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _benign_pickle(path: Path) -> tuple[Any, np.ndarray, str]:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(40, 3))
    model = LogisticRegression().fit(x, x[:, 0] > 0)
    path.write_bytes(pickle.dumps(model))
    return model, x, hashlib.sha256(path.read_bytes()).hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _swap_before_copy(monkeypatch: pytest.MonkeyPatch, fmt: type[ModelFormat],
                      data: bytes) -> None:
    """Replace the source file's bytes right before the builder copies it into the bundle."""
    original = fmt.adopt_file

    def adopt(self: ModelFormat, source: Path, model_dir: Path) -> str:
        source.write_bytes(data)
        return original(self, source, model_dir)

    monkeypatch.setattr(fmt, "adopt_file", adopt)


def test_pickle_swapped_after_first_read_is_never_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "model.pkl"
    _, x, pin = _benign_pickle(source)
    marker = tmp_path / "marker"
    _swap_before_copy(monkeypatch, PickleFormat, pickle.dumps(Exploit(marker), protocol=4))
    bundle = tmp_path / "bundle"
    with pytest.raises(UnsafeArtifactError, match="not the pinned") as info:
        build_bundle(source, bundle, sample_input=x, trust=TrustOptions(pickle_sha256=pin))
    assert info.value.details["expected"] == pin
    assert not marker.exists()
    assert not (bundle / "manifest.json").exists()
    assert not any(p.is_file() for p in bundle.rglob("*"))  # the refused copy is removed


def test_store_model_never_records_a_pin_for_bytes_nobody_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lower-level step alone: it used to check the source, then pin sha256(copy)."""
    from mlharbor.formats.builder import _store_model

    source = tmp_path / "model.pkl"
    _, _, pin = _benign_pickle(source)
    model_dir = tmp_path / "ok" / "model"
    model_dir.mkdir(parents=True)
    fmt, _, blob, record = _store_model(source, model_dir, TrustOptions(pickle_sha256=pin), "me")
    assert fmt.name == "pickle" and record["sha256"] == pin == blob.sha256
    assert _sha(model_dir / blob.name) == pin

    marker = tmp_path / "marker"
    _swap_before_copy(monkeypatch, PickleFormat, pickle.dumps(Exploit(marker), protocol=4))
    swapped_dir = tmp_path / "swapped" / "model"
    swapped_dir.mkdir(parents=True)
    with pytest.raises(UnsafeArtifactError, match="not the pinned"):
        _store_model(source, swapped_dir, TrustOptions(pickle_sha256=pin), "me")
    assert not marker.exists()


def test_bundle_copy_swapped_after_the_check_is_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "model.pkl"
    _, x, pin = _benign_pickle(source)
    marker = tmp_path / "marker"
    original = PickleFormat.read_file

    def read_then_swap(self: PickleFormat, blob: ModelBytes, trust: TrustOptions) -> Any:
        obj = original(self, blob, trust)
        blob.path.write_bytes(pickle.dumps(Exploit(marker), protocol=4))  # the copy changes
        return obj

    monkeypatch.setattr(PickleFormat, "read_file", read_then_swap)
    with pytest.raises(IntegrityError, match="changed while the bundle was built"):
        build_bundle(source, tmp_path / "bundle", sample_input=x,
                     trust=TrustOptions(pickle_sha256=pin))
    assert not marker.exists()  # the check-time bytes were loaded, not the file again


def test_recorded_pin_is_the_users_pin_and_the_bundle_files_digest(tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    model, x, pin = _benign_pickle(source)
    result = build_bundle(source, tmp_path / "bundle", sample_input=x,
                          trust=TrustOptions(pickle_sha256=pin.upper()))
    manifest = result.manifest
    held = tmp_path / "bundle" / manifest.model_path
    assert manifest.trust["mode"] == "pickle-pinned"
    listed = manifest.file(manifest.model_path).sha256
    assert manifest.trust["sha256"] == pin == _sha(held) == listed
    predictor = load_bundle(tmp_path / "bundle", trust=TrustOptions(pickle_sha256=pin),
                            runtime="native")
    np.testing.assert_array_equal(predictor.predict(x), model.predict(x))


def test_python_source_swapped_before_copy_records_what_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "rule.py"
    source.write_text(PYTHON_MODEL, encoding="utf-8")
    swapped = PYTHON_MODEL.replace("2 * frame", "3 * frame").encode()
    _swap_before_copy(monkeypatch, PythonFormat, swapped)
    frame = pd.DataFrame({"a": [0.5, -1.0], "b": [0.1, 0.2]})
    result = build_bundle(source, tmp_path / "bundle", sample_input=frame,
                          trust=TrustOptions(code=True))
    manifest = result.manifest
    held = tmp_path / "bundle" / manifest.model_path
    # The code that ran, the bundle's file and the recorded digest are all the swapped bytes.
    assert manifest.trust["mode"] == "code"
    assert manifest.trust["sha256"] == hashlib.sha256(swapped).hexdigest() == _sha(held)
    assert manifest.file(manifest.model_path).sha256 == manifest.trust["sha256"]


def _swap_after_verify(monkeypatch: pytest.MonkeyPatch, rel: str, data: bytes) -> None:
    """Overwrite a bundle file right after verification, before any format loads it."""
    original = predictor_module.open_verified

    def verify_then_swap(root: Path, *args: Any, **kwargs: Any) -> Any:
        result = original(root, *args, **kwargs)
        (root / rel).write_bytes(data)
        return result

    monkeypatch.setattr(predictor_module, "open_verified", verify_then_swap)


def test_pickle_swapped_between_verify_and_load_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "model.pkl"
    model, x, pin = _benign_pickle(source)
    bundle = tmp_path / "bundle"
    build_bundle(source, bundle, sample_input=x, trust=TrustOptions(pickle_sha256=pin))
    marker = tmp_path / "marker"
    _swap_after_verify(monkeypatch, read_manifest(bundle).model_path,
                       pickle.dumps(Exploit(marker), protocol=4))
    predictor = load_bundle(bundle, trust=TrustOptions(pickle_sha256=pin), runtime="native")
    assert not marker.exists()
    np.testing.assert_array_equal(predictor.predict(x), model.predict(x))


def test_python_swapped_between_verify_and_load_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "rule.py"
    source.write_text(PYTHON_MODEL, encoding="utf-8")
    frame = pd.DataFrame({"a": [0.5, -1.0, 2.0], "b": [0.1, 0.2, -3.0]})
    bundle = tmp_path / "bundle"
    build_bundle(source, bundle, sample_input=frame, trust=TrustOptions(code=True))
    marker = tmp_path / "marker"
    evil = f"open({str(marker)!r}, 'w').write('x')\n" + PYTHON_MODEL
    _swap_after_verify(monkeypatch, read_manifest(bundle).model_path, evil.encode())
    predictor = load_bundle(bundle, trust=TrustOptions(code=True))
    assert not marker.exists()
    np.testing.assert_array_equal(predictor.predict(frame), [1, 0, 0])  # a + 2b > 0


def test_skops_swapped_between_verify_and_load_loads_the_checked_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skops.io as sio
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import FunctionTransformer

    x = np.random.default_rng(0).normal(size=(30, 2))
    model = LinearRegression().fit(x, x[:, 0] * 2)
    bundle = tmp_path / "bundle"
    build_bundle(model, bundle, sample_input=x, runtime="native")
    swapped = sio.dumps(FunctionTransformer(func=np.save))  # would be refused if checked
    _swap_after_verify(monkeypatch, read_manifest(bundle).model_path, swapped)
    predictor = load_bundle(bundle)
    np.testing.assert_allclose(predictor.predict(x), model.predict(x))


def test_converted_onnx_swapped_between_verify_and_load_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(60, 3))
    model = LogisticRegression().fit(x, x[:, 0] > 0)
    bundle = tmp_path / "bundle"
    result = build_bundle(model, bundle, training_data=x)
    assert result.runtime == "onnx" and result.manifest.onnx_path is not None
    _swap_after_verify(monkeypatch, result.manifest.onnx_path, b"not an onnx model")
    predictor = load_bundle(bundle)
    assert predictor.runtime == "onnx"
    np.testing.assert_array_equal(predictor.predict(x), model.predict(x))
