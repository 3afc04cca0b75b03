"""``mlharbor jobs``: list, show, logs, cancel, approve and reject durable jobs
(:mod:`mlharbor.pipelines.jobs`). ``logs`` prints what ``GET /api/v1/jobs/{id}/logs`` answers
(:func:`mlharbor.pipelines.jobview.read_job_log`).

Reads and cancels go straight to the metadata store, so they work from any machine that shares
the database with the runners. Bad input (an unknown id, a state that does not exist) is one
error line and a non-zero exit; nothing is changed. ``approve``/``reject`` act on a job
``waiting`` for a human (a rollout's approval step) and are audited with the actor and reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from mlharbor.cli.admin import cli_actor
from mlharbor.cli.output import print_json, print_kv, print_table

if TYPE_CHECKING:
    from mlharbor.pipelines.jobrecords import Job
    from mlharbor.pipelines.jobstore import JobStore

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts.")


def _store(ctx: typer.Context) -> JobStore:
    from mlharbor.bootstrap import open_registry
    from mlharbor.cli.main import settings_from
    from mlharbor.pipelines.jobstore import JobStore

    return JobStore(open_registry(settings_from(ctx)).store)


def _when(job: Job) -> str:
    return f"{job.created_at:%Y-%m-%d %H:%M:%S}"


def _progress(job: Job) -> str:
    from mlharbor.pipelines.jobstates import StepState

    done = sum(step.state is StepState.SUCCEEDED for step in job.steps)
    current = next((s.name for s in job.steps
                    if s.state in (StepState.RUNNING, StepState.WAITING)), None)
    return f"{done}/{len(job.steps)}" + (f" ({current})" if current else "")


def _show(job: Job) -> None:
    print_kv(f"Job {job.id}", [
        ("kind", job.kind),
        ("endpoint", job.endpoint),
        ("state", job.state.value + (" (cancel requested)" if job.cancel_requested
                                     and job.active else "")),
        ("created", f"{_when(job)} by {job.created_by}"),
        ("finished", f"{job.finished_at:%Y-%m-%d %H:%M:%S}" if job.finished_at else None),
        ("runner", f"{job.lease_owner} (lease until {job.lease_expires_at:%H:%M:%S})"
         if job.lease_owner and job.lease_expires_at else None),
        ("attempt", job.attempt),
        ("error", job.error),
    ])
    print_table("Steps", ["#", "step", "state", "attempts", "started", "finished", "result",
                          "error"], [
        (s.ordinal + 1, s.name, s.state.value, s.attempts,
         f"{s.started_at:%H:%M:%S}" if s.started_at else None,
         f"{s.finished_at:%H:%M:%S}" if s.finished_at else None,
         None if s.result is None else str(s.result)[:60], s.error)
        for s in job.steps])


def register(app: typer.Typer) -> None:
    jobs_app = typer.Typer(help="Durable jobs (retraining, rollout): list, show, logs, "
                           "cancel, approve, reject.",
                           no_args_is_help=True)

    @jobs_app.command("list")
    def list_cmd(
        ctx: typer.Context,
        state: str = typer.Option(None, "--state", help="queued, running, waiting, "
                                  "succeeded, failed or cancelled."),
        endpoint: str = typer.Option(None, "--endpoint", help="Only this endpoint's jobs."),
        limit: int = typer.Option(50, "--limit", min=1, max=1000),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """List jobs, newest first."""
        from mlharbor.pipelines.jobstates import parse_job_state

        wanted = parse_job_state(state) if state is not None else None
        found = _store(ctx).list_jobs(state=wanted, endpoint=endpoint, limit=limit)
        if as_json:
            print_json([job.to_dict() for job in found])
            return
        print_table("Jobs", ["id", "kind", "endpoint", "state", "steps", "created", "error"], [
            (job.id, job.kind, job.endpoint, job.state.value, _progress(job), _when(job),
             job.error) for job in found])

    @jobs_app.command("show")
    def show_cmd(ctx: typer.Context, job_id: str = typer.Argument(..., help="Job id."),
                 as_json: bool = JSON_OPTION) -> None:
        """Show a job and each of its steps."""
        job = _store(ctx).get(job_id)
        if as_json:
            print_json(job.to_dict())
            return
        _show(job)

    @jobs_app.command("logs")
    def logs_cmd(ctx: typer.Context, job_id: str = typer.Argument(..., help="Job id."),
                 as_json: bool = JSON_OPTION) -> None:
        """Each step's events in time order: started, noted, waiting, approved, finished,
        and every change the job made (versions, aliases, endpoint weights)."""
        from mlharbor.pipelines.jobview import job_outcome, read_job_log

        store = _store(ctx)
        job = store.get(job_id)
        entries = read_job_log(store.meta, job)
        if as_json:
            print_json({"job": job.id, "state": job.state.value, "outcome": job_outcome(job),
                        "events": [e.to_dict() for e in entries]})
            return
        for entry in entries:
            typer.echo(entry.line())
        typer.echo(f"job {job.id}: {job_outcome(job)}" + (f" ({job.error})" if job.error
                                                           else ""))

    @jobs_app.command("cancel")
    def cancel_cmd(ctx: typer.Context, job_id: str = typer.Argument(..., help="Job id."),
                   reason: str = typer.Option("", "--reason", help="Why (kept in the audit "
                                              "trail)."),
                   as_json: bool = JSON_OPTION) -> None:
        """Cancel a job: one not yet started now; any other is ended by a runner, which undoes
        what it started (a rollout restores the endpoint)."""
        job = _store(ctx).cancel(job_id, actor=cli_actor(), reason=reason)
        if as_json:
            print_json(job.to_dict())
            return
        what = ("cancelled" if not job.active else
                "will stop before its next step (cancel requested)")
        typer.echo(f"Job {job.id} {what}.")

    @jobs_app.command("approve")
    def approve_cmd(ctx: typer.Context, job_id: str = typer.Argument(..., help="Job id."),
                    reason: str = typer.Option("", "--reason", help="Why (kept in the audit "
                                               "trail)."),
                    as_json: bool = JSON_OPTION) -> None:
        """Approve a job waiting for a human: it is queued again and goes on."""
        job = _store(ctx).approve(job_id, actor=cli_actor(), reason=reason)
        if as_json:
            print_json(job.to_dict())
            return
        typer.echo(f"Job {job.id} approved; it goes on with its next step.")

    @jobs_app.command("reject")
    def reject_cmd(ctx: typer.Context, job_id: str = typer.Argument(..., help="Job id."),
                   reason: str = typer.Option("", "--reason", help="Why (kept in the audit "
                                              "trail and on the job)."),
                   as_json: bool = JSON_OPTION) -> None:
        """Reject a job waiting for a human: it ends failed, nothing more is done."""
        job = _store(ctx).reject(job_id, actor=cli_actor(), reason=reason)
        if as_json:
            print_json(job.to_dict())
            return
        typer.echo(f"Job {job.id} rejected; it ends here ({job.error}).")

    app.add_typer(jobs_app, name="jobs")
