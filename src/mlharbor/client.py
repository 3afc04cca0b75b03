"""A small Python client for the serving API: ``Client(url, api_key).predict("churn", frame)``.

Pointed at the control plane (``mlharbor server``), it also reads and changes endpoints with
optimistic concurrency: ``get_endpoint`` returns the revision, and ``update_endpoint(...,
revision=...)`` sends it as ``If-Match`` so a change based on a stale read is refused
(:class:`~mlharbor.core.errors.ConflictError` with ``details["current_revision"]``) instead of
silently overwriting someone else's change.

It speaks the native protocol (``POST /v1/endpoints/{name}/predict``) with the columns form,
which carries a DataFrame without a per-row copy of the column names. Errors come back as the
same :class:`~mlharbor.core.errors.MlharborError` subclasses the server raised (found by the
``code`` of the error body), so callers handle them the same way locally and remotely.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from mlharbor.core import errors

_BY_CODE: dict[str, type[errors.MlharborError]] = {
    cls.code: cls for cls in (
        errors.InvalidInputError, errors.InvalidNameError, errors.SchemaError,
        errors.NotFoundError, errors.ConflictError, errors.AuthenticationError,
        errors.PermissionDeniedError, errors.LimitExceededError, errors.TimeoutError_,
        errors.UnavailableError)
}


@dataclasses.dataclass(frozen=True, slots=True)
class Prediction:
    """One answer: predictions, class probabilities (classifiers), who answered, request id."""

    predictions: list[Any]
    probabilities: list[list[float]] | None
    classes: list[Any] | None
    model: str
    version: int
    request_id: str
    fallback: dict[str, Any] | None = None


class Client:
    """Calls one mlharbor serving server; reuse it (it keeps connections open)."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 30.0) -> None:
        import httpx

        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def predict(self, endpoint: str, data: Any, *, sticky_key: str | None = None) -> Prediction:
        """Predict ``data`` (a DataFrame, a list of records, or one record) with ``endpoint``."""
        body = _body(data)
        headers = {"x-mlharbor-sticky": sticky_key} if sticky_key else None
        response = self._http.post(f"/v1/endpoints/{endpoint}/predict", content=body,
                                   headers=headers)
        payload = orjson.loads(response.content) if response.content else {}
        if response.status_code >= 400:
            raise _error(response.status_code, payload)
        return Prediction(payload["predictions"], payload.get("probabilities"),
                          payload.get("classes"), payload["model"], payload["version"],
                          payload["request_id"], payload.get("fallback"))

    def get_endpoint(self, name: str) -> dict[str, Any]:
        """The stored endpoint (control plane): ``name``, ``revision``, ``spec`` ..."""
        return self._json("GET", f"/api/v1/endpoints/{name}")

    def update_endpoint(
        self, name: str, changes: dict[str, Any], *, revision: int | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        """Change top-level spec fields of endpoint ``name`` (control plane).

        With ``revision`` (from :meth:`get_endpoint`) the change applies only if the endpoint
        is still at that revision; otherwise ConflictError naming the current one.
        """
        headers = {"if-match": f'"{revision}"'} if revision is not None else None
        body = orjson.dumps({**changes, "reason": reason})
        return self._json("PATCH", f"/api/v1/endpoints/{name}", content=body, headers=headers)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kwargs)
        payload = orjson.loads(response.content) if response.content else {}
        if response.status_code >= 400:
            raise _error(response.status_code, payload)
        if not isinstance(payload, dict):
            raise errors.UnavailableError(f"The server answered {method} {path} with a "
                                          f"{type(payload).__name__}, not an object.")
        return payload

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _body(data: Any) -> bytes:
    if type(data).__name__ == "DataFrame" and hasattr(data, "columns"):
        split = {"columns": [str(c) for c in data.columns],
                 "data": data.to_numpy(dtype=object).tolist()}
        return orjson.dumps(split, option=orjson.OPT_SERIALIZE_NUMPY)
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, payload: Any) -> errors.MlharborError:
    body = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(body, dict):
        return errors.UnavailableError(f"The server answered {status}.")
    cls = _BY_CODE.get(str(body.get("code")), errors.UnavailableError if status >= 500
                       else errors.InvalidInputError)
    return cls(str(body.get("message", "")), hint=body.get("hint"), **(body.get("details") or {}))
