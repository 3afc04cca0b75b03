"""Pickle, joblib and cloudpickle files: refused unless explicitly trusted and pinned.

Unpickling runs whatever code the file names, so a pickle is never loaded by default. It is
recognised by content (protocol header, opcode stream, joblib's compressed containers, zip
archives holding ``.pkl`` members), so renaming ``model.pkl`` to ``model.bin`` changes nothing.
It loads only when the caller passes the file's sha256 as a pin *and* the bytes match it; the
same in-memory bytes that were hashed are the ones unpickled, so nothing can change in between.
At registration those are the bytes of the bundle's own copy, so the pin recorded in the
manifest is always the digest of the file the bundle holds.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import pickletools
import zipfile
import zlib
from pathlib import Path
from typing import Any

from mlharbor.core.errors import InvalidInputError, UnsafeArtifactError
from mlharbor.formats.base import (
    EstimatorModel,
    ModelFormat,
    ModelInfo,
    NativeModel,
    TrustOptions,
    plain_list,
)
from mlharbor.formats.bundle import ModelBytes

_MAX_OPCODE_SCAN = 64 * 1024 * 1024
_SAFE_ALTERNATIVE = (
    "Save the model in a safe format instead: skops (skops.io.dump) or ONNX for scikit-learn, "
    "the native JSON/text format for XGBoost/LightGBM, TorchScript for PyTorch."
)


def looks_like_pickle(path: Path, head: bytes) -> bool:
    """Whether the file holds a pickle stream, directly, compressed (joblib) or in a zip."""
    if _pickle_header(head):
        return True
    inner = _decompressed_head(head, path)
    if inner is not None and _pickle_header(inner):
        return True
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return False
        has_code = any("/code/" in n or n.startswith("code/") for n in names)
        return not has_code and any(n.endswith(".pkl") for n in names)
    return _parses_as_pickle(path, head)


def _pickle_header(data: bytes) -> bool:
    # Protocol 2+ starts with PROTO (0x80) and the protocol number.
    return len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5


def _decompressed_head(head: bytes, path: Path) -> bytes | None:
    """The first bytes of a zlib/gzip/bz2/xz/lzma stream (joblib's compressors), if any."""
    try:
        if head[:1] == b"\x78" and head[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
            return zlib.decompressobj().decompress(head, 64)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path) as handle:
                return handle.read(64)
        if head[:3] == b"BZh":
            with bz2.open(path) as handle:
                return handle.read(64)
        if head[:6] == b"\xfd7zXZ\x00" or head[:3] == b"\x5d\x00\x00":
            with lzma.open(path) as handle:
                return handle.read(64)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError):
        return None
    return None


def _parses_as_pickle(path: Path, head: bytes) -> bool:
    """Protocol 0/1 pickles have no header: walk the opcodes (nothing is executed)."""
    if not head or head[:1] not in b"(}]cNIFSVLl\x8c\x95\x80":
        return False
    if path.stat().st_size > _MAX_OPCODE_SCAN:
        return False
    try:
        ops = list(pickletools.genops(path.read_bytes()))
    except Exception:
        return False
    return bool(ops) and ops[-1][0].name == "STOP"


class PickleFormat(ModelFormat):
    name = "pickle"
    summary = "pickle / joblib / cloudpickle; loads only when trusted and pinned by sha256"
    file_name = "model.pkl"

    def claims_object(self, obj: Any) -> bool:
        return False  # never chosen for an object: there is always a safer format to try

    def claims_file(self, path: Path, head: bytes) -> bool:
        return looks_like_pickle(path, head)

    def read_file(self, blob: ModelBytes, trust: TrustOptions) -> Any:
        return trusted_unpickle(blob, trust)

    def save(self, obj: Any, model_dir: Path) -> str:
        raise UnsafeArtifactError(
            "mlharbor does not write pickles; they run arbitrary code when loaded.",
            hint=_SAFE_ALTERNATIVE,
        )

    def describe(self, obj: Any) -> ModelInfo:
        from mlharbor.formats.catalog import detect_object

        if not hasattr(obj, "predict"):
            raise InvalidInputError(
                f"The trusted pickle holds a {type(obj).__qualname__}, which has no predict().",
                hint="Pickle the fitted model object itself.",
            )
        try:
            info = detect_object(obj).describe(obj)
        except InvalidInputError:
            classes = getattr(obj, "classes_", None)
            classifier = classes is not None and hasattr(obj, "predict_proba")
            info = ModelInfo(task="classification" if classifier else "regression",
                             classes=plain_list(classes) if classifier else None,
                             n_features=getattr(obj, "n_features_in_", None))
        info.flavor = {"object_format": info.flavor, "input_kind": info.input_kind}
        return info

    def load(self, blob: ModelBytes, flavor: dict[str, Any], trust: TrustOptions) -> NativeModel:
        model = trusted_unpickle(blob, trust)
        return EstimatorModel(model, str(flavor.get("input_kind") or "array"))


def check_pin(blob: ModelBytes, trust: TrustOptions) -> str:
    """The caller's pin (lower case) once it is known to equal the sha256 of ``blob``'s bytes."""
    actual = hashlib.sha256(blob.data).hexdigest()  # recomputed: never trust a passed digest
    if trust.pickle_sha256 is None:
        raise UnsafeArtifactError(
            f"Refusing to load {blob.name!r}: it is a pickle, and loading a pickle runs "
            "arbitrary code named in the file (anyone who could write it controls your process).",
            hint=f"{_SAFE_ALTERNATIVE} If you wrote this file yourself and trust it, pass its "
            f"sha256 as the pin (--trust-pickle {actual}).", sha256=actual,
        )
    if trust.pickle_sha256.strip().lower() != actual:
        raise UnsafeArtifactError(
            f"Refusing to load {blob.name!r}: its sha256 is {actual}, not the pinned "
            f"{trust.pickle_sha256}.",
            hint="The file is not the one you trusted. Check where it came from before pinning.",
            expected=trust.pickle_sha256, received=actual,
        )
    return actual


def trusted_unpickle(blob: ModelBytes, trust: TrustOptions) -> Any:
    """Unpickle ``blob``'s bytes, only when they match the caller's pin (hashed, then loaded)."""
    check_pin(blob, trust)
    import joblib

    return joblib.load(io.BytesIO(blob.data))
