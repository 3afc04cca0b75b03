"""Explainers for served versions: built on the first explain request, run on their own
threads, dropped with the version.

Explaining must never slow predictions, so nothing here touches the predict path:

* an explainer is built **lazily**, on the first ``explain`` request for a version (a
  version nobody explains costs nothing), once even when requests race for it;
* building and explaining run on a **bounded executor of their own** (``EXPLAIN_THREADS``
  threads, at most ``EXPLAIN_QUEUE`` requests waiting or running; past that a request is
  refused with 503 at once), never on the inference threads;
* an explainer lives as long as its version is in the model pool: each lookup forgets the
  explainers whose version the pool no longer holds (pruned or swapped).

Explanations use the native model (:mod:`mlharbor.explain`): a version served by ONNX
Runtime is loaded a second time with ``runtime="native"``, from the registry with the same
manifest and trust checks. The background rows (for the linear rule and the sampled
fallback) are drawn from the version's reference profile, else its input example.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import TimeoutError_, UnavailableError

if TYPE_CHECKING:
    from mlharbor.explain import Attributions, Explainer
    from mlharbor.registry.service import Registry
    from mlharbor.serving.model import ServedModel
    from mlharbor.serving.pool import ModelPool
    from mlharbor.settings import Settings

EXPLAIN_THREADS = 1  # explanations run here, apart from the inference threads
EXPLAIN_QUEUE = 8  # explain requests waiting or running at once, per process
ExplainerBuilder = Callable[["ServedModel"], "Explainer"]


def registry_explainer_builder(registry: Registry, settings: Settings) -> ExplainerBuilder:
    """Builds the explainer of a served version from what the registry stores about it."""

    def build(model: ServedModel) -> Explainer:
        from mlharbor.explain import explainer_for
        from mlharbor.explain.background import background_rows
        from mlharbor.formats.base import TrustOptions
        from mlharbor.formats.predictor import NativeRunner, load_bundle

        mv = registry.get_version(f"{model.name}:{model.version}")
        native = getattr(model.runner, "runner", None)
        if isinstance(native, NativeRunner):
            handle: Any = native.model
        else:  # served by ONNX Runtime: explanations need the native model
            trust = TrustOptions(skops_trusted_types=tuple(settings.formats.skops_trusted_types))
            handle = load_bundle(registry.download(mv), expected_manifest=mv.manifest,
                                 trust=trust, runtime="native").runner.model
        background = background_rows(
            model.signature, profile=(mv.lineage or {}).get("reference_profile"),
            example=model.input_example)
        return explainer_for(handle, background, signature=model.signature, task=model.task)

    return build


@dataclasses.dataclass(slots=True)
class _Held:
    model: ServedModel
    explainer: asyncio.Task[Explainer]


class ExplainerCache:
    """One explainer per served version (see the module docstring)."""

    def __init__(self, build: ExplainerBuilder, pool: ModelPool, *,
                 threads: int = EXPLAIN_THREADS, queue: int = EXPLAIN_QUEUE) -> None:
        self._build = build
        self._pool = pool
        self._held: dict[tuple[str, int], _Held] = {}
        self._executor = ThreadPoolExecutor(threads, "mlharbor-explain")
        self._queue = queue
        self._busy = 0

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def held(self) -> list[tuple[str, int]]:
        """The versions an explainer is held for (status and tests)."""
        self._prune()
        return sorted(self._held)

    async def explain(self, model: ServedModel, data: Any, *, timeout_s: float
                      ) -> Attributions:
        """Attributions of ``data`` by ``model``'s explainer, built first if needed, within
        ``timeout_s`` (504 after); 503 at once when ``queue`` requests are already waiting
        or running. A request that timed out keeps its place until its thread is done, so
        the bound holds for the work, not just for the waiting."""
        if self._busy >= self._queue:
            raise UnavailableError(
                f"{self._busy} explanations are already waiting or running on this server.",
                hint="Retry shortly, or explain fewer rows per request.")
        self._busy += 1
        loop = asyncio.get_running_loop()

        async def work() -> Attributions:
            explainer = await self._explainer(model)
            return await loop.run_in_executor(self._executor, explainer.explain, data)

        job = loop.create_task(work())
        job.add_done_callback(self._done)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(job)
        except TimeoutError as exc:
            raise TimeoutError_(
                f"The explanation did not finish within the endpoint's timeout of "
                f"{timeout_s:g}s (the first one also builds the explainer).",
                hint="Retry (the explainer is kept once built), explain fewer rows, or "
                "raise limits.timeout_ms.") from exc

    def _done(self, job: asyncio.Task[Any]) -> None:
        self._busy -= 1
        if not job.cancelled():
            job.exception()  # retrieved: a timed-out job's error is not "never retrieved"

    async def _explainer(self, model: ServedModel) -> Explainer:
        self._prune()
        key = (model.name, model.version)
        held = self._held.get(key)
        if held is None or held.model is not model:
            loop = asyncio.get_running_loop()
            task = loop.create_task(self._built(model))
            held = self._held[key] = _Held(model, task)
        try:
            return await asyncio.shield(held.explainer)
        except Exception:
            if self._held.get(key) is held:  # a failed build is tried again next time
                del self._held[key]
            raise

    async def _built(self, model: ServedModel) -> Explainer:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._build, model)

    def _prune(self) -> None:
        """Forget explainers whose version left the pool (or was loaded again)."""
        for key, held in list(self._held.items()):
            entry = self._pool.get(*key)
            if entry is None or entry.model is not held.model:
                del self._held[key]
