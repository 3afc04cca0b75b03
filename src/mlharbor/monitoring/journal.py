"""The bounded on-disk buffer between serving and the prediction log: append-only, fsync'd.

Files ``journal-<seq>.log`` in one folder; the highest is *active* (appended to), the others are
*sealed* (waiting to become Parquet segments). Each append writes one frame,
``length (4 bytes, big-endian) | payload``, then flushes and fsyncs, so after a crash every
complete frame is there and a torn last frame is recognised by its length and skipped.
The payload is newline-separated JSON: one entry per record (format 2, ``"v": 2``; see
:func:`~.logrows.record_entry`) or, in journals older versions wrote, one row per line; or a
binary frame of records whose inputs are numbers (:mod:`.logframes`); sealed
(:class:`~.segments.Sealer`) when a key is configured.

The journal is bounded by ``max_bytes``: past it, :meth:`append` refuses (the caller counts the
rows as dropped) rather than grow without limit or block.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import orjson

from mlharbor.monitoring.logframes import decode, is_frame

if TYPE_CHECKING:
    from mlharbor.monitoring.segments import Sealer

PREFIX = "journal-"
SUFFIX = ".log"


class Journal:
    def __init__(self, directory: Path, *, max_bytes: int, sealer: Sealer | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.sealer = sealer
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        existing = self._files()
        # Never append to a file left by an earlier process: its tail may be torn.
        self._seq = (self._seq_of(existing[-1]) + 1) if existing else 1
        self._fh: BinaryIO | None = None
        self._active_bytes = 0
        self._sealed_bytes = 0
        self.recount()

    @property
    def backlog_bytes(self) -> int:
        return self._sealed_bytes + self._active_bytes

    def append(self, rows: list[bytes]) -> bool:
        """Write one frame of JSON lines (entries or rows) durably; False (nothing written)
        when the journal is full."""
        if not rows:
            return True
        return self.append_frames([b"\n".join(rows)])

    def append_frames(self, payloads: list[bytes]) -> bool:
        """Write frames (JSON lines, or binary frames of :mod:`.logframes`) with one fsync;
        False (nothing written) when they do not fit in the journal."""
        payloads = [p for p in payloads if p]
        if not payloads:
            return True
        with self._lock:
            name = self._name(self._seq)
            if self.sealer is not None:
                payloads = [self.sealer.seal(p, name) for p in payloads]
            data = b"".join(len(p).to_bytes(4, "big") + p for p in payloads)
            if self.backlog_bytes + len(data) > self.max_bytes:
                return False
            if self._fh is None:
                self._fh = (self.directory / name).open("ab")
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._active_bytes += len(data)
            return True

    def rotate(self) -> None:
        """Seal the active file (if it holds anything); the next append starts a new one."""
        with self._lock:
            if self._fh is None:
                return
            self._fh.close()
            self._fh = None
            self._sealed_bytes += self._active_bytes
            self._active_bytes = 0
            self._seq += 1

    def sealed(self) -> list[Path]:
        with self._lock:
            active = self._name(self._seq)
            return [p for p in self._files() if p.name != active]

    @property
    def active_seq(self) -> int:
        """The sequence number of the file appends go to; every lower one is sealed."""
        return self._seq

    def sealed_before(self, seq: int) -> list[Path]:
        """Journal files numbered below ``seq`` (sealed by the process that wrote them): what
        a compactor in another process may turn into segments."""
        return [p for p in self._files() if self._seq_of(p) < seq]

    def recount(self) -> None:
        """Re-read the sealed files' sizes, after another process compacted some of them."""
        with self._lock:
            active = self._name(self._seq)
            total = 0
            for path in self._files():
                if path.name != active:
                    try:
                        total += path.stat().st_size
                    except FileNotFoundError:  # compacted meanwhile
                        continue
            self._sealed_bytes = total

    def read(self, path: Path) -> list[dict[str, object]]:
        """The JSON lines (entries or rows) of a journal file; a torn final frame (crash
        mid-write) is ignored."""
        data = path.read_bytes()
        rows: list[dict[str, object]] = []
        offset = 0
        while offset + 4 <= len(data):
            size = int.from_bytes(data[offset:offset + 4], "big")
            payload = data[offset + 4:offset + 4 + size]
            if len(payload) < size:
                break
            offset += 4 + size
            if self.sealer is not None:
                payload = self.sealer.open(payload, path.name)
            if is_frame(payload):
                rows.extend(decode(payload))
            else:
                rows.extend(orjson.loads(line) for line in payload.split(b"\n") if line)
        return rows

    def remove(self, path: Path) -> None:
        with self._lock:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:  # removed by another compactor meanwhile
                return
            self._sealed_bytes = max(0, self._sealed_bytes - size)

    def close(self) -> None:
        self.rotate()

    def seq_of(self, path: Path) -> int:
        return self._seq_of(path)

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}"), key=self._seq_of)

    @staticmethod
    def _seq_of(path: Path) -> int:
        return int(path.name[len(PREFIX):-len(SUFFIX)])

    @staticmethod
    def _name(seq: int) -> str:
        return f"{PREFIX}{seq:010d}{SUFFIX}"
