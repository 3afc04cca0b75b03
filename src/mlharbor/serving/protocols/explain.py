"""Explanations over HTTP: ``POST /v1/endpoints/{name}/explain`` (native protocol) and
KServe V1 ``POST /v1/models/{model}:explain``.

Both sit behind exactly what predict sits behind: the same API keys and policy action
(``predict`` on the endpoint), body limit, content-type check, load shedding (they are
``predict`` routes of the HTTP layer) and signature validation (before any work). Explaining
is opt-in per endpoint (``explain: true`` in its spec, ``mlharbor serve REF --explain``); an
endpoint without it answers 409 saying how to turn it on. The version explained is the one
that would answer the same caller's predict (same weights and sticky key).

Answer (both protocols)::

    {"model": "churn", "version": 3, "method": "tree_shap", "space": "probability",
     "output": "probability of class 'yes'", "outputs": ["yes"], "features": [...],
     "explanations": [{"yes": {"base_value": 0.26, "output": 0.81,
                               "attributions": {"tenure_months": 0.31, ...}}}, ...]}

``base_value`` plus the sum of ``attributions`` is ``output``, the model's output in
``space`` for that row (see :mod:`mlharbor.explain.attributions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import ConflictError, InvalidInputError, UnavailableError
from mlharbor.serving.http import JSON_ONLY, Request, Response, Route, json_response
from mlharbor.serving.protocols import kserve, native
from mlharbor.serving.protocols.payload import parse_json, records_or_columns

if TYPE_CHECKING:
    from mlharbor.serving.core import DataPlane
    from mlharbor.serving.explaining import ExplainerCache
    from mlharbor.serving.routing import EndpointPlan, Target

MAX_EXPLAIN_ROWS = 100  # rows per explain request (explaining costs more than predicting)


def _target(plane: DataPlane, name: str, request: Request) -> tuple[EndpointPlan, Target]:
    plan = plane.plan(name)
    if not getattr(plan.spec, "explain", False):
        raise ConflictError(
            f"Explanations are not enabled on endpoint {name!r}.",
            hint=f"Enable them with `mlharbor endpoints update {name} --explain` (stored "
            "endpoints) or `mlharbor serve REF --explain`.", field="explain",
            expected=True, received=False)
    return plan, plan.pick(request.headers.get(plan.sticky_header))


async def _explain(plane: DataPlane, cache: ExplainerCache, plan: EndpointPlan,
                   target: Target, data: Any, request: Request) -> dict[str, Any]:
    _x, rows, _matrix = target.model.prepare(data)  # validate before any work
    limit = min(plan.max_rows, MAX_EXPLAIN_ROWS)
    if not 1 <= rows <= limit:
        raise InvalidInputError(
            f"The request holds {rows} rows; an explanation takes 1 to {limit}.",
            hint="Split the request.", field="rows", expected=f"1..{limit}", received=rows)
    if target.pending:
        # Not in memory (a lazy pool) or failed to load: load it through the pool as predict
        # does, so the model memory budget holds and the explainer lives as long as the
        # loaded version; never a second copy loaded beside the pool.
        if plane.demand is None:
            reason = f": {target.entry.reason}" if target.entry.reason else ""
            raise UnavailableError(f"{target.model.ref} is not loaded in this server{reason}.",
                                   hint="Check `mlharbor endpoints show` for the load status; "
                                   "it is tried again later.")
        plan, target = await plane.demand.ready(plan, target)
    attributions = await cache.explain(target.model, data, timeout_s=plan.timeout_s)
    return {"endpoint": plan.name, "model": target.model.name,
            "version": target.model.version, "request_id": request.request_id,
            **attributions.describe(), "explanations": attributions.to_rows()}


def routes(plane: DataPlane, cache: ExplainerCache) -> list[Route]:
    async def explain_native(request: Request) -> Response:
        name = request.params["name"]
        request.endpoint = name
        plan, target = _target(plane, name, request)
        data = records_or_columns(parse_json(request.body))
        return json_response(await _explain(plane, cache, plan, target, data, request))

    async def explain_kserve(request: Request) -> Response:
        name = request.params["model"]
        request.endpoint = name
        plan, target = _target(plane, name, request)
        data = kserve._instances(parse_json(request.body), target.model.signature.names)
        return json_response(await _explain(plane, cache, plan, target, data, request))

    return [
        Route("POST", "/v1/endpoints/{name}/explain", explain_native, "native",
              native.render_error, predict=True, accepts=JSON_ONLY),
        Route("POST", "/v1/models/{model}:explain", explain_kserve, "kserve",
              kserve.render_error, predict=True, accepts=JSON_ONLY),
    ]
