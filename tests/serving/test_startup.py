"""What a serving process does before its first answer, and what it keeps after a busy spell.

Start-up (issue 18): the CLI builds only the command it runs; an ONNX model without external
data loads without the onnx package (the protobuf parser); the prediction log starts its
compactor child only when there is a journal file to compact. After load: once requests stop,
the C heap's free pages go back to the kernel, and never while requests keep coming.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlharbor.cli.main import _command_in, create_app
from mlharbor.core.clock import utcnow
from mlharbor.core.records import PredictionRecord
from mlharbor.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("args", "command"), [
    (["serve", "churn@champion", "--port", "0"], "serve"),
    (["--debug", "serve"], "serve"),
    (["--config", "serve.yaml", "models", "list"], "models"),
    (["--config", "x.yaml"], None),
    (["--help", "serve"], None),
    ([], None),
])
def test_the_command_a_run_uses_is_found_past_the_root_options(
        args: list[str], command: str | None) -> None:
    assert _command_in(args) == command


def test_the_cli_builds_only_the_command_it_runs() -> None:
    import typer

    whole = typer.main.get_command(create_app())
    assert len(whole.commands) > 10  # type: ignore[attr-defined]
    serve = typer.main.get_command(create_app("serve"))
    assert list(serve.commands) == ["serve"]  # type: ignore[attr-defined]
    models = typer.main.get_command(create_app("models"))
    assert list(models.commands) == ["models"]  # type: ignore[attr-defined]
    assert "card" in models.commands["models"].commands  # type: ignore[attr-defined]
    # A mistyped command keeps every name, so click can suggest the right one.
    typo = typer.main.get_command(create_app("serv"))
    assert len(typo.commands) == len(whole.commands)  # type: ignore[attr-defined]


def test_an_onnx_served_version_loads_without_the_onnx_package(
        home_settings: Settings, registry: Any) -> None:
    """The protobuf parser is only needed to check where external data points; bytes that
    name none (no "location" key anywhere) load straight into ONNX Runtime."""
    mv = registry.get_version("churn@champion")
    root = registry.download(mv)
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from mlharbor.formats.predictor import load_bundle\n"
        "p = load_bundle(Path(sys.argv[1]), expected_manifest=json.loads(sys.argv[2]))\n"
        "print(p.runtime, 'onnx' in sys.modules, 'google.protobuf' in sys.modules)\n"
    )
    import json

    done = subprocess.run([sys.executable, "-c", code, str(root), json.dumps(mv.manifest)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["onnx", "False", "False"]


def test_an_onnx_file_that_is_not_a_model_is_refused_by_name(tmp_path: Path) -> None:
    from mlharbor.core.errors import InvalidInputError
    from mlharbor.formats.bundle import ModelBytes
    from mlharbor.formats.onnx import checked_session

    blob = ModelBytes.of(tmp_path / "model.onnx", b"\x08\x07 not a protobuf model")
    with pytest.raises(InvalidInputError, match=r"'model\.onnx' is not a readable ONNX model"):
        checked_session(blob)


def _record(i: int) -> PredictionRecord:
    return PredictionRecord(f"r{i}", "churn", "churn@champion", 1, {"tenure": i}, [i % 2],
                            0.001, utcnow())


def test_the_compactor_child_starts_with_the_first_file_to_compact(tmp_path: Path) -> None:
    from mlharbor.monitoring.service import open_prediction_log

    log = open_prediction_log(Settings(home=tmp_path / "home"))
    try:
        assert log.compactor is not None
        assert log.compact() == 0  # the start-up round: an empty journal
        assert log.compactor._proc is None  # no child for nothing
        log.emit(_record(1))
        log.flush()
        assert log.compact() == 1
        child = log.compactor._proc
        assert child is not None and child.poll() is None and child.pid != os.getpid()
    finally:
        log.close()
    assert log.scan("churn").num_rows == 1


class _Counter:
    handled = 0


def test_free_heap_pages_are_released_once_requests_stop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlharbor.serving import app as serving_app
    from mlharbor.serving import memory

    released: list[int] = []
    http = _Counter()
    monkeypatch.setattr(serving_app, "QUIET_S", 0.02)
    monkeypatch.setattr(memory, "release_free_memory", lambda: released.append(http.handled))

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(
            serving_app._release_memory_when_quiet(http))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        assert released == []  # idle since start: nothing was freed to give back
        for _ in range(100):  # busy: requests far more often than the quiet spell
            http.handled += 1
            await asyncio.sleep(0.002)
        assert released == []  # never while requests keep coming
        await asyncio.sleep(0.2)  # quiet: released once, not again while it stays quiet
        task.cancel()
        assert released == [http.handled]

    asyncio.run(scenario())


def test_batches_run_on_the_loop_longer_when_one_cpu_is_all_there_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker thread buys parallelism with the event loop only on a second CPU."""
    from mlharbor.serving.batching import ONE_CPU_INLINE_MAX_S, inline_max_for

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert inline_max_for(0.0002) == 0.0002
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert inline_max_for(0.0002) == ONE_CPU_INLINE_MAX_S
    assert inline_max_for(0.01) == 0.01  # a higher setting is kept
