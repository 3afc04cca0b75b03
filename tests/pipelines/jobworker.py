"""A job runner in its own process, for the crash and many-runner tests of the job runner.

    python -m tests.pipelines.jobworker DATABASE_URL HOME WORKDIR [--lease S] [--block]

Runs jobs of the kind ``three`` (steps ``one``, ``two``, ``three``) until no job is queued or
running. Every step appends one line per effect to ``WORKDIR/effects.log`` (one ``write`` on a
file opened for appending, so lines from several processes never interleave), which is how the
tests count how often each step's effect happened. With ``--block``, step ``two`` notes its
progress, writes ``WORKDIR/blocked`` and then waits forever, so the test can SIGKILL it there.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

from mlharbor.pipelines.jobs import JobKind, JobRunner, JobStore, Step, StepContext
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings

KIND = "three"


def effect(workdir: Path, line: str) -> None:
    fd = os.open(workdir / "effects.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def kind(workdir: Path, *, block: bool, owner: str, pause: float = 0.0) -> JobKind:
    def one(ctx: StepContext) -> Any:
        effect(workdir, f"one {ctx.job.id}")
        time.sleep(pause)
        return {"rows": 10}

    def two(ctx: StepContext) -> Any:
        prev = ctx.previous_attempt
        # The idempotency helper at work: a re-run sees what the crashed attempt noted.
        effect(workdir, f"two-start {ctx.job.id} attempt={ctx.attempt} "
                        f"previous={prev.attempt if prev else None} "
                        f"noted={ctx.progress.get('half')}")
        ctx.note(half=True)
        if block:
            (workdir / "blocked").write_text(owner)
            threading.Event().wait()
        effect(workdir, f"two {ctx.job.id}")
        time.sleep(pause)
        return {"used": ctx.results["one"]["rows"]}

    def three(ctx: StepContext) -> Any:
        effect(workdir, f"three {ctx.job.id} by {owner}")
        return "done"

    return JobKind(KIND, (Step("one", one), Step("two", two), Step("three", three)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("home")
    parser.add_argument("workdir")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--block", action="store_true")
    parser.add_argument("--owner", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    registry = Registry.from_settings(Settings(home=Path(args.home),
                                               database_url=args.database_url))
    store = JobStore(registry.store)
    owner = args.owner or f"worker-{os.getpid()}"
    runner = JobRunner(store, [kind(workdir, block=args.block, owner=owner, pause=args.pause)],
                       owner=owner, lease_seconds=args.lease, poll_seconds=0.1)
    while True:
        ran = runner.run_once()
        if ran is None and not any(job.active for job in store.list_jobs(limit=1000)):
            break
        if ran is None:
            # Tells the test this runner is up and has found nothing it may claim.
            (workdir / f"idle-{owner}").touch()
            time.sleep(0.1)
    registry.close()


if __name__ == "__main__":
    main()
