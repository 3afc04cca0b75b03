"""PyTorch models as TorchScript archives, run on CPU.

TorchScript holds the graph as TorchScript code and tensors; its archives are read by PyTorch's
restricted loader, not by ``pickle``. A ``torch.save`` archive of a whole module is a pickle in
a zip and is recognised (and refused) by the pickle format instead.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mlharbor.core.errors import InvalidInputError
from mlharbor.formats.base import ModelFormat, ModelInfo, NativeModel, TrustOptions
from mlharbor.formats.bundle import ModelBytes


class TorchScriptModel(NativeModel):
    def __init__(self, module: Any) -> None:
        self.model = module
        self.input_kind = "array"

    def predict(self, data: Any) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        with torch.inference_mode():
            out = self.model(tensor)
        result = np.asarray(out.detach().cpu().numpy())
        return result[:, 0] if result.ndim == 2 and result.shape[1] == 1 else result


class TorchScriptFormat(ModelFormat):
    name = "torch"
    summary = "PyTorch TorchScript modules (torch.jit.save), CPU"
    file_name = "model.pt"

    def claims_object(self, obj: Any) -> bool:
        return type(obj).__module__.startswith("torch.jit") and hasattr(obj, "save")

    def claims_file(self, path: Path, head: bytes) -> bool:
        if head[:4] != b"PK\x03\x04":
            return False
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return False
        return any("/code/" in n for n in names) and any(n.endswith("constants.pkl")
                                                         for n in names)

    def read_file(self, blob: ModelBytes, trust: TrustOptions) -> Any:
        import torch

        try:  # from the bytes read (and hashed), not the file
            return torch.jit.load(io.BytesIO(blob.data),  # type: ignore[no-untyped-call]
                                  map_location="cpu")
        except RuntimeError as exc:
            raise InvalidInputError(f"{blob.name!r} is not a loadable TorchScript archive: "
                                    f"{exc}") from exc

    def save(self, obj: Any, model_dir: Path) -> str:
        import torch

        target = model_dir / self.file_name
        torch.jit.save(obj, str(target))
        return target.name

    def describe(self, obj: Any) -> ModelInfo:
        import torch

        return ModelInfo(task="regression", input_kind="array",
                         flavor={"module": type(obj).__name__},
                         framework_versions={"torch": torch.__version__})

    def load(self, blob: ModelBytes, flavor: dict[str, Any], trust: TrustOptions) -> NativeModel:
        module = self.read_file(blob, trust)
        module.eval()
        return TorchScriptModel(module)
