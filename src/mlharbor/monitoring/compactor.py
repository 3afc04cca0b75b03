"""Compaction of the prediction journal in a child process, so serving never waits for it.

Turning journal files into Parquet segments is a burst of CPU every few seconds. In the serving
process it competed with requests for the interpreter lock, and the requests that arrived
during a burst waited for it: that was most of the p99 latency the prediction log added. In a
child process (``python -m mlharbor.monitoring.compactor``, started once the log has journaled
its first records, at a lower scheduling priority) the operating system shares the CPU at a
fine grain instead, and a crash in the Parquet writer cannot take serving down.

The child compacts a journal file in pieces (bounded memory, see :mod:`.segmentwriter`) and,
asked by the background loop, paces them (:class:`Pacer`): a short piece, then a pause several
times as long, so it never takes its full share of the server's core for seconds at a time,
unless the journal's backlog has grown past :data:`PACE_BELOW_BYTES`.

The serving process still owns the journal: it seals the active file, then asks the child to
compact every file numbered below the new active one and waits (on a pipe, without the
interpreter lock) for the reply, which also says how many records it found torn (half-written)
and skipped, so the serving process counts them as dropped. The child reads the settings once,
as a JSON line on its stdin (secrets travel only through that pipe), and exits when the pipe
closes or, between files, when it finds its parent gone. It does not hold the journal slot's
lock: a server restarted after a crash claims the slot at once and recovers it, and should an
orphaned child still be finishing a file there, both write the same segment (names derive from
the journal file) and whoever comes second finds the file gone. It runs in its own session,
so Ctrl-C at a terminal stops the server, which then stops it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import logging
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from mlharbor.core.errors import CompactionFailed, CompactorUnavailable

if TYPE_CHECKING:
    from mlharbor.settings import Settings

log = logging.getLogger("mlharbor.monitoring.compactor")
# Below serving (nice 0): under full load the child still gets about a quarter of a busy core,
# more than compaction needs, and idle time whenever there is any.
NICENESS = 5
# The share of a core the child's work may take while the backlog is small: after each piece
# of a journal file (predlog.PIECE_BYTES, a flush's frame or two) it sleeps (1 / DUTY - 1)
# times the CPU the piece took. A whole file at once took ~25% of the server's core (nice 5)
# for 2-3 s, and every request in that window was slowed; paced, it runs for at most a piece
# (~10-35 ms of CPU) and then leaves the core for at least five times as long. Compaction
# costs ~34 us per 64-row request, ~4.5% of a core at full load: a third of this share.
DUTY = 0.15
# Journal bytes waiting (every file in the folder, the active one included) from which the
# child works flat out: pacing must never let the journal grow until it is full and records
# are dropped (the journal's bound is 1 GiB by default; at full load ~14 MB a second arrive).
PACE_BELOW_BYTES = 128 << 20


def pace_below(journal_max_bytes: int) -> int:
    """The backlog from which compaction stops pacing, for a journal bounded at
    ``journal_max_bytes``: :data:`PACE_BELOW_BYTES`, or a quarter of a smaller bound, so a
    journal configured small still drains flat out long before it is full."""
    return min(PACE_BELOW_BYTES, max(journal_max_bytes // 4, 1))
# Children that die before answering, in a row, before compaction stays in-process for good.
MAX_START_FAILURES = 3


class CompactorProcess:
    """A handle on the child; :meth:`compact` is called from one thread at a time.

    ``timeout_s`` bounds one request: a child that does not answer in time is killed.
    """

    def __init__(self, settings: Settings, journal_dir: Path, *,
                 timeout_s: float = 300.0, duty: float = DUTY,
                 pace_below_bytes: int | None = None) -> None:
        if pace_below_bytes is None:
            pace_below_bytes = pace_below(settings.monitoring.buffer_max_bytes)
        self._config = orjson.dumps({"settings": revealed(settings),
                                     "journal": str(journal_dir),
                                     "pacing": {"duty": duty,
                                                "below_bytes": pace_below_bytes}})
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        # The running child, for a finalizer that holds no reference to this handle: a log
        # dropped without close(), or alive at exit, closes its pipes (the child sees its
        # stdin end and exits) instead of leaving them to the collector's warnings.
        self._spawned: list[subprocess.Popen[bytes]] = []
        weakref.finalize(self, _close_all, self._spawned)
        self._lock = threading.Lock()
        self._closed = False
        self._failed_starts = 0
        self._answered = False
        # Seconds the child slept between pieces to spread its work, over every request.
        self.paced_s = 0.0

    def compact(self, upto: int,
                on_torn: Callable[[int, int], None] | None = None, *,
                pace: bool = True) -> int:
        """Compact the journal files numbered below ``upto``; returns segments written.
        ``on_torn(records, frames)`` hears what the child skipped as torn, also when it then
        failed on a later file. With ``pace`` the child spreads its work out (see
        :class:`Pacer`); without, it works flat out (at shutdown)."""
        with self._lock:
            proc = self._running()
            stdin, stdout = _pipes(proc)
            try:
                stdin.write(orjson.dumps({"upto": upto, "pace": pace}) + b"\n")
                stdin.flush()
                line = self._reply(stdout)
            except (BrokenPipeError, OSError, ValueError) as exc:
                self._died()
                raise CompactorUnavailable(f"The log compactor stopped: {exc}.") from exc
            if not line:
                self._died()
                raise CompactorUnavailable("The log compactor exited.")
            self._answered, self._failed_starts = True, 0
            reply = orjson.loads(line)
        torn = int(reply.get("torn_records", 0)), int(reply.get("torn_frames", 0))
        if on_torn is not None and any(torn):
            on_torn(*torn)
        self.paced_s += float(reply.get("paced_s", 0.0))
        if "error" in reply:
            raise CompactionFailed(str(reply["error"]))
        return int(reply["written"])

    def start(self) -> None:
        """Start the child now if it is not running, without waiting for its first request.

        The prediction log calls this once it has journaled its first records: the child's
        start-up (an interpreter and pyarrow, ~0.3 s of CPU) then falls in the first quiet
        moment after the first answers, not in the middle of the load whose first journal
        file it would be started for. A failed start is logged and counted, as on a request.
        """
        if not self._lock.acquire(blocking=False):
            return  # a request holds the child (and starts it): the caller must not wait
        try:
            if not self._closed:
                self._running()
                if self._closed:  # close() ran meanwhile and saw no child: no orphan
                    self._reap()
        except CompactorUnavailable as exc:
            log.warning("%s", exc)
        finally:
            self._lock.release()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child (it finishes the file it is on) and wait for it."""
        self._closed = True
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            _pipes(proc)[0].close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _close_pipes(proc)
        self._proc = None

    @property
    def disabled(self) -> bool:
        """True once the child failed to start too often: compaction stays in-process."""
        return self._failed_starts >= MAX_START_FAILURES

    def _reply(self, stdout: IO[bytes]) -> bytes:
        """The child's answer line, or b"" once ``timeout_s`` passed (the child is killed)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("the log compactor did not answer within %.0fs; stopping it",
                            self.timeout_s)
                return b""
            ready, _w, _x = select.select([stdout], [], [], min(left, 1.0))
            if ready:
                return stdout.readline()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._closed:
            raise CompactorUnavailable("The log compactor is closed.")
        if self.disabled:
            raise CompactorUnavailable(
                f"The log compactor failed to start {MAX_START_FAILURES} times in a row.")
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._proc is not None:  # it died between requests: its pipes go with it
            _close_pipes(self._proc)
            if not self._answered:  # started early (start()) and died before any request
                self._failed_starts += 1
                self._proc = None
                if self.disabled:
                    raise CompactorUnavailable(
                        f"The log compactor failed to start {MAX_START_FAILURES} times in a "
                        "row.")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlharbor.monitoring.compactor"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                start_new_session=True)
            stdin = _pipes(proc)[0]
            stdin.write(self._config + b"\n")
            stdin.flush()
        except OSError as exc:
            self._failed_starts += 1
            raise CompactorUnavailable(f"The log compactor could not start: {exc}.") from exc
        self._proc, self._answered = proc, False
        self._spawned[:] = [proc]
        return proc

    def _died(self) -> None:
        if not self._answered:  # it never answered: count it as a failed start
            self._failed_starts += 1
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            _close_pipes(self._proc)
            self._proc = None


class Pacer:
    """Spreads compaction out: called before each piece of a journal file (but a request's
    first), it sleeps ``(1 / duty - 1)`` times the CPU used since the last call (``cpu``:
    this process's in the child, the compacting thread's in a server compacting itself), so
    compaction's share of a core stays below ``duty`` -- unless the journal holds
    ``below_bytes`` or more, when it does not sleep at all, so a backlog always drains as fast
    as compaction can go (the bounded-backlog guarantee)."""

    def __init__(self, backlog: Callable[[], int], *, duty: float = DUTY,
                 below_bytes: int = PACE_BELOW_BYTES,
                 sleep: Callable[[float], None] = time.sleep,
                 cpu: Callable[[], float] = time.process_time) -> None:
        if not 0 < duty <= 1:
            raise ValueError(f"duty must be in (0, 1], got {duty}")
        self.backlog = backlog
        self.duty = duty
        self.below_bytes = below_bytes
        self._sleep = sleep
        self._cpu = cpu
        self._mark = cpu()
        self.slept_s = 0.0

    def restart(self) -> None:
        """A new request: the CPU counted from now."""
        self._mark = self._cpu()

    def delay(self, cpu_s: float, backlog_bytes: int) -> float:
        """Seconds to sleep after ``cpu_s`` of work with ``backlog_bytes`` waiting."""
        if backlog_bytes >= self.below_bytes:
            return 0.0
        return max(0.0, cpu_s) * (1.0 / self.duty - 1.0)

    def __call__(self) -> None:
        pause = self.delay(self._cpu() - self._mark, self.backlog())
        if pause > 0:
            self._sleep(pause)
            self.slept_s += pause
        self._mark = self._cpu()


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    """Close our ends of a finished child's pipes: left to the collector they stay open file
    descriptors until then (one pair per restart after a crash) and warn when collected."""
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _close_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        _close_pipes(proc)


def _pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    assert proc.stdin is not None and proc.stdout is not None
    return proc.stdin, proc.stdout


def _lower_priority() -> None:
    with contextlib.suppress(OSError):
        os.nice(NICENESS)


def revealed(settings: Settings) -> Any:
    """The settings as plain JSON values, secrets included (for the child's stdin only)."""
    from pydantic import SecretStr

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(settings.model_dump())


def main() -> int:
    """The child: read the settings, then answer compaction requests until stdin closes."""
    from mlharbor.monitoring.predlog import PredictionLog
    from mlharbor.monitoring.segments import open_segments, sealer_from_settings
    from mlharbor.monitoring.service import log_uri
    from mlharbor.settings import Settings

    _lower_priority()
    _without_pandas()
    parent = os.getppid()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    first = stdin.readline()
    if not first:
        return 0
    try:
        config = orjson.loads(first)
        settings = Settings(**config["settings"])
        compactor = PredictionLog(Path(config["journal"]),
                                  open_segments(log_uri(settings), settings),
                                  sealer=sealer_from_settings(settings))
        pacing = config.get("pacing") or {}
        pacer = Pacer(compactor.journal.bytes_on_disk,
                      duty=float(pacing.get("duty", DUTY)),
                      below_bytes=int(pacing.get("below_bytes", PACE_BELOW_BYTES)))
    except Exception as exc:  # the parent sees the pipe close and compacts itself
        sys.stderr.write(f"mlharbor log compactor: cannot start ({type(exc).__name__}).\n")
        return 1
    threading.Thread(target=_preload, name="preload", daemon=True).start()
    for line in stdin:
        torn = compactor.drops["torn"], compactor.torn_frames
        slept = pacer.slept_s
        try:
            request = orjson.loads(line)
            upto = int(request["upto"])
            pace = pacer if request.get("pace", True) else None
            pacer.restart()
            written = 0
            for number, path in enumerate(compactor.journal.sealed_before(upto)):
                if os.getppid() != parent:  # orphaned: whoever claims the slot next recovers
                    return 0
                if pace is not None and number:
                    pace()  # between files (compact_files paces between pieces)
                written += compactor.compact_files([path], pace)
            reply: dict[str, Any] = {"written": written}
        except Exception as exc:  # reported to the parent, which backs off and retries
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        # The parent counts them (its metrics); this process only logged them.
        reply["torn_records"] = compactor.drops["torn"] - torn[0]
        reply["torn_frames"] = compactor.torn_frames - torn[1]
        reply["paced_s"] = round(pacer.slept_s - slept, 6)
        stdout.write(orjson.dumps(reply) + b"\n")
        stdout.flush()
        _release_memory()
    return 0


def _preload() -> None:
    """Import what compacting a file takes (pyarrow, its compute functions and its Parquet
    writer, ~60 MB) now, while serving is quiet, rather than in the first request, which
    comes under the load that filled the first file. On a thread: a request arriving
    meanwhile waits for the import it needs anyway, and a child closed at once exits without
    finishing it."""
    with contextlib.suppress(Exception):  # the request that needs it reports the failure
        import pyarrow.compute
        import pyarrow.parquet  # noqa: F401


class _NoPandas(importlib.abc.MetaPathFinder):
    """Refuses to import pandas (see :func:`_without_pandas`)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError("pandas is not imported in the log compactor",
                                      name=fullname)
        return None


def _without_pandas() -> None:
    """Keep pandas out of the child. pyarrow imports it, when it is installed, the first time
    ``pa.array`` checks whether a value is a pandas object: ~46 MB of anonymous memory and
    ~50 MB of mapped libraries for a child that never makes a DataFrame. Told it is not
    installed, pyarrow does without. (A ``None`` in ``sys.modules`` does not do: pyarrow's
    compiled import takes the ``None`` for the module.)"""
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())


def _release_memory() -> None:
    """Between requests the child sits idle: hand back what the last one took (a journal
    file's rows and its Arrow table, ~200 MB at 64 connections of 64-row requests), which
    pyarrow's pool and the C heap would otherwise keep at the largest file's peak."""
    import pyarrow

    pyarrow.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        _libc().malloc_trim(0)


@functools.cache
def _libc() -> Any:
    """The C library, found once: ``find_library`` runs ``ldconfig -p`` in a subprocess, which
    cost more than the trim itself when it ran after every request."""
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c"))


if __name__ == "__main__":
    sys.exit(main())
