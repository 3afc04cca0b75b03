"""``mlharbor policies``: apply, list, show, history and delete retraining policies, and
``mlharbor retrain ENDPOINT``, the manual trigger.

``apply FILE`` validates the whole YAML file first (every problem with its line and field, one
error line, exit code 2, nothing written), then creates or replaces the endpoint's policy as
one audited revision; ``--revision N`` applies only while the stored policy is still at N
(exit code 4 otherwise). ``show`` prints the stored spec as YAML that ``apply`` reads back.
``retrain`` queues a ``retrain`` job (or names the endpoint's active one: one job per
endpoint at a time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from mlharbor.cli.admin import cli_actor
from mlharbor.cli.output import print_json, print_kv, print_table

if TYPE_CHECKING:
    from mlharbor.registry.policies import PolicyService
    from mlharbor.registry.service import Registry

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts.")


def _registry(ctx: typer.Context) -> Registry:
    from mlharbor.bootstrap import open_registry
    from mlharbor.cli.main import settings_from

    return open_registry(settings_from(ctx))


def _service(ctx: typer.Context) -> PolicyService:
    from mlharbor.registry.policies import PolicyService

    return PolicyService(_registry(ctx))


def _yaml(spec: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(spec, sort_keys=False, default_flow_style=False))


def _triggers(spec: dict[str, Any]) -> str:
    triggers = spec.get("triggers") or {}
    names = [k for k in ("drift", "metric", "estimated", "schedule") if triggers.get(k)]
    return ", ".join(names) or "manual only"


def register(app: typer.Typer) -> None:
    policies_app = typer.Typer(help="Retraining policies: what triggers a retrain of an "
                               "endpoint, on which data, and how the result rolls out.",
                               no_args_is_help=True)

    @policies_app.command("apply")
    def apply_cmd(
        ctx: typer.Context,
        file: str = typer.Argument(..., help="Policy YAML file."),
        reason: str = typer.Option("", "--reason", help="Why; kept with the revision."),
        revision: int = typer.Option(None, "--revision", min=1,
                                     help="Apply only if the stored policy is still at this "
                                     "revision (as shown by `policies show`)."),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Create or replace the policy of the endpoint FILE names."""
        from mlharbor.pipelines.policy import load_policy

        policy = load_policy(file)
        result = _service(ctx).apply(policy, actor=cli_actor(), reason=reason,
                                     expected_revision=revision)
        if as_json:
            print_json(result.to_dict())
            return
        stored = result.policy
        verb = {"created": "Created", "updated": "Updated"}.get(result.outcome)
        typer.echo(f"{verb} the policy of {stored.endpoint} (revision {stored.revision})."
                   if verb else f"The policy of {stored.endpoint} is unchanged (revision "
                   f"{stored.revision}).")

    @policies_app.command("list")
    def list_cmd(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
        """List the endpoints with a policy."""
        items = _service(ctx).list_policies()
        if as_json:
            print_json([p.to_dict() for p in items])
            return
        print_table(f"Policies ({len(items)})",
                    ["endpoint", "revision", "enabled", "triggers", "rollout", "updated"],
                    [(p.endpoint, p.revision, "yes" if p.spec.get("enabled", True) else "no",
                      _triggers(p.spec), (p.spec.get("rollout") or {}).get("mode", "canary"),
                      f"{p.updated_at:%Y-%m-%d %H:%M} by {p.updated_by}") for p in items])

    @policies_app.command("show")
    def show_cmd(
        ctx: typer.Context, endpoint: str = typer.Argument(...),
        revision: int = typer.Option(None, "--revision", min=1,
                                     help="Show this past revision instead of the current."),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Show the policy of ENDPOINT (as YAML that `policies apply` reads back)."""
        from mlharbor.core.errors import NotFoundError

        service = _service(ctx)
        if revision is None:
            stored = service.get(endpoint)
            if as_json:
                print_json(stored.to_dict())
                return
            typer.echo(f"# {endpoint}: revision {stored.revision}, "
                       f"{stored.updated_at:%Y-%m-%d %H:%M:%S} by {stored.updated_by}")
            typer.echo(_yaml(stored.spec), nl=False)
            return
        past = service.revision(endpoint, revision)
        if past.spec is None:
            raise NotFoundError(f"Revision {revision} of the policy of {endpoint!r} is its "
                                "deletion; it has no spec.",
                                hint=f"See `mlharbor policies history {endpoint}`.")
        if as_json:
            print_json(past.to_dict())
            return
        typer.echo(f"# {endpoint}: revision {past.revision}, {past.at:%Y-%m-%d %H:%M:%S} "
                   f"by {past.actor}")
        typer.echo(_yaml(past.spec), nl=False)

    @policies_app.command("history")
    def history_cmd(ctx: typer.Context, endpoint: str = typer.Argument(...),
                    as_json: bool = JSON_OPTION) -> None:
        """Every revision of the policy of ENDPOINT: who, when, what, why."""
        revisions = _service(ctx).history(endpoint)
        if as_json:
            print_json([r.to_dict() for r in revisions])
            return
        print_table(f"{endpoint}: policy history", ["when", "revision", "action", "who",
                                                    "reason"],
                    [(f"{r.at:%Y-%m-%d %H:%M:%S}", r.revision, r.action, r.actor, r.reason)
                     for r in revisions])

    @policies_app.command("delete")
    def delete_cmd(
        ctx: typer.Context, endpoint: str = typer.Argument(...),
        yes: bool = typer.Option(False, "--yes", help="Do not ask."),
        reason: str = typer.Option("", "--reason", help="Why; kept with the revision."),
        revision: int = typer.Option(None, "--revision", min=1,
                                     help="Delete only if still at this revision."),
    ) -> None:
        """Delete the policy of ENDPOINT (its history stays; nothing retrains it)."""
        if not yes:
            typer.confirm(f"Delete the policy of {endpoint}?", abort=True)
        _service(ctx).delete(endpoint, actor=cli_actor(), reason=reason, expected_revision=revision)
        typer.echo(f"Deleted the policy of {endpoint}.")

    app.add_typer(policies_app, name="policies")

    @app.command("retrain")
    def retrain_cmd(
        ctx: typer.Context,
        endpoint: str = typer.Argument(..., help="Endpoint whose model is retrained."),
        reason: str = typer.Option("", "--reason", help="Why; kept with the job."),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Queue a retraining job for ENDPOINT now (a manual trigger; one job per endpoint)."""
        from mlharbor.core.loop import RetrainTrigger
        from mlharbor.pipelines.submit import submit_retrain

        job, created = submit_retrain(_registry(ctx), endpoint, trigger=RetrainTrigger.MANUAL,
                                      reason=reason or "manual", actor=cli_actor())
        if as_json:
            print_json({"job": job.id, "created": created, "state": job.state.value,
                        "endpoint": job.endpoint, "kind": job.kind, "plan": list(job.plan)})
            return
        if created:
            print_kv(f"Queued job {job.id}", [("endpoint", job.endpoint), ("kind", job.kind),
                                              ("steps", " -> ".join(job.plan))])
        else:
            typer.echo(f"Endpoint {endpoint} already has an active job: {job.id} "
                       f"({job.kind}, {job.state.value}); no new job was queued.")
