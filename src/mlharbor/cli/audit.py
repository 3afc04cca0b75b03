"""``mlharbor audit``: verify the hash chain, print its head, export records as JSON lines."""

from __future__ import annotations

import re
import sys
from datetime import datetime

import typer

_RELATIVE = re.compile(r"(\d+)([smhd])")


def _parse_since(text: str) -> datetime:
    from mlharbor.core.clock import utcnow
    from mlharbor.core.durations import parse_duration
    from mlharbor.core.errors import InvalidInputError

    if _RELATIVE.fullmatch(text.strip()):
        return utcnow() - parse_duration(text)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInputError(
            f"--since {text!r} is neither a time (2026-01-31T12:00:00Z) nor a duration (24h)."
        ) from exc
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


def register(app: typer.Typer) -> None:
    audit_app = typer.Typer(help="Check and export the tamper-evident audit trail.",
                            no_args_is_help=True)

    def _store(ctx: typer.Context):  # type: ignore[no-untyped-def]
        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.main import settings_from

        return open_registry(settings_from(ctx)).store

    @audit_app.command("verify")
    def verify(
        ctx: typer.Context,
        anchor: str = typer.Option(None, help="A head recorded earlier: what `audit head` "
                                   "printed (SEQ HASH, pasted as is) or just the hash; also "
                                   "detects records cut off the end."),
    ) -> None:
        """Recompute the chain; exits 5 naming the first bad record if anything was altered."""
        from mlharbor.core.errors import IntegrityError
        from mlharbor.registry.audit import verify_chain

        verdict = verify_chain(_store(ctx).iter_audit(), anchor=anchor)
        if not verdict.ok:
            raise IntegrityError(
                f"The audit chain is broken at record {verdict.first_bad_seq}: "
                f"{verdict.reason}; {verdict.checked} record(s) before it are intact.",
                hint="Restore the audit table from a backup and investigate who changed it.",
            )
        typer.echo(f"Audit chain intact: {verdict.checked} record(s); head {verdict.head_seq} "
                   f"{verdict.head_hash or '-'}.")

    @audit_app.command("head")
    def head(ctx: typer.Context) -> None:
        """Print the last record's sequence number and hash (keep it elsewhere as an anchor)."""
        last = None
        for last in _store(ctx).iter_audit():  # noqa: B007
            pass
        if last is None:
            typer.echo("0 " + "0" * 64)
            return
        typer.echo(f"{last.seq} {last.hash}")

    @audit_app.command("export")
    def export(
        ctx: typer.Context,
        since: str = typer.Option(None, help="Only records from this time (ISO) or this long "
                                  "ago (24h, 7d)."),
        output: str = typer.Option(None, "--output", "-o", help="File (default: stdout)."),
    ) -> None:
        """Write records as JSON lines, oldest first."""
        import dataclasses
        import json

        from mlharbor.cli.output import open_output

        start = _parse_since(since) if since else None
        out = open_output(output, what="the audit export") if output else sys.stdout
        count = 0
        try:
            for event in _store(ctx).iter_audit(since=start):
                record = dataclasses.asdict(event)
                record["at"] = event.at.isoformat()
                out.write(json.dumps(record, sort_keys=True, default=str) + "\n")
                count += 1
        finally:
            if output:
                out.close()
        if output:
            typer.echo(f"Wrote {count} record(s) to {output}.")

    app.add_typer(audit_app, name="audit")
