"""Run a command and measure its own peak resident memory (RSS), as the kernel counts it, and
its CPU time.

``os.wait4`` on a child started straight from a test (or bench) process over-reports: Linux
keeps the high-water RSS of the memory map a process had *before* ``exec``, and a child forked
(or vforked) from a 500 MB pytest process starts inside that map, so its ``ru_maxrss`` is at
least the parent's size whatever the command does. So a small interpreter that has imported
nothing is started first; it forks the command, waits for it with ``wait4`` and writes the
command's ``ru_maxrss`` to a file: the command's own peak (its pre-exec map is the small
interpreter's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execve(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss * 1024} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass(frozen=True)
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes
    cpu_seconds: float  # user + system time of the command (and the children it waited for)


def run_measured(command: Sequence[str], *, env: dict[str, str] | None = None,
                 timeout: float = 600) -> Measured:
    """Run ``command`` (its first item an absolute path) to the end; its output and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="peak-rss-") as folder:
        report = Path(folder) / "peak"
        done = subprocess.run([sys.executable, "-S", "-c", _WRAPPER, str(report), *command],
                              env={**os.environ, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout, check=False)
        peak, cpu = report.read_text().split() if report.exists() else ("0", "0")
    return Measured(done.returncode, done.stdout, done.stderr, int(peak), float(cpu))
