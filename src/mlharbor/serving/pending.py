"""A version known to the server but not in memory: its signature, no runtime yet.

With a model memory budget, plans name versions that are not loaded (never yet, or unloaded to
make room). Their targets carry a :func:`pending_model`, built from the registry's manifest
alone: the protocols read the signature's column names and the classes from it to parse a
request before any model is loaded, its runner checks the rows against the signature (so bad
input is refused with a 422 before anything is loaded or unloaded), and the data plane loads
the real version before it infers. A pending model can never answer: :class:`PendingRunner`
refuses to run, so a shadow that is not loaded fails like any failed version (its copy is
logged as failed) and asks the pool to load it (``wake``) for the next request.

A version that *failed* to load (or was refused) gets a stand-in too when no route of its
endpoint has anything else to answer with: its runner refuses with the load failure's reason,
so requests walk the fallback chain, with or without a memory budget (see :mod:`.routing`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import IntegrityError, UnavailableError
from mlharbor.serving.model import Outputs, ServedModel

if TYPE_CHECKING:
    from mlharbor.core.records import ModelVersion
    from mlharbor.core.signature import InputValidator


class PendingRunner:
    """The runner of a version that is not loaded: every call says so."""

    def __init__(self, ref: str, runtime: str, wake: Callable[[], None] | None = None,
                 reason: str | None = None) -> None:
        self.ref = ref
        self.runtime = runtime
        self.wake = wake
        self.reason = reason  # why it failed to load (a failed version's stand-in)

    def _refuse(self) -> UnavailableError:
        if self.wake is not None:
            self.wake()
        if self.reason is not None:
            return UnavailableError(f"{self.ref} failed to load: {self.reason}.",
                                    hint="Check `mlharbor endpoints show` for the load "
                                    "status; it is tried again later.")
        return UnavailableError(f"{self.ref} is not loaded in this server right now.",
                                hint="It loads on a request that routes to it; retry.")

    def prepare(self, validator: InputValidator, data: Any) -> Any:
        """The rows checked against the signature (column by column), nothing loaded."""
        return validator.columns(data)

    def rows(self, x: Any) -> int:
        return len(next(iter(x.values()))) if x else 0

    def concat(self, xs: Sequence[Any]) -> Any:
        raise self._refuse()

    def run(self, x: Any) -> Outputs:
        raise self._refuse()


def pending_model(mv: ModelVersion, *, wake: Callable[[], None] | None = None,
                  reason: str | None = None) -> ServedModel:
    """A :class:`ServedModel` of ``mv`` built from its manifest, without loading anything;
    ``wake`` is called when something asks it to run (to load it for next time); ``reason``:
    it failed to load, and says why when asked to run."""
    from mlharbor.core.signature import Signature

    manifest = mv.manifest or {}
    try:
        signature = Signature.from_dict(manifest["signature"])
        task = str(manifest["task"])
    except (KeyError, TypeError) as exc:
        raise IntegrityError(f"The bundle manifest of {mv.ref} has no usable signature or "
                             f"task ({type(exc).__name__}: {exc}).",
                             hint="Re-register the model with mlharbor.") from exc
    runtime = str(manifest.get("default_runtime") or "native")
    return ServedModel(mv.name, mv.version, signature, PendingRunner(mv.ref, runtime, wake, reason),
                       task=task, classes=manifest.get("classes"))
