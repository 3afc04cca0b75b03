"""``mlharbor endpoints``: create, update, show, list, history and delete serving endpoints.

``update`` is a read-modify-write on the endpoint's revision: it reads the endpoint, applies the
options on top of what it read (``--max-batch-size`` keeps the other batching settings) and
writes only if nobody changed the endpoint in between. When someone did, it reads again and
retries once; a second conflict is one error line and exit code 4, and nothing is changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from mlharbor.cli.output import print_json, print_kv, print_table

if TYPE_CHECKING:
    from mlharbor.registry.endpoints import Endpoint, EndpointService

#: Spec fields whose options set some of their keys: merged into the stored value, not swapped.
NESTED_FIELDS = ("batching", "limits")

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts.")
ROUTE_HELP = "REF or REF=WEIGHT (churn@champion=90), repeatable."


def _service(ctx: typer.Context) -> EndpointService:
    from mlharbor.bootstrap import open_registry
    from mlharbor.cli.main import settings_from
    from mlharbor.registry.endpoints import EndpointService

    return EndpointService(open_registry(settings_from(ctx)))


def _routes(items: list[str]) -> list[dict[str, Any]]:
    from mlharbor.core.errors import InvalidInputError

    routes = []
    for item in items:
        ref, sep, weight = item.partition("=")
        try:
            routes.append({"ref": ref, "weight": float(weight) if sep else 100.0})
        except ValueError as exc:
            raise InvalidInputError(f"--route {item!r}: the weight {weight!r} is not a number.",
                                    field="route", expected="REF=NUMBER") from exc
    return routes


def _default(value: str) -> Any:
    import json

    try:
        return json.loads(value)
    except ValueError:
        return value


def _changes(
    route: list[str] | None, shadow: str | None, fallback: list[str] | None,
    default_answer: str | None, max_batch_size: int | None, max_wait_ms: float | None,
    batching: bool | None, timeout_ms: int | None, max_rows: int | None,
    sticky_header: str | None, description: str | None,
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if route:
        changes["routes"] = _routes(route)
    if shadow is not None:
        changes["shadow"] = shadow or None
    if fallback is not None:
        changes["fallback"] = [f for f in fallback if f]
    if default_answer is not None:
        changes["default_answer"] = ({"prediction": _default(default_answer)}
                                     if default_answer else None)
    batch = {k: v for k, v in (("enabled", batching), ("max_batch_size", max_batch_size),
                               ("max_wait_ms", max_wait_ms)) if v is not None}
    if batch:
        changes["batching"] = batch
    limits = {k: v for k, v in (("timeout_ms", timeout_ms), ("max_rows", max_rows))
              if v is not None}
    if limits:
        changes["limits"] = limits
    if sticky_header is not None:
        changes["sticky_header"] = sticky_header or None
    if description is not None:
        changes["description"] = description
    return changes


def _on_top_of(current: Endpoint, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` with nested settings completed from ``current``'s spec."""
    full = dict(changes)
    for field in NESTED_FIELDS:
        if field in changes:
            stored = getattr(current.spec, field).model_dump(exclude_none=True)
            full[field] = {**stored, **changes[field]}
    return full


def edit_endpoint(
    service: EndpointService, name: str, changes: dict[str, Any], *, actor: str,
    reason: str = "", revision: int | None = None,
) -> Endpoint:
    """Apply ``changes`` to the endpoint as read, guarded by its revision; retry once.

    With ``revision`` (the user pinned the revision they reviewed) there is no retry: a
    conflict means the endpoint is no longer what the user looked at.
    """
    from mlharbor.core.errors import ConflictError

    attempts = 1 if revision is not None else 2
    for attempt in range(1, attempts + 1):
        current = service.get(name)
        expected = revision if revision is not None else current.revision
        try:
            return service.update(name, _on_top_of(current, changes), actor=actor,
                                  reason=reason, expected_revision=expected)
        except ConflictError as exc:
            if "current_revision" not in exc.details:
                raise
            if attempt == attempts:
                now = exc.details.get("current_revision")
                state = f"it is now at revision {now}" if now is not None else "it was deleted"
                tried = (f"revision {revision} was asked for" if revision is not None
                         else f"retried {attempts - 1} time(s)")
                raise ConflictError(
                    f"Endpoint {name!r} was changed by someone else while updating ({state}; "
                    f"{tried}); nothing was changed.",
                    hint=f"Check `mlharbor endpoints show {name}` and run the update again.",
                    current_revision=now, expected_revision=expected,
                ) from exc
    raise AssertionError("unreachable")


def _show(endpoint: Endpoint) -> None:
    spec = endpoint.spec
    print_kv(f"Endpoint {spec.name} (revision {endpoint.revision})", [
        ("routes", ", ".join(f"{r.ref} ({r.weight:g})" for r in spec.routes)),
        ("shadow", spec.shadow),
        ("fallback", " -> ".join([*spec.fallback, *(
            [f"answer {spec.default_answer.prediction!r}"] if spec.default_answer else [])])),
        ("batching", spec.batching.model_dump(exclude_none=True) or "defaults"),
        ("limits", spec.limits.model_dump(exclude_none=True) or "defaults"),
        ("sticky header", spec.sticky_header or "default"),
        ("explain", "on" if spec.explain else "off"),
        ("updated", f"{endpoint.updated_at:%Y-%m-%d %H:%M:%S} by {endpoint.updated_by}"),
        ("description", spec.description),
    ])


