"""A small Python client for the serving API: ``Client(url, api_key).predict("churn", rows)``.

``rows`` is what a Python user has at hand: a DataFrame, records (a list of dicts), one record
(a dict), a dict of column lists, or a numpy array / list of lists as scikit-learn takes it
(2-D, or 1-D for one row). Arrays carry no column names, so the client reads the endpoint's
signature once (the Open Inference model metadata, ``GET /v2/models/{name}``, which lists the
inputs in signature order), keeps it, and names the columns in that order; a row of the wrong
width is refused here, naming the columns expected.

Pointed at the control plane (``mlharbor server``), it also reads and changes endpoints with
optimistic concurrency: ``get_endpoint`` returns the revision, and ``update_endpoint(...,
revision=...)`` sends it as ``If-Match`` so a change based on a stale read is refused
(:class:`~mlharbor.core.errors.ConflictError` with ``details["current_revision"]``) instead of
silently overwriting someone else's change.

Every failure is an :class:`~mlharbor.core.errors.MlharborError`, never an httpx exception: a
server that cannot be reached is :class:`~mlharbor.core.errors.UnavailableError` naming the
URL (the httpx error kept as ``__cause__``), a timeout :class:`~mlharbor.core.errors.TimeoutError_`,
and an error the server answered comes back as the class it raised there, found by the
``code`` of the error body (or, for bodies without one, by the status through the one map in
:mod:`mlharbor.core.status`), so callers handle errors the same way locally and remotely.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from mlharbor.core import errors
from mlharbor.core.errors import describe_value

if TYPE_CHECKING:
    import httpx

SHOWN_COLUMNS = 12  # column names listed in a message before "... (N in all)"
DATA_FORMS = ("a DataFrame, records (a list of dicts), one record (a dict), a dict of column "
              "lists, or a 2-D numpy array / list of lists in the signature's column order")


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
    """Calls one mlharbor server; reuse it (it keeps connections open and endpoint columns)."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 30.0) -> None:
        import httpx

        _check_url(url)
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._columns: dict[str, list[str]] = {}

    def predict(self, endpoint: str, data: Any, *, sticky_key: str | None = None) -> Prediction:
        """Predict ``data`` with ``endpoint``; ``data`` is any of the forms in the module doc."""
        path = f"/v1/endpoints/{_segment(endpoint)}/predict"
        body, positional = self._body(endpoint, data)
        headers = {"x-mlharbor-sticky": sticky_key} if sticky_key else None
        try:
            payload = self._send("POST", path, content=body, headers=headers)
        except errors.SchemaError:
            if positional:  # the endpoint may serve another version now: read it again
                self._columns.pop(endpoint, None)
            raise
        try:
            return Prediction(payload["predictions"], payload.get("probabilities"),
                              payload.get("classes"), payload["model"], payload["version"],
                              payload["request_id"], payload.get("fallback"))
        except (KeyError, TypeError) as exc:
            raise errors.UnavailableError(
                f"{self.url} answered the prediction without predictions, model, version and "
                "request_id.", hint="Check that the URL points at an mlharbor serving server "
                "(mlharbor serve).", url=self.url) from exc

    def columns(self, endpoint: str) -> list[str]:
        """The input columns of ``endpoint`` in signature order (read once, then kept)."""
        path = f"/v2/models/{_segment(endpoint)}"
        if endpoint not in self._columns:
            meta = self._send("GET", path)
            inputs = meta.get("inputs") if isinstance(meta, dict) else None
            if not isinstance(inputs, list) or not all(
                    isinstance(i, dict) and isinstance(i.get("name"), str) for i in inputs):
                raise errors.UnavailableError(
                    f"{self.url} did not list the inputs of endpoint {endpoint!r}.",
                    hint="Check that the URL points at an mlharbor serving server.",
                    url=self.url)
            self._columns[endpoint] = [i["name"] for i in inputs]
        return self._columns[endpoint]

    def get_endpoint(self, name: str) -> dict[str, Any]:
        """The stored endpoint (control plane): ``name``, ``revision``, ``spec`` ..."""
        return self._json("GET", f"/api/v1/endpoints/{_segment(name)}")

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
        return self._json("PATCH", f"/api/v1/endpoints/{_segment(name)}", content=body,
                          headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the wire -----------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        payload = self._send(method, path, **kwargs)
        if not isinstance(payload, dict):
            raise errors.UnavailableError(f"The server answered {method} {path} with a "
                                          f"{type(payload).__name__}, not an object.",
                                          url=self.url)
        return payload

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer, or the mlharbor error the exchange amounts to."""
        import httpx

        where = f"{self.url}{path}"
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise errors.UnavailableError(
                f"Could not connect to the mlharbor server at {self.url} ({_reason(exc)}).",
                hint="Check that the server is running (mlharbor serve, or make run) and that "
                "the URL, port and scheme (http/https) are right.", url=self.url) from exc
        except httpx.TimeoutException as exc:
            raise errors.TimeoutError_(
                f"{method} {where} got no answer within {self.timeout:g} s.",
                hint="The server may be overloaded or stuck: check its logs, or allow more "
                "time with Client(..., timeout=SECONDS).", url=where) from exc
        except httpx.HTTPError as exc:
            raise errors.UnavailableError(
                f"{method} {where} failed: {_reason(exc)}.",
                hint="Check that the URL points at an mlharbor server and that nothing between "
                "(a proxy) cuts the connection.", url=where) from exc
        try:
            payload = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError as exc:
            raise _error(response, None, where) from exc
        if response.status_code >= 400:
            raise _error(response, payload, where)
        return payload

    # -- request bodies -----------------------------------------------------------------------

    def _body(self, endpoint: str, data: Any) -> tuple[bytes, bool]:
        """The native request body for ``data``, and whether columns were named by position."""
        frame = _named_rows(data)
        positional = frame is None
        if positional:
            rows = _positional_rows(data)
            columns = self.columns(endpoint)
            _check_width(endpoint, columns, rows)
            frame = {"columns": columns, "data": rows}
        try:
            return orjson.dumps(frame, default=_plain,
                                option=orjson.OPT_SERIALIZE_NUMPY), positional
        except TypeError as exc:  # orjson.JSONEncodeError
            raise errors.InvalidInputError(
                f"The rows hold a value that cannot be sent as JSON: {exc}.",
                hint="Send numbers, strings, booleans, dates or None.") from exc


def _named_rows(data: Any) -> Any:
    """``data`` as a JSON-ready body when it names its columns itself, else None."""
    kind = type(data).__name__
    if kind == "DataFrame" and hasattr(data, "columns") and hasattr(data, "notna"):
        # Missing values of every kind (NaN, None, pd.NA, NaT) travel as JSON null.
        cells = data.astype(object).where(data.notna(), None)
        return {"columns": [str(c) for c in data.columns],
                "data": cells.to_numpy(dtype=object).tolist()}
    if kind == "Series" and hasattr(data, "index") and hasattr(data, "to_dict"):
        return {str(k): v for k, v in data.to_dict().items()}  # one row
    if isinstance(data, dict):
        if data and all(_is_sequence(v) for v in data.values()) and not (
                "columns" in data or "data" in data):
            return _dict_of_lists(data)
        return data  # one record, or the native columns form
    if isinstance(data, list | tuple) and data and all(isinstance(r, dict) for r in data):
        return list(data)
    return None


def _plain(value: Any) -> Any:
    """What orjson cannot write itself: pandas Timestamps and dates as ISO text, numpy and
    pandas scalars as their Python value."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dict_of_lists(data: dict[Any, Any]) -> dict[str, Any]:
    columns = [str(c) for c in data]
    values = [list(v) for v in data.values()]
    lengths = {len(v) for v in values}
    if len(lengths) != 1:
        sizes = ", ".join(f"{c}={len(v)}" for c, v in list(zip(columns, values, strict=True))[:8])
        raise errors.SchemaError(
            f"The columns given as lists have different lengths ({sizes}).",
            hint="Give every column one value per row.", field="data")
    return {"columns": columns, "data": [list(row) for row in zip(*values, strict=True)]}


def _positional_rows(data: Any) -> list[list[Any]]:
    """Rows of values in column order from a numpy array or list of lists (1-D: one row)."""
    ndim = getattr(data, "ndim", None)
    if isinstance(ndim, int) and hasattr(data, "tolist"):
        if ndim == 1:
            return [list(data.tolist())]
        if ndim == 2:
            return [list(row) for row in data.tolist()]
        raise errors.SchemaError(
            f"The array has {ndim} dimensions; rows are a 2-D array (rows x columns), or 1-D "
            "for one row.", field="data", received=describe_value(data))
    if isinstance(data, list | tuple) and data:
        if all(_is_sequence(r) for r in data):
            return [list(r) for r in data]
        if not any(_is_sequence(r) or isinstance(r, dict) for r in data):
            return [list(data)]  # one row of values
    raise errors.InvalidInputError(
        f"predict takes {DATA_FORMS}; received {describe_value(data)}.", field="data",
        expected=DATA_FORMS, received=describe_value(data))


def _check_width(endpoint: str, columns: list[str], rows: list[list[Any]]) -> None:
    for index, row in enumerate(rows):
        if len(row) != len(columns):
            shown = ", ".join(columns[:SHOWN_COLUMNS]) + (
                f", ... ({len(columns)} in all)" if len(columns) > SHOWN_COLUMNS else "")
            where = "The row" if len(rows) == 1 else f"Row {index}"
            raise errors.SchemaError(
                f"{where} has {len(row)} values; endpoint {endpoint!r} takes "
                f"{len(columns)} columns, in this order: {shown}.",
                hint="Give one value per column in that order (a single-column model takes "
                "a 2-D array, e.g. x.reshape(-1, 1)), or pass a DataFrame or records with "
                "these column names.", field="data", expected=columns, received=len(row))


def _is_sequence(value: Any) -> bool:
    if isinstance(value, str | bytes | dict):
        return False
    return isinstance(value, list | tuple) or getattr(value, "ndim", None) == 1


def _segment(name: str) -> str:
    """``name`` as one URL path segment (endpoint names are plain, but never trust that)."""
    if not isinstance(name, str) or not name:
        raise errors.InvalidInputError(
            f"The endpoint name must be a non-empty string; received {describe_value(name)}.",
            field="endpoint")
    return quote(name, safe="")


def _check_url(url: object) -> None:
    """Refuse a server URL without scheme or host now, not as a puzzling error per call."""
    from urllib.parse import urlsplit

    try:  # .port raises on a port that is not a number, urlsplit on an unclosed [IPv6
        parts = urlsplit(url) if isinstance(url, str) else None
        usable = parts is not None and parts.scheme in ("http", "https") \
            and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:
        usable = False
    if not usable:
        raise errors.InvalidInputError(
            f"The server URL must be http:// or https:// with a host; received "
            f"{describe_value(url)}.", hint="For example http://127.0.0.1:8080 (mlharbor serve).",
            field="url", received=describe_value(url))


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    return text[:200]


def _error(response: httpx.Response, payload: Any, where: str) -> errors.MlharborError:
    """The mlharbor error an error answer stands for: the class named by the body's ``code``
    (every protocol's error body that has one), else the class of the status in the one
    status map; bodies that are not JSON (a proxy's page) are the server being unavailable."""
    from mlharbor.core.status import STATUS_BY_ERROR

    status = response.status_code
    body = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(body, str):
        body = {"message": body}
    if not isinstance(body, dict):
        return errors.UnavailableError(
            f"{where} answered {status} without an mlharbor error body.",
            hint="Check that the URL points at an mlharbor server, not a proxy or another "
            "service.", url=where, status=status)
    cls = _class_for_code(str(body.get("code"))) or next(
        (c for c, s in STATUS_BY_ERROR.items() if s == status),
        errors.UnavailableError if status >= 500 else errors.InvalidInputError)
    message = str(body.get("message") or f"{where} answered {status}.")
    hint = body.get("hint") if isinstance(body.get("hint"), str) else None
    sent = body.get("details")
    details = {str(k): v for k, v in (sent if isinstance(sent, dict) else {}).items()
               if k not in ("message", "hint")}
    details.setdefault("status", status)
    if issubclass(cls, errors.LimitExceededError) and "retry_after" not in details:
        details["retry_after"] = _float(response.headers.get("retry-after"))
    return cls(message, hint=hint, **details)


def _class_for_code(code: str) -> type[errors.MlharborError] | None:
    """The class of the one error tree whose ``code`` is ``code`` (the tree is the table)."""
    pending: list[type[errors.MlharborError]] = [errors.MlharborError]
    while pending:
        cls = pending.pop()
        if cls.code == code and cls is not errors.MlharborError:
            return cls
        pending.extend(cls.__subclasses__())
    return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