def register(app: typer.Typer) -> None:
    endpoints_app = typer.Typer(help="Manage serving endpoints (routes, canary, shadow, "
                                "fallback, batching, limits).", no_args_is_help=True)

    @endpoints_app.command("create")
    def create_cmd(
        ctx: typer.Context,
        name: str = typer.Argument(..., help="Endpoint name clients call."),
        route: list[str] = typer.Option(..., "--route", help=ROUTE_HELP),
        shadow: str = typer.Option(None, help="Reference that gets a copy of the traffic."),
        fallback: list[str] = typer.Option(None, "--fallback",
                                           help="REF or 'previous', in order; repeatable."),
        default_answer: str = typer.Option(None, help="Fixed prediction at the chain's end."),
        max_batch_size: int = typer.Option(None, min=1),
        max_wait_ms: float = typer.Option(None, min=0),
        batching: bool = typer.Option(None, "--batching/--no-batching"),
        explain: bool = typer.Option(None, "--explain/--no-explain",
                                     help="Serve feature attributions (explain routes)."),
        timeout_ms: int = typer.Option(None, min=1),
        max_rows: int = typer.Option(None, min=1),
        sticky_header: str = typer.Option(None, help="Header whose value pins a route."),
        description: str = typer.Option("", help="What this endpoint is for."),
        reason: str = typer.Option("", help="Why; kept in the deployment ledger."),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Create endpoint NAME."""
        body = {"name": name, **_changes(route, shadow, fallback, default_answer,
                                         max_batch_size, max_wait_ms, batching, timeout_ms,
                                         max_rows, sticky_header, description)}
        if explain is not None:
            body["explain"] = explain
        endpoint = _service(ctx).create(body, actor="local", reason=reason)
        if as_json:
            print_json(endpoint.to_dict())
            return
        _show(endpoint)

    @endpoints_app.command("update")
    def update_cmd(
        ctx: typer.Context,
        name: str = typer.Argument(...),
        route: list[str] = typer.Option(None, "--route", help=ROUTE_HELP + " Replaces all."),
        shadow: str = typer.Option(None, help="Reference, or '' to remove."),
        fallback: list[str] = typer.Option(None, "--fallback", help="Replaces the chain."),
        default_answer: str = typer.Option(None, help="Fixed prediction, or '' to remove."),
        max_batch_size: int = typer.Option(None, min=1),
        max_wait_ms: float = typer.Option(None, min=0),
        batching: bool = typer.Option(None, "--batching/--no-batching"),
        explain: bool = typer.Option(None, "--explain/--no-explain",
                                     help="Serve feature attributions (explain routes)."),
        timeout_ms: int = typer.Option(None, min=1),
        max_rows: int = typer.Option(None, min=1),
        sticky_header: str = typer.Option(None),
        description: str = typer.Option(None),
        reason: str = typer.Option("", help="Why; kept in the deployment ledger."),
        revision: int = typer.Option(None, "--revision", min=1,
                                     help="Apply only if the endpoint is still at this "
                                     "revision (as shown by `endpoints show`); no retry."),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Change endpoint NAME (only the options given), guarded by its revision."""
        from mlharbor.core.errors import InvalidInputError

        changes = _changes(route, shadow, fallback, default_answer, max_batch_size,
                           max_wait_ms, batching, timeout_ms, max_rows, sticky_header,
                           description)
        if explain is not None:
            changes["explain"] = explain
        if not changes:
            raise InvalidInputError("Nothing to change: give at least one option.",
                                    hint="See `mlharbor endpoints update --help`.")
        endpoint = edit_endpoint(_service(ctx), name, changes, actor="local", reason=reason,
                                 revision=revision)
        if as_json:
            print_json(endpoint.to_dict())
            return
        _show(endpoint)

    @endpoints_app.command("show")
    def show_cmd(ctx: typer.Context, name: str = typer.Argument(...),
                 as_json: bool = JSON_OPTION) -> None:
        """Show endpoint NAME."""
        endpoint = _service(ctx).get(name)
        if as_json:
            print_json(endpoint.to_dict())
            return
        _show(endpoint)

    @endpoints_app.command("list")
    def list_cmd(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
        """List endpoints."""
        items = _service(ctx).list_endpoints()
        if as_json:
            print_json([e.to_dict() for e in items])
            return
        print_table(f"Endpoints ({len(items)})", ["name", "revision", "routes", "shadow",
                                                  "fallback", "updated"],
                    [(e.name, e.revision,
                      ", ".join(f"{r.ref} ({r.weight:g})" for r in e.spec.routes),
                      e.spec.shadow, ", ".join(e.spec.fallback),
                      f"{e.updated_at:%Y-%m-%d %H:%M}") for e in items])

    @endpoints_app.command("history")
    def history_cmd(ctx: typer.Context, name: str = typer.Argument(...),
                    as_json: bool = JSON_OPTION) -> None:
        """Every change of endpoint NAME: who, when, what, why."""
        changes = _service(ctx).history(name)
        if as_json:
            print_json([c.to_dict() for c in changes])
            return
        print_table(f"{name}: history", ["when", "revision", "action", "who", "reason"],
                    [(f"{c.at:%Y-%m-%d %H:%M:%S}", c.revision, c.action, c.actor, c.reason)
                     for c in changes])

    @endpoints_app.command("delete")
    def delete_cmd(
        ctx: typer.Context, name: str = typer.Argument(...),
        yes: bool = typer.Option(False, "--yes", help="Do not ask."),
        reason: str = typer.Option("", help="Why; kept in the deployment ledger."),
    ) -> None:
        """Delete endpoint NAME (servers stop answering it within a poll interval)."""
        if not yes:
            typer.confirm(f"Delete endpoint {name}?", abort=True)
        _service(ctx).delete(name, actor="local", reason=reason)
        typer.echo(f"Deleted endpoint {name}.")

    app.add_typer(endpoints_app, name="endpoints")
